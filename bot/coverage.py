"""What the kept transcript of a conversation is known to hold, and what may be missing.

Message events arrive for every conversation the bot is a member of, while a process is serving
them. A `Receiver` row records each serving process's uptime; a conversation's `member_since`
says from when its events were kept. A window of a thread or of a channel is complete when it
lies inside that uptime (events) or inside a window read from Slack whole (`KeptSpan`); anything
else may be missing and has to be read.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from bot.store.models import ConversationState, EventReceiver, KeptSpan, ThreadState

log = logging.getLogger(__name__)

Interval = tuple[datetime, datetime]

HEARTBEAT_SECONDS = 20.0
SEEN_EVERY_SECONDS = 5.0  # an event refreshes the receiver's row at most this often
# A receiver not seen for this long is taken for dead from its last sign of life.
LIVENESS = timedelta(seconds=90)
# Slack's clock and ours differ a little, and events are in flight for a moment: a message posted
# this close to a receiver's start, or before its end, may not have reached it.
START_MARGIN = timedelta(seconds=5)
END_MARGIN = timedelta(seconds=30)
TICK = timedelta(microseconds=1)  # the resolution of Slack's ts
CHANNEL = ""  # KeptSpan.thread_ts of a channel's top-level messages


def ts_time(ts: str) -> datetime:
    """A Slack ts ("1700000000.000100") as an aware UTC datetime, to the microsecond."""
    sec, _, frac = ts.partition(".")
    return datetime.fromtimestamp(int(sec), UTC) + timedelta(
        microseconds=int((frac or "0")[:6].ljust(6, "0"))
    )


def time_ts(t: datetime) -> str:
    """An aware datetime as a Slack ts string (microseconds)."""
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    micros = delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite drops the zone


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Overlapping or touching intervals joined, in order."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] <= i[1]):
        if out and start <= out[-1][1] + TICK:  # Slack's ts are microseconds: no gap between
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def missing(target: Interval, covered: Iterable[Interval]) -> list[Interval]:
    """The parts of `target` that no interval of `covered` holds."""
    start, end = target
    gaps: list[Interval] = []
    for a, b in merge(covered):
        if b < start or a > end:
            continue
        if a > start:
            gaps.append((start, a))
        start = max(start, b)
        if start >= end:
            break
    if start < end:
        gaps.append((start, end))
    return gaps


class Receiver:
    """This process's row in `event_receiver`: started when it begins serving Slack's events,
    refreshed by a heartbeat and by events, closed on a clean stop."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], float],
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._heartbeat = heartbeat_seconds
        self._id: int | None = None
        self._touched = 0.0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @property
    def started(self) -> bool:
        """Whether this process has begun recording that it receives events."""
        return self._id is not None

    def start(self) -> None:
        """Record that this process now receives events, and keep the record fresh."""
        with self._lock:
            if self._id is not None:
                return
            now = self._now()
            with self._sessions.begin() as s:
                row = EventReceiver(
                    host=f"{socket.gethostname()}:{os.getpid()}"[:120], started_at=now, seen_at=now
                )
                s.add(row)
                s.flush()
                self._id = row.id
            self._touched = self._clock()
        self._thread = threading.Thread(target=self._beat, name="receiver-heartbeat", daemon=True)
        self._thread.start()

    def seen(self) -> None:
        """An event arrived: refresh the record (at most every few seconds)."""
        if self._id is None:
            self.start()
            return
        if self._clock() - self._touched >= SEEN_EVERY_SECONDS:
            self._touch()

    def _touch(self, **extra: datetime) -> None:
        now = self._now()
        self._touched = self._clock()
        with self._sessions.begin() as s:
            s.execute(
                update(EventReceiver)
                .where(EventReceiver.id == self._id)
                .values(seen_at=now, **extra)
            )

    def _beat(self) -> None:
        while not self._stopping.wait(self._heartbeat):
            try:
                self._touch()
            except Exception as exc:  # the database may be down for a moment; try again
                log.warning("receiver heartbeat failed: %s", type(exc).__name__)

    def stop(self) -> None:
        """A clean stop: events are no longer received from now on."""
        self._stopping.set()
        if self._id is None:
            return
        try:
            now = self._now()
            self._touch(stopped_at=now)
        except Exception as exc:  # the row then ends at its last heartbeat, which is also true
            log.warning("could not record the receiver's stop: %s", type(exc).__name__)
        self._id = None


def receiving(session: Session, since: datetime, now: datetime) -> list[Interval]:
    """When some process was receiving events, from `since` to `now`, merged: a live receiver
    counts up to now; a stopped or dead one up to shortly before its end."""
    rows = session.execute(
        select(EventReceiver.started_at, EventReceiver.seen_at, EventReceiver.stopped_at).where(
            EventReceiver.seen_at >= since - LIVENESS
        )
    ).all()
    out: list[Interval] = []
    for started_at, seen_at, stopped_at in rows:
        start = _utc(started_at) + START_MARGIN
        seen = _utc(seen_at)
        if stopped_at is None and now - seen <= LIVENESS:
            end = now
        else:
            end = seen - END_MARGIN
        if end > start:
            out.append((max(start, since), end))
    return merge(i for i in out if i[0] < i[1])


def conversation_floor(state: ConversationState | None, *, top_level: bool) -> datetime | None:
    """From when the conversation's events are kept (None: not kept); for its top-level
    messages, also after what retention may have removed."""
    if state is None or state.member_since is None:
        return None
    floor = _utc(state.member_since)
    if top_level and state.purged_before is not None:
        floor = max(floor, _utc(state.purged_before))
    return floor


def spans(session: Session, team_id: str, channel_id: str, thread_ts: str) -> list[Interval]:
    """The windows of a thread (CHANNEL: of the channel's top level) read from Slack whole."""
    rows = session.execute(
        select(KeptSpan.start_at, KeptSpan.end_at).where(
            KeptSpan.team_id == team_id,
            KeptSpan.channel_id == channel_id,
            KeptSpan.thread_ts == thread_ts,
        )
    ).all()
    return merge((_utc(a), _utc(b)) for a, b in rows)


def add_span(
    session: Session, team_id: str, channel_id: str, thread_ts: str, span: Interval
) -> None:
    """Record that every message of the thread (CHANNEL: top level) in `span` is stored; spans
    that overlap are merged into one row."""
    key = (
        KeptSpan.team_id == team_id,
        KeptSpan.channel_id == channel_id,
        KeptSpan.thread_ts == thread_ts,
    )
    rows = session.scalars(select(KeptSpan).where(*key)).all()
    start, end = span
    for row in rows:
        a, b = _utc(row.start_at), _utc(row.end_at)
        if a <= end + TICK and b + TICK >= start:
            start, end = min(start, a), max(end, b)
            session.delete(row)
    session.flush()
    session.add(
        KeptSpan(
            team_id=team_id, channel_id=channel_id, thread_ts=thread_ts, start_at=start, end_at=end
        )
    )


def forget_spans(
    session: Session, team_id: str, channel_id: str, thread_ts: str | None = None
) -> None:
    """Drop the spans of a thread, or (thread_ts None) of every thread of the conversation."""
    query = delete(KeptSpan).where(KeptSpan.team_id == team_id, KeptSpan.channel_id == channel_id)
    if thread_ts is not None:
        query = query.where(KeptSpan.thread_ts == thread_ts)
    session.execute(query)


def thread_gaps(
    session: Session, team_id: str, channel_id: str, thread_ts: str, now: datetime
) -> list[Interval]:
    """The windows of the thread `thread_ts` (from its parent to `now`) whose messages may not
    all be stored: not covered by kept events nor by a window read whole. Empty: complete."""
    state = session.get(ConversationState, (team_id, channel_id))
    floor = conversation_floor(state, top_level=False)
    covered = spans(session, team_id, channel_id, thread_ts)
    if floor is not None:
        thread = session.scalars(
            select(ThreadState).where(
                ThreadState.team_id == team_id,
                ThreadState.channel_id == channel_id,
                ThreadState.thread_ts == thread_ts,
            )
        ).first()
        if thread is not None and thread.floor_at is not None:
            floor = max(floor, _utc(thread.floor_at))
        covered += receiving(session, floor, now)
    return missing((ts_time(thread_ts), now), covered)


def channel_gaps(
    session: Session, team_id: str, channel_id: str, window: Interval, now: datetime
) -> list[Interval]:
    """The parts of `window` whose top-level messages may not all be stored."""
    state = session.get(ConversationState, (team_id, channel_id))
    floor = conversation_floor(state, top_level=True)
    covered = spans(session, team_id, channel_id, CHANNEL)
    if floor is not None:
        covered += receiving(session, floor, now)
    return missing(window, covered)


def total(intervals: Sequence[Interval]) -> timedelta:
    """The time the intervals span, added up."""
    return sum((b - a for a, b in intervals), timedelta())
