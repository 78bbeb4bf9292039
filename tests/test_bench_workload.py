"""The cache benchmark: its workload generator, its accounting, and a --quick run end to end."""

from __future__ import annotations

import io
import os
import re

import pytest

from bench import cache_bench as cb
from bench import workload as wl

# The bench runs the bot on an SQLite file of its own whatever database the suite is given: its
# end-to-end runs (a minute together) are the same in both runs of the suite, so once is enough.
own_database = pytest.mark.skipif(
    bool(os.environ.get("TEST_DATABASE_URL")),
    reason="the bench's own SQLite file: the run on SQLite covers it",
)


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
    measured = [p for p in full.threads if not p.warmup]
    assert len(measured) == 40 and len(full.threads) == 60  # + the warm-up threads
    assert all(20 <= p.initial <= 2000 for p in full.threads)
    assert sum(p.initial >= 1500 for p in measured) >= 3
    assert 0.15 < sum(p.requests == 1 for p in measured) / 40 < 0.45  # asked about once
    every = [e for e in full.events if isinstance(e, wl.Ask)]
    assert {a.warmup for a in every} == {True, False}
    first_measured = min(a.at for a in full.asks)
    assert min(a.at for a in full.warmup_asks) < first_measured - 3600
    later = 0  # threads asked again with messages posted after their first request
    for plan in full.threads:
        asks = [a for a in every if a.thread == plan.index]
        posts = [p for p in full.posts if p.thread == plan.index]
        assert 1 <= len(asks) == plan.requests <= 10
        assert all(a.warmup == plan.warmup for a in asks)
        assert [a.seq for a in asks] == list(range(len(asks)))
        assert asks[0].gap is None
        for before, after in zip(asks, asks[1:], strict=False):
            assert after.gap == pytest.approx(after.at - before.at, abs=0.01)
        # messages are numbered in order, the parent first, and arrive between requests too
        mentions = sum(a.kind == "mention" for a in asks)
        assert [p.index for p in posts] == sorted(p.index for p in posts)
        assert len(posts) + mentions <= wl.MAX_MESSAGES
        later += len(asks) > 1 and any(asks[0].at < p.at for p in posts)
        assert posts[0].index == 0 and posts[0].at < asks[0].at
    assert later > 0.8 * sum(p.requests > 1 for p in full.threads)
    assert {a.kind for a in full.asks} == set(wl.KINDS)
    assert {p.channel for p in full.threads} == {c for c, _ in wl.CHANNELS}


def test_profiles_shape_the_family():
    def share_short(profile: str) -> float:
        asks = wl.generate(1, 40, profile=profile).asks
        gaps = [a.gap for a in asks if a.gap is not None]
        return sum(g <= wl.SHORT_GAP for g in gaps) / len(gaps)

    assert share_short("bursty") > 0.5 > share_short("mixed") > share_short("slow")
    long = wl.generate(1, profile="long")
    assert all(p.initial >= 1000 for p in long.threads)
    assert not wl.generate(1, profile="cold").warmup_asks
    assert wl.generate(1, profile="mixed").warmup_asks
    # few threads over a day and a half on a fresh database, some gaps longer than 8 hours
    sparse = [wl.generate(seed, profile="sparse") for seed in (1, 2, 3)]
    assert all(len(w.threads) == 15 and not w.warmup_asks for w in sparse)
    assert max(a.gap or 0 for w in sparse for a in w.asks) > 8 * 3600
    assert max(a.at for a in sparse[0].asks) - min(a.at for a in sparse[0].asks) > 30 * 3600


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


def test_clairvoyant_follows_the_cache_rules_with_hindsight():
    a, b, c, q = "a" * 400, "b" * 400, "c" * 400, "question?"  # 100 tokens each, q 3
    calls = [
        (0.0, "t1", _body(a, b, q)),  # sys+a+b read 2 min and 32 min later: a 1h write, 2
        (120.0, "t1", _body(a, b, c, q)),  # reads sys+a+b; c+q back once, in 30 min: no write
        (1920.0, "t1", _body(a, b, c, q)),  # (a 1h write read once costs 2.1, sending twice 2)
        (1920.0 + 7200, "t1", _body(a, b, c, q)),  # 2 hours later: nothing alive, nothing after
        (5.0, "t2", _body(a, b, q)),  # another thread shares no prefix with t1
        (200.0, "t2", _body(a, b, q)),  # ... and reads its own back within 5 minutes: 1.25
    ]
    s = 1  # "sys" is one token
    got = cb.clairvoyant_costs(calls, pings=False)
    assert got[0] == pytest.approx((s + 200) * 2 + 3)  # q is never sent again after a+b
    assert got[1] == pytest.approx((s + 200) * 0.1 + 100 + 3)
    assert got[2] == pytest.approx((s + 200) * 0.1 + 100 + 3)
    assert got[3] == pytest.approx(s + 300 + 3)
    assert got[4] == pytest.approx((s + 200 + 3) * 1.25)
    assert got[5] == pytest.approx((s + 200 + 3) * 0.1)
    # a read an hour and a half after a 5-minute entry was last used is not free: the entry
    # is gone (the chain of reads each within 5 minutes keeps it alive, a gap breaks it)
    chain = [(t, "t3", _body(a, q)) for t in (0.0, 240.0, 480.0, 720.0)]
    assert cb.clairvoyant_costs(chain, pings=False) == pytest.approx(
        [104 * 1.25] + [104 * 0.1] * 3
    )
    # 3 minutes, then half an hour: a 5m entry read at 3 minutes is gone by then, so the
    # block is written for an hour at once (2 + 0.1 + 0.1, where 5m would cost 1.25 + 0.1 + 1)
    broken = [(t, "t4", _body(a, q)) for t in (0.0, 180.0, 1980.0)]
    assert cb.clairvoyant_costs(broken, pings=False) == pytest.approx(
        [104 * 2, 104 * 0.1, 104 * 0.1]
    )


def test_clairvoyant_may_keep_a_5_minute_entry_alive_with_reads():
    a, q = "a" * 400, "question?"  # 104 tokens with sys and q
    # 9 minutes: a 5m write kept alive by one read (charged to the first use) and read:
    # 1.25 + 0.1, then 0.1, cheaper than a 1h write (2 + 0.1) or sending twice
    nine = [(t, "t0", _body(a, q)) for t in (0.0, 540.0)]
    assert cb.clairvoyant_costs(nine) == pytest.approx([104 * 1.35, 104 * 0.1])
    assert cb.clairvoyant_costs(nine, pings=False) == pytest.approx([104, 104])
    # 50 minutes: one read that writes on for an hour (an upgrade) instead of 9 reads
    fifty = [(t, "t2", _body(a, q)) for t in (0.0, 3000.0)]
    assert cb.clairvoyant_costs(fifty) == pytest.approx([104 * 1.35, 104 * 0.1])
    # 70 minutes: two reads, the second an upgrade (the hour runs from it)
    seventy = [(t, "t4", _body(a, q)) for t in (0.0, 4200.0)]
    assert cb.clairvoyant_costs(seventy) == pytest.approx([104 * 1.45, 104 * 0.1])
    # 3 hours: an upgrade at once, renewed twice just before each hour ends (1.25 + 3 x 0.1)
    hours = [(t, "t3", _body(a, q)) for t in (0.0, 3 * 3600.0)]
    assert cb.clairvoyant_costs(hours) == pytest.approx([104 * 1.55, 104 * 0.1])
    # 5 hours: an upgrade at once, renewed four times (1.25 + 5 x 0.1)
    five = [(t, "t5", _body(a, q)) for t in (0.0, 5 * 3600.0)]
    assert cb.clairvoyant_costs(five) == pytest.approx([104 * 1.75, 104 * 0.1])
    # 9 hours would take more renewals than the bot makes (MAX_RENEWALS): sent twice
    assert cb.MAX_RENEWALS == 7
    nine_hours = [(t, "t6", _body(a, q)) for t in (0.0, 9 * 3600.0)]
    assert cb.clairvoyant_costs(nine_hours) == pytest.approx([104, 104])
    assert cb.clairvoyant_costs(hours, pings=False) == pytest.approx([104, 104])
    assert cb.clairvoyant_costs(hours, renewals=False) == pytest.approx([104, 104])


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


@own_database
def test_fixed_policies_costed_from_the_bots_bodies_match_the_bot_running_them():
    """The 5m and 1h columns move the auto run's marks where CACHE_TTL=5m/1h puts them; that
    costs exactly what the bot itself is billed when it runs with that setting."""
    workload = wl.generate(1, 4, quick=True, profile="cold")
    for ttl in ("5m", "1h"):
        served = cb.replay(workload, cache_ttl=ttl)
        billed = [cb.usage_cost(c.usage) for s in served for c in s.model]
        calls = [(s.ask.at, str(s.ask.thread), c.body) for s in served for c in s.model]
        assert cb.fixed_policy_costs(calls, ttl) == pytest.approx(billed)


@own_database
def test_quick_run_end_to_end_prints_the_tables_and_adds_up():
    out = io.StringIO()
    report = cb.run(seeds=(1,), profiles=("mixed", "cold"), quick=True, out=out)
    text = out.getvalue()
    for label in ("all requests", "short gap", "medium gap", "long gap", "long thread"):
        assert re.search(rf"^{label}.*\d", text, re.M), label
    assert "== mixed" in text and "== cold" in text and "summary" in text
    assert re.search(r"^mixed +\d+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+ ", text, re.M)
    assert len(re.findall(r"^  (PASS|MISS)  ", text, re.M)) == 5
    assert "event -> model request" in text

    for family in report.families:
        for run in family.runs:
            served = run.served
            assert len(served) == len(run.workload.asks)  # the warm-up is not counted
            assert all(s.model for s in served), "every request reached the model"
            for s in served:
                assert s.cost["off"] == s.prompt  # the bodies we cost are the ones billed
                assert s.cache_read <= s.prompt
                assert s.cost["auto"] <= 2 * s.prompt  # at worst all 1h writes
                answered = {"chat.postMessage", "chat.stopStream"}
                assert s.ask.kind != "mention" or answered & set(s.calls)
            total = run.rows[cb.ALL]
            assert total.prompt == sum(s.prompt for s in served)
            assert total.cost["off"] == total.prompt
            # the clairvoyant policy is a lower bound of every policy on the same bodies
            for kind in cb.POLICIES:
                assert total.cost["clairvoyant"] <= total.cost[kind] + 1e-6
            first = run.rows[wl.FIRST].requests
            assert total.requests == run.rows[cb.FOLLOW_UPS].requests + first
            gap_rows = (wl.FIRST, wl.SHORT, wl.MEDIUM, wl.LONG)
            assert sum(run.rows[r].requests for r in gap_rows) == total.requests
            for kind in cb.COSTS:
                parts = sum(run.rows[r].cost[kind] for r in gap_rows)
                assert parts == pytest.approx(total.cost[kind])
            # the first read of a thread re-reads nothing; a follow-up gets the parent again
            assert run.rows[wl.FIRST].rereads == 0
        assert family.rows[cb.ALL].requests == sum(r.rows[cb.ALL].requests for r in family.runs)
    assert len(report.latencies) == 8 and all(0 < x < 10 for x in report.latencies)
