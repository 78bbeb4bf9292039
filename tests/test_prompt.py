"""The prompt builder and reply formatting: pure functions, checked directly."""

from __future__ import annotations

from bot.formatting import build_messages, footer_line, markdown_to_mrkdwn
from bot.pricing import Usage, cost, money, price_for, savings
from bot.prompt import PriorCache, build_request
from bot.transcript import Turn


def turns(n: int, start: int = 0) -> list[Turn]:
    return [Turn(ts=f"{1700000000 + i}.000100", text=f"[t] u{i}: message {i} " * 5, own=False)
            for i in range(start, start + n)]


def marked(body: dict) -> list[int]:
    return [i for i, b in enumerate(body["messages"][0]["content"]) if "cache_control" in b]


def test_same_turns_give_same_bytes_and_prefix_is_append_only():
    a = build_request(model="m", turns=turns(10), request="x", prior=None)
    b = build_request(model="m", turns=turns(10), request="y", prior=None)
    c = build_request(model="m", turns=turns(15), request="x", prior=None)
    assert a.body["messages"][0]["content"][:10] == b.body["messages"][0]["content"][:10]
    assert a.digest == b.digest
    strip = [{"type": "text", "text": t["text"]} for t in a.body["messages"][0]["content"][:10]]
    assert [{"type": "text", "text": t["text"]} for t in c.body["messages"][0]["content"][:10]] \
        == strip


def test_breakpoints_at_previous_boundary_and_new_end():
    first = build_request(model="m", turns=turns(10), request="x", prior=None)
    prior = PriorCache(first.boundary_ts, first.digest)
    second = build_request(model="m", turns=turns(40), request="x", prior=prior)
    assert marked(second.body) == [9, 39]
    assert len(second.breakpoints) == 2


def test_changed_prefix_drops_the_stale_breakpoint():
    first = build_request(model="m", turns=turns(10), request="x", prior=None)
    edited = turns(40)
    edited[3] = Turn(ts=edited[3].ts, text="edited", own=False)
    second = build_request(model="m", turns=edited, request="x",
                           prior=PriorCache(first.boundary_ts, first.digest))
    assert marked(second.body) == [39]


def test_never_more_than_four_breakpoints_and_ttl():
    built = build_request(model="m", turns=turns(5), request="x", prior=None, ttl="1h")
    blocks = built.body["messages"][0]["content"]
    assert blocks[4]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert len(marked(built.body)) <= 4


def test_empty_transcript_has_no_breakpoint():
    built = build_request(model="m", turns=[], request="", prior=None)
    assert marked(built.body) == []
    assert built.body["messages"][0]["content"][-1]["text"] == "Request: Summarize this thread."


def test_over_budget_keeps_root_and_newest_in_stable_steps():
    many = turns(1000)
    a = build_request(model="m", turns=many, request="x", prior=None, budget_tokens=5000)
    b = build_request(model="m", turns=[*many, *turns(5, 1000)], request="x", prior=None,
                      budget_tokens=5000)
    ca, cb = a.body["messages"][0]["content"], b.body["messages"][0]["content"]
    assert a.omitted > 0 and ca[0]["text"] == many[0].text and "omitted" in ca[1]["text"]
    assert a.estimated_tokens <= 5000 + 100
    # a few more messages do not move the cut: the prefix stays byte-identical
    if a.omitted == b.omitted:
        assert [x["text"] for x in ca[:-1]] == [x["text"] for x in cb[: len(ca) - 1]]


def test_savings_arithmetic():
    p = price_for("claude-sonnet-4-5-20250929")
    assert p is not None and abs(p.input - 3e-6) < 1e-12
    hit = Usage(input_tokens=100, cache_read_tokens=10_000, cache_creation_tokens=0,
                output_tokens=50)
    assert abs(savings(hit, p) - 10_000 * 0.9 * 3e-6) < 1e-9
    write = Usage(input_tokens=100, cache_creation_tokens=10_000, output_tokens=50)
    assert savings(write, p) < 0
    assert abs(cost(write, p) - (100 * 3e-6 + 10_000 * 1.25 * 3e-6 + 50 * 15e-6)) < 1e-9
    one_hour = Usage(cache_creation_tokens=1000, creation_1h=1000)
    assert abs(cost(one_hour, p) - 1000 * 2 * 3e-6) < 1e-12


def test_footer_variants():
    hit = Usage(input_tokens=50, cache_read_tokens=9_000, cache_creation_tokens=950)
    line = footer_line(hit, "claude-sonnet-4-5")
    assert "9,000 of 10,000 prompt tokens from cache (90%)" in line and "saved $" in line
    assert "\n" not in line
    unknown = footer_line(hit, "claude-sonnet-9-future")
    assert "from cache (90%)" in unknown and "$" not in unknown
    small = footer_line(Usage(input_tokens=300), "claude-sonnet-4-5")
    assert "under the 1,024-token minimum" in small
    relay = footer_line(Usage(input_tokens=5000), "claude-sonnet-4-5")
    assert "endpoint did not cache" in relay
    first = footer_line(Usage(input_tokens=20, cache_creation_tokens=5000), "claude-opus-4-6")
    assert "5,000 of 5,020 prompt tokens cached for follow-ups" in first


def test_markdown_to_mrkdwn():
    out = markdown_to_mrkdwn("## Plan\n**Ship** it, see [doc](https://x.io/a) & *soon*\n- one")
    assert out == "*Plan*\n*Ship* it, see <https://x.io/a|doc> &amp; _soon_\n• one"
    assert markdown_to_mrkdwn("```\n<!channel> a<b\n```") == "```\n@\u200bchannel a&lt;b\n```"
    assert markdown_to_mrkdwn("决定：**发布**") == "决定：*发布*"


def test_split_keeps_code_blocks_closed():
    text = "intro\n\n```\n" + "\n".join(f"line {i} " + "x" * 80 for i in range(100)) + "\n```"
    msgs = build_messages(text, "⚡ footer")
    sections = [b["text"]["text"] for m in msgs for b in m.blocks if b["type"] == "section"]
    assert len(sections) >= 2
    for s in sections:
        assert s.count("```") % 2 == 0 and len(s) <= 3000
    assert msgs[-1].blocks[-1]["type"] == "context"


def test_footer_never_shows_a_negative_saving():
    """A call that read a little and wrote much (a thread that grew, or a 1h write) cost more
    than no caching: the footer says so plainly instead of "saved $-0.0050"."""
    grew = Usage(input_tokens=20, cache_read_tokens=1_000, cache_creation_tokens=8_000)
    p = price_for("claude-sonnet-4-5")
    assert savings(grew, p) < 0
    line = footer_line(grew, "claude-sonnet-4-5")
    assert "1,000 of 9,020 prompt tokens from cache" in line
    assert "$-" not in line and "saved" not in line
    extra = money(-savings(grew, p), bare=True)
    assert f"{extra} more than uncached" in line
    assert "8,000 more cached for follow-ups" in line
