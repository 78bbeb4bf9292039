"""Cache benchmark: a seeded Slack workload replayed through the real app, costed four ways.

`python -m bench.cache_bench [--seed 1] [--threads 40] [--quick] [--dump rows.json]`

The workload (bench/workload.py) is replayed on one simulated timeline: before each event the
bot's clock, `slack.now` and `model.now` are set to its time (nothing sleeps). Requests go to
the real app as signed HTTP requests (tests/harness.Bot, SlackUI); the model is the project's
Messages API fake with the documented cache rules. Input cost is in base-price units
(input 1, 5-minute write 1.25, 1-hour write 2, read 0.1) for:
  (a) bot          what the fake billed the bot;
  (b) naive        the same bodies without cache_control: every prompt token at 1;
  (c) 1 breakpoint the same bodies with only a 5m breakpoint on the last transcript block
                   (the block before the request block), replayed at the same simulated times
                   against a fresh fake;
  (d) clairvoyant  per thread, over the bot's own bodies: a block costs 0.1 when the previous
                   request with the same prefix (up to and including it) came at most 60 minutes
                   earlier; otherwise the request that sends it pays 1.25 if the prefix comes
                   back within 5 minutes, 2 if within an hour, else 1. A reference, not a
                   strict lower bound: a 1h write reused once costs 2.1 where no write costs 2,
                   and a 5m write counts as read by a reuse up to an hour later.
(a)-(c) are shown as ratios to (d). Also: Slack Web API calls per request, read calls
(conversations.replies/history), reads of messages an earlier read of the thread already
returned unchanged, and the bot's own time from event to model request on a 2,000-message
thread.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from bench import workload as wl
from bot.app import create_app
from bot.store.db import make_engine, migrate
from tests.fakes.messages_api import FakeMessagesAPI, flatten_prompt
from tests.fakes.slack_api import FakeSlack
from tests.harness import Bot, SlackUI, make_settings

READ_METHODS = ("conversations.replies", "conversations.history")
INPUT, WRITE_5M, WRITE_1H, READ = 1.0, 1.25, 2.0, 0.1
TTL_5M, TTL_1H = 300.0, 3600.0
TEAM_DOMAIN = "acme"

ALL = "all requests"
FOLLOW_UPS = "follow-ups"
ROWS = (ALL, FOLLOW_UPS, wl.FIRST, wl.SHORT, wl.MEDIUM, wl.LONG, wl.LONG_THREAD_SLICE)
ROW_LABELS = {
    wl.SHORT: "short gap (<=5m)",
    wl.MEDIUM: "medium gap (5-60m)",
    wl.LONG: "long gap (>60m)",
    wl.LONG_THREAD_SLICE: "long thread (1000+)",
}

# Targets (from the issue). "Every slice": all requests and the four slices.
TARGET_SLICES = (ALL, *wl.SLICES)
MAX_COST_VS_CLAIRVOYANT = 1.15
MIN_SHARE_WITHIN_TTL = 0.90
MAX_READS_PER_FOLLOW_UP = 1


class SimClock:
    """The bot's clock: epoch seconds of the simulated timeline."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """The bot waits (for Slack's read budget): simulated time passes, nothing blocks."""
        self.now += max(0.0, seconds)


@dataclass
class ModelCall:
    """One request the bot sent to the model, and what the fake billed."""

    body: dict[str, Any]
    usage: dict[str, Any]


@dataclass
class Served:
    """One workload request as the bot handled it."""

    ask: wl.Ask
    calls: list[str]
    reads: list[dict[str, Any]]
    model: list[ModelCall]
    wall_seconds: float
    # Filled in by the accounting.
    prompt: int = 0
    cache_read: int = 0
    cost: dict[str, float] = field(default_factory=dict)
    rereads: int = 0

    @property
    def rows(self) -> tuple[str, ...]:
        """The table rows this request counts in."""
        base = (ALL,) if self.ask.gap is None else (ALL, FOLLOW_UPS)
        return base + self.ask.slices

    @property
    def read_calls(self) -> int:
        return sum(m in READ_METHODS for m in self.calls)


# ---------------------------------------------------------------------------------------------
# Accounting (pure)


def prompt_tokens(usage: dict[str, Any]) -> int:
    """input + cache read + cache creation."""
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
    )


def usage_cost(usage: dict[str, Any]) -> float:
    """Input cost in base-price units: input·1 + 5m writes·1.25 + 1h writes·2 + reads·0.1.

    Creation tokens the usage does not split by TTL are counted as 5-minute writes.
    """
    creation = usage.get("cache_creation") or {}
    w5 = int(creation.get("ephemeral_5m_input_tokens") or 0)
    w1 = int(creation.get("ephemeral_1h_input_tokens") or 0)
    w5 += max(0, int(usage.get("cache_creation_input_tokens") or 0) - w5 - w1)
    return (
        int(usage.get("input_tokens") or 0) * INPUT
        + w5 * WRITE_5M
        + w1 * WRITE_1H
        + int(usage.get("cache_read_input_tokens") or 0) * READ
    )


def body_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of a body by the fake's tokenizer (= the naive cost)."""
    return sum(p.tokens for p in flatten_prompt(body))


def _strip(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def single_breakpoint_body(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with every cache_control removed and one 5m breakpoint on the last transcript
    block: the block just before the final block of the last user turn (none if there is none).
    """
    out = copy.deepcopy(body)
    if isinstance(out.get("tools"), list):
        out["tools"] = [_strip(t) for t in out["tools"]]
    if isinstance(out.get("system"), list):
        out["system"] = [_strip(b) for b in out["system"]]
    for message in out.get("messages") or []:
        if isinstance(message.get("content"), list):
            message["content"] = [_strip(b) for b in message["content"]]
    messages = out.get("messages") or []
    if messages and isinstance(messages[-1].get("content"), list):
        content = messages[-1]["content"]
        if len(content) >= 2 and isinstance(content[-2], dict):
            content[-2]["cache_control"] = {"type": "ephemeral"}
    return out


def _prefix_keys(body: dict[str, Any]) -> tuple[list[str], list[int]]:
    """A key per block for "the same bytes up to and including this block", and its tokens."""
    hasher = hashlib.sha256(json.dumps(body.get("model")).encode())
    keys, tokens = [], []
    for p in flatten_prompt(body):
        hasher.update(b"\n" + p.canonical.encode())
        keys.append(hasher.copy().hexdigest())
        tokens.append(p.tokens)
    return keys, tokens


def clairvoyant_costs(calls: Sequence[tuple[float, str, dict[str, Any]]]) -> list[float]:
    """Cost of each (time, thread, body) under the clairvoyant rule (see the module docstring).

    Minimum cacheable lengths and breakpoint limits are ignored; prefixes are per thread.
    """
    seen: dict[tuple[str, str], list[int]] = defaultdict(list)  # (thread, key) -> call indexes
    parsed = []
    for i, (_, thread, body) in enumerate(calls):
        keys, tokens = _prefix_keys(body)
        parsed.append((keys, tokens))
        for k in keys:
            seen[(thread, k)].append(i)
    position: dict[tuple[str, str], int] = defaultdict(int)
    costs = []
    for i, (at, thread, _) in enumerate(calls):
        keys, tokens = parsed[i]
        total = 0.0
        for k, n in zip(keys, tokens, strict=True):
            uses = seen[(thread, k)]
            j = position[(thread, k)]
            position[(thread, k)] = j + 1
            if j > 0 and at - calls[uses[j - 1]][0] <= TTL_1H:
                total += n * READ
                continue
            after = calls[uses[j + 1]][0] - at if j + 1 < len(uses) else None
            if after is not None and after <= TTL_5M:
                total += n * WRITE_5M
            elif after is not None and after <= TTL_1H:
                total += n * WRITE_1H
            else:
                total += n * INPUT
        costs.append(total)
    return costs


def reread_counts(reads: Iterable[dict[str, Any]]) -> list[int]:
    """For each read (in order): how many messages it returned that an earlier read of the
    same thread had already returned, unedited since."""
    known: dict[tuple[str, str | None], set[tuple[str, str | None]]] = defaultdict(set)
    out = []
    for r in reads:
        seen = known[(r["channel"], r["thread_ts"])]
        versions = [(ts, r["edited"].get(ts)) for ts in r["ts"]]
        out.append(sum(v in seen for v in versions))
        seen.update(versions)
    return out


def replay_single_breakpoint(calls: Sequence[tuple[float, dict[str, Any]]]) -> list[float]:
    """Cost of each (time, body) with one breakpoint, sent in order to a fresh fake."""
    costs = []
    with FakeMessagesAPI() as fresh, httpx.Client(base_url=fresh.url, timeout=60) as client:
        headers = {"x-api-key": fresh.api_key, "anthropic-version": "2023-06-01"}
        for at, body in calls:
            fresh.now = at
            replayed = single_breakpoint_body(body)
            replayed.pop("stream", None)  # the cost does not depend on streaming
            resp = client.post("/v1/messages", json=replayed, headers=headers)
            resp.raise_for_status()
            costs.append(usage_cost(resp.json()["usage"]))
    return costs


def account(served: list[Served]) -> None:
    """Fill in tokens, the four costs and re-reads of every served request."""
    calls = [(s.ask.at, str(s.ask.thread), c.body) for s in served for c in s.model]
    owners = [s for s in served for _ in s.model]
    clairvoyant = clairvoyant_costs(calls)
    single = replay_single_breakpoint([(at, body) for at, _, body in calls])
    for s in served:
        s.cost = {"bot": 0.0, "naive": 0.0, "single": 0.0, "clairvoyant": 0.0}
        s.prompt = s.cache_read = 0
        for c in s.model:
            s.prompt += prompt_tokens(c.usage)
            s.cache_read += int(c.usage.get("cache_read_input_tokens") or 0)
            s.cost["bot"] += usage_cost(c.usage)
            s.cost["naive"] += body_tokens(c.body)
    for owner, d, c in zip(owners, clairvoyant, single, strict=True):
        owner.cost["clairvoyant"] += d
        owner.cost["single"] += c
    all_reads = [(s, r) for s in served for r in s.reads]
    for (s, _), n in zip(all_reads, reread_counts(r for _, r in all_reads), strict=True):
        s.rereads += n


# ---------------------------------------------------------------------------------------------
# Replaying the workload through the bot


def _setup(slack: FakeSlack, workload: wl.Workload | None = None) -> None:
    users = workload.users if workload else wl.USERS
    channels = workload.channels if workload else wl.CHANNELS
    for uid, real, display in users:
        slack.add_user(uid, real, display)
    for cid, name in channels:
        slack.add_channel(cid, name, members={u[0] for u in users})


def _start_bot(slack: FakeSlack, model: FakeMessagesAPI, tmp: str, clock: SimClock) -> Bot:
    url = f"sqlite:///{Path(tmp) / 'bench.db'}"
    migrate(make_engine(url))
    app = create_app(
        make_settings(slack, model, url), engine=make_engine(url), clock=clock, sleep=clock.sleep
    )
    return Bot(app, slack, model)


def _set_time(at: float, clock: SimClock, slack: FakeSlack, model: FakeMessagesAPI) -> None:
    clock.now = at
    slack.now = at
    model.now = at


def _model_calls(model: FakeMessagesAPI, req_from: int, usage_from: int) -> list[ModelCall]:
    ok = [r for r in model.requests[req_from:] if r["status"] == 200]
    usages = model.usages[usage_from:]
    assert len(ok) == len(usages), "every answered model request has a usage"
    return [ModelCall(r["body"], u) for r, u in zip(ok, usages, strict=True)]


def replay(workload: wl.Workload, *, progress: TextIO | None = None) -> list[Served]:
    """Run every event of `workload` through a fresh bot; one Served per request."""
    served: list[Served] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeSlack(team_domain=TEAM_DOMAIN) as slack,
        FakeMessagesAPI() as model,
    ):
        _setup(slack, workload)
        clock = SimClock(workload.events[0].at)
        bot = _start_bot(slack, model, tmp, clock)
        ui = SlackUI(bot)
        stamps: dict[int, list[str]] = defaultdict(list)  # thread -> ts of its messages
        channel_of = {p.index: p.channel for p in workload.threads}
        asks = len(workload.asks)
        try:
            for event in workload.events:
                _set_time(event.at, clock, slack, model)
                channel = channel_of[event.thread]
                ts_list = stamps[event.thread]
                if isinstance(event, wl.Post):
                    assert event.index == len(ts_list)
                    parent = ts_list[0] if ts_list else None
                    ts_list.append(
                        slack.add_message(channel, event.text, user=event.user, thread_ts=parent)
                    )
                    continue
                calls_from, reads_from = len(slack.calls), len(slack.reads)
                req_from, usage_from = len(model.requests), len(model.usages)
                started = time.perf_counter()
                parent = ts_list[0]
                if event.kind == "mention":
                    ts, _ = bot.mention(channel, event.text, user=event.user, thread_ts=parent)
                    ts_list.append(ts)
                elif event.kind == "summarize":
                    link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p"
                    text = link + parent.replace(".", "")
                    if event.text:
                        text += " " + event.text
                    ui.command(text, channel=event.command_channel, user=event.user)
                else:
                    ui.shortcut(channel, ts_list[event.target], parent, user=event.user)
                wall = time.perf_counter() - started
                served.append(
                    Served(
                        ask=event,
                        calls=[m for m, _ in slack.calls[calls_from:]],
                        reads=slack.reads[reads_from:],
                        model=_model_calls(model, req_from, usage_from),
                        wall_seconds=wall,
                    )
                )
                if progress is not None and len(served) % 25 == 0:
                    print(f"  … {len(served)}/{asks} requests", file=progress, flush=True)
        finally:
            bot.close()
    return served


def measure_latency(follow_ups: int, size: int, seed: int) -> tuple[list[float], list[int]]:
    """Seconds from just before the signed request to the model fake receiving the answer
    request, for `follow_ups` mentions on a thread of `size` messages (after one warm-up
    mention), with 1-5 new messages before each. Also returns read calls per follow-up."""
    rng = random.Random(seed)
    latencies: list[float] = []
    reads: list[int] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeSlack(team_domain=TEAM_DOMAIN) as slack,
        FakeMessagesAPI() as model,
    ):
        _setup(slack)
        at = wl.START
        clock = SimClock(at)
        bot = _start_bot(slack, model, tmp, clock)
        people = [u[0] for u in wl.USERS]

        def text(_: int) -> str:
            return wl.message_text(rng, rng.choice(wl.LANGUAGES), "payments", "acme/billing")

        try:
            _set_time(at - 6 * 3600, clock, slack, model)
            parent = slack.add_thread("C1", size - 1, text_fn=text, users=people)
            _set_time(at, clock, slack, model)
            bot.mention("C1", "what is still open?", thread_ts=parent)
            for i in range(follow_ups):
                for _ in range(rng.randint(1, 5)):
                    at += rng.uniform(5, 40)
                    _set_time(at, clock, slack, model)
                    slack.add_message("C1", text(0), user=rng.choice(people), thread_ts=parent)
                at += rng.uniform(5, 60)
                _set_time(at, clock, slack, model)
                full = f"<@UBOT> follow-up {i}: who owns the rollback?"
                ts = slack.add_message("C1", full, user="U1", thread_ts=parent)
                event = {
                    "type": "app_mention",
                    "user": "U1",
                    "text": full,
                    "ts": ts,
                    "thread_ts": parent,
                    "channel": "C1",
                    "team": slack.team_id,
                    "event_ts": ts,
                }
                req_from, calls_from = len(model.requests), len(slack.calls)
                sent = time.perf_counter()
                bot.event(event)
                answered = [r for r in model.requests[req_from:] if r["status"] == 200]
                assert answered, "the follow-up reached the model"
                latencies.append(answered[-1]["received_at"] - sent)
                reads.append(sum(m in READ_METHODS for m, _ in slack.calls[calls_from:]))
        finally:
            bot.close()
    return latencies, reads


# ---------------------------------------------------------------------------------------------
# Report


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


@dataclass
class Row:
    """Totals of one slice."""

    name: str
    requests: int = 0
    prompt: int = 0
    cache_read: int = 0
    cost: dict[str, float] = field(
        default_factory=lambda: {"bot": 0.0, "naive": 0.0, "single": 0.0, "clairvoyant": 0.0}
    )
    calls: int = 0
    read_calls: int = 0
    rereads: int = 0

    def add(self, s: Served) -> None:
        self.requests += 1
        self.prompt += s.prompt
        self.cache_read += s.cache_read
        for k, v in s.cost.items():
            self.cost[k] += v
        self.calls += len(s.calls)
        self.read_calls += s.read_calls
        self.rereads += s.rereads

    @property
    def share(self) -> float:
        return self.cache_read / self.prompt if self.prompt else 0.0

    def vs_clairvoyant(self, kind: str) -> float:
        d = self.cost["clairvoyant"]
        return self.cost[kind] / d if d else float("nan")

    @property
    def below_single(self) -> bool:
        """The bot's input cost is below the single-breakpoint approach's."""
        return self.cost["bot"] < self.cost["single"]

    def per_request(self, value: float) -> float:
        return value / self.requests if self.requests else 0.0


@dataclass
class Report:
    """Everything the bench measured."""

    workload: wl.Workload
    served: list[Served]
    rows: dict[str, Row]
    latencies: list[float]
    latency_reads: list[int]
    latency_size: int
    seconds: float = 0.0
    targets: list[tuple[str, str, bool]] = field(default_factory=list)


def summarize(
    workload: wl.Workload,
    served: list[Served],
    latencies: list[float],
    latency_reads: list[int],
    latency_size: int,
) -> Report:
    rows = {name: Row(name) for name in ROWS}
    for s in served:
        for name in s.rows:
            rows[name].add(s)
    report = Report(workload, served, rows, latencies, latency_reads, latency_size)
    overall = rows[ALL].vs_clairvoyant("bot")
    report.targets.append(
        (
            f"input cost <= {MAX_COST_VS_CLAIRVOYANT:.2f} x clairvoyant (all requests)",
            f"{overall:.3f} x",
            overall <= MAX_COST_VS_CLAIRVOYANT,
        )
    )
    worse = [
        f"{ROW_LABELS.get(r.name, r.name)} {r.vs_clairvoyant('bot'):.2f} vs "
        f"{r.vs_clairvoyant('single'):.2f}"
        for r in (rows[name] for name in TARGET_SLICES)
        if r.requests and not r.below_single
    ]
    report.targets.append(
        (
            "input cost below the single-breakpoint approach on every slice (all, gaps, long)",
            "yes" if not worse else "not on: " + "; ".join(worse),
            not worse,
        )
    )
    short = rows[wl.SHORT]
    report.targets.append(
        (
            f">= {MIN_SHARE_WITHIN_TTL:.0%} of prompt tokens from cache, follow-ups within the TTL",
            f"{short.share:.1%} over {short.requests} requests",
            short.requests > 0 and short.share >= MIN_SHARE_WITHIN_TTL,
        )
    )
    follow = [s for s in served if s.ask.gap is not None]
    over = [s for s in follow if s.read_calls > MAX_READS_PER_FOLLOW_UP]
    most = max((s.read_calls for s in follow), default=0)
    report.targets.append(
        (
            f"at most {MAX_READS_PER_FOLLOW_UP} Slack read call per follow-up "
            "(users.info look-ups not counted)",
            f"max {most}, mean {rows[FOLLOW_UPS].per_request(rows[FOLLOW_UPS].read_calls):.2f}, "
            f"{len(over)} of {len(follow)} follow-ups over; users.info on follow-ups: "
            f"{sum(s.calls.count('users.info') for s in follow)}",
            not over,
        )
    )
    return report


def _mark(row: Row) -> str:
    return "PASS" if row.below_single else "MISS"


def render(report: Report, out: TextIO) -> None:
    """Print the table, the targets and the latency figures."""
    print(wl.describe(report.workload), file=out)
    print(
        "\ninput cost in base-price units (input 1, 5m write 1.25, 1h write 2, read 0.1), as a "
        "ratio to clairvoyant (d)",
        file=out,
    )
    head = (
        f"{'slice':<20} {'reqs':>5} {'cached':>7} {'(d) tokens':>11} {'(a) bot':>8} "
        f"{'(b) naive':>9} {'(c) 1-bp':>8} {'a<c':>4} {'slack/req':>9} {'reads/req':>9} "
        f"{'re-read/req':>11}"
    )
    print(head, file=out)
    print("-" * len(head), file=out)
    for name in ROWS:
        r = report.rows[name]
        if not r.requests:
            print(f"{ROW_LABELS.get(name, name):<20} {0:>5}", file=out)
            continue
        print(
            f"{ROW_LABELS.get(name, name):<20} {r.requests:>5} {r.share:>7.1%} "
            f"{r.cost['clairvoyant']:>11,.0f} {r.vs_clairvoyant('bot'):>8.3f} "
            f"{r.vs_clairvoyant('naive'):>9.3f} {r.vs_clairvoyant('single'):>8.3f} "
            f"{_mark(r) if name in TARGET_SLICES else '':>4} {r.per_request(r.calls):>9.2f} "
            f"{r.per_request(r.read_calls):>9.2f} {r.per_request(r.rereads):>11.1f}",
            file=out,
        )
    total = report.rows[ALL]
    short = report.rows[wl.SHORT]
    print(
        f"\nprompt tokens from cache: {total.share:.1%} overall, {short.share:.1%} on follow-ups "
        f"within the TTL (previous request on the thread <= 5 min earlier)",
        file=out,
    )
    print(
        f"totals: prompt tokens {total.prompt:,}; cost (a) {total.cost['bot']:,.0f}, "
        f"(b) {total.cost['naive']:,.0f}, (c) {total.cost['single']:,.0f}, "
        f"(d) {total.cost['clairvoyant']:,.0f}; model calls "
        f"{sum(len(s.model) for s in report.served)}",
        file=out,
    )
    if report.latencies:
        lat = [x * 1000 for x in report.latencies]
        print(
            f"bot time, event -> model request, {report.latency_size:,}-message thread, "
            f"{len(lat)} follow-ups: p50 {statistics.median(lat):.1f} ms, "
            f"p99 {percentile(lat, 0.99):.1f} ms, max {max(lat):.1f} ms "
            f"(read calls per follow-up: max {max(report.latency_reads)})",
            file=out,
        )
    print("\ntargets", file=out)
    for label, value, ok in report.targets:
        print(f"  {'PASS' if ok else 'MISS'}  {label}: {value}", file=out)
    print(f"\nran in {report.seconds:.1f} s", file=out)


def _breakpoints(body: dict[str, Any]) -> list[list[Any]]:
    """[block index, ttl] of each cache_control in the request's messages."""
    out = []
    index = 0
    for message in body.get("messages") or []:
        content = message.get("content")
        for block in content if isinstance(content, list) else [content]:
            if isinstance(block, dict) and block.get("cache_control"):
                out.append([index, block["cache_control"].get("ttl", "5m")])
            index += 1
    return out


def dump(report: Report, path: Path) -> None:
    """Per-request rows as JSON, for digging into a figure."""
    rows = []
    for s in report.served:
        a = s.ask
        rows.append(
            {
                "at": a.at,
                "thread": a.thread,
                "seq": a.seq,
                "kind": a.kind,
                "gap": a.gap,
                "size": a.size,
                "slices": list(a.slices),
                "prompt": s.prompt,
                "cache_read": s.cache_read,
                "cost": s.cost,
                "usages": [c.usage for c in s.model],
                "breakpoints": [_breakpoints(c.body) for c in s.model],
                "calls": s.calls,
                "rereads": s.rereads,
                "wall_seconds": round(s.wall_seconds, 4),
            }
        )
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def run(
    seed: int = 1,
    threads: int | None = None,
    *,
    quick: bool = False,
    out: TextIO = sys.stdout,
    dump_to: Path | None = None,
) -> Report:
    """Generate, replay, account, measure latency, print; return the report."""
    started = time.perf_counter()
    threads = threads if threads is not None else (6 if quick else 40)
    workload = wl.generate(seed, threads, quick=quick)
    print(f"replaying {len(workload.asks)} requests…", file=sys.stderr, flush=True)
    served = replay(workload, progress=sys.stderr)
    account(served)
    follow_ups, size = (8, 2000) if quick else (30, 2000)
    print(f"latency: {follow_ups} follow-ups on a {size}-message thread…", file=sys.stderr)
    latencies, latency_reads = measure_latency(follow_ups, size, seed)
    report = summarize(workload, served, latencies, latency_reads, size)
    report.seconds = time.perf_counter() - started
    render(report, out)
    if dump_to is not None:
        dump(report, dump_to)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="default 40 (6 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    parser.add_argument("--dump", type=Path, default=None, help="write per-request rows (JSON)")
    args = parser.parse_args(argv)
    run(args.seed, args.threads, quick=args.quick, dump_to=args.dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
