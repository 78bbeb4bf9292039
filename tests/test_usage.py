"""The usage digest where people see it, the weekly post, and spend budgets."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from bot.__main__ import main
from bot.digest import Period
from bot.store.models import DigestPost, UsageRecord
from bot.threads import is_private
from bot.usage import DigestNotPosted, DigestScheduler
from tests.harness import ENCRYPTION_KEY, SlackUI, bot_env
from tests.test_workspaces import install

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


@pytest.mark.parametrize(
    ("info", "private"),
    [
        ({"is_channel": True, "is_group": False, "is_private": False}, False),
        ({"is_channel": False, "is_private": True}, True),
        ({"is_group": True, "is_private": True}, True),
        ({"is_group": True}, True),  # the usage digest once read this one as public
        ({"is_im": True}, True),
        ({"is_mpim": True}, True),
        (None, True),  # the bot cannot see it
    ],
)
def test_one_rule_says_which_conversations_are_private(info, private):
    """The digest and /summarize decide privacy alike, from every flag Slack's conversation
    object documents (`is_group` marks private channels made before March 2021)."""
    assert is_private(info) is private


def test_top_spenders_are_named_to_workspace_admins_only(ui, slack, model, engine):
    slack.add_user("U9", "Ada Admin", "ada", is_admin=True)
    ledger(engine, {"user_id": "U2"}, {"user_id": "U3", "cost_usd": 0.5})
    _, url = ui.command("usage", user="U1")
    member = ui.responses(url)[-1]
    blob = (member["text"] + str(member["blocks"])).lower()
    assert "shown to workspace admins and owners only" in blob and "2 users" in blob
    assert "carol" not in blob and "bob" not in blob
    _, url = ui.command("usage", user="U9")
    admin = ui.responses(url)[-1]
    blob = (admin["text"] + str(admin["blocks"])).lower()
    assert "1. carol" in blob and "2. bob" in blob and "admins and owners only" not in blob
    for user, named in (("U1", False), ("U9", True)):
        ui.bot.event({"type": "app_home_opened", "user": user, "tab": "home",
                      "channel": "D1", "event_ts": "1.2"})
        home = str(slack.views[-1]["view"]).lower()
        assert slack.views[-1]["user_id"] == user
        assert ("1. carol" in home) is named and ("admins and owners only" in home) is not named


def test_app_home_shows_own_usage_and_the_digest(ui, slack, model):
    parent = slack.add_thread("C1", 10, text_fn=words)
    ui.bot.mention("C1", "summarize", thread_ts=parent)
    resp = ui.bot.event({"type": "app_home_opened", "user": "U1", "tab": "home",
                         "channel": "D1", "event_ts": "1.2"})
    assert resp.status_code == 200
    view = slack.views[-1]
    assert view["user_id"] == "U1"
    assert "Your last 7 days:* 1 requests" in str(view["view"]), view


def _top_posts(slack, channel: str = "C1") -> list[dict]:
    return [p for p in slack.posts if p["channel"] == channel and not p.get("thread_ts")]


def _cli_env(monkeypatch, tmp_path, slack, model, database_url, **extra: str) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    for key, value in bot_env(slack, model, database_url, **extra).items():
        monkeypatch.setenv(key, value)


def test_cli_digest_post_twice_in_one_period_posts_once(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, tmp_path, slack, model, database_url)
    ledger(engine, {"created_at": datetime(2026, 1, 14, 23, 59, tzinfo=UTC)},
           {"created_at": datetime(2026, 1, 8, 0, 0, tzinfo=UTC), "user_id": "U2"},
           {"created_at": datetime(2026, 1, 15, 0, 0, tzinfo=UTC)})  # the next period
    cron = ["digest", "--post", "--channel", "C1"]
    assert main([*cron, "--at", "2026-01-15T00:00:01Z"]) == 0
    assert main([*cron, "--at", "2026-01-15T00:01:01Z"]) == 0  # a minute later
    assert main([*cron, "--at", "2026-01-15T23:59:59.999999+00:00"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "T0001: posted (2026-01-08 – 2026-01-14, UTC)",
        "T0001: already posted for this period (2026-01-08 – 2026-01-14, UTC)",
        "T0001: already posted for this period (2026-01-08 – 2026-01-14, UTC)",
    ]
    posts = _top_posts(slack)
    assert len(posts) == 1
    header = posts[0]["blocks"][0]
    assert header["type"] == "header"
    assert header["text"]["text"] == "Usage digest: 2026-01-08 – 2026-01-14 (7 days, UTC)"
    assert "2 requests" in posts[0]["text"]
    assert main([*cron, "--at", "2026-01-16T08:00:00Z"]) == 0  # the next day: the next period
    assert capsys.readouterr().out == "T0001: posted (2026-01-09 – 2026-01-15, UTC)\n"
    assert len(_top_posts(slack)) == 2 and "2 requests" in _top_posts(slack)[1]["text"]


def test_cli_digest_hour_periods_post_once_per_hour_and_1d_once_per_day(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, tmp_path, slack, model, database_url)
    slack.add_channel("CHOURS", "hours")
    slack.add_channel("CDAYS", "days")
    for channel, period, moments, posts in (
        ("CHOURS", "24h", ["09:05", "09:55", "10:05"], 2),  # hour periods: once per hour
        ("CDAYS", "1d", ["09:05", "10:05", "23:55"], 1),
    ):
        for hhmm in moments:
            at = f"2026-01-15T{hhmm}:00Z"
            assert main(["digest", "--post", "--channel", channel, "--period", period,
                         "--at", at]) == 0
        assert capsys.readouterr().out.count(": posted (") == posts


def test_cli_digest_post_at_now_twice_posts_once(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, tmp_path, slack, model, database_url)
    days = {datetime.now(UTC).date()}
    assert main(["digest", "--post", "--channel", "C1"]) == 0
    assert main(["digest", "--post", "--channel", "C1"]) == 0
    days.add(datetime.now(UTC).date())  # two if the runs straddled midnight: two periods
    assert len(_top_posts(slack)) == len(days)
    assert capsys.readouterr().out.count("already posted for this period") == 2 - len(days)


def test_cli_digest_rejects_a_bad_moment(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, tmp_path, slack, model, database_url)
    assert main(["digest", "--post", "--channel", "C1", "--at", "next tuesday"]) == 2
    assert "--at wants an ISO 8601 time" in capsys.readouterr().err
    assert main(["digest", "--post", "--channel", "C1", "--period", "7 days"]) == 2
    assert "like 24h, 7d, 30d or 2w" in capsys.readouterr().err
    assert _top_posts(slack) == []


def test_cli_digest_refuses_a_moment_after_now_and_claims_nothing(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, tmp_path, slack, model, database_url)
    later = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    for extra in ([], ["--period", "24h"]):
        assert main(["digest", "--post", "--channel", "C1", "--at", later, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is after now: that period is not over" in err, err
    assert _top_posts(slack) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DigestPost)).scalar() == 0
    assert main(["digest", "--post", "--channel", "C1"]) == 0  # the finished week still posts
    assert len(_top_posts(slack)) == 1


def test_a_period_still_going_on_is_never_posted(make_bot, slack, model, engine):
    moment = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    usage = make_bot(clock=moment.timestamp, digest_schedule=BERLIN_SCHEDULE).app.usage
    for text in (None, "7d", "24h"):
        with pytest.raises(ValueError, match="after now"):
            usage.posting_period(text, moment + timedelta(days=8))
    going_on = Period.ending(datetime(2026, 1, 16, tzinfo=UTC), 7, "day")
    with pytest.raises(DigestNotPosted, match="after now"):
        usage.post_digest("T0001", "C1", going_on)
    assert _top_posts(slack) == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DigestPost)).scalar() == 0


def test_cli_digest_post_says_in_one_line_per_workspace_what_slack_refused(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    _cli_env(monkeypatch, tmp_path, slack, model, database_url)
    assert main(["digest", "--post", "--channel", "CNOPE"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("T0001: not posted: channel_not_found (") and out.count("\n") == 1
    assert "Traceback" not in err
    slack.fail_next("chat.postMessage", "not_in_channel")
    assert main(["digest", "--post", "--channel", "C1"]) == 1
    assert capsys.readouterr().out.startswith("T0001: not posted: not_in_channel (")
    assert main(["digest", "--post", "--channel", "C1"]) == 0  # the period was left open
    assert capsys.readouterr().out.startswith("T0001: posted (")
    assert len(_top_posts(slack)) == 1


@pytest.mark.parametrize("broken", ["token", "unreachable"])
def test_cli_digest_checks_slack_before_creating_the_database(
    broken, slack, model, database_url, monkeypatch, tmp_path, capsys
):
    db = tmp_path / "new.db"
    wrong = {"token": {"slack_bot_token": "xoxb-wrong"},
             "unreachable": {"slack_api_url": "http://127.0.0.1:9/api/"}}[broken]
    _cli_env(monkeypatch, tmp_path, slack, model, f"sqlite:///{db}", **wrong)
    assert main(["digest", "--post", "--channel", "C1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: Slack rejected SLACK_BOT_TOKEN or could not be "
                          "reached") and err.count("\n") == 1, err
    assert not db.exists()


def test_cli_digest_posts_to_the_other_workspaces_when_one_fails(
    oauth_bot, slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    install(oauth_bot, slack, "T0002", "xoxb-team-two")
    install(oauth_bot, slack, "T0003", "xoxb-team-three")
    _cli_env(monkeypatch, tmp_path, slack, model, database_url, slack_bot_token="",
             slack_client_id=slack.client_id, slack_client_secret=slack.client_secret,
             encryption_key=ENCRYPTION_KEY)
    slack.fail_next("chat.postMessage", "channel_not_found")
    assert main(["digest", "--post", "--channel", "C1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in out] == [
        "T0002: not posted: channel_not_found", "T0003: posted"]
    assert [p["_team"] for p in _top_posts(slack)] == ["T0003"]


def test_two_engines_racing_post_once(make_bot, slack, model, engine):
    moments = [datetime(2027, 1, 15, 0, 0, 5, tzinfo=UTC), datetime(2027, 1, 15, 17, 3, tzinfo=UTC)]
    bots = [make_bot(clock=lambda m=m: m.timestamp()) for m in moments]  # an engine each
    ledger(engine, {"created_at": datetime(2027, 1, 10, tzinfo=UTC)}, {"user_id": "U2",
           "created_at": datetime(2027, 1, 12, tzinfo=UTC)})
    start = threading.Barrier(len(bots))
    results: list[str] = []

    def run(bot) -> None:
        usage = bot.app.usage
        period = usage.posting_period(None, usage.now())
        start.wait()
        results.append(usage.post_digest("T0001", "C1", period))

    threads = [threading.Thread(target=run, args=(b,)) for b in bots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["already posted for this period", "posted"]
    posts = _top_posts(slack)
    assert len(posts) == 1 and "2 requests" in posts[0]["text"]
    usage = bots[0].app.usage
    text = usage.post_digest("T0001", "C1", usage.posting_period(None, usage.now()), dry_run=True)
    assert "2 requests" in text  # a dry run prints, and posts nothing more
    assert len(_top_posts(slack)) == 1


BERLIN_SCHEDULE = "mon 09:00 Europe/Berlin"


def test_weekly_schedule_aligns_to_its_moments_across_dst(make_bot, slack, model, engine):
    # Berlin moved to summer time on Sunday 2025-03-30.
    clock = [datetime(2025, 3, 31, 7, 0, 30, tzinfo=UTC).timestamp()]  # Mon 09:00:30 CEST
    bot = make_bot(clock=lambda: clock[0], digest_schedule=BERLIN_SCHEDULE, digest_channel="C1")
    ledger(engine, {"created_at": datetime(2025, 3, 24, 8, 0, tzinfo=UTC)},  # Mon 09:00 CET
           {"created_at": datetime(2025, 3, 24, 7, 59, 59, tzinfo=UTC)},  # the week before
           {"created_at": datetime(2025, 3, 31, 6, 59, 59, tzinfo=UTC)})  # Mon 08:59:59 CEST
    scheduler = DigestScheduler(bot.app.usage, lambda: ["T0001"], "C1")
    assert scheduler.run_once() == ["posted"]
    period = bot.app.usage.scheduled_period(bot.app.usage.now())
    assert (period.start, period.end) == (
        datetime(2025, 3, 24, 8, 0, tzinfo=UTC), datetime(2025, 3, 31, 7, 0, tzinfo=UTC))
    posts = _top_posts(slack)
    assert posts[0]["blocks"][0]["text"]["text"] == (
        "Usage digest: 2025-03-24 09:00 – 2025-03-31 09:00 (7 days, Europe/Berlin)")
    assert "2 requests" in posts[0]["text"] and "1 in the previous 7 days" in posts[0]["text"]
    clock[0] = datetime(2025, 4, 6, 20, 0, tzinfo=UTC).timestamp()  # Sunday evening
    assert scheduler.run_once() == ["already posted for this period"]
    clock[0] = datetime(2025, 4, 7, 7, 0, tzinfo=UTC).timestamp()  # Mon 7 Apr 09:00 CEST
    assert scheduler.run_once() == ["posted"]
    assert bot.app.usage.scheduled_period(bot.app.usage.now()).start == period.end
    assert len(_top_posts(slack)) == 2


def test_cli_digest_posts_the_scheduled_week_once_with_the_scheduler(
    make_bot, slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    moment = datetime(2025, 4, 2, 12, 0, tzinfo=UTC)  # a Wednesday
    bot = make_bot(clock=moment.timestamp, digest_schedule=BERLIN_SCHEDULE, digest_channel="C1")
    assert DigestScheduler(bot.app.usage, lambda: ["T0001"], "C1").run_once() == ["posted"]
    _cli_env(monkeypatch, tmp_path, slack, model, database_url,
             digest_schedule=BERLIN_SCHEDULE, digest_channel="C1")
    assert main(["digest", "--post", "--at", "2025-04-03T10:00:00+02:00"]) == 0
    assert capsys.readouterr().out == (
        "T0001: already posted for this period "
        "(2025-03-24 09:00 – 2025-03-31 09:00, Europe/Berlin)\n"
    )
    assert len(_top_posts(slack)) == 1


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


def test_housekeeping_forgets_ledger_rows_past_the_retention(
    slack, model, engine, database_url, monkeypatch, tmp_path, caplog
):
    now = datetime.now(UTC)
    n = 10_005  # more than housekeeping deletes in one transaction
    old = [{"created_at": now - timedelta(days=40, seconds=i)} for i in range(n)]
    ledger(engine, *old, {"created_at": now - timedelta(days=30)}, {"created_at": now})
    _cli_env(monkeypatch, tmp_path, slack, model, database_url, usage_retention_days="31")
    caplog.set_level("INFO", logger="bot.housekeeping")
    assert main(["housekeeping"]) == 0
    with sessionmaker(engine)() as s:
        kept = s.scalars(select(UsageRecord.created_at).order_by(UsageRecord.created_at)).all()
    assert len(kept) == 2
    assert f"{n} usage ledger rows, 0 declined renewals removed" in caplog.text


def test_usage_retention_zero_keeps_the_ledger_and_short_ones_are_refused(
    slack, model, engine, database_url, monkeypatch, tmp_path, capsys
):
    ledger(engine, {"created_at": datetime(2001, 1, 1, tzinfo=UTC)})
    _cli_env(monkeypatch, tmp_path, slack, model, database_url, usage_retention_days="0")
    assert main(["housekeeping"]) == 0
    with sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 1
    monkeypatch.setenv("USAGE_RETENTION_DAYS", "7")
    assert main(["housekeeping"]) == 2
    assert "USAGE_RETENTION_DAYS" in capsys.readouterr().err
