"""Clicks on the 👍/👎 under an answer (Slack's feedback buttons, or the fallback buttons) and
the reasons menu that follows a 👎.

A vote is stored before the ack, in one short transaction (a failed write is told to the voter,
who can click again); the voter alone is answered, privately, through the click's response_url
(a new ephemeral message: the answer itself never changes, so nobody else learns who voted).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.delivery import Ephemeral, Responder, ResponseUrl
from bot.feedback import (
    ASK_REASON,
    NO_DOWN_VOTE,
    REASON_ACTION,
    REASONS,
    REFUSED,
    THANKS,
    VOTE_ACTIONS,
    VOTE_FAILED,
    Votes,
    parse_reason,
    parse_vote,
    reason_blocks,
)

log = logging.getLogger(__name__)


def _who(body: dict[str, Any], context: BoltContext) -> tuple[str, str]:
    """The workspace the click came from and who clicked."""
    team = context.team_id or (body.get("team") or {}).get("id") or ""
    return str(team), str((body.get("user") or {}).get("id") or "")


def _private(body: dict[str, Any], context: BoltContext, user: str) -> Responder:
    """Where to answer the voter alone: a new ephemeral message through the response_url, else
    chat.postEphemeral in the conversation."""
    url = body.get("response_url")
    if url:
        return ResponseUrl(str(url))
    channel = str((body.get("channel") or {}).get("id") or "")
    container = body.get("container") or {}
    thread = str(container.get("thread_ts") or "")
    return Ephemeral(context.client, channel, user, thread, None)


def _stored(
    ack: Ack, body: dict[str, Any], context: BoltContext, store: Callable[[], bool]
) -> tuple[bool, Responder] | None:
    """Run `store` (a vote or a reason) before the ack; then the voter's private answer. None
    when storing failed (the voter has been told to try again)."""
    team, user = _who(body, context)
    try:
        done = store()
    except Exception:
        log.exception("storing feedback of team=%s failed", team)
        ack()
        _private(body, context, user).send(VOTE_FAILED)
        return None
    ack()
    return done, _private(body, context, user)


def register(app: App, votes: Votes) -> None:
    """Store votes and reasons, and answer the voter privately."""

    @app.action(VOTE_ACTIONS)
    def on_vote(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], context: BoltContext
    ) -> None:
        team, user = _who(body, context)
        vote = parse_vote(action.get("value"))
        result = _stored(
            ack,
            body,
            context,
            lambda: vote is not None and bool(user) and votes.vote(team, user, vote),
        )
        if result is None:
            return
        stored, out = result
        if not stored or vote is None:
            out.send(REFUSED)
        elif vote.positive:
            out.send(THANKS)
        else:
            out.send(ASK_REASON, reason_blocks(vote.usage_id))

    @app.action(REASON_ACTION)
    def on_reason(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], context: BoltContext
    ) -> None:
        team, user = _who(body, context)
        choice = parse_reason((action.get("selected_option") or {}).get("value"))
        result = _stored(
            ack,
            body,
            context,
            lambda: choice is not None and votes.reason(team, user, choice[1], choice[0]),
        )
        if result is None:
            return
        saved, out = result
        if choice is not None and saved:
            out.send(f"Thanks, noted: {REASONS[choice[0]].lower()}.", replace=True)
        else:
            out.send(NO_DOWN_VOTE if choice is not None else REFUSED, replace=True)
