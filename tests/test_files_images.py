"""Images in threads at the wire (#19): scaled to what the model uses before they are kept (the
fake Messages API counts the scaled tokens), the same bytes on every follow-up, damaged files and
decompression bombs named, the per-request limits kept by leaving the oldest images out (the fake
refuses what the API refuses), and compaction folding older images into its summary as text."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import random
import struct
import threading
import zlib

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.compaction import COMPACT_SYSTEM
from bot.prompt import MAX_IMAGE_DATA, MAX_IMAGES, build_request, fit_images
from bot.store.models import ThreadFile
from bot.transcript import ImagePart, Turn
from tests.fakes.messages_api import MAX_MEDIA, MAX_REQUEST_BYTES, count_tokens
from tests.harness import make_settings
from tests.pdfs import pdf
from tests.test_doctor import inspect, link_to
from tests.test_fake_messages_api import MODEL, post
from tests.test_files import bare, png, texts, thread_with, user_blocks


def encoded(size: tuple[int, int], fmt: str = "PNG", color: object = (200, 30, 30), **kw) -> bytes:
    """An image of `size` in `fmt`, made with Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def noise_png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A PNG of random pixels (incompressible: 3 or 4 bytes a pixel)."""
    buf = io.BytesIO()
    raw = os.urandom(width * height * len(mode))
    Image.frombytes(mode, (width, height), raw).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def images_of(model, i: int) -> list[dict]:
    return [b for b in user_blocks(model, i) if b["type"] == "image"]


def decoded(block: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(block["source"]["data"])))


def image_tokens_counted(model, i: int) -> int:
    """What the fake counted for the images of request `i`: its prompt less its text."""
    body, usage = model.requests[i]["body"], model.usages[i]
    total = sum(usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                   "cache_read_input_tokens"))
    text = count_tokens(body["system"]) + sum(
        count_tokens(b["text"]) for m in body["messages"] for b in m["content"]
        if b["type"] == "text"
    )
    return total - text


def test_a_large_screenshot_is_scaled_once_and_a_follow_up_sends_the_same_bytes(
    bot, slack, model, engine
):
    parent = thread_with(slack, [{"name": "screen.png", "content": png(3000, 2000)}])
    bot.mention("C1", "what does the screenshot show?", thread_ts=parent)
    (block,) = images_of(model, 0)
    sent = decoded(block)
    # 1,568 px on the long edge would still be 1.64 megapixels: the area cap (1.15 MP) decides
    assert sent.format == "PNG" and sent.size == (1313, 875)
    assert image_tokens_counted(model, 0) == math.ceil(1313 * 875 / 750) == 1532
    with sessionmaker(engine)() as s:
        (row,) = s.scalars(select(ThreadFile)).all()
        assert (row.width, row.height) == (1313, 875)  # the scaled bytes are what is kept
        assert base64.b64encode(row.content).decode() == block["source"]["data"]

    bot.mention("C1", "and the button on the left?", thread_ts=parent)
    assert len(slack.downloads) == 1
    assert [bare(b) for b in images_of(model, 1)] == [bare(block)]  # byte-identical
    assert model.usages[1]["cache_read_input_tokens"] >= 1532
    assert model.usages[1]["input_tokens"] < 1532


def test_formats_are_kept_and_animations_become_their_first_frame(bot, slack, model):
    frames = [Image.new("RGB", (600, 400), c) for c in ((0, 0, 255), (255, 0, 0))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    rotated = io.BytesIO()  # a phone photo stored landscape, shown portrait (EXIF orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (4000, 3000), (10, 120, 10)).save(rotated, "JPEG", exif=exif.tobytes())
    files = [
        {"name": "photo.jpg", "content": rotated.getvalue()},
        {"name": "spinner.gif", "content": gif.getvalue()},
        {"name": "chart.webp", "content": encoded((2400, 1200), "WEBP"), "mimetype": "image/webp"},
        {"name": "small.gif", "content": encoded((300, 200), "GIF")},
    ]
    parent = thread_with(slack, files)
    bot.mention("C1", "what are these?", thread_ts=parent)
    photo, spinner, chart, small = images_of(model, 0)
    assert photo["source"]["media_type"] == "image/jpeg"
    assert decoded(photo).size == (928, 1238)  # turned upright, then 1.15 megapixels
    assert spinner["source"]["media_type"] == "image/png"  # the first frame, blue
    assert decoded(spinner).convert("RGB").getpixel((10, 10)) == (0, 0, 255)
    assert chart["source"]["media_type"] == "image/webp" and decoded(chart).size == (1516, 758)
    assert small["source"]["media_type"] == "image/gif"  # within every limit: the original bytes
    assert base64.b64decode(small["source"]["data"]) == files[3]["content"]


def test_an_image_over_5_mb_is_scaled_down_until_it_fits(bot, slack, model):
    big = noise_png(1050, 1050, "RGBA")  # within 1.15 MP, but 4.4 MB: 5.9 MB as base64
    assert len(base64.b64encode(big)) > 5 * 1024 * 1024
    parent = thread_with(slack, [{"name": "noise.png", "content": big}])
    bot.mention("C1", "what is it?", thread_ts=parent)
    (block,) = images_of(model, 0)
    assert len(block["source"]["data"]) <= 5 * 1024 * 1024
    assert decoded(block).size == (840, 840)  # one step of 0.8
    assert model.requests[0]["status"] == 200


def _bomb(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1) * 4))
        + chunk(b"IEND", b"")
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets filters
def test_damaged_images_and_bombs_are_named_and_the_answer_still_comes(bot, slack, model):
    good = png(400, 300)
    files = [
        {"name": "cut.png", "content": good[: len(good) // 2]},
        {"name": "bomb.png", "content": _bomb(9000, 8000)},  # 72 megapixels
        {"name": "huge.png", "content": _bomb(20000, 20000)},  # 400: Pillow refuses it
        {"name": "fake.png", "content": b"this is no image at all"},
        {"name": "fine.png", "content": good},
    ]
    parent = thread_with(slack, files)
    bot.mention("C1", "what do they show?", thread_ts=parent)
    assert model.requests[0]["status"] == 200
    assert len(images_of(model, 0)) == 1  # fine.png
    found = "\n".join(texts(model, 0))
    assert "[cut.png could not be read: the image is damaged" in found
    assert "[bomb.png could not be read: 9000×8000 pixels, more than the bot decodes" in found
    assert "[huge.png could not be read: more pixels than the bot decodes (50 megapixels)]" in found
    assert "[fake.png could not be read: not a PNG, JPEG, GIF or WebP image]" in found
    answer = json.dumps(bot.posts_in("C1", parent)[-1])
    assert "Some files could not be read" in answer and "bomb.png" in answer


def _images_thread(slack, count: int, per_message: int = 10) -> str:
    parent = slack.add_thread("C1", 1)
    for start in range(0, count, per_message):
        _add_images(slack, parent, range(start, min(count, start + per_message)))
    return parent


def _add_images(slack, parent: str, numbers: range) -> None:
    files = [
        {"name": f"img{n:03d}.png", "content": encoded((64, 48), color=(n, 255 - n, n // 2))}
        for n in numbers
    ]
    slack.add_message("C1", "screens", user="U2", thread_ts=parent, files=files)


def left_out(model, i: int) -> list[str]:
    found = [t for t in texts(model, i) if t.startswith("[image left out: ")]
    return [t.split(": ", 1)[1].split(" — ", 1)[0] for t in found]


def test_too_many_images_leave_the_oldest_out_with_a_note_and_the_choice_holds(
    bot, slack, model
):
    parent = _images_thread(slack, 105)  # more than the API takes (100)
    bot.mention("C1", "compare the screens", thread_ts=parent)
    assert model.requests[0]["status"] == 200
    assert len(images_of(model, 0)) == 45  # 55 must go: whole pages of 10, oldest first
    assert left_out(model, 0) == [f"img{n:03d}.png" for n in range(60)]
    answer = json.dumps(bot.posts_in("C1", parent)[-1])
    assert "60 older images of this thread went to the model only by name" in answer

    _add_images(slack, parent, range(105, 106))  # one more: still within the 60 left out
    bot.mention("C1", "and the new one?", thread_ts=parent)
    assert left_out(model, 1) == left_out(model, 0)
    assert len(images_of(model, 1)) == 46
    first = [bare(b) for b in user_blocks(model, 0)[:-1]]  # all but the request
    assert [bare(b) for b in user_blocks(model, 1)[: len(first)]] == first  # same prefix
    assert model.usages[1]["cache_read_input_tokens"] > 0
    assert len(slack.downloads) == 106  # each image downloaded once


def test_images_over_the_request_size_are_left_out_and_the_request_fits(bot, slack, model):
    parent = slack.add_thread("C1", 1)
    for n in range(9):  # 9 x 4 MB of base64: more than the API's 32 MB a request
        content = noise_png(1000, 1000)
        slack.add_message("C1", f"capture {n}", user="U2", thread_ts=parent,
                          files=[{"name": f"cap{n}.png", "content": content}])
    bot.mention("C1", "what changed?", thread_ts=parent)
    assert model.requests[0]["status"] == 200
    sent = images_of(model, 0)
    assert sum(len(b["source"]["data"]) for b in sent) <= MAX_IMAGE_DATA
    assert len(sent) == 4 and left_out(model, 0) == [f"cap{n}.png" for n in range(5)]


def test_the_fake_refuses_what_the_api_refuses(model):
    def image(content: bytes) -> dict:
        data = base64.b64encode(content).decode()
        return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": data}}

    def body(blocks: list[dict]) -> dict:
        content = [*blocks, {"type": "text", "text": "what are these?"}]
        messages = [{"role": "user", "content": content}]
        return {"model": MODEL, "max_tokens": 10, "messages": messages}

    small = image(png(8, 8))
    many = post(model, body([small] * (MAX_MEDIA + 1)))
    assert many.status_code == 400
    assert many.json()["error"] == {
        "type": "invalid_request_error",
        "message": "Too much media: 0 document pages + 101 images > 100",
    }
    assert post(model, body([small] * MAX_MEDIA)).status_code == 200
    wide = image(png(2100, 10))  # fine alone or among 20, not among 21
    assert post(model, body([wide] + [small] * 19)).status_code == 200
    refused = post(model, body([small] * 20 + [wide]))
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "messages.0.content.20.image.source.base64.data: At least one of the image dimensions "
        "exceed max allowed size for many-image requests: 2000 pixels"
    )
    huge = post(model, body([image(png(8001, 1))]))
    assert huge.status_code == 400 and "8000 pixels" in huge.json()["error"]["message"]
    too_large = post(model, body([{"type": "text", "text": "x" * (MAX_REQUEST_BYTES + 1)}]))
    assert too_large.status_code == 413
    assert too_large.json()["error"]["type"] == "request_too_large"
    assert MAX_IMAGES < MAX_MEDIA  # the bot's own limit leaves room for documents


def test_compaction_folds_older_images_into_its_summary_as_text(make_bot, slack, model):
    bot = make_bot(context_budget_tokens=8000)
    parent = slack.add_thread("C1", 1)
    for i in range(2, 262):
        files = None
        if i in (20, 120, 255):
            files = [{"name": f"shot{i}.png", "content": encoded((400, 300), color=(i, 0, 0))}]
        slack.add_message("C1", f"message {i}: " + "words " * 25, user="U2", thread_ts=parent,
                          files=files)

    def reply(body: dict) -> str:
        if body["system"] == COMPACT_SYSTEM:
            return "Summary: shot20.png and shot120.png show a red error dialog (code 42)."
        return "An answer."

    model.reply = reply
    bot.mention("C1", "what was the error?", thread_ts=parent)
    requests = [r["body"] for r in model.requests]
    compactions = [b for b in requests if b["system"] == COMPACT_SYSTEM]
    assert compactions and requests[-1]["system"] != COMPACT_SYSTEM
    folded = [blk for b in compactions for blk in b["messages"][0]["content"]
              if blk["type"] == "image"]
    assert len(folded) == 2  # shot20 and shot120 went to the compaction, as images
    closing = compactions[-1]["messages"][0]["content"][-1]["text"]
    assert "what their images and documents show" in closing
    answer = requests[-1]["messages"][0]["content"]
    assert len([b for b in answer if b["type"] == "image"]) == 1  # shot255 only, after the fold
    assert not any(b["source"]["data"] == f["source"]["data"] for b in answer
                   if b["type"] == "image" for f in folded)
    assert any("red error dialog (code 42)" in b.get("text", "") for b in answer)
    assert all(r["status"] == 200 for r in model.requests)


def test_a_call_in_flight_holds_its_image_tokens_against_the_budget(make_bot, slack, model):
    # 10 screenshots of 1,440 tokens: the first call's worst case is about $0.12 (prompt written
    # at twice the input price, plus max output); its text alone would hold about $0.03
    bot = make_bot(budget_daily_usd="0.10")
    shots = [{"name": f"s{n}.png", "content": png(1200, 900)} for n in range(10)]
    with_images = thread_with(slack, shots)
    text_only = slack.add_thread("C1", 2)
    gate = threading.Event()
    model.gate = gate
    try:
        bot.mention("C1", "compare them", thread_ts=with_images, wait=False)
        assert model.wait_for(lambda: model.arrived >= 1)  # the first call is in flight
        bot.mention("C1", "summarize", thread_ts=text_only, wait=False)
        assert slack.wait_for(
            lambda: "spend limit" in json.dumps(bot.posts_in("C1", text_only)), timeout=30
        )
    finally:
        gate.set()
    bot.wait()
    assert len(model.requests) == 1  # only the first reached the model


def test_the_footer_counts_the_image_tokens(bot, slack, model):
    parent = thread_with(slack, [{"name": "s.png", "content": png(1200, 900)}])
    bot.mention("C1", "what is it?", thread_ts=parent)
    usage = model.usages[0]
    prompt = sum(usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                    "cache_read_input_tokens"))
    assert prompt > 1440
    assert f"of {prompt:,} prompt tokens" in json.dumps(bot.posts_in("C1", parent)[-1])


def test_inspect_sends_the_images_as_the_bot_did_and_downloads_nothing(
    bot, slack, model, database_url
):
    parent = thread_with(slack, [{"name": "error.png", "content": png(3000, 2000)}])
    ts, _ = bot.mention("C1", "what does it say?", thread_ts=parent)
    settings = make_settings(slack, model, database_url)
    code, text = inspect(settings, link_to("C1", ts, parent), send=True)
    assert code == 0, text
    assert "[image image/png, 1313×875 px, ~1,532 tokens" in text
    sent = {k: v for k, v in model.requests[0]["body"].items() if k != "stream"}
    assert model.requests[1]["body"] == sent  # the same request, the same image bytes
    assert len(slack.downloads) == 1


@pytest.mark.parametrize(
    ("sizes", "most_moves"),
    [((20_000,), 35), ((40_000, 150_000, 400_000, 1_200_000), 400 // 6)],
    ids=["count", "data"],
)
def test_which_images_are_left_out_only_grows_and_moves_only_when_a_limit_demands_it(
    sizes, most_moves
):
    rng = random.Random(19)
    turns: list[Turn] = []
    previous: tuple[str, ...] = ()
    moves = 0
    for n in range(400):  # one image a follow-up
        part = ImagePart("image/png", "A" * rng.choice(sizes), 100, 100, f"i{n}")  # base64 size
        turns.append(Turn(ts=f"{n}.0", text=f"[t] bob: image {n}", extra=(part,)))
        fitted, out = fit_images(turns)
        sent = [p for t in fitted for p in t.extra if isinstance(p, ImagePart)]
        assert len(sent) <= MAX_IMAGES and sum(len(p.data) for p in sent) <= MAX_IMAGE_DATA
        assert out == tuple(f"i{k}" for k in range(len(out)))  # the oldest
        assert out[: len(previous)] == previous  # never fewer
        if out != previous:
            moves += 1
            kept = [p for t in turns for p in t.extra][len(previous):]
            over = len(kept) > MAX_IMAGES or sum(len(p.data) for p in kept) > MAX_IMAGE_DATA
            assert over  # the earlier choice no longer fit
        previous = out
    # whole pages at a time: 50 small images, then one move every 10 (35 in 400)
    assert 0 < moves <= most_moves, moves


def test_images_in_messages_trimmed_for_length_are_not_counted_as_left_out():
    turns = [Turn(ts=f"{n}.0", text=f"[t] bob: message {n} " + "words " * 40) for n in range(260)]
    for n in range(1, 61):  # 60 images: the oldest 10 are over the limit
        part = ImagePart("image/png", "A" * 1000, 10, 10, f"i{n}")
        turns[n] = Turn(ts=turns[n].ts, text=turns[n].text, extra=(part,))
    whole = build_request(model=MODEL, turns=turns, request="?", prior=None)
    assert whole.images_left_out == tuple(f"i{n}" for n in range(1, 11))
    trimmed = build_request(model=MODEL, turns=turns, request="?", prior=None, budget_tokens=5000)
    assert trimmed.omitted >= 199 and trimmed.images_left_out == ()


def test_images_and_document_pages_stay_within_the_apis_100_together(make_bot, slack, model):
    bot = make_bot(context_budget_tokens=200_000)  # room for a 60-page document (96,000 tokens)
    parent = slack.add_thread("C1", 1)
    manual = pdf([f"page {n}" for n in range(60)])
    slack.add_message("C1", "the manual", user="U2", thread_ts=parent,
                      files=[{"name": "manual.pdf", "content": manual}])
    for start in range(0, 50, 10):
        _add_images(slack, parent, range(start, start + 10))
    bot.mention("C1", "does the UI match the manual?", thread_ts=parent)
    assert model.requests[0]["status"] == 200
    blocks = user_blocks(model, 0)
    assert len([b for b in blocks if b["type"] == "document"]) == 1  # 60 pages
    assert len(images_of(model, 0)) == 40  # 60 + 40 = 100
    assert left_out(model, 0) == [f"img{n:03d}.png" for n in range(10)]


def test_a_compaction_refused_for_its_documents_is_made_again_with_their_text(
    make_bot, slack, model
):
    bot = make_bot(context_budget_tokens=12000)
    model.accept_documents = False  # a relay without document blocks
    parent = slack.add_thread("C1", 1)
    spec = pdf(["Spec v2: the export runs nightly.", "Budget: 42k EUR for Q3.", "Owner: Bob."])
    for i in range(2, 262):
        files = [{"name": "spec.pdf", "content": spec}] if i == 30 else None
        slack.add_message("C1", f"message {i}: " + "words " * 25, user="U2", thread_ts=parent,
                          files=files)
    model.reply = lambda body: (
        "Summary: the spec sets 42k EUR." if body["system"] == COMPACT_SYSTEM else "An answer."
    )
    bot.mention("C1", "what was the budget?", thread_ts=parent)

    def has_document(body: dict) -> bool:
        return any(b["type"] == "document" for m in body["messages"] for b in m["content"])

    compactions = [r for r in model.requests if r["body"]["system"] == COMPACT_SYSTEM]
    assert compactions[0]["status"] == 400 and has_document(compactions[0]["body"])
    retried = [r for r in compactions if r["status"] == 200]
    assert retried and not any(has_document(r["body"]) for r in retried)
    assert "42k EUR" in json.dumps([r["body"] for r in retried])  # the PDF's text, folded
    assert model.requests[-1]["status"] == 200
    assert "An answer." in json.dumps(bot.posts_in("C1", parent)[-1])
