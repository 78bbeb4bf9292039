"""Slack's `file_deleted` and `file_change` events, handled before the ack like kept messages
(a middleware: Bolt acks events before their listeners run), so a failed purge answers 500 and
Slack delivers the event again.

Both events name only the file (`file_id`; `file_change` also `file: {id}`), never where it was
shared, so the workspace's prepared copies are found by file id (`ix_thread_file_file`).
`file_deleted`: before the ack, its prepared bytes are deleted, and the kept messages of the
threads that held them (those asked about) show Slack's tombstone instead (`{"id": …, "mode":
"tombstone"}`, rendered "[file deleted]"); a `file_deleted` job then does the same in every other
kept message of the workspace (a scan of their JSON: too slow for the ack in a large workspace),
and deletes any copy a request stored meanwhile. A `message_changed` with the tombstone may come
too (`message_events`); any order ends the same. `file_change`: the prepared bytes are dropped,
so the next request downloads the current version, once. Slack sends file_change "when any
property of a file is changed" (not only its contents), so nothing more is done: no files.info
call (the download URL serves the current version; the kept name and type are refreshed by the
next edit event or the thread's full re-read).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.jobs import Handler, JobQueue
from bot.listeners.messages import event_of
from bot.store import data
from bot.store.db import scrub_deleted
from bot.workspace import team_of

log = logging.getLogger(__name__)

FILE_DELETED = "file_deleted"
FILE_CHANGE = "file_change"
KIND = "file_deleted"  # the job that finishes a deletion over the workspace's kept messages
FILE_ID = re.compile(r"^F[A-Z0-9]{1,31}$")  # Slack's file ids (and within thread_file's column)


def file_id_of(event: dict[str, Any]) -> str | None:
    """The file a file event names (`file_id`, else `file.id`), or None when it names none
    that looks like a Slack file id."""
    file = event.get("file")
    found = event.get("file_id") or (file.get("id") if isinstance(file, dict) else None)
    return found if isinstance(found, str) and FILE_ID.match(found) else None


def register(
    app: App, sessions: sessionmaker[Session], queue: JobQueue
) -> dict[str, Handler]:
    """The middleware applying file events before the ack, their listeners (so Bolt answers
    200), and the handler of the job finishing a deletion across the workspace."""

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
        messages = 0
        with sessions.begin() as s:
            threads = data.forget_file(s, team_id, file_id)
            if kind == FILE_DELETED:  # where it was asked about, at once (indexed)
                messages = data.tombstone_file(s, team_id, file_id, threads)
        if kind == FILE_DELETED:  # the other kept messages that show it: a job (a scan)
            queue.enqueue(
                KIND,
                {"team_id": team_id, "file_id": file_id, "enterprise_id": context.enterprise_id},
                lane=f"{team_id}:files",
                dedupe_key=f"event:{body.get('event_id') or f'{kind}:{file_id}'}",
            )
        if threads or messages:
            log.info(
                "%s team=%s file=%s: prepared copies in %d threads deleted, %d kept messages "
                "changed",
                kind,
                team_id,
                file_id,
                len(threads),
                messages,
            )
        return next()

    def run(payload: dict[str, Any]) -> None:
        team_id, file_id = payload["team_id"], payload["file_id"]
        with sessions.begin() as s:
            # Again: a request that was downloading it when the event came may have stored it.
            threads = data.forget_file(s, team_id, file_id)
            messages = data.tombstone_file(s, team_id, file_id)
        scrub_deleted(sessions)  # the bytes and names are not left in the SQLite file
        log.info(
            "file_deleted team=%s file=%s: %d more prepared copies, %d more kept messages",
            team_id,
            file_id,
            len(threads),
            messages,
        )

    def give_up(payload: dict[str, Any]) -> None:
        log.error(
            "file_deleted team=%s file=%s: kept messages may still name the deleted file "
            "(its prepared bytes are gone); retention will remove them",
            payload.get("team_id"),
            payload.get("file_id"),
        )

    def nothing_more() -> None:
        """Handled by the middleware before the ack (and the job)."""

    app.event(FILE_DELETED)(nothing_more)
    app.event(FILE_CHANGE)(nothing_more)
    return {KIND: Handler(run, give_up)}
