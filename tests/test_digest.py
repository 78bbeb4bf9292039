"""The usage digest against a real migrated database (SQLite, or PostgreSQL when
TEST_DATABASE_URL is set): exact aggregates, privacy of channels, rendering within Slack limits.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from bot.digest import (
    CHART_LINES,
    PRIVATE_LABEL,
    Digest,
    Period,
    Totals,
    build_digest,
    parse_period,
    render_blocks,
    render_text,
)
from bot.pricing import money
from bot.store.models import UsageRecord

NOW = datetime(2025, 3, 15, 12, 0, tzinfo=UTC)
SONNET, HAIKU, MYSTERY = "claude-sonnet-4-5-20250929", "claude-haiku-4-5", "mystery-model-1"
PRIVATE = {"C9", "D7"}


def at(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2025, 3, day, hour, minute, second, tzinfo=UTC)


def row(
    when: datetime,
    channel: str = "C1",
    user: str | None = "U1",
    kind: str = "mention",
    model: str = SONNET,
    tokens: tuple[int, int, int, int] = (0, 0, 0, 0),
    cost: float | None = 0.0,
    saved: float | None = 0.0,
    outcome: str = "ok",
    team: str = "T1",
    thread: str | None = "100.1",
) -> UsageRecord:
    inp, cw, cr, out = tokens
    return UsageRecord(
        created_at=when,
        team_id=team,
        channel_id=channel,
        thread_ts=thread,
        user_id=user,
        kind=kind,
        model=model,
        input_tokens=inp,
        cache_creation_tokens=cw,
        cache_read_tokens=cr,
        output_tokens=out,
        cost_usd=cost,
        savings_usd=saved,
        latency_ms=100,
        outcome=outcome,
    )


# Costs are binary fractions so that sums are exact on both databases.
def current() -> list[UsageRecord]:
    return [
        row(at(8), "C1", "U1", "mention", SONNET, (1000, 2000, 0, 100), 1.0, -0.5),  # at start
        row(at(9, 10), "C1", "U2", "mention", SONNET, (100, 0, 3000, 200), 0.5, 1.5),
        row(at(10, 9), "C2", "U1", "summarize", HAIKU, (500, 0, 1500, 50), 0.25, 0.75),
        row(at(11, 8), "C9", "U3", "recap", SONNET, (200, 0, 800, 40), 2.0, 1.0, thread="1.0"),
        row(
            at(12, 23, 30),
            "D7",
            "U3",
            "mention",
            SONNET,
            (0, 0, 1000, 10),
            0.25,
            0.25,
            thread="1.0",
        ),
        row(at(13, 7), "C2", "U2", "mention", MYSTERY, (400, 0, 600, 10), None, None, thread=None),
        row(at(14, 10), "C1", "U1", "mention", SONNET, outcome="overloaded", thread="100.2"),
        row(at(14, 11), "C1", "U2", "mention", SONNET, outcome="overloaded", thread="100.2"),
        row(at(15, 8), "C3", "U4", "summarize", SONNET, outcome="auth", thread="5.5"),
        row(
            at(15, 11, 59, 59),
            "C3",
            "U4",
            "recap",
            HAIKU,
            (300, 100, 0, 20),
            0.125,
            -0.0625,
            thread="5.5",
        ),
    ]


def previous() -> list[UsageRecord]:
    return [
        row(at(8, 11, 59, 59), "C1", "U1", cost=1.0, saved=0.5),
        row(at(2), "C2", "U2", cost=1.0, saved=0.5),
        row(at(1, 12), "C1", "U1", cost=0.5, saved=0.5),  # the previous period's start
    ]


def outside() -> list[UsageRecord]:
    return [
        row(NOW, "C1", "U1", cost=100.0, saved=1.0),  # the period's end is excluded
        row(at(1, 11, 59), "C1", "U1", cost=50.0, saved=1.0),  # before the previous period
        row(at(10), "C1", "U1", cost=100.0, saved=1.0, team="T2"),  # another workspace
    ]


@pytest.fixture
def sessions(engine):
    factory = sessionmaker(engine)
    with factory.begin() as s:
        s.add_all(current() + previous() + outside())
    return factory


def digest(sessions, period: Period | None = None, **kw) -> Digest:
    kw.setdefault("private_channels", set(PRIVATE))
    with sessions() as s:
        if s.get_bind().dialect.name == "postgresql":
            # Days are UTC days whatever the connection's time zone.
            s.execute(text("SET TIME ZONE 'Asia/Tokyo'"))
        return build_digest(s, "T1", period or Period.ending(NOW, 7, "day"), **kw)


def test_totals_tokens_and_money(sessions):
    d = digest(sessions)
    t = d.totals
    assert (t.requests, t.ok, t.failed) == (10, 7, 3)
    assert (t.input_tokens, t.cache_creation_tokens, t.cache_read_tokens, t.output_tokens) == (
        2500,
        2100,
        6900,
        430,
    )
    assert t.prompt_tokens == 11500
    assert t.hit_rate == pytest.approx(0.6)
    assert t.cost_usd == pytest.approx(4.125)
    assert t.savings_usd == pytest.approx(2.9375)
    assert t.uncached_usd == pytest.approx(7.0625)
    assert t.savings_share == pytest.approx(2.9375 / 7.0625)
    assert t.unpriced_requests == 1
    assert (d.users, d.threads, d.channels) == (4, 6, 5)
    assert d.kinds == (("mention", 6), ("recap", 2), ("summarize", 2))
    assert d.failures == (("overloaded", 2), ("auth", 1))


def test_per_model_with_unknown_price(sessions):
    d = digest(sessions)
    assert [m.model for m in d.models] == [SONNET, HAIKU, MYSTERY]
    sonnet, haiku, mystery = (m.totals for m in d.models)
    assert (sonnet.requests, sonnet.ok) == (7, 4)
    assert sonnet.cost_usd == pytest.approx(3.75)
    assert sonnet.savings_usd == pytest.approx(2.25)
    assert sonnet.savings_share == pytest.approx(2.25 / 6.0)
    assert sonnet.hit_rate == pytest.approx(4800 / 8100)
    assert haiku.cost_usd == pytest.approx(0.375)
    assert haiku.savings_usd == pytest.approx(0.6875)
    assert (mystery.requests, mystery.unpriced_requests, mystery.priced) == (1, 1, False)
    assert mystery.cost_usd == 0 and mystery.savings_share is None
    assert (mystery.input_tokens, mystery.cache_read_tokens) == (400, 600)
    out = render_text(d)
    assert f"{MYSTERY}: 1 req · hit 60.0% · price unknown" in out
    assert "1 request on a model with an unknown price (mystery-model-1)" in out


def test_previous_period_comparison(sessions):
    d = digest(sessions)
    p = d.previous
    assert (p.requests, p.ok) == (3, 3)
    assert p.cost_usd == pytest.approx(2.5)
    assert p.savings_usd == pytest.approx(1.5)
    assert d.period == Period(at(8), NOW, count=7, unit="day")
    out = render_text(d)
    assert "10 requests — 7 answered, 3 failed; 3 in the previous 7 days (▲ 233%)" in out
    assert "Spent $4.12; $2.50 in the previous 7 days (▲ 65%)" in out
    assert "41.6% of the $7.06 the same calls would have cost uncached" in out
    assert "Cache hit rate 60.0% · output 430" in out


def test_private_channels_are_folded_unless_the_viewer_sees_them(sessions):
    d = digest(sessions, channel_names={"C2": "random", "C9": "secret-plans"})
    assert [(c.channel_id, c.requests, c.cost_usd) for c in d.top_channels] == [
        (None, 2, 2.25),
        ("C1", 4, 1.5),
        ("C2", 2, 0.25),
        ("C3", 2, 0.125),
    ]
    out = render_text(d) + str(render_blocks(d))
    assert "C9" not in out and "D7" not in out and "secret-plans" not in out
    assert f"1. {PRIVATE_LABEL} $2.25 (2 req)" in out
    assert "2. <#C1> $1.50 (4 req)" in out
    assert "3. #random $0.25 (2 req)" in out

    d = digest(sessions, viewer_channels={"C9"}, channel_names={"C9": "secret-plans"})
    assert [(c.channel_id, c.requests) for c in d.top_channels] == [
        ("C9", 1),
        ("C1", 4),
        ("C2", 2),  # ties on spend with the folded DM: more requests first
        (None, 1),
        ("C3", 2),
    ]
    out = render_text(d)
    assert "1. #secret-plans $2.00 (1 req)" in out and "D7" not in out


def test_dm_ids_are_private_even_when_not_listed(sessions):
    d = digest(sessions, private_channels=set())
    ids = [c.channel_id for c in d.top_channels]
    assert "D7" not in ids and "C9" in ids and None in ids


def test_top_users_by_spend_with_names_never_mentions(sessions):
    d = digest(sessions, names={"U1": "Alice <@U2> @here", "U3": "Carol"})
    assert [(u.user_id, u.requests, u.cost_usd) for u in d.top_users] == [
        ("U3", 2, 2.25),
        ("U1", 3, 1.25),
        ("U2", 3, 0.5),
        ("U4", 2, 0.125),
    ]
    out = render_text(d)
    assert "1. Carol $2.25 (2 req)" in out
    assert "3. U2 $0.50 (3 req)" in out  # unknown name: the bare id as text
    assert "Alice &lt;@U2&gt; @\u200bhere" in out
    for rendered in (out, str(render_blocks(d))):
        assert "<@" not in rendered and "<!" not in rendered and "@here" not in rendered


def test_top_lists_keep_five(engine):
    factory = sessionmaker(engine)
    with factory.begin() as s:
        s.add_all(
            row(at(14), f"C{i}", f"U{i}", cost=float(i), saved=0.0, thread=str(i))
            for i in range(1, 9)
        )
    with factory() as s:
        d = build_digest(s, "T1", parse_period("", now=NOW), private_channels=set())
    assert [c.channel_id for c in d.top_channels] == ["C8", "C7", "C6", "C5", "C4"]
    assert [u.user_id for u in d.top_users] == ["U8", "U7", "U6", "U5", "U4"]
    assert d.channels == 8 and d.users == 8


def test_daily_chart_in_utc_days(sessions):
    d = digest(sessions)
    assert [(b.start, b.days, b.requests) for b in d.days] == [
        (date(2025, 3, day), 1, n)
        for day, n in [(8, 1), (9, 1), (10, 1), (11, 1), (12, 1), (13, 1), (14, 2), (15, 2)]
    ]
    assert [b.cost_usd for b in d.days] == pytest.approx([1.0, 0.5, 0.25, 2.0, 0.25, 0, 0, 0.125])
    assert d.days[0].savings_usd == pytest.approx(-0.5)
    chart = _chart_lines(render_blocks(d))
    assert len(chart) == 8
    assert chart[3].startswith("Mar 11") and chart[3].endswith("▇" * 16 + "░" * 8)
    assert chart[5] == "Mar 13        $0.00     $0.00"


@pytest.mark.parametrize(
    ("spec", "days", "lines"),
    [
        ("30d", 1, 30),
        ("12h", 1, 1),
        ("24h", 1, 2),  # 12:00 to 12:00
        ("31d", 1, 31),
        ("32d", 2, 16),
        ("90d", 3, 30),
        ("365d", 12, 31),
    ],
)
def test_chart_never_exceeds_31_lines(sessions, spec, days, lines):
    d = digest(sessions, parse_period(spec, now=NOW))
    assert len(d.days) == lines <= CHART_LINES
    assert d.days[0].days == days
    assert sum(b.requests for b in d.days) == d.totals.requests
    assert len(_chart_lines(render_blocks(d))) == lines


def _chart_lines(blocks: list[dict]) -> list[str]:
    body = next(b["text"]["text"] for b in blocks if "```" in b.get("text", {}).get("text", ""))
    return body.split("```")[1].strip("\n").split("\n")


def _assert_within_slack_limits(blocks: list[dict]) -> None:
    assert len(blocks) <= 50
    assert blocks[0]["type"] == "header" and len(blocks[0]["text"]["text"]) <= 150
    for b in blocks:
        assert b["type"] in ("header", "section", "context")
        if b["type"] == "section":
            assert b["text"]["type"] == "mrkdwn" and 0 < len(b["text"]["text"]) <= 3000
        if b["type"] == "context":
            assert len(b["elements"]) <= 10
            assert all(len(e["text"]) <= 3000 for e in b["elements"])
    rendered = str(blocks)
    assert "<@" not in rendered and "<!" not in rendered
    assert not re.search(r"@(here|channel|everyone)", rendered)


def test_blocks_within_slack_limits(sessions):
    blocks = render_blocks(digest(sessions))
    _assert_within_slack_limits(blocks)
    headers = [b["text"]["text"].split("\n")[0] for b in blocks if b["type"] == "section"]
    assert headers == [
        "*Requests*",
        "*Tokens*",
        "*Spend*",
        "*By model*",
        "*Top channels by spend*",
        "*Top users by spend*",
        "*Failures*",
        "*Feedback*",
        "*Spend and savings per day (UTC)  ▇ spent ░ saved*",
    ]
    assert "overloaded 2, auth 1" in str(blocks)


def test_hostile_and_huge_ledgers_stay_within_limits(engine):
    factory = sessionmaker(engine)
    with factory.begin() as s:
        for i in range(40):
            s.add(
                row(
                    at(14) - timedelta(days=i * 9),
                    channel=f"C{i}",
                    user=f"U{i}",
                    kind=f"k{i}",
                    model=f"model-<!channel>-@here-{i}-" + "x" * 70,
                    cost=None if i % 3 else 0.001 * i,
                    saved=None if i % 3 else 0.0001,
                    outcome="ok" if i % 2 else f"<!here> cause {i}",
                    thread=str(i),
                )
            )
    names = {f"U{i}": f"<@U{i}> @channel <!everyone> {'y' * 200}" for i in range(40)}
    chans = {f"C{i}": f"<!here>{i}" for i in range(40)}
    with factory() as s:
        d = build_digest(
            s,
            "T1",
            parse_period("365d", now=NOW),
            private_channels=set(),
            names=names,
            channel_names=chans,
        )
    assert d.totals.requests == 40
    _assert_within_slack_limits(render_blocks(d))
    assert "… and 30 more models" in render_text(d)


def test_an_empty_ledger(engine):
    with sessionmaker(engine)() as s:
        d = build_digest(s, "T1", parse_period("24h", now=NOW), private_channels=set())
    assert d.totals.requests == 0 and d.previous.requests == 0
    assert d.top_channels == () and d.top_users == () and d.failures == ()
    blocks = render_blocks(d)
    _assert_within_slack_limits(blocks)
    expected = "0 requests — 0 answered, 0 failed; none in the previous 24 hours either"
    assert expected in render_text(d)


MIDNIGHT = datetime(2025, 3, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("", MIDNIGHT - timedelta(days=7), MIDNIGHT),
        ("7d", MIDNIGHT - timedelta(days=7), MIDNIGHT),
        ("30d", MIDNIGHT - timedelta(days=30), MIDNIGHT),
        ("24h", NOW - timedelta(hours=24), NOW),
        ("12h", NOW - timedelta(hours=12), NOW),
        ("2w", MIDNIGHT - timedelta(weeks=2), MIDNIGHT),
        (" 7D ", MIDNIGHT - timedelta(days=7), MIDNIGHT),
        ("365d", MIDNIGHT - timedelta(days=365), MIDNIGHT),
    ],
)
def test_parse_period_ends_at_the_last_boundary(spec, start, end):
    for moment in (NOW, NOW + timedelta(minutes=59, seconds=59, microseconds=999999)):
        p = parse_period(spec, now=moment)
        assert (p.start, p.end) == (start, end)


def test_every_moment_of_a_day_names_the_same_period():
    periods = {
        parse_period("7d", now=MIDNIGHT + timedelta(seconds=s))
        for s in (0, 1, 3600, 43200, 86399)
    }
    assert periods == {Period(MIDNIGHT - timedelta(days=7), MIDNIGHT, count=7, unit="day")}
    assert parse_period("7d", now=MIDNIGHT - timedelta(microseconds=1)).end == at(14, 0)


def test_periods_align_to_the_digest_time_zone_across_dst():
    berlin = ZoneInfo("Europe/Berlin")
    # Berlin moved to summer time on Sunday 2025-03-30; Tuesday 1 April, 00:30 local.
    p = parse_period("7d", now=datetime(2025, 3, 31, 22, 30, tzinfo=UTC), zone=berlin)
    assert p.start == datetime(2025, 3, 24, 23, 0, tzinfo=UTC)  # Tue 25 Mar 00:00 CET
    assert p.end == datetime(2025, 3, 31, 22, 0, tzinfo=UTC)  # Tue 1 Apr 00:00 CEST
    assert p.length == timedelta(days=7, hours=-1)
    assert p.previous().start == datetime(2025, 3, 17, 23, 0, tzinfo=UTC)
    assert _header(p) == "Usage digest: 2025-03-25 – 2025-03-31 (7 days, Europe/Berlin)"


def test_to_date_periods_end_at_the_next_boundary():
    p = parse_period("7d", now=NOW, to_date=True)
    assert (p.start, p.end) == (MIDNIGHT - timedelta(days=6), MIDNIGHT + timedelta(days=1))
    assert p.previous() == Period(p.start - timedelta(days=7), p.start, count=7, unit="day")
    assert _header(p) == "Usage digest: 2025-03-09 – 2025-03-15 (7 days to date, UTC)"
    assert parse_period("1h", now=NOW, to_date=True).end == NOW + timedelta(hours=1)


def _header(period: Period) -> str:
    with_empty = Digest("T1", period, Totals(), Totals())
    return render_blocks(with_empty)[0]["text"]["text"]


def test_header_names_the_exact_period(sessions):
    d = digest(sessions, parse_period("7d", now=NOW))
    blocks = render_blocks(d)
    assert blocks[0]["text"]["text"] == "Usage digest: 2025-03-08 – 2025-03-14 (7 days, UTC)"
    context = blocks[1]["elements"][0]["text"]
    assert context == (
        "From 2025-03-08 00:00 until 2025-03-15 00:00 (UTC); compared with the previous 7 days, "
        "2025-03-01 – 2025-03-07"
    )
    assert render_text(d).startswith(blocks[0]["text"]["text"] + "\n" + context)
    one_day = render_blocks(digest(sessions, parse_period("1d", now=NOW)))
    assert one_day[0]["text"]["text"] == "Usage digest: 2025-03-14 (1 day, UTC)"
    hours = render_blocks(digest(sessions, parse_period("24h", now=NOW)))
    assert hours[0]["text"]["text"] == (
        "Usage digest: 2025-03-14 12:00 – 2025-03-15 12:00 (24 hours, UTC)"
    )


def test_daily_chart_in_the_digest_time_zone(sessions):
    tokyo = ZoneInfo("Asia/Tokyo")  # UTC+9: 12:00 UTC on the 14th is 21:00 there
    d = digest(sessions, parse_period("7d", now=NOW, zone=tokyo))
    assert d.period.start == datetime(2025, 3, 7, 15, 0, tzinfo=UTC)
    # 23:30 UTC on the 12th is the 13th in Tokyo; 11:59:59 UTC on the 8th is the 8th there.
    assert [(b.start, b.requests) for b in d.days] == [
        (date(2025, 3, day), n)
        for day, n in [(8, 2), (9, 1), (10, 1), (11, 1), (12, 0), (13, 2), (14, 2)]
    ]
    assert "per day (Asia/Tokyo)" in render_text(d)


@pytest.mark.parametrize("spec", ["abc", "7", "0d", "-1d", "1y", "366d", "53w", "7 days", "d"])
def test_parse_period_rejects(spec):
    with pytest.raises(ValueError, match="like 24h, 7d, 30d or 2w"):
        parse_period(spec, now=NOW)


def test_parse_period_in_utc_whatever_the_offset_of_now():
    local = datetime(2025, 3, 15, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    p = parse_period("24h", now=local)
    assert p == Period(at(14), NOW, count=24, unit="hour") and p.end.tzinfo == UTC


@pytest.mark.parametrize(
    ("usd", "shown"),
    [
        (0, "$0.00"),
        (1.234, "$1.23"),
        (0.0042, "$0.0042"),
        (1234.5, "$1,234.50"),
        (-0.5, "-$0.50"),
        (0.00001, "<$0.0001"),
    ],
)
def test_money(usd, shown):
    assert money(usd) == shown


@pytest.mark.parametrize(
    ("usd", "places", "bare", "shown"),
    [
        (1234.56789, 4, False, "$1,234.5679"),  # ledger figures: App Home, doctor, inspect
        (0, 4, False, "$0.0000"),
        (25, 2, False, "$25.00"),  # spend limits
        (1_000_000, 0, False, "$1,000,000"),
        (1.234, None, True, "$1.23"),  # the cache footer
        (0.0042, None, True, "$0.0042"),
        (-0.005, None, True, "$-0.0050"),
        (0, None, True, "$0.0000"),
    ],
)
def test_money_fixed_places_and_the_footer_form(usd, places, bare, shown):
    assert money(usd, places, bare=bare) == shown
