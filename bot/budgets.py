"""Spend budgets: limits from the ledger that refuse a request over a limit, with one alert
per window when a workspace reaches 80 %."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.config import Settings
from bot.pricing import money
from bot.store.models import BudgetAlert, UsageRecord
from bot.workspace import Effective

log = logging.getLogger(__name__)


class BudgetExceeded(Exception):
    """A spend limit is reached; the message says which and when it resets."""


class Budgets:
    """Spend limits from the ledger: checked before a model call, under a per-workspace lock
    (calls in flight count at their estimated worst case), with one 80 % alert per window."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._notify = notify or (lambda team_id, text: None)
        self._lock = threading.Lock()
        self._in_flight: dict[str, list[tuple[str, float]]] = {}

    def enabled_for(self, limits: Effective | None = None) -> bool:
        """True when any limit is set (the workspace's `limits`, else the operator's)."""
        s = limits or self._settings
        return bool(s.budget_daily_usd or s.budget_monthly_usd or s.budget_user_daily_usd)

    def _spent(self, session: Session, team_id: str, since: datetime, user: str | None) -> float:
        query = select(func.coalesce(func.sum(UsageRecord.cost_usd), 0.0)).where(
            UsageRecord.team_id == team_id, UsageRecord.created_at >= since
        )
        if user is not None:
            query = query.where(UsageRecord.user_id == user)
        return float(session.scalar(query) or 0.0)

    def reserve(
        self,
        team_id: str,
        user_id: str,
        estimate: float,
        now: datetime,
        limits: Effective | None = None,
    ) -> str:
        """Check every limit counting calls in flight; hold `estimate` until `release`.

        `limits`: the workspace's effective settings (default: the operator's limits).
        Raises BudgetExceeded. Returns a token for `release`.
        """
        token = f"{team_id}:{user_id}:{time.monotonic_ns()}"
        with self._lock:
            held = self._in_flight.setdefault(team_id, [])
            windows = self._windows(user_id, now, limits or self._settings, held)
            with self._sessions() as s:
                alerts = [
                    alert
                    for window in windows
                    if (alert := self._check(s, team_id, window, limits)) is not None
                ]
            held.append((token, estimate))
        for name, since, spent, limit in alerts:  # after the read: one transaction at a time
            self._alert_once(team_id, name, since, spent, limit)
        return token

    @staticmethod
    def _windows(
        user_id: str, now: datetime, lim: Settings | Effective, held: list[tuple[str, float]]
    ) -> list[tuple[str, float | None, datetime, str | None, datetime, float]]:
        """Each limit's (name, limit, window start, user or None, reset, held in flight)."""
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        next_day = day + timedelta(days=1)
        next_month = (month + timedelta(days=32)).replace(day=1)
        team_held = sum(v for _, v in held)
        user_held = sum(v for k, v in held if k.split(":")[1] == user_id)
        return [
            ("daily", lim.budget_daily_usd, day, None, next_day, team_held),
            ("monthly", lim.budget_monthly_usd, month, None, next_month, team_held),
            ("your daily", lim.budget_user_daily_usd, day, user_id, next_day, user_held),
        ]

    def _check(
        self,
        s: Session,
        team_id: str,
        window: tuple[str, float | None, datetime, str | None, datetime, float],
        limits: Effective | None,
    ) -> tuple[str, datetime, float, float] | None:
        """Raise BudgetExceeded when the window's limit is reached; else the 80 % alert it
        calls for (name, window start, spent, limit), or None."""
        name, limit, since, user, resets, pending = window
        if not limit:
            return None
        spent = self._spent(s, team_id, since, user) + pending
        if spent >= limit:
            key = "user_daily" if user else name
            setting = (
                limits.limit_source(f"budget_{key}_usd")
                if limits is not None
                else f"BUDGET_{key.upper()}_USD"
            )
            raise BudgetExceeded(
                f"the {name} spend limit of {money(limit, 2)} is reached; it resets "
                f"{resets:%Y-%m-%d %H:%M} UTC. An admin can raise it ({setting})."
            )
        if user is None and spent >= 0.8 * limit:
            return name, since, spent, limit
        return None

    def release(self, team_id: str, token: str) -> None:
        """The call ended (its real cost is now in the ledger)."""
        with self._lock:
            held = self._in_flight.get(team_id, [])
            self._in_flight[team_id] = [(k, v) for k, v in held if k != token]

    def _alert_once(
        self, team_id: str, name: str, since: datetime, spent: float, limit: float
    ) -> None:
        try:
            with self._sessions.begin() as s:
                s.add(
                    BudgetAlert(
                        team_id=team_id, budget=name, window_start=since, sent_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:
            return
        text = (
            f"Heads-up: this workspace has used {spent / limit:.0%} of its {name} budget "
            f"({money(spent, 2)} of {money(limit, 2)})."
        )
        log.warning("team=%s budget alert: %s", team_id, text)
        self._notify(team_id, text)
