"""Slack's limit on reading conversations, paced per workspace across every process.

`conversations.replies` and `conversations.history` are Tier 3 (50+ requests a minute per
method and workspace) for internal and Marketplace apps, and 1 request a minute with at most 15
messages a page for other commercially distributed apps. The database holds, per workspace and
method, the tier and the earliest moment of the next request (a generic cell rate: a request may
go when that moment is not further ahead than the tier's burst allows). The tier is set by the
operator (`SLACK_READ_TIER`) or learnt from Slack's answers: a 429 `ratelimited`, or a page cut
at 15 messages though more were asked for and more remain.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.store.models import ReadBudget as BudgetRow

log = logging.getLogger(__name__)

REPLIES = "conversations.replies"
HISTORY = "conversations.history"
# A learnt limited tier is tried at Tier 3 again after this long (the app may have been listed).
RELEARN_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class Tier:
    """One of Slack's rate-limit tiers for a read method."""

    name: str
    interval: float  # seconds between requests, on average
    burst: int  # requests that may go back to back
    page_limit: int  # the largest `limit` worth asking for

    def describe(self) -> str:
        """The limit in words, for status lines."""
        if self.name == "limited":
            return "Slack lets this app read one page of 15 messages a minute"
        return "Slack's read limit"


TIER3 = Tier("tier3", 60 / 50, 50, 200)  # Slack allows bursts: a minute's worth
# One a minute, with a second to spare: a request right on the minute is refused by Slack when
# the two clocks differ by a hair.
LIMITED = Tier("limited", 61.0, 1, 15)
TIERS = {t.name: t for t in (TIER3, LIMITED)}


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class ReadBudget:
    """Take request slots for a workspace's reads; learn its tier from Slack's answers."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        clock: Callable[[], float],
        *,
        setting: str = "auto",
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._setting = setting

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _row(self, s: Session, team_id: str, method: str) -> BudgetRow:
        row = s.get(BudgetRow, (team_id, method))
        if row is not None:
            return row
        try:
            with s.begin_nested():
                row = BudgetRow(team_id=team_id, method=method, tier=self._default().name)
                s.add(row)
        except IntegrityError:  # another process made it first
            row = s.get(BudgetRow, (team_id, method))
            assert row is not None
        return row

    def _default(self) -> Tier:
        return LIMITED if self._setting == "limited" else TIER3

    def _tier_of(self, row: BudgetRow, now: datetime) -> Tier:
        if self._setting in TIERS:
            return TIERS[self._setting]
        tier = TIERS.get(row.tier, TIER3)
        learnt = _utc(row.updated_at)
        if tier is LIMITED and learnt is not None and now - learnt > RELEARN_AFTER:
            return TIER3
        return tier

    def tier(self, team_id: str, method: str) -> Tier:
        """The tier this workspace's `method` is paced at."""
        now = self._now()
        with self._sessions.begin() as s:
            return self._tier_of(self._row(s, team_id, method), now)

    def take(self, team_id: str, method: str) -> float:
        """Take a request slot: 0.0 when the request may go now (the slot is spent), else the
        seconds until one may (nothing is spent)."""
        for _ in range(20):  # compare-and-swap: another process may take the slot first
            now = self._now()
            with self._sessions.begin() as s:
                row = self._row(s, team_id, method)
                tier = self._tier_of(row, now)
                due = _utc(row.next_at)
                earliest = now if due is None else max(due, now)
                ahead = (earliest - now).total_seconds()
                allowed = (tier.burst - 1) * tier.interval
                if ahead > allowed + 1e-6:
                    return ahead - allowed
                new = earliest + timedelta(seconds=tier.interval)
                match = (
                    BudgetRow.next_at.is_(None)
                    if row.next_at is None
                    else BudgetRow.next_at == row.next_at
                )
                done = s.execute(
                    update(BudgetRow)
                    .where(BudgetRow.team_id == team_id, BudgetRow.method == method, match)
                    .values(next_at=new)
                    .execution_options(synchronize_session=False)
                )
                if done.rowcount == 1:
                    return 0.0
        return self.tier(team_id, method).interval

    def estimate(self, team_id: str, method: str, pages: int) -> float:
        """Seconds until `pages` more requests are done, at the workspace's pace."""
        now = self._now()
        with self._sessions.begin() as s:
            row = self._row(s, team_id, method)
            tier = self._tier_of(row, now)
            due = _utc(row.next_at)
        wait = max(0.0, ((due or now) - now).total_seconds() - (tier.burst - 1) * tier.interval)
        extra = max(0, pages - tier.burst) if wait == 0 else max(0, pages - 1)
        return wait + extra * tier.interval

    def throttled(self, team_id: str, method: str, retry_after: float) -> None:
        """Slack answered 429: no request before Retry-After; under `auto` the workspace is
        taken to be at the limited tier (a Tier 3 workspace is not throttled at our pace)."""
        now = self._now()
        with self._sessions.begin() as s:
            row = self._row(s, team_id, method)
            row.next_at = now + timedelta(seconds=max(1.0, retry_after))
            if self._setting != "auto":
                return
            for m in (REPLIES, HISTORY):  # Slack limits both methods alike
                other = self._row(s, team_id, m)
                if other.tier != LIMITED.name:
                    self._learn(other, now, f"429 ratelimited (Retry-After {retry_after:g} s)")

    def page_cut(self, team_id: str, method: str, *, asked: int, got: int) -> None:
        """A page came back with more remaining but at most 15 of the `asked` messages: the
        limited tier's cap."""
        if self._setting != "auto" or asked <= LIMITED.page_limit or got > LIMITED.page_limit:
            return
        now = self._now()
        with self._sessions.begin() as s:
            for m in (REPLIES, HISTORY):
                row = self._row(s, team_id, m)
                if row.tier != LIMITED.name:
                    self._learn(row, now, f"pages cut at {got} of {asked} messages")
                    if m == method:  # the request just made counts against the new limit
                        row.next_at = now + timedelta(seconds=LIMITED.interval)

    @staticmethod
    def _learn(row: BudgetRow, now: datetime, reason: str) -> None:
        log.warning(
            "team=%s %s: Slack limits this app's reads (%s); pacing them at one a minute, "
            "15 messages a page (SLACK_READ_TIER sets it)",
            row.team_id,
            row.method,
            reason,
        )
        row.tier = LIMITED.name
        row.reason = reason[:120]
        row.updated_at = now


def pages(messages: int, tier: Tier) -> int:
    """Requests needed to read `messages` at the tier's page size (at least one)."""
    return max(1, math.ceil(messages / tier.page_limit))
