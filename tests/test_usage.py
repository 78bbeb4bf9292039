"""The usage digest where people see it, the weekly post, and spend budgets."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import sessionmaker

from bot.digest import parse_period
from bot.store.models import UsageRecord
from bot.usage import DigestScheduler
from tests.harness import SlackUI

NOW = 1_800_000_000.0


def words(i: int) -> str:
    return f"Line {i}: the quarterly roadmap review moved to Tuesday; Erin owns the deck."


def ticking() -> Callable[[], float]:
    """A clock that moves on a millisecond each time it is read (records land before 'now')."""
    ticks = itertools.count()
    return lambda: NOW + next(ticks) / 1000


@pytest.fixture
def ui(make_bot, slack):
    slack.now = NOW - 3600
    return SlackUI(make_bot(clock=ticking()))


def ledger(engine, *rows: dict) -> None:
    with sessionmaker(engine).begin() as s:
        for r in rows:
            s.add(UsageRecord(**{
                "created_at": datetime.fromtimestamp(NOW - 600, UTC), "team_id": "T0001",
                "channel_id": "C1", "thread_ts": "1.1", "user_id": "U1", "kind": "mention",
                "model": "claude-sonnet-4-5", "input_tokens": 100, "cache_creation_tokens": 0,
                "cache_read_tokens": 0, "output_tokens": 10, "cost_usd": 0.01,
                "savings_usd": 0.0, "latency_ms": 5, "outcome": "ok", **r,
            }))


def test_summarize_usage_is_private_to_the_requester(ui, slack, model):
    parent = slack.add_thread("C1", 40, text_fn=words)
    ui.bot.mention("C1", "summarize", thread_ts=parent)
    ui.bot.mention("C1", "again", thread_ts=parent)
    resp, url = ui.command("usage")
    assert "usage digest" in resp.json()["text"]
    answer = ui.responses(url)[-1]
    blob = answer["text"] + str(answer["blocks"])
    assert answer["response_type"] == "ephemeral"
    assert "2 requests" in blob or "Requests" in blob
    assert "<@" not in blob and "<!" not in blob
    resp, url = ui.command("usage 30d")
    assert ui.responses(url)[-1]["blocks"]
    resp, url = ui.command("usage forever")
    assert "period like" in ui.responses(url)[-1]["text"]


def test_private_channel_is_named_only_to_its_members(ui, slack, model):
    slack.add_channel("G7", "merger-talks", is_private=True, members={"U1", "U2"})
    parent = slack.add_thread("G7", 5, text_fn=words, users=["U1", "U2"])
    ui.bot.mention("G7", "summarize", thread_ts=parent)
    _, url = ui.command("usage", user="U3")
    outsider = str(ui.responses(url)[-1])
    assert "merger-talks" not in outsider and "G7" not in outsider
    assert "private conversations" in outsider
    _, url = ui.command("usage", user="U1")
    assert "merger-talks" in str(ui.responses(url)[-1]) or "G7" in str(ui.responses(url)[-1])


def test_app_home_shows_own_usage_and_the_digest(ui, slack, model):
    parent = slack.add_thread("C1", 10, text_fn=words)
    ui.bot.mention("C1", "summarize", thread_ts=parent)
    resp = ui.bot.event({"type": "app_home_opened", "user": "U1", "tab": "home",
                         "channel": "D1", "event_ts": "1.2"})
    assert resp.status_code == 200
    view = slack.views[-1]
    assert view["user_id"] == "U1"
    assert "Your last 7 days:* 1 requests" in str(view["view"]), view


def test_digest_is_posted_once_per_period_even_from_two_processes(make_bot, slack, model, engine):
    a = make_bot(clock=lambda: NOW)
    b = make_bot(clock=lambda: NOW)
    ledger(engine, {}, {"user_id": "U2"})
    period = parse_period("7d", now=datetime.fromtimestamp(NOW, UTC))
    assert a.app.usage.post_digest("T0001", "C1", period) == "posted"
    assert b.app.usage.post_digest("T0001", "C1", period) == "already posted for this period"
    assert a.app.usage.post_digest("T0001", "C1", period) == "already posted for this period"
    posts = [p for p in slack.posts if p["channel"] == "C1" and not p.get("thread_ts")]
    assert len(posts) == 1 and "2 requests" in posts[0]["text"]
    text = a.app.usage.post_digest("T0001", "C1", period, dry_run=True)
    assert "2 requests" in text  # a dry run prints, and posts nothing more
    assert len([p for p in slack.posts if p["channel"] == "C1"]) == 1


def test_weekly_schedule_posts_once(make_bot, slack, model, engine):
    bot = make_bot(clock=ticking(), digest_schedule="mon 09:00 Europe/Berlin",
                   digest_channel="C1")
    ledger(engine, {"created_at": datetime.fromtimestamp(NOW - 4 * 86400, UTC)})
    scheduler = DigestScheduler(bot.app.usage, lambda: ["T0001"], "C1")
    assert scheduler.run_once() == ["posted"]
    assert scheduler.run_once() == ["already posted for this period"]
    due = bot.app.usage.scheduled_period(datetime.fromtimestamp(NOW, UTC))
    assert due.end.astimezone(UTC).weekday() in (0, 6) and due.length == timedelta(days=7)


def test_daily_budget_at_exactly_the_limit_refuses_politely(make_bot, slack, model, engine):
    bot = make_bot(clock=lambda: NOW, budget_daily_usd="1.00")
    ledger(engine, {"cost_usd": 0.60}, {"cost_usd": 0.40})  # exactly $1.00 today
    parent = slack.add_thread("C1", 5, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert model.requests == []
    post = bot.posts_in("C1", parent)[-1]
    assert "daily spend limit of $1.00 is reached" in post["text"] and "resets" in post["text"]


def test_just_under_the_budget_is_served_and_admins_are_told_once(make_bot, slack, model, engine):
    bot = make_bot(clock=lambda: NOW, budget_daily_usd="1.00", digest_channel="C1")
    ledger(engine, {"cost_usd": 0.85})
    parent = slack.add_thread("C1", 5, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent)
    bot.mention("C1", "again", thread_ts=parent)
    assert len(model.requests) == 2
    alerts = [p for p in slack.posts if "budget" in p.get("text", "")]
    assert len(alerts) == 1 and "85%" in alerts[0]["text"] or "8" in alerts[0]["text"]


def test_per_user_daily_budget(make_bot, slack, model, engine):
    bot = make_bot(clock=lambda: NOW, budget_user_daily_usd="0.50")
    ledger(engine, {"cost_usd": 0.50, "user_id": "U1"})
    parent = slack.add_thread("C1", 5, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent, user="U1")
    assert model.requests == []
    bot.mention("C1", "summarize", thread_ts=parent, user="U2")
    assert len(model.requests) == 1
