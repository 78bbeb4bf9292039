"""Message events keep stored threads current: edits replace text, deletions remove it.

New messages are stored before the ack (`listeners/keep.py`); an edit of a message not stored
yet is stored when its conversation is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from bot.keeping import Keeper
from bot.listeners.messages import MessageEvent, MessageRouter
from bot.store import data
from bot.store.db import scrub_deleted

log = logging.getLogger(__name__)


def register(
    router: MessageRouter,
    sessions: sessionmaker[Session],
    now: Callable[[], datetime],
    keeper: Keeper,
) -> None:
    """Apply message_changed / message_deleted (in every kind of conversation, the bot's own
    messages included) to stored messages; the router ignores the rest (200)."""

    def on_changed(m: MessageEvent) -> None:
        message = m.event.get("message")
        if not isinstance(message, dict):
            return
        deleted = message.get("subtype") == "tombstone"
        if deleted:
            with sessions.begin() as s:
                changed = data.delete_message(s, m.team_id, m.channel, message.get("ts", ""))
        else:
            changed = keeper.changed(m.team_id, None, m.channel, message, m.own)
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

    router.on("message_changed", on_changed, own=True)
    router.on("message_deleted", on_deleted, own=True)
