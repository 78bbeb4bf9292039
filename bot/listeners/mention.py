"""@mention anywhere: answer in the thread, with the whole thread as context.

The mention is stored as a job *before* Slack gets its 200 (a global middleware, since Bolt acks
events before their listeners run); a worker answers it (see bot/jobs.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltContext, BoltResponse

from bot.jobs import Handler, JobQueue
from bot.listeners.messages import event_of
from bot.service import AnswerService, ThreadRequest
from bot.threads import slim, thread_of
from bot.transcript import is_own
from bot.user_messages import GAVE_UP_ANSWER
from bot.workspace import team_of

log = logging.getLogger(__name__)

KIND = "mention"


def register(app: App, service: AnswerService, queue: JobQueue) -> dict[str, Handler]:
    """Enqueue app_mention events (never ones posted by bots); return the job handler."""

    @app.middleware
    def enqueue_mentions(
        body: dict[str, Any],
        context: BoltContext,
        next: Callable[[], Any],  # noqa: A002
    ) -> Any:
        event = event_of(body)
        if event is None:
            return next()
        if event.get("type") != "app_mention":
            return next()
        if (
            event.get("bot_id")
            or event.get("subtype")
            or not event.get("user")
            or is_own(event, context.bot_user_id or "", context.bot_id)
        ):
            return BoltResponse(status=200, body="")  # bots, itself included, never get a reply
        req = ThreadRequest(
            team_id=team_of(body, context.team_id),
            channel_id=event["channel"],
            thread_ts=thread_of(event),
            message_ts=event["ts"],
            user_id=event["user"],
            text=event.get("text") or "",
            bot_user_id=context.bot_user_id or "",
            bot_id=context.bot_id,
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
        return BoltResponse(status=200, body="")

    def run(payload: dict[str, Any]) -> None:
        service.answer(ThreadRequest(**payload))

    def give_up(payload: dict[str, Any]) -> None:
        service.tell(ThreadRequest(**payload), GAVE_UP_ANSWER)

    return {KIND: Handler(run, give_up)}
