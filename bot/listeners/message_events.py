"""Message events keep stored threads current: edits replace text, deletions remove it (and
the prepared bytes of the message's files in its thread); a file shown as Slack's tombstone
(deleted) loses its prepared bytes.

New messages are stored before the ack (`listeners/keep.py`); an edit of a message not stored
yet is stored when its conversation is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

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
                changed = data.delete_message(
                    s, m.team_id, m.channel, message.get("ts", ""), *_files_of(m.event)
                )
        else:
            changed = keeper.changed(m.team_id, None, m.channel, message, m.own)
            gone = [f["id"] for f in message.get("files") or [] if _tombstone(f)]
            if gone:  # Slack shows a deleted file as a tombstone (file_deleted may come too)
                with sessions.begin() as s:
                    changed = any([data.forget_file(s, m.team_id, f) for f in gone]) or changed
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
            deleted = data.delete_message(
                s, m.team_id, m.channel, m.event.get("deleted_ts", ""), *_files_of(m.event)
            )
        if deleted:
            scrub_deleted(sessions)
            log.info("stored message %s/%s deleted", m.channel, m.event.get("deleted_ts"))

    router.on("message_changed", on_changed, own=True)
    router.on("message_deleted", on_deleted, own=True)


def _tombstone(f: Any) -> bool:  # noqa: ANN401 - a file object from an event, any JSON
    return isinstance(f, dict) and bool(f.get("id")) and f.get("mode") == data.TOMBSTONE


def _files_of(event: dict[str, Any]) -> tuple[list[str], str | None]:
    """The file ids of a changed or deleted message as Slack's event shows it before
    (`previous_message`), and its thread: whose prepared bytes go with the message."""
    previous = event.get("previous_message")
    if not isinstance(previous, dict):
        return [], None
    files = [f["id"] for f in previous.get("files") or [] if isinstance(f, dict) and f.get("id")]
    return files, previous.get("thread_ts") or previous.get("ts")
