"""Kept transcripts, at the wire: every event marks this process as receiving (coverage.py), and
message events are stored before Slack gets its 200 (a global middleware: Bolt acks events before
their listeners run), so a failed write answers 500 and Slack delivers the event again.

The bot joining a conversation starts keeping it anew (and may queue a `backfill` job); the bot
leaving it deletes everything kept of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.coverage import Receiver, ts_time
from bot.jobs import JobQueue
from bot.keeping import Keeper
from bot.listeners.messages import by_bot, event_of
from bot.store.db import scrub_deleted
from bot.workspace import team_of

log = logging.getLogger(__name__)

BACKFILL = "backfill"  # the job kind a join queues (its handler reads the channel's recent past)
JOINED = "member_joined_channel"
LEFT = ("channel_left", "group_left")  # sent to the bot itself when it leaves or is removed
MEMBER_LEFT = "member_left_channel"


def _when(event: dict[str, Any], body: dict[str, Any]) -> datetime:
    """When a membership event happened: its event_ts, else the envelope's event_time."""
    ts = event.get("event_ts")
    if isinstance(ts, str) and ts:
        try:
            return ts_time(ts)
        except ValueError:
            pass
    return datetime.fromtimestamp(int(body.get("event_time") or 0), UTC)


def register(
    app: App,
    keeper: Keeper,
    queue: JobQueue,
    sessions: sessionmaker[Session],
    receiver: Receiver | None,
) -> None:
    """The storing middleware, and listeners for the membership events (so Bolt answers 200)."""

    def seen() -> None:
        if receiver is None:
            return
        try:
            receiver.seen()
        except Exception as exc:  # noqa: BLE001 - the receiver's record then ends earlier: safe
            log.warning("could not record receiving an event: %s", type(exc).__name__)

    @app.middleware
    def keep_events(
        body: dict[str, Any],
        context: BoltContext,
        next: Callable[[], Any],  # noqa: A002
    ) -> Any:
        event = event_of(body)
        if event is None:
            return next()
        seen()
        team_id = team_of(body, context.team_id)
        kind = event.get("type")
        bot_user = context.bot_user_id or ""
        if kind == "message":
            own = by_bot(event, bot_user, context.bot_id)
            keeper.message(team_id, context.enterprise_id, event, own)
        elif kind == JOINED and bot_user and event.get("user") == bot_user:
            joined(body, event, team_id, context.enterprise_id)
        elif kind in LEFT or (kind == MEMBER_LEFT and bot_user and event.get("user") == bot_user):
            channel = event.get("channel") or ""
            if channel:
                removed = keeper.left(team_id, channel)
                log.info(
                    "left team=%s channel=%s: %d kept messages deleted", team_id, channel, removed
                )
        return next()

    def joined(
        body: dict[str, Any], event: dict[str, Any], team_id: str, enterprise_id: str | None
    ) -> None:
        channel = event.get("channel") or ""
        if not channel or not keeper.joined(team_id, channel, _when(event, body)):
            return
        queue.enqueue(
            BACKFILL,
            {"team_id": team_id, "channel_id": channel, "enterprise_id": enterprise_id},
            lane=f"{team_id}:{channel}:backfill",
            dedupe_key=f"event:{body.get('event_id') or event.get('event_ts')}",
        )

    def after_leaving(event: dict[str, Any], context: BoltContext) -> None:
        """After the ack: the deleted text is not left in the SQLite file's free pages."""
        if event.get("type") in LEFT or event.get("user") == context.bot_user_id:
            scrub_deleted(sessions)

    def nothing_more() -> None:
        """Handled by the middleware before the ack."""

    app.event(JOINED)(nothing_more)
    for name in (*LEFT, MEMBER_LEFT):
        app.event(name)(after_leaving)
