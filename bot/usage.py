"""The usage digest where people see it: `/summarize usage`, App Home, a posted weekly digest;
and the spend budgets that refuse requests over a limit."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.config import Settings
from bot.digest import (
    UTC_ZONE,
    Digest,
    Period,
    build_digest,
    parse_period,
    render_blocks,
    render_text,
)
from bot.formatting import neutralise_pings
from bot.pricing import money
from bot.schedule import parse_schedule
from bot.store.models import BudgetAlert, DigestPost, UsageRecord
from bot.threads import is_member
from bot.workspace import Effective, is_admin

log = logging.getLogger(__name__)

CHANNEL_INFO_TTL = 3600.0


class UsageService:
    """Builds digests with the right names and the right privacy for whoever looks."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        client_for: Callable[[str], WebClient],
        name_of: Callable[[str, str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._client_for = client_for
        self._name_of = name_of
        self._clock = clock
        self._channels: dict[tuple[str, str], tuple[float, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The current time from the injected clock."""
        return datetime.fromtimestamp(self._clock(), UTC)

    def zone(self) -> ZoneInfo:
        """The digest's clock, whose midnights periods align to: DIGEST_SCHEDULE's time zone,
        else UTC."""
        schedule = self._settings.digest_schedule
        return parse_schedule(schedule).zone if schedule else UTC_ZONE

    # -- building ---------------------------------------------------------------------------

    def _channel(self, team_id: str, channel_id: str) -> dict[str, Any] | None:
        key = (team_id, channel_id)
        with self._lock:
            cached = self._channels.get(key)
        if cached and time.monotonic() - cached[0] < CHANNEL_INFO_TTL:
            return cached[1]
        try:
            info = self._client_for(team_id).conversations_info(channel=channel_id)["channel"]
        except SlackApiError:
            info = None  # the bot cannot see it: treat as private
        with self._lock:
            self._channels[key] = (time.monotonic(), info)
        return info

    def build(
        self, team_id: str, period: Period, viewer: str | None, *, people: bool = True
    ) -> Digest:
        """The workspace's digest; private conversations are named only to their members, and
        the top users only when `people`."""
        with self._sessions() as s:
            rows = s.execute(
                select(UsageRecord.channel_id, UsageRecord.user_id)
                .where(
                    UsageRecord.team_id == team_id,
                    UsageRecord.created_at >= period.previous().start,
                    UsageRecord.created_at < period.end,
                )
                .distinct()
            ).all()
        channel_ids = {c for c, _ in rows if c}
        user_ids = {u for _, u in rows if u}
        private: set[str] = set()
        names: dict[str, str] = {}
        visible: set[str] = set()
        for channel_id in channel_ids:
            info = self._channel(team_id, channel_id)
            is_private = info is None or bool(
                info.get("is_private") or info.get("is_im") or info.get("is_mpim")
            )
            if is_private:
                private.add(channel_id)
                if (
                    viewer
                    and info is not None
                    and is_member(self._client_for(team_id), channel_id, viewer)
                ):
                    visible.add(channel_id)
            if info and info.get("name"):
                names[channel_id] = str(info["name"])
        who = {u: neutralise_pings(self._name_of(team_id, u)) for u in user_ids} if people else {}
        with self._sessions() as s:
            digest = build_digest(
                s,
                team_id,
                period,
                private_channels=private,
                viewer_channels=visible,
                names=who,
                channel_names=names,
            )
        if people:
            return digest
        return replace(digest, top_users=(), top_users_hidden=bool(digest.top_users))

    def for_requester(
        self, team_id: str, user_id: str, period_text: str
    ) -> tuple[str, list[dict[str, Any]]]:
        """`/summarize usage [period]`: text and blocks for the requester only, up to now; the
        top users by spend only for workspace admins and owners."""
        try:
            period = parse_period(period_text, now=self.now(), zone=self.zone(), to_date=True)
        except ValueError as exc:
            return str(exc), []
        admin = is_admin(self._client_for(team_id), user_id)
        digest = self.build(team_id, period, user_id, people=admin)
        return render_text(digest), render_blocks(digest)

    def home_view(self, team_id: str, user_id: str, *, admin: bool = False) -> dict[str, Any]:
        """The App Home tab: the viewer's own usage, then the workspace digest (the last 7 days
        up to now; the top users by spend only when the viewer is an `admin`)."""
        period = parse_period("7d", now=self.now(), zone=self.zone(), to_date=True)
        with self._sessions() as s:
            mine = s.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(UsageRecord.cache_read_tokens), 0),
                    func.coalesce(
                        func.sum(
                            UsageRecord.input_tokens
                            + UsageRecord.cache_read_tokens
                            + UsageRecord.cache_creation_tokens
                        ),
                        0,
                    ),
                    func.coalesce(func.sum(UsageRecord.cost_usd), 0.0),
                    func.coalesce(func.sum(UsageRecord.savings_usd), 0.0),
                ).where(
                    UsageRecord.team_id == team_id,
                    UsageRecord.user_id == user_id,
                    UsageRecord.created_at >= period.start,
                    UsageRecord.created_at < period.end,
                )
            ).one()
        count, read, prompt, spent, saved = mine
        share = f"{read / prompt:.0%}" if prompt else "—"
        own = (
            f"*Your last 7 days:* {count:,} requests · {prompt:,} prompt tokens, {share} from "
            f"cache · spent {money(float(spent), 4)}, caching saved {money(float(saved), 4)}"
        )
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": own}},
            {"type": "divider"},
        ]
        blocks += render_blocks(self.build(team_id, period, user_id, people=admin))
        return {"type": "home", "blocks": blocks[:100]}

    # -- posting ----------------------------------------------------------------------------

    def post_digest(
        self, team_id: str, channel_id: str, period: Period, *, dry_run: bool = False
    ) -> str:
        """Post the digest once per workspace, period and channel; says what happened."""
        digest = self.build(team_id, period, viewer=None)
        if dry_run:
            return render_text(digest)
        try:
            with self._sessions.begin() as s:
                s.add(
                    DigestPost(
                        team_id=team_id,
                        channel_id=channel_id,
                        period_start=period.start,
                        period_end=period.end,
                        posted_at=self.now(),
                    )
                )
        except IntegrityError:
            return "already posted for this period"
        try:
            resp = self._client_for(team_id).chat_postMessage(
                channel=channel_id,
                text=render_text(digest),
                blocks=render_blocks(digest),
                unfurl_links=False,
            )
        except SlackApiError as exc:
            with self._sessions.begin() as s:  # let a later run try again
                s.query(DigestPost).filter_by(
                    team_id=team_id,
                    channel_id=channel_id,
                    period_start=period.start,
                    period_end=period.end,
                ).delete()
            raise RuntimeError(f"Slack refused the post: {exc.response.get('error')}") from None
        with self._sessions.begin() as s:
            row = s.scalar(
                select(DigestPost).filter_by(
                    team_id=team_id,
                    channel_id=channel_id,
                    period_start=period.start,
                    period_end=period.end,
                )
            )
            if row is not None:
                row.message_ts = resp.get("ts")
        return "posted"

    def scheduled_period(self, now: datetime) -> Period | None:
        """The week from the scheduled moment before last to the last one (so 7 days apart on
        the schedule's clock, whatever DST did), or None without a schedule."""
        if not self._settings.digest_schedule:
            return None
        schedule = parse_schedule(self._settings.digest_schedule)
        return Period.ending(schedule.last_due(now), 7, "day", schedule.zone)

    def posting_period(self, text: str | None, now: datetime) -> Period:
        """The complete period a posted digest covers: `text` (`7d`, `24h`, ...) ending at the
        last midnight (or whole hour) of the digest's clock; without `text`, the DIGEST_SCHEDULE
        week that ended last (else `7d`). The same at every moment inside the next period, so
        the once-per-period row matches. Raises ValueError."""
        if not text:
            scheduled = self.scheduled_period(now)
            if scheduled is not None:
                return scheduled
        return parse_period(text or "7d", now=now, zone=self.zone())


class DigestScheduler(threading.Thread):
    """Posts the weekly digest when it is due; safe with several processes (unique rows)."""

    def __init__(
        self,
        usage: UsageService,
        team_ids: Callable[[], list[str]],
        channel: str,
        *,
        interval: float = 60.0,
    ) -> None:
        super().__init__(name="digest-schedule", daemon=True)
        self._usage = usage
        self._team_ids = team_ids
        self._channel = channel
        self._interval = interval
        self._stop_event = threading.Event()

    def run_once(self) -> list[str]:
        """Post whatever is due now; returns what happened per workspace."""
        period = self._usage.scheduled_period(self._usage.now())
        if period is None:
            return []
        results = []
        for team_id in self._team_ids():
            try:
                results.append(self._usage.post_digest(team_id, self._channel, period))
            except Exception as exc:
                log.error("scheduled digest for team=%s failed: %s", team_id, exc)
                results.append("failed")
        return results

    def run(self) -> None:
        while True:
            self.run_once()  # catches up at start-up; posting twice is impossible
            if self._stop_event.wait(self._interval):
                return

    def stop(self) -> None:
        """End the loop."""
        self._stop_event.set()


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
