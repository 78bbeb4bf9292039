"""Slack's `file_deleted` and `file_change` events, handled before the ack like kept messages
(a middleware: Bolt acks events before their listeners run), so a failed purge answers 500 and
Slack delivers the event again.

Both events name only the file (`file_id`; `file_change` also `file: {id}`), never where it was
shared, so the workspace's prepared copies are found by file id. `file_deleted`: its prepared
bytes are deleted and every kept message that carried it shows Slack's tombstone instead
(`{"id": …, "mode": "tombstone"}`, rendered "[file deleted]"); a `message_changed` with the
tombstone may come too (`message_events`), and either order ends the same. `file_change`: the
prepared bytes are dropped, so the next request downloads the current version (once). Slack sends
file_change for any change of the file (also a share or a comment), so nothing else is read: no
files.info call; the kept name and type are refreshed by the next edit event or full re-read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.listeners.messages import event_of
from bot.store import data
from bot.store.db import scrub_deleted
from bot.workspace import team_of

log = logging.getLogger(__name__)

FILE_DELETED = "file_deleted"
FILE_CHANGE = "file_change"
FILE_ID = re.compile(r"^F[A-Z0-9]{1,31}$")  # Slack's file ids (and within thread_file's column)


def file_id_of(event: dict[str, Any]) -> str | None:
    """The file a file event names (`file_id`, else `file.id`), or None when it names none
    that looks like a Slack file id."""
    file = event.get("file")
    found = event.get("file_id") or (file.get("id") if isinstance(file, dict) else None)
    return found if isinstance(found, str) and FILE_ID.match(found) else None


def register(app: App, sessions: sessionmaker[Session]) -> None:
    """The middleware applying file events before the ack, and their listeners (so Bolt answers
    200; after a deletion, the SQLite file's free pages are scrubbed)."""

    @app.middleware
    def file_events(
        body: dict[str, Any],
        context: BoltContext,
        next: Callable[[], Any],  # noqa: A002
    ) -> Any:
        event = event_of(body)
        kind = event.get("type") if event is not None else None
        if event is None or kind not in (FILE_DELETED, FILE_CHANGE):
            return next()
        team_id = team_of(body, context.team_id)
        file_id = file_id_of(event)
        if not team_id or file_id is None:
            log.warning("%s event without a workspace or a file id: ignored", kind)
            return next()
        with sessions.begin() as s:
            if kind == FILE_DELETED:
                files, messages = data.file_deleted(s, team_id, file_id)
            else:
                files, messages = data.forget_file(s, team_id, file_id), 0
        if files or messages:
            log.info(
                "%s team=%s file=%s: %d prepared copies deleted, %d kept messages changed",
                kind,
                team_id,
                file_id,
                files,
                messages,
            )
        return next()

    def after_deletion() -> None:
        """After the ack: the deleted bytes are not left in the SQLite file's free pages."""
        scrub_deleted(sessions)

    def nothing_more() -> None:
        """Handled by the middleware before the ack."""

    app.event(FILE_DELETED)(after_deletion)
    app.event(FILE_CHANGE)(nothing_more)
