"""The usage digest: aggregate queries over the usage ledger, and their Slack/plain rendering.

Pure: no Slack calls, no environment. The caller owns the session and says which channels are
private and which of those the viewer may see; `build_digest` never returns the id of a
private channel the viewer cannot see.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import case, distinct, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from bot.feedback import REASONS
from bot.pricing import money
from bot.store.models import AnswerFeedback, UsageRecord

MAX_DAYS = 365
TOP_N = 5
CHART_LINES = 31
CHART_WIDTH = 24
MAX_LIST = 10  # models, kinds and failure causes shown before "… and N more"
SECTION_LIMIT = 3000
HEADER_LIMIT = 150
MAX_BLOCKS = 50
PRIVATE_LABEL = "private conversations"
_PERIOD = re.compile(r"^(\d{1,4})\s*([hdw])$")
_PING_WORD = re.compile(r"@(?=(?:here|channel|everyone|group))", re.IGNORECASE)
_PERIOD_HELP = "Use a period like 24h, 7d, 30d or 2w (at most 365 days)."


# -- periods --------------------------------------------------------------------------------

UTC_ZONE = ZoneInfo("UTC")


@dataclass(frozen=True)
class Period:
    """A half-open interval [start, end) of `count` whole hours or days of `zone`'s clock.

    `start` and `end` are aware UTC datetimes on boundaries of that clock (a day is a calendar
    day, so 7 days across a DST change are 167 or 169 hours). `to_date`: the period runs to the
    end of the current hour or day, which has not ended yet."""

    start: datetime
    end: datetime
    zone: ZoneInfo = UTC_ZONE
    count: int = 1
    unit: str = "day"  # "hour" or "day"
    to_date: bool = False

    @staticmethod
    def ending(
        end: datetime, count: int, unit: str, zone: ZoneInfo = UTC_ZONE, *, to_date: bool = False
    ) -> Period:
        """The `count` hours or calendar days of `zone` that end at `end`."""
        local_end = end.astimezone(zone)
        if unit == "day":  # wall-clock arithmetic: the same time of day, `count` days before
            start = local_end.replace(tzinfo=None) - timedelta(days=count)
            begin = start.replace(tzinfo=zone)
        else:  # elapsed hours (aware arithmetic in one zone would be wall-clock)
            begin = _utc(end) - timedelta(hours=count)
        return Period(_utc(begin), _utc(end), zone, count, unit, to_date)

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Period:
        """The `count` hours or days just before this one (complete)."""
        return Period.ending(self.start, self.count, self.unit, self.zone)

    def describe(self) -> str:
        """'7 days', '1 day', '12 hours'."""
        return f"{self.count} {self.unit}" if self.count == 1 else f"{self.count} {self.unit}s"

    def local(self, moment: datetime) -> datetime:
        """`moment` on the period's clock."""
        return moment.astimezone(self.zone)


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive value is taken as UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _floor(now: datetime, unit: str, zone: ZoneInfo) -> datetime:
    """The last boundary of `unit` on `zone`'s clock at or before `now` (a local midnight or a
    local whole hour)."""
    local = _utc(now).astimezone(zone)
    if unit == "day":
        return datetime.combine(local.date(), time(0), tzinfo=zone)
    return local.replace(minute=0, second=0, microsecond=0)


def _next(boundary: datetime, unit: str, zone: ZoneInfo) -> datetime:
    """The boundary after `boundary` (aware, on `zone`'s clock)."""
    if unit == "day":
        return datetime.combine(boundary.date() + timedelta(days=1), time(0), tzinfo=zone)
    return (_utc(boundary) + timedelta(hours=1)).astimezone(zone)


def parse_period(
    text: str, *, now: datetime, zone: ZoneInfo = UTC_ZONE, to_date: bool = False
) -> Period:
    """The period named by `text` ("7d" when empty; "24h", "30d", "2w", ...), aligned to `zone`'s
    clock: `7d` is the 7 whole calendar days ending at the last midnight before `now`, `24h` the
    24 whole hours ending at the last full hour. `to_date`: end at the next boundary instead,
    so that the current day (or hour), not over yet, is the last one counted.

    Raises ValueError with a short message meant for the user."""
    spec = text.strip().lower() or "7d"
    m = _PERIOD.match(spec)
    if not m:
        raise ValueError(f"I don't understand the period “{text.strip()[:20]}”. {_PERIOD_HELP}")
    amount, letter = int(m.group(1)), m.group(2)
    count = amount * {"h": 1, "d": 1, "w": 7}[letter]
    unit = "hour" if letter == "h" else "day"
    if count < 1:
        raise ValueError(f"The period must be at least one hour. {_PERIOD_HELP}")
    if count > (MAX_DAYS * 24 if unit == "hour" else MAX_DAYS):
        raise ValueError(f"That period is too long. {_PERIOD_HELP}")
    end = _floor(now, unit, zone)
    if to_date:
        end = _next(end, unit, zone)
    return Period.ending(end, count, unit, zone, to_date=to_date)


# -- the digest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Totals:
    """Sums over ledger rows. Spend and savings only count rows whose price is known."""

    requests: int = 0
    ok: int = 0
    input_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    savings_usd: float = 0.0
    unpriced_requests: int = 0

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens read from cache (0..1)."""
        return self.cache_read_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def uncached_usd(self) -> float:
        """What the priced calls would have cost without caching."""
        return self.cost_usd + self.savings_usd

    @property
    def savings_share(self) -> float | None:
        """Savings as a share of the uncached cost, or None when nothing was priced."""
        return self.savings_usd / self.uncached_usd if self.uncached_usd > 0 else None

    @property
    def priced(self) -> bool:
        """False when every row had an unknown price."""
        return self.unpriced_requests < self.requests

    def __add__(self, other: Totals) -> Totals:
        return Totals(*(getattr(self, f) + getattr(other, f) for f in Totals.__dataclass_fields__))


@dataclass(frozen=True)
class ModelUsage:
    model: str
    totals: Totals


@dataclass(frozen=True)
class ChannelLine:
    """One channel by spend; channel_id None is the folded line of private conversations."""

    channel_id: str | None
    name: str | None
    requests: int
    cost_usd: float


@dataclass(frozen=True)
class UserLine:
    user_id: str
    name: str | None
    requests: int
    cost_usd: float


@dataclass(frozen=True)
class DayBucket:
    """`days` calendar days of the period's clock from `start` (one, unless the period is
    long)."""

    start: date
    days: int
    requests: int
    cost_usd: float
    savings_usd: float


@dataclass(frozen=True)
class KindRating:
    """The votes on one kind of request's answers (mention, recap, summarize, dm, …)."""

    kind: str
    up: int
    down: int

    @property
    def votes(self) -> int:
        return self.up + self.down

    @property
    def share(self) -> float:
        """Share of 👍 among the votes (0..1)."""
        return self.up / self.votes if self.votes else 0.0


@dataclass(frozen=True)
class Ratings:
    """Votes on the period's answers: counts only, never who voted."""

    up: int = 0
    down: int = 0
    answers: int = 0  # answers with at least one vote
    kinds: tuple[KindRating, ...] = ()  # worst rated first
    reasons: tuple[tuple[str, int], ...] = ()  # a 👎's reason, most given first

    @property
    def votes(self) -> int:
        return self.up + self.down


@dataclass(frozen=True)
class Digest:
    """Usage of one workspace over a period, with the previous period's totals to compare."""

    team_id: str
    period: Period
    totals: Totals
    previous: Totals
    users: int = 0
    threads: int = 0
    channels: int = 0
    kinds: tuple[tuple[str, int], ...] = ()  # most requests first
    models: tuple[ModelUsage, ...] = ()  # most spend first
    failures: tuple[tuple[str, int], ...] = ()  # outcome != "ok", most first
    top_channels: tuple[ChannelLine, ...] = ()
    top_users: tuple[UserLine, ...] = ()
    days: tuple[DayBucket, ...] = ()
    top_users_hidden: bool = False  # left out for this viewer (not a workspace admin)
    ratings: Ratings = Ratings()


def _in_period(team_id: str, period: Period) -> list[ColumnElement[bool]]:
    u = UsageRecord
    return [
        u.team_id == team_id,
        u.created_at >= _utc(period.start),
        u.created_at < _utc(period.end),
    ]


def _money_sum(col: Any) -> ColumnElement[Any]:
    return func.coalesce(func.sum(col), 0.0)


def _int_sum(col: Any) -> ColumnElement[Any]:
    return func.coalesce(func.sum(col), 0)


@dataclass(frozen=True)
class _Span:
    """One line of the chart: `days` calendar days of the period's clock from `day`, starting
    at `begin` (UTC; the period's start for the first line)."""

    day: date
    days: int
    begin: datetime


def _chart_spans(period: Period) -> list[_Span]:
    """One span per calendar day the period touches, or per few days so that at most
    CHART_LINES remain."""
    first = period.local(period.start).date()
    last = period.local(period.end - timedelta(microseconds=1)).date()
    ndays = (last - first).days + 1
    step = max(1, math.ceil(ndays / CHART_LINES))
    spans = []
    for offset in range(0, ndays, step):
        day = first + timedelta(days=offset)
        midnight = _utc(datetime.combine(day, time(0), tzinfo=period.zone))
        spans.append(_Span(day, min(step, ndays - offset), max(midnight, period.start)))
    return spans


@dataclass(frozen=True)
class _Group:
    span: int  # index into the chart's spans
    model: str
    kind: str
    outcome: str
    totals: Totals


def _groups(
    session: Session, team_id: str, period: Period, spans: Sequence[_Span] = ()
) -> list[_Group]:
    """Totals per (model, kind, outcome), and per chart span too when `spans` are given: one
    scan, and few groups (their number does not grow with the ledger)."""
    u = UsageRecord
    span: ColumnElement[Any] = literal(0)
    if len(spans) > 1:  # the index of the last span that began at or before created_at
        span = case(
            *((u.created_at < s.begin, i - 1) for i, s in enumerate(spans) if i),
            else_=len(spans) - 1,
        )
    rows_in = (
        select(
            u.model,
            u.kind,
            u.outcome,
            span.label("span"),
            u.input_tokens,
            u.cache_creation_tokens,
            u.cache_read_tokens,
            u.output_tokens,
            u.cost_usd,
            u.savings_usd,
        )
        .where(*_in_period(team_id, period))
        .subquery()
    )
    r_ = rows_in.c
    keys = [r_.model, r_.kind, r_.outcome, r_.span]  # grouped outside: one expression per key
    rows = session.execute(
        select(
            *keys,
            func.count(),
            _int_sum(r_.input_tokens),
            _int_sum(r_.cache_creation_tokens),
            _int_sum(r_.cache_read_tokens),
            _int_sum(r_.output_tokens),
            _money_sum(r_.cost_usd),
            _money_sum(r_.savings_usd),
            _int_sum(case((r_.cost_usd.is_(None), 1), else_=0)),
        ).group_by(*keys)
    ).all()
    out = []
    for r in rows:
        model, kind, outcome, index = r[0], r[1], r[2], r[3]
        n, inp, cw, cr, outp, cost, sav, unpriced = r[-8:]
        totals = Totals(
            requests=int(n),
            ok=int(n) if outcome == "ok" else 0,
            input_tokens=int(inp),
            cache_creation_tokens=int(cw),
            cache_read_tokens=int(cr),
            output_tokens=int(outp),
            cost_usd=float(cost),
            savings_usd=float(sav),
            unpriced_requests=int(unpriced),
        )
        out.append(_Group(int(index), model, kind, outcome, totals))
    return out


def _chart_buckets(spans: Sequence[_Span], per_span: Mapping[int, Totals]) -> tuple[DayBucket, ...]:
    out = []
    for i, s in enumerate(spans):
        t = per_span.get(i, Totals())
        out.append(DayBucket(s.day, s.days, t.requests, t.cost_usd, t.savings_usd))
    return tuple(out)


def _is_private(channel_id: str, private_channels: set[str]) -> bool:
    # DMs (D…) and legacy private channels / group DMs (G…) are private even if the caller
    # forgot to say so.
    return channel_id in private_channels or channel_id[:1] in ("D", "G")


def _channels(
    session: Session,
    team_id: str,
    period: Period,
    private_channels: set[str],
    viewer_channels: set[str],
    channel_names: Mapping[str, str],
) -> tuple[tuple[ChannelLine, ...], int, int]:
    """The top channels by spend (hidden private ones folded), and how many channels and
    threads were served."""
    u = UsageRecord
    rows = session.execute(
        select(
            u.channel_id,
            func.count(),
            _money_sum(u.cost_usd),
            func.count(distinct(u.thread_ts)),  # a thread is (channel, ts); NULL once purged
        )
        .where(*_in_period(team_id, period))
        .group_by(u.channel_id)
    ).all()
    lines: list[ChannelLine] = []
    hidden_n, hidden_cost, threads = 0, 0.0, 0
    for channel_id, n, cost, channel_threads in rows:
        threads += int(channel_threads)
        if _is_private(channel_id, private_channels) and channel_id not in viewer_channels:
            hidden_n += int(n)
            hidden_cost += float(cost)
        else:
            name = channel_names.get(channel_id)
            lines.append(ChannelLine(channel_id, name, int(n), float(cost)))
    if hidden_n:
        lines.append(ChannelLine(None, None, hidden_n, hidden_cost))
    lines.sort(key=lambda c: (-c.cost_usd, -c.requests, c.channel_id or ""))
    return tuple(lines[:TOP_N]), len(rows), threads


def _users(
    session: Session, team_id: str, period: Period, names: Mapping[str, str]
) -> tuple[tuple[UserLine, ...], int]:
    """The top users by spend, and how many users were served."""
    u = UsageRecord
    spend = _money_sum(u.cost_usd).label("spend")
    n = func.count().label("n")
    users = func.count().over().label("users")  # groups before LIMIT: the distinct users
    rows = session.execute(
        select(u.user_id, n, spend, users)
        .where(*_in_period(team_id, period), u.user_id.is_not(None))
        .group_by(u.user_id)
        .order_by(spend.desc(), n.desc(), u.user_id)
        .limit(TOP_N)
    ).all()
    top = tuple(UserLine(uid, names.get(uid), int(k), float(c)) for uid, k, c, _ in rows)
    return top, int(rows[0].users) if rows else 0


def _ratings(session: Session, team_id: str, period: Period) -> Ratings:
    """The votes on the answers of the period, per kind of request (worst rated first) and the
    reasons given for 👎."""
    f, u = AnswerFeedback, UsageRecord
    voted = (
        select(u.kind, f.positive, f.reason, f.usage_id)
        .join(u, u.id == f.usage_id)
        .where(*_in_period(team_id, period), f.team_id == team_id)
        .subquery()
    )
    v = voted.c
    rows = session.execute(
        select(v.kind, v.positive, func.count()).group_by(v.kind, v.positive)
    ).all()
    answers = session.scalar(select(func.count(distinct(v.usage_id)))) or 0
    reasons = session.execute(
        select(v.reason, func.count())
        .where(v.positive.is_(False), v.reason.is_not(None))
        .group_by(v.reason)
    ).all()
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for kind, positive, n in rows:
        (up if positive else down)[kind] = (up if positive else down).get(kind, 0) + int(n)
    kinds = [KindRating(k, up.get(k, 0), down.get(k, 0)) for k in {*up, *down}]
    kinds.sort(key=lambda r: (r.share, -r.down, r.kind))
    return Ratings(
        up=sum(up.values()),
        down=sum(down.values()),
        answers=int(answers),
        kinds=tuple(kinds),
        reasons=_ranked({str(r): int(n) for r, n in reasons}),
    )


def _ranked(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def build_digest(
    session: Session,
    team_id: str,
    period: Period,
    *,
    private_channels: set[str],
    viewer_channels: set[str] | None = None,
    names: Mapping[str, str] = {},  # noqa: B006 - read only
    channel_names: Mapping[str, str] = {},  # noqa: B006 - read only
) -> Digest:
    """The digest of `team_id` over `period`, from grouped queries on the ledger.

    Private channels (and D…/G… ids) are named only when in `viewer_channels`; the rest are
    folded into one line without an id."""
    totals = Totals()
    models: dict[str, Totals] = {}
    per_span: dict[int, Totals] = {}
    kinds: dict[str, int] = {}
    failures: dict[str, int] = {}
    spans = _chart_spans(period)
    for g in _groups(session, team_id, period, spans):
        t = g.totals
        totals += t
        models[g.model] = models.get(g.model, Totals()) + t
        per_span[g.span] = per_span.get(g.span, Totals()) + t
        kinds[g.kind] = kinds.get(g.kind, 0) + t.requests
        if g.outcome != "ok":
            failures[g.outcome] = failures.get(g.outcome, 0) + t.requests
    previous = Totals()
    for g in _groups(session, team_id, period.previous()):
        previous += g.totals
    top_channels, channels, threads = _channels(
        session, team_id, period, private_channels, viewer_channels or set(), channel_names
    )
    top_users, users = _users(session, team_id, period, names)
    return Digest(
        team_id=team_id,
        period=period,
        totals=totals,
        previous=previous,
        users=users,
        threads=threads,
        channels=channels,
        kinds=_ranked(kinds),
        models=tuple(
            ModelUsage(m, t)
            for m, t in sorted(
                models.items(), key=lambda kv: (-kv[1].cost_usd, -kv[1].requests, kv[0])
            )
        ),
        failures=_ranked(failures),
        top_channels=top_channels,
        top_users=top_users,
        days=_chart_buckets(spans, per_span),
        ratings=_ratings(session, team_id, period),
    )


# -- formatting -----------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}"


def _count(count: int, noun: str) -> str:
    """'1 user', '1,234 users'."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def _versus(current: float, previous: float, span: str, shown: str) -> str:
    """How `current` compares with the previous period's value (`shown` formatted)."""
    if previous == 0:
        return f"none in the previous {span}" + (" either" if current == 0 else "")
    delta = (current - previous) / abs(previous) * 100
    if abs(delta) < 0.05:
        change = "the same"
    else:
        arrow = "▲" if delta > 0 else "▼"
        size = f"{abs(delta):.0f}" if abs(delta) >= 10 else f"{abs(delta):.1f}"
        change = f"{arrow} {size}%"
    return f"{shown} in the previous {span} ({change})"


def _safe(text: str, limit: int = 80) -> str:
    """Untrusted text for mrkdwn: no control characters, no markup, no pings."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _PING_WORD.sub("@\u200b", text)  # a zero-width space: "@here" is never written


def _channel_label(c: ChannelLine) -> str:
    if c.channel_id is None:
        return PRIVATE_LABEL
    if c.name:
        return "#" + _safe(c.name.lstrip("#"))
    if re.fullmatch(r"[A-Z0-9]{1,32}", c.channel_id):
        return f"<#{c.channel_id}>"  # a channel link shows the name and notifies nobody
    return _safe(c.channel_id)


def _user_label(u: UserLine) -> str:
    # A display name or the bare id as text: never a <@U…> mention, which would notify.
    return _safe(u.name) if u.name else _safe(u.user_id)


def _more(items: Sequence[str], total: int, noun: str) -> list[str]:
    if total > len(items):
        return [*items, f"… and {total - len(items)} more {noun}"]
    return list(items)


def _bar(spend: float, saved: float, scale: float) -> str:
    if scale <= 0:
        return ""
    spend, saved = max(spend, 0.0), max(saved, 0.0)
    full = round((spend + saved) / scale * CHART_WIDTH)
    paid = round(spend / scale * CHART_WIDTH)
    if spend > 0 and paid == 0:
        paid = 1
    full = max(full, paid + (1 if saved > 0 else 0))
    return "▇" * paid + "░" * (full - paid)


def _chart(days: Sequence[DayBucket]) -> list[str]:
    scale = max((max(d.cost_usd, 0) + max(d.savings_usd, 0) for d in days), default=0.0)
    lines = []
    for d in days:
        label = d.start.strftime("%b %d")
        if d.days > 1:
            label += f"+{d.days - 1}d"
        bar = _bar(d.cost_usd, d.savings_usd, scale)
        lines.append(f"{label:<9} {money(d.cost_usd):>9} {money(d.savings_usd):>9}  {bar}".rstrip())
    return lines


@dataclass(frozen=True)
class _Section:
    title: str
    lines: list[str]
    code: bool = False  # the lines are preformatted


def _sections(d: Digest) -> list[_Section]:
    """The digest's sections in reading order; a section with nothing to show is left out."""
    sections = [
        _requests_section(d),
        _tokens_section(d.totals),
        _spend_section(d),
        _models_section(d),
        *_top_sections(d),
        _failures_section(d),
        _ratings_section(d.ratings),
        _chart_section(d),
    ]
    return [s for s in sections if s is not None]


def _requests_section(d: Digest) -> _Section:
    t, p = d.totals, d.previous
    kinds = [f"{_safe(k)} {_n(n)}" for k, n in d.kinds[:MAX_LIST]]
    return _Section(
        "Requests",
        [
            f"{_count(t.requests, 'request')} — {_n(t.ok)} answered, {_n(t.failed)} failed; "
            + _versus(t.requests, p.requests, d.period.describe(), _n(p.requests)),
            " · ".join(_more(kinds, len(d.kinds), "kinds")) if kinds else "no requests",
            f"{_count(d.users, 'user')} · {_count(d.threads, 'thread')} · "
            f"{_count(d.channels, 'channel')}",
        ],
    )


def _tokens_section(t: Totals) -> _Section:
    return _Section(
        "Tokens",
        [
            f"Prompt {_n(t.prompt_tokens)}: uncached {_n(t.input_tokens)} · written to cache "
            f"{_n(t.cache_creation_tokens)} · read from cache {_n(t.cache_read_tokens)}",
            f"Cache hit rate {_pct(t.hit_rate)} · output {_n(t.output_tokens)}",
        ],
    )


def _spend_section(d: Digest) -> _Section:
    t, p = d.totals, d.previous
    span = d.period.describe()
    spend = [
        f"Spent {money(t.cost_usd)}; " + _versus(t.cost_usd, p.cost_usd, span, money(p.cost_usd))
    ]
    if t.savings_share is not None:
        spend.append(
            f"Saved {money(t.savings_usd)} by caching — {_pct(t.savings_share)} of the "
            f"{money(t.uncached_usd)} the same calls would have cost uncached"
        )
    else:
        spend.append(f"Saved {money(t.savings_usd)} by caching")
    if t.unpriced_requests:
        unknown = [m.model for m in d.models if m.totals.unpriced_requests]
        spend.append(
            f"{_count(t.unpriced_requests, 'request')} on a model with an unknown price "
            f"({', '.join(_safe(m) for m in unknown[:MAX_LIST])}) count in tokens, not in money"
        )
    return _Section("Spend", spend)


def _models_section(d: Digest) -> _Section | None:
    models = []
    for m in d.models[:MAX_LIST]:
        mt = m.totals
        head = f"{_safe(m.model, 100)}: {_n(mt.requests)} req · hit {_pct(mt.hit_rate)}"
        if not mt.priced:
            models.append(f"{head} · price unknown")
            continue
        line = f"{head} · spent {money(mt.cost_usd)} · saved {money(mt.savings_usd)}"
        if mt.savings_share is not None:
            line += f" ({_pct(mt.savings_share)})"
        if mt.unpriced_requests:
            line += f" · {_n(mt.unpriced_requests)} req price unknown"
        models.append(line)
    return _Section("By model", _more(models, len(d.models), "models")) if models else None


def _top_sections(d: Digest) -> list[_Section]:
    """Top channels and top users by spend (the users' list only for admins)."""
    channels = [(_channel_label(c), c.cost_usd, c.requests) for c in d.top_channels]
    users = [(_user_label(u), u.cost_usd, u.requests) for u in d.top_users]
    out = [_top_list("Top channels by spend", channels)] if channels else []
    if users:
        out.append(_top_list("Top users by spend", users))
    elif d.top_users_hidden:
        out.append(_Section("Top users by spend", ["Shown to workspace admins and owners only."]))
    return out


def _top_list(title: str, rows: list[tuple[str, float, int]]) -> _Section:
    """Numbered lines: who, what they spent, how many requests."""
    lines = [f"{i}. {who} {money(usd)} ({_n(n)} req)" for i, (who, usd, n) in enumerate(rows, 1)]
    return _Section(title, lines)


def _failures_section(d: Digest) -> _Section:
    causes = [f"{_safe(c)} {_n(n)}" for c, n in d.failures[:MAX_LIST]]
    return _Section("Failures", [", ".join(_more(causes, len(d.failures), "causes")) or "none"])


def _ratings_section(r: Ratings) -> _Section:
    """The share of 👍 among the votes on the period's answers and the worst-rated kinds of
    request, with counts (never who voted)."""
    if not r.votes:
        return _Section("Feedback", ["no 👍/👎 on this period's answers"])
    lines = [
        f"{_pct(r.up / r.votes)} positive: {_n(r.up)} 👍, {_n(r.down)} 👎 on "
        f"{_count(r.answers, 'answer')}"
    ]
    kinds = [
        f"{_safe(k.kind)} {k.share:.0%} ({_n(k.up)} of {_n(k.votes)})" for k in r.kinds[:MAX_LIST]
    ]
    lines.append("Worst rated first: " + " · ".join(_more(kinds, len(r.kinds), "kinds")))
    if r.reasons:
        given = [
            f"{REASONS.get(reason, reason).lower()} {_n(n)}" for reason, n in r.reasons[:MAX_LIST]
        ]
        lines.append("Why 👎: " + " · ".join(_safe(g) for g in given))
    return _Section("Feedback", lines)


def _chart_section(d: Digest) -> _Section | None:
    if not d.days:
        return None
    unit = "day" if all(b.days == 1 for b in d.days) else f"{d.days[0].days} days"
    title = f"Spend and savings per {unit} ({d.period.zone})  ▇ spent ░ saved"
    return _Section(title, _chart(d.days), code=True)


def period_label(p: Period) -> str:
    """The exact period on its own clock: `2025-03-08 – 2025-03-14` (whole days, the last one
    included), `2025-03-14` (one day), else `2025-03-24 09:00 – 2025-03-31 09:00` (end
    excluded)."""
    start, end = p.local(p.start), p.local(p.end)
    if start.time() == time(0) and end.time() == time(0):
        first, last = start.date(), end.date() - timedelta(days=1)
        return f"{first:%Y-%m-%d}" if first >= last else f"{first:%Y-%m-%d} – {last:%Y-%m-%d}"
    return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M}"


def _title(d: Digest) -> str:
    p = d.period
    span = p.describe() + (" to date" if p.to_date else "")
    return f"Usage digest: {period_label(p)} ({span}, {p.zone})"


def _range(d: Digest) -> str:
    p, fmt = d.period, "%Y-%m-%d %H:%M"
    until = "now" if p.to_date else f"{p.local(p.end):{fmt}}"
    return (
        f"From {p.local(p.start):{fmt}} until {until} ({p.zone}); compared with the previous "
        f"{p.describe()}, {period_label(p.previous())}"
    )


def _clip(text: str, limit: int = SECTION_LIMIT) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit - 2)
    return text[: cut if cut > 0 else limit - 1] + "\n…"


def render_blocks(d: Digest) -> list[dict[str, Any]]:
    """Slack Block Kit blocks (header, section, context; mrkdwn) within Slack's limits."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(d)[:HEADER_LIMIT]}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _range(d)}]},
    ]
    for s in _sections(d):
        if s.code:
            chart = _clip("\n".join(s.lines), SECTION_LIMIT - len(s.title) - 12)
            body = f"*{s.title}*\n```\n{chart}\n```"
        else:
            body = "\n".join([f"*{s.title}*", *s.lines]) if s.lines else f"*{s.title}*"
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _clip(body)}})
    return blocks[:MAX_BLOCKS]


def render_text(d: Digest) -> str:
    """Plain text of the digest (a terminal, or the `text` fallback of a message)."""
    parts = [f"{_title(d)}\n{_range(d)}"]
    for s in _sections(d):
        indent = "" if s.code else "  "
        parts.append("\n".join([s.title, *(f"{indent}{line}" for line in s.lines)]))
    return "\n\n".join(parts)
