"""The mention path at the wire: signed events in, Slack and model fakes on loopback."""

from __future__ import annotations

import math
import threading

import pytest
from sqlalchemy import func, select

from bot.store.models import Job, ThreadState, UsageRecord


def long_text(i: int) -> str:
    return (
        f"Message {i}: we looked at the rollout plan again, the canary in eu-west looked "
        f"healthy, latency p99 stayed under 180 ms and nobody saw errors in batch {i}."
    )


def footer_of(post: dict) -> str:
    ctx = [b for b in post["blocks"] if b["type"] == "context"]
    assert len(ctx) == 1, post["blocks"]
    return ctx[0]["elements"][0]["text"]


def cached_blocks(body: dict) -> list[int]:
    blocks = body["messages"][0]["content"]
    return [i for i, b in enumerate(blocks) if "cache_control" in b]


def test_mention_answered_in_thread_with_footer(bot, slack, model, engine):
    parent = slack.add_thread("C1", 40, text_fn=long_text)
    ts, resp = bot.mention("C1", "what did we decide?", thread_ts=parent)
    assert resp.status_code == 200

    posts = bot.posts_in("C1", parent)
    assert len(posts) == 1
    footer = footer_of(posts[0])
    usage = model.usages[0]
    assert usage["cache_creation_input_tokens"] > 1024
    assert f"{usage['cache_creation_input_tokens']:,}" in footer
    assert "cached for follow-ups" in footer
    assert posts[0].get("_streamed")  # streamed as it was written; the footer came at the end
    assert posts[0]["text"].startswith("Fake reply")
    statuses = [s["status"] for s in slack.statuses]
    assert statuses[0] == "is reading the thread…" and statuses[1] == "is reading 41 messages…"

    body = model.requests[0]["body"]
    blocks = body["messages"][0]["content"]
    assert len(blocks) == 41 + 1  # parent + 40 replies, then the request
    assert cached_blocks(body) == [40]  # end of transcript; the request is after it
    assert blocks[-1]["text"] == "Request from alice: what did we decide?"
    assert "alice" in blocks[1]["text"] or "bob" in blocks[1]["text"]
    assert ts not in str(blocks[:-1])

    with engine.connect() as conn:
        row = conn.execute(select(UsageRecord)).one()
        state = conn.execute(select(ThreadState)).one()
    assert row.outcome == "ok" and row.kind == "mention" and row.user_id == "U1"
    assert row.cache_creation_tokens == usage["cache_creation_input_tokens"]
    assert row.cost_usd > 0 and row.savings_usd < 0  # a pure write costs a little more
    assert state.thread_ts == parent and state.cache_boundary_ts is not None
    assert state.messages_seen == 42


def test_follow_up_reads_earlier_prefix_from_cache(bot, slack, model):
    parent = slack.add_thread("C1", 40, text_fn=long_text)
    bot.mention("C1", "summarize", thread_ts=parent)
    for i in range(5):
        slack.add_message("C1", long_text(100 + i), user="U2", thread_ts=parent)
    bot.mention("C1", "and what is still open?", thread_ts=parent)

    first, second = model.usages
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] > 0  # the new messages, for the next one
    footer = footer_of(bot.posts_in("C1", parent)[-1])
    assert f"{second['cache_read_input_tokens']:,} of" in footer
    assert "from cache" in footer and "saved $" in footer
    # the earlier boundary and the new end are both breakpoints
    assert len(cached_blocks(model.requests[1]["body"])) == 2


def test_follow_up_after_25_new_messages_still_hits(bot, slack, model):
    parent = slack.add_thread("C1", 30, text_fn=long_text)
    bot.mention("C1", "summarize", thread_ts=parent)
    for i in range(25):
        slack.add_message("C1", long_text(200 + i), user="U3", thread_ts=parent)
    bot.mention("C1", "what changed since?", thread_ts=parent)
    first, second = model.usages
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    total = sum(
        second[k]
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    assert second["cache_read_input_tokens"] / total > 0.4


def test_ten_turn_thread_reads_most_of_the_prompt_from_cache(bot, slack, model):
    parent = slack.add_thread("C1", 60, text_fn=long_text)
    for turn in range(10):
        slack.add_message("C1", long_text(1000 + turn), user="U2", thread_ts=parent)
        bot.mention("C1", f"question {turn}?", thread_ts=parent)
    follow_ups = model.usages[1:]
    read = sum(u["cache_read_input_tokens"] for u in follow_ups)
    prompt = sum(
        u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        for u in follow_ups
    )
    assert read / prompt > 0.85
    assert len(bot.posts_in("C1", parent)) == 10


def test_top_level_mention_starts_a_thread_under_it(bot, slack, model):
    ts, _ = bot.mention("C1", "hello, what can you do?")
    posts = bot.posts_in("C1", ts)
    assert len(posts) == 1
    assert "under the 1,024-token minimum" in footer_of(posts[0])


def test_retried_event_is_answered_once(bot, slack, model, engine):
    parent = slack.add_thread("C1", 3)
    ts = slack.add_message("C1", "<@UBOT> summarize", user="U1", thread_ts=parent)
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> summarize",
        "ts": ts,
        "thread_ts": parent,
        "channel": "C1",
        "event_ts": ts,
    }
    assert bot.event(event, event_id="EvSAME").status_code == 200
    assert bot.event(event, event_id="EvSAME", retry_num=1).status_code == 200
    assert bot.event(event, event_id="EvSAME", retry_num=2).status_code == 200
    assert len(model.requests) == 1
    assert len(bot.posts_in("C1", parent)) == 1
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == 1


def test_bad_signature_is_rejected_and_nothing_stored(bot, slack, model, engine):
    parent = slack.add_thread("C1", 3)
    ts = slack.add_message("C1", "<@UBOT> hi", user="U1", thread_ts=parent)
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> hi",
        "ts": ts,
        "thread_ts": parent,
        "channel": "C1",
    }
    assert bot.event(event, secret="wrong-secret").status_code == 401
    assert bot.event(event, timestamp=1_000_000_000).status_code == 401  # stale
    assert model.requests == [] and bot.posts_in("C1", parent) == []
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == 0


def test_bot_messages_never_trigger_a_reply(bot, slack, model):
    parent = slack.add_thread("C1", 3)
    ts = slack.add_message("C1", "<@UBOT> loop?", user=None, bot_id="BOTHER", thread_ts=parent)
    event = {
        "type": "app_mention",
        "bot_id": "BOTHER",
        "text": "<@UBOT> loop?",
        "ts": ts,
        "thread_ts": parent,
        "channel": "C1",
    }
    assert bot.event(event).status_code == 200
    assert model.requests == []


def test_model_529_then_success(bot, slack, model):
    parent = slack.add_thread("C1", 5)
    model.enqueue(529, headers={"retry-after": "0"}, message="Overloaded")
    bot.mention("C1", "summarize", thread_ts=parent)
    assert [r["status"] for r in model.requests] == [529, 200]
    posts = bot.posts_in("C1", parent)
    assert len(posts) == 1 and "Sorry" not in posts[0]["text"]


def test_model_overloaded_after_retries_gives_one_clear_message(bot, slack, model, engine):
    parent = slack.add_thread("C1", 5)
    model.enqueue(529, headers={"retry-after": "0"}, times=10)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(model.requests) == 4  # 1 + ANTHROPIC_MAX_RETRIES (3)
    posts = bot.posts_in("C1", parent)
    assert len(posts) == 1 and "overloaded" in posts[0]["text"]
    with engine.connect() as conn:
        assert conn.scalar(select(UsageRecord.outcome)) == "overloaded"


def test_model_401_gives_clear_message_in_thread(bot, slack, model, engine, caplog):
    parent = slack.add_thread("C1", 5)
    model.enqueue(401, message="invalid x-api-key")
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(model.requests) == 1  # not retried
    posts = bot.posts_in("C1", parent)
    assert len(posts) == 1
    assert "ANTHROPIC_API_KEY" in posts[0]["text"] and "Traceback" not in posts[0]["text"]
    assert model.api_key not in caplog.text
    with engine.connect() as conn:
        assert conn.scalar(select(UsageRecord.outcome)) == "auth"


def test_openai_shaped_relay_error_is_understood(bot, slack, model):
    parent = slack.add_thread("C1", 5)
    model.enqueue(401, shape="openai", message="无效的令牌")
    bot.mention("C1", "summarize", thread_ts=parent)
    assert "ANTHROPIC_API_KEY" in bot.posts_in("C1", parent)[0]["text"]


def test_output_with_channel_ping_does_not_ping(bot, slack, model):
    parent = slack.add_thread("C1", 5)
    model.reply = "Heads up <!channel> and <!here|here> and @everyone, ask <!subteam^S1|@devs>."
    bot.mention("C1", "summarize", thread_ts=parent)
    post = bot.posts_in("C1", parent)[0]
    rendered = post["text"] + str(post["blocks"])
    for ping in ("<!channel>", "<!here", "<!everyone>", "<!subteam", "@everyone", "@here"):
        assert ping not in rendered


@pytest.mark.parametrize("stream", [True, False])
def test_long_answer_is_split_within_slack_limits(make_bot, slack, model, stream):
    bot = make_bot(max_output_tokens=16000, stream_answers=stream)
    parent = slack.add_thread("C1", 5)
    model.reply = "\n\n".join(f"Paragraph {i}: " + "word " * 150 for i in range(40))
    bot.mention("C1", "summarize", thread_ts=parent)
    posts = bot.posts_in("C1", parent)
    assert len(posts) >= 2
    assert len(posts[-1]["text"]) < 12_000
    for p in posts:
        if p.get("_streamed"):
            assert len(p["text"]) <= 10_000
            continue
        assert len(p["blocks"]) <= 50
        assert all(len(b["text"]["text"]) <= 3000 for b in p["blocks"] if b["type"] == "section")
    assert sum(1 for p in posts for b in (p["blocks"] or []) if b["type"] == "context") == 1
    assert any(b["type"] == "context" for b in posts[-1]["blocks"])  # the footer comes last


def test_thread_of_1500_messages_is_read_across_pages(bot, slack, model):
    parent = slack.add_thread("C1", 1500)
    bot.mention("C1", "summarize", thread_ts=parent)
    reads = slack.calls_to("conversations.replies")
    assert len(reads) == math.ceil(1502 / 200)
    blocks = model.requests[0]["body"]["messages"][0]["content"]
    assert len(blocks) == 1501 + 1
    assert len(bot.posts_in("C1", parent)) == 1


def test_pages_shorter_than_the_limit_are_still_followed(bot, slack, model):
    slack.page_shortfall = True
    parent = slack.add_thread("C1", 450)
    bot.mention("C1", "summarize", thread_ts=parent)
    blocks = model.requests[0]["body"]["messages"][0]["content"]
    assert len(blocks) == 451 + 1


def test_names_are_resolved_once(bot, slack, model):
    parent = slack.add_thread("C1", 20, users=["U1", "U2", "U3"])
    bot.mention("C1", "summarize", thread_ts=parent)
    first = len(slack.calls_to("users.info"))
    slack.add_message("C1", "one more from <@U2>", user="U3", thread_ts=parent)
    bot.mention("C1", "again", thread_ts=parent)
    assert len(slack.calls_to("users.info")) == first
    blocks = model.requests[1]["body"]["messages"][0]["content"]
    assert any("carol: one more from @bob" in b["text"] for b in blocks)


def test_earlier_answers_and_files_are_in_the_transcript(bot, slack, model):
    parent = slack.add_thread("C1", 3)
    slack.add_message(
        "C1",
        "see attached",
        user="U2",
        thread_ts=parent,
        files=[{"id": "F1", "name": "plan.pdf", "filetype": "pdf", "pretty_type": "PDF"}],
    )
    model.reply = "First answer."
    bot.mention("C1", "summarize", thread_ts=parent)
    model.reply = "Second answer."
    bot.mention("C1", "more?", thread_ts=parent)
    texts = [b["text"] for b in model.requests[1]["body"]["messages"][0]["content"]]
    assert any(t.endswith("You (assistant): First answer.") for t in texts), texts
    assert any("[file: plan.pdf (PDF)]" in t for t in texts)


def test_not_in_channel_gets_an_actionable_message(bot, slack, model):
    slack.add_channel("C2", "secret-project", members={"U1"}, bot_member=False)
    ts = slack.add_message("C2", "<@UBOT> summarize", user="U1")
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": "<@UBOT> summarize",
        "ts": ts,
        "channel": "C2",
        "event_ts": ts,
    }
    bot.event(event)
    assert model.requests == []
    told = [p for p in slack.posts if p["channel"].startswith("D") or p["channel"] == "U1"]
    assert len(told) == 1 and "/invite" in told[0]["text"]


def test_ack_does_not_wait_for_the_model(bot, slack, model):
    parent = slack.add_thread("C1", 5)
    model.gate = threading.Event()
    _, resp = bot.mention("C1", "summarize", thread_ts=parent, wait=False)
    # Slack got its 200 while the model has not answered anything yet
    assert resp.status_code == 200
    assert model.usages == [] and bot.posts_in("C1", parent) == []
    model.gate.set()
    bot.wait()
    assert len(bot.posts_in("C1", parent)) == 1


def test_edits_and_deletions_show_in_current_form(bot, slack, model):
    parent = slack.add_thread("C1", 4, text_fn=lambda i: f"original {i}")
    replies = [m["ts"] for m in slack.thread("C1", parent)[1:]]
    slack.edit_message("C1", replies[0], "edited text")
    slack.delete_message("C1", replies[1])
    bot.mention("C1", "summarize", thread_ts=parent)
    texts = " ".join(b["text"] for b in model.requests[0]["body"]["messages"][0]["content"])
    assert "edited text" in texts and "original 1" not in texts and "original 2" not in texts


def test_private_channel_member_bot_answers(bot, slack, model):
    slack.add_channel("G1", "private-team", is_private=True, members={"U1", "U2"})
    parent = slack.add_thread("G1", 5)
    bot.mention("G1", "summarize", thread_ts=parent)
    assert len(bot.posts_in("G1", parent)) == 1
