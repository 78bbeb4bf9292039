"""The bot's DM (its Messages tab): each message a person writes there is a job, stored by a
middleware before Slack gets its 200 (like a mention); opening the tab greets once.

Only a person's own messages (plain, with files, or a reply also sent to the DM) start a job:
the bot's own messages, other bots', edits and deletions never do. What the job does is
`bot/dm.py`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltContext

from bot.dm import DmService
from bot.jobs import Handler, JobQueue
from bot.listeners.messages import NEW, by_bot, event_of
from bot.service import DM, ThreadRequest
from bot.threads import slim, thread_of
from bot.workspace import team_of

log = logging.getLogger(__name__)

KIND = DM
TURN_SUBTYPES = frozenset({NEW, "file_share", "thread_broadcast"})  # a person's own messages


def _is_turn(event: dict[str, Any], context: BoltContext) -> bool:
    """Whether a `message` event is a person writing in the bot's DM."""
    return (
        event.get("channel_type") == "im"
        and (event.get("subtype") or NEW) in TURN_SUBTYPES
        and bool(event.get("user"))
        and not event.get("bot_id")
        and not by_bot(event, context.bot_user_id or "", context.bot_id)
        and bool(event.get("channel") and event.get("ts"))
    )


def register(app: App, dms: DmService, queue: JobQueue) -> dict[str, Handler]:
    """Enqueue the DM's messages before the ack; greet on the Messages tab; the job handler."""

    @app.middleware
    def enqueue_dm_messages(
        body: dict[str, Any],
        context: BoltContext,
        next: Callable[[], Any],  # noqa: A002
    ) -> Any:
        event = event_of(body)
        if event is None:
            return next()
        if event.get("type") != "message" or not _is_turn(event, context):
            return next()
        req = ThreadRequest(
            team_id=team_of(body, context.team_id),
            channel_id=event["channel"],
            thread_ts=thread_of(event),
            message_ts=event["ts"],
            user_id=event["user"],
            text=event.get("text") or "",
            bot_user_id=context.bot_user_id or "",
            bot_id=context.bot_id,
            kind=DM,
            enterprise_id=context.enterprise_id,
            user_team=event.get("user_team") or event.get("team"),
            files=slim(event).get("files"),
        )
        fresh = queue.enqueue(
            KIND,
            dataclasses.asdict(req),
            lane=f"{req.team_id}:{req.channel_id}:{req.thread_ts}",
            dedupe_key=f"event:{body.get('event_id') or event['ts']}",
        )
        if not fresh:
            log.info("event %s already taken; ignoring redelivery", body.get("event_id"))
        return next()  # the message router still sees it (it has nothing to do for it)

    def messages_tab(event: dict[str, Any]) -> bool:
        return event.get("tab") == "messages"

    @app.event("app_home_opened", matchers=[messages_tab])
    def on_messages_tab(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        dms.greet(
            team_of(body, context.team_id),
            event.get("user") or "",
            event.get("channel") or "",
            context.enterprise_id,
        )

    return {KIND: Handler(dms.run, dms.give_up)}
