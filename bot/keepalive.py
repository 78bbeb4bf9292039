"""Keep-alive reads: keep a thread's 5-minute cache entry alive while people are still writing.

A read refreshes a cache entry's lifetime (the Messages API: the 5-minute TTL is "refreshed
free on every hit"). After an answer that leaves the thread's newest entry (the tail) on a
5-minute TTL, a `keepalive` job is queued on the thread for shortly before that entry expires
(`LEAD` seconds). When it runs it sends one request with the same prefix, ending at the tail's
breakpoint, and `max_tokens` 1: it reads the prefix at 0.1x and refreshes the entry for another
5 minutes, where a follow-up after the entry expired would pay to send and write it again
(1.25x, or 2x for a 1-hour write made up front). Then it queues itself again.

An upgrade instead of a read: when the thread's next request is likely within the hour
(the TTL policy's odds after its last request, `Rhythm.odds`, moved towards what followed the
workspace's earlier upgrades, `upgrade_odds`), the read also sends what was said
since the answer, as kept (the mention, the answer, the new messages: the next request's prefix,
`AnswerService.prefix_now`), and writes it for an hour (1h breakpoints; the API reads the 5-minute
entry and writes the rest, and the new entry keeps the whole prefix for an hour). It costs the
read plus 2x the new tokens, where reads every 5 minutes cost 0.1x the prefix each and a 1-hour
write made up front 2x the prefix. Then the reads end (the tail is a 1-hour entry). It may
upgrade when nobody wrote since the last touch too (no read pays then): the mention and the
answer, and what was written before, are the next request's prefix, and cheap to write.

A renewal: shortly before the thread's 1-hour entry expires (`LEAD` seconds), whatever wrote
it (an upgrade, a request that wrote its tail for an hour, or the anchor beneath a 5-minute tail
whose reads ended), if somebody wrote in the thread within the last `RECENT` seconds, the
keep-alive upgrades again: it reads the entry (0.1x what it holds, which refreshes it) and
writes everything after it for another hour, where the next request would write the whole
prefix again (1.25x). A thread still being discussed an hour after its answer is often asked
about again (the bench's workloads: 28-37 % within the next hour when somebody wrote in the
last 10 minutes, 0-6 % otherwise). The odds are the workspace's own renewals' (`renewal_odds`,
from START_RENEWED; early ones, within the hour of the thread's last request, apart), weighed
as an upgrade's; at most `MAX_RENEWALS` in a row. A renewal counts as followed when a request
came within its hour or within a later one of its chain (`_bridged`); one declined on an active
thread is noted (`RenewalDeclined`) and counts as a renewal would have, so unfollowed renewals
cannot stop renewals for good. A new answer on the thread drops a waiting
renewal.

It reads only while the thread is active and it pays: it stops (unless it upgrades) as soon as
nobody has written in the thread since the previous touch (the answer, or the previous
keep-alive read), when the workspace's earlier keep-alive reads after the same kind of request
were followed by a request within their 5 minutes less often than a read needs to pay
(`track_record`, from the ledger, moved towards its other reads and from a start belief;
`needed_odds`: 8.7 % when a request then would write the prefix again for 5 minutes, 5.3 %
when for an hour, more above a live 1-hour anchor), as soon as a newer request changed the
thread's tail, after `MAX_PINGS` reads, and when a spend budget does not leave room for it.
Activity comes from the kept transcript (message events, bot/keeping.py): a workspace that does
not keep transcripts gets none.

A keep-alive read posts nothing in Slack; its usage is a ledger row of kind `keepalive`, so the
digest and budgets count it. The job's payload holds the request body (the thread's rendered
prefix) for as long as the job lives: finished jobs are deleted after 2 days (housekeeping).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from bot.budgets import BudgetExceeded, Budgets
from bot.jobs import Deferred, Handler, JobQueue
from bot.ledger import Ledger, usage_row
from bot.llm import LLMError, MessagesClient
from bot.pricing import WRITE_1H, WRITE_5M, price_for
from bot.prompt import Built
from bot.store import data
from bot.store.models import Job, RenewalDeclined, ThreadMessage, ThreadState, UsageRecord
from bot.ttl_policy import (
    KEEP_ALIVE_ODDS,
    MISS,
    READ,
    Habits,
    entries,
    futures,
    next_within,
    record_entries,
    rhythm_after,
    shrunk,
)

log = logging.getLogger(__name__)

KIND = "keepalive"
TTL = 300.0  # seconds: the 5-minute entry a keep-alive read refreshes
LEAD = 30.0  # seconds before the entry expires that the read is sent
MAX_PINGS = 6  # reads after one answer at most (about half an hour)
MAX_TOKENS = 1  # the read's answer is thrown away
UPGRADE_TTL = 3600.0  # seconds: what an upgrade writes the prefix for
# A renewal: shortly before the thread's 1-hour entry expires, the thread is upgraded again if
# somebody wrote in it within the last RECENT seconds, at most MAX_RENEWALS times in a row (eight
# hours: threads still discussed after four were mostly asked again, bench). Before a
# workspace's own renewals say otherwise, the chance that one is followed by a request within
# its hour, worth START_WEIGHT renewals.
RECENT = 900.0
MAX_RENEWALS = 7
START_RENEWED = 0.25
# A keep-alive call this long after the thread's last request is a renewal: reads and first
# upgrades come within MAX_PINGS reads of it (under half an hour), renewals about an hour or more.
RENEWAL_AFTER = UPGRADE_TTL / 2


@dataclass(frozen=True)
class KeepCaller:
    """The ledger's view of a keep-alive read (`bot.ledger.Caller`)."""

    team_id: str
    channel_id: str
    thread_ts: str
    user_id: str
    kind: str = KIND


def lane_of(team_id: str, channel_id: str, thread_ts: str) -> str:
    """The keep-alive's job lane: apart from the thread's answers (it never holds one up), and
    starting with the workspace id like every lane (uninstalling deletes the workspace's jobs,
    the prompt a waiting keep-alive holds included)."""
    return f"{team_id}:{channel_id}:{thread_ts}:{KIND}"


def ping_body(body: dict[str, Any], ttl: str = "5m") -> dict[str, Any] | None:
    """The keep-alive request for an answer's `body`: the same prefix up to and including its
    last breakpoint, of `ttl` (that block keeps its mark, so the call reads the entry; an
    upgrade's, 1h, writes it), nothing after it, no streaming, `max_tokens` 1. None when the
    body's last breakpoint is not one of `ttl` in a user turn (nothing a read could keep
    alive)."""
    messages = body.get("messages") or []
    for m in range(len(messages) - 1, -1, -1):
        content = messages[m].get("content")
        if not isinstance(content, list):
            continue
        for b in range(len(content) - 1, -1, -1):
            control = content[b].get("cache_control") if isinstance(content[b], dict) else None
            if not control:
                continue
            if control.get("ttl", "5m") != ttl or messages[m].get("role") != "user":
                return None
            out = {k: copy.deepcopy(v) for k, v in body.items() if k not in ("messages", "stream")}
            kept = copy.deepcopy(messages[: m + 1])
            kept[-1]["content"] = kept[-1]["content"][: b + 1]
            out["messages"] = kept
            out["max_tokens"] = MAX_TOKENS
            return out
    return None


LEARN_DAYS = 14  # the keep-alive reads a workspace learns from: the last days'
LEARN_READS = 500  # ... at most this many, newest first
# Before a workspace's own reads say otherwise: the chance that a read made on an active thread
# is followed by a request while it keeps the entry alive, worth START_WEIGHT reads.
START_FOLLOWED = 0.3
START_WEIGHT = 5.0
DONE = ("keepalive", "compact")  # ledger kinds that are not requests


@dataclass(frozen=True)
class TrackRecord:
    """What followed the workspace's earlier keep-alive calls, from the ledger (`track_record`).

    `reads`: per context of the request they follow (the gap before it: first, short, medium,
    long) and read number after it (1, 2, 3 for the third and later), (reads whose 5 minutes
    are over, reads followed by a request on the thread within those 5 minutes). Upgrades count
    here too: they read the entry.
    `upgrades`: per context, (upgrades whose hour is over, upgrades followed by a request on the
    thread within that hour).
    `renewals`: the same for renewals (calls more than UPGRADE_TTL after the thread's last
    request: an upgrade's hour ended without one), over every context; they count nowhere
    else.
    `early`: the same for early renewals (calls more than RENEWAL_AFTER and at most UPGRADE_TTL
    after the thread's last request: the renewal of a 1-hour entry that request wrote, or of
    the anchor beneath its tail). What follows them differs from what follows the later ones,
    and unfollowed early renewals must not stop later ones that pay: a record of their own."""

    reads: dict[tuple[str, int], tuple[int, int]]
    upgrades: dict[str, tuple[int, int]]
    renewals: tuple[int, int] = (0, 0)
    early: tuple[int, int] = (0, 0)


def track_record(session: Session, team_id: str, now: datetime) -> TrackRecord:
    """The workspace's keep-alive calls of the last LEARN_DAYS (newest LEARN_READS) and what
    followed each, from the ledger. An upgrade is a call that read the entry and wrote (a read
    of a live entry writes nothing)."""
    since = now - timedelta(days=LEARN_DAYS)
    calls = session.execute(
        select(
            UsageRecord.channel_id,
            UsageRecord.thread_ts,
            UsageRecord.created_at,
            UsageRecord.cache_read_tokens,
            UsageRecord.cache_creation_tokens,
        )
        .where(
            UsageRecord.team_id == team_id,
            UsageRecord.kind == KIND,
            UsageRecord.outcome == "ok",
            UsageRecord.created_at >= since,
        )
        .order_by(UsageRecord.created_at.desc())
        .limit(LEARN_READS)
    ).all()
    declined = session.execute(
        select(
            RenewalDeclined.channel_id,
            RenewalDeclined.thread_ts,
            RenewalDeclined.at,
            RenewalDeclined.early,
        )
        .where(RenewalDeclined.team_id == team_id, RenewalDeclined.at >= since)
        .order_by(RenewalDeclined.at.desc())
        .limit(LEARN_READS)
    ).all()
    if not calls and not declined:
        return TrackRecord({}, {})
    threads = {c.thread_ts for c in calls} | {d.thread_ts for d in declined}
    asked: dict[tuple[str, str], list[float]] = {}
    for channel, thread, at in session.execute(
        select(UsageRecord.channel_id, UsageRecord.thread_ts, UsageRecord.created_at).where(
            UsageRecord.team_id == team_id,
            UsageRecord.kind.not_in(DONE),
            UsageRecord.created_at >= since,
            UsageRecord.thread_ts.in_(threads),
        )
    ):
        asked.setdefault((channel, thread), []).append(_epoch(at) or 0.0)
    by_thread: dict[tuple[str, str], list[tuple[float, bool]]] = {}
    for channel, thread, at, read, written in calls:
        upgrade = bool(read) and bool(written)
        by_thread.setdefault((channel, thread), []).append((_epoch(at) or 0.0, upgrade))
    reads: dict[tuple[str, int], list[int]] = {}
    upgrades: dict[str, list[int]] = {}
    renewals, early = [0, 0], [0, 0]
    end = now.timestamp()
    for key, times in by_thread.items():
        requests = sorted(asked.get(key, []))
        times.sort()
        bridged = _bridged(times, requests)
        for i, (at, upgrade) in enumerate(times):
            if at + TTL > end:
                continue  # its 5 minutes are not over
            before = [r for r in requests if r <= at]
            last_request = before[-1] if before else None
            if last_request is not None and at - last_request > RENEWAL_AFTER:
                if upgrade and at + UPGRADE_TTL <= end:
                    kept = renewals if at - last_request > UPGRADE_TTL else early
                    kept[0] += 1
                    kept[1] += bridged[i]
                continue
            context = data.gap_context(before[-1] - before[-2] if len(before) > 1 else None)
            number = sum(
                1 for t, _ in times[: i + 1] if last_request is None or t > last_request
            )
            counts = reads.setdefault((context, min(number, 3)), [0, 0])
            counts[0] += 1
            counts[1] += any(at < r <= at + TTL for r in requests)
            if upgrade and at + UPGRADE_TTL <= end:
                counts = upgrades.setdefault(context, [0, 0])
                counts[0] += 1
                counts[1] += _asked_within(at, requests)
    for channel, thread, at, was_early in declined:  # as if made, had no request come
        start = _epoch(at) or 0.0
        if start + UPGRADE_TTL > end:
            continue  # its hour is not over
        kept = early if was_early else renewals
        kept[0] += 1
        kept[1] += _asked_within(start, asked.get((channel, thread), []))
    return TrackRecord(
        {k: (v[0], v[1]) for k, v in reads.items()},
        {k: (v[0], v[1]) for k, v in upgrades.items()},
        (renewals[0], renewals[1]),
        (early[0], early[1]),
    )


def _asked_within(at: float, requests: list[float]) -> bool:
    """Whether one of the thread's `requests` came within the hour after `at`."""
    return any(at < r <= at + UPGRADE_TTL for r in requests)


def _bridged(times: list[tuple[float, bool]], requests: list[float]) -> list[bool]:
    """For each keep-alive call of a thread (time, upgrade), whether a request came while the
    entry it kept was alive: within its hour (an upgrade's, a renewal's), or within the hour
    of a later renewal in the same chain (the next upgrade within its hour, itself bridged).
    A renewal that only kept the prefix for the next one paid when the chain did."""
    out = [False] * len(times)
    for i in range(len(times) - 1, -1, -1):
        at, upgrade = times[i]
        if not upgrade:
            continue
        if _asked_within(at, requests):
            out[i] = True
            continue
        out[i] = any(
            u and out[j] for j, (t, u) in enumerate(times[i + 1 :], i + 1)
            if at < t <= at + UPGRADE_TTL
        )
    return out


def followed_odds(
    record: dict[tuple[str, int], tuple[int, int]], number: int, context: str
) -> float:
    """The chance that keep-alive read `number` after a request of `context` is followed by a
    request while it keeps the entry alive: the workspace's record for that context and read
    number, moved towards its record for that read number after the other contexts, itself
    moved from the start belief (each read counts once)."""
    n = min(number, 3)
    others = [v for (c, k), v in record.items() if k == n and c != context]
    reads, followed = sum(v[0] for v in others), sum(v[1] for v in others)
    base = shrunk(followed, reads, START_FOLLOWED, START_WEIGHT)
    reads, followed = record.get((context, n), (0, 0))
    return shrunk(followed, reads, base, START_WEIGHT)


def renewal_odds(record: TrackRecord, early: bool = False) -> float:
    """The chance that a renewal is followed by a request on the thread within its hour: the
    workspace's renewals (`early` ones, within the hour of the thread's last request, or the
    later ones), moved towards START_RENEWED."""
    renewed, followed = record.early if early else record.renewals
    return shrunk(followed, renewed, START_RENEWED, START_WEIGHT)


def upgrade_odds(record: TrackRecord, context: str, expected: float) -> float:
    """The chance that a request on the thread comes within an upgrade's hour: `expected` (the
    TTL policy's odds for this thread, given the time since its last request) moved towards
    what followed the workspace's earlier upgrades after a request of this `context` (each
    upgrade counts once, `expected` START_WEIGHT upgrades)."""
    upgrades, followed = record.upgrades.get(context, (0, 0))
    return shrunk(followed, upgrades, expected, START_WEIGHT)


def needed_odds(state: ThreadState, now: datetime, habits: Habits | None = None) -> float:
    """How likely the thread's next request must be to come within a read's 5 minutes for the
    read to pay. The read costs READ a token of the whole prefix. A request in its 5 minutes
    then reads the prefix and goes on from there (`alive`, per token from that request on,
    `ttl_policy.futures`); without the read it finds the prefix dead and writes it again
    (`dead`): for an hour, at 2x, when a request that late makes the next one likely within
    the hour, not only at 1.25x. The part a live 1-hour anchor holds through the read's 5
    minutes is read anyway, so only the part above it counts. Without `habits`, the saving
    is MISS - READ (KEEP_ALIVE_ODDS with no anchor). Above 1: no read pays."""
    found = entries(state, now)
    tokens = found.tail_tokens
    covered = 0
    if found.anchor is not None and found.anchor_life > TTL:
        covered = min(tokens, found.anchor_tokens)
    if tokens <= covered:
        return math.inf
    saving = MISS - READ
    last = data.as_utc(state.last_request_at)
    if habits is not None and last is not None:
        gap = (now - last).total_seconds() + TTL / 2  # when a request in the read's window comes
        dead, alive = futures(rhythm_after(state, habits).after_gap(gap).odds)
        saving = max(saving, dead - alive)
    return READ * tokens / (saving * (tokens - covered))


def _epoch(value: datetime | None) -> float | None:
    at = data.as_utc(value)
    return at.timestamp() if at is not None else None


@dataclass(frozen=True)
class _Anchor:
    """A live 1-hour anchor beneath the thread's tail: when it was last touched, and the
    thread's last request."""

    at: float
    last_request: float


def _held_anchor(state: ThreadState | None, now: datetime) -> _Anchor | None:
    """The thread's live 1-hour anchor beneath a newer tail, if any (`ttl_policy.entries`)."""
    if state is None or entries(state, now).anchor is None:
        return None
    at, last = _epoch(state.anchor_at), _epoch(state.last_request_at)
    return _Anchor(at, last) if at is not None and last is not None else None


class KeepAlive:
    """Queues keep-alive reads after answers and runs them (the `keepalive` job)."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        sessions: sessionmaker[Session],
        llm: MessagesClient,
        ledger: Ledger,
        budgets: Budgets | None,
        effective: Callable[[str], Any],
        clock: Callable[[], float] = time.time,
        habits: Callable[[Session, str, datetime], Habits] | None = None,
        prefix_now: Callable[[dict[str, Any]], Built | None] | None = None,
    ) -> None:
        self._queue = queue
        self._sessions = sessions
        self._llm = llm
        self._ledger = ledger
        self._budgets = budgets
        self._effective = effective
        self._clock = clock
        self._habits = habits  # the workspace's habits (what a read needs; rule "odds")
        self._prefix_now = prefix_now  # the thread's prefix as kept now, for an upgrade
        self.rule = "learned"  # what tells a read that pays: see `chance` (the bench compares)

    def after_answer(
        self,
        caller: KeepCaller,
        bot_user_id: str,
        body: dict[str, Any],
        ttl: str | None,
        written_at: datetime | None,
        boundary_ts: str | None,
        seen_ts: str | None = None,
        request: dict[str, Any] | None = None,
    ) -> bool:
        """Queue the first keep-alive call for an answer whose call left the thread's tail
        (`boundary_ts`, last touched `written_at`) alive: a read of a 5-minute tail, or the
        renewal of a 1-hour one (which needs `request`); True if queued.
        `seen_ts`: the newest message the answer saw (the request's own, for a mention): only
        later ones count as activity. Call once the answer's state is committed."""
        lane = lane_of(caller.team_id, caller.channel_id, caller.thread_ts)
        # A keep-alive still waiting in the lane keeps what this answer replaced, and holds the
        # request's fields; a renewal an hour away would also hold a new one up (a lane runs
        # its jobs in order).
        self._queue.drop_waiting(lane, KIND)
        touched = _epoch(written_at)
        if touched is None or not boundary_ts:
            return False
        payload: dict[str, Any] = {
            "caller": caller.__dict__,
            "bot_user_id": bot_user_id,
            "boundary_ts": boundary_ts,
            "seen_ts": seen_ts or "",
            "touched": touched,
            "pings": 0,
            "request": request,
        }
        if ttl == "1h":  # its renewal, shortly before the hour ends (it upgrades: the request)
            if not request:
                return False
            payload.update(renewals=0, body=None)
            due = touched + UPGRADE_TTL - LEAD
        elif ttl == "5m":
            ping = ping_body(body)
            if ping is None:
                return False
            payload["body"] = ping
            due = touched + TTL - LEAD
        else:
            return False
        return self._queue.enqueue(
            KIND,
            payload,
            lane=lane,
            dedupe_key=f"{lane}:{touched:.6f}",
            run_at=datetime.fromtimestamp(due, UTC),
        )

    def run(self, payload: dict[str, Any]) -> None:
        """One keep-alive read, if the thread is still active and its tail unchanged; then the
        next one is due shortly before the refreshed entry expires (`Deferred`). Or an upgrade,
        active or not, when it pays more; then none is due."""
        caller = KeepCaller(**payload["caller"])
        where = f"{caller.channel_id}/{caller.thread_ts}"
        now = datetime.fromtimestamp(self._clock(), UTC)
        renewals = payload.get("renewals")  # None: reads after an answer; else a renewal
        with self._sessions() as s:
            state = data.get_thread(s, caller.team_id, caller.channel_id, caller.thread_ts)
            why = self._stale(state, payload)
            # a read asks for activity since the last touch, a renewal within the last RECENT
            lately = {**payload, "touched": now.timestamp() - RECENT}
            since = payload if renewals is None else lately
            quiet = why is None and not self._active(s, caller, since)
            chance, need, habits, record = 0.0, math.inf, None, TrackRecord({}, {})
            if why is None and state is not None:
                record = track_record(s, caller.team_id, now)
                if not quiet and renewals is None:
                    number = payload["pings"] + 1
                    chance = self.chance(s, caller.team_id, state, number, now, record)
                habits = self._habits(s, caller.team_id, now) if self._habits else None
                need = needed_odds(state, now, habits)
        stale = why is not None
        upgrade = None
        if why is None and state is not None and renewals is not None:
            if quiet:
                why = f"nobody wrote in the thread in the last {RECENT / 60:.0f} minutes"
            else:
                last = _epoch(state.last_request_at)
                early = last is not None and now.timestamp() - last <= UPGRADE_TTL
                odds = renewal_odds(record, early)
                upgrade = self._upgrade(payload, state, now, habits, 0.0, math.inf, record, odds)
                if upgrade is None:
                    why = f"a request within the hour is {odds:.0%} likely; a renewal does not pay"
                    self._declined(caller, now, early)
        elif why is None and state is not None:
            upgrade = self._upgrade(payload, state, now, habits, chance, need, record)
            if upgrade is None and quiet:
                why = "the thread went quiet"
            elif upgrade is None and chance < need:
                why = (
                    f"a request within the next 5 minutes is {chance:.0%} likely; "
                    + (f"a read pays above {need:.1%}" if need <= 1 else
                       "a live 1-hour anchor keeps the prefix readable anyway")
                )
        if why is not None:
            log.info("keep-alive for %s ends: %s", where, why)
            renewal = None if stale or renewals is not None else self._anchor_renewal(
                payload, _held_anchor(state, now), now
            )
            if renewal is not None:
                raise renewal
            return
        body = payload["body"] if upgrade is None else upgrade[1]
        eff = self._effective(caller.team_id)
        hold = None
        if self._budgets is not None and self._budgets.enabled_for(eff):
            try:
                worst = self._worst_case(body, WRITE_1H if upgrade else WRITE_5M)
                hold = self._budgets.reserve(caller.team_id, caller.user_id, worst, now, eff)
            except BudgetExceeded:
                log.info("keep-alive for %s ends: the spend budget has no room", where)
                return
        started = time.monotonic()
        try:
            done = self._llm.create(body)
        except LLMError as exc:
            log.warning("keep-alive read for %s failed (%s); no more for now", where, exc.kind)
            self._ledger.failed(caller, exc.kind, started, body.get("model"))
            return
        finally:
            if hold is not None and self._budgets is not None:
                self._budgets.release(caller.team_id, hold)
        usage = done.usage
        now = datetime.fromtimestamp(self._clock(), UTC)
        latency_ms = int((time.monotonic() - started) * 1000)
        with self._sessions.begin() as s:
            row = usage_row(caller, done.model, usage, latency_ms, "ok", now)
            row.stop_reason = (done.stop_reason or "")[:32] or None
            data.add_usage(s, row)
            state = data.get_thread(s, caller.team_id, caller.channel_id, caller.thread_ts)
            same = state is not None and self._stale(state, payload) is None
            touched = usage.cache_read_tokens or usage.cache_creation_tokens
            held = _held_anchor(state, now) if same else None
            renewable = None
            if same and upgrade is not None and touched:
                record_entries(state, upgrade[0], usage, now)
                if state.cache_ttl == "1h" and state.cache_written_at is not None:
                    renewable = state.cache_boundary_ts
            elif same and usage.cache_read_tokens:
                state.cache_written_at = now  # the read refreshed the tail
        log.info(
            "keep-alive read %d for %s: read=%d written=%d",
            payload["pings"] + 1,
            where,
            usage.cache_read_tokens,
            usage.cache_creation_tokens,
        )
        if upgrade is not None:
            done = 0 if renewals is None else renewals + 1
            if renewable is None or done >= MAX_RENEWALS:
                log.info("keep-alive for %s ends: the prefix was written for an hour", where)
                return
            raise Deferred(  # shortly before that hour ends: renew it if people still write
                now + timedelta(seconds=UPGRADE_TTL - LEAD),
                {**payload, "touched": now.timestamp(), "boundary_ts": renewable,
                 "renewals": done, "body": None, "anchor_at": None},
            )
        if not usage.cache_read_tokens:
            log.info("keep-alive for %s ends: the entry was gone", where)
            return
        pings = payload["pings"] + 1
        if pings >= MAX_PINGS:
            log.info("keep-alive for %s ends after %d reads", where, pings)
            renewal = self._anchor_renewal({**payload, "touched": now.timestamp()}, held, now)
            if renewal is not None:
                raise renewal
            return
        at = now.timestamp()
        raise Deferred(
            now + timedelta(seconds=TTL - LEAD), {**payload, "touched": at, "pings": pings}
        )

    def _upgrade(
        self,
        payload: dict[str, Any],
        state: ThreadState,
        now: datetime,
        habits: Habits | None,
        chance: float,
        need: float,
        record: TrackRecord,
        renewal: float | None = None,
    ) -> tuple[Built, dict[str, Any]] | None:
        """Whether an upgrade beats a read (and stopping): the thread's transcript as kept now,
        the live tail read back and everything after it (the mention, the answer, what people
        wrote since) written for an hour (`AnswerService.prefix_now`). Then (what was built,
        the body to send, without the request block and with `max_tokens` 1); else None.

        Per token of the prefix: a read costs READ and saves `saving` if the next request
        comes within its 5 minutes (`chance`); an upgrade costs READ for the prefix and WRITE_1H
        for the new tokens, and saves `saving` on the prefix (above a 1-hour anchor that lives
        on) if the next request comes within the hour (the TTL policy's odds, moved towards
        what followed the workspace's earlier upgrades: `upgrade_odds`), plus the 5-minute
        write of the new tokens that request would have made. The larger expected gain wins,
        if positive."""
        if self._prefix_now is None or habits is None or not payload.get("request"):
            return None
        last = data.as_utc(state.last_request_at)
        if last is None:
            return None
        elapsed = (now - last).total_seconds()
        rhythm = rhythm_after(state, habits)
        within_hour = renewal if renewal is not None else upgrade_odds(
            record,
            data.gap_context(state.last_gap_seconds),
            next_within(rhythm.odds, elapsed, UPGRADE_TTL - LEAD),
        )
        dead, alive = futures(rhythm.after_gap(elapsed + UPGRADE_TTL / 4).odds)
        saving = max(MISS - READ, dead - alive)
        tokens = state.cache_prefix_tokens or 0
        found = entries(state, now)
        covered = 0
        if found.anchor is not None and found.anchor_life > UPGRADE_TTL / 2:
            covered = min(tokens, found.anchor_tokens)
        best = max(0.0, (chance * saving - READ) * tokens if chance >= need else 0.0)

        def gain(new: int) -> float:
            """The upgrade's expected gain when it writes `new` tokens."""
            return (
                within_hour * saving * (tokens - covered) - READ * tokens
                - (WRITE_1H - within_hour * MISS) * new
            )

        if gain(0) <= best:
            return None  # not even with nothing new to write: nothing to render
        try:
            built = self._prefix_now(payload["request"])
        except Exception:  # noqa: BLE001 - a read is still possible; the cause is logged
            log.exception("building the upgrade of %s failed", payload["caller"]["thread_ts"])
            return None
        if built is None or built.write_ttl != "1h" or not built.read_prior:
            return None
        new = built.new_tokens
        body = ping_body(built.body, "1h")  # up to the new breakpoint: no request block
        if body is None or gain(new) <= best:
            return None
        log.info(
            "keep-alive for %s/%s: a request within the hour is %.0f%% likely; writing the %d "
            "tokens since the answer for an hour",
            payload["caller"]["channel_id"],
            payload["caller"]["thread_ts"],
            within_hour * 100,
            new,
        )
        return built, body

    def chance(
        self,
        session: Session,
        team_id: str,
        state: ThreadState,
        number: int,
        now: datetime,
        record: TrackRecord | None = None,
    ) -> float:
        """The chance that the thread's next request comes while read `number` (after the
        answer) keeps the entry alive, the thread being active: by `rule`, what followed the
        workspace's earlier keep-alive reads (`learned`), the odds the TTL policy expects after
        the thread's last request (`odds`), or certain enough (`activity`)."""
        if self.rule == "learned":
            context = data.gap_context(state.last_gap_seconds)
            record = record or track_record(session, team_id, now)
            return followed_odds(record.reads, number, context)
        if self.rule == "odds" and self._habits is not None:
            last = data.as_utc(state.last_request_at)
            elapsed = (now - last).total_seconds() if last is not None else 0.0
            habits = self._habits(session, team_id, now)
            return next_within(rhythm_after(state, habits).odds, elapsed, TTL)
        return 1.0

    @staticmethod
    def _anchor_renewal(
        payload: dict[str, Any], anchor: _Anchor | None, now: datetime
    ) -> Deferred | None:
        """When the reads of a 5-minute tail end above a live 1-hour anchor: its renewal, due
        shortly before the anchor's hour ends (the job deferred to then), as for an upgrade's
        entry. None when there is no anchor, or that comes within RENEWAL_AFTER of the thread's
        last request (the reads' time: it would not count as a renewal)."""
        if anchor is None:
            return None
        due = anchor.at + UPGRADE_TTL - LEAD
        if due <= now.timestamp() or due - anchor.last_request <= RENEWAL_AFTER:
            return None
        log.info(
            "keep-alive for %s/%s: the 1-hour anchor may be renewed at %s",
            payload["caller"]["channel_id"],
            payload["caller"]["thread_ts"],
            datetime.fromtimestamp(due, UTC).strftime("%H:%M:%S UTC"),
        )
        return Deferred(
            datetime.fromtimestamp(due, UTC),
            {**payload, "renewals": 0, "anchor_at": anchor.at, "body": None},
        )

    @staticmethod
    def _stale(state: ThreadState | None, payload: dict[str, Any]) -> str | None:
        """Why the thread's tail is no longer the one this job keeps (None: it still is); for
        the renewal of an anchor, why the anchor is no longer the one it renews."""
        if state is None or state.cache_boundary_ts != payload["boundary_ts"]:
            return "a newer request moved the thread's cache entry"
        anchor_at = payload.get("anchor_at")
        if anchor_at is not None:
            held = _epoch(state.anchor_at)
            if held is None or abs(held - anchor_at) > 0.001:
                return "a newer call used the thread's 1-hour anchor"
            return None
        ttl = "5m" if payload.get("renewals") is None else "1h"
        if state.cache_ttl != ttl:
            return f"the thread's entry is no longer a {ttl} one"
        touched = _epoch(state.cache_written_at)
        if touched is None or abs(touched - payload["touched"]) > 0.001:
            return "a newer request used the thread's cache entry"
        return None

    def _declined(self, caller: KeepCaller, now: datetime, early: bool) -> None:
        """Note a renewal not made on an active thread, so what follows it is learnt too
        (`track_record`): a record that only counted the renewals made would stop renewing
        after a few unfollowed ones and never see that later ones would have paid."""
        with self._sessions.begin() as s:
            s.add(
                RenewalDeclined(
                    team_id=caller.team_id, channel_id=caller.channel_id,
                    thread_ts=caller.thread_ts, at=now, early=early,
                )
            )

    @staticmethod
    def _active(session: Session, caller: KeepCaller, payload: dict[str, Any]) -> bool:
        """Whether anybody but the bot wrote in the thread since the entry was last touched (the
        answer, or the previous keep-alive read) and after the messages the answer saw, from
        the kept transcript. (Slack ts strings of one era compare like their times.)"""
        since = max(f"{payload['touched']:.6f}", payload.get("seen_ts") or "")
        rows = session.scalars(
            select(ThreadMessage.body).where(
                ThreadMessage.team_id == caller.team_id,
                ThreadMessage.channel_id == caller.channel_id,
                ThreadMessage.thread_ts == caller.thread_ts,
                ThreadMessage.ts > since,
            )
        )
        bot = payload.get("bot_user_id")
        for raw in rows:
            message = json.loads(raw)
            if message.get("bot_id") or (bot and message.get("user") == bot):
                continue
            return True
        return False

    @staticmethod
    def _worst_case(body: dict[str, Any], write: float) -> float:
        """Dollars the call could cost at most: its prefix written (at `write`, 1.25 for a read,
        2 for an upgrade), one token out."""
        price = price_for(str(body.get("model") or ""))
        if price is None:
            return 0.0
        chars = len(json.dumps(body, ensure_ascii=False))
        return chars * price.input * write + MAX_TOKENS * price.output

    def handler(self) -> Handler:
        """The job handler: a keep-alive that keeps failing just ends (nobody is waiting)."""
        return Handler(self.run, lambda payload: None)


def _renewal_plan(record: TrackRecord, early: bool) -> str:
    """What `inspect` says of the renewal that follows an hour's entry (`early`: one written by
    the answer itself)."""
    renewed = (record.early if early else record.renewals)[0]
    return (
        f"shortly before that hour ends, if somebody wrote in the thread in the last "
        f"{RECENT / 60:.0f} minutes, a renewal (up to {MAX_RENEWALS} in a row) reads the entry "
        "again and writes what was written since for another hour; a renewal is expected to be "
        f"followed by a request {renewal_odds(record, early):.0%} of the time ({renewed} of the "
        "workspace's own so far)"
    )


def describe(
    session: Session,
    team_id: str,
    channel_id: str,
    thread_ts: str,
    *,
    mode: str,
    write_ttl: str | None,
    keeps: bool,
    now: datetime | None = None,
) -> str:
    """What keep-alive reads would do for this thread (for `inspect`): whether an answer now
    would queue them, what the workspace's record says of a first read after a request like
    this one, and the keep-alive already waiting, if any (its reads so far, when it is due,
    and whether anybody wrote since the entry was last touched)."""
    if mode != "auto":
        return f"none (CACHE_TTL={mode}: only CACHE_TTL=auto reads to keep an entry alive)"
    if not keeps:
        return "none (the workspace does not keep transcripts, so activity is not seen)"
    lane = lane_of(team_id, channel_id, thread_ts)
    job = session.scalars(
        select(Job).where(Job.lane == lane, Job.status == "queued").order_by(Job.id.desc())
    ).first()
    if write_ttl == "5m":
        plan = (
            f"after this answer, while people write in the thread, up to {MAX_PINGS} reads of "
            f"the prefix (max_tokens {MAX_TOKENS}), each {LEAD:.0f} s before the 5-minute "
            "entry expires, at 0.1x; they stop when nobody wrote since the previous one"
        )
        at = now or datetime.now(UTC)
        state = data.get_thread(session, team_id, channel_id, thread_ts)
        context = data.gap_context(state.last_gap_seconds) if state is not None else "first"
        record = track_record(session, team_id, at)
        chance = followed_odds(record.reads, 1, context)
        reads = record.reads.get((context, 1), (0, 0))[0]
        upgrades, followed = record.upgrades.get(context, (0, 0))
        plan += (
            f", or when they do not pay: the workspace's first reads after a request like the "
            f"thread's last ({context}) are expected to be followed by a request {chance:.0%} "
            f"of the time ({reads} of its own so far); they stop below the chance a read needs: "
            f"{KEEP_ALIVE_ODDS:.1%} when a request then would write the prefix for 5 minutes "
            f"again, {READ / (WRITE_1H - READ):.1%} when for an hour, more when a live 1-hour "
            "anchor beneath the tail holds part of the prefix, which that request reads anyway; "
            "when a request within the hour is likely enough, a read instead writes what was "
            "said since the answer for an hour (an upgrade, also when nobody wrote since "
            "the last touch, instead of ending), and the reads end; of the workspace's "
            f"upgrades after a request like this one, {followed} of {upgrades} were followed "
            "by a request within their hour; " + _renewal_plan(record, early=False)
        )
    elif write_ttl == "1h":
        record = track_record(session, team_id, now or datetime.now(UTC))
        plan = "after this answer, no reads (it writes its tail for an hour); " + _renewal_plan(
            record, early=True
        )
    else:
        plan = f"none after this answer (it writes {write_ttl or 'nothing'}, not a 5-minute tail)"
    if job is None:
        return plan + "; none waiting now"
    payload = json.loads(job.payload)
    caller = KeepCaller(**payload["caller"])
    active = KeepAlive._active(session, caller, payload)
    due = data.as_utc(job.run_at)
    when = due.strftime("%Y-%m-%d %H:%M:%S UTC") if due else "now"
    if payload.get("renewals") is not None:
        which = "1-hour anchor" if payload.get("anchor_at") else "1-hour entry"
        return (
            f"{plan}; one waiting: a renewal of the {which} ({payload['renewals']} so far), "
            f"due {when}; it renews only if somebody wrote in the thread in the {RECENT / 60:.0f} "
            "minutes before"
        )
    return (
        f"{plan}; one waiting: {payload['pings']} reads so far, next due {when}, "
        + ("people wrote since the last touch, so it will read" if active else
           "nobody wrote since the last touch, so it will upgrade or end")
    )

