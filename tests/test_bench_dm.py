"""The DM conversation bench (bench/dm_conversation.py) at a small size: real turns cache at
least as well as the transcript layout, turn by turn, and the ten-turn share holds."""

from __future__ import annotations

from bench.dm_conversation import run


def test_real_turns_cache_at_least_as_well_as_one_transcript_block():
    turns = run("pasted report", "turns", 10)
    transcript = run("pasted report", "transcript", 10)
    print(f"\nten-turn DM conversation, cache read / prompt tokens: real turns "
          f"{turns.share():.1%}, one transcript block {transcript.share():.1%}")
    assert turns.usages[1]["cache_read_input_tokens"] > 0  # turn 2 reads turn 1
    assert transcript.usages[1]["cache_read_input_tokens"] == 0  # its request was not cached
    for a, b in zip(turns.usages[1:], transcript.usages[1:], strict=True):
        assert a["cache_read_input_tokens"] / turns.prompt(a) >= (
            b["cache_read_input_tokens"] / transcript.prompt(b) - 0.001
        )
    assert turns.share() > 0.84 and turns.share() > transcript.share() + 0.03
