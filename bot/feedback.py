"""Feedback on answers: the 👍/👎 control under every answer, what its clicks carry, and the
votes they store.

The control is Slack's `feedback_buttons` element in a `context_actions` block. Where Slack
refuses it (`invalid_blocks`), the same control is two ordinary buttons in an `actions` block,
and the refusal is remembered (`delivery.Refusals`, method `FEEDBACK_BUTTONS`) so later answers
in that kind of conversation go straight to the buttons.

A button's value is `up:<id>` or `down:<id>`, `<id>` the answer's usage ledger row: it names the
answer and nothing else (no text, no user, no channel), and a vote is stored only when that row
belongs to the workspace the click came from. One vote per person per answer; a later click
replaces it. A 👎 gets a private follow-up with a menu of reasons. Nobody else is told who voted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from bot.store import data

log = logging.getLogger(__name__)

FEEDBACK_ACTION = "answer_feedback"  # the feedback_buttons element
UP_ACTION = "answer_feedback_up"  # the fallback buttons
DOWN_ACTION = "answer_feedback_down"
REASON_ACTION = "answer_feedback_reason"  # the reasons menu after a 👎
VOTE_ACTIONS = re.compile(r"^answer_feedback(?:_up|_down)?$")
FEEDBACK_BUTTONS = "feedback_buttons"  # the key of its refusal in delivery.Refusals
BLOCK_ID = "answer_feedback"
UP, DOWN = "up", "down"
_VALUE = re.compile(r"^(up|down):([1-9][0-9]{0,17})$")
_REASON_VALUE = re.compile(r"^([a-z_]{1,24}):([1-9][0-9]{0,17})$")

# Why an answer was not good: menu value -> what the menu shows (and the digest counts).
REASONS: dict[str, str] = {
    "wrong": "Wrong or made up",
    "missed": "Missed something important",
    "off_topic": "Not what I asked",
    "too_long": "Too long",
    "unclear": "Hard to follow",
    "other": "Something else",
}

THANKS = "Thanks for the feedback."
ASK_REASON = "Thanks for the feedback. What was wrong with the answer? (optional)"
REFUSED = "That answer can't be rated here."
NO_DOWN_VOTE = "Your vote on that answer is no longer 👎, so there is nothing to add."
VOTE_FAILED = "Sorry, I couldn't save your vote; please try again."


def control(usage_id: int, *, buttons: bool = False) -> dict[str, Any]:
    """The 👍/👎 block for the answer of ledger row `usage_id`: Slack's feedback buttons, or
    (`buttons`) two ordinary buttons where Slack refuses those."""
    if buttons:
        return {
            "type": "actions",
            "block_id": BLOCK_ID,
            "elements": [
                {
                    "type": "button",
                    "action_id": UP_ACTION,
                    "text": {"type": "plain_text", "text": "👍", "emoji": True},
                    "value": f"{UP}:{usage_id}",
                    "accessibility_label": "Good answer",
                },
                {
                    "type": "button",
                    "action_id": DOWN_ACTION,
                    "text": {"type": "plain_text", "text": "👎", "emoji": True},
                    "value": f"{DOWN}:{usage_id}",
                    "accessibility_label": "Not a good answer",
                },
            ],
        }
    return {
        "type": "context_actions",
        "block_id": BLOCK_ID,
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": {
                    "text": {"type": "plain_text", "text": "👍"},
                    "value": f"{UP}:{usage_id}",
                    "accessibility_label": "Good answer",
                },
                "negative_button": {
                    "text": {"type": "plain_text", "text": "👎"},
                    "value": f"{DOWN}:{usage_id}",
                    "accessibility_label": "Not a good answer",
                },
            }
        ],
    }


def is_control(block: dict[str, Any]) -> bool:
    """Whether `block` is a 👍/👎 control (either form)."""
    return block.get("block_id") == BLOCK_ID


def control_of(blocks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The 👍/👎 control among `blocks`, if any."""
    return next((b for b in blocks if is_control(b)), None)


def as_buttons(blocks: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """`blocks` with their feedback-buttons control replaced by the fallback buttons; None when
    they hold no feedback-buttons control (nothing to fall back from)."""
    if not blocks:
        return None
    out, swapped = [], False
    for block in blocks:
        if is_control(block) and block.get("type") == "context_actions":
            value = block["elements"][0]["positive_button"]["value"]
            out.append(control(int(value.split(":", 1)[1]), buttons=True))
            swapped = True
        else:
            out.append(block)
    return out if swapped else None


@dataclass(frozen=True)
class Vote:
    """A click on the control: 👍 (`positive`) or 👎 on the answer of ledger row `usage_id`."""

    usage_id: int
    positive: bool


def parse_vote(value: Any) -> Vote | None:
    """The vote a control's value carries (`up:<id>`, `down:<id>`); None for anything else."""
    m = _VALUE.match(str(value or ""))
    return Vote(int(m.group(2)), m.group(1) == UP) if m else None


def parse_reason(value: Any) -> tuple[str, int] | None:
    """The reason and ledger row a reasons-menu choice carries; None for anything else."""
    m = _REASON_VALUE.match(str(value or ""))
    if not m or m.group(1) not in REASONS:
        return None
    return m.group(1), int(m.group(2))


def reason_blocks(usage_id: int) -> list[dict[str, Any]]:
    """The private follow-up to a 👎: a menu of reasons (choosing one is optional)."""
    options = [
        {"text": {"type": "plain_text", "text": label}, "value": f"{key}:{usage_id}"}
        for key, label in REASONS.items()
    ]
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": ASK_REASON}},
        {
            "type": "actions",
            "block_id": "answer_feedback_reason",
            "elements": [
                {
                    "type": "static_select",
                    "action_id": REASON_ACTION,
                    "placeholder": {"type": "plain_text", "text": "Choose a reason"},
                    "options": options,
                }
            ],
        },
    ]


class Votes:
    """Stores votes and their reasons (one short transaction each)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._sessions = sessions
        self._now = now

    def vote(self, team_id: str, user_id: str, vote: Vote) -> bool:
        """Store `user_id`'s vote (replacing theirs); False when the answer is not one of
        `team_id`'s (nothing stored)."""
        with self._sessions.begin() as s:
            kind = data.record_vote(s, team_id, vote.usage_id, user_id, vote.positive, self._now())
        if kind is None:
            log.info("team=%s: a vote on an answer that is not its own was refused", team_id)
            return False
        log.info("team=%s: a %s on a %s answer", team_id, "👍" if vote.positive else "👎", kind)
        return True

    def reason(self, team_id: str, user_id: str, usage_id: int, reason: str) -> bool:
        """The reason of `user_id`'s 👎; False when they have no 👎 on that answer."""
        with self._sessions.begin() as s:
            return data.set_vote_reason(s, team_id, usage_id, user_id, reason, self._now())
