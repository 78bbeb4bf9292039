"""Cache benchmark: a family of seeded Slack workloads replayed through the real app, costed
under every caching policy.

`python -m bench.cache_bench [--seeds 1,2,3] [--profiles bursty,slow,mixed,long,cold,sparse]
[--threads N] [--quick] [--no-latency] [--dump rows.json]`

Each workload (bench/workload.py: a profile and a seed) is replayed through a fresh bot on one
simulated timeline: before each event the bot's clock, `slack.now` and `model.now` are set to
its time (nothing sleeps). Requests go to the real app as signed HTTP requests
(tests/harness.Bot, SlackUI); the model is the project's Messages API fake with the documented
cache rules. Warm-up threads (the workspace's history) run first and are not counted. Input
cost is in base-price units (input 1, 5-minute write 1.25, 1-hour write 2, read 0.1) for:
  auto         what the fake billed the bot (CACHE_TTL=auto, the default);
  off          the same bodies without cache_control: every prompt token at 1;
  5m, 1h       the same bodies marked as the bot marks them with CACHE_TTL=5m / 1h, sent in
               order to a fresh fake (tests check this equals the bot run with that setting);
  single       the same bodies with only a 5m breakpoint on the last transcript block, sent in
               order to a fresh fake;
  clairvoyant  per thread and block, over the same bodies: the cheapest schedule of writes
               (none, 5m, 1h), reads and keep-alive reads of a 5-minute entry (0.1 every 5
               minutes, or 0.1 an hour when the read writes on for an hour, renewed up to
               MAX_RENEWALS times: what auto's keep-alive does) for the times the block is
               sent, under the documented rules (a read refreshes the entry's lifetime);
               breakpoint limits and minimum lengths ignored, so a lower bound for every
               policy on these bodies (also printed without keep-alive reads: auto/d*,
               and without renewals: auto/r-);
  oracle       the fixed modes' layout, each write chosen knowing the next request's gap.
Keep-alive reads auto makes between requests run at their simulated time and are charged to
the thread's latest request; every message reaches the bot as a message event (a mention too,
before its app_mention, as Slack sends both).
All are shown as ratios to the clairvoyant policy, per workload and gap slice, with each
profile's worst seed. Also: Slack read calls per request and the bot's own time from event to
model request on a 2,000-message thread.
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
from sqlalchemy import func, select

from bench import workload as wl
from bot.app import create_app
from bot.keepalive import KIND as KEEPALIVE
from bot.keepalive import MAX_RENEWALS
from bot.prompt import SYSTEM_PROMPT
from bot.store.db import make_engine, migrate
from bot.store.models import UsageRecord
from tests.fakes.messages_api import FakeMessagesAPI, flatten_prompt
from tests.fakes.slack_api import FakeSlack
from tests.harness import Bot, SlackUI, make_settings

READ_METHODS = ("conversations.replies", "conversations.history")
INPUT, WRITE_5M, WRITE_1H, READ = 1.0, 1.25, 2.0, 0.1
OUTPUT = 5.0  # an output token, for keep-alive reads (answers' output is the same everywhere)
TTL_5M, TTL_1H = 300.0, 3600.0
TEAM_DOMAIN = "acme"

POLICIES = ("auto", "off", "5m", "1h", "single")  # what the bench compares, auto first
NO_PINGS = "clairvoyant without keep-alive"  # the bound when no policy may read to keep alive
NO_RENEWALS = "clairvoyant without renewals"  # the bound before the bot renewed 1-hour entries
ORACLE = "next-gap oracle"  # the bot's layout, each write chosen knowing the next request's gap
COSTS = (*POLICIES, "clairvoyant", NO_PINGS, NO_RENEWALS, ORACLE)
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
MAX_COST_VS_CLAIRVOYANT = 1.10
MIN_SHARE_WITHIN_TTL = 0.95
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
    pings: list[ModelCall] = field(default_factory=list)  # keep-alive reads after its answer
    # Filled in by the accounting.
    prompt: int = 0
    cache_read: int = 0
    cost: dict[str, float] = field(default_factory=dict)
    rereads: int = 0
    ping_cost: float = 0.0

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


def clairvoyant_costs(
    calls: Sequence[tuple[float, str, dict[str, Any]]], *, pings: bool = True,
    renewals: bool = True,
) -> list[float]:
    """Cost of each (time, thread, body) under the clairvoyant policy: it knows every later
    request and follows the documented cache rules block by block (see `_schedule_per_use`).

    Each block's cost is spread over the calls that send it: the writing call pays the write,
    the reading calls 0.1 each. Minimum cacheable lengths and breakpoint limits are ignored
    (a relaxation, so this is a lower bound for any policy on these bodies); prefixes are per
    thread.
    """
    uses: dict[tuple[str, str], list[int]] = defaultdict(list)  # (thread, key) -> call indexes
    sizes: dict[tuple[str, str], int] = {}
    for i, (_, thread, body) in enumerate(calls):
        for k, n in zip(*_prefix_keys(body), strict=True):
            uses[(thread, k)].append(i)
            sizes[(thread, k)] = n
    costs = [0.0] * len(calls)
    memo: dict[tuple[float, ...], list[float]] = {}
    for key, idx in uses.items():
        times = [calls[i][0] for i in idx]
        gaps = tuple(b - a for a, b in zip(times, times[1:], strict=False))
        if gaps not in memo:
            memo[gaps] = _schedule_per_use(gaps, pings, renewals)
        for i, c in zip(idx, memo[gaps], strict=True):
            costs[i] += c * sizes[key]
    return costs


def _pings(gap: float, ttl: float) -> int:
    """Keep-alive reads needed to keep an entry of `ttl` alive across `gap` (one per `ttl`)."""
    return 0 if gap <= ttl else math.ceil(gap / ttl) - 1


def _schedule_per_use(
    gaps: tuple[float, ...], pings: bool = True, renewals: bool = True
) -> list[float]:
    """What each use of one block pays per token, the uses separated by `gaps`, under the best
    choice at each use that finds no live entry: send it uncached (1), or write it with a TTL
    (1.25 / 2) that later uses read (0.1) while each comes within the TTL of the previous one
    (a read refreshes the entry's lifetime). With `pings`, a gap longer than 5 minutes may also
    be bridged by keep-alive reads of a 5-minute entry (0.1 each, one per 5 minutes, as many as
    it likes; charged to the use before the gap), the last of which may write on for an hour
    (an upgrade: the entry then lives an hour from that read; the new blocks the write needs
    after it are other blocks, left out), and a 1-hour entry may be read again just before
    each hour ends, up to MAX_RENEWALS times in a row (renewals, 0.1 each, whether or not
    anybody wrote): the actions the bot's keep-alive takes, so the bound stays below it.
    Without `renewals`: last round's bound, for comparison."""
    n = len(gaps) + 1
    states = ("dead", TTL_5M, TTL_1H)
    # cost[i][s]: the cheapest cost of uses i.. when use i finds state s; how[i][s]: (price at
    # use i, state after it, bridge the next gap or not)
    cost = [dict.fromkeys(states, 0.0) for _ in range(n + 1)]
    how: list[dict[Any, tuple[float, Any, bool]]] = [{} for _ in range(n)]
    for i in range(n - 1, -1, -1):
        gap = gaps[i] if i < n - 1 else None
        for found in states:
            if found == "dead":
                pays = [(INPUT, "dead"), (WRITE_5M, TTL_5M), (WRITE_1H, TTL_1H)]
            else:
                pays = [(READ, found)]
            options = []
            for price, after in pays:
                if gap is None:
                    options.append((price, price, after, False))
                    continue
                options.append((price + cost[i + 1]["dead"], price, after, False))
                if after != "dead" and (gap <= after or (pings and after == TTL_5M)):
                    paid = price + READ * _pings(gap, after)
                    options.append((paid + cost[i + 1][after], paid, after, True))
                if pings and after == TTL_5M and gap > TTL_5M:
                    # keep-alive reads, then one that writes on for an hour (an upgrade)
                    paid = price + READ * (1 + _pings(gap - TTL_1H, TTL_5M))
                    options.append((paid + cost[i + 1][TTL_1H], paid, (after, TTL_1H), True))
                    # an upgrade at once, then renewals
                    renewed = _pings(gap - TTL_5M, TTL_1H)
                    if renewals and 0 < renewed <= MAX_RENEWALS:
                        paid = price + READ * (1 + renewed)
                        options.append((paid + cost[i + 1][TTL_1H], paid, (after, TTL_1H), True))
                if (pings and renewals and after == TTL_1H
                        and 0 < _pings(gap, TTL_1H) <= MAX_RENEWALS):
                    paid = price + READ * _pings(gap, TTL_1H)  # renewals
                    options.append((paid + cost[i + 1][TTL_1H], paid, after, True))
            total, price, after, bridged = min(options, key=lambda o: o[0])
            cost[i][found] = total
            how[i][found] = (price, after, bridged)
    out = [0.0] * n
    found: Any = "dead"
    for i in range(n):
        price, after, bridged = how[i][found]
        out[i] = price
        found = (after[1] if isinstance(after, tuple) else after) if bridged else "dead"
    return out


def oracle_ttls(calls: Sequence[tuple[float, str, dict[str, Any]]]) -> list[str | None]:
    """For each call, the write a policy that knew when the thread's next request comes would
    choose: 5m if within 5 minutes, 1h if within the hour, none otherwise (less 5 s margin)."""
    out: list[str | None] = []
    for i, (at, thread, _) in enumerate(calls):
        later = [a for a, t, _ in calls[i + 1 :] if t == thread and a > at]
        gap = later[0] - at if later else math.inf
        out.append("5m" if gap <= TTL_5M - 5 else "1h" if gap <= TTL_1H - 5 else None)
    return out


def fixed_policy_costs(
    calls: Sequence[tuple[float, str, dict[str, Any]]], ttl: str | Sequence[str | None]
) -> list[float]:
    """Cost of each (time, thread, body) for the bot with `CACHE_TTL=ttl` (5m or 1h), sent in
    order to a fresh fake.

    The transcripts are the same whatever the policy, so the bodies are the bot's with their
    cache_control marks moved where the bot's fixed mode puts them (`bot/prompt.py`): a write
    on the last transcript block with `ttl`, and a read at the block the previous request on
    the thread wrote while the bot holds that entry alive (touched within the TTL, less 5 s).
    Other calls (compaction) are sent as they were.
    """
    costs = []
    written: dict[str, tuple[str, str, float]] = {}  # thread -> (block key, ttl, touched at)
    with FakeMessagesAPI() as fresh, httpx.Client(base_url=fresh.url, timeout=60) as client:
        headers = {"x-api-key": fresh.api_key, "anthropic-version": "2023-06-01"}
        for n, (at, thread, body) in enumerate(calls):
            fresh.now = at
            answer = body.get("system") == SYSTEM_PROMPT
            this = ttl if isinstance(ttl, str) else ttl[n]
            out = _remarked(body, written.get(thread), this, at) if answer else copy.deepcopy(body)
            out.pop("stream", None)  # the cost does not depend on streaming
            resp = client.post("/v1/messages", json=out, headers=headers)
            resp.raise_for_status()
            usage = resp.json()["usage"]
            costs.append(usage_cost(usage))
            if not answer:
                continue
            keys, _ = _prefix_keys(out)
            marked = [i for i, p in enumerate(flatten_prompt(out)) if p.ttl is not None]
            previous = written.get(thread)
            touched = usage.get("cache_creation_input_tokens") or usage.get(
                "cache_read_input_tokens"
            )
            if marked:
                last = marked[-1]
                ttl_of = flatten_prompt(out)[last].ttl or "5m"
                when = at if touched else (previous[2] if previous else -math.inf)
                written[thread] = (keys[last], ttl_of, when)
            elif previous is not None and touched:
                written[thread] = (previous[0], previous[1], at)
    return costs


def _remarked(
    body: dict[str, Any], previous: tuple[str, str, float] | None, ttl: str | None, at: float
) -> dict[str, Any]:
    out = single_breakpoint_body(body)
    content = out["messages"][-1]["content"]
    if len(content) < 2:
        return out
    if ttl is None:  # write nothing new: only the read below, if any
        content[-2].pop("cache_control", None)
    else:
        content[-2]["cache_control"] = _control(ttl)
    if previous is None or at - previous[2] > {"5m": TTL_5M, "1h": TTL_1H}[previous[1]] - 5:
        return out
    keys, _ = _prefix_keys(out)
    offset = len(keys) - len(content)  # tools and system come first
    for i in range(len(content) - 2, -1, -1):
        if keys[offset + i] == previous[0]:
            if i != len(content) - 2:
                content[i]["cache_control"] = _control("1h" if ttl == "1h" else previous[1])
            break
    return out


def _control(ttl: str) -> dict[str, str]:
    return {"type": "ephemeral"} if ttl == "5m" else {"type": "ephemeral", "ttl": ttl}


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
    """Fill in tokens, the cost under every policy and re-reads of every served request."""
    calls = [(s.ask.at, str(s.ask.thread), c.body) for s in served for c in s.model]
    owners = [s for s in served for _ in s.model]
    others = {
        "clairvoyant": clairvoyant_costs(calls),
        NO_PINGS: clairvoyant_costs(calls, pings=False),
        NO_RENEWALS: clairvoyant_costs(calls, renewals=False),
        "single": replay_single_breakpoint([(at, body) for at, _, body in calls]),
        "5m": fixed_policy_costs(calls, "5m"),
        "1h": fixed_policy_costs(calls, "1h"),
        ORACLE: fixed_policy_costs(calls, oracle_ttls(calls)),
    }
    for s in served:
        s.cost = dict.fromkeys(COSTS, 0.0)
        s.prompt = s.cache_read = 0
        s.ping_cost = 0.0
        for c in s.model:
            s.prompt += prompt_tokens(c.usage)
            s.cache_read += int(c.usage.get("cache_read_input_tokens") or 0)
            s.cost["auto"] += usage_cost(c.usage)
            s.cost["off"] += body_tokens(c.body)
        for c in s.pings:  # keep-alive reads: their input, and their one output token
            s.ping_cost += usage_cost(c.usage) + OUTPUT * int(c.usage.get("output_tokens") or 0)
        s.cost["auto"] += s.ping_cost
    for kind, costs in others.items():
        for owner, c in zip(owners, costs, strict=True):
            owner.cost[kind] += c
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


def _start_bot(
    slack: FakeSlack, model: FakeMessagesAPI, tmp: str, clock: SimClock, **settings: str
) -> Bot:
    url = f"sqlite:///{Path(tmp) / 'bench.db'}"
    migrate(make_engine(url))
    app = create_app(
        make_settings(slack, model, url, **settings),
        engine=make_engine(url),
        clock=clock,
        sleep=clock.sleep,
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


def _run_due_jobs(
    bot: Bot,
    clock: SimClock,
    slack: FakeSlack,
    model: FakeMessagesAPI,
    until: float,
    threads: dict[tuple[str, str], int],
) -> list[tuple[float, int, list[ModelCall]]]:
    """Run the jobs the bot deferred (keep-alive reads) that fall due before `until`, each at
    its own simulated time. Returns the model calls each made with the workload thread they
    were made for (`threads`: (channel, parent ts) -> thread), read from the ledger's
    keep-alive rows, which follow the calls one to one."""
    out = []
    queue = bot.app.queue
    while True:
        due = queue.next_due()
        if due is None or due.timestamp() >= until:
            return out
        at = max(clock.now, due.timestamp())
        _set_time(at, clock, slack, model)
        req_from, usage_from = len(model.requests), len(model.usages)
        with bot.app.sessions() as s:
            seen = s.scalar(select(func.max(UsageRecord.id))) or 0
        queue.wake()
        bot.wait()
        calls = _model_calls(model, req_from, usage_from)
        with bot.app.sessions() as s:
            rows = s.execute(
                select(UsageRecord.channel_id, UsageRecord.thread_ts)
                .where(UsageRecord.id > seen, UsageRecord.kind == KEEPALIVE)
                .order_by(UsageRecord.id)
            ).all()
        assert len(rows) == len(calls), "every keep-alive call has its ledger row"
        for (channel, thread_ts), call in zip(rows, calls, strict=True):
            out.append((at, threads[(channel, thread_ts)], [call]))


def replay(
    workload: wl.Workload,
    *,
    progress: TextIO | None = None,
    events: bool = True,
    keepalive: bool = True,
    rule: str = "",
    **settings: str,
) -> list[Served]:
    """Run every event of `workload` through a fresh bot (`settings`: more settings by name,
    e.g. cache_ttl="5m"); one Served per request, warm-up requests included. `events`: every
    message is delivered to the bot as Slack's message event (so it keeps transcripts and sees
    activity; a mention's before its app_mention), else only posted to the fake; jobs the bot
    defers (keep-alive reads) run at their simulated time, their calls owned by the thread's
    latest request."""
    served: list[Served] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeSlack(team_domain=TEAM_DOMAIN) as slack,
        FakeMessagesAPI() as model,
    ):
        _setup(slack, workload)
        clock = SimClock(workload.events[0].at)
        bot = _start_bot(slack, model, tmp, clock, **settings)
        if not keepalive:
            bot.app.service.keepalive = None
        elif rule and bot.app.service.keepalive is not None:
            bot.app.service.keepalive.rule = rule
        ui = SlackUI(bot)
        stamps: dict[int, list[str]] = defaultdict(list)  # thread -> ts of its messages
        channel_of = {p.index: p.channel for p in workload.threads}
        asks = len(workload.asks) + len(workload.warmup_asks)
        last: dict[int, Served] = {}  # thread -> its latest request, which owns later pings
        parents: dict[tuple[str, str], int] = {}  # (channel, parent ts) -> workload thread
        try:
            for event in workload.events:
                due = _run_due_jobs(bot, clock, slack, model, event.at, parents)
                for _, thread, calls in due:
                    owner = last.get(thread)
                    if owner is not None:
                        owner.pings.extend(calls)
                _set_time(event.at, clock, slack, model)
                channel = channel_of[event.thread]
                ts_list = stamps[event.thread]
                if isinstance(event, wl.Post):
                    assert event.index == len(ts_list)
                    parent = ts_list[0] if ts_list else None
                    if events:  # Slack delivers the message event: the bot keeps it
                        posted = slack.post_event(
                            channel, event.text, user=event.user, thread_ts=parent
                        )
                        ts_list.append(posted["ts"])
                        bot.deliver(posted)  # stored before the ack, like Slack's delivery
                    else:
                        ts_list.append(
                            slack.add_message(
                                channel, event.text, user=event.user, thread_ts=parent
                            )
                        )
                    if parent is None:
                        parents[(channel, ts_list[0])] = event.thread
                    continue
                calls_from, reads_from = len(slack.calls), len(slack.reads)
                req_from, usage_from = len(model.requests), len(model.usages)
                started = time.perf_counter()
                parent = ts_list[0]
                if event.kind == "mention" and events:  # as Slack sends it: message, then
                    posted = slack.post_event(  # app_mention (the bot keeps the message)
                        channel, f"<@UBOT> {event.text}", user=event.user, thread_ts=parent
                    )
                    ts_list.append(posted["ts"])
                    bot.deliver(posted)
                    bot.event(slack.app_mention_event(channel, posted["ts"]))
                elif event.kind == "mention":
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
                last[event.thread] = served[-1]
                if progress is not None and len(served) % 50 == 0:
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
    cost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COSTS, 0.0))
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
    def losses(self) -> list[str]:
        """The policies auto is not cheaper than on this slice."""
        return [k for k in POLICIES[1:] if self.cost["auto"] >= self.cost[k]]

    def per_request(self, value: float) -> float:
        return value / self.requests if self.requests else 0.0


def tally(served: Iterable[Served]) -> dict[str, Row]:
    """The rows of the table over `served`."""
    rows = {name: Row(name) for name in ROWS}
    for s in served:
        for name in s.rows:
            rows[name].add(s)
    return rows


@dataclass
class Run:
    """One workload (a profile and a seed) replayed and costed."""

    workload: wl.Workload
    served: list[Served]
    rows: dict[str, Row]


@dataclass
class Family:
    """Every seed of one profile; `rows` add the seeds up."""

    profile: wl.Profile
    runs: list[Run]
    rows: dict[str, Row]

    def worst(self) -> Run:
        """The seed where auto is furthest from the clairvoyant policy."""
        return max(self.runs, key=lambda r: r.rows[ALL].vs_clairvoyant("auto"))


@dataclass
class Report:
    """Everything the bench measured."""

    families: list[Family]
    latencies: list[float]
    latency_reads: list[int]
    latency_size: int
    seconds: float = 0.0
    targets: list[tuple[str, str, bool]] = field(default_factory=list)

    @property
    def served(self) -> list[Served]:
        return [s for f in self.families for r in f.runs for s in r.served]

    @property
    def runs(self) -> list[Run]:
        return [r for f in self.families for r in f.runs]


def summarize(
    families: list[Family], latencies: list[float], latency_reads: list[int], latency_size: int
) -> Report:
    """The report and its targets."""
    report = Report(families, latencies, latency_reads, latency_size)
    losses = [
        f"{f.profile.name}: not below {', '.join(f.rows[ALL].losses)}"
        for f in families
        if f.rows[ALL].losses
    ]
    report.targets.append(
        (
            "auto cheaper than off, 5m, 1h and the single breakpoint on every workload",
            "yes" if not losses else "; ".join(losses),
            not losses,
        )
    )
    for f in families:
        if f.profile.name == "mixed":
            ratio = f.rows[ALL].vs_clairvoyant("auto")
            report.targets.append(
                (
                    f"auto <= {MAX_COST_VS_CLAIRVOYANT:.2f} x clairvoyant on the mixed workload",
                    f"{ratio:.3f} x",
                    ratio <= MAX_COST_VS_CLAIRVOYANT,
                )
            )
    worst = max(families, key=lambda f: f.rows[ALL].vs_clairvoyant("auto"))
    run = max(report.runs, key=lambda r: r.rows[ALL].vs_clairvoyant("auto"))
    report.targets.append(
        (
            "worst workload (info)",
            f"{worst.profile.name} {worst.rows[ALL].vs_clairvoyant('auto'):.3f} x clairvoyant; "
            f"worst single run {run.workload.profile} seed {run.workload.seed} "
            f"{run.rows[ALL].vs_clairvoyant('auto'):.3f} x",
            True,
        )
    )
    short = Row(wl.SHORT)
    for s in report.served:
        if wl.SHORT in s.rows:
            short.add(s)
    low = [
        f"{f.profile.name} {f.rows[wl.SHORT].share:.1%}"
        for f in families
        if f.rows[wl.SHORT].requests and f.rows[wl.SHORT].share < MIN_SHARE_WITHIN_TTL
    ]
    report.targets.append(
        (
            f">= {MIN_SHARE_WITHIN_TTL:.0%} of prompt tokens from cache on follow-ups within 5 min",
            f"{short.share:.1%} over {short.requests} requests"
            + (f"; below on {', '.join(low)}" if low else ""),
            short.requests > 0 and short.share >= MIN_SHARE_WITHIN_TTL and not low,
        )
    )
    follow = [s for s in report.served if s.ask.gap is not None]
    over = [s for s in follow if s.read_calls > MAX_READS_PER_FOLLOW_UP]
    most = max((s.read_calls for s in follow), default=0)
    mean = sum(s.read_calls for s in follow) / len(follow) if follow else 0.0
    report.targets.append(
        (
            f"at most {MAX_READS_PER_FOLLOW_UP} Slack read call per follow-up "
            "(users.info look-ups not counted)",
            f"max {most}, mean {mean:.2f}, {len(over)} of {len(follow)} follow-ups over; "
            f"users.info on follow-ups: {sum(s.calls.count('users.info') for s in follow)}",
            not over,
        )
    )
    return report


def _ratios(row: Row) -> str:
    return " ".join(f"{row.vs_clairvoyant(k):>6.3f}" for k in POLICIES)


HEAD = (
    f"{'slice':<20} {'reqs':>5} {'cached':>7} {'(d) tokens':>11} "
    + " ".join(f"{k:>6}" for k in POLICIES)
    + f" {'auto<all':>8} {'reads/req':>9}"
)


def render_family(family: Family, out: TextIO) -> None:
    """One profile's table: every slice, each policy as a ratio to the clairvoyant one."""
    prof = family.profile
    seeds = ", ".join(str(r.workload.seed) for r in family.runs)
    print(f"\n== {prof.name}: {prof.about} (seeds {seeds})", file=out)
    for run in family.runs:
        print("  " + wl.describe(run.workload).replace("\n", "\n  "), file=out)
    print(HEAD, file=out)
    print("-" * len(HEAD), file=out)
    for name in ROWS:
        r = family.rows[name]
        if not r.requests:
            print(f"{ROW_LABELS.get(name, name):<20} {0:>5}", file=out)
            continue
        mark = "yes" if not r.losses else "no: " + ",".join(r.losses)
        print(
            f"{ROW_LABELS.get(name, name):<20} {r.requests:>5} {r.share:>7.1%} "
            f"{r.cost['clairvoyant']:>11,.0f} {_ratios(r)} {mark:>8} "
            f"{r.per_request(r.read_calls):>9.2f}",
            file=out,
        )
    per_seed = ", ".join(
        f"seed {r.workload.seed} {r.rows[ALL].vs_clairvoyant('auto'):.3f}"
        + ("" if not r.rows[ALL].losses else f" (not below {','.join(r.rows[ALL].losses)})")
        for r in family.runs
    )
    print(f"auto vs clairvoyant per seed: {per_seed}", file=out)


def render(report: Report, out: TextIO) -> None:
    """Print every family's table, the summary, the targets and the latency figures."""
    print(
        "input cost in base-price units (input 1, 5m write 1.25, 1h write 2, read 0.1), as a "
        "ratio to the clairvoyant policy (d); off = no caching, single = one 5m breakpoint",
        file=out,
    )
    for family in report.families:
        render_family(family, out)
    print("\nsummary, all requests (ratio to clairvoyant; worst seed of auto)", file=out)
    head = f"{'workload':<10} {'reqs':>5} " + " ".join(f"{k:>6}" for k in POLICIES)
    print(
        head + f" {'worst':>6} {'auto cheapest':>13} {'auto/d*':>8} {'auto/r-':>8} "
        f"{'oracle':>7}",
        file=out,
    )
    for f in report.families:
        r = f.rows[ALL]
        cheapest = "yes" if not r.losses else "no"
        worst = f.worst().rows[ALL].vs_clairvoyant("auto")
        nopings = r.cost["auto"] / r.cost[NO_PINGS] if r.cost[NO_PINGS] else float("nan")
        renewing = r.cost["auto"] / r.cost[NO_RENEWALS] if r.cost[NO_RENEWALS] else float("nan")
        print(
            f"{f.profile.name:<10} {r.requests:>5} {_ratios(r)} {worst:>6.3f} {cheapest:>13} "
            f"{nopings:>8.3f} {renewing:>8.3f} {r.vs_clairvoyant(ORACLE):>7.3f}",
            file=out,
        )
    print(
        "(auto/d*: auto against the clairvoyant policy without keep-alive reads, the bound "
        "before they existed; auto/r-: against the bound without renewals, the one before "
        "the bot renewed 1-hour entries; oracle: the fixed modes' layout, each write chosen "
        "knowing when the next request comes, no keep-alive, against the clairvoyant policy)",
        file=out,
    )
    pings = [s for s in report.served if s.pings]
    if pings:
        auto = sum(s.cost["auto"] for s in report.served)
        spent = sum(s.ping_cost for s in report.served)
        count = sum(len(s.pings) for s in report.served)
        print(
            f"\nkeep-alive reads: {count} after {len(pings)} requests, "
            f"{spent / auto:.1%} of auto's cost",
            file=out,
        )
    if report.latencies:
        lat = [x * 1000 for x in report.latencies]
        print(
            f"\nbot time, event -> model request, {report.latency_size:,}-message thread, "
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
    for run in report.runs:
        for s in run.served:
            a = s.ask
            rows.append(
                {
                    "profile": run.workload.profile,
                    "seed": run.workload.seed,
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
                    "pings": [c.usage for c in s.pings],
                    "ping_cost": s.ping_cost,
                    "wall_seconds": round(s.wall_seconds, 4),
                }
            )
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


def run_workload(
    workload: wl.Workload, *, keepalive: bool = True, rule: str = "", **settings: str
) -> Run:
    """Replay `workload` through a fresh bot and cost its measured requests every way."""
    replayed = replay(workload, progress=sys.stderr, keepalive=keepalive, rule=rule, **settings)
    served = [s for s in replayed if not s.ask.warmup]
    account(served)
    return Run(workload, served, tally(served))


def run(
    seeds: Sequence[int] = (1, 2, 3),
    profiles: Sequence[str] = tuple(wl.PROFILES),
    threads: int | None = None,
    *,
    quick: bool = False,
    latency: bool = True,
    out: TextIO = sys.stdout,
    dump_to: Path | None = None,
    keepalive: bool = True,
    rule: str = "",
) -> Report:
    """Generate, replay and account every profile over every seed, measure latency, print."""
    started = time.perf_counter()
    families = []
    for name in profiles:
        runs = []
        for seed in seeds:
            n = threads if threads is not None else (6 if quick else None)
            workload = wl.generate(seed, n, quick=quick, profile=name)
            print(
                f"{name} seed {seed}: replaying {len(workload.asks)} requests "
                f"(+{len(workload.warmup_asks)} warm-up)…",
                file=sys.stderr,
                flush=True,
            )
            runs.append(run_workload(workload, keepalive=keepalive, rule=rule))
        rows = tally(s for r in runs for s in r.served)
        families.append(Family(wl.PROFILES[name], runs, rows))
    latencies: list[float] = []
    latency_reads: list[int] = []
    size = 2000
    if latency:
        follow_ups = 8 if quick else 30
        print(f"latency: {follow_ups} follow-ups on a {size}-message thread…", file=sys.stderr)
        latencies, latency_reads = measure_latency(follow_ups, size, seeds[0])
    report = summarize(families, latencies, latency_reads, size)
    report.seconds = time.perf_counter() - started
    render(report, out)
    if dump_to is not None:
        dump(report, dump_to)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default=None, help="comma-separated, default 1,2,3 (1 quick)")
    parser.add_argument(
        "--profiles", default=",".join(wl.PROFILES), help="comma-separated workload profiles"
    )
    parser.add_argument("--threads", type=int, default=None, help="measured threads per run")
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency figures")
    parser.add_argument("--dump", type=Path, default=None, help="write per-request rows (JSON)")
    parser.add_argument(
        "--no-keepalive", action="store_true", help="auto without keep-alive reads (to compare)"
    )
    parser.add_argument(
        "--keepalive-rule",
        choices=("learned", "odds", "activity"),
        default="",
        help="what decides a keep-alive read (default: the bot's, learned)",
    )
    args = parser.parse_args(argv)
    seeds = [int(x) for x in (args.seeds or ("1" if args.quick else "1,2,3")).split(",")]
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in wl.PROFILES]
    if unknown:
        parser.error(f"unknown profile {unknown[0]!r}; known: {', '.join(wl.PROFILES)}")
    run(
        seeds,
        profiles,
        args.threads,
        quick=args.quick,
        latency=not args.no_latency,
        dump_to=args.dump,
        keepalive=not args.no_keepalive,
        rule=args.keepalive_rule,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
