"""Reads of conversations under Slack's limits, at the wire: the fake Slack at the limited tier
(1 request a minute per method and workspace, 15 messages a page, 429 with Retry-After), the bot
on the fake's clock, so minutes pass without waiting."""

from __future__ import annotations

from typing import Any

from tests.harness import Bot


def words(i: int) -> str:
    return f"Note {i}: the rollout moves to Thursday; Dana owns checklist item {i}."


def drive(bot: Bot, slack: Any, rounds: int = 100) -> int:
    """Run deferred jobs to the end: move the clock to the next due job, wake the workers,
    wait until nothing runnable is left. Returns how many times the clock moved."""
    moves = 0
    for _ in range(rounds):
        assert bot.app.wait_idle(timeout=60)
        due = bot.app.queue.next_due()
        if due is None or bot.app.queue.counts().get("queued", 0) == 0:
            return moves
        slack.now = max(slack.now, due.timestamp())
        moves += 1
        bot.app.queue.wake()
    raise AssertionError("jobs still deferred after many rounds")


def allowed_reads(slack: Any, method: str = "conversations.replies") -> list[dict[str, Any]]:
    return [e for e in slack.read_log if e["method"] == method and not e["throttled"]]


def prompt_text(request: dict[str, Any]) -> str:
    content = request["body"]["messages"][0]["content"]
    return "\n".join(b.get("text", "") for b in content if isinstance(b, dict))


def test_a_thread_that_predates_the_bot_is_read_at_the_limit_with_an_estimate_shown(
    make_bot, slack, model
):
    slack.set_read_tier("limited")
    bot = make_bot(clock=slack.clock, sleep=slack.sleep, slack_read_tier="limited")
    parent = slack.add_thread("C1", 40, text_fn=words)  # 41 messages, 42 with the mention
    slack.advance(30)
    bot.mention("C1", "what did we decide?", thread_ts=parent)

    # First attempt: one page (15 messages), then the budget says wait a minute.
    assert len(allowed_reads(slack)) == 1
    waiting = [st for st in slack.statuses if "left" in (st.get("status") or "")]
    assert waiting, slack.statuses
    assert "minute" in waiting[0]["status"]  # how long, in words
    assert any("15" in m for m in waiting[0]["loading_messages"])  # how far
    # A long wait: an answer from what is kept so far, marked partial, comes first.
    posts = bot.posts_in("C1", parent)
    partial = [p for p in posts if "Partial answer" in p["text"]]
    assert len(partial) == 1 and "about 42" in partial[0]["text"]
    assert "Note 40" not in prompt_text(model.requests[-1])

    moves = drive(bot, slack)
    assert moves >= 2
    reads = allowed_reads(slack)
    # 42 messages and a partial answer: 14 new a page (Slack repeats the parent first on every
    # page), 3 pages, and nothing but the parent read twice.
    assert len(reads) == 3
    assert sum(e["returned"] for e in reads) - (len(reads) - 1) == 43
    assert slack.max_reads_per_window(slack.team_id, "conversations.replies") == 1
    assert not [e for e in slack.read_log if e["throttled"]]  # never refused: paced, not hit
    final = bot.posts_in("C1", parent)[-1]
    assert "Partial answer" not in final["text"]
    assert "Note 40" in prompt_text(model.requests[-1])  # the complete thread
    # Status refreshed while waiting (Slack drops it after two minutes): no lapse.
    assert slack.status_lapses == []


def test_the_limited_tier_is_learnt_from_a_page_cut_at_15(make_bot, slack, model, caplog):
    slack.set_read_tier("limited")
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)  # SLACK_READ_TIER=auto
    parent = slack.add_thread("C1", 29, text_fn=words)
    slack.advance(30)
    bot.mention("C1", "summarize", thread_ts=parent)
    first = slack.read_log[0]
    assert first["returned"] == 15  # asked for 200, Slack gave 15 and more remain
    drive(bot, slack)
    assert len(allowed_reads(slack)) == 3  # 31 messages: 15, then 14 new a page
    assert [e for e in slack.read_log if e["throttled"]] == []  # learnt before a 429
    assert any("pacing them at one a minute" in r.getMessage() for r in caplog.records)
    assert "Note 29" in prompt_text(model.requests[-1])


def test_a_429_is_honoured_and_teaches_the_tier(make_bot, slack, model):
    slack.set_read_tier("limited")
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    first = slack.add_thread("C1", 3, text_fn=words)
    second = slack.add_thread("C1", 3, text_fn=words)
    slack.advance(30)
    bot.mention("C1", "summarize", thread_ts=first)
    bot.mention("C1", "summarize", thread_ts=second)  # at Tier 3 pace: Slack says 429
    throttled = [e for e in slack.read_log if e["throttled"]]
    assert len(throttled) == 1
    drive(bot, slack)
    assert len(bot.posts_in("C1", second)) == 1  # answered once the minute passed
    assert len([e for e in slack.read_log if e["throttled"]]) == 1  # and no second 429
    assert slack.max_reads_per_window(slack.team_id, "conversations.replies") == 1


def test_two_processes_share_one_budget(make_bot, slack, model):
    slack.set_read_tier("limited")
    a = make_bot(clock=slack.clock, sleep=slack.sleep, slack_read_tier="limited")
    b = make_bot(clock=slack.clock, sleep=slack.sleep, slack_read_tier="limited")
    one = slack.add_thread("C1", 20, text_fn=words)
    two = slack.add_thread("C1", 20, text_fn=words)
    slack.advance(30)
    a.mention("C1", "summarize", thread_ts=one)
    b.mention("C1", "summarize", thread_ts=two)
    for _ in range(20):
        drive(a, slack)
        drive(b, slack)
        if a.app.queue.counts().get("queued", 0) == 0:
            break
    assert len(a.posts_in("C1", one)) >= 1 and len(b.posts_in("C1", two)) >= 1
    assert slack.max_reads_per_window(slack.team_id, "conversations.replies") == 1
    assert [e for e in slack.read_log if e["throttled"]] == []


def test_a_recap_waits_for_history_reads_and_says_how_long(make_bot, slack, model):
    slack.set_read_tier("limited")
    bot = make_bot(clock=slack.clock, sleep=slack.sleep, slack_read_tier="limited")
    for i in range(40):
        slack.add_message("C1", words(i), user="U2")
    slack.advance(60)
    from tests.harness import SlackUI

    ui = SlackUI(bot)
    _, url = ui.command("40")
    drive(bot, slack)
    texts = [r.get("text") or "" for r in ui.responses(url)]
    assert any("Reading the conversation from Slack" in t and "minute" in t for t in texts)
    history = allowed_reads(slack, "conversations.history")
    assert len(history) == 4  # 15 + 15 + 10, then what came since the first page
    assert slack.max_reads_per_window(slack.team_id, "conversations.history") == 1
    assert "Note 39" in prompt_text(model.requests[-1]) and "Note 0" in prompt_text(
        model.requests[-1]
    )
    assert len(ui.responses(url)) <= 5  # a response_url takes five messages


def keep_thread_by_events(bot: Bot, slack: Any, channel: str, n: int) -> str:
    """A thread whose parent and `n` replies all arrive as events while the bot is receiving."""
    parent_event = slack.post_event(channel, words(0), user="U1")
    bot.deliver(parent_event)
    parent = parent_event["ts"]
    for i in range(1, n + 1):
        slack.advance(1)
        bot.deliver(slack.post_event(channel, words(i), user="U2", thread_ts=parent))
    return parent


def test_a_500_message_thread_kept_from_events_is_answered_with_no_reads(make_bot, slack, model):
    slack.set_read_tier("limited")
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    bot.app.start_receiving()
    slack.advance(10)
    parent = keep_thread_by_events(bot, slack, "C1", 499)
    slack.advance(5)
    bot.mention("C1", "what did we decide?", thread_ts=parent)
    assert slack.read_log == []  # not one conversations.replies/history call
    text = prompt_text(model.requests[-1])
    assert "Note 0" in text and "Note 499" in text
    bot.mention("C1", "and who owns it?", thread_ts=parent)  # a follow-up: still none
    assert slack.read_log == []


def test_after_an_outage_only_threads_active_during_the_gap_are_read(
    make_bot, slack, model, database_url
):
    slack.set_read_tier("limited")
    first = make_bot(clock=slack.clock, sleep=slack.sleep)
    first.app.start_receiving()
    slack.advance(10)
    active = keep_thread_by_events(first, slack, "C1", 5)
    first.close()  # down: what is posted now reaches nobody
    slack.advance(600)
    slack.post_event("C1", "Note 77: posted while the bot was down", user="U3", thread_ts=active)
    slack.advance(600)
    second = make_bot(clock=slack.clock, sleep=slack.sleep)
    second.app.start_receiving()
    slack.advance(10)
    after = keep_thread_by_events(second, slack, "C1", 5)  # entirely after the gap
    slack.advance(5)
    second.mention("C1", "summarize", thread_ts=after)
    assert slack.read_log == []  # untouched by the gap: no read
    second.mention("C1", "summarize", thread_ts=active)
    reads = allowed_reads(slack)
    assert len(reads) == 1 and reads[0]["channel"] == "C1"  # the gap's window, once
    assert "Note 77" in prompt_text(model.requests[-1])
    second.mention("C1", "and then?", thread_ts=active)
    assert len(allowed_reads(slack)) == 1  # repaired: the follow-up reads nothing


def test_a_private_channel_kept_from_events_is_answered_with_no_reads(make_bot, slack, model):
    slack.set_read_tier("limited")
    slack.add_channel("G1", "secret-plans", is_private=True, members={"U1", "U2"})
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    bot.app.start_receiving()
    slack.advance(10)
    parent = keep_thread_by_events(bot, slack, "G1", 30)
    slack.advance(5)
    bot.mention("G1", "summarize", thread_ts=parent)
    assert slack.read_log == []
    assert "Note 30" in prompt_text(model.requests[-1])


def test_backfill_on_join_reads_recent_history_within_the_budget(make_bot, slack, model):
    slack.set_read_tier("limited")
    slack.add_channel("C2", "busy", members={"U1", "U2"}, bot_member=False)
    for i in range(40):
        slack.add_message("C2", words(i), user="U2")  # before the bot was there
    bot = make_bot(
        clock=slack.clock, sleep=slack.sleep, slack_read_tier="limited", backfill_messages=20
    )
    bot.app.start_receiving()
    slack.advance(60)
    bot.deliver(slack.member_joined_event("C2", "UBOT"))
    drive(bot, slack)
    history = allowed_reads(slack, "conversations.history")
    # 20 messages at 15 a page, then what came since the first page: it stops there (of 40).
    assert len(history) == 3
    assert sum(e["returned"] for e in history) < 40
    assert slack.max_reads_per_window(slack.team_id, "conversations.history") == 1
    from tests.harness import SlackUI

    before = len(slack.read_log)
    ui = SlackUI(bot)
    _, url = ui.command("20", channel="C2")
    drive(bot, slack)
    # The recap of those 20 messages reads only what came after the backfill (the open end).
    assert len(slack.read_log) - before <= 1
    assert "Note 39" in prompt_text(model.requests[-1]) and "Note 20" in prompt_text(
        model.requests[-1]
    )


def test_keeping_turned_off_reads_as_before(make_bot, slack, model, engine):
    from sqlalchemy.orm import sessionmaker

    from bot.store.models import WorkspaceSettings

    with sessionmaker(engine).begin() as s:
        s.add(WorkspaceSettings(team_id=slack.team_id, keep_transcripts=False))
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    bot.app.start_receiving()
    slack.advance(10)
    parent = keep_thread_by_events(bot, slack, "C1", 5)  # events arrive, nothing is kept
    slack.advance(5)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(allowed_reads(slack)) == 1  # read from Slack, as without events
    assert "Note 5" in prompt_text(model.requests[-1])


def test_another_organisations_message_read_from_slack_is_kept_as_a_stub_only(
    make_bot, slack, model, engine
):
    from sqlalchemy import select

    from bot.store.models import ThreadMessage

    slack.add_user("UEXT", "Partner Person", "partner")
    parent = slack.add_message("C1", "Parent: the partner contract", user="U1")
    slack.add_message(
        "C1", "SECRETPARTNERTEXT our floor price is 42", user="UEXT", thread_ts=parent,
        user_team="TOTHER",
    )
    slack.add_message("C1", "Reply: we sign on Friday", user="U2", thread_ts=parent)
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    slack.advance(30)
    bot.mention("C1", "summarize", thread_ts=parent)  # predates the bot: read from Slack
    assert len(allowed_reads(slack)) == 1
    with engine.connect() as conn:
        bodies = conn.execute(select(ThreadMessage.body)).scalars().all()
    assert len(bodies) >= 3 and not [b for b in bodies if "SECRET" in b or "UEXT" in b]
    text = prompt_text(model.requests[-1])
    assert "SECRETPARTNERTEXT" not in text and "we sign on Friday" in text


def test_a_read_waiting_for_the_budget_holds_no_worker(make_bot, slack, model):
    slack.set_read_tier("limited")
    bot = make_bot(
        clock=slack.clock, sleep=slack.sleep, slack_read_tier="limited", worker_threads=1
    )
    old = slack.add_thread("C1", 60, text_fn=words)  # before the bot: minutes of reads
    slack.advance(60)
    bot.app.start_receiving()
    slack.advance(10)
    kept = keep_thread_by_events(bot, slack, "C1", 10)
    slack.advance(5)
    bot.mention("C1", "summarize", thread_ts=old)  # reads one page, then waits
    assert bot.app.queue.next_due() is not None
    bot.mention("C1", "what did we decide?", thread_ts=kept)  # the one worker is free
    assert len(bot.posts_in("C1", kept)) == 1
    assert "Note 10" in prompt_text(model.requests[-1])
    # ... while the other still waits for its reads (nothing has seen its end yet).
    assert bot.app.queue.next_due() is not None
    assert not any("Note 60" in prompt_text(r) for r in model.requests)
    drive(bot, slack)
    assert "Note 60" in prompt_text(model.requests[-1])
