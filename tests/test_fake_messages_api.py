"""Tests for the fake Messages API server itself (plain httpx over loopback, no sleeps)."""

from __future__ import annotations

import base64
import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.fakes.messages_api import (
    BadRequest,
    FakeMessagesAPI,
    count_tokens,
    image_block_tokens,
    page_image_tokens,
)
from tests.pdfs import encrypted, pdf
from tests.test_files import png

MODEL = "claude-sonnet-4-5"  # floor 1024
HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
CC = {"type": "ephemeral"}
CC_1H = {"type": "ephemeral", "ttl": "1h"}


# One shared client: creating an httpx client per call costs ~30 ms (TLS context setup).
CLIENT = httpx.Client(timeout=5)


def post(fake: FakeMessagesAPI, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return CLIENT.post(
        fake.url + "/v1/messages",
        json=body,
        headers=HEADERS if headers is None else headers,
        timeout=5,
    )


def text(n_tokens: int, ch: str = "a", cache: dict[str, str] | None = None) -> dict[str, Any]:
    """A text block of exactly n_tokens tokens under the fake's tokenizer."""
    block: dict[str, Any] = {"type": "text", "text": ch * (4 * n_tokens)}
    if cache is not None:
        block["cache_control"] = cache
    return block


def body(
    blocks: list[dict[str, Any]],
    *,
    system: Any = None,
    model: str = MODEL,
    **extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": blocks}],
    }
    if system is not None:
        out["system"] = system
    out.update(extra)
    return out


def usage_of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]


def counters(u: dict[str, Any]) -> tuple[int, int, int]:
    return u["input_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"]


def parse_sse(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.split("\n\n"):
        if not chunk.strip():
            continue
        name, data = "", ""
        for line in chunk.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        events.append((name, json.loads(data)))
    return events


@pytest.fixture
def fake():
    with FakeMessagesAPI() as f:
        yield f


# -- tokenizer and floors ----------------------------------------------------------------------


def test_count_tokens():
    assert count_tokens("") == 0
    assert count_tokens("a") == 1
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("é") == 1  # 2 bytes
    assert count_tokens("éé€") == 2  # 7 bytes
    assert count_tokens("a" * 4000) == 1000


def test_floor_for_defaults_and_overrides():
    fake = FakeMessagesAPI()
    assert fake.floor_for("claude-opus-4-6") == 4096
    assert fake.floor_for("claude-opus-4-5-20251101") == 4096
    assert fake.floor_for("claude-haiku-4-5-20251001") == 4096
    assert fake.floor_for("claude-3-5-haiku-20241022") == 2048
    assert fake.floor_for("claude-3-haiku-20240307") == 2048
    assert fake.floor_for("claude-sonnet-4-5-20250929") == 1024
    assert fake.floor_for("claude-opus-4-1") == 1024
    assert fake.floor_for("claude-3-7-sonnet-20250219") == 1024
    assert fake.floor_for("some-future-model") == 1024
    fake.min_cacheable["claude-sonnet-4-6"] = 2048
    fake.min_cacheable["claude-sonnet-4-6-special"] = 10
    assert fake.floor_for("claude-sonnet-4-6") == 2048
    assert fake.floor_for("claude-sonnet-4-6-special-x") == 10
    assert fake.floor_for("claude-sonnet-4-5") == 1024


# -- basic write / read ------------------------------------------------------------------------


def test_first_call_writes_second_identical_call_reads(fake):
    req = body([text(10, "q")], system=[text(1100, "s", CC)])
    u1 = usage_of(post(fake, req))
    assert counters(u1) == (10, 1100, 0)
    assert u1["cache_creation"] == {
        "ephemeral_5m_input_tokens": 1100,
        "ephemeral_1h_input_tokens": 0,
    }
    assert fake.cache_size() == 1
    u2 = usage_of(post(fake, req))
    assert counters(u2) == (10, 0, 1100)
    assert u2["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
    assert fake.usages == [u1, u2]
    assert [r["status"] for r in fake.requests] == [200, 200]
    assert fake.requests[0]["headers"]["x-api-key"] == "test-key"
    assert fake.requests[0]["body"] == req


def test_response_shape(fake):
    resp = post(fake, body([text(3)]))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["request-id"]
    data = resp.json()
    assert data["id"].startswith("msg_")
    assert data["type"] == "message"
    assert data["role"] == "assistant"
    assert data["model"] == MODEL
    assert data["stop_reason"] == "end_turn"
    assert data["stop_sequence"] is None
    assert data["content"][0]["type"] == "text"
    reply = data["content"][0]["text"]
    assert "1 blocks" in reply
    assert data["usage"]["output_tokens"] == count_tokens(reply)
    assert counters(data["usage"]) == (3, 0, 0)  # no breakpoint: nothing cached


def test_string_system_and_string_content(fake):
    req = {
        "model": MODEL,
        "max_tokens": 10,
        "system": "s" * 400,
        "messages": [{"role": "user", "content": "hello"}],
    }
    resp = post(fake, req)
    assert counters(usage_of(resp)) == (100 + 2, 0, 0)
    assert "2 blocks" in resp.json()["content"][0]["text"]


def test_multiple_breakpoints_write_all_and_read_the_longest(fake):
    system = [text(1100, "s", CC)]
    turn1 = [text(300, "u", CC)]
    u1 = usage_of(post(fake, body(turn1, system=system)))
    assert counters(u1) == (0, 1400, 0)
    assert fake.cache_size() == 2
    u2 = usage_of(post(fake, body(turn1, system=system)))
    assert counters(u2) == (0, 0, 1400)
    # A different user block after the same system prompt: reads the system entry only.
    u3 = usage_of(post(fake, body([text(200, "v", CC)], system=system)))
    assert counters(u3) == (0, 200, 1100)


def test_multi_turn_conversation_grows(fake):
    q1 = {"role": "user", "content": [text(1100, "a", CC)]}
    a1 = {"role": "assistant", "content": "b" * 40}
    q2 = {"role": "user", "content": [text(20, "c", CC)]}
    u1 = usage_of(post(fake, {"model": MODEL, "max_tokens": 5, "messages": [q1]}))
    assert counters(u1) == (0, 1100, 0)
    u2 = usage_of(post(fake, {"model": MODEL, "max_tokens": 5, "messages": [q1, a1, q2]}))
    assert counters(u2) == (0, 30, 1100)


def test_role_boundaries_are_part_of_the_key(fake):
    first = {
        "model": MODEL,
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": [text(600, "a")]},
            {"role": "assistant", "content": [text(600, "b", CC)]},
        ],
    }
    assert counters(usage_of(post(fake, first)))[1] == 1200
    # Same two blocks in one user turn: a different prefix, so no read.
    merged = body([text(600, "a"), text(600, "b", CC)])
    assert counters(usage_of(post(fake, merged))) == (0, 1200, 0)


def test_change_before_boundary_misses_and_key_is_per_model_and_api_key(fake):
    base = body([text(1100, "a", CC)])
    post(fake, base)
    changed = body([text(1100, "z", CC)])
    assert counters(usage_of(post(fake, changed))) == (0, 1100, 0)
    other_model = body([text(1100, "a", CC)], model="claude-sonnet-4-0")
    assert counters(usage_of(post(fake, other_model))) == (0, 1100, 0)
    # cache_control itself is not part of the key: moving its ttl does not matter for a read
    same_text_1h = body([text(1100, "a", CC_1H)])
    assert counters(usage_of(post(fake, same_text_1h))) == (0, 0, 1100)


# -- the 20-block lookback -----------------------------------------------------------------------


def test_25_appended_blocks_miss_without_breakpoint_at_old_boundary(fake):
    old = text(1100, "a")
    first = body([dict(old, cache_control=CC)])
    assert counters(usage_of(post(fake, first))) == (0, 1100, 0)

    appended = [text(10, chr(ord("b") + i % 20)) for i in range(25)]
    appended[-1] = dict(appended[-1], cache_control=CC)
    only_end = body([old, *appended])
    assert counters(usage_of(post(fake, only_end))) == (0, 1350, 0)

    fake.clear_cache()
    assert fake.cache_size() == 0
    assert counters(usage_of(post(fake, first))) == (0, 1100, 0)
    both = body([dict(old, cache_control=CC), *appended])
    assert counters(usage_of(post(fake, both))) == (0, 250, 1100)


@pytest.mark.parametrize(("n_appended", "hit"), [(1, True), (19, True), (20, False), (25, False)])
def test_lookback_is_at_most_20_positions(fake, n_appended, hit):
    post(fake, body([text(1100, "a", CC)]))
    appended = [text(1, "x") for _ in range(n_appended)]
    appended[-1] = dict(appended[-1], cache_control=CC)
    u = usage_of(post(fake, body([text(1100, "a"), *appended])))
    if hit:
        assert counters(u) == (0, n_appended, 1100)
    else:
        assert counters(u) == (0, 1100 + n_appended, 0)


# -- limits and validation of cache_control ----------------------------------------------------


def test_five_breakpoints_is_400_with_exact_message(fake):
    resp = post(fake, body([text(300, ch, CC) for ch in "abcde"]))
    assert resp.status_code == 400
    assert resp.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        },
    }
    assert fake.requests[-1]["status"] == 400
    assert fake.usages == []
    # Four is fine (one in system, three in messages).
    ok = post(fake, body([text(300, ch, CC) for ch in "abc"], system=[text(300, "s", CC)]))
    assert counters(usage_of(ok)) == (0, 1200, 0)


def test_below_floor_is_silently_not_cached(fake):
    req = body([text(1000, "a", CC)])
    assert counters(usage_of(post(fake, req))) == (1000, 0, 0)
    assert counters(usage_of(post(fake, req))) == (1000, 0, 0)
    assert fake.cache_size() == 0
    # Haiku 4.5 needs 4096 tokens; Sonnet caches the same 2000-token prompt.
    big = body([text(2000, "h", CC)], model="claude-haiku-4-5")
    assert counters(usage_of(post(fake, big))) == (2000, 0, 0)
    big_sonnet = body([text(2000, "h", CC)])
    assert counters(usage_of(post(fake, big_sonnet))) == (0, 2000, 0)
    # The table can be overridden.
    fake.min_cacheable["claude-haiku-4-5"] = 1500
    assert counters(usage_of(post(fake, big))) == (0, 2000, 0)


def test_below_floor_breakpoint_merges_into_the_next_written_one(fake):
    # The 500-token 1h breakpoint is below the floor; its segment is attributed to the 5m one.
    req = body([text(500, "a", CC_1H), text(700, "b", CC)])
    u = usage_of(post(fake, req))
    assert counters(u) == (0, 1200, 0)
    assert u["cache_creation"] == {
        "ephemeral_5m_input_tokens": 1200,
        "ephemeral_1h_input_tokens": 0,
    }
    assert fake.cache_size() == 1


def test_ttl_split_between_1h_and_5m(fake):
    req = body([text(400, "q", CC)], system=[text(1100, "s", CC_1H)])
    u = usage_of(post(fake, req))
    assert counters(u) == (0, 1500, 0)
    assert u["cache_creation"] == {
        "ephemeral_5m_input_tokens": 400,
        "ephemeral_1h_input_tokens": 1100,
    }
    # After 301 s the 5m entry is gone but the 1h system entry still answers.
    fake.advance(301)
    u2 = usage_of(post(fake, req))
    assert counters(u2) == (0, 400, 1100)
    assert u2["cache_creation"] == {
        "ephemeral_5m_input_tokens": 400,
        "ephemeral_1h_input_tokens": 0,
    }


def test_1h_after_5m_is_400(fake):
    resp = post(fake, body([text(1100, "q", CC_1H)], system=[text(1100, "s", CC)]))
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "1h" in err["message"]


@pytest.mark.parametrize(
    "cache_control",
    [{"type": "persistent"}, {"type": "ephemeral", "ttl": "10m"}, "ephemeral", {"ttl": "5m"}],
)
def test_bad_cache_control_is_400(fake, cache_control):
    resp = post(fake, body([text(10, "a", cache_control)]))
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


# -- TTLs ----------------------------------------------------------------------------------------


def test_5m_entry_expires_after_301_seconds(fake):
    req = body([text(1100, "a", CC)])
    post(fake, req)
    fake.advance(301)
    assert fake.cache_size() == 0
    assert counters(usage_of(post(fake, req))) == (0, 1100, 0)


def test_5m_entry_alive_at_299_seconds(fake):
    req = body([text(1100, "a", CC)])
    post(fake, req)
    fake.advance(299)
    assert counters(usage_of(post(fake, req))) == (0, 0, 1100)


def test_1h_entry_survives_301_seconds_but_not_3601(fake):
    req = body([text(1100, "a", CC_1H)])
    u = usage_of(post(fake, req))
    assert u["cache_creation"] == {
        "ephemeral_5m_input_tokens": 0,
        "ephemeral_1h_input_tokens": 1100,
    }
    fake.advance(301)
    assert counters(usage_of(post(fake, req))) == (0, 0, 1100)

    fake.clear_cache()
    post(fake, req)
    fake.advance(3601)
    assert counters(usage_of(post(fake, req))) == (0, 1100, 0)


def test_hit_refreshes_ttl(fake):
    req = body([text(1100, "a", CC)])
    post(fake, req)
    for _ in range(5):  # 5 x 200 s = 1000 s, far beyond 300 s, but each hit refreshes
        fake.advance(200)
        assert counters(usage_of(post(fake, req))) == (0, 0, 1100)
    fake.advance(300)
    assert counters(usage_of(post(fake, req))) == (0, 1100, 0)


def test_a_hit_refreshes_an_entry_for_its_own_ttl():
    """Reads refresh the entry read, for the TTL it was written with (documented: the lifetime
    is refreshed each time the cached content is used), whatever ttl the reading mark names."""
    one_hour = body([text(1100, "h", CC_1H)])
    post(fake := FakeMessagesAPI().start(), one_hour)
    try:
        fake.advance(50 * 60)
        assert counters(usage_of(post(fake, one_hour))) == (0, 0, 1100)
        fake.advance(55 * 60)  # 105 min after the write, 55 after the read: still alive
        assert counters(usage_of(post(fake, one_hour))) == (0, 0, 1100)
        five = body([text(1100, "f", CC)])
        post(fake, five)
        fake.advance(200)
        read_as_1h = body([text(1100, "f", CC_1H)])  # the entry stays a 5-minute one
        assert counters(usage_of(post(fake, read_as_1h))) == (0, 0, 1100)
        fake.advance(301)
        assert counters(usage_of(post(fake, read_as_1h))) == (0, 1100, 0)
    finally:
        fake.stop()


def test_now_uses_simulated_clock():
    fake = FakeMessagesAPI(start_time=100.0)
    assert fake.now == 100.0
    fake.advance(5.5)
    assert fake.now == 105.5


# -- caching off and usage styles --------------------------------------------------------------


def test_caching_false_never_caches(fake):
    fake.caching = False
    req = body([text(10, "q")], system=[text(1100, "s", CC)])
    for _ in range(2):
        u = usage_of(post(fake, req))
        assert counters(u) == (1110, 0, 0)
        assert u["cache_creation"] == {
            "ephemeral_5m_input_tokens": 0,
            "ephemeral_1h_input_tokens": 0,
        }
    assert fake.cache_size() == 0


def test_usage_style_null(fake):
    fake.usage_style = "null"
    req = body([text(10, "q")], system=[text(1100, "s", CC)])
    u = usage_of(post(fake, req))
    assert u["cache_creation_input_tokens"] is None
    assert u["cache_read_input_tokens"] is None
    assert "cache_creation" not in u
    assert u["input_tokens"] == 1110
    assert u["output_tokens"] > 0


def test_usage_style_missing(fake):
    fake.usage_style = "missing"
    u = usage_of(post(fake, body([text(10, "q")], system=[text(1100, "s", CC)])))
    assert set(u) == {"input_tokens", "output_tokens"}
    assert u["input_tokens"] == 1110


# -- reply and output tokens -------------------------------------------------------------------


def test_reply_string_callable_and_output_tokens(fake):
    fake.reply = "hello world!"  # 12 bytes -> 3 tokens
    data = post(fake, body([text(1)])).json()
    assert data["content"][0]["text"] == "hello world!"
    assert data["usage"]["output_tokens"] == 3
    fake.reply = lambda b: f"model={b['model']}"
    assert post(fake, body([text(1)])).json()["content"][0]["text"] == f"model={MODEL}"
    fake.output_tokens = 77
    assert post(fake, body([text(1)])).json()["usage"]["output_tokens"] == 77


def test_max_tokens_truncates(fake):
    fake.reply = "x" * 400  # 100 tokens
    data = post(fake, body([text(1)], max_tokens=5)).json()
    assert data["stop_reason"] == "max_tokens"
    assert data["usage"]["output_tokens"] == 5
    assert data["content"][0]["text"] == "x" * 20


# -- auth, validation, routing -----------------------------------------------------------------


def test_auth_x_api_key_and_bearer(fake):
    req = body([text(1)])
    bad = post(fake, req, {"x-api-key": "nope", "anthropic-version": "2023-06-01"})
    assert bad.status_code == 401
    assert bad.json()["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    bad_bearer = post(
        fake, req, {"authorization": "Bearer nope", "anthropic-version": "2023-06-01"}
    )
    assert bad_bearer.status_code == 401
    assert bad_bearer.json()["error"]["type"] == "authentication_error"
    none = post(fake, req, {"anthropic-version": "2023-06-01"})
    assert none.status_code == 401
    ok = post(fake, req, {"authorization": "Bearer test-key", "anthropic-version": "2023-06-01"})
    assert ok.status_code == 200
    assert post(fake, req).status_code == 200
    assert [r["status"] for r in fake.requests] == [401, 401, 401, 200, 200]
    assert len(fake.usages) == 2


def test_custom_api_key():
    with FakeMessagesAPI(api_key="sk-other") as fake:
        assert post(fake, body([text(1)])).status_code == 401
        headers = {"x-api-key": "sk-other", "anthropic-version": "2023-06-01"}
        assert post(fake, body([text(1)]), headers).status_code == 200


def test_missing_anthropic_version_is_400(fake):
    resp = post(fake, body([text(1)]), {"x-api-key": "test-key"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in resp.json()["error"]["message"]


def _msgs(*pairs: tuple[str, Any]) -> list[dict[str, Any]]:
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_tokens": 10, "messages": _msgs(("user", "hi"))},
        {"model": 5, "max_tokens": 10, "messages": _msgs(("user", "hi"))},
        {"model": MODEL, "messages": _msgs(("user", "hi"))},
        {"model": MODEL, "max_tokens": 0, "messages": _msgs(("user", "hi"))},
        {"model": MODEL, "max_tokens": "10", "messages": _msgs(("user", "hi"))},
        {"model": MODEL, "max_tokens": True, "messages": _msgs(("user", "hi"))},
        {"model": MODEL, "max_tokens": 10, "messages": []},
        {"model": MODEL, "max_tokens": 10},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("assistant", "hi"))},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("system", "hi"))},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", "a"), ("user", "b"))},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", ""))},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", []))},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", None))},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", [{"type": "text"}]))},
        {
            "model": MODEL,
            "max_tokens": 10,
            "messages": _msgs(("user", "hi")),
            "system": [{"type": "image", "source": {}}],
        },
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", "hi")), "system": 3},
        {"model": MODEL, "max_tokens": 10, "messages": _msgs(("user", "hi")), "stream": "yes"},
        [1, 2, 3],
    ],
)
def test_invalid_bodies_are_400(fake, bad):
    resp = post(fake, bad)
    assert resp.status_code == 400, resp.text
    assert resp.json()["type"] == "error"
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert resp.json()["error"]["message"]
    assert fake.usages == []


def test_empty_text_block_message(fake):
    resp = post(fake, body([{"type": "text", "text": ""}]))
    assert resp.status_code == 400
    assert "text content blocks must be non-empty" in resp.json()["error"]["message"]


def test_non_json_body_is_400(fake):
    resp = httpx.post(fake.url + "/v1/messages", content=b"{not json", headers=HEADERS, timeout=5)
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests[-1]["body"] is None
    assert fake.requests[-1]["status"] == 400


def test_rejected_model_is_404(fake):
    fake.reject_models.add("claude-nope")
    resp = post(fake, body([text(1)], model="claude-nope"))
    assert resp.status_code == 404
    assert resp.json()["error"] == {"type": "not_found_error", "message": "model: claude-nope"}


def test_other_paths_and_methods_are_404(fake):
    assert httpx.get(fake.url + "/v1/messages", timeout=5).status_code == 404
    resp = httpx.post(fake.url + "/v1/complete", json={}, headers=HEADERS, timeout=5)
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "not_found_error"
    assert httpx.delete(fake.url + "/", timeout=5).status_code == 404


def test_assistant_prefill_and_non_text_blocks_are_accepted(fake):
    req = {
        "model": MODEL,
        "max_tokens": 10,
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]},
            {"role": "assistant", "content": "The answer is"},
        ],
    }
    assert post(fake, req).status_code == 200


# -- enqueued failures -------------------------------------------------------------------------


def test_enqueue_529_then_success(fake):
    fake.enqueue(529, headers={"retry-after": "0", "x-should-retry": "true"})
    req = body([text(1100, "a", CC)])
    first = post(fake, req)
    assert first.status_code == 529
    assert first.headers["retry-after"] == "0"
    assert first.headers["x-should-retry"] == "true"
    assert first.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert fake.cache_size() == 0  # a failed request writes nothing
    second = post(fake, req)
    assert counters(usage_of(second)) == (0, 1100, 0)
    assert [r["status"] for r in fake.requests] == [529, 200]
    assert len(fake.usages) == 1


@pytest.mark.parametrize(
    ("status", "etype"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (402, "billing_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (504, "timeout_error"),
        (529, "overloaded_error"),
    ],
)
def test_enqueue_default_error_types(fake, status, etype):
    fake.enqueue(status)
    resp = post(fake, body([text(1)]))
    assert resp.status_code == status
    assert resp.json()["error"]["type"] == etype


def test_enqueue_times_and_custom_message(fake):
    fake.enqueue(429, error_type="rate_limit_error", message="slow down", times=2)
    assert post(fake, body([text(1)])).json()["error"]["message"] == "slow down"
    assert post(fake, body([text(1)])).status_code == 429
    assert post(fake, body([text(1)])).status_code == 200


def test_openai_shaped_error(fake):
    fake.enqueue(429, message="quota exceeded", shape="openai")
    resp = post(fake, body([text(1)]))
    assert resp.status_code == 429
    data = resp.json()
    assert "type" not in data
    assert data["error"]["message"] == "quota exceeded"
    assert data["error"]["type"] == "rate_limit_error"
    assert "code" in data["error"]


def test_html_error(fake):
    fake.enqueue(502, shape="html")
    resp = post(fake, body([text(1)]))
    assert resp.status_code == 502
    assert resp.headers["content-type"].startswith("text/html")
    assert "<html>" in resp.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.text)
    assert post(fake, body([text(1)])).status_code == 200


def test_dropped_connection(fake):
    fake.enqueue(500, shape="drop")
    with pytest.raises(httpx.TransportError):
        post(fake, body([text(1)]))
    assert fake.requests[-1]["status"] == 0
    assert post(fake, body([text(1)])).status_code == 200


# -- streaming ---------------------------------------------------------------------------------


def stream_events(fake: FakeMessagesAPI, req: dict[str, Any]) -> tuple[httpx.Response, list]:
    with CLIENT.stream(
        "POST", fake.url + "/v1/messages", json=req, headers=HEADERS, timeout=5
    ) as resp:
        raw = resp.read().decode()
    return resp, parse_sse(raw)


def test_stream_event_sequence_and_usage_matches_non_stream(fake):
    req = body([text(10, "q")], system=[text(1100, "s", CC)])
    resp, events = stream_events(fake, dict(req, stream=True))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    names = [n for n, _ in events]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    deltas = [d for n, d in events if n == "content_block_delta"]
    assert len(deltas) >= 2
    assert names[-4:] == ["future_thing", "content_block_stop", "message_delta", "message_stop"]
    assert set(names) == {
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "future_thing",
        "content_block_stop",
        "message_delta",
        "message_stop",
    }
    for name, data in events:
        assert data["type"] == name

    start = events[0][1]["message"]
    assert start["role"] == "assistant"
    assert start["model"] == MODEL
    assert start["usage"]["output_tokens"] == 1
    streamed_text = "".join(d["delta"]["text"] for d in deltas)
    assert all(d["delta"]["type"] == "text_delta" for d in deltas)
    message_delta = events[-2][1]
    assert message_delta["delta"]["stop_reason"] == "end_turn"

    stream_usage = dict(start["usage"], output_tokens=message_delta["usage"]["output_tokens"])

    fake.clear_cache()
    plain = post(fake, req).json()
    assert plain["content"][0]["text"] == streamed_text
    assert stream_usage == plain["usage"]
    assert counters(stream_usage) == (10, 1100, 0)
    assert fake.usages == [plain["usage"], plain["usage"]]

    # A second stream reads what the non-stream call wrote.
    _, events2 = stream_events(fake, dict(req, stream=True))
    assert counters(events2[0][1]["message"]["usage"]) == (10, 0, 1100)


def test_stream_error_after_some_text(fake):
    fake.reply = "0123456789abcdefghij"
    fake.enqueue_stream_error("overloaded_error", after_chars=7)
    req = body([text(1100, "a", CC)], stream=True)
    resp, events = stream_events(fake, req)
    assert resp.status_code == 200
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert names[-1] == "error"
    assert "message_stop" not in names
    assert events[-1][1]["error"]["type"] == "overloaded_error"
    deltas = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert deltas == "0123456789"[:7]
    assert fake.usages == []
    # The non-stream request is not affected by stream errors; the next stream succeeds.
    fake.enqueue_stream_error(after_chars=0)
    assert post(fake, body([text(1)])).status_code == 200
    _, events = stream_events(fake, req)
    assert [n for n, _ in events][-1] == "error"
    _, events = stream_events(fake, req)
    assert [n for n, _ in events][-1] == "message_stop"


def test_stream_usage_style_null(fake):
    fake.usage_style = "null"
    _, events = stream_events(fake, body([text(1100, "a", CC)], stream=True))
    usage = events[0][1]["message"]["usage"]
    assert usage["cache_read_input_tokens"] is None
    assert usage["cache_creation_input_tokens"] is None


# -- concurrency and lifecycle -----------------------------------------------------------------


def test_concurrent_requests_are_all_recorded(fake):
    req = body([text(1100, "a", CC)])
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: post(fake, req), range(24)))
    assert all(r.status_code == 200 for r in results)
    assert len(fake.requests) == 24
    assert len(fake.usages) == 24
    writes = [u for u in fake.usages if u["cache_creation_input_tokens"]]
    assert len(writes) == 1  # accounting is atomic: exactly one request wrote
    assert sum(u["cache_read_input_tokens"] for u in fake.usages) == 23 * 1100


def test_keep_alive_client_and_restart():
    fake = FakeMessagesAPI().start()
    try:
        with httpx.Client(base_url=fake.url, headers=HEADERS, timeout=5) as client:
            for _ in range(3):
                assert client.post("/v1/messages", json=body([text(1)])).status_code == 200
            fake.enqueue(400, shape="openai")
            assert client.post("/v1/messages", json=body([text(1)])).status_code == 400
            assert client.post("/v1/messages", json=body([text(1)])).status_code == 200
    finally:
        fake.stop()
    fake.stop()  # idempotent


@pytest.mark.parametrize("reason", ["max_tokens", "refusal", "pause_turn"])
def test_enqueued_stop_reason_ends_streamed_and_plain_answers(fake, reason):
    fake.reply = "The rollout has three phases and"
    req = {"model": MODEL, "max_tokens": 50, "messages": _msgs(("user", "hi"))}
    fake.enqueue_stop(reason, after_chars=12, explanation="Declined.", times=2)
    plain = post(fake, req).json()
    _, events = stream_events(fake, dict(req, stream=True))
    delta = [d for n, d in events if n == "message_delta"][0]
    assert plain["stop_reason"] == delta["delta"]["stop_reason"] == reason
    assert plain["content"][0]["text"] == "The rollout "
    streamed = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert streamed == "The rollout "
    if reason == "refusal":
        details = {"type": "refusal", "category": None, "explanation": "Declined."}
        assert plain["stop_details"] == delta["delta"]["stop_details"] == details
    else:
        assert "stop_details" not in plain
    if reason == "max_tokens":
        assert plain["usage"]["output_tokens"] == 50
    assert post(fake, req).json()["stop_reason"] == "end_turn"  # only the enqueued ones


def test_delta_chars_sets_the_size_of_text_deltas(fake):
    fake.reply = "x" * 450
    fake.delta_chars = 100
    req = {"model": MODEL, "max_tokens": 500, "messages": _msgs(("user", "hi")), "stream": True}
    _, events = stream_events(fake, req)
    sizes = [len(d["delta"]["text"]) for n, d in events if n == "content_block_delta"]
    assert sizes == [100, 100, 100, 100, 50]


def test_an_image_costs_width_times_height_over_750_tokens_after_scaling():
    def block(content: bytes) -> dict:
        data = base64.b64encode(content).decode()
        source = {"type": "base64", "media_type": "image/png", "data": data}
        return {"type": "image", "source": source}

    assert image_block_tokens(block(png(1500, 1000))) == 2000
    assert image_block_tokens(block(png(3136, 1568))) == 1568 * 784 // 750 + 1  # scaled to 1,568
    with pytest.raises(BadRequest):
        image_block_tokens(block(b"not an image"))


def doc_block(content: bytes, cache: dict[str, str] | None = None) -> dict[str, Any]:
    data = base64.b64encode(content).decode()
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data},
    }
    if cache is not None:
        block["cache_control"] = cache
    return block


def test_a_pdf_costs_its_pages_text_plus_an_image_a_page(fake):
    pages = ["Alpha page one.", "Beta page two, a little longer.", "Gamma."]
    u = usage_of(post(fake, body([doc_block(pdf(pages)), text(10)])))
    assert u["input_tokens"] == sum(count_tokens(p) + 1600 for p in pages) + 10
    assert page_image_tokens(612, 792) == page_image_tokens(595, 842) == 1600  # Letter, A4
    assert page_image_tokens(200, 800) == math.ceil(392 * 1568 / 750)  # a strip: below the cap
    u = usage_of(post(fake, body([doc_block(pdf(["x"], width=200, height=800)), text(10)])))
    assert u["input_tokens"] == count_tokens("x") + math.ceil(392 * 1568 / 750) + 10


def test_a_document_block_is_cached_like_any_block(fake):
    content = pdf(["Cached page. " * 20] * 2)
    first = usage_of(post(fake, body([text(5), doc_block(content, CC), text(3)])))
    assert first["cache_creation_input_tokens"] > 3200 and first["input_tokens"] == 3
    again = usage_of(post(fake, body([text(5), doc_block(content, CC), text(4)])))
    assert again["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    other = usage_of(post(fake, body([text(5), doc_block(pdf(["Other."] * 2), CC), text(4)])))
    assert other["cache_read_input_tokens"] == 0  # other bytes: another prefix


def test_document_blocks_are_validated(fake):
    def refused(block: dict[str, Any]) -> str:
        resp = post(fake, body([block, text(1)]))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["type"] == "invalid_request_error"
        return resp.json()["error"]["message"]

    good = doc_block(pdf(["fine"]))
    wrong_type = {**good, "source": {**good["source"], "media_type": "image/png"}}
    assert "media_type" in refused(wrong_type)
    assert "not valid" in refused(doc_block(b"%PDF-1.4 nothing else"))
    assert "password protected" in refused(doc_block(encrypted(pdf(["secret"]))))
    sixty = doc_block(pdf(["p"] * 60))
    resp = post(fake, body([sixty, text(1), {**sixty}, text(1)]))  # 120 pages in one request
    assert resp.status_code == 400
    assert "A maximum of 100 PDF pages" in resp.json()["error"]["message"]


def test_a_relay_without_documents_refuses_them_with_a_400(fake):
    fake.accept_documents = False
    resp = post(fake, body([text(2), doc_block(pdf(["page"])), text(1)]))
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("messages.0.content.1: Input tag 'document' found")
    assert post(fake, body([text(2)])).status_code == 200  # text alone is answered


def test_a_request_over_32_mb_is_too_large(fake):
    resp = post(fake, body([{"type": "text", "text": "a" * (32 * 1024 * 1024)}]))
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "request_too_large"
