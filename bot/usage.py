"""The usage digest where people see it: `/summarize usage`, App Home, a posted weekly digest
(the spend budgets are in `bot.budgets`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
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
from bot.store.models import DigestPost, UsageRecord
from bot.threads import is_member, is_private
from bot.workspace import is_admin

log = logging.getLogger(__name__)

CHANNEL_INFO_TTL = 3600.0


class DigestNotPosted(Exception):
    """Slack refused or could not take the digest (the message says why, e.g.
    `channel_not_found`); the period stays open for a later run."""


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
            if is_private(info):
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
        """Post the digest once per workspace, period and channel; says what happened. Raises
        DigestNotPosted when the period is not over yet or Slack does not take the post."""
        if period.end > self.now():
            raise DigestNotPosted(f"the period ends {period.end:%Y-%m-%d %H:%M} UTC, after now")
        try:
            digest = self.build(team_id, period, viewer=None)
        except (SlackClientError, OSError) as exc:  # OSError: Slack unreachable
            raise DigestNotPosted(_slack_cause(exc)) from None
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
        except (SlackClientError, OSError) as exc:  # OSError: Slack unreachable
            with self._sessions.begin() as s:  # let a later run try again
                s.query(DigestPost).filter_by(
                    team_id=team_id,
                    channel_id=channel_id,
                    period_start=period.start,
                    period_end=period.end,
                ).delete()
            raise DigestNotPosted(_slack_cause(exc)) from None
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
        the once-per-period row matches. Raises ValueError, also when the period ends after the
        app's clock says it is now (a `now` in the future)."""
        period = None if text else self.scheduled_period(now)
        if period is None:
            period = parse_period(text or "7d", now=now, zone=self.zone())
        if period.end > self.now():  # `now` was in the future: that period is still going on
            raise ValueError(f"that period ends {period.end:%Y-%m-%d %H:%M} UTC, after now")
        return period


def _slack_cause(exc: Exception) -> str:
    """One line saying why a Slack call failed: its `error` code, else the exception's text."""
    if isinstance(exc, SlackApiError):
        return str(exc.response.get("error") or "error")
    return (str(exc).splitlines() or [type(exc).__name__])[0]


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
