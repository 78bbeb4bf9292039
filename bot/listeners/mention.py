"""@mention anywhere: answer in the thread, with the whole thread as context."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltContext

from bot.service import AnswerService, ThreadRequest

log = logging.getLogger(__name__)


def register(app: App, service: AnswerService) -> None:
    """Answer app_mention events (never ones posted by bots)."""

    @app.event("app_mention")
    def on_mention(event: dict[str, Any], context: BoltContext) -> None:
        if event.get("bot_id") or event.get("subtype") or not event.get("user"):
            return
        service.answer(
            ThreadRequest(
                team_id=context.team_id or event.get("team") or "",
                channel_id=event["channel"],
                thread_ts=event.get("thread_ts") or event["ts"],
                message_ts=event["ts"],
                user_id=event["user"],
                text=event.get("text") or "",
                bot_user_id=context.bot_user_id or "",
                bot_id=context.bot_id,
            )
        )
