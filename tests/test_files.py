"""Files in threads (#19, first slice), at the wire: screenshots as image blocks read from cache
on follow-ups with no second download, snippets inline, other types named, and the sign-in page
Slack serves when the token lacks files:read."""

from __future__ import annotations

import json
import logging
import struct
import zlib

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.store.models import ThreadFile
from tests.harness import SlackUI
from tests.test_keep_events import NOW, Clock
from tests.test_summarize import NOW as SUMMARIZE_NOW


def png(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of `width` x `height` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    raw = (b"\x00" + b"\x00" * (3 * width)) * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


SCREENSHOT = png(1200, 900)  # 1,200 x 900 / 750 = 1,440 tokens, within what the model uses
IMAGE_TOKENS = 1440


def user_blocks(model, i: int) -> list[dict]:
    return model.requests[i]["body"]["messages"][0]["content"]


def bare(block: dict) -> dict:
    return {k: v for k, v in block.items() if k != "cache_control"}


def texts(model, i: int) -> list[str]:
    return [b["text"] for b in user_blocks(model, i) if b["type"] == "text"]


def thread_with(slack, files: list[dict]) -> str:
    parent = slack.add_thread("C1", 2)
    slack.add_message("C1", "this is what I get", user="U2", thread_ts=parent, files=files)
    return parent


def test_screenshot_is_an_image_block_and_a_follow_up_reads_it_from_cache(bot, slack, model):
    parent = thread_with(slack, [{"name": "error.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does the error in the screenshot say?", thread_ts=parent)
    blocks = user_blocks(model, 0)
    (i,) = [n for n, b in enumerate(blocks) if b["type"] == "image"]
    assert "[file: error.png (PNG)]" in blocks[i - 1]["text"]  # right after its message's line
    assert blocks[i]["source"]["media_type"] == "image/png"
    assert len(slack.downloads) == 1
    first = model.usages[0]
    assert first["input_tokens"] + first["cache_creation_input_tokens"] >= IMAGE_TOKENS

    bot.mention("C1", "and what should I do?", thread_ts=parent)
    assert len(slack.downloads) == 1  # the follow-up downloads nothing
    again = user_blocks(model, 1)
    assert [bare(b) for b in again if b["type"] == "image"] == [bare(blocks[i])]  # same bytes
    assert model.usages[1]["cache_read_input_tokens"] >= IMAGE_TOKENS
    assert model.usages[1]["input_tokens"] < IMAGE_TOKENS


def test_a_snippet_is_inline_and_other_types_are_named(bot, slack, model):
    trace = b"Traceback (most recent call last):\n  File \"app.py\", line 3\nKeyError: 'user'\n"
    parent = thread_with(
        slack,
        [
            {"name": "trace.txt", "content": trace, "mode": "snippet", "filetype": "text"},
            {"name": "build.zip", "content": b"PK\x03\x04rest", "pretty_type": "Zip"},
        ],
    )
    bot.mention("C1", "why does it fail?", thread_ts=parent)
    found = texts(model, 0)
    inline = [t for t in found if t.startswith("[contents of trace.txt]\nTraceback")]
    assert len(inline) == 1 and "KeyError: 'user'" in inline[0]
    assert any("[file: build.zip (Zip)]" in t for t in found)
    assert not any("contents of build.zip" in t for t in found)
    assert len(slack.downloads) == 1  # the zip is only named, never downloaded


def test_without_files_read_the_answer_says_why_and_the_operator_is_told_once(
    bot, slack, model, engine, caplog
):
    slack.files_read = False
    parent = thread_with(slack, [{"name": "error.png", "content": SCREENSHOT}])
    with caplog.at_level(logging.WARNING, logger="bot.files"):
        bot.mention("C1", "what does the screenshot say?", thread_ts=parent)
        bot.mention("C1", "and now?", thread_ts=parent)
    assert not any(b["type"] == "image" for b in user_blocks(model, 0))
    assert any("error.png could not be read" in t and "files:read" in t for t in texts(model, 0))
    answer = json.dumps(bot.posts_in("C1", parent)[-1])  # a streamed answer's note: its blocks
    assert "error.png (the app may not read files here" in answer and "files:read" in answer
    told = [r for r in caplog.records if "files:read" in r.getMessage()]
    assert len(told) == 1 and "xoxb" not in told[0].getMessage()
    with sessionmaker(engine)() as s:
        assert s.scalars(select(ThreadFile)).all() == []  # nothing kept: read once allowed

    slack.files_read = True  # the app reinstalled with the scope
    bot.mention("C1", "try again", thread_ts=parent)
    assert any(b["type"] == "image" for b in user_blocks(model, 2))


def test_uninstalling_leaves_no_file_bytes(bot, slack, model, engine):
    parent = thread_with(slack, [{"name": "error.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does it say?", thread_ts=parent)
    with sessionmaker(engine)() as s:
        assert len(s.scalars(select(ThreadFile)).all()) == 1
    assert bot.event({"type": "app_uninstalled"}).status_code == 200
    with sessionmaker(engine)() as s:
        assert s.scalars(select(ThreadFile)).all() == []


def test_a_screenshot_kept_from_events_reads_like_one_read_from_slack(make_bot, slack, model):
    slack.now = model.now = NOW  # messages dated after the bot began receiving events
    bot = make_bot(clock=Clock())
    read = thread_with(slack, [{"name": "error.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does it say?", thread_ts=read)
    parent_event = slack.post_event("C1", "parent message")
    bot.deliver(parent_event)
    events = [
        slack.post_event("C1", "reply 1", user="U2", thread_ts=parent_event["ts"]),
        slack.post_event("C1", "reply 2", thread_ts=parent_event["ts"]),
        slack.post_event(
            "C1",
            "this is what I get",
            user="U2",
            thread_ts=parent_event["ts"],
            files=[{"name": "error.png", "content": SCREENSHOT}],
        ),
    ]
    for event in events:
        bot.deliver(event)
    reads = len(slack.calls_to("conversations.replies"))
    bot.mention("C1", "what does it say?", thread_ts=parent_event["ts"])
    assert len(slack.calls_to("conversations.replies")) == reads  # the thread as kept

    def file_turn(i: int) -> list[dict]:  # the file's message line and its image, bare
        blocks = [bare(b) for b in user_blocks(model, i)]
        (at,) = [n for n, b in enumerate(blocks) if b["type"] == "image"]
        line = blocks[at - 1]["text"].split("] ", 1)[1]  # without its time
        return [line, blocks[at]]

    assert file_turn(1) == file_turn(0)
    assert len(slack.downloads) == 2  # one per file


def test_a_channel_recap_names_files_and_downloads_none(make_bot, slack, model):
    slack.now = SUMMARIZE_NOW - 5 * 3600
    ui = SlackUI(make_bot(clock=lambda: SUMMARIZE_NOW))
    slack.add_message(
        "C1", "the dashboard", user="U1", files=[{"name": "a.png", "content": SCREENSHOT}]
    )
    ui.command("5")
    assert any("[file: a.png (PNG)]" in t for t in texts(model, 0))
    assert not any(b["type"] == "image" for b in user_blocks(model, 0))
    assert slack.downloads == []
