"""The usage ledger's writes: one row per model call (answers, compactions, failures), and the
later changes to an answer's row (Slack refused to post it, or its requester stopped it).

The digest reads the ledger (bot/digest.py); housekeeping deletes old rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from bot.llm import Completion
from bot.metrics import Metrics
from bot.pricing import Usage, cost, price_for, savings
from bot.store import data
from bot.store.models import UsageRecord


class Caller(Protocol):
    """Who asked, about which thread, for what kind of call (a `ThreadRequest`)."""

    @property
    def team_id(self) -> str: ...
    @property
    def channel_id(self) -> str: ...
    @property
    def thread_ts(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def kind(self) -> str: ...


def usage_row(
    req: Caller,
    model: str,
    usage: Usage,
    latency_ms: int,
    outcome: str,
    now: datetime,
    *,
    kind: str | None = None,
) -> UsageRecord:
    """One ledger row, priced (cost and savings stay empty for a model without a price)."""
    price = price_for(model)
    return UsageRecord(
        created_at=now,
        team_id=req.team_id,
        channel_id=req.channel_id,
        thread_ts=req.thread_ts,
        user_id=req.user_id,
        kind=kind or req.kind,
        model=model,
        input_tokens=usage.input_tokens,
        cache_creation_tokens=usage.cache_creation_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        output_tokens=usage.output_tokens,
        cost_usd=cost(usage, price) if price else None,
        savings_usd=savings(usage, price) if price else None,
        latency_ms=latency_ms,
        outcome=outcome,
    )


def _completed_row(
    req: Caller, done: Completion, latency_ms: int, now: datetime, *, kind: str | None = None
) -> UsageRecord:
    row = usage_row(req, done.model, done.usage, latency_ms, "ok", now, kind=kind)
    row.stop_reason = (done.stop_reason or "")[:32] or None
    return row


class Ledger:
    """Writes the usage ledger; failures are also counted in the metrics."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        metrics: Metrics,
        default_model: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._metrics = metrics
        self._default_model = default_model
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    @staticmethod
    def answered(
        session: Session, req: Caller, done: Completion, latency_ms: int, now: datetime
    ) -> int:
        """Add an answer's row in `session` (with the thread's state); returns its id."""
        row = _completed_row(req, done, latency_ms, now)
        data.add_usage(session, row)
        session.flush()
        return row.id

    def compacted(self, req: Caller, done: Completion) -> None:
        """Record the call that folded older messages of `req`'s thread into a summary."""
        row = _completed_row(req, done, 0, self._now(), kind="compact")
        with self._sessions.begin() as s:
            data.add_usage(s, row)

    def failed(self, req: Caller, outcome: str, started: float, model: str | None = None) -> int:
        """Record a call that failed (`outcome`: the error's kind), timed from `started`;
        returns the row's id."""
        self._metrics.model_calls.labels(outcome).inc()
        now = self._now()
        latency_ms = int((time.monotonic() - started) * 1000)
        row = usage_row(req, model or self._default_model, Usage(), latency_ms, outcome, now)
        with self._sessions.begin() as s:
            data.add_usage(s, row)
            s.flush()
            return row.id

    def set_outcome(self, usage_id: int, outcome: str) -> None:
        """The answer of row `usage_id` could not be posted (`outcome`: post_<error>)."""
        with self._sessions.begin() as s:
            data.set_outcome(s, usage_id, outcome)

    def stopped_by_user(self, usage_id: int) -> None:
        """The requester stopped the answer of row `usage_id` while it streamed."""
        with self._sessions.begin() as s:
            data.set_stopped_by_user(s, usage_id)
