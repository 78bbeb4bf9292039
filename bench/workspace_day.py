"""A workspace's day under Slack's read limits: messages by event, mentions, recaps, one outage.

`python -m bench.workspace_day [--seed 1] [--small]`

The real app (signed HTTP requests, waitress, the job queue and workers, SQLite) runs against the
loopback fakes in tests/fakes, on the fake Slack's clock (`create_app(clock=slack.clock,
sleep=slack.sleep)`): nothing waits in real time. The day, the same for every run:

- before the bot: threads and messages in three channels, added to the fake without events;
- the bot joins the channels (`member_joined_channel` for the bot), then hundreds of messages,
  thread replies, a few edits and deletions arrive by event through the day;
- mentions in threads kept whole from events, in threads that predate the bot (one asked twice
  within a minute, and again hours later), and after the outage in a thread active during it
  and in one untouched by it; a top-level mention; `/summarize` recaps of a window kept from
  events and of the last 24 hours;
- one outage: the bot stops, 20 minutes of messages are posted without their events, a new
  bot starts on the same database.

Between events the clock moves on; jobs deferred for Slack's read budget are run when due
(`queue.next_due()`, `queue.wake()`, `wait_idle()`), and the bot's receiver is told the process is
alive, as its heartbeat would every 20 s. The day runs with the fake at Tier 3 (SLACK_READ_TIER
=auto), at the limited tier with `auto` (the bot learns it from Slack's answers), with
`limited` set by the operator, and with `auto` and KEEP_TRANSCRIPTS=false (reads as without
kept transcripts). Printed per run: Slack read calls (conversations.replies +
history) per mention and per recap, by whether the conversation was complete from events; the
fake-clock seconds from a mention's event to its model requests; answers that waited for reads
and whether each showed a status line with an estimate ("… left") before it was deferred; the
most reads of one method in any 60 s vs the tier's allowance.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import select

from bot.app import create_app
from bot.store.data import as_utc
from bot.store.db import make_engine, migrate
from bot.store.models import Job
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import READ_METHODS, FakeSlack
from tests.harness import Bot, SlackUI, make_settings

MINUTE, HOUR = 60.0, 3600.0
ALLOWANCE = {"tier3": 50, "limited": 1}  # read requests per method per workspace per 60 s
WINDOW = 60.0
STATUS_LIFETIME = 120.0  # Slack drops a status line after two minutes
SETTLE_SECONDS = 20.0  # real seconds the app gets to finish what is due (see Day.settle)

COMPLETE = "complete from events"
PREDATES = "predates the bot, first ask"
ASKED_BEFORE = "predates the bot, asked before"
OUTAGE = "active during the outage"
# Every message arrived by event, but the thread began before the outage: the bot cannot know
# that nothing came during it without reading that window (one read, expected).
SPANS_OUTAGE = "spans the outage, no message in it"
KINDS = (COMPLETE, SPANS_OUTAGE, PREDATES, ASKED_BEFORE, OUTAGE)

USERS = [(f"U{i}", name) for i, name in enumerate(
    ("alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi"), start=1)]
CHANNELS = [("C1", "eng"), ("C2", "ops"), ("C3", "product")]
WORDS = (
    "deploy canary rollback latency p99 schema migration review flaky test on-call pager "
    "customer ticket budget roadmap launch design doc feature flag cache eviction queue backlog "
    "incident postmortem owner deadline Thursday staging eu-west us-east dashboard alert"
).split()


@dataclass(frozen=True)
class RunConfig:
    """One run of the day: the fake's read tier and the bot's SLACK_READ_TIER."""

    label: str
    fake_tier: str
    setting: str
    keep: bool = True  # KEEP_TRANSCRIPTS


RUNS = (
    RunConfig("Tier 3, SLACK_READ_TIER=auto", "tier3", "auto"),
    RunConfig("limited, SLACK_READ_TIER=auto", "limited", "auto"),
    RunConfig("limited, SLACK_READ_TIER=limited", "limited", "limited"),
    RunConfig("limited, auto, KEEP_TRANSCRIPTS=false", "limited", "auto", keep=False),
)


@dataclass
class Ask:
    """A mention or a recap, and what became of it."""

    kind: str  # "mention" or "recap"
    label: str
    channel: str
    thread: str | None  # the mention's thread (None for a recap)
    truth: str  # one of KINDS
    marker: str  # text that identifies its model request
    at: float = 0.0  # fake time the event (or command) was delivered
    url: str = ""  # a recap's response_url
    reads: Counter[str] = field(default_factory=Counter)
    throttled: int = 0  # reads Slack answered 429
    waited: bool = False  # its job was deferred for the read budget
    status_ok: bool | None = None  # waited: an estimate was showing when it was deferred
    status_delay: float | None = None  # fake seconds from the ask to that estimate
    model_at: list[float] = field(default_factory=list)  # fake times of its model requests
    answered_at: float | None = None  # of the request for the complete answer
    delivered: bool | None = None  # a recap reached its requester (response_url)

    @property
    def done_at(self) -> float:
        return float("inf") if self.answered_at is None else self.answered_at


@dataclass
class Result:
    """What one run measured."""

    config: RunConfig
    asks: list[Ask]
    other_reads: Counter[str]  # reads no ask explains (backfill on join, …)
    throttled_other: int
    max_per_window: dict[str, int]
    events: int
    real_seconds: float
    hung: int  # times the app did not settle (a job neither ran nor was deferred)
    blocked: int  # times wait_idle timed out on a job queued behind a deferred lane-mate
    learnt: str  # the tier the bot paced at in the end


def text(rng: random.Random, i: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))
    return f"m{i}: {words}."


@dataclass
class Post:
    """A message of the day's plan: when, where, in which thread (a key of the plan)."""

    at: float
    channel: str
    thread: str | None  # plan key of the thread it replies in, None for top level
    key: str | None = None  # plan key of the thread it starts


class Day:
    """The day's plan, replayed against one bot configuration."""

    def __init__(self, seed: int = 1, scale: float = 1.0, drain_hours: float = 4.0) -> None:
        self.seed = seed
        self.scale = scale
        self.drain_hours = drain_hours

    # -- the plan -----------------------------------------------------------------------------

    def plan(self) -> list[tuple[float, str, dict[str, Any]]]:
        """The day as (offset from the join in seconds, action, arguments), in time order."""
        rng = random.Random(self.seed)
        n = self.scale
        steps: list[tuple[float, str, dict[str, Any]]] = []
        self.outage = (6 * HOUR, 6 * HOUR + 20 * MINUTE)
        threads = {  # key: (channel, start, replies, spread)
            "E1": ("C1", 10 * MINUTE, 30, 3 * HOUR),
            "E2": ("C1", 5 * HOUR, 40, 2 * HOUR),  # active during the outage
            "E3": ("C2", 4 * HOUR, 25, 100 * MINUTE),  # done before the outage
            "E4": ("C2", 1 * HOUR, 30, 80 * MINUTE),
            "E5": ("C3", 2 * HOUR + 20 * MINUTE, 20, 60 * MINUTE),
            "E6": ("C3", 6 * HOUR + 25 * MINUTE, 25, 90 * MINUTE),
            "E7": ("C1", 7 * HOUR, 35, 60 * MINUTE),
            "E8": ("C2", 8 * HOUR, 30, 60 * MINUTE),
            "E9": ("C3", 3 * HOUR, 30, 4 * HOUR),
        }
        posts: list[Post] = []
        for key, (channel, start, replies, spread) in threads.items():
            posts.append(Post(start, channel, None, key))
            for _ in range(max(2, round(replies * n))):
                posts.append(Post(start + 30 + rng.random() * spread, channel, key))
        for _ in range(max(6, round(90 * n))):
            posts.append(Post(rng.uniform(2 * MINUTE, 10 * HOUR), rng.choice(CHANNELS)[0], None))
        for key in ("P1", "P2"):  # the old threads go on after the bot joined
            channel = "C1" if key == "P1" else "C2"
            for _ in range(max(2, round(6 * n))):
                posts.append(Post(rng.uniform(2 * HOUR, 4 * HOUR), channel, key))
        quiet = (self.outage[0] - MINUTE, self.outage[1] + MINUTE)  # see the module notes
        for p in posts:
            if quiet[0] <= p.at < self.outage[0] or self.outage[1] <= p.at < quiet[1]:
                continue
            steps.append((p.at, "post", {"post": p}))
        for i in range(4):  # edits and deletions of earlier messages, by event
            steps.append((HOUR * (1.5 + 2 * i), "edit", {}))
        for i in range(3):
            steps.append((HOUR * (2.2 + 2 * i), "delete", {}))
        mentions = [
            (1 * HOUR, "E1", COMPLETE),
            (1.5 * HOUR, "P1", PREDATES),
            (1.5 * HOUR + 30, "P1", ASKED_BEFORE),  # a second person, half a minute later
            (2 * HOUR, "P2", PREDATES),
            (2.5 * HOUR, "E4", COMPLETE),
            (3 * HOUR, "P3", PREDATES),
            (3.5 * HOUR, "E5", COMPLETE),
            (3.6 * HOUR, None, COMPLETE),  # top level: starts a thread
            (4.5 * HOUR, "P1", ASKED_BEFORE),
            (5 * HOUR, "E1", COMPLETE),
            (6 * HOUR + 40 * MINUTE, "E2", OUTAGE),
            (6 * HOUR + 45 * MINUTE, "E3", SPANS_OUTAGE),
            (7.5 * HOUR, "E6", COMPLETE),
            (8.5 * HOUR, "E7", COMPLETE),
            (9.7 * HOUR, "P2", ASKED_BEFORE),
        ]
        for i, (at, key, truth) in enumerate(mentions, start=1):
            steps.append((at, "mention", {"n": i, "key": key, "truth": truth}))
        steps.append((5 * HOUR + 15 * MINUTE, "recap", {"channel": "C3", "text": "3h",
                                                         "truth": COMPLETE}))
        steps.append((9.5 * HOUR, "recap", {"channel": "C2", "text": "", "truth": OUTAGE}))
        steps.append((self.outage[0], "outage", {}))
        steps.append((self.outage[1], "restart", {}))
        steps.sort(key=lambda s: s[0])
        return steps

    # -- running ------------------------------------------------------------------------------

    def run(self, config: RunConfig) -> Result:
        started = time.perf_counter()
        rng = random.Random(self.seed + 1)
        with (tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack,
              FakeMessagesAPI() as model):
            self.slack, self.model, self.rng = slack, model, rng
            slack.set_read_tier(config.fake_tier)
            url = f"sqlite:///{Path(tmp) / 'day.db'}"
            migrate(make_engine(url))
            self.settings = make_settings(slack, model, url, slack_read_tier=config.setting,
                                          keep_transcripts=str(config.keep).lower())
            self.url = url
            self.asks: list[Ask] = []
            self.threads: dict[str, str] = {}  # plan key -> thread ts
            self.channel_of: dict[str, str] = {}  # plan key -> its channel
            self.thread_truth: dict[str, bool] = {}  # ts -> every message arrived by event
            self.kept: list[tuple[str, str]] = []  # (channel, ts) of messages posted by event
            self.model_seen = 0
            self.hung = 0
            self.blocked = 0
            self.events = 0
            self.up = False
            model.reply = self._model_reply
            self._before_the_bot()
            self.join = slack.clock() + 8 * HOUR
            self._to(self.join)
            self.bot = self._start()
            for channel, _ in CHANNELS:
                self._deliver(slack.member_joined_event(channel, "UBOT"))
            for offset, action, args in self.plan():
                self._to(self.join + offset)
                getattr(self, f"_{action}")(**args)
            self._drain()
            learnt = self._learnt()
            self.bot.close()
            return self._result(config, learnt, time.perf_counter() - started)

    def _model_reply(self, body: dict[str, Any]) -> str:
        """The fake model's reply hook: note when (fake clock) each request arrived."""
        last = body["messages"][-1]["content"]
        tail = last if isinstance(last, str) else " ".join(
            b.get("text", "") for b in last if isinstance(b, dict))
        now = self.slack.clock()
        for ask in self.asks:
            if ask.marker in tail and ask.answered_at is None:
                ask.model_at.append(now)
                # a mention's partial answer is posted whole; the complete one streams
                if ask.kind == "recap" or body.get("stream"):
                    ask.answered_at = now
                break
        return FakeMessagesAPI._default_reply(body)

    def _before_the_bot(self) -> None:
        slack, rng = self.slack, self.rng
        for uid, name in USERS:
            slack.add_user(uid, name.title(), name)
        people = {u for u, _ in USERS}
        for channel, name in CHANNELS:
            slack.add_channel(channel, name, members=people, bot_member=False)
        sizes = {"P1": ("C1", 120), "P2": ("C2", 40), "P3": ("C1", 20)}
        i = 0
        for key, (channel, replies) in sizes.items():
            replies = max(3, round(replies * self.scale))
            ts = slack.add_message(channel, text(rng, i), user="U1")
            self.threads[key] = ts
            self.channel_of[key] = channel
            self.thread_truth[ts] = False
            for _ in range(replies):
                i += 1
                slack.advance(rng.uniform(20, 120))
                slack.add_message(channel, text(rng, i), user=rng.choice(USERS)[0],
                                  thread_ts=ts)
            for _ in range(max(2, round(6 * self.scale))):
                i += 1
                slack.advance(rng.uniform(60, 600))
                slack.add_message(rng.choice(CHANNELS)[0], text(rng, i),
                                  user=rng.choice(USERS)[0])

    def _start(self) -> Bot:
        app = create_app(self.settings, engine=make_engine(self.url), clock=self.slack.clock,
                         sleep=self.slack.sleep)
        bot = Bot(app, self.slack, self.model)
        app.start_receiving()  # as `serve` and `web` do
        self.up = True
        return bot

    def _to(self, when: float) -> None:
        """Move the clock to `when`, running every deferred job that falls due on the way."""
        while self.up:
            due = self.bot.app.queue.next_due()
            if due is None or due.timestamp() > when:
                break
            self._set(max(self.slack.clock(), due.timestamp()))
            self.bot.app.queue.wake()
            self.settle()
        self._set(max(self.slack.clock(), when))

    def _set(self, when: float) -> None:
        self.slack.now = when
        self.model.now = when
        if self.up and self.bot.app.receiver is not None:
            self.bot.app.receiver.seen()  # the receiver's heartbeat, on the fake's clock

    def settle(self) -> None:
        """Wait for what is due to run. `wait_idle` ignores deferred jobs but not a job queued
        behind one in its lane (a second mention in a thread whose first waits for reads):
        that one cannot run before its lane-mate, so it counts as settled too."""
        app = self.bot.app
        deadline = time.monotonic() + SETTLE_SECONDS
        while not app.wait_idle(timeout=0.3):
            if app.pool.in_flight() == 0 and self._only_blocked():
                self.blocked += 1
                return
            if time.monotonic() > deadline:
                self.hung += 1
                return

    def _only_blocked(self) -> bool:
        """Whether every job that is due sits behind a deferred job of its lane."""
        due = datetime.fromtimestamp(self.slack.clock(), UTC)
        with self.bot.app.sessions() as s:
            jobs = s.scalars(select(Job).where(Job.status.in_(("queued", "running")))
                             .order_by(Job.id)).all()
        waiting: set[str] = set()
        for job in jobs:
            run_at = as_utc(job.run_at)
            if job.status == "queued" and run_at is not None and run_at > due:
                waiting.add(job.lane)
            elif job.lane not in waiting:
                return False
        return True

    def _drain(self) -> None:
        """After the day: run deferred jobs until none is left (at most `drain_hours` on)."""
        end = self.slack.clock() + self.drain_hours * HOUR
        while (due := self.bot.app.queue.next_due()) is not None and due.timestamp() <= end:
            self._to(due.timestamp())

    def _deliver(self, event: dict[str, Any]) -> None:
        self.bot.deliver(event, wait=False)
        self.events += 1
        self.settle()

    # -- actions --------------------------------------------------------------------------------

    def _post(self, post: Post) -> None:
        slack, rng = self.slack, self.rng
        thread_ts = self.threads.get(post.thread) if post.thread else None
        if post.thread and thread_ts is None:
            return  # its parent falls in the quiet minute before the outage
        user = rng.choice(USERS)[0]
        body = text(rng, len(self.kept) + 1000)
        if self.up:
            event = slack.post_event(post.channel, body, user=user, thread_ts=thread_ts)
            ts = event["ts"]
            self._deliver(event)
            self.kept.append((post.channel, ts))
        else:
            ts = slack.add_message(post.channel, body, user=user, thread_ts=thread_ts)
            if thread_ts is not None:
                self.thread_truth[thread_ts] = False
        if post.key:
            self.threads[post.key] = ts
            self.channel_of[post.key] = post.channel
            self.thread_truth[ts] = self.up

    def _edit(self) -> None:
        channel, ts = self.rng.choice(self.kept)
        event = self.slack.edit_event(channel, ts, text(self.rng, 9000) + " (edited)")
        if self.up:  # during the outage the event is lost
            self._deliver(event)

    def _delete(self) -> None:
        parents = set(self.threads.values())
        choices = [(c, ts) for c, ts in self.kept if ts not in parents]
        channel, ts = self.rng.choice(choices)
        self.kept.remove((channel, ts))
        event = self.slack.delete_event(channel, ts)
        if self.up:
            self._deliver(event)

    def _mention(self, n: int, key: str | None, truth: str) -> None:
        slack = self.slack
        thread_ts = self.threads[key] if key else None
        channel = self.channel_of[key] if key else "C3"
        if thread_ts is not None:  # the plan's label agrees with what happened
            assert self.thread_truth[thread_ts] == (truth in (COMPLETE, SPANS_OUTAGE)), key
        marker = f"question #{n}"
        words = " ".join(self.rng.choice(WORDS) for _ in range(6))
        user = USERS[n % len(USERS)][0]
        event = slack.post_event(channel, f"<@UBOT> {marker}: what about {words}?",
                                 user=user, thread_ts=thread_ts)
        ts = event["ts"]
        ask = Ask("mention", f"#{n} {key or 'top-level'}", channel, thread_ts or ts, truth,
                  marker, at=slack.clock())
        self.asks.append(ask)
        self._deliver(event)
        self.kept.append((channel, ts))
        mention = {"type": "app_mention", "user": user, "text": event["text"], "ts": ts,
                   "channel": channel, "team": slack.team_id, "event_ts": ts}
        if thread_ts:
            mention["thread_ts"] = thread_ts
        self._deliver(mention)
        self._check_waiting(ask)

    def _check_waiting(self, ask: Ask) -> None:
        """Right after the ask's first run: did it wait for reads, and was an estimate showing?"""
        if ask.answered_at is not None:
            return
        ask.waited = True
        now = self.slack.clock()
        if ask.kind == "recap":
            said = [r for r in self.slack.responses
                    if r["_url"] == ask.url and " to go" in (r.get("text") or "")]
            ask.status_ok = bool(said)
            ask.status_delay = 0.0 if said else None
            return
        lines = [s for s in self.slack.statuses
                 if s["channel_id"] == ask.channel and s["thread_ts"] == ask.thread]
        showing = lines[-1] if lines else None
        ask.status_ok = bool(showing and " left" in showing.get("status", "")
                             and now - showing["_at"] < STATUS_LIFETIME)
        after = [s for s in lines if s["_at"] >= ask.at and " left" in s.get("status", "")]
        if after:
            ask.status_delay = after[0]["_at"] - ask.at
        elif ask.status_ok and showing is not None:
            ask.status_delay = showing["_at"] - ask.at  # an earlier ask's, still showing

    def _recap(self, channel: str, text: str, truth: str) -> None:
        ui = SlackUI(self.bot)
        n = sum(a.kind == "recap" for a in self.asks) + 1
        ask = Ask("recap", f"recap {n} {channel} {text or '24h'}", channel, None, truth,
                  "Recap this channel's activity", at=self.slack.clock())
        self.asks.append(ask)
        _, ask.url = ui.command(text, channel=channel, user="U2", wait=False)
        self.events += 1
        self.settle()
        self._check_waiting(ask)

    def _outage(self) -> None:
        self.bot.close()
        self.up = False

    def _restart(self) -> None:
        self.bot = self._start()

    def _learnt(self) -> str:
        budget = self.bot.app.service.budget
        return "/".join(sorted({budget.tier(self.slack.team_id, m).name for m in READ_METHODS}))

    # -- accounting -----------------------------------------------------------------------------

    def _result(self, config: RunConfig, learnt: str, real: float) -> Result:
        slack = self.slack
        reads = [params for name, params in slack.calls if name in READ_METHODS]
        other: Counter[str] = Counter()
        throttled_other = 0
        for params, entry in zip(reads, slack.read_log, strict=True):
            ask = self._owner(entry, params)
            if ask is None:
                if entry["throttled"]:
                    throttled_other += 1
                else:
                    other[entry["method"]] += 1
            elif entry["throttled"]:
                ask.throttled += 1
            else:
                ask.reads[entry["method"]] += 1
        for ask in self.asks:  # a recap is delivered with its share button
            ask.delivered = any(
                b.get("type") == "actions" for r in slack.responses if r["_url"] == ask.url
                for b in r.get("blocks") or []) if ask.kind == "recap" else None
        windows = {m: slack.max_reads_per_window(slack.team_id, m, WINDOW) for m in READ_METHODS}
        return Result(config, self.asks, other, throttled_other, windows, self.events, real,
                      self.hung, self.blocked, learnt)

    def _owner(self, entry: dict[str, Any], params: dict[str, Any]) -> Ask | None:
        """The ask a read was made for: the earliest unanswered one it can belong to."""
        at, channel = entry["at"], entry["channel"]
        live = [a for a in self.asks if a.at <= at <= a.done_at and a.channel == channel]
        if entry["method"] == "conversations.replies":
            for a in live:
                if a.kind == "mention" and a.thread == params.get("ts"):
                    return a
        return next((a for a in live if a.kind == "recap"), None)


# -- the report ---------------------------------------------------------------------------


def _reads(asks: list[Ask]) -> str:
    if not asks:
        return "-"
    per = [sum(a.reads.values()) for a in asks]
    return f"{statistics.mean(per):.1f} (max {max(per)})"


def _secs(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} / {max(values):.0f}"


def report(results: list[Result], out: TextIO) -> None:
    for r in results:
        cfg = r.config
        out.write(f"\n== {cfg.label}  (fake Slack: {cfg.fake_tier}; bot paced at {r.learnt}; "
                  f"{r.events} events; {r.real_seconds:.1f} s real)\n")
        out.write(f"{'':40} {'asks':>4} {'reads each':>12} {'429s':>5} {'waited':>6} "
                  f"{'to 1st request s':>17} {'to answer s':>12}\n")
        for kind in ("mention", "recap"):
            for truth in KINDS:
                group = [a for a in r.asks if a.kind == kind and a.truth == truth]
                if not group:
                    continue
                first = [a.model_at[0] - a.at for a in group if a.model_at]
                last = [a.done_at - a.at for a in group if a.answered_at is not None]
                out.write(
                    f"{kind + 's, ' + truth:40} {len(group):>4} {_reads(group):>12} "
                    f"{sum(a.throttled for a in group):>5} {sum(a.waited for a in group):>6} "
                    f"{_secs(first):>17} {_secs(last):>12}\n"
                )
        unanswered = [a.label for a in r.asks if a.answered_at is None]
        waiting = [a for a in r.asks if a.waited]
        shown = [a for a in waiting if a.status_ok]
        delays = [a.status_delay for a in shown if a.status_delay is not None]
        out.write(f"other reads (backfill on join, …): "
                  f"{dict(r.other_reads) or 0}, 429s {r.throttled_other}\n")
        allowance = ALLOWANCE[cfg.fake_tier]
        most = ", ".join(f"{m} {n}" for m, n in r.max_per_window.items())
        verdict = "within" if max(r.max_per_window.values()) <= allowance else "OVER"
        out.write(f"most reads in any 60 s: {most} (allowance {allowance}: {verdict})\n")
        out.write(f"answers that waited for reads: {len(waiting)}; estimate showing when "
                  f"deferred: {len(shown)}/{len(waiting)}"
                  + (f" (fake s after the ask: max {max(delays):.0f})" if delays else "")
                  + (f"; without: {', '.join(a.label for a in waiting if not a.status_ok)}"
                     if len(shown) < len(waiting) else "") + "\n")
        if unanswered:
            out.write(f"never reached the model: {', '.join(unanswered)}\n")
        lost = [a.label for a in r.asks if a.answered_at is not None and a.delivered is False]
        if lost:
            out.write(f"answered but not delivered (response_url expired): {', '.join(lost)}\n")
        if r.blocked:
            out.write(f"wait_idle() timed out {r.blocked} times on a job queued behind a "
                      "deferred one in its lane\n")
        if r.hung:
            out.write(f"the app did not settle {r.hung} times (a job neither ran nor "
                      "was deferred)\n")
        out.write("per ask: " + "; ".join(
            f"{a.label} {sum(a.reads.values())}r"
            + (f" {a.done_at - a.at:.0f}s" if a.answered_at is not None else " -")
            for a in r.asks) + "\n")


def run(seed: int = 1, scale: float = 1.0, runs: tuple[RunConfig, ...] = RUNS,
        out: TextIO = sys.stdout, drain_hours: float = 4.0) -> list[Result]:
    """Run the day once per configuration and print the figures to `out`."""
    day = Day(seed, scale, drain_hours)
    results = [day.run(cfg) for cfg in runs]
    out.write("Slack read calls (conversations.replies + history) per ask; 'to 1st request' "
              "/ 'to answer': fake-clock seconds from the ask to its first model request (a "
              "partial answer) and to its last (the complete one), median / max.\n")
    report(results, out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="a tenth of the messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the bot's warnings (429s learnt, …) are counted
    logging.getLogger("waitress").setLevel(logging.CRITICAL)  # a closing Bot's socket race
    run(args.seed, 0.1 if args.small else 1.0)


if __name__ == "__main__":
    main()
