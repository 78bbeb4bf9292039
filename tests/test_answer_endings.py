"""How an answer ends: the model's stop reasons, the status line, and streams that Slack closes,
refuses, rate-limits or the requester stops. At the wire, with the fakes' clocks (no sleeps)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.formatting import build_markdown_messages, build_messages
from bot.store.models import Summary, UsageRecord
from tests.harness import SlackUI

NOW = 1_800_000_000.0
CUT = "cut off at the length limit"


def words(i: int) -> str:
    return f"Item {i}: the vendor contract renewal needs legal review before Friday, says Dana."


def long_reply(n: int = 150) -> str:
    return " ".join(f"Sentence {i} of a long answer about the rollout." for i in range(n))


def ledger(engine) -> list[UsageRecord]:
    with engine.connect() as conn:
        return list(conn.execute(select(UsageRecord).order_by(UsageRecord.id)).all())


def sections(message: dict) -> list[str]:
    return [b["text"]["text"] for b in message["blocks"] or [] if b["type"] == "section"]


# -- 2. stop reasons ----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_answer_cut_at_max_tokens_says_so_at_its_end(make_bot, slack, model, engine, stream):
    bot = make_bot(stream_answers=stream)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = "The rollout has three phases. First, the canary in eu-west; then"
    model.enqueue_stop("max_tokens")
    bot.mention("C1", "summarize", thread_ts=parent)
    last = bot.posts_in("C1", parent)[-1]
    assert bool(last.get("_streamed")) == stream
    kinds = [b["type"] for b in last["blocks"]]
    assert kinds[-3:] == ["section", "context", "context_actions"]  # note, footer, 👍/👎
    note = last["blocks"][-3]["text"]["text"]
    assert CUT in note and "Ask me for the rest" in note
    assert CUT in last["text"] or stream  # a post's plain-text fallback has it too
    (row,) = ledger(engine)
    assert row.stop_reason == "max_tokens" and row.outcome == "ok"


def test_cut_answer_in_an_edited_placeholder_ends_with_the_note(bot, slack, model):
    slack.streaming_enabled = False
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(40)
    model.enqueue_stop("max_tokens")
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(bot.posts_in("C1", parent)) == 1  # the placeholder, edited into the answer
    final = slack.updates[-1]
    assert CUT in final["blocks"][-3]["text"]["text"] and CUT in final["text"]


def test_refusal_midway_keeps_what_came_and_says_why(bot, slack, model, engine):
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(30)
    model.enqueue_stop("refusal", after_chars=400, explanation="This request was declined.")
    bot.mention("C1", "summarize", thread_ts=parent)
    last = bot.posts_in("C1", parent)[-1]
    note = last["blocks"][-3]["text"]["text"]
    assert "declined to continue" in note and "This request was declined" in note
    assert "Sentence 0 " in last["text"] and "Sentence 29" not in last["text"]
    assert ledger(engine)[0].stop_reason == "refusal"


def test_refusal_with_nothing_written_is_just_the_note(make_bot, slack, model, engine):
    bot = make_bot(stream_answers=False)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.enqueue_stop("refusal", after_chars=0)
    bot.mention("C1", "summarize", thread_ts=parent)
    (post,) = bot.posts_in("C1", parent)
    assert "empty answer" not in post["text"]
    assert "declined to continue this answer. Try rephrasing" in sections(post)[0]


@pytest.mark.parametrize("stream", [True, False])
def test_paused_turn_tells_the_reader_to_ask_again(make_bot, slack, model, engine, stream):
    bot = make_bot(stream_answers=stream)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.enqueue_stop("pause_turn")
    bot.mention("C1", "summarize", thread_ts=parent)
    last = bot.posts_in("C1", parent)[-1]
    assert "paused before finishing" in last["blocks"][-3]["text"]["text"]
    assert ledger(engine)[0].stop_reason == "pause_turn"


def test_cut_summary_says_so_privately_and_when_shared(make_bot, slack, model, engine):
    slack.now = NOW - 3600
    ui = SlackUI(make_bot(clock=lambda: NOW))
    parent = slack.add_thread("C1", 4, text_fn=words)
    model.reply = "Ship on Thursday; Carol owns the rollback, and"
    model.enqueue_stop("max_tokens")
    _, url = ui.command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    shown = ui.responses(url)[-1]
    assert any(CUT in text for text in sections(shown))
    value = next(b for b in shown["blocks"] if b["type"] == "actions")["elements"][0]["value"]
    ui.click(value)
    (shared,) = ui.bot.posts_in("C1", parent)
    assert CUT in sections(shared)[-1]
    assert [b["type"] for b in shared["blocks"][-2:]] == ["context", "context_actions"]
    with engine.connect() as conn:
        assert CUT in conn.scalar(select(Summary.note))
    assert ledger(engine)[0].stop_reason == "max_tokens"


@pytest.mark.parametrize("build", [build_messages, build_markdown_messages])
def test_note_survives_an_open_code_fence_and_trimming(build):
    cut_in_code = "Run this:\n\n```bash\nkubectl rollout status deploy/billing"
    last = build(cut_in_code, "⚡ f", note="Cut here.")[-1]
    assert last.blocks[-2] == {"type": "section", "text": {"type": "mrkdwn", "text": "_Cut here._"}}
    assert "```" not in last.blocks[-2]["text"]["text"]
    huge = "\n\n".join(f"Paragraph {i}: " + "word " * 400 for i in range(200))
    trimmed = build(huge, "⚡ f", note="Cut <here> & now.", limit=1)
    assert len(trimmed) == 1
    assert trimmed[0].blocks[-2]["text"]["text"] == "_Cut &lt;here&gt; &amp; now._"
    assert len(trimmed[0].blocks) <= 49  # room left for a caller's button


# -- 6. the status line ----------------------------------------------------------------------


def test_failed_status_does_not_turn_streaming_off(bot, slack, model):
    slack.fail_next("assistant.threads.setStatus", "internal_error", times=1)
    parent = slack.add_thread("C1", 30, text_fn=words)
    model.reply = long_reply(40)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(slack.streams) == 1 and slack.updates == []
    (post,) = bot.posts_in("C1", parent)
    assert post.get("_streamed") and "Sentence 39" in post["text"]
    assert len(slack.statuses) >= 1  # a passing failure: the next status went through


@pytest.mark.parametrize("stream", [True, False])
def test_status_is_kept_alive_through_a_long_read(make_bot, slack, model, stream):
    slack.seconds_per_call = 30  # every Slack call takes half a minute: an 8-page read is 4 min
    bot = make_bot(clock=lambda: slack.now, stream_answers=stream)  # the same whether streamed
    parent = slack.add_thread("C1", 1500)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(slack.calls_to("conversations.replies")) >= 8
    assert slack.status_lapses == []  # never gone for two minutes before the answer came
    for status in slack.statuses:
        loading = status.get("loading_messages") or []
        assert 1 <= len(loading) <= 10 and all(len(m) <= 50 for m in loading), status
    assert slack.statuses[0]["loading_messages"][0] == "Reading the thread…"


@pytest.mark.parametrize("stream", [True, False])
def test_status_is_kept_alive_between_the_calls_of_a_long_compaction(
    make_bot, slack, model, engine, stream
):
    bot = make_bot(clock=lambda: slack.now, stream_answers=stream, context_budget_tokens=8000)
    parent = slack.add_thread("C1", 1200, text_fn=words)

    def a_minute_each(body: dict) -> str:
        slack.now += 60  # every model call takes a minute
        return "The summary so far: Dana wants legal review of the vendor contract."

    model.reply = a_minute_each
    bot.mention("C1", "summarize", thread_ts=parent)
    kinds = [r.kind for r in ledger(engine)]
    assert kinds.count("compact") >= 3 and kinds[-1] == "mention"  # several calls in a row
    assert slack.status_lapses == []  # the status line stayed up between them
    shown = [st["status"] for st in slack.statuses if st["status"]]
    assert len(shown) >= 3  # reading, writing, and again while the summary was being made
    assert "Dana wants legal review" in bot.posts_in("C1", parent)[-1]["text"]


def test_permanently_refused_status_is_not_asked_again(bot, slack, model):
    slack.fail_next("assistant.threads.setStatus", "missing_scope")
    parent = slack.add_thread("C1", 5, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent)
    bot.mention("C1", "and the owners?", thread_ts=parent)
    assert len(slack.calls_to("assistant.threads.setStatus")) == 1
    assert len(slack.streams) == 2  # both answers streamed all the same


def test_progress_shows_in_the_placeholder_where_nothing_else_can(bot, slack, model):
    slack.fail_next("assistant.threads.setStatus", "not_allowed_token_type", times=5)
    slack.streaming_enabled = False
    parent = slack.add_thread("C1", 10, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent)  # learns: no streams, no status here
    bot.mention("C1", "and the owners?", thread_ts=parent)
    second = bot.posts_in("C1", parent)[1]
    assert second["text"].startswith("_Is reading")
    assert "Fake reply" in slack.updates[-1]["text"]
    assert len(slack.calls_to("chat.startStream")) == 1
    assert len(slack.calls_to("assistant.threads.setStatus")) == 1


# -- 7. streams Slack closes, refuses or rate-limits; the stop button ---------------------------


def test_long_stream_continues_in_a_new_one_before_slack_closes_it(make_bot, slack, model):
    slack.seconds_per_call = 20  # the model writes slowly: 20 s between appends
    model.delta_chars = 200
    bot = make_bot(clock=lambda: slack.now)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply()
    bot.mention("C1", "summarize", thread_ts=parent)
    streams = list(slack.streams.values())
    assert len(streams) >= 2
    assert all(s["state"] == "stopped" for s in streams)  # none left for Slack to close
    assert all(s["appends"] * 20 < slack.stream_lifetime for s in streams)
    assert "".join(s["text"] for s in streams).split() == model.reply.split()
    for s in streams[:-1]:
        assert "continued in the next message" in s["blocks"][-1]["text"]["text"]
    # the footer and the 👍/👎, once, at the end
    assert [b["type"] for b in streams[-1]["blocks"][-2:]] == ["context", "context_actions"]
    assert not [p for p in bot.posts_in("C1", parent) if not p.get("_streamed")]


def test_stream_closed_by_slack_is_finished_and_the_answer_continues(make_bot, slack, model):
    slack.stream_lifetime = 60  # Slack closes streams sooner than the bot expects
    slack.seconds_per_call = 20
    model.delta_chars = 200
    bot = make_bot(clock=lambda: slack.now)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(60)
    bot.mention("C1", "summarize", thread_ts=parent)
    streams = list(slack.streams.items())
    closed = [ts for ts, s in streams if s["state"] == "expired"]
    assert closed
    edited = {u["ts"]: u for u in slack.updates}
    *earlier, (last_ts, last) = streams
    for ts, _ in earlier:  # each message ends saying that more follows
        shown = edited[ts]["text"] if ts in closed else slack.streams[ts]["blocks"][-1]["text"]
        assert "continued in the next message" in str(shown)
    end = edited[last_ts] if last_ts in closed else last
    assert "Sentence 59" in end["text"] and end["blocks"][-2]["type"] == "context"
    assert "".join(s["text"] for _, s in streams).split() == model.reply.split()  # all of it


def test_pressing_stop_ends_the_answer_and_is_recorded(bot, slack, model, engine):
    slack.stop_after_appends = 1
    model.delta_chars = 200
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(60)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(slack.calls_to("chat.appendStream")) == 2  # the one after stop was refused
    assert slack.calls_to("chat.stopStream") == [] and slack.calls_to("chat.postMessage") == []
    assert bot.posts_in("C1", parent) == []
    (row,) = ledger(engine)
    assert row.stopped_by_user and row.outcome == "ok"
    # The bot stopped reading the model's stream there (closing it stops the generation): it
    # never saw the model's own end, and records the output so far, not the whole answer's.
    assert row.stop_reason is None
    assert 0 < row.output_tokens < model.usages[-1]["output_tokens"]
    assert row.input_tokens == model.usages[-1]["input_tokens"]


def test_stop_pressed_as_a_broken_stream_ends_is_recorded(bot, slack, model, engine):
    slack.stop_after_appends = 1  # the requester presses stop as the last of the text goes out
    model.delta_chars = 100
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = "First part of the answer is fine. " * 20 + "Second part never arrives."
    model.enqueue_stream_error("overloaded_error", after_chars=300)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert slack.calls_to("chat.postMessage") == []  # nothing more after the stop
    (row,) = ledger(engine)
    assert row.outcome == "overloaded" and row.stopped_by_user


def test_stream_refusal_is_remembered_for_that_kind_of_conversation(bot, slack, model):
    slack.streaming_enabled = False  # chat.startStream: channel_type_not_supported
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(20)
    bot.mention("C1", "summarize", thread_ts=parent)
    bot.mention("C1", "and the owners?", thread_ts=parent)
    assert len(slack.calls_to("chat.startStream")) == 1
    assert "Sentence 19" in slack.updates[-1]["text"]  # the second answer, edited in place


def test_rate_limited_stream_start_does_not_hold_up_the_answer(make_bot, slack, model):
    bot = make_bot(clock=lambda: NOW)  # Slack's Retry-After never passes on this clock
    slack.fail_next("chat.startStream", status=429, retry_after=5)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(20)
    bot.mention("C1", "summarize", thread_ts=parent)
    assert len(slack.calls_to("chat.startStream")) == 1  # not retried while the model wrote
    (post,) = bot.posts_in("C1", parent)
    assert not post.get("_streamed") and "Sentence 19" in post["text"]


def test_rate_limited_stream_stop_does_not_hold_up_the_answer(make_bot, slack, model):
    slack.seconds_per_call = 10
    model.delta_chars = 200
    bot = make_bot(clock=lambda: slack.now)
    slack.fail_next("chat.stopStream", status=429, retry_after=10)  # the first rotation
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply()
    bot.mention("C1", "summarize", thread_ts=parent)
    methods = [m for m, _ in slack.calls if m.startswith("chat.")]
    first_stop = methods.index("chat.stopStream")
    assert methods[first_stop + 1] == "chat.appendStream"  # kept streaming; no wait, no retry
    streams = list(slack.streams.values())
    assert len(streams) >= 2 and all(s["state"] == "stopped" for s in streams)
    assert "".join(s["text"] for s in streams).split() == model.reply.split()


def test_full_stream_that_cannot_be_rotated_yet_still_delivers_the_rest(make_bot, slack, model):
    bot = make_bot(clock=lambda: NOW, max_output_tokens=16000)  # Retry-After never passes
    slack.fail_next("chat.stopStream", status=429, retry_after=30)
    parent = slack.add_thread("C1", 5, text_fn=words)
    model.reply = long_reply(260)  # over 10,000 characters: more than one stream may hold
    bot.mention("C1", "summarize", thread_ts=parent)
    (stream,) = slack.streams.values()
    assert stream["state"] == "stopped" and len(stream["text"]) <= 10_000
    assert "continued in the next message" in stream["blocks"][-1]["text"]["text"]
    rest = [p for p in bot.posts_in("C1", parent) if not p.get("_streamed")]
    assert rest and "Sentence 259 of" in rest[-1]["text"]
    assert rest[-1]["blocks"][-2]["type"] == "context"  # the footer, then the 👍/👎
