"""The workspace-day benchmark: a tiny day end to end, at Tier 3 and at the limited tier."""

from __future__ import annotations

import io
import re

import pytest

from bench import workspace_day as wd


@pytest.fixture(scope="module")
def day() -> tuple[list[wd.Result], str]:
    out = io.StringIO()
    runs = (wd.RUNS[0], wd.RUNS[1])  # Tier 3, and the limited tier learnt by the bot
    results = wd.run(seed=3, scale=0.1, runs=runs, out=out, drain_hours=1)
    return results, out.getvalue()


def test_the_plan_has_the_promised_shape():
    steps = wd.Day(scale=1.0).plan()
    actions = [a for _, a, _ in steps]
    assert [t for t, _, _ in steps] == sorted(t for t, _, _ in steps)
    assert actions.count("post") >= 300
    assert actions.count("edit") >= 3 and actions.count("delete") >= 3
    assert actions.count("recap") == 2 and actions.count("outage") == 1
    truths = {args["truth"] for _, a, args in steps if a == "mention"}
    assert truths == set(wd.KINDS)


def test_reads_never_exceed_the_tier_and_the_figures_add_up(day):
    results, text = day
    for r in results:
        allowance = wd.ALLOWANCE[r.config.fake_tier]
        assert 0 < max(r.max_per_window.values()) <= allowance, r.config.label
        assert r.hung == 0
        counted = sum(sum(a.reads.values()) for a in r.asks) + sum(r.other_reads.values())
        assert counted > 0
        mentions = [a for a in r.asks if a.kind == "mention"]
        assert len(mentions) == 15 and all(a.model_at for a in mentions)
    assert text.count("most reads in any 60 s") == 2
    assert re.search(r"^mentions, complete from events +7 ", text, re.M)


def test_what_arrived_by_events_is_answered_and_recapped_with_no_reads(day):
    for r in day[0]:
        kept = [a for a in r.asks if a.truth == wd.COMPLETE]
        assert {a.kind for a in kept} == {"mention", "recap"}
        assert all(sum(a.reads.values()) == 0 for a in kept), [
            (a.label, dict(a.reads)) for a in kept if a.reads]
        assert not any(a.waited for a in kept)
        outage = [a for a in r.asks if a.truth == wd.OUTAGE and a.kind == "mention"]
        assert outage and all(sum(a.reads.values()) >= 1 for a in outage)


def test_at_tier3_nobody_waits_and_everything_is_answered_at_once(day):
    tier3 = day[0][0]
    assert tier3.learnt == "tier3"
    assert not any(a.waited for a in tier3.asks)
    assert all(a.answered_at == a.at for a in tier3.asks)


def test_at_the_limited_tier_every_waiting_answer_shows_an_estimate(day):
    limited = day[0][1]
    assert limited.learnt == "limited"
    waiting = [a for a in limited.asks if a.waited]
    assert waiting, "the threads that predate the bot take more than a minute to read"
    assert all(a.status_ok for a in waiting), [a.label for a in waiting if not a.status_ok]
    delays = [a.status_delay for a in waiting if a.kind == "mention"]
    assert all(d is not None and d <= 3 for d in delays), delays
