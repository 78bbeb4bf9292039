"""Data functions: each takes a session and never commits (the caller owns the transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.store.models import (
    AnswerFeedback,
    Compaction,
    ConversationState,
    DmConversation,
    DmGreeting,
    EventReceiver,
    Job,
    KeptSpan,
    ReadBudget,
    RenewalDeclined,
    SlackUser,
    Summary,
    ThreadFile,
    ThreadMessage,
    ThreadState,
    TtlHabit,
    UsageRecord,
    WorkspaceSettings,
)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def forget_receivers_before(session: Session, cutoff: datetime) -> int:
    """Drop the records of event receivers last seen before `cutoff`."""
    result = session.execute(delete(EventReceiver).where(EventReceiver.seen_at < cutoff))
    return result.rowcount or 0


def forget_jobs_before(session: Session, cutoff: datetime) -> int:
    """Drop finished jobs older than `cutoff` (their dedupe keys are no longer needed)."""
    result = session.execute(
        delete(Job).where(Job.status.in_(("done", "failed")), Job.created_at < cutoff)
    )
    return result.rowcount or 0


def forget_usage_before(session: Session, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` usage ledger rows created before `cutoff` (their votes go with
    them: ON DELETE CASCADE); returns how many."""
    old = select(UsageRecord.id).where(UsageRecord.created_at < cutoff).limit(limit)
    result = session.execute(delete(UsageRecord).where(UsageRecord.id.in_(old)))
    return result.rowcount or 0


def forget_declined_before(session: Session, cutoff: datetime) -> int:
    """Delete the declined renewals noted before `cutoff` (older than anything the keep-alive
    learns from); returns how many."""
    result = session.execute(delete(RenewalDeclined).where(RenewalDeclined.at < cutoff))
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


def set_stopped_by_user(session: Session, usage_id: int) -> None:
    """Mark a ledger row's answer as stopped by its requester (Slack's stop button)."""
    row = session.get(UsageRecord, usage_id)
    if row is not None:
        row.stopped_by_user = True


def record_vote(
    session: Session, team_id: str, usage_id: int, user_id: str, positive: bool, now: datetime
) -> str | None:
    """`user_id`'s vote on the answer of ledger row `usage_id`, replacing their earlier one (and
    its reason); returns the answer's kind, or None (nothing stored) when no answer of `team_id`
    has that row."""
    row = session.get(UsageRecord, usage_id)
    if row is None or row.team_id != team_id:
        return None
    stmt = _insert(session, AnswerFeedback).values(
        usage_id=usage_id,
        team_id=team_id,
        user_id=user_id,
        positive=positive,
        reason=None,
        created_at=now,
        updated_at=now,
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["usage_id", "user_id"],
            set_={"positive": positive, "reason": None, "updated_at": now},
        )
    )
    return row.kind


def set_vote_reason(
    session: Session, team_id: str, usage_id: int, user_id: str, reason: str, now: datetime
) -> bool:
    """The reason of `user_id`'s 👎 on that answer; False when they have no 👎 on it (in
    `team_id`)."""
    result = session.execute(
        update(AnswerFeedback)
        .where(
            AnswerFeedback.usage_id == usage_id,
            AnswerFeedback.user_id == user_id,
            AnswerFeedback.team_id == team_id,
            AnswerFeedback.positive.is_(False),
        )
        .values(reason=reason, updated_at=now)
    )
    return bool(result.rowcount)


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


def load_messages(
    session: Session, team_id: str, channel_id: str, thread_ts: str
) -> list[dict[str, Any]]:
    """Stored messages of a thread (unordered)."""
    rows = session.scalars(
        select(ThreadMessage.body).where(
            ThreadMessage.team_id == team_id,
            ThreadMessage.channel_id == channel_id,
            ThreadMessage.thread_ts == thread_ts,
        )
    )
    return [json.loads(b) for b in rows]


def load_top_level(
    session: Session, team_id: str, channel_id: str, oldest: str, latest: str
) -> list[dict[str, Any]]:
    """Stored top-level messages (thread parents and lone messages) with oldest <= ts <= latest
    (Slack ts strings of equal length compare in time order)."""
    rows = session.scalars(
        select(ThreadMessage.body).where(
            ThreadMessage.team_id == team_id,
            ThreadMessage.channel_id == channel_id,
            ThreadMessage.ts == ThreadMessage.thread_ts,
            ThreadMessage.ts >= oldest,
            ThreadMessage.ts <= latest,
        )
    )
    return [json.loads(b) for b in rows]


def reply_counts(
    session: Session, team_id: str, channel_id: str, parents: list[str]
) -> dict[str, int]:
    """How many replies of each thread (by its parent's ts) are stored."""
    if not parents:
        return {}
    rows = session.execute(
        select(ThreadMessage.thread_ts, func.count())
        .where(
            ThreadMessage.team_id == team_id,
            ThreadMessage.channel_id == channel_id,
            ThreadMessage.thread_ts.in_(parents),
            ThreadMessage.ts != ThreadMessage.thread_ts,
        )
        .group_by(ThreadMessage.thread_ts)
    ).all()
    return {t: int(n) for t, n in rows}


def put_messages(
    session: Session,
    team_id: str,
    channel_id: str,
    thread_ts: str,
    messages: Iterable[dict[str, Any]],
    now: Any,
) -> None:
    """Keep messages just read from Slack, replacing stored copies of the same ts (a read is
    at least as fresh as what is stored)."""
    messages = list(messages)
    if not messages:
        return
    session.execute(
        delete(ThreadMessage).where(
            ThreadMessage.team_id == team_id,
            ThreadMessage.channel_id == channel_id,
            ThreadMessage.ts.in_([m["ts"] for m in messages]),
        )
    )
    store_messages(session, team_id, channel_id, thread_ts, messages, now)


def _insert(session: Session, model: Any) -> Any:
    """The dialect's INSERT (for ON CONFLICT clauses)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise RuntimeError(f"unsupported database {dialect}")  # pragma: no cover


def _insert_ignore(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    stmt = _insert(session, ThreadMessage).on_conflict_do_nothing()
    for start in range(0, len(rows), 500):
        session.execute(stmt, rows[start : start + 500])


def store_messages(
    session: Session,
    team_id: str,
    channel_id: str,
    thread_ts: str,
    messages: Iterable[dict[str, Any]],
    now: Any,
    *,
    replace: bool = False,
) -> None:
    """Keep read messages; `replace` first forgets what was stored for the thread."""
    if replace:
        session.execute(
            delete(ThreadMessage).where(
                ThreadMessage.team_id == team_id,
                ThreadMessage.channel_id == channel_id,
                ThreadMessage.thread_ts == thread_ts,
            )
        )
    rows = [
        {
            "team_id": team_id,
            "channel_id": channel_id,
            "ts": m["ts"],
            "thread_ts": thread_ts,
            "body": json.dumps(m, ensure_ascii=False, sort_keys=True),
            "updated_at": now,
        }
        for m in messages
    ]
    _insert_ignore(session, rows)


def _first(session: Session, model: Any, values: dict[str, Any]) -> bool:
    """Insert a row unless its key exists; True when this call inserted it (exactly one of
    several racing callers, in any process)."""
    key = next(iter(model.__table__.primary_key.columns))
    stmt = _insert(session, model).values(**values).on_conflict_do_nothing().returning(key)
    return session.execute(stmt).first() is not None


def first_greeting(session: Session, team_id: str, user_id: str, now: datetime) -> bool:
    """Note that `user_id` is greeted now; False when they were greeted before."""
    return _first(session, DmGreeting, {"team_id": team_id, "user_id": user_id, "greeted_at": now})


def forget_greeting(session: Session, team_id: str, user_id: str) -> None:
    """The greeting could not be posted: the next visit tries again."""
    session.execute(
        delete(DmGreeting).where(DmGreeting.team_id == team_id, DmGreeting.user_id == user_id)
    )


def first_turn(
    session: Session, team_id: str, channel_id: str, thread_ts: str, now: datetime
) -> bool:
    """Note that the DM conversation `thread_ts` started; False when it had before."""
    values = {"team_id": team_id, "channel_id": channel_id, "thread_ts": thread_ts,
              "started_at": now}
    return _first(session, DmConversation, values)


def put_message(
    session: Session,
    team_id: str,
    channel_id: str,
    thread_ts: str,
    message: dict[str, Any],
    now: Any,
) -> None:
    """Store one message, replacing what was stored under its ts (the bot's own answer, whose
    final text may differ from what its events carried)."""
    body = json.dumps(message, ensure_ascii=False, sort_keys=True)
    stmt = _insert(session, ThreadMessage).values(
        team_id=team_id,
        channel_id=channel_id,
        ts=message["ts"],
        thread_ts=thread_ts,
        body=body,
        updated_at=now,
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["team_id", "channel_id", "ts"],
            set_={"body": body, "thread_ts": thread_ts, "updated_at": now},
        )
    )


def get_message(session: Session, team_id: str, channel_id: str, ts: str) -> dict[str, Any] | None:
    """One stored message, if any."""
    row = session.get(ThreadMessage, (team_id, channel_id, ts))
    return json.loads(row.body) if row is not None else None


def note_conversation(
    session: Session, team_id: str, channel_id: str, kind: str | None, since: datetime
) -> None:
    """A message of the conversation is being kept: its events are kept from `since` unless an
    earlier moment is already recorded; its kind (channel, group, im, mpim) when not known."""
    stmt = _insert(session, ConversationState).values(
        team_id=team_id, channel_id=channel_id, kind=kind, member_since=since
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["team_id", "channel_id"],
            set_={
                "member_since": func.coalesce(ConversationState.member_since, since),
                "kind": func.coalesce(ConversationState.kind, kind),
            },
        )
    )


def joined_conversation(
    session: Session, team_id: str, channel_id: str, kind: str | None, at: datetime
) -> None:
    """The bot joined the conversation at `at`: its events are kept from then on (a re-join
    starts anew)."""
    stmt = _insert(session, ConversationState).values(
        team_id=team_id, channel_id=channel_id, kind=kind, member_since=at
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["team_id", "channel_id"],
            set_={"member_since": at, "kind": func.coalesce(kind, ConversationState.kind)},
        )
    )


def is_kept(session: Session, team_id: str, channel_id: str) -> bool:
    """Whether the conversation's events are being kept (it has a `member_since`)."""
    state = session.get(ConversationState, (team_id, channel_id))
    return state is not None and state.member_since is not None


def forget_kept(session: Session, team_id: str, channel_id: str | None = None) -> int:
    """Delete what is kept of one conversation (the bot left it) or, `channel_id` None, of the
    whole workspace (keeping turned off): stored messages, compactions, windows read whole,
    prepared files and the conversation's state; stored threads are then read whole again.
    Waiting keep-alive calls go too: each holds its thread's prompt, and upgrades from what
    was kept (`bot.keepalive.lane_of`: `team:channel:thread:keepalive`). Returns the messages
    deleted."""
    removed = 0
    for model in (ThreadMessage, Compaction, KeptSpan, ConversationState, ThreadFile):
        query = delete(model).where(model.team_id == team_id)
        if channel_id is not None:
            query = query.where(model.channel_id == channel_id)
        count = session.execute(query).rowcount or 0
        removed += count if model is ThreadMessage else 0
    lanes = f"{team_id}:" if channel_id is None else f"{team_id}:{channel_id}:"
    drop_waiting_jobs(session, "keepalive", lanes)
    threads = update(ThreadState).where(ThreadState.team_id == team_id)
    if channel_id is not None:
        threads = threads.where(ThreadState.channel_id == channel_id)
    session.execute(threads.values(full_read_at=None))
    return removed


def drop_waiting_jobs(session: Session, kind: str, lanes: str) -> int:
    """Delete the queued (not running) jobs of `kind` whose lane starts with `lanes` (a
    workspace's, a conversation's or one thread's whole lane); how many."""
    result = session.execute(
        delete(Job).where(
            Job.kind == kind,
            Job.status == "queued",
            Job.lane.startswith(lanes, autoescape=True),
        )
    )
    return result.rowcount or 0


def update_message(
    session: Session, team_id: str, channel_id: str, ts: str, body: dict[str, Any], now: Any
) -> bool:
    """Replace a stored message's content after an edit; False when it is not stored."""
    result = session.execute(
        update(ThreadMessage)
        .where(
            ThreadMessage.team_id == team_id,
            ThreadMessage.channel_id == channel_id,
            ThreadMessage.ts == ts,
        )
        .values(body=json.dumps(body, ensure_ascii=False, sort_keys=True), updated_at=now)
    )
    return bool(result.rowcount)


def delete_message(
    session: Session,
    team_id: str,
    channel_id: str,
    ts: str,
    files: Iterable[str] = (),
    thread_ts: str | None = None,
) -> bool:
    """Forget a deleted message and the prepared bytes of its files in its thread (those it was
    stored with, and `files`: the ids Slack's event names, in thread `thread_ts` when it was
    not stored); False when it was not stored."""
    row = session.get(ThreadMessage, (team_id, channel_id, ts))
    ids = set(files)
    if row is not None:
        thread_ts = row.thread_ts
        ids.update(f["id"] for f in json.loads(row.body).get("files") or [] if f.get("id"))
    if ids and thread_ts:
        session.execute(
            delete(ThreadFile).where(
                ThreadFile.team_id == team_id,
                ThreadFile.channel_id == channel_id,
                ThreadFile.thread_ts == thread_ts,
                ThreadFile.file_id.in_(sorted(ids)),
            )
        )
    if row is None:
        return False
    session.delete(row)
    return True


TOMBSTONE = "tombstone"  # a file object's `mode` once the file is deleted (Slack's tombstone)


def forget_file(session: Session, team_id: str, file_id: str) -> list[tuple[str, str]]:
    """Slack changed or deleted a file: forget its prepared bytes in every thread of the
    workspace (the next request downloads it again, if it still can). Returns the threads
    (channel, thread ts) that held them."""
    rows = session.execute(
        delete(ThreadFile)
        .where(ThreadFile.team_id == team_id, ThreadFile.file_id == file_id)
        .returning(ThreadFile.channel_id, ThreadFile.thread_ts)
    ).all()
    return sorted({(r[0], r[1]) for r in rows})


def tombstone_file(
    session: Session,
    team_id: str,
    file_id: str,
    threads: Iterable[tuple[str, str]] | None = None,
) -> int:
    """Slack deleted a file: show it in the kept messages that carried it as Slack does, a
    tombstone (`{"id": …, "mode": "tombstone"}`: no name, no URL), in `threads` (channel,
    thread ts) or, None, in the whole workspace. Idempotent. Returns the messages changed.

    The event names only the file, so stored messages are searched for its id (a LIKE over
    their JSON, then checked parsed): within the given threads by their index; over the
    workspace a scan of its messages (0.1-0.5 s per 100,000: bench/file_deleted.py)."""
    needle = json.dumps({"id": file_id})[1:-1]  # "id": "F…", as the bodies are written
    query = select(ThreadMessage).where(
        ThreadMessage.team_id == team_id, ThreadMessage.body.contains(needle, autoescape=True)
    )
    if threads is not None:
        pairs = list(threads)
        if not pairs:
            return 0
        query = query.where(
            or_(
                *(
                    and_(ThreadMessage.channel_id == c, ThreadMessage.thread_ts == t)
                    for c, t in pairs
                )
            )
        )
    changed = 0
    for row in session.scalars(query):
        body = json.loads(row.body)
        carried = body.get("files") or []
        if not any(f.get("id") == file_id and f.get("mode") != TOMBSTONE for f in carried):
            continue
        body["files"] = [
            {"id": file_id, "mode": TOMBSTONE} if f.get("id") == file_id else f for f in carried
        ]
        # updated_at stays: a deletion is no activity that would keep the thread longer.
        row.body = json.dumps(body, ensure_ascii=False, sort_keys=True)
        changed += 1
    return changed


def get_compaction(
    session: Session, team_id: str, channel_id: str, thread_ts: str
) -> Compaction | None:
    """The stored summary of a long thread's older part, if any."""
    return session.get(Compaction, (team_id, channel_id, thread_ts))


def save_compaction(session: Session, compaction: Compaction) -> None:
    """Insert or replace a thread's compaction."""
    session.merge(compaction)


def purge_workspace(session: Session, team_id: str) -> dict[str, int]:
    """Delete everything stored about a workspace's conversations; the ledger keeps numbers."""
    counts = {}
    for model in (
        AnswerFeedback,  # who voted: the ledger keeps numbers, not people's votes
        ThreadMessage,
        Compaction,
        Summary,
        ThreadState,
        SlackUser,
        WorkspaceSettings,
        ConversationState,
        KeptSpan,
        ReadBudget,
        TtlHabit,
        DmGreeting,
        DmConversation,
        ThreadFile,
        RenewalDeclined,
    ):
        result = session.execute(delete(model).where(model.team_id == team_id))
        counts[model.__tablename__] = result.rowcount or 0
    # Jobs carry the request's text; their lanes start with the workspace id. Running ones go
    # too (the one purging after itself included): a job keeps what it already loaded, and
    # finishing or heartbeating a deleted job changes no row.
    result = session.execute(delete(Job).where(Job.lane.startswith(f"{team_id}:", autoescape=True)))
    counts[Job.__tablename__] = result.rowcount or 0
    session.execute(
        update(UsageRecord).where(UsageRecord.team_id == team_id).values(thread_ts=None)
    )
    return counts


def purge_idle_threads(session: Session, cutoff: datetime, now: datetime) -> int:
    """Retention: forget whole threads (messages, compaction, windows read whole) whose newest
    stored message was stored before `cutoff` and that had no request since; returns the
    messages deleted. A purged thread's state notes the moment (`floor_at`: only later events
    or a read make it whole again), and each conversation that lost something notes that its
    top-level messages before `cutoff` may be gone (`purged_before`)."""
    asked = exists().where(
        ThreadState.team_id == ThreadMessage.team_id,
        ThreadState.channel_id == ThreadMessage.channel_id,
        ThreadState.thread_ts == ThreadMessage.thread_ts,
        ThreadState.last_request_at >= cutoff,
    )
    idle = (
        select(ThreadMessage.team_id, ThreadMessage.channel_id, ThreadMessage.thread_ts)
        .where(~asked)
        .group_by(ThreadMessage.team_id, ThreadMessage.channel_id, ThreadMessage.thread_ts)
        .having(func.max(ThreadMessage.updated_at) < cutoff)
    )
    removed = 0
    conversations: set[tuple[str, str]] = set()
    for team_id, channel_id, thread_ts in session.execute(idle).all():
        for model in (ThreadMessage, Compaction, KeptSpan, ThreadFile):
            count = (
                session.execute(
                    delete(model).where(
                        model.team_id == team_id,
                        model.channel_id == channel_id,
                        model.thread_ts == thread_ts,
                    )
                ).rowcount
                or 0
            )
            removed += count if model is ThreadMessage else 0
        session.execute(
            update(ThreadState)
            .where(
                ThreadState.team_id == team_id,
                ThreadState.channel_id == channel_id,
                ThreadState.thread_ts == thread_ts,
            )
            .values(floor_at=now, full_read_at=None)
        )
        conversations.add((team_id, channel_id))
    for team_id, channel_id in sorted(conversations):
        state = session.get(ConversationState, (team_id, channel_id))
        if state is not None:
            before = as_utc(state.purged_before)
            state.purged_before = cutoff if before is None else max(before, cutoff)
    # Prepared files stored before the cutoff of threads nobody asked about since (also where
    # no text of the thread is stored any more): a later request downloads them again.
    session.execute(
        delete(ThreadFile).where(
            ThreadFile.stored_at < cutoff,
            ~exists().where(
                ThreadState.team_id == ThreadFile.team_id,
                ThreadState.channel_id == ThreadFile.channel_id,
                ThreadState.thread_ts == ThreadFile.thread_ts,
                ThreadState.last_request_at >= cutoff,
            ),
        )
    )
    # Compactions of threads nobody asked about since the cutoff (their text is the model's).
    session.execute(
        delete(Compaction).where(
            exists().where(
                ThreadState.team_id == Compaction.team_id,
                ThreadState.channel_id == Compaction.channel_id,
                ThreadState.thread_ts == Compaction.thread_ts,
                ThreadState.last_request_at < cutoff,
            )
        )
    )
    session.execute(delete(KeptSpan).where(KeptSpan.thread_ts == "", KeptSpan.end_at < cutoff))
    session.execute(delete(Summary).where(Summary.created_at < cutoff))
    return removed


def gap_context(seconds: float | None) -> str:
    """The kind of gap before a request: first (none), short (<= 5 min), medium (<= 1 h), long."""
    if seconds is None:
        return "first"
    if seconds <= 300:
        return "short"
    return "medium" if seconds <= 3600 else "long"


def note_habit(session: Session, team_id: str, context: str, gap: float) -> None:
    """A request came `gap` seconds after the previous one on its thread, whose context was
    `context`: count the outcome in the workspace's habits."""
    values = {"seen": 1, "within_5m": int(gap <= 300), "within_1h": int(gap <= 3600)}
    stmt = _insert(session, TtlHabit).values(team_id=team_id, context=context, **values)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["team_id", "context"],
            set_={k: getattr(TtlHabit, k) + v for k, v in values.items()},
        )
    )


def habit_counts(session: Session, team_id: str, now: datetime) -> dict[str, tuple[int, int, int]]:
    """The workspace's habits by context: (requests whose outcome is known, followed within 5
    minutes, within the hour). A thread's last request counts once an hour has passed without
    another one (followed by nothing within the hour)."""
    counts = {
        row.context: (row.seen, row.within_5m, row.within_1h)
        for row in session.scalars(select(TtlHabit).where(TtlHabit.team_id == team_id))
    }
    gap = ThreadState.last_gap_seconds
    context = case(
        (gap.is_(None), "first"), (gap <= 300, "short"), (gap <= 3600, "medium"), else_="long"
    )
    cutoff = now - timedelta(hours=1)
    open_ended = session.execute(
        select(context, func.count())
        .where(
            ThreadState.team_id == team_id,
            ThreadState.requests > 0,
            ThreadState.last_request_at < cutoff,
        )
        .group_by(context)
    ).all()
    for name, n in open_ended:
        seen, w5, w1 = counts.get(name, (0, 0, 0))
        counts[name] = (seen + int(n), w5, w1)
    return counts


def continuation_counts(session: Session, team_id: str, now: datetime) -> tuple[int, int]:
    """How often the workspace's requests were followed by another on their thread at all:
    (requests counted, followed by another), over the threads with no request for an hour
    (every request but a thread's last was followed; a later request corrects it). A thread
    still being asked about is left out whole: counting its follow-ups at once but a thread's
    end only an hour later would overrate going on, most of all on a fresh install."""
    cutoff = now - timedelta(hours=1)
    requests, threads = session.execute(
        select(func.coalesce(func.sum(ThreadState.requests), 0), func.count()).where(
            ThreadState.team_id == team_id,
            ThreadState.requests > 0,
            ThreadState.last_request_at < cutoff,
        )
    ).one()
    return int(requests), int(requests) - int(threads)


def thread_files(
    session: Session, team_id: str, channel_id: str, thread_ts: str, file_ids: Iterable[str]
) -> dict[str, ThreadFile]:
    """The prepared files of a thread among `file_ids`, by file id."""
    ids = list(file_ids)
    if not ids:
        return {}
    rows = session.scalars(
        select(ThreadFile).where(
            ThreadFile.team_id == team_id,
            ThreadFile.channel_id == channel_id,
            ThreadFile.thread_ts == thread_ts,
            ThreadFile.file_id.in_(ids),
        )
    )
    return {r.file_id: r for r in rows}


def keep_thread_file(session: Session, row: ThreadFile) -> None:
    """Store a prepared file (replacing one of the same thread and id)."""
    session.merge(row)
