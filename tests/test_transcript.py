"""The transcript module is pure: turns, rendering and token estimates, no Slack, no database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bot.transcript import EXTERNAL_NOTE, Renderer, TextPart, Turn, estimate_tokens

ROOT = Path(__file__).resolve().parent.parent


def test_importing_the_transcript_and_the_prompt_loads_neither_slack_sdk_nor_sqlalchemy():
    code = (
        "import sys, bot.transcript, bot.prompt; "
        "print(sorted(m for m in ('slack_sdk', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_rendering_uses_the_names_and_the_predicate_it_is_given():
    messages = [
        {"ts": "1700000000.000100", "user": "U1", "text": "plan for <@U2>, see <https://x.io|doc>"},
        {"ts": "1700000060.000100", "user": "UBOT", "text": "Done.\n⚡ 10 of 20 prompt tokens"},
        {"ts": "1700000120.000100", "user": "U9", "user_team": "TOTHER", "text": "secret"},
        {"ts": "1700000130.000100", "subtype": "channel_join", "user": "U3"},
        {"ts": "1700000180.000100", "bot_id": "B2", "username": "ci", "text": "green",
         "files": [{"name": "log.txt", "pretty_type": "Plain Text"}]},
    ]
    renderer = Renderer(
        names={"U1": "alice", "U2": "bob"},
        is_external=lambda m: m.get("user_team") == "TOTHER",
        bot_user_id="UBOT",
        bot_id=None,
    )
    turns = renderer.render(messages)
    assert [t.text for t in turns] == [
        "[2023-11-14 22:13 UTC] alice: plan for @bob, see doc (https://x.io)",
        "[2023-11-14 22:14 UTC] You (assistant): Done.",
        f"[2023-11-14 22:15 UTC] {EXTERNAL_NOTE}",
        "[2023-11-14 22:16 UTC] ci (bot): green\n[file: log.txt (Plain Text)]",
    ]
    assert [t.own for t in turns] == [False, True, False, False]
    assert turns == renderer.render(messages)  # the same inputs, the same bytes


def test_a_turn_is_content_parts_and_its_estimate_is_theirs():
    turn = Turn(ts="1.0", text="[t] alice: hello", extra=(TextPart("more"),))
    assert turn.parts == (TextPart("[t] alice: hello"), TextPart("more"))
    assert turn.blocks() == [
        {"type": "text", "text": "[t] alice: hello"},
        {"type": "text", "text": "more"},
    ]
    assert turn.tokens() == estimate_tokens("[t] alice: hello") + estimate_tokens("more")
