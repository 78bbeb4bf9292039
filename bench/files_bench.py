"""A thread full of files: ten screenshots and a PDF, asked about once and then ten times more.

Prints, for the same thread and questions, the input cost of every request with caching (the
bot's `CACHE_TTL`, `auto` by default) and without (`off`), the share of prompt tokens read from
cache, and the downloads each request made (a follow-up should make none: the prepared bytes are
kept with the thread).

Runs the real app (signed `app_mention` events, waitress, the real prompt builders, file reader
and Messages client) against the loopback fakes in tests/fakes: the fake Slack serves the files
at their `url_private_download`, the fake Messages API counts image and document tokens and
applies Anthropic's cache rules on its own clock.
`python -m bench.files_bench [--follow-ups 10] [--gap 120] [--pages 5]`
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.app import create_app
from bot.pricing import Usage, cost, price_for
from bot.store.db import make_engine, migrate
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import Bot, make_settings

MODEL = "claude-sonnet-4-5"
QUESTIONS = [
    "what does the error in the screenshots say?",
    "which screenshot shows the first failure?",
    "does the spec in the PDF allow retries?",
    "what changed between the third and the fourth screenshot?",
    "who reported the timeout?",
    "summarize the thread",
    "what is still open?",
    "which section of the spec covers rate limits?",
    "what should we try next?",
    "draft a reply to the reporter",
    "list the action items with owners",
]


def png(width: int, height: int, shade: int) -> bytes:
    """A valid RGB PNG of `width` x `height` pixels, with a band of `shade` so each differs."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = b"\x00" + bytes([shade, 255 - shade, 128]) * width
    raw = row * height
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def pdf(pages: int) -> bytes:
    """A valid PDF of `pages` pages of text (Helvetica), built by hand with its xref table."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    font = 3 + 2 * pages
    for i in range(pages):
        lines = [f"Section {i + 1}: retry policy, rate limits and timeouts, clause {j}."
                 for j in range(1, 31)]
        text = " ".join(f"({line}) Tj T*" for line in lines)
        stream = f"BT /F1 10 Tf 14 TL 50 780 Td {text} ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@dataclass
class Result:
    ttl: str
    usages: list[dict[str, Any]] = field(default_factory=list)
    downloads: list[int] = field(default_factory=list)  # per request
    image_blocks: list[int] = field(default_factory=list)
    document_blocks: list[int] = field(default_factory=list)

    @staticmethod
    def prompt(u: dict[str, Any]) -> int:
        return u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]

    @staticmethod
    def cost(u: dict[str, Any]) -> float:
        creation = u.get("cache_creation") or {}
        usage = Usage(
            input_tokens=u["input_tokens"],
            cache_creation_tokens=u["cache_creation_input_tokens"],
            cache_read_tokens=u["cache_read_input_tokens"],
            creation_5m=creation.get("ephemeral_5m_input_tokens", 0),
            creation_1h=creation.get("ephemeral_1h_input_tokens", 0),
        )  # input only: output tokens are the same either way
        price = price_for(MODEL)
        assert price is not None
        return cost(usage, price)

    def total(self, start: int = 0) -> float:
        return sum(self.cost(u) for u in self.usages[start:])

    def share(self, start: int = 0) -> float:
        used = self.usages[start:]
        total = sum(self.prompt(u) for u in used)
        return sum(u["cache_read_input_tokens"] for u in used) / total if total else 0.0


def run(ttl: str, follow_ups: int, gap: float, pages: int) -> Result:
    """The thread and 1 + `follow_ups` mentions `gap` seconds apart, with `CACHE_TTL=ttl`."""
    result = Result(ttl)
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack, FakeMessagesAPI() as model:
        slack.add_user("U1", "Alice Archer", "alice")
        slack.add_user("U2", "Bob Baker", "bob")
        slack.add_channel("C1", "incidents", members={"U1", "U2"})
        model.reply = lambda body: "The screenshots show a timeout in the payment service. " * 8
        parent = slack.add_message("C1", "checkout fails since this morning", user="U2")
        for i in range(10):
            shot = {"name": f"screenshot-{i + 1}.png", "content": png(1920, 1080, 20 * i)}
            slack.add_message("C1", f"attempt {i + 1}, still failing", user="U2" if i % 2 else "U1",
                              thread_ts=parent, files=[shot])
        slack.add_message("C1", "the spec we agreed on", user="U1", thread_ts=parent,
                          files=[{"name": "retry-spec.pdf", "content": pdf(pages)}])
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        migrate(make_engine(url))
        settings = make_settings(slack, model, url, CACHE_TTL=ttl, ANTHROPIC_MODEL=MODEL)
        app = create_app(settings, engine=make_engine(url), clock=slack.clock, sleep=slack.sleep)
        bot = Bot(app, slack, model)
        try:
            for n in range(follow_ups + 1):
                if n:
                    slack.advance(gap)
                    model.advance(gap)
                before, requests = len(slack.downloads), len(model.requests)
                bot.mention("C1", QUESTIONS[n % len(QUESTIONS)], thread_ts=parent)
                result.downloads.append(len(slack.downloads) - before)
                content = [b for r in model.requests[requests:]
                           for m in r["body"]["messages"] for b in m["content"]
                           if isinstance(b, dict)]
                result.image_blocks.append(sum(b.get("type") == "image" for b in content))
                result.document_blocks.append(sum(b.get("type") == "document" for b in content))
        finally:
            bot.close()
        result.usages = list(model.usages)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--follow-ups", type=int, default=10)
    parser.add_argument("--gap", type=float, default=120.0, help="seconds between questions")
    parser.add_argument("--pages", type=int, default=5, help="pages of the PDF")
    parser.add_argument("--ttl", default="auto", help="the caching policy compared with off")
    args = parser.parse_args()
    cached = run(args.ttl, args.follow_ups, args.gap, args.pages)
    plain = run("off", args.follow_ups, args.gap, args.pages)
    print(f"ten 1920x1080 screenshots and a {args.pages}-page PDF; 1 question then "
          f"{args.follow_ups} follow-ups {args.gap:.0f} s apart; {MODEL} input prices")
    print(f"{'req':>3} {'images':>6} {'docs':>4} {'downloads':>9} "
          f"{'prompt tokens':>13} {'read (' + args.ttl + ')':>11} "
          f"{'$ ' + args.ttl:>10} {'$ off':>10}")
    for i, (u, v) in enumerate(zip(cached.usages, plain.usages, strict=True)):
        print(f"{i + 1:>3} {cached.image_blocks[i]:>6} {cached.document_blocks[i]:>4} "
              f"{cached.downloads[i]:>9} {Result.prompt(u):>13,} "
              f"{u['cache_read_input_tokens']:>11,} {Result.cost(u):>10.4f} "
              f"{Result.cost(v):>10.4f}")
    follow = len(cached.usages) - 1
    print(f"input cost, all requests: {args.ttl} ${cached.total():.4f} vs off "
          f"${plain.total():.4f} ({cached.total() / plain.total():.1%} of it)")
    print(f"input cost, follow-ups:   {args.ttl} ${cached.total(1):.4f} vs off "
          f"${plain.total(1):.4f} ({cached.total(1) / plain.total(1):.1%} of it)")
    print(f"prompt tokens from cache, follow-ups: {cached.share(1):.1%}")
    later = sum(cached.downloads[1:])
    print(f"downloads: first request {cached.downloads[0]}, follow-ups {later} in {follow} "
          f"({later / follow:.2f} each)")


if __name__ == "__main__":
    main()
