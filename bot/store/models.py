"""Typed SQLAlchemy models. The schema changes only through Alembic migrations."""

from __future__ import annotations

from datetime import datetime

from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ThreadState(Base):
    """What the bot knows about one Slack thread: what it read and where its cache ends."""

    __tablename__ = "thread_state"
    __table_args__ = (UniqueConstraint("team_id", "channel_id", "thread_ts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    messages_seen: Mapped[int] = mapped_column(Integer, default=0)
    last_message_ts: Mapped[str | None] = mapped_column(String(32))
    # The boundary of the last cache write: the ts of the last message in the cached prefix,
    # a digest of the rendered prefix up to it, its length in tokens, its TTL and when.
    cache_boundary_ts: Mapped[str | None] = mapped_column(String(32))
    cache_prefix_digest: Mapped[str | None] = mapped_column(String(64))
    cache_prefix_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_ttl: Mapped[str | None] = mapped_column(String(4))
    cache_written_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_request_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    requests: Mapped[int] = mapped_column(Integer, default=0)
    # Incremental reads: when the whole thread was last read (stored messages are then current).
    full_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The thread's rhythm: gaps between requests, counted by what a TTL would have covered.
    gaps: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gaps_within_5m: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gaps_within_1h: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The gap before the last request (None: it was the first): what the workspace's habits
    # say comes next depends on it (`TtlHabit`).
    last_gap_seconds: Mapped[float | None] = mapped_column(Float)
    # The last 1-hour entry (an anchor), kept apart from the newest write: a 5-minute write of
    # the newest messages on top of it leaves it readable for an hour since it was last read.
    anchor_ts: Mapped[str | None] = mapped_column(String(32))
    anchor_digest: Mapped[str | None] = mapped_column(String(64))
    anchor_tokens: Mapped[int | None] = mapped_column(Integer)
    anchor_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Retention removed this thread's kept messages at this moment: what events delivered
    # before it is gone, so only later events (or a read) make its transcript whole again.
    floor_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TtlHabit(Base):
    """One workspace's habits: after requests whose previous gap was of kind `context` (first,
    short, medium, long), how many were followed by another request on the thread within 5
    minutes and within the hour (`seen` counts those whose outcome is known: followed by another
    request; requests not followed are counted from `thread_state` once an hour has passed)."""

    __tablename__ = "ttl_habit"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    context: Mapped[str] = mapped_column(String(8), primary_key=True)
    seen: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    within_5m: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    within_1h: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class UsageRecord(Base):
    """One model call (or one failed attempt at answering), for the usage ledger."""

    __tablename__ = "usage_record"
    __table_args__ = (Index("ix_usage_record_team_created", "team_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    savings_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    # Why the model stopped (end_turn, max_tokens, refusal, pause_turn, …); NULL: no answer.
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    # The requester pressed stop on the streamed answer; nothing more was posted.
    stopped_by_user: Mapped[bool] = mapped_column(default=False, server_default=false())


class AnswerFeedback(Base):
    """One person's vote on one answer (its ledger row): 👍 or 👎 with an optional reason.
    One row per voter and answer, replaced when they vote again; gone with the ledger row
    (retention) or the workspace (uninstall). Only counts are ever shown, never who voted."""

    __tablename__ = "answer_feedback"
    __table_args__ = (
        UniqueConstraint("usage_id", "user_id"),
        Index("ix_answer_feedback_team", "team_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    usage_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("usage_record.id", ondelete="CASCADE"),
    )
    team_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    positive: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(String(32))  # a 👎's reason (feedback.REASONS)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SlackUser(Base):
    """Display names, resolved once per workspace and kept so the transcript stays stable."""

    __tablename__ = "slack_user"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    is_bot: Mapped[bool] = mapped_column(default=False)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Summary(Base):
    """A summary shown privately to its requester, kept so a button can post it for everyone."""

    __tablename__ = "summary"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str | None] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    footer: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)  # why the summary may be incomplete
    shared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The answer's ledger row: votes on the private summary and on its shared copy go to it.
    usage_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"))


class ThreadMessage(Base):
    """A message already read from Slack, kept so a follow-up fetches only what is new."""

    __tablename__ = "thread_message"
    __table_args__ = (Index("ix_thread_message_thread", "team_id", "channel_id", "thread_ts"),)

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ts: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_ts: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)  # the fields the transcript uses, as JSON
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Compaction(Base):
    """A stored summary of a long thread's older messages, reused until the next step."""

    __tablename__ = "compaction"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_ts: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Messages with index 1..upto-1 (the root is index 0) are summarized; upto is a step multiple.
    upto: Mapped[int] = mapped_column(Integer)
    upto_ts: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(64))  # of the summarized messages' rendering
    summary: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """Durable work: recorded before Slack is acknowledged, done by a worker exactly once."""

    __tablename__ = "job"
    __table_args__ = (
        Index("ix_job_status_id", "status", "id"),
        Index("ix_job_lane_status", "lane", "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Jobs of one lane (a thread) run one at a time, oldest first.
    lane: Mapped[str] = mapped_column(String(120))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # queued | running | done | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_by: Mapped[str | None] = mapped_column(String(120))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Not to be claimed before this moment (a job waiting for Slack's read budget); NULL: now.
    run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(300))


class DigestPost(Base):
    """A posted usage digest: one row per workspace, period and channel, so posting twice
    (two schedulers, two processes, a re-run) posts once."""

    __tablename__ = "digest_post"
    __table_args__ = (UniqueConstraint("team_id", "period_start", "period_end", "channel_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    period_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    posted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    message_ts: Mapped[str | None] = mapped_column(String(32))


class BudgetAlert(Base):
    """An admin was told a budget reached 80 %: once per workspace, budget and window."""

    __tablename__ = "budget_alert"
    __table_args__ = (UniqueConstraint("team_id", "budget", "window_start"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    budget: Mapped[str] = mapped_column(String(32))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorkspaceSettings(Base):
    """What a workspace's admins chose in App Home; NULL means "the operator's default".

    Budgets here can only tighten the operator's (BUDGET_*); `channels` is a space-separated
    allow-list of conversation ids (empty: every conversation the bot is in).
    """

    __tablename__ = "workspace_settings"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    enterprise_id: Mapped[str | None] = mapped_column(String(32), index=True)
    model: Mapped[str | None] = mapped_column(String(100))
    language: Mapped[str | None] = mapped_column(String(40))
    footer: Mapped[bool | None] = mapped_column(Boolean)
    channels: Mapped[str | None] = mapped_column(Text)
    budget_daily_usd: Mapped[float | None] = mapped_column(Float)
    budget_monthly_usd: Mapped[float | None] = mapped_column(Float)
    budget_user_daily_usd: Mapped[float | None] = mapped_column(Float)
    keep_transcripts: Mapped[bool | None] = mapped_column(Boolean)
    backfill_on_join: Mapped[bool | None] = mapped_column(Boolean)
    updated_by: Mapped[str | None] = mapped_column(String(32))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class EventReceiver(Base):
    """One process serving Slack's events, from its start: it was receiving from `started_at`
    to `seen_at` (refreshed by a heartbeat and by events), so every message event of that time
    arrived. A restart is a new row; the time between rows is a gap where events may be lost."""

    __tablename__ = "event_receiver"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    host: Mapped[str] = mapped_column(String(120))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConversationState(Base):
    """What the bot keeps of one conversation from its message events."""

    __tablename__ = "conversation_state"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str | None] = mapped_column(String(8))  # channel, group, im, mpim
    # Events of this conversation are kept from this moment on (the bot's join, else the first
    # event kept); NULL: not kept (keeping off, or the bot left).
    member_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Retention may have removed kept top-level messages older than this.
    purged_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    backfilled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class KeptSpan(Base):
    """A window of a thread (or of a channel's top-level messages: thread_ts "") that was read
    from Slack whole: every message with a ts in [start_at, end_at] is stored."""

    __tablename__ = "kept_span"
    __table_args__ = (Index("ix_kept_span_thread", "team_id", "channel_id", "thread_ts"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    start_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReadBudget(Base):
    """Slack's read limit for one workspace and method (conversations.replies / .history),
    shared by every process: the tier (learnt or set) and the earliest next request."""

    __tablename__ = "read_budget"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    method: Mapped[str] = mapped_column(String(40), primary_key=True)
    tier: Mapped[str] = mapped_column(String(16))  # tier3 | limited
    reason: Mapped[str | None] = mapped_column(String(120))  # how the tier was learnt
    next_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DmGreeting(Base):
    """Somebody the bot greeted in its Messages tab (once per person and workspace)."""

    __tablename__ = "dm_greeting"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    greeted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DmConversation(Base):
    """A conversation (a thread) in the bot's DM that got its title and suggested prompts,
    which happens once, on its first turn. No text: where and when only."""

    __tablename__ = "dm_conversation"

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_ts: Mapped[str] = mapped_column(String(32), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ThreadFile(Base):
    """A file of a thread, prepared for the model once (`bot.files`): an image's bytes, a PDF's
    bytes and extracted text, or a text file's bounded text, so later requests send the same
    bytes without downloading it again. Kept and purged with the thread's text (retention,
    uninstall, the bot leaving), and on Slack's file_deleted / file_change events (by file id,
    `ix_thread_file_file`). An image's width and height are its pixels; a PDF's, its page count
    and the estimated tokens of its text, and its content is `files.pack_pdf`'s."""

    __tablename__ = "thread_file"
    __table_args__ = (Index("ix_thread_file_file", "team_id", "file_id"),)  # file events

    team_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    thread_ts: Mapped[str] = mapped_column(String(32), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # image | pdf | text | unreadable (the why)
    media_type: Mapped[str] = mapped_column(String(100))
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RenewalDeclined(Base):
    """A renewal the keep-alive weighed on an active thread and did not make (`bot.keepalive`):
    what followed it (a request on the thread within the hour, or none) is learnt like a made
    renewal's, so a workspace whose first renewals went unfollowed does not stop renewing for
    good without ever seeing that they would have paid. Where and when only; kept LEARN_DAYS."""

    __tablename__ = "renewal_declined"
    __table_args__ = (Index("ix_renewal_declined_team_at", "team_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    thread_ts: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    early: Mapped[bool] = mapped_column(Boolean, default=False)


# Bolt's OAuth tables, on our metadata so that Alembic migrations own them.
slack_installations = SQLAlchemyInstallationStore.build_installations_table(
    Base.metadata, "slack_installations"
)
slack_bots = SQLAlchemyInstallationStore.build_bots_table(Base.metadata, "slack_bots")
slack_oauth_states = SQLAlchemyOAuthStateStore.build_oauth_states_table(
    Base.metadata, "slack_oauth_states"
)
