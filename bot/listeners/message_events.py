"""Message events keep stored threads current: edits replace text, deletions remove it.

New messages need nothing here: the next read of the thread fetches them (`oldest=`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.store import data
from bot.threads import slim
from bot.workspace import team_of

log = logging.getLogger(__name__)


def register(app: App, sessions: sessionmaker[Session], now: Callable[[], datetime]) -> None:
    """Apply message_changed / message_deleted to stored messages; ignore the rest (200)."""

    @app.event("message")
    def on_message(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        subtype = event.get("subtype")
        team_id = team_of(body, context.team_id)
        channel = event.get("channel", "")
        if subtype == "message_changed" and isinstance(event.get("message"), dict):
            message = event["message"]
            if message.get("subtype") == "tombstone":
                deleted = True
            else:
                deleted = False
            with sessions.begin() as s:
                if deleted:
                    changed = data.delete_message(s, team_id, channel, message.get("ts", ""))
                else:
                    changed = data.update_message(
                        s, team_id, channel, message.get("ts", ""), slim(message), now()
                    )
            if changed:
                log.info(
                    "stored message %s/%s %s",
                    channel,
                    message.get("ts"),
                    "deleted" if deleted else "edited",
                )
        elif subtype == "message_deleted":
            with sessions.begin() as s:
                if data.delete_message(s, team_id, channel, event.get("deleted_ts", "")):
                    log.info("stored message %s/%s deleted", channel, event.get("deleted_ts"))
