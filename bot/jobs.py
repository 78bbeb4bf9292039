"""Durable work: a job is stored before Slack is acknowledged and a worker completes it.

- Dedupe: a job's `dedupe_key` (Slack's event_id, or a command's trigger_id) is unique, so a
  redelivered event, or the same event reaching two processes, makes one job.
- Order: jobs of one lane (a thread) run one at a time, oldest first, so a follow-up reads the
  cache its predecessor wrote.
- Waiting: a handler that must wait (for Slack's read budget) raises `Deferred`; the job goes
  back to the queue, not to be claimed before `until`, and frees its worker meanwhile.
- Crashes: a running job heartbeats; one whose heartbeat is older than the lease (its process
  died) is claimed again. After MAX_ATTEMPTS claims it ends with a message to the user.
- Several processes share the queue on PostgreSQL (`FOR UPDATE SKIP LOCKED`); on SQLite one
  process is supported (claims are serialised by a lock in the process).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker

from bot.store.data import as_utc, drop_waiting_jobs
from bot.store.models import Job

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
# PostgreSQL: a job, unless its dedupe_key is taken (then no row comes back). Built once, so
# that SQLAlchemy's statement cache serves every enqueue.
_INSERT_NEW_JOB = (
    pg_insert(Job).on_conflict_do_nothing(index_elements=[Job.dedupe_key]).returning(Job.id)
)


@dataclass(frozen=True)
class Claimed:
    """A job this worker now owns."""

    id: int
    kind: str
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Handler:
    """How to run a kind of job, and what to do when it keeps failing."""

    run: Callable[[dict[str, Any]], None]
    give_up: Callable[[dict[str, Any]], None]


class Deferred(Exception):  # noqa: N818 - not an error: the job asks to run again later
    """Raised by a handler: run this job again at `until` (with `payload`, if given), without
    counting an attempt; the worker is free meanwhile."""

    def __init__(self, until: datetime, payload: dict[str, Any] | None = None) -> None:
        super().__init__(f"deferred until {until.isoformat()}")
        self.until = until
        self.payload = payload


def worker_identity() -> str:
    """host:pid:random — unique per process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobQueue:
    """Enqueue, claim, heartbeat and finish jobs in the database."""

    def __init__(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        *,
        lease_seconds: float = 120.0,
        worker_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._clock = clock  # when a deferred job is due (the app's clock)
        self._sessions = sessions
        self.lease = timedelta(seconds=lease_seconds)
        self.worker_id = worker_id or worker_identity()
        self._pg = engine.dialect.name == "postgresql"
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._claim_lock = threading.Lock()
        self.changed = threading.Condition()

    def _notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        lane: str,
        dedupe_key: str | None = None,
        run_at: datetime | None = None,
    ) -> bool:
        """Store a job (committed when this returns); False when `dedupe_key` was seen before.
        `run_at`: not to be claimed before then."""
        row = {
            "run_at": run_at,
            "dedupe_key": dedupe_key,
            "kind": kind,
            "lane": lane[:120],
            "payload": json.dumps(payload, ensure_ascii=False),
            "status": "queued",
            "attempts": 0,
            "created_at": datetime.now(UTC),
        }
        if self._pg:
            if not self._insert_new(row):
                return False
        else:
            try:
                with self._engine.begin() as conn:  # Core: the ack path stays short
                    conn.execute(insert(Job), row)
            except IntegrityError:
                return False
        with self.changed:
            self.changed.notify()  # one idle worker is enough
        return True

    def _insert_new(self, row: dict[str, Any]) -> bool:
        """PostgreSQL: store the job unless its dedupe_key is taken; False when it is. One
        statement in autocommit: one round trip instead of BEGIN, INSERT, COMMIT, committed
        (durable) when the server answers. A connection the server had dropped (store/db.py pings
        only idle ones) is replaced and the insert tried once more: the dedupe_key makes a second
        try harmless even if the first was committed before its answer was lost."""
        for retry in (False, True):
            try:
                with self._autocommit.connect() as conn:
                    return conn.execute(_INSERT_NEW_JOB, row).first() is not None
            except DBAPIError as exc:
                if retry or not exc.connection_invalidated or row["dedupe_key"] is None:
                    raise
                log.warning("database connection lost while queueing a job; trying a new one")
        raise AssertionError("unreachable")

    def claim(self) -> Claimed | None:
        """Take the next runnable job: queued, or running with a dead owner; oldest in its lane."""
        with self._claim_lock, self._sessions.begin() as s:
            now = datetime.now(UTC)
            stale = now - self.lease
            due = datetime.fromtimestamp(self._clock(), UTC)
            other = aliased(Job)
            first_in_lane = (
                select(func.min(other.id))
                .where(other.lane == Job.lane, other.status.in_(("queued", "running")))
                .scalar_subquery()
            )
            query = (
                select(Job)
                .where(
                    ((Job.status == "queued") & (Job.run_at.is_(None) | (Job.run_at <= due)))
                    | ((Job.status == "running") & (Job.heartbeat_at < stale)),
                    Job.id == first_in_lane,
                )
                .order_by(Job.id)
                .limit(1)
            )
            if self._pg:
                query = query.with_for_update(skip_locked=True)
            job = s.scalars(query).first()
            if job is None:
                return None
            if job.status == "running":
                log.warning(
                    "job %d: owner %s stopped heartbeating; taking it over", job.id, job.locked_by
                )
            job.status = "running"
            job.locked_by = self.worker_id
            job.heartbeat_at = now
            job.attempts = (job.attempts or 0) + 1
            return Claimed(job.id, job.kind, json.loads(job.payload), job.attempts)

    def heartbeat(self, job_ids: list[int]) -> None:
        """Tell other workers these jobs are still alive."""
        if not job_ids:
            return
        with self._sessions.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id.in_(job_ids), Job.locked_by == self.worker_id)
                .values(heartbeat_at=datetime.now(UTC))
            )

    def finish(self, job_id: int, status: str = "done", error: str | None = None) -> None:
        """Mark a job done or failed and forget its payload (the request's text): only the row
        stays, so a redelivered event is still recognised as a duplicate."""
        with self._sessions.begin() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    payload="{}",
                    status=status,
                    finished_at=datetime.now(UTC),
                    last_error=(error or None) and error[:300],
                    locked_by=None,
                )
            )
        self._notify()

    def defer(self, job_id: int, until: datetime, payload: dict[str, Any] | None = None) -> None:
        """Put a running job back in the queue until `until` (its attempt not counted)."""
        values: dict[str, Any] = {
            "status": "queued",
            "locked_by": None,
            "run_at": until,
            "attempts": Job.attempts - 1,
        }
        if payload is not None:
            values["payload"] = json.dumps(payload, ensure_ascii=False)
        with self._sessions.begin() as s:
            s.execute(update(Job).where(Job.id == job_id).values(**values))
        self._notify()

    def next_due(self) -> datetime | None:
        """When the earliest deferred job is due (None: no job waits)."""
        with self._sessions() as s:
            return as_utc(s.scalar(select(func.min(Job.run_at)).where(Job.status == "queued")))

    def wake(self) -> None:
        """Let idle workers look for due jobs now (e.g. after a test clock moved)."""
        self._notify()

    def drop_waiting(self, lane: str, kind: str) -> int:
        """Delete the queued (not running) jobs of `kind` in `lane`; how many."""
        with self._sessions.begin() as s:
            return drop_waiting_jobs(s, kind, lane)

    def release(self, job_ids: list[int] | None = None) -> int:
        """Put this worker's running jobs (or the given ones) back in the queue (shutdown)."""
        with self._sessions.begin() as s:
            stmt = update(Job).where(Job.status == "running", Job.locked_by == self.worker_id)
            if job_ids is not None:
                stmt = stmt.where(Job.id.in_(job_ids))
            count = s.execute(
                stmt.values(status="queued", locked_by=None, attempts=Job.attempts - 1)
            ).rowcount
        self._notify()
        return count or 0

    def release_dead_local(self) -> int:
        """At start-up: jobs held by processes of this host that no longer exist go back."""
        host = socket.gethostname()
        released = 0
        with self._sessions.begin() as s:
            running = s.scalars(
                select(Job).where(Job.status == "running", Job.locked_by.like(f"{host}:%"))
            ).all()
            for job in running:
                pid = int((job.locked_by or "::").split(":")[1] or 0)
                if pid and not _alive(pid):
                    job.status = "queued"
                    job.locked_by = None
                    released += 1
        if released:
            log.warning("re-queued %d jobs of processes that died", released)
            self._notify()
        return released

    def pending(self) -> int:
        """Jobs not finished yet and not waiting for a later moment (deferred, or queued behind a
        deferred job of their lane)."""
        due = datetime.fromtimestamp(self._clock(), UTC)
        ahead = aliased(Job)
        waiting_ahead = (
            select(ahead.id)
            .where(
                ahead.lane == Job.lane,
                ahead.id < Job.id,
                ahead.status == "queued",
                ahead.run_at > due,
            )
            .exists()
        )
        with self._sessions() as s:
            return (
                s.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(
                        (Job.status == "running")
                        | (
                            (Job.status == "queued")
                            & (Job.run_at.is_(None) | (Job.run_at <= due))
                            & ~waiting_ahead
                        )
                    )
                )
                or 0
            )

    def counts(self) -> dict[str, int]:
        """Jobs by status."""
        with self._sessions() as s:
            return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())

    def oldest_queued_age(self) -> float:
        """Seconds the oldest queued job has waited (0 when none)."""
        with self._sessions() as s:
            oldest = as_utc(
                s.scalar(select(func.min(Job.created_at)).where(Job.status == "queued"))
            )
        return (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerPool:
    """Threads that claim and run jobs until stopped; one heartbeat thread for all of them."""

    def __init__(
        self,
        queue: JobQueue,
        handlers: dict[str, Handler],
        *,
        threads: int = 8,
        poll_seconds: float = 1.0,
        on_done: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self._queue = queue
        self._handlers = handlers
        self._threads_n = threads
        self._poll = poll_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()
        self._on_done = on_done or (lambda kind, outcome, seconds: None)

    def start(self) -> None:
        """Start the workers and the heartbeat."""
        try:
            self._queue.release_dead_local()
        except Exception as exc:  # the database may be down; workers retry as they poll
            log.error("could not check for abandoned jobs: %s", type(exc).__name__)
        for i in range(self._threads_n):
            t = threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        hb.start()
        self._threads.append(hb)

    def stop(self, timeout: float = 30.0) -> int:
        """Stop claiming; wait up to `timeout` for jobs in hand, then re-queue what is left."""
        self._stopping.set()
        with self._queue.changed:
            self._queue.changed.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = list(self._running)
        released = self._queue.release(left) if left else 0
        if released:
            log.warning("shutdown: re-queued %d unfinished jobs", released)
        return released

    def in_flight(self) -> int:
        """Jobs this pool is running right now."""
        with self._lock:
            return len(self._running)

    def _heartbeat(self) -> None:
        interval = max(0.2, self._queue.lease.total_seconds() / 4)
        while not self._stopping.wait(interval):
            with self._lock:
                ids = list(self._running)
            try:
                self._queue.heartbeat(ids)
            except Exception:
                log.exception("heartbeat failed")

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self._queue.claim()
            except Exception:
                log.exception("claiming a job failed")
                job = None
            if job is None:
                with self._queue.changed:
                    if not self._stopping.is_set():
                        self._queue.changed.wait(self._poll)
                continue
            self._run(job)

    def _run(self, job: Claimed) -> None:
        handler = self._handlers.get(job.kind)
        with self._lock:
            self._running[job.id] = job.kind
        started = time.monotonic()
        outcome = "failed"
        try:
            if handler is None:
                log.error("job %d: no handler for kind %s", job.id, job.kind)
                self._queue.finish(job.id, "failed", f"unknown kind {job.kind}")
                return
            if job.attempts > MAX_ATTEMPTS:
                log.error(
                    "job %d (%s) failed %d times; giving up", job.id, job.kind, job.attempts - 1
                )
                try:
                    handler.give_up(job.payload)
                finally:
                    self._queue.finish(job.id, "failed", "gave up after repeated failures")
                return
            handler.run(job.payload)
            self._queue.finish(job.id, "done")
            outcome = "done"
        except Deferred as wait:
            self._queue.defer(job.id, wait.until, wait.payload)
            outcome = "deferred"
        except Exception as exc:
            log.exception("job %d (%s) raised", job.id, job.kind)
            self._queue.finish(job.id, "failed", f"{type(exc).__name__}")
        finally:
            with self._lock:
                self._running.pop(job.id, None)
            self._on_done(job.kind, outcome, time.monotonic() - started)
