"""Keep-alive reads at the wire: after an answer, while people keep writing in the thread, the
bot reads its 5-minute cache entry again before it expires (a job on the thread, its usage a
ledger row of its own kind, nothing posted in Slack); it stops when the thread goes quiet."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.digest import Period, build_digest, render_text
from bot.housekeeping import run_housekeeping
from bot.keepalive import (
    KIND,
    LEAD,
    LEARN_DAYS,
    MAX_PINGS,
    MAX_RENEWALS,
    RECENT,
    START_RENEWED,
    START_WEIGHT,
    TTL,
    UPGRADE_TTL,
    followed_odds,
    needed_odds,
    renewal_odds,
    track_record,
    upgrade_odds,
)
from bot.store import data
from bot.store.models import (
    Job,
    RenewalDeclined,
    ThreadState,
    UsageRecord,
    WorkspaceSettings,
)
from bot.ttl_policy import KEEP_ALIVE_ODDS, MISS, READ
from tests.harness import Bot, make_settings
from tests.test_doctor import inspect, link_to


def long_text(i: int) -> str:
    return (
        f"Message {i}: we looked at the rollout plan again, the canary in eu-west looked "
        f"healthy, latency p99 stayed under 180 ms and nobody saw errors in batch {i}."
    )


def at(slack: Any, model: Any, when: float) -> None:
    """Move the bot's clock (the fake Slack's) and the model fake's to `when`."""
    slack.now = when
    model.now = when


def write(bot: Bot, slack: Any, parent: str, i: int, user: str = "U2") -> None:
    """Somebody writes in the thread: Slack delivers the message event."""
    bot.deliver(slack.post_event("C1", long_text(i), user=user, thread_ts=parent))


def run_due(bot: Bot, slack: Any, model: Any, until: float) -> int:
    """Run every deferred job due before `until` at its own time; returns how many ran."""
    runs = 0
    while True:
        due = bot.app.queue.next_due()
        if due is None or due.timestamp() >= until:
            return runs
        at(slack, model, max(slack.now, due.timestamp()))
        bot.app.queue.wake()
        bot.wait()
        runs += 1


def keepalive_rows(engine) -> list[UsageRecord]:
    """The ledger's keep-alive rows, oldest first (PostgreSQL returns rows in no set order)."""
    with sessionmaker(engine)() as s:
        query = select(UsageRecord).where(UsageRecord.kind == KIND)
        return list(s.scalars(query.order_by(UsageRecord.created_at, UsageRecord.id)))


def waiting_jobs(engine) -> list[Job]:
    with sessionmaker(engine)() as s:
        return list(
            s.scalars(select(Job).where(Job.kind == KIND, Job.status == "queued"))
        )


def only_a_renewal_waits(engine) -> None:
    """After an upgrade: no more reads; one renewal waits, due shortly before the upgrade's
    hour ends (it renews it only if people are still writing then)."""
    jobs = waiting_jobs(engine)
    assert len(jobs) == 1 and json.loads(jobs[0].payload)["renewals"] == 0
    upgraded = keepalive_rows(engine)[-1].created_at.replace(tzinfo=UTC).timestamp()
    due = jobs[0].run_at.replace(tzinfo=UTC).timestamp()
    assert due == pytest.approx(upgraded + UPGRADE_TTL - LEAD, abs=0.01)


def pings(model: Any) -> list[dict[str, Any]]:
    return [r for r in model.requests if r["body"].get("max_tokens") == 1]


def follow_up_reads_it_all(
    bot: Bot, slack: Any, model: Any, parent: str, when: float, upgrade: dict[str, Any]
) -> None:
    """A follow-up at `when` reads back all that the upgrade (its usage) read and wrote."""
    at(slack, model, when)
    bot.mention("C1", "anything new?", thread_ts=parent)
    whole = upgrade["cache_read_input_tokens"] + upgrade["cache_creation_input_tokens"]
    assert model.usages[-1]["cache_read_input_tokens"] == whole


def start(
    make_bot, slack, model, messages: int = 40, **settings: Any
) -> tuple[Bot, str, float]:
    bot = make_bot(clock=slack.clock, sleep=slack.sleep, **settings)
    at(slack, model, slack.now)
    parent = slack.add_thread("C1", messages, text_fn=long_text)
    slack.advance(30)
    at(slack, model, slack.now)
    # The bot hears the thread from here on (a message event), so it keeps it.
    write(bot, slack, parent, messages + 1)
    bot.mention("C1", "what did we decide?", thread_ts=parent)
    return bot, parent, slack.now


def test_active_thread_is_kept_warm_and_the_follow_up_reads_it(make_bot, slack, model, engine):
    bot, parent, answered = start(make_bot, slack, model)
    posts = len(slack.posts)
    first = model.usages[-1]
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] > 0  # a 5-minute tail

    # People go on discussing: a message every 3 minutes for 12 minutes.
    for n, minutes in enumerate((3, 6, 9, 12)):
        run_due(bot, slack, model, answered + minutes * 60)
        at(slack, model, answered + minutes * 60)
        write(bot, slack, parent, 100 + n)
    run_due(bot, slack, model, answered + 13 * 60)
    at(slack, model, answered + 13 * 60)

    sent = pings(model)
    assert len(sent) == 2  # at 4.5 and 9 minutes: each refreshed the entry before it expired
    assert all(p["body"].get("stream") is None for p in sent)
    ping_usages = [u for r, u in zip(model.requests, model.usages, strict=True) if r in sent]
    for u in ping_usages:
        assert u["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
        assert u["cache_creation_input_tokens"] == 0 and u["input_tokens"] == 0
    assert len(slack.posts) == posts  # nothing in Slack
    rows = keepalive_rows(engine)
    assert len(rows) == 2 and all(r.outcome == "ok" and r.thread_ts == parent for r in rows)
    assert all(r.cache_read_tokens == first["cache_creation_input_tokens"] for r in rows)

    # The digest counts them as their own kind.
    with sessionmaker(engine)() as s:
        period = Period.ending(datetime.fromtimestamp(slack.now, UTC), 1, "day")
        text = render_text(build_digest(s, rows[0].team_id, period, private_channels=set()))
    assert "keepalive 2" in text and "mention 1" in text

    # A follow-up 13 minutes after the answer still reads the whole earlier prefix.
    bot.mention("C1", "and what is still open?", thread_ts=parent)
    follow = model.usages[-1]
    assert follow["cache_read_input_tokens"] == first["cache_creation_input_tokens"]


def rarely_asked_again(engine, team: str = "T0001") -> None:
    """A workspace whose threads are rarely asked about again within the hour."""
    with sessionmaker(engine).begin() as s:
        for gap in [6 * 3600] * 40:
            data.note_habit(s, team, "first", gap)


def test_keep_alive_stops_when_the_thread_goes_quiet(make_bot, slack, model, engine):
    """On a workspace whose threads are rarely asked again within the hour, a read while
    people write; once they stop, no upgrade pays either, and the reads end."""
    rarely_asked_again(engine)
    bot, parent, answered = start(make_bot, slack, model)
    at(slack, model, answered + 60)
    write(bot, slack, parent, 100)  # one message after the answer, then silence
    run_due(bot, slack, model, answered + 40 * 60)

    sent = pings(model)
    assert len(sent) == 1 and marks_of(sent[0]) == ["5m"]  # the first read, no second
    assert len(keepalive_rows(engine)) == 1
    assert waiting_jobs(engine) == []  # it ended instead of waiting on

    at(slack, model, answered + 15 * 60)
    bot.mention("C1", "anything new?", thread_ts=parent)
    assert model.usages[-1]["cache_read_input_tokens"] == 0  # expired: nothing kept it alive


def test_a_thread_that_goes_quiet_after_reads_is_upgraded_once(make_bot, slack, model, engine):
    """A read while people write; when they stop, a request within the hour is still likely
    enough on a fresh workspace (its start belief), so the next call writes what was said
    since the answer for an hour instead of ending, and a follow-up 25 minutes later reads
    it all."""
    bot, parent, answered = start(make_bot, slack, model)
    at(slack, model, answered + 60)
    write(bot, slack, parent, 100)
    run_due(bot, slack, model, answered + 40 * 60)

    sent = pings(model)
    assert [marks_of(p) for p in sent] == [["5m"], ["1h", "1h"]]
    assert "Message 100" in sent[1]["body"]["messages"][0]["content"][-1]["text"]
    used = model.usages[model.requests.index(sent[1])]
    assert used["cache_read_input_tokens"] > 0
    assert used["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    only_a_renewal_waits(engine)

    follow_up_reads_it_all(bot, slack, model, parent, answered + 25 * 60, used)


def test_a_quiet_thread_gets_no_reads_only_an_upgrade_of_the_mention_and_answer(
    make_bot, slack, model, engine
):
    """Nobody writes after the answer: no read (nothing says a request comes within 5
    minutes). But the mention and the answer are the next request's prefix too, and a fresh
    workspace's start belief makes a request within the hour likely enough (45 % after a first
    request) for one upgrade: the prefix is read once and the two are written for an hour."""
    bot, parent, answered = start(make_bot, slack, model)
    first = model.usages[-1]
    run_due(bot, slack, model, answered + 30 * 60)
    sent = pings(model)
    assert len(sent) == 1 and marks_of(sent[0]) == ["1h", "1h"]
    tail = sent[0]["body"]["messages"][0]["content"]
    assert "what did we decide?" in tail[-2]["text"]  # the mention, then the answer
    assert tail[-1]["text"].startswith("[") and "You (assistant)" in tail[-1]["text"]
    used = model.usages[model.requests.index(sent[0])]
    assert used["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    only_a_renewal_waits(engine)

    follow_up_reads_it_all(bot, slack, model, parent, answered + 35 * 60, used)


def test_no_keep_alive_on_a_quiet_thread_where_threads_are_rarely_asked_again(
    make_bot, slack, model, engine
):
    """A workspace whose threads are rarely asked about again within the hour: a quiet thread
    gets neither a read nor an upgrade, and its entry is left to expire."""
    rarely_asked_again(engine)
    bot, parent, answered = start(make_bot, slack, model)
    run_due(bot, slack, model, answered + 30 * 60)
    assert pings(model) == [] and keepalive_rows(engine) == []
    assert waiting_jobs(engine) == []


def test_keep_alive_reads_are_bounded(make_bot, slack, model, engine):
    bot, parent, answered = start(make_bot, slack, model)
    for n in range(40):  # a message every two minutes for 80 minutes, and no follow-up
        when = answered + (n + 1) * 120
        run_due(bot, slack, model, when)
        at(slack, model, when)
        write(bot, slack, parent, 200 + n)
    run_due(bot, slack, model, answered + 90 * 60)
    assert len(pings(model)) == MAX_PINGS
    assert waiting_jobs(engine) == []
    times = sorted(r.created_at.timestamp() for r in keepalive_rows(engine))
    spacing = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(spacing) == MAX_PINGS - 1
    assert all(abs(s - (TTL - LEAD)) < 1 for s in spacing)  # each just before the expiry


def test_fixed_ttl_sends_no_keep_alive(make_bot, slack, model, engine):
    bot, parent, answered = start(make_bot, slack, model, cache_ttl="5m")
    at(slack, model, answered + 60)
    write(bot, slack, parent, 100)
    run_due(bot, slack, model, answered + 30 * 60)
    assert pings(model) == [] and waiting_jobs(engine) == []


def test_keep_alive_respects_the_spend_budget(make_bot, slack, model, engine):
    model.output_tokens = 1000  # the answer alone spends the day's limit ($0.015 > $0.01)
    bot, parent, answered = start(make_bot, slack, model, budget_daily_usd="0.01")
    model.output_tokens = None
    assert len(model.usages) == 1  # the answer went through
    at(slack, model, answered + 60)
    write(bot, slack, parent, 100)
    run_due(bot, slack, model, answered + 30 * 60)
    assert pings(model) == [] and keepalive_rows(engine) == []
    assert waiting_jobs(engine) == []


def test_inspect_explains_the_keep_alive(make_bot, slack, model, engine, database_url):
    bot, parent, answered = start(make_bot, slack, model)
    settings = make_settings(slack, model, database_url)
    link = link_to("C1", parent)

    _, quiet = inspect(settings, link)
    assert "Keep-alive reads: " in quiet
    assert "one waiting: 0 reads so far" in quiet
    assert "nobody wrote since the last touch, so it will upgrade or end" in quiet
    # no read of the workspace has run its 5 minutes yet: the start belief
    assert "expected to be followed by a request 30% of the time (0 of its own so far" in quiet
    assert "upgrades after a request like this one, 0 of 0 were followed" in quiet

    at(slack, model, answered + 60)
    write(bot, slack, parent, 100)
    _, active = inspect(settings, link)
    assert "people wrote since the last touch, so it will read" in active

    _, fixed = inspect(make_settings(slack, model, database_url, cache_ttl="1h"), link)
    assert "Keep-alive reads: none (CACHE_TTL=1h" in fixed
    assert "a renewal is expected to be followed by a request 25% of the time (0 of" in active


def test_inspect_shows_a_waiting_renewal(make_bot, slack, model, engine, database_url):
    bot, parent, answered, _ = upgraded_quiet_thread(make_bot, slack, model, engine)
    _, shown = inspect(make_settings(slack, model, database_url), link_to("C1", parent))
    assert "one waiting: a renewal of the 1-hour entry (0 so far), due " in shown
    assert "it renews only if somebody wrote in the thread in the 15 minutes before" in shown


def test_a_workspace_whose_reads_are_never_followed_makes_fewer(make_bot, slack, model, engine):
    """Reads that no request followed within their 5 minutes teach the workspace: from the start
    belief (30 %, worth 5 reads), a third or later read stops paying once 24 of them went
    unfollowed (1.5 / 29 is under the 5.3 % a read needs when a request that late would write
    the prefix for an hour, 2x), so the first six threads get six reads and the seventh two."""
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    counts = []
    for _ in range(7):
        at(slack, model, slack.now + 3 * 3600)
        root = slack.post_event("C1", long_text(0), user="U1")  # the bot hears it all
        bot.deliver(root)
        parent = root["ts"]
        for i in range(1, 40):
            write(bot, slack, parent, i)
        bot.mention("C1", "what did we decide?", thread_ts=parent)
        answered, before = slack.now, len(pings(model))
        for n in range(18):  # people write every two minutes for 36 minutes, nobody asks
            when = answered + (n + 1) * 120
            run_due(bot, slack, model, when)
            at(slack, model, when)
            write(bot, slack, parent, 100 + n)
        run_due(bot, slack, model, answered + 3600)
        counts.append(len(pings(model)) - before)
    assert counts == [MAX_PINGS] * 6 + [2]


def test_reads_after_one_kind_of_request_learn_apart_from_the_others():
    """The record is kept per kind of request the reads follow (the gap before it), moved
    towards the reads after the other kinds, and each read counts once."""
    record = {("long", 1): (40, 0), ("short", 1): (20, 12)}
    after_long = followed_odds(record, 1, "long")
    after_short = followed_odds(record, 1, "short")
    assert after_long < KEEP_ALIVE_ODDS < after_short  # slow threads' reads stop, quick ones go on
    assert after_long < followed_odds(record, 1, "first") < after_short  # no reads of its own
    # one kind of request only: the start belief (30 %, worth 5 reads) and the reads themselves
    assert followed_odds({("first", 3): (13, 0)}, 3, "first") == pytest.approx(1.5 / 18)


def mention_heard(bot: Bot, slack: Any, parent: str, text: str, user: str = "U1") -> None:
    """A mention as Slack sends it: a `message` event (the bot keeps it), then `app_mention`."""
    posted = slack.post_event("C1", f"<@UBOT> {text}", user=user, thread_ts=parent)
    bot.deliver(posted)
    bot.event(slack.app_mention_event("C1", posted["ts"]))


def tail_on_a_live_anchor(make_bot, slack, model) -> tuple[Bot, str, float, int]:
    """A thread whose prefix was written for an hour (the anchor), then a burst of requests
    that leave a 5-minute tail on top of it; the last answer's time and the anchor's size."""
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    root = slack.post_event("C1", long_text(0), user="U1")
    bot.deliver(root)
    parent = root["ts"]
    for i in range(1, 60):
        write(bot, slack, parent, i)

    def ask(turn: int, after: float) -> None:
        run_due(bot, slack, model, slack.now + after)
        at(slack, model, slack.now + after)
        write(bot, slack, parent, 500 + turn)
        mention_heard(bot, slack, parent, f"status {turn}?")

    ask(0, 0)
    ask(1, 25 * 60)  # the first answer's upgrade read back, a 1h write on it: the anchor
    assert marks_of(model.requests[-1]) == ["1h", "1h"]
    turn = 2
    while marks_of(model.requests[-1])[-1] == "1h":  # a burst: the newest go on top for 5m
        ask(turn, 40)
        turn += 1
        assert turn < 12
    assert marks_of(model.requests[-1]) == ["1h", "5m"]
    return bot, parent, slack.now, model.usages[-1]["cache_read_input_tokens"]


def test_no_reads_for_a_tail_on_a_live_1h_anchor(make_bot, slack, model, engine, caplog):
    """A 5-minute tail written on top of a live 1-hour anchor: a follow-up after the tail
    expired reads the anchor anyway, so reading the whole prefix to keep the newest few
    messages alive does not pay. People go on writing, and no read is made."""
    bot, parent, answered, anchor = tail_on_a_live_anchor(make_bot, slack, model)
    before = len(pings(model))
    with caplog.at_level("INFO", logger="bot.keepalive"):
        for n in range(8):  # people write every two minutes, nobody asks for 16 minutes
            when = answered + (n + 1) * 120
            run_due(bot, slack, model, when)
            at(slack, model, when)
            write(bot, slack, parent, 900 + n)
        run_due(bot, slack, model, answered + 16 * 60)
    assert len(pings(model)) == before  # no read of the whole prefix for the newest messages
    assert "a live 1-hour anchor keeps the prefix readable anyway" in caplog.text

    at(slack, model, answered + 16 * 60)
    bot.mention("C1", "what is left?", thread_ts=parent)
    assert model.usages[-1]["cache_read_input_tokens"] >= anchor  # the anchor, read back


def renewed_while_people_write(
    bot: Bot, slack: Any, model: Any, parent: str, since: float, first: int
) -> dict[str, Any]:
    """People write 50 and 56 minutes after `since` (messages `first` + minutes), when a 1-hour
    entry was last used; by 65 minutes one keep-alive call has renewed it (a 1h write): its
    usage."""
    before = len(pings(model))
    for minutes in (50, 56):
        at(slack, model, since + minutes * 60)
        write(bot, slack, parent, first + minutes)
    run_due(bot, slack, model, since + 65 * 60)
    (sent,) = pings(model)[before:]
    assert marks_of(sent)[-1] == "1h"
    renewal = model.usages[model.requests.index(sent)]
    assert renewal["cache_creation"]["ephemeral_1h_input_tokens"] > 0  # what came since
    return renewal


def test_the_anchor_under_a_tail_is_renewed_before_its_hour_ends(
    make_bot, slack, model, engine, database_url
):
    """When the reads of a 5-minute tail end above a live 1-hour anchor, the anchor's renewal
    waits for the end of its hour. People write shortly before: the keep-alive reads the
    anchor back and writes everything after it for an hour, and a request 100 minutes after
    the anchor was last used, which would have written the whole prefix again, reads it all."""
    bot, parent, answered, anchor = tail_on_a_live_anchor(make_bot, slack, model)
    before = len(pings(model))
    run_due(bot, slack, model, answered + 10 * 60)
    assert len(pings(model)) == before  # no read: the anchor holds the prefix
    (job,) = waiting_jobs(engine)
    payload = json.loads(job.payload)
    used = payload["anchor_at"]
    assert payload["renewals"] == 0 and used <= answered
    due = job.run_at.replace(tzinfo=UTC).timestamp()
    assert due == pytest.approx(used + UPGRADE_TTL - LEAD, abs=0.01)
    _, shown = inspect(make_settings(slack, model, database_url), link_to("C1", parent))
    assert "one waiting: a renewal of the 1-hour anchor (0 so far), due " in shown

    renewal = renewed_while_people_write(bot, slack, model, parent, used, 700)
    assert renewal["cache_read_input_tokens"] == anchor  # the anchor, read back in time
    follow_up_reads_it_all(bot, slack, model, parent, used + 100 * 60, renewal)


def test_a_live_anchor_raises_the_chance_a_read_needs():
    """A read costs 0.1 a token of the whole prefix and saves 1.15 a token only above a
    1-hour anchor that outlives its 5 minutes: the chance it needs grows by prefix / (prefix -
    anchor), and an anchor that expires within the read's 5 minutes does not count."""
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def state(anchor_used_minutes_ago: float | None) -> ThreadState:
        s = ThreadState(
            cache_boundary_ts="1700000100.000000", cache_prefix_digest="d2", cache_ttl="5m",
            cache_written_at=now - timedelta(minutes=4), cache_prefix_tokens=10_000,
        )
        if anchor_used_minutes_ago is not None:
            s.anchor_ts, s.anchor_digest, s.anchor_tokens = "1700000000.000000", "d1", 5_000
            s.anchor_at = now - timedelta(minutes=anchor_used_minutes_ago)
        return s

    assert needed_odds(state(None), now) == pytest.approx(KEEP_ALIVE_ODDS)
    assert needed_odds(state(10), now) == pytest.approx(2 * KEEP_ALIVE_ODDS)
    assert needed_odds(state(57), now) == pytest.approx(KEEP_ALIVE_ODDS)  # gone in 3 minutes
    full = state(10)
    full.anchor_tokens = 10_000
    assert needed_odds(full, now) > 1  # all of it readable anyway: never


def slow_habits(engine, team: str = "T0001") -> None:
    """A workspace whose threads are mostly asked again within the hour, rarely within 5
    minutes: 20 first requests, 2 followed within 5 minutes, 9 within the hour."""
    with sessionmaker(engine).begin() as s:
        for gap in [120] * 2 + [1500] * 7 + [3 * 3600] * 11:
            data.note_habit(s, team, "first", gap)


def start_on_a_slow_workspace(make_bot, slack, model, engine) -> tuple[Bot, str, float]:
    """A 120-message thread, asked about once, on a workspace of `slow_habits`."""
    slow_habits(engine)
    return start(make_bot, slack, model, messages=120)


def marks_of(request: dict[str, Any]) -> list[str]:
    content = request["body"]["messages"][0]["content"]
    return [b["cache_control"].get("ttl", "5m") for b in content if "cache_control" in b]


def test_an_active_thread_likely_asked_within_the_hour_is_written_on_for_an_hour(
    make_bot, slack, model, engine
):
    """People write after the answer, and the workspace's threads are usually asked again
    within the hour: instead of reading the prefix every 5 minutes, the keep-alive reads it
    once and writes what was said since (the mention, the answer, the new messages) for an
    hour. A follow-up 40 minutes later reads all of it back."""
    bot, parent, answered = start_on_a_slow_workspace(make_bot, slack, model, engine)
    first = model.usages[-1]
    assert marks_of(model.requests[-1]) == ["5m"]  # a 5-minute tail: a later hour is unsure

    at(slack, model, answered + 60)
    write(bot, slack, parent, 122)
    run_due(bot, slack, model, answered + 10 * 60)

    sent = pings(model)
    assert len(sent) == 1
    upgrade = sent[0]
    assert marks_of(upgrade) == ["1h", "1h"]  # reads the tail, writes on to the newest message
    assert "Message 122" in upgrade["body"]["messages"][0]["content"][-1]["text"]
    used = model.usages[model.requests.index(upgrade)]
    assert used["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert used["cache_creation"]["ephemeral_1h_input_tokens"] > 0
    assert used["cache_creation"]["ephemeral_5m_input_tokens"] == 0
    only_a_renewal_waits(engine)  # an hour's entry needs no more reads
    rows = keepalive_rows(engine)
    assert len(rows) == 1 and rows[0].cache_creation_tokens == used["cache_creation_input_tokens"]

    follow_up_reads_it_all(bot, slack, model, parent, answered + 40 * 60, used)


def test_no_upgrade_when_a_new_message_carries_a_file(make_bot, slack, model, engine):
    """A file posted since the answer is read (downloaded) by the next request: the keep-alive
    does not fetch it, so it only reads the prefix to keep it alive."""
    bot, parent, answered = start_on_a_slow_workspace(make_bot, slack, model, engine)
    at(slack, model, answered + 60)
    bot.deliver(slack.post_event("C1", "the plan", user="U2", thread_ts=parent,
                                 files=[{"name": "plan.txt", "content": b"step one"}]))
    run_due(bot, slack, model, answered + 5 * 60)
    sent = pings(model)
    assert len(sent) == 1 and marks_of(sent[0]) == ["5m"]  # a read of the answer's prefix


def test_an_upgrade_of_a_thread_kept_from_events_is_read_back(make_bot, slack, model, engine):
    """A thread the bot kept whole from message events, the mention too (Slack sends it as
    `app_mention` and as a `message` event): the answer reads nothing from Slack, and the
    upgrade's prefix, built from the kept copy alone, is the next request's: it reads it all
    back 35 minutes later."""
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    at(slack, model, slack.now)
    root = slack.post_event("C1", long_text(0), user="U1")
    bot.deliver(root)
    parent = root["ts"]
    for i in range(1, 40):
        write(bot, slack, parent, i)
    reads = len(slack.calls_to("conversations.replies"))
    mention_heard(bot, slack, parent, "what did we decide?")
    assert len(slack.calls_to("conversations.replies")) == reads  # kept whole: no read
    answered = slack.now
    run_due(bot, slack, model, answered + 30 * 60)
    sent = pings(model)
    assert len(sent) == 1 and marks_of(sent[0]) == ["1h", "1h"]
    used = model.usages[model.requests.index(sent[0])]

    follow_up_reads_it_all(bot, slack, model, parent, answered + 35 * 60, used)


def row(thread: str, at: float, kind: str, read: int = 0, written: int = 0) -> UsageRecord:
    """A ledger row of channel C9 at `at`: a request (`kind` mention) or a keep-alive call."""
    return UsageRecord(
        created_at=datetime.fromtimestamp(at, UTC), team_id="T0001", channel_id="C9",
        thread_ts=thread, user_id="U2", kind=kind, model="claude-sonnet-4-5",
        cache_read_tokens=read, cache_creation_tokens=written, outcome="ok",
    )


def past_calls(engine, now: float, followed_after: float | None, n: int) -> None:
    """The ledger of a workspace's earlier threads (in channel C9, hours before `now`): on
    each, a first request and 4.5 minutes later a keep-alive upgrade (it read the entry and
    wrote), then a request `followed_after` seconds after the upgrade, or none."""
    with sessionmaker(engine).begin() as s:
        for i in range(n):
            asked = now - (n - i) * 4 * 3600
            thread = f"{int(asked)}.000100"
            data.add_usage(s, row(thread, asked, "mention"))
            data.add_usage(s, row(thread, asked + 270, KIND, read=5000, written=300))
            if followed_after is not None:
                data.add_usage(s, row(thread, asked + 270 + followed_after, "mention"))


def test_the_record_counts_upgrades_by_what_followed_within_their_hour(engine, slack):
    """Upgrades (calls that read and wrote) count apart from plain reads, once their hour is
    over, as followed when a request on the thread came within it."""
    past_calls(engine, slack.now, followed_after=1800, n=3)
    past_calls(engine, slack.now - 3600, followed_after=None, n=2)  # other threads, earlier
    with sessionmaker(engine).begin() as s:  # a plain read, and an upgrade whose hour runs
        for at, written in ((slack.now - 7200, 0), (slack.now - 600, 300)):
            data.add_usage(s, row(f"{int(at)}.000200", at, KIND, read=5000, written=written))
    with sessionmaker(engine)() as s:
        record = track_record(s, "T0001", datetime.fromtimestamp(slack.now, UTC))
    assert record.upgrades == {"first": (5, 3)}
    assert record.reads[("first", 1)] == (7, 0)  # every call that read, none within 5 minutes
    assert upgrade_odds(record, "first", 0.5) == pytest.approx((3 + 5 * 0.5) / (5 + 5))
    assert upgrade_odds(record, "long", 0.5) == 0.5  # none after such a request: as expected


@pytest.mark.parametrize("history", ["none", "unfollowed"])
def test_a_workspace_whose_upgrades_go_unfollowed_stops_making_them(
    make_bot, slack, model, engine, history
):
    """On a workspace whose threads are usually asked again within the hour, a quiet thread's
    mention and answer are upgraded (as above: a request within the hour 37 % likely). Where
    the workspace's last 60 upgrades after a first request were followed by no request within
    their hour, the odds move towards that (3 %) and the entry is left to expire."""
    if history == "unfollowed":
        past_calls(engine, slack.now, followed_after=None, n=60)
    bot, parent, answered = start_on_a_slow_workspace(make_bot, slack, model, engine)
    run_due(bot, slack, model, answered + 30 * 60)
    sent = pings(model)
    if history == "none":
        assert len(sent) == 1 and marks_of(sent[0]) == ["1h", "1h"]
    else:
        assert sent == [] and waiting_jobs(engine) == []
        assert [r for r in keepalive_rows(engine) if r.channel_id == "C1"] == []


def hourly_habits(engine, team: str = "T0001") -> None:
    """A workspace whose threads are nearly always asked again within the hour, rarely within
    5 minutes: 20 first requests, 2 followed within 5 minutes, 19 within the hour."""
    with sessionmaker(engine).begin() as s:
        for gap in [120] * 2 + [1500] * 17 + [3 * 3600]:
            data.note_habit(s, team, "first", gap)


@pytest.mark.parametrize("keeps", [True, False])
def test_a_whole_prefix_is_written_for_5_minutes_and_upgraded_not_for_an_hour(
    make_bot, slack, model, engine, database_url, keeps
):
    """A first request on a workspace whose threads are asked again within the hour: a 1-hour
    write costs 2 a token of the whole prefix. With keep-alive calls it writes 5 minutes
    (1.25) and counts on the upgrade 4.5 minutes later (0.1 a token of the prefix, 2 a token
    of the mention and the answer); a follow-up 30 minutes later reads it all. Without kept
    transcripts (no keep-alive calls) it writes for an hour itself."""
    hourly_habits(engine)
    if not keeps:
        with sessionmaker(engine).begin() as s:
            s.add(WorkspaceSettings(team_id=slack.team_id, keep_transcripts=False))
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    at(slack, model, slack.now)
    parent = slack.add_thread("C1", 120, text_fn=long_text)
    slack.advance(30)
    at(slack, model, slack.now)
    bot.mention("C1", "what did we decide?", thread_ts=parent)
    answered, first = slack.now, model.usages[-1]
    if not keeps:
        assert marks_of(model.requests[-1]) == ["1h"]
        assert first["cache_creation"]["ephemeral_1h_input_tokens"] > 0
        return
    assert marks_of(model.requests[-1]) == ["5m"]
    _, text = inspect(make_settings(slack, model, database_url), link_to("C1", parent))
    assert "5m and the keep-alive's upgrade to 1h" in text  # the option it compared
    run_due(bot, slack, model, answered + 10 * 60)
    sent = pings(model)
    assert len(sent) == 1 and marks_of(sent[0]) == ["1h", "1h"]
    used = model.usages[model.requests.index(sent[0])]
    assert used["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert used["cache_creation_input_tokens"] < first["cache_creation_input_tokens"] / 10

    follow_up_reads_it_all(bot, slack, model, parent, answered + 30 * 60, used)


def test_the_bot_leaving_a_channel_drops_its_waiting_keep_alive_calls(
    make_bot, slack, model, engine
):
    """A waiting keep-alive call holds its thread's prompt. When the bot leaves the channel
    (Slack sends `channel_left`), what it kept of the conversation is forgotten, and so are
    those calls: none is sent. Another channel's call still is."""
    bot, parent, answered = start(make_bot, slack, model)
    slack.add_channel("C2", "random", members={"U1", "U2"})
    other = slack.add_thread("C2", 40, text_fn=long_text)
    bot.deliver(slack.post_event("C2", long_text(99), user="U2", thread_ts=other))
    bot.mention("C2", "what did we decide?", thread_ts=other)
    assert sorted(j.lane.split(":")[1] for j in waiting_jobs(engine)) == ["C1", "C2"]

    left = {"type": "channel_left", "channel": "C1", "actor_id": "U1", "event_ts": parent}
    assert bot.event(left).status_code == 200
    assert [j.lane.split(":")[1] for j in waiting_jobs(engine)] == ["C2"]
    sent = len(pings(model))
    for minutes in (1, 2, 3):  # people still write in the other thread
        at(slack, model, answered + minutes * 60)
        bot.deliver(slack.post_event("C2", long_text(100 + minutes), user="U2", thread_ts=other))
    run_due(bot, slack, model, answered + 6 * 60)
    threads = {r.thread_ts for r in keepalive_rows(engine)}
    assert len(pings(model)) > sent and threads == {other}


def upgraded_quiet_thread(
    make_bot, slack, model, engine, messages: int = 40
) -> tuple[Bot, str, float, dict]:
    """A first answer on a quiet thread of `messages`, upgraded by its keep-alive 4.5 minutes
    later (a fresh workspace's start belief); the upgrade's usage."""
    bot, parent, answered = start(make_bot, slack, model, messages)
    run_due(bot, slack, model, answered + 10 * 60)
    (sent,) = pings(model)
    assert marks_of(sent) == ["1h", "1h"]
    only_a_renewal_waits(engine)
    return bot, parent, answered, model.usages[model.requests.index(sent)]


def test_an_upgrade_is_renewed_while_people_write_and_a_request_later_reads_it_all(
    make_bot, slack, model, engine
):
    """Shortly before an upgrade's hour ends, people wrote in the thread within the last 15
    minutes: the keep-alive reads the hour's entry again and writes what they wrote for an
    hour (a renewal, 0.1 a token of the prefix), and a request 110 minutes after the answer,
    which would have written the whole prefix again, reads it all."""
    bot, parent, answered, upgrade = upgraded_quiet_thread(make_bot, slack, model, engine)
    for minutes in (52, 58):
        at(slack, model, answered + minutes * 60)
        write(bot, slack, parent, 300 + minutes)
    run_due(bot, slack, model, answered + 100 * 60)
    sent = pings(model)
    assert len(sent) == 2 and marks_of(sent[1])[-1] == "1h"
    assert "Message 358" in sent[1]["body"]["messages"][0]["content"][-1]["text"]
    renewal = model.usages[model.requests.index(sent[1])]
    whole = upgrade["cache_read_input_tokens"] + upgrade["cache_creation_input_tokens"]
    assert renewal["cache_read_input_tokens"] == whole  # the upgrade's entry, read back
    assert renewal["cache_creation"]["ephemeral_1h_input_tokens"] > 0  # the new messages
    rows = keepalive_rows(engine)
    spent = rows[-1].created_at.timestamp() - rows[-2].created_at.timestamp()
    assert spent == pytest.approx(UPGRADE_TTL - LEAD, abs=0.01)
    follow_up_reads_it_all(bot, slack, model, parent, answered + 110 * 60, renewal)


def test_a_request_written_for_an_hour_is_renewed_too(make_bot, slack, model, engine):
    """A request that writes its tail for an hour (here 20 minutes after an upgrade) gets a
    renewal of its own: shortly before that hour ends, people having written in the last 15
    minutes, the keep-alive reads the entry back and writes what they wrote for an hour, and a
    request 100 minutes after that one reads it all."""
    bot, parent, answered, _ = upgraded_quiet_thread(make_bot, slack, model, engine)
    asked = answered + 20 * 60
    at(slack, model, asked)
    bot.mention("C1", "and now?", thread_ts=parent)
    assert marks_of(model.requests[-1])[-1] == "1h"
    written = model.usages[-1]
    renewal = renewed_while_people_write(bot, slack, model, parent, asked, 600)
    whole = written["cache_read_input_tokens"] + written["cache_creation_input_tokens"]
    assert renewal["cache_read_input_tokens"] == whole
    made = keepalive_rows(engine)[-1].created_at.replace(tzinfo=UTC).timestamp()
    assert made == pytest.approx(asked + UPGRADE_TTL - LEAD, abs=0.01)
    with sessionmaker(engine)() as s:  # an early renewal, not a read after a request
        record = track_record(s, "T0001", datetime.fromtimestamp(asked + 3 * 3600, UTC))
    assert record.early == (1, 0) and record.renewals == (0, 0)
    follow_up_reads_it_all(bot, slack, model, parent, asked + 100 * 60, renewal)


def test_no_renewal_when_nobody_wrote_lately(make_bot, slack, model, engine, caplog):
    """People wrote 20 minutes after the answer, then nothing: when the upgrade's hour ends
    nobody has written for over 15 minutes, so it is not renewed and the entry expires."""
    bot, parent, answered, _ = upgraded_quiet_thread(make_bot, slack, model, engine)
    at(slack, model, answered + 20 * 60)
    write(bot, slack, parent, 400)
    with caplog.at_level("INFO", logger="bot.keepalive"):
        run_due(bot, slack, model, answered + 4 * 3600)
    assert len(pings(model)) == 1 and waiting_jobs(engine) == []
    assert f"nobody wrote in the thread in the last {RECENT / 60:.0f} minutes" in caplog.text
    at(slack, model, answered + 110 * 60)
    bot.mention("C1", "anything new?", thread_ts=parent)
    assert model.usages[-1]["cache_read_input_tokens"] == 0  # expired


def renewals_paid(engine, now: float, n: int = 20) -> None:
    """A workspace whose renewals paid: `n` earlier threads (channel C9), each upgraded after
    its request, renewed an hour later, and asked again half an hour after the renewal."""
    with sessionmaker(engine).begin() as s:
        for i in range(n):
            asked = now - (i + 2) * 6 * 3600
            thread = f"{int(asked)}.000100"
            data.add_usage(s, row(thread, asked, "mention"))
            data.add_usage(s, row(thread, asked + 270, KIND, read=5000, written=300))
            data.add_usage(s, row(thread, asked + 3840, KIND, read=5300, written=200))
            data.add_usage(s, row(thread, asked + 3840 + 1800, "mention"))


def test_renewals_are_bounded(make_bot, slack, model, engine):
    """People write every 10 minutes for nine hours and nobody asks, in a workspace whose
    renewals have paid: the upgrade is renewed MAX_RENEWALS times, each just before the
    previous hour ends, then the keep-alive ends."""
    bot, parent, answered, _ = upgraded_quiet_thread(make_bot, slack, model, engine, 300)
    renewals_paid(engine, slack.now)
    for n in range(54):
        when = answered + (n + 1) * 600
        run_due(bot, slack, model, when)
        at(slack, model, when)
        write(bot, slack, parent, 500 + n)
    run_due(bot, slack, model, answered + 10 * 3600)
    assert len(pings(model)) == 1 + MAX_RENEWALS and waiting_jobs(engine) == []
    times = [r.created_at.timestamp() for r in keepalive_rows(engine) if r.channel_id == "C1"]
    spacing = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert spacing == pytest.approx([UPGRADE_TTL - LEAD] * MAX_RENEWALS, abs=0.01)


def test_a_declined_renewal_is_learnt_from_like_a_made_one(make_bot, slack, model, engine):
    """A workspace whose last 30 renewals went unfollowed declines the next one, but notes it:
    a request within that hour counts as a renewal that would have been followed, so the
    record recovers without renewals being made (a record of made renewals alone would stay
    where it fell for good)."""
    now = slack.now
    with sessionmaker(engine).begin() as s:
        for i in range(30):
            asked = now - (i + 2) * 6 * 3600
            thread = f"{int(asked)}.000100"
            data.add_usage(s, row(thread, asked, "mention"))
            data.add_usage(s, row(thread, asked + 3840, KIND, read=5300, written=200))
    bot, parent, answered, _ = upgraded_quiet_thread(make_bot, slack, model, engine)
    at(slack, model, answered + 55 * 60)
    write(bot, slack, parent, 400)
    run_due(bot, slack, model, answered + 70 * 60)
    assert len(pings(model)) == 1 and waiting_jobs(engine) == []  # declined
    with sessionmaker(engine)() as s:
        (noted,) = s.scalars(select(RenewalDeclined)).all()
    assert (noted.channel_id, noted.thread_ts, noted.early) == ("C1", parent, False)
    declined_at = noted.at.replace(tzinfo=UTC).timestamp()
    before = track_at(engine, declined_at + UPGRADE_TTL + 1)
    at(slack, model, declined_at + 1800)
    bot.mention("C1", "so what was decided?", thread_ts=parent)
    after = track_at(engine, declined_at + UPGRADE_TTL + 1)
    assert after.renewals == (before.renewals[0], before.renewals[1] + 1) == (31, 1)
    assert renewal_odds(after) > renewal_odds(before)


def track_at(engine, when: float):
    """The workspace's track record as the keep-alive would see it at `when`."""
    with sessionmaker(engine)() as s:
        return track_record(s, "T0001", datetime.fromtimestamp(when, UTC))


def test_a_renewal_that_kept_the_prefix_for_a_followed_one_counts_as_followed(engine, slack):
    """A chain of renewals bridges a long gap: the request comes in the third renewal's hour.
    Each renewal before it kept the entry for the next one, so the chain paid for all three
    (counted followed); a chain that no request ended paid for none."""
    now = slack.now
    with sessionmaker(engine).begin() as s:
        for i, asked_again in enumerate([True, False]):
            asked = now - (i + 1) * 12 * 3600
            thread = f"{int(asked)}.000100"
            data.add_usage(s, row(thread, asked, "mention"))
            data.add_usage(s, row(thread, asked + 270, KIND, read=5000, written=300))
            for k in range(1, 4):  # renewals, each shortly before the previous hour ends
                at = asked + 270 + k * (UPGRADE_TTL - LEAD)
                data.add_usage(s, row(thread, at, KIND, read=5300, written=200))
            if asked_again:
                data.add_usage(s, row(thread, at + 1800, "mention"))
    record = track_at(engine, now)
    assert record.renewals == (6, 3)
    assert record.upgrades == {"first": (2, 0)}  # a first upgrade counts its own hour only


def test_a_new_request_replaces_a_waiting_renewal(make_bot, slack, model, engine):
    """A request after an upgrade moves the thread's entry: the renewal waiting for the end of
    the upgrade's hour is dropped, and the new answer's keep-alive runs on time (a lane runs
    its jobs in order, so the renewal would have held it up for an hour)."""
    bot, parent, answered, _ = upgraded_quiet_thread(make_bot, slack, model, engine)
    at(slack, model, answered + 20 * 60)
    bot.mention("C1", "and now?", thread_ts=parent)
    assert marks_of(model.requests[-1])[-1] == "1h"  # it wrote on the hour's entry for an hour
    (job,) = waiting_jobs(engine)  # that entry's renewal, in place of the upgrade's
    assert json.loads(job.payload)["renewals"] == 0
    due = job.run_at.replace(tzinfo=UTC).timestamp()
    assert due == pytest.approx(answered + 20 * 60 + UPGRADE_TTL - LEAD, abs=1)
    at(slack, model, answered + 21 * 60)
    bot.mention("C1", "and the owner?", thread_ts=parent)
    assert marks_of(model.requests[-1])[-1] == "5m"  # a burst: a 5-minute tail on top
    (job,) = waiting_jobs(engine)
    assert "renewals" not in json.loads(job.payload)
    due = job.run_at.replace(tzinfo=UTC).timestamp()
    assert due == pytest.approx(answered + 21 * 60 + TTL - LEAD, abs=1)


def test_renewals_have_a_record_of_their_own(engine, slack):
    """A call more than an hour after the thread's last request is a renewal: it counts in
    the renewals' record (followed when a request came within its hour), not among the reads
    or the first upgrades. One between half an hour and an hour after it (the renewal of a
    1-hour entry the request wrote) is an early renewal, counted apart. With 30 unfollowed
    renewals the odds fall below what a renewal needs to pay."""
    now = slack.now
    with sessionmaker(engine).begin() as s:
        for i, followed in enumerate([True, False, False]):
            asked = now - (i + 1) * 6 * 3600
            thread = f"{int(asked)}.000100"
            data.add_usage(s, row(thread, asked, "mention"))
            data.add_usage(s, row(thread, asked + 270, KIND, read=5000, written=300))
            data.add_usage(s, row(thread, asked + 3840, KIND, read=5300, written=200))
            if followed:
                data.add_usage(s, row(thread, asked + 3840 + 1800, "mention"))
        asked = now - 30 * 3600  # a request that wrote for an hour, renewed, then followed
        thread = f"{int(asked)}.000100"
        data.add_usage(s, row(thread, asked, "mention"))
        data.add_usage(s, row(thread, asked + UPGRADE_TTL - LEAD, KIND, read=9000, written=100))
        data.add_usage(s, row(thread, asked + 100 * 60, "mention"))
    with sessionmaker(engine)() as s:
        record = track_record(s, "T0001", datetime.fromtimestamp(now, UTC))
    assert record.early == (1, 1)
    assert renewal_odds(record, early=True) == pytest.approx((1 + START_WEIGHT * START_RENEWED) / 6)
    assert record.renewals == (3, 1)
    assert record.upgrades == {"first": (3, 0)}  # the first upgrades: none followed in its hour
    assert record.reads[("first", 1)] == (3, 0)  # the renewals are not reads
    assert renewal_odds(record) == pytest.approx((1 + START_WEIGHT * START_RENEWED) / 8)
    unfollowed = replace(record, renewals=(30, 0))
    assert renewal_odds(unfollowed) < READ / (MISS - READ) < START_RENEWED


def test_declined_renewals_are_kept_only_as_long_as_they_are_learnt_from(
    make_bot, engine, caplog
):
    bot = make_bot()
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    with sessionmaker(engine).begin() as s:
        for days in (LEARN_DAYS + 1, LEARN_DAYS - 1):
            s.add(
                RenewalDeclined(
                    team_id="T0001", channel_id="C9", thread_ts=f"{days}.000100",
                    at=now - timedelta(days=days), early=False,
                )
            )
    with caplog.at_level("INFO", logger="bot.housekeeping"):
        run_housekeeping(sessionmaker(engine), bot.app.settings, now)
    with sessionmaker(engine)() as s:
        kept = [r.thread_ts for r in s.scalars(select(RenewalDeclined))]
    assert kept == [f"{LEARN_DAYS - 1}.000100"]
    assert "1 declined renewals removed" in caplog.text
