"""Data functions: each takes a session and never commits (the caller owns the transaction)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.store.models import ProcessedEvent, SlackUser, ThreadState, UsageRecord


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def claim_event(session: Session, event_id: str, now: datetime) -> bool:
    """Record a Slack event id; False when some process already took it."""
    try:
        with session.begin_nested():
            session.add(ProcessedEvent(event_id=event_id, received_at=now))
            session.flush()
    except IntegrityError:
        return False
    return True


def forget_events_before(session: Session, cutoff: datetime) -> int:
    """Drop event ids older than `cutoff` (Slack stops retrying within minutes)."""
    result = session.execute(delete(ProcessedEvent).where(ProcessedEvent.received_at < cutoff))
    return result.rowcount or 0


def get_thread(
    session: Session, team_id: str, channel_id: str, thread_ts: str
) -> ThreadState | None:
    """The stored state of a thread, if any."""
    return session.scalar(
        select(ThreadState).where(
            ThreadState.team_id == team_id,
            ThreadState.channel_id == channel_id,
            ThreadState.thread_ts == thread_ts,
        )
    )


def get_or_create_thread(
    session: Session, team_id: str, channel_id: str, thread_ts: str
) -> ThreadState:
    """The thread's state row, created (race-safely) when missing."""
    state = get_thread(session, team_id, channel_id, thread_ts)
    if state is not None:
        return state
    try:
        with session.begin_nested():
            state = ThreadState(
                team_id=team_id,
                channel_id=channel_id,
                thread_ts=thread_ts,
                messages_seen=0,
                requests=0,
            )
            session.add(state)
            session.flush()
        return state
    except IntegrityError:
        found = get_thread(session, team_id, channel_id, thread_ts)
        assert found is not None
        return found


def add_usage(session: Session, record: UsageRecord) -> None:
    """Append one row to the usage ledger."""
    session.add(record)


def set_outcome(session: Session, usage_id: int, outcome: str) -> None:
    """Change the outcome of a ledger row (e.g. the answer could not be posted)."""
    row = session.get(UsageRecord, usage_id)
    if row is not None:
        row.outcome = outcome


def get_user_names(
    session: Session, team_id: str, user_ids: set[str], *, fresh_after: datetime
) -> dict[str, str]:
    """Known display names fetched after `fresh_after`."""
    if not user_ids:
        return {}
    rows = session.execute(
        select(SlackUser.user_id, SlackUser.name, SlackUser.fetched_at).where(
            SlackUser.team_id == team_id, SlackUser.user_id.in_(sorted(user_ids))
        )
    )
    return {uid: name for uid, name, at in rows if as_utc(at) >= fresh_after}


def save_user_name(
    session: Session, team_id: str, user_id: str, name: str, is_bot: bool, now: datetime
) -> None:
    """Insert or refresh a display name."""
    row = session.get(SlackUser, (team_id, user_id))
    if row is None:
        try:
            with session.begin_nested():
                session.add(
                    SlackUser(
                        team_id=team_id, user_id=user_id, name=name, is_bot=is_bot, fetched_at=now
                    )
                )
                session.flush()
            return
        except IntegrityError:
            row = session.get(SlackUser, (team_id, user_id))
            if row is None:
                return
    row.name, row.is_bot, row.fetched_at = name, is_bot, now
