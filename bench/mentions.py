"""Mention-path figures: cache share over a 10-turn thread, Slack API calls per follow-up.

Runs the real app (signed HTTP requests, waitress, real prompt builder and client) against the
loopback fakes in tests/fakes. `python -m bench.mentions [--turns 10] [--replies 60]`
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from bot.app import create_app
from bot.store.db import make_engine, migrate
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import Bot, make_settings

TEXT = (
    "Message {i}: the canary in eu-west stayed healthy, p99 under 180 ms, and we agreed to "
    "roll forward on Thursday unless the payments team objects by noon."
)


def run(turns: int, replies: int, new_per_turn: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack, FakeMessagesAPI() as model:
        for uid, name in (("U1", "alice"), ("U2", "bob"), ("U3", "carol")):
            slack.add_user(uid, name.title(), name)
        slack.add_channel("C1", "general", members={"U1", "U2", "U3"})
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate(make_engine(url))
        bot = Bot(create_app(make_settings(slack, model, url), engine=make_engine(url)),
                  slack, model)
        try:
            parent = slack.add_thread("C1", replies, text_fn=lambda i: TEXT.format(i=i),
                                      users=["U1", "U2", "U3"])
            per_turn: list[Counter[str]] = []
            for turn in range(turns):
                for k in range(new_per_turn):
                    slack.add_message("C1", TEXT.format(i=1000 + turn * 10 + k), user="U2",
                                      thread_ts=parent)
                before = len(slack.calls)
                bot.mention("C1", f"question {turn}: what is still open?", thread_ts=parent)
                per_turn.append(Counter(m for m, _ in slack.calls[before:]))
        finally:
            bot.close()
        usages = model.usages

    def prompt(u: dict) -> int:
        return u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]

    print(f"{'turn':>4} {'prompt':>8} {'read':>8} {'written':>8} {'uncached':>8} {'share':>6}"
          f"  slack calls")
    for i, (u, calls) in enumerate(zip(usages, per_turn, strict=True)):
        share = u["cache_read_input_tokens"] / prompt(u)
        print(f"{i + 1:>4} {prompt(u):>8,} {u['cache_read_input_tokens']:>8,} "
              f"{u['cache_creation_input_tokens']:>8,} {u['input_tokens']:>8,} {share:>6.1%}  "
              + ", ".join(f"{m}×{n}" for m, n in sorted(calls.items())))
    follow = usages[1:]
    read = sum(u["cache_read_input_tokens"] for u in follow)
    total = sum(prompt(u) for u in follow)
    all_read = sum(u["cache_read_input_tokens"] for u in usages)
    all_total = sum(prompt(u) for u in usages)
    reads = [c["conversations.replies"] for c in per_turn[1:]]
    others = [sum(c.values()) for c in per_turn[1:]]
    print(f"\ncache share of prompt tokens, follow-ups (turns 2-{turns}): {read / total:.1%}")
    print(f"cache share of prompt tokens, all {turns} turns: {all_read / all_total:.1%}")
    print(f"Slack read calls per follow-up (conversations.replies): "
          f"{sum(reads) / len(reads):.2f}; all Slack calls per follow-up (status line, read, "
          f"streamed answer): {sum(others) / len(others):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--replies", type=int, default=60)
    parser.add_argument("--new-per-turn", type=int, default=3)
    args = parser.parse_args()
    run(args.turns, args.replies, args.new_per_turn)


if __name__ == "__main__":
    main()
