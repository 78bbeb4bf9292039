"""The cache engine: TTL per thread, incremental reads, edits/deletions, compaction, purges."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from bot.housekeeping import run_housekeeping
from bot.store.models import (
    Compaction,
    RenewalDeclined,
    SlackUser,
    Summary,
    ThreadMessage,
    ThreadState,
    UsageRecord,
    WorkspaceSettings,
)
from bot.ttl_policy import Habits, Held, Rhythm, choose_ttl
from tests.harness import SlackUI

T0 = 1_800_000_000.0


def words(i: int) -> str:
    return (
        f"Note {i}: deploy window moved, Alice confirms the database failover drill for "
        f"region {i % 7}, Bob reviews the runbook and Carol updates the status page."
    )


class Clock:
    """One simulated time for the bot, the Slack fake and the model fake."""

    def __init__(self, slack, model, start: float = T0) -> None:
        self.now, self.slack, self.model = start, slack, model
        self.sync()

    def __call__(self) -> float:
        return self.now

    def sync(self) -> None:
        self.slack.now = max(self.slack.now, self.now)
        self.model.now = self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.sync()


@pytest.fixture
def clock(slack, model):
    return Clock(slack, model)


@pytest.fixture
def tbot(make_bot, clock):
    return make_bot(clock=clock)


def blocks(model, i: int = -1) -> list[dict]:
    return model.requests[i]["body"]["messages"][0]["content"]


def ttl_marks(model, i: int = -1) -> list[str]:
    return [b["cache_control"].get("ttl", "5m") for b in blocks(model, i) if "cache_control" in b]


# -- TTL arithmetic (pure) ----------------------------------------------------------------------


def test_first_request_on_a_fresh_install_writes_5m_never_1h():
    choice = choose_ttl(Rhythm().after_gap(None), new_tokens=5000, prefix_tokens=5000)
    assert choice.ttl == "5m"
    assert choice.costs["5m"] < choice.costs["none"] < choice.costs["1h"]


def test_thread_with_half_hour_gaps_writes_1h():
    r = Rhythm().after_gap(None)
    for _ in range(3):
        r = r.after_gap(1800)
    assert choose_ttl(r, new_tokens=300, prefix_tokens=8000).ttl == "1h"


def test_quick_follow_ups_on_a_1h_anchor_write_their_tail_for_5m():
    r = Rhythm().after_gap(None)
    for _ in range(3):
        r = r.after_gap(60)
    anchored = [Held(7700, 3600)]  # the prefix read now is a 1-hour entry: it stays an hour
    assert choose_ttl(r, new_tokens=300, prefix_tokens=8000, held=anchored).ttl == "5m"
    # with only a 5-minute entry beneath, 300 new tokens at 2 buy an hour for all 8,000
    assert choose_ttl(r, new_tokens=300, prefix_tokens=8000, held=[Held(7700, 300)]).ttl == "1h"


def test_workspace_habits_move_the_first_write():
    one_offs = Habits({"first": (40, 0, 1)})  # threads asked about once
    slow = Habits({"first": (40, 2, 36)})  # asked again 5-60 minutes later
    first = Rhythm(habits=one_offs).after_gap(None)
    assert choose_ttl(first, new_tokens=5000, prefix_tokens=5000).ttl == "5m"
    first = Rhythm(habits=slow).after_gap(None)
    assert choose_ttl(first, new_tokens=5000, prefix_tokens=5000).ttl == "1h"


def test_own_gaps_count_at_the_chance_that_a_thread_goes_on():
    # three half-hour gaps, then the whole prefix to write (nothing alive): worth an hour only
    # if the thread is likely to go on
    def after_three_gaps(habits: Habits) -> Rhythm:
        r = Rhythm(habits=habits).after_gap(None)
        for _ in range(3):
            r = r.after_gap(1800)
        return r

    ending = after_three_gaps(Habits(continued=(60, 15)))  # 25 % followed at all
    going_on = after_three_gaps(Habits(continued=(60, 57)))  # 95 %
    assert ending.odds[1] < 0.5 < going_on.odds[1]
    assert choose_ttl(ending, new_tokens=8000, prefix_tokens=8000).ttl == "5m"
    assert choose_ttl(going_on, new_tokens=8000, prefix_tokens=8000).ttl == "1h"


def test_idle_thread_still_writes_5m_so_a_quick_follow_up_reads_from_cache():
    r = Rhythm().after_gap(None)
    for _ in range(6):
        r = r.after_gap(86400)
    choice = choose_ttl(r, new_tokens=8000, prefix_tokens=8000)
    assert choice.costs["none"] < choice.costs["5m"] < choice.costs["1h"]  # none costs least
    assert choice.ttl == "5m"  # but the quick-follow-up promise keeps a 5-minute write


@pytest.mark.parametrize("mode", ["5m", "1h"])
def test_forced_modes(mode):
    assert choose_ttl(Rhythm(), new_tokens=1, prefix_tokens=1, mode=mode).ttl == mode
    assert choose_ttl(Rhythm(), new_tokens=1, prefix_tokens=1, mode="off").ttl is None


# -- at the wire --------------------------------------------------------------------------------


def test_follow_ups_read_only_new_messages(tbot, slack, model, clock):
    parent = slack.add_thread("C1", 450, text_fn=words)
    tbot.mention("C1", "summarize", thread_ts=parent)
    assert len(slack.calls_to("conversations.replies")) == 3  # 451 messages, pages of 200
    for i in range(5):
        slack.add_message("C1", words(900 + i), user="U2", thread_ts=parent)
    clock.advance(60)
    tbot.mention("C1", "anything new?", thread_ts=parent)
    reads = slack.calls_to("conversations.replies")[3:]
    assert len(reads) == 1 and reads[0].get("oldest")
    text = " ".join(b["text"] for b in blocks(model))
    assert "Note 904" in text and "Note 1:" in text
    assert (
        model.usages[1]["cache_read_input_tokens"] == model.usages[0]["cache_creation_input_tokens"]
    )


def _edit_event(slack, channel: str, ts: str, text: str, parent: str) -> dict:
    return {
        "type": "message",
        "subtype": "message_changed",
        "channel": channel,
        "hidden": True,
        "ts": str(float(ts) + 1),
        "message": {
            "type": "message",
            "user": "U1",
            "text": text,
            "ts": ts,
            "thread_ts": parent,
            "edited": {"user": "U1", "ts": "1"},
        },
        "previous_message": {"type": "message", "user": "U1", "text": "old", "ts": ts},
    }


def test_edits_and_deletions_arrive_as_events_and_show(tbot, slack, model, clock):
    parent = slack.add_thread("C1", 30, text_fn=words)
    msgs = slack.thread("C1", parent)
    tbot.mention("C1", "summarize", thread_ts=parent)
    slack.edit_message("C1", msgs[3]["ts"], "Note 3 (corrected): failover drill cancelled")
    tbot.event(
        _edit_event(
            slack, "C1", msgs[3]["ts"], "Note 3 (corrected): failover drill cancelled", parent
        )
    )
    slack.delete_message("C1", msgs[5]["ts"])
    tbot.event(
        {
            "type": "message",
            "subtype": "message_deleted",
            "channel": "C1",
            "hidden": True,
            "ts": "1800000100.000000",
            "deleted_ts": msgs[5]["ts"],
            "previous_message": {"type": "message", "ts": msgs[5]["ts"], "text": "x"},
        }
    )
    clock.advance(30)
    tbot.mention("C1", "and now?", thread_ts=parent)
    text = " ".join(b["text"] for b in blocks(model))
    assert "failover drill cancelled" in text
    assert "Note 5:" not in text and "Note 3: deploy" not in text
    assert len(slack.calls_to("conversations.replies")) == 2  # still one read per request
    # the edit changed the prefix: the stale boundary is not read, a new one is written
    assert model.usages[1]["cache_read_input_tokens"] == 0


def test_missed_edit_is_caught_by_the_periodic_full_read(make_bot, slack, model, clock):
    bot = make_bot(clock=clock, full_reread_hours=1)
    parent = slack.add_thread("C1", 10, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent)
    slack.edit_message("C1", slack.thread("C1", parent)[2]["ts"], "silently edited")
    clock.advance(2 * 3600)
    bot.mention("C1", "again", thread_ts=parent)
    assert "silently edited" in " ".join(b["text"] for b in blocks(model))
    assert slack.calls_to("conversations.replies")[-1]["oldest"] == parent  # whole again


def no_keep_alive(engine, slack) -> None:
    """The workspace keeps no transcripts: no keep-alive calls, so nothing would upgrade a
    5-minute write and the policy writes for an hour itself where that pays (with them, a
    whole prefix is written for 5 minutes and upgraded: test_keepalive)."""
    with sessionmaker(engine).begin() as s:
        s.add(WorkspaceSettings(team_id=slack.team_id, keep_transcripts=False))


def test_half_hour_rhythm_switches_to_1h_and_keeps_hitting(tbot, slack, model, clock, engine):
    no_keep_alive(engine, slack)
    parent = slack.add_thread("C1", 60, text_fn=words)
    for turn in range(5):
        slack.add_message("C1", words(500 + turn), user="U3", thread_ts=parent)
        tbot.mention("C1", f"status {turn}?", thread_ts=parent)
        clock.advance(25 * 60)
    marks = [ttl_marks(model, i) for i in range(5)]
    assert marks[0] == ["5m"]
    assert "1h" in marks[-1]
    # once 1h entries are written, a follow-up 25 minutes later still reads them
    assert model.usages[-1]["cache_read_input_tokens"] > 0
    ones = [i for i, m in enumerate(marks) if m and m[-1] == "1h"]
    assert all(model.usages[i + 1]["cache_read_input_tokens"] > 0 for i in ones if i + 1 < 5)
    for m in marks:  # never a 1h breakpoint after a 5m one
        assert m == sorted(m, key=lambda t: t != "1h")


def test_expired_write_is_not_marked_for_reading(tbot, slack, model, clock):
    parent = slack.add_thread("C1", 40, text_fn=words)
    tbot.mention("C1", "summarize", thread_ts=parent)
    clock.advance(2 * 3600)
    tbot.mention("C1", "later question", thread_ts=parent)
    assert len(ttl_marks(model)) <= 1  # no read breakpoint on a dead entry


def test_relay_that_does_not_cache_is_noted(tbot, slack, model, caplog):
    model.caching = False
    parent = slack.add_thread("C1", 60, text_fn=words)
    with caplog.at_level(logging.WARNING):
        tbot.mention("C1", "summarize", thread_ts=parent)
        tbot.mention("C1", "again", thread_ts=parent)
    post = tbot.posts_in("C1", parent)[-1]
    assert "endpoint did not cache" in str(post["blocks"])
    assert caplog.text.count("may accept cache_control without caching") == 1


def test_cache_floor_override(make_bot, slack, model, clock):
    bot = make_bot(clock=clock, cache_min_tokens="claude-sonnet-4-5=100000")
    parent = slack.add_thread("C1", 5)
    model.caching = False
    bot.mention("C1", "summarize", thread_ts=parent)
    post = bot.posts_in("C1", parent)[-1]
    assert "under the 100,000-token minimum" in str(post["blocks"])


def test_ten_thousand_message_thread_is_answered_with_a_stable_compaction(
    make_bot, slack, model, clock, engine
):
    bot = make_bot(clock=clock, context_budget_tokens=60000, max_output_tokens=1000)
    parent = slack.add_thread("C1", 9_999, text_fn=words, users=["U1", "U2", "U3"])
    bot.mention("C1", "summarize", thread_ts=parent)
    posts = bot.posts_in("C1", parent)
    assert len(posts) == 1 and "Sorry" not in posts[0]["text"]
    with sessionmaker(engine)() as s:
        comp = s.scalar(select(Compaction))
        kinds = dict(
            s.execute(select(UsageRecord.kind, func.count()).group_by(UsageRecord.kind)).all()
        )
    assert comp is not None and comp.upto % 250 == 0
    assert kinds["compact"] >= 1 and kinds["mention"] == 1
    first = blocks(model)
    assert first[0]["text"].endswith(words(0)) and "[Summary of the" in first[1]["text"]
    # a follow-up reuses the stored summary (no new compaction call) and reads the cache
    calls = len(model.requests)
    for i in range(3):
        slack.add_message("C1", words(20_000 + i), user="U2", thread_ts=parent)
    clock.advance(60)
    bot.mention("C1", "and the last three?", thread_ts=parent)
    assert len(model.requests) == calls + 1
    assert blocks(model)[1]["text"] == first[1]["text"]
    assert model.usages[-1]["cache_read_input_tokens"] > 0


def test_uninstall_purges_the_workspace_text_but_keeps_numbers(tbot, slack, model, engine):
    parent = slack.add_thread("C1", 10, text_fn=words)
    tbot.mention("C1", "summarize", thread_ts=parent)
    SlackUI(tbot).command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    with sessionmaker(engine).begin() as s:  # a renewal the keep-alive did not make
        s.add(RenewalDeclined(team_id="T0001", channel_id="C1", thread_ts=parent,
                              at=datetime.now(UTC), early=False))
    resp = tbot.event({"type": "app_uninstalled"})
    assert resp.status_code == 200
    tbot.wait()
    with sessionmaker(engine)() as s:
        models = (ThreadMessage, Summary, ThreadState, SlackUser, Compaction, RenewalDeclined)
        for model_cls in models:
            assert s.scalar(select(func.count()).select_from(model_cls)) == 0, model_cls
        rows = s.scalars(select(UsageRecord)).all()
    assert len(rows) == 2 and all(r.cache_creation_tokens >= 0 for r in rows)


def test_retention_forgets_idle_threads(tbot, slack, model, engine, clock):
    parent = slack.add_thread("C1", 10, text_fn=words)
    tbot.mention("C1", "summarize", thread_ts=parent)
    sessions = sessionmaker(engine)
    later = datetime.fromtimestamp(clock.now + 31 * 86400, UTC)
    run_housekeeping(sessions, tbot.app.settings, later)
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(ThreadMessage)) == 0
        assert s.scalar(select(ThreadState.full_read_at)) is None
    clock.advance(31 * 86400)
    tbot.mention("C1", "still there?", thread_ts=parent)
    assert slack.calls_to("conversations.replies")[-1]["oldest"] == parent  # whole again


def test_a_slow_follow_up_reads_the_1h_anchor_beneath_5m_tails(tbot, slack, model, clock, engine):
    no_keep_alive(engine, slack)  # the policy's own 1h writes (with upgrades: test_keepalive)
    parent = slack.add_thread("C1", 60, text_fn=words)

    def ask(turn: int, after: float) -> None:
        clock.advance(after)
        slack.add_message("C1", words(500 + turn), user="U3", thread_ts=parent)
        tbot.mention("C1", f"status {turn}?", thread_ts=parent)

    ask(0, 0)
    ask(1, 25 * 60)  # a half-hour rhythm earns a 1h write
    assert ttl_marks(model) == ["1h"]
    turn = 2
    while ttl_marks(model)[-1] == "1h":  # a burst: once quick follow-ups are the rule, the
        ask(turn, 40)  # newest messages are written for 5 minutes on top of the 1h anchor
        turn += 1
        assert turn < 12
    assert ttl_marks(model) == ["1h", "5m"]  # 1h breakpoints come first
    anchor = model.usages[-1]["cache_read_input_tokens"]
    assert model.usages[-1]["cache_creation"]["ephemeral_5m_input_tokens"] > 0
    ask(turn, 20 * 60)  # the 5m tail is gone; the anchor, read 20 minutes ago, is not
    assert ttl_marks(model)[0] == "1h"
    assert model.usages[-1]["cache_read_input_tokens"] == anchor


@pytest.mark.parametrize(
    ("follow_up", "first_marks"), [(None, ["5m"]), (20 * 60, ["1h"])], ids=["one-off", "slow"]
)
def test_first_writes_follow_the_workspace_habits_kept_in_sql(
    make_bot, slack, model, clock, engine, follow_up, first_marks
):
    no_keep_alive(engine, slack)  # the policy's own writes, no upgrade to count on
    bot = make_bot(clock=clock)
    for t in range(12):
        parent = slack.add_thread("C1", 60, text_fn=lambda i, t=t: words(1000 * t + i))
        bot.mention("C1", "summarize", thread_ts=parent)
        assert ttl_marks(model) == ["5m"] or t > 0  # a fresh install starts with 5 minutes
        for _ in range(3 if follow_up else 0):  # asked again, and again, 20 minutes apart
            clock.advance(follow_up)
            bot.mention("C1", "anything new?", thread_ts=parent)
        clock.advance(2 * 3600)
    with sessionmaker(engine)() as s:
        seen = s.scalar(select(func.count()).select_from(ThreadState))
    assert seen == 12
    fresh = make_bot(clock=clock)  # another process: the habits come from the database
    parent = slack.add_thread("C1", 60, text_fn=lambda i: words(99_000 + i))
    fresh.mention("C1", "summarize", thread_ts=parent)
    assert ttl_marks(model) == first_marks
