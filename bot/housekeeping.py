"""Periodic clean-up: finished jobs, stored text past the retention limit, old ledger rows, and
declined renewals older than the keep-alive learns from."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from bot.config import Settings
from bot.keepalive import LEARN_DAYS
from bot.store import data
from bot.store.db import scrub_deleted

log = logging.getLogger(__name__)

JOB_KEEP = timedelta(days=2)  # Slack stops redelivering an event within minutes
LEDGER_BATCH = 10_000  # ledger rows deleted per transaction (SQLite has one writer)


def run_housekeeping(sessions: sessionmaker[Session], settings: Settings, now: datetime) -> None:
    """Forget finished jobs, the text of threads idle past MESSAGE_RETENTION_DAYS, and usage
    ledger rows older than USAGE_RETENTION_DAYS (unless 0)."""
    with sessions.begin() as s:
        jobs = data.forget_jobs_before(s, now - JOB_KEEP)
        cutoff = now - timedelta(days=settings.message_retention_days)
        removed = data.purge_idle_threads(s, cutoff, now)
        # Receivers' uptime older than twice the retention covers nothing kept any more (a
        # thread still asked about is read once for that time, then kept as read).
        data.forget_receivers_before(s, now - 2 * timedelta(days=settings.message_retention_days))
        declined = data.forget_declined_before(s, now - timedelta(days=LEARN_DAYS))
    ledger = 0
    if settings.usage_retention_days:
        cutoff = now - timedelta(days=settings.usage_retention_days)
        while True:  # short transactions: requests keep writing the ledger meanwhile
            with sessions.begin() as s:
                batch = data.forget_usage_before(s, cutoff, LEDGER_BATCH)
            ledger += batch
            if batch < LEDGER_BATCH:
                break
    scrub_deleted(sessions)
    log.info(
        "housekeeping: %d finished jobs, %d stored messages, %d usage ledger rows, "
        "%d declined renewals removed",
        jobs,
        removed,
        ledger,
        declined,
    )


class Housekeeper(threading.Thread):
    """Runs housekeeping every `interval` seconds until stopped (a daemon thread)."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, *, interval: float = 3600
    ) -> None:
        super().__init__(name="housekeeping", daemon=True)
        self._sessions = sessions
        self._settings = settings
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        from datetime import UTC

        while not self._stop_event.wait(self._interval):
            try:
                run_housekeeping(self._sessions, self._settings, datetime.now(UTC))
            except Exception:
                log.exception("housekeeping failed")

    def stop(self) -> None:
        """Ask the thread to end after its current run."""
        self._stop_event.set()
