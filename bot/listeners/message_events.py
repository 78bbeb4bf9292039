"""Message events keep stored threads current: edits replace text, deletions remove it.

New messages need nothing here: the next read of the thread fetches them (`oldest=`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from bot.listeners.messages import MessageEvent, MessageRouter
from bot.store import data
from bot.store.db import scrub_deleted
from bot.threads import slim

log = logging.getLogger(__name__)


def register(
    router: MessageRouter, sessions: sessionmaker[Session], now: Callable[[], datetime]
) -> None:
    """Apply message_changed / message_deleted (in every kind of conversation) to stored
    messages; the router ignores the rest (200)."""

    def on_changed(m: MessageEvent) -> None:
        message = m.event.get("message")
        if not isinstance(message, dict):
            return
        deleted = message.get("subtype") == "tombstone"
        with sessions.begin() as s:
            if deleted:
                changed = data.delete_message(s, m.team_id, m.channel, message.get("ts", ""))
            else:
                changed = data.update_message(
                    s, m.team_id, m.channel, message.get("ts", ""), slim(message), now()
                )
        if changed:
            scrub_deleted(sessions)  # the old text is not left in the SQLite file's free pages
            log.info(
                "stored message %s/%s %s",
                m.channel,
                message.get("ts"),
                "deleted" if deleted else "edited",
            )

    def on_deleted(m: MessageEvent) -> None:
        with sessions.begin() as s:
            deleted = data.delete_message(s, m.team_id, m.channel, m.event.get("deleted_ts", ""))
        if deleted:
            scrub_deleted(sessions)
            log.info("stored message %s/%s deleted", m.channel, m.event.get("deleted_ts"))

    router.on("message_changed", on_changed)
    router.on("message_deleted", on_deleted)
