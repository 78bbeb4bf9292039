"""A conversation in the bot's Messages tab: the cache share of prompt tokens per turn, with the
earlier turns laid out as real user/assistant turns (what the bot does) and as one transcript
block (the mention path's layout), for the same conversation.

Runs the real app (signed `message.im` events, waitress, the real prompt builders and client)
against the loopback fakes in tests/fakes; the Messages API fake applies Anthropic's cache rules
(1,024-token floor for claude-sonnet-4-5, 20-block lookback, 5-minute TTL on its own clock).
`python -m bench.dm_conversation [--turns 10]`
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.app import create_app
from bot.service import DM_LAYOUTS
from bot.store.db import make_engine, migrate
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import Bot, make_settings

REPORT = " ".join(
    f"Finding {i}: the eu-west canary stayed healthy, p99 under 180 ms; payments asked for one "
    f"more day of soak before Thursday's roll-forward, and the on-call rota still lacks a name."
    for i in range(1, 26)
)
SCENARIOS = {
    # A report pasted into the first message (about 1,100 tokens), then short questions.
    "pasted report": f"Please read this incident report and list the risks.\n{REPORT}",
    # A short first question: the conversation passes the cache floor only after a few turns.
    "short chat": "How should we plan the roll-forward of the billing page this week?",
}
QUESTION = "Follow-up {n}: and what about the owners and the deadline for point {n}?"
ANSWER = (
    "Answer {n}. The roll-forward waits for one more day of payments soak; the canary is "
    "healthy. Owners: Alice for the rollout, Bob for payments, the rota still needs a name. "
)


@dataclass
class Result:
    scenario: str
    layout: str
    usages: list[dict[str, Any]]

    @staticmethod
    def prompt(u: dict[str, Any]) -> int:
        return u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]

    def share(self, start: int = 0) -> float:
        used = self.usages[start:]
        total = sum(self.prompt(u) for u in used)
        return sum(u["cache_read_input_tokens"] for u in used) / total if total else 0.0


def run(scenario: str, layout: str, turns: int) -> Result:
    """One conversation of `turns` turns in the real app with DM layout `layout`."""
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack, FakeMessagesAPI() as model:
        slack.add_user("U1", "Alice Archer", "alice")
        model.reply = lambda body: ANSWER.format(n=len(model.usages) + 1) * 6  # ~250 tokens
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate(make_engine(url))
        app = create_app(make_settings(slack, model, url), engine=make_engine(url),
                         clock=slack.clock, sleep=slack.sleep)
        app.service.dm_layout = layout
        bot = Bot(app, slack, model)
        app.start_receiving()  # as `serve` does: kept transcripts count from here
        try:
            slack.advance(60)  # the bot has been receiving events for a minute
            first = slack.dm_event("U1", SCENARIOS[scenario])
            bot.deliver(first)
            for n in range(2, turns + 1):
                slack.advance(30)  # half a minute between turns, well within the 5-minute TTL
                model.advance(30)
                bot.deliver(slack.dm_event("U1", QUESTION.format(n=n), thread_ts=first["ts"]))
            assert not slack.calls_to("conversations.replies"), "the kept transcript was not used"
        finally:
            bot.close()
        return Result(scenario, layout, list(model.usages))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    for scenario in SCENARIOS:
        results = [run(scenario, layout, args.turns) for layout in DM_LAYOUTS]
        print(f"\n{scenario}: {args.turns} turns, cache read / prompt tokens per turn")
        print(f"{'turn':>4} " + " ".join(f"{r.layout:>24}" for r in results))
        for i in range(args.turns):
            cells = []
            for r in results:
                u = r.usages[i]
                cells.append(f"{u['cache_read_input_tokens']:>7,} / {r.prompt(u):>7,} "
                             f"{u['cache_read_input_tokens'] / r.prompt(u):>6.1%}")
            print(f"{i + 1:>4} " + " ".join(f"{c:>24}" for c in cells))
        for r in results:
            print(f"{r.layout:>10}: all {args.turns} turns {r.share():.1%}, "
                  f"follow-ups (turns 2-{args.turns}) {r.share(1):.1%}")


if __name__ == "__main__":
    main()
