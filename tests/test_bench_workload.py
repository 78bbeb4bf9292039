"""The cache benchmark: its workload generator, its accounting, and a --quick run end to end."""

from __future__ import annotations

import io
import re

import pytest

from bench import cache_bench as cb
from bench import workload as wl


@pytest.fixture(scope="module")
def full() -> wl.Workload:
    return wl.generate(1, 40)


def test_same_seed_same_workload_other_seed_other_workload():
    assert wl.generate(7, 8) == wl.generate(7, 8)
    assert wl.generate(7, 8) != wl.generate(8, 8)
    assert wl.generate(7, 6, quick=True) == wl.generate(7, 6, quick=True)


def test_timeline_is_one_sorted_list_and_threads_have_the_promised_shape(full):
    times = [e.at for e in full.events]
    assert times == sorted(times)
    assert len(full.threads) == 40
    assert all(20 <= p.initial <= 2000 for p in full.threads)
    assert sum(p.initial >= 1500 for p in full.threads) >= 3
    for plan in full.threads:
        asks = [a for a in full.asks if a.thread == plan.index]
        posts = [p for p in full.posts if p.thread == plan.index]
        assert 3 <= len(asks) == plan.requests <= 10
        assert [a.seq for a in asks] == list(range(len(asks)))
        assert asks[0].gap is None
        for before, after in zip(asks, asks[1:], strict=False):
            assert after.gap == pytest.approx(after.at - before.at, abs=0.01)
        # messages are numbered in order, the parent first, and arrive between requests too
        mentions = sum(a.kind == "mention" for a in asks)
        assert [p.index for p in posts] == sorted(p.index for p in posts)
        assert len(posts) + mentions <= wl.MAX_MESSAGES
        assert any(asks[0].at < p.at for p in posts)
        assert posts[0].index == 0 and posts[0].at < asks[0].at
    assert {a.kind for a in full.asks} == set(wl.KINDS)
    assert {p.channel for p in full.threads} == {c for c, _ in wl.CHANNELS}


def test_requests_are_marked_with_their_slices(full):
    asks = full.asks
    for a in asks:
        assert a.slices[0] == wl.gap_slice(a.gap)
        assert (wl.LONG_THREAD_SLICE in a.slices) == (a.size >= wl.LONG_THREAD)
    gaps = [a.gap for a in asks if a.gap is not None]
    assert min(gaps) < 60 and max(gaps) > 3 * 3600
    counts = {s: sum(s in a.slices for a in asks) for s in wl.SLICES}
    assert all(n >= 10 for n in counts.values()), counts
    assert wl.gap_slice(300) == wl.SHORT and wl.gap_slice(300.5) == wl.MEDIUM
    assert wl.gap_slice(3600) == wl.MEDIUM and wl.gap_slice(3601) == wl.LONG
    quick = wl.generate(1, 6, quick=True)
    assert {s for a in quick.asks for s in a.slices} >= set(wl.SLICES)


def test_text_is_multilingual_with_code_links_and_mentions(full):
    texts = [p.text for p in full.posts]
    joined = "\n".join(texts)
    assert {p.language for p in full.threads} == set(wl.LANGUAGES)
    assert re.search(r"[\u4e00-\u9fff]", joined)  # Chinese (and kanji)
    assert re.search(r"[\u3040-\u30ff]", joined)  # Japanese kana
    assert re.search(r"[äöüß]", joined) and re.search(r"[ñ¿¡]", joined)
    assert sum("```" in t for t in texts) > 100
    assert re.search(r"<https://[^|>]+\|[^>]+>", joined)
    assert re.search(r"<@U[1-8]>", joined)
    assert len(set(texts)) > 0.5 * len(texts)  # acks like '+1' repeat, as in Slack


def _body(*texts: str, system: str = "sys") -> dict:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "system": system,
        "messages": [{"role": "user", "content": [{"type": "text", "text": t} for t in texts]}],
    }


def test_clairvoyant_reads_within_the_hour_and_prices_writes_by_the_next_reuse():
    a, b, c, q = "a" * 400, "b" * 400, "c" * 400, "question?"  # 100 tokens each, q 3
    calls = [
        (0.0, "t1", _body(a, b, q)),  # sys+a+b comes back after 2 minutes: 1.25; q never: 1
        (120.0, "t1", _body(a, b, c, q)),  # reads sys+a+b, sends c (back in 30 min): 2
        (1920.0, "t1", _body(a, b, c, q)),  # 30 minutes later: reads everything
        (1920.0 + 7200, "t1", _body(a, b, c, q)),  # 2 hours later: nothing reused, 1
        (5.0, "t2", _body(a, b, q)),  # another thread shares no prefix with t1
    ]
    s = 1  # "sys" is one token
    got = cb.clairvoyant_costs(calls)
    assert got[0] == pytest.approx((s + 100 + 100) * 1.25 + 3)
    assert got[1] == pytest.approx((s + 200) * 0.1 + 100 * 2 + 3 * 2)
    assert got[2] == pytest.approx((s + 300 + 3) * 0.1)
    assert got[3] == pytest.approx(s + 300 + 3)
    assert got[4] == pytest.approx(s + 200 + 3)
    assert sum(got) <= sum(cb.body_tokens(b) for _, _, b in calls) * 1.25


def test_single_breakpoint_body_keeps_one_5m_breakpoint_before_the_request_block():
    body = _body("x", "y", "z")
    body["messages"][0]["content"][0]["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
    body["messages"][0]["content"][2]["cache_control"] = {"type": "ephemeral"}
    out = cb.single_breakpoint_body(body)
    marks = [b.get("cache_control") for b in out["messages"][0]["content"]]
    assert marks == [None, {"type": "ephemeral"}, None]
    assert body["messages"][0]["content"][0]["cache_control"]["ttl"] == "1h"  # not mutated
    lone = cb.single_breakpoint_body(_body("only"))["messages"][0]["content"]
    assert "cache_control" not in lone[0]


def test_usage_cost_and_rereads():
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
    }
    assert cb.usage_cost(usage) == pytest.approx(10 + 100 * 1.25 + 200 * 2 + 1000 * 0.1)
    assert cb.prompt_tokens(usage) == 1310
    reads = [
        {"channel": "C1", "thread_ts": "1.0", "ts": ["1.0", "2.0"], "edited": {}},
        {"channel": "C1", "thread_ts": "1.0", "ts": ["1.0", "3.0"], "edited": {}},
        {"channel": "C2", "thread_ts": "1.0", "ts": ["1.0"], "edited": {}},
        {"channel": "C1", "thread_ts": "1.0", "ts": ["1.0", "2.0"], "edited": {"2.0": "9.0"}},
    ]
    assert cb.reread_counts(reads) == [0, 1, 0, 1]


def test_quick_run_end_to_end_prints_the_table_and_adds_up():
    out = io.StringIO()
    report = cb.run(seed=1, quick=True, out=out)
    text = out.getvalue()
    for label in ("all requests", "short gap", "medium gap", "long gap", "long thread"):
        assert re.search(rf"^{label}.*\d", text, re.M), label
    assert "(a) bot" in text and "(d) tokens" in text
    assert len(re.findall(r"^  (PASS|MISS)  ", text, re.M)) == 4
    assert "event -> model request" in text

    served = report.served
    assert len(served) == len(report.workload.asks)
    assert all(s.model for s in served), "every request reached the model"
    for s in served:
        assert s.cost["naive"] == s.prompt  # the bodies we cost are the ones the fake billed
        assert s.cache_read <= s.prompt
        assert s.cost["bot"] <= 1.25 * s.prompt + 0.75 * s.prompt  # at worst all 1h writes
        answered = {"chat.postMessage", "chat.stopStream"}
        assert s.ask.kind != "mention" or answered & set(s.calls)
    total = report.rows[cb.ALL]
    assert total.prompt == sum(s.prompt for s in served)
    assert total.cost["naive"] == total.prompt
    assert 0 < total.cost["clairvoyant"] <= total.cost["naive"]
    assert total.requests == report.rows[cb.FOLLOW_UPS].requests + report.rows[wl.FIRST].requests
    gap_rows = (wl.FIRST, wl.SHORT, wl.MEDIUM, wl.LONG)
    assert sum(report.rows[r].requests for r in gap_rows) == total.requests
    for kind in ("bot", "naive", "single", "clairvoyant"):
        parts = sum(report.rows[r].cost[kind] for r in gap_rows)
        assert parts == pytest.approx(total.cost[kind])
    # the first read of a thread re-reads nothing; a follow-up gets at least the parent again
    assert report.rows[wl.FIRST].rereads == 0
    assert len(report.latencies) == 8 and all(0 < x < 10 for x in report.latencies)
