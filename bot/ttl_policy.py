"""The TTL policy: from a thread's stored state to the cache entry to read and the TTL to write.

`TtlPolicy.plan` is the one entry point (the answer path and `inspect` call it); below it the
arithmetic is pure. Prices are relative to the base input price: a 5-minute write costs 1.25,
a 1-hour write 2, a read 0.1. A write pays for itself only if a later request reads it before
it expires; a read refreshes an entry's lifetime (its own TTL, from the read).

Each request chooses how the new tokens (those after the entry it reads) are written: not at
all, for 5 minutes, or for an hour. The new breakpoint's entry covers the whole prefix, so the
choice decides how long the *whole* prefix stays readable for the next request, while only the
new tokens pay the write premium. A 1-hour entry is also kept as the thread's anchor: a later
5-minute write on top of it leaves it readable (for an hour since it was last read), so a slow
follow-up still reads the older part of the prefix. Where a 5-minute write gets keep-alive calls
(bot/keepalive.py), a fourth option is weighed: 5 minutes now and the keep-alive's upgrade to an
hour shortly before they end (a read of the prefix and the mention and answer written), which
for a whole dead prefix costs much less than an hour's write up front.

The chance that the next request comes within 5 minutes and within the hour comes from the
workspace's habits (what followed its earlier requests, by the gap before them, kept in SQL),
moved towards the thread's own gaps, each weighed by how often the workspace's requests are
followed at all (a thread's own gaps never show its end). Before a workspace has habits, a
fixed start belief writes 5 minutes on a first request and never an hour.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from bot.pricing import READ, WRITE_1H, WRITE_5M, Usage
from bot.prompt import Built, PriorCache
from bot.store import data
from bot.store.models import ThreadState

# What the next request pays per token of a prefix it cannot read: it sends it again (and
# writes it for the requests after it).
MISS = WRITE_5M
TTL_SECONDS = {"5m": 300, "1h": 3600}
MARGIN = 5  # seconds: an entry this close to expiry is not counted on
HABIT_REFRESH = 60.0  # seconds between recomputing a workspace's habits
CONTEXTS = ("first", "short", "medium", "long")
# The start belief, before a workspace's own requests say otherwise: after a request of each
# context (the gap before it), the chance that the next request on the thread comes within 5
# minutes and within the hour. Worth START_WEIGHT requests of the workspace's own.
START: dict[str, tuple[float, float]] = {
    "first": (0.30, 0.45),
    "short": (0.55, 0.75),
    "medium": (0.30, 0.65),
    "long": (0.20, 0.40),
}
START_WEIGHT = 5.0
OWN_WEIGHT = 2.0  # how many of a thread's own gaps the workspace's habit is worth
# The start belief of how often a request is followed by another on its thread at all (the
# rest are a thread's last), worth START_WEIGHT requests of the workspace's own.
START_CONTINUED = 0.75
MAX_ODDS = 0.95  # no follow-up is certain
# A keep-alive upgrade (bot/keepalive.py) comes this many seconds after a 5-minute write, and
# writes about this many tokens for an hour besides the prefix (the mention and the answer).
UPGRADE_AFTER = 270.0
UPGRADE_EXTRA = 500


def shrunk(hits: float, seen: float, belief: float, weight: float = START_WEIGHT) -> float:
    """A rate from `hits` of `seen`, moved towards `belief` worth `weight` observations."""
    return (hits + weight * belief) / (seen + weight)
# The promise: a follow-up within 5 minutes reads its prefix from cache. Nothing is written only
# when a follow-up that quick is less likely than this (whatever the arithmetic prefers): never.
# Measured (bench.cache_bench, slow teams, seeds 1-3): a floor of 10 % saved 0.7 % of their cost
# and left their quick follow-ups 85.6 % from cache (99.6 % with none).
QUICK_FLOOR = 0.0


@dataclass(frozen=True)
class Habits:
    """What the workspace's requests were followed by, per context: (requests whose outcome is
    known, followed by another request on the thread within 5 minutes, within the hour)."""

    counts: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)
    continued: tuple[int, int] = (0, 0)  # requests of settled threads, followed by another

    def odds(self, context: str) -> tuple[float, float]:
        """The chance of a next request within 5 minutes and within the hour after a request
        of this context: the workspace's counts, shrunk towards the start belief."""
        seen, w5, w1 = self.counts.get(context, (0, 0, 0))
        s5, s1 = START[context]
        return shrunk(w5, seen, s5), shrunk(w1, seen, s1)

    def continuation(self) -> float:
        """The chance that a request is followed by another on its thread at all: the
        workspace's counts, shrunk towards the start belief."""
        known, followed = self.continued
        return shrunk(followed, known, START_CONTINUED)

    def seen(self, context: str) -> int:
        """How many requests of this context the workspace has an outcome for."""
        return self.counts.get(context, (0, 0, 0))[0]


@dataclass(frozen=True)
class Rhythm:
    """How a thread's requests have been spaced so far (on top of the workspace's habits)."""

    requests: int = 0
    gaps: int = 0
    within_5m: int = 0
    within_1h: int = 0
    last_gap: float | None = None
    habits: Habits = field(default_factory=Habits)

    def after_gap(self, seconds: float | None) -> Rhythm:
        """The rhythm once a request arrives `seconds` after the previous one (None: first)."""
        if seconds is None:
            return Rhythm(
                self.requests + 1, self.gaps, self.within_5m, self.within_1h, None, self.habits
            )
        return Rhythm(
            self.requests + 1,
            self.gaps + 1,
            self.within_5m + (seconds <= 300),
            self.within_1h + (seconds <= 3600),
            seconds,
            self.habits,
        )

    @property
    def context(self) -> str:
        """The kind of gap before this request: first, short, medium or long."""
        return data.gap_context(self.last_gap)

    @property
    def odds(self) -> tuple[float, float]:
        """The chance that the next request on this thread comes within 5 minutes and within
        the hour: the workspace's habit after a request like this one, moved towards the
        thread's own gaps.

        A thread's own gaps are all followed by a request (its end is not a gap yet), so they
        say how soon the next request comes *if* there is one: each counts as the workspace's
        `continuation` chance of a follow-up within that gap. Counted whole, three half-hour
        gaps would make an hour's write look certain to pay on a thread that may be done."""
        h5, h1 = self.habits.odds(self.context)
        n, go_on = self.gaps, self.habits.continuation()
        return (
            shrunk(go_on * self.within_5m, n, h5, OWN_WEIGHT),
            shrunk(go_on * self.within_1h, n, h1, OWN_WEIGHT),
        )


def within(odds: tuple[float, float], seconds: float) -> float:
    """The chance of a next request within `seconds`, from the odds at 5 minutes and an hour
    (log-linear between them, linear below 5 minutes)."""
    q5, q1 = odds
    if seconds <= 0:
        return 0.0
    if seconds <= 300:
        return q5 * seconds / 300
    if seconds >= 3600:
        return q1
    return q5 + (q1 - q5) * math.log(seconds / 300) / math.log(12)


def next_within(odds: tuple[float, float], elapsed: float, seconds: float) -> float:
    """The chance that the next request comes within `seconds` from now, `elapsed` seconds
    after the last one and none yet (from the odds at 5 minutes and an hour)."""
    before = within(odds, elapsed)
    if before >= 1.0:
        return 0.0
    return max(0.0, within(odds, elapsed + seconds) - before) / (1.0 - before)


# A keep-alive read costs READ per token of the prefix; it saves MISS - READ per token when the
# next request comes before the entry would have expired. Below this chance it does not pay.
KEEP_ALIVE_ODDS = READ / (MISS - READ)


@dataclass(frozen=True)
class Held:
    """An entry the next request could read: its tokens and for how long it stays alive."""

    tokens: int
    seconds: float


@dataclass(frozen=True)
class Choice:
    """The TTL to write with (None: write nothing) and the expected costs that chose it."""

    ttl: str | None
    costs: dict[str, float]


def futures(odds: tuple[float, float]) -> tuple[float, float]:
    """What a token of the prefix costs from the next request on (per token, counting the
    requests that follow each other within the hour), when it is not alive then (`dead`) and
    when it is (`alive`), if every later request chooses as this one would.

    From a dead state a request pays the write (1 for none, 1.25, 2); the next request reads
    it at 0.1 if it comes within the TTL (from the alive state), pays again if it comes later
    within the hour. Solved for each TTL; the cheapest is the continuation.
    """
    q5, q1 = (min(q, MAX_ODDS) for q in odds)
    dead = {"none": 1.0 / (1.0 - q1)}
    alive = {"none": READ + q1 * dead["none"]}  # read once, then sent again
    for ttl, premium, q in (("5m", WRITE_5M, q5), ("1h", WRITE_1H, q1)):
        # E = premium + q·R + (q1 - q)·E ;  R = READ + q·R + (q1 - q)·E
        miss = q1 - q
        r_per_e = miss / (1.0 - q)
        r_const = READ / (1.0 - q)
        e = (premium + q * r_const) / (1.0 - miss - q * r_per_e)
        dead[ttl] = e
        alive[ttl] = r_const + r_per_e * e
    best = min(dead, key=lambda k: dead[k])
    return dead[best], alive[best]


def expected_costs(
    rhythm: Rhythm, new_tokens: int, held: list[Held], upgradable: bool = False
) -> dict[str, float]:
    """Expected cost of each write, in base-price tokens, now and from the next request on.

    `held`: the entries that stay readable without a new write (the one read now, refreshed;
    an anchor), by tokens. The new tokens cost 1, 1.25 or 2 now. If the next request comes
    within the hour, each token of the prefix still alive then goes on at the `alive` cost,
    each other one at the `dead` cost (`futures`), both from the odds of a thread that has just
    been asked again that soon (a follow-up makes more follow-ups likely). A request more than
    an hour later finds nothing alive whatever is written now, so it is left out.
    `upgradable`: also "5m, then 1h", a 5-minute write that the keep-alive upgrades
    UPGRADE_AFTER seconds later unless a request comes first (READ a token of the whole
    prefix, WRITE_1H for UPGRADE_EXTRA tokens), the prefix then kept for an hour.
    """
    odds = rhythm.odds
    q5, q1 = within(odds, 300), within(odds, 3600)
    dead_s, alive_s = futures(rhythm.after_gap(60).odds)
    dead_m, alive_m = futures(rhythm.after_gap(1800).odds)

    def later(tokens: float, seconds: float) -> float:
        q = within(odds, seconds)
        quick = min(q5, q)  # the next request within 5 minutes finds it alive
        slow = max(0.0, q - q5)  # ... or within the hour
        return tokens * (
            quick * alive_s + (q5 - quick) * dead_s + slow * alive_m + (q1 - q5 - slow) * dead_m
        )

    def keeping(extra: float, seconds: float) -> float:
        """The next request's cost when the new tokens are kept `seconds` and the whole
        prefix at least as long: what a held entry keeps longer stays longer."""
        total, covered = later(extra, seconds), 0
        for h in sorted(held, key=lambda h: -h.seconds):
            part = max(0, h.tokens - covered)
            total += later(part, max(seconds, h.seconds))
            covered = max(covered, h.tokens)
        return total

    w = float(new_tokens)
    costs = {
        "none": w + later(w, 0) + keeping(0, 0),
        "5m": WRITE_5M * w + keeping(w, 300),
        "1h": WRITE_1H * w + keeping(w, 3600),
    }
    if upgradable:
        # 5 minutes now, and unless a request comes first, the keep-alive's upgrade shortly
        # before they end: a read of the whole prefix and the mention and answer for an hour
        prefix = w + max((h.tokens for h in held), default=0)
        first = within(odds, UPGRADE_AFTER)
        upgrade = READ * prefix + WRITE_1H * UPGRADE_EXTRA
        costs["5m, then 1h"] = WRITE_5M * w + (1 - first) * upgrade + keeping(w, 3600)
    return costs


def choose_ttl(
    rhythm: Rhythm,
    *,
    new_tokens: int,
    prefix_tokens: int,
    mode: str = "auto",
    held: list[Held] | None = None,
    upgradable: bool = False,
) -> Choice:
    """Pick the write (none, 5m or 1h) with the lowest expected cost (`expected_costs`).

    `held` defaults to nothing alive beyond what this request reads, kept for 5 minutes.
    `upgradable`: "5m, then 1h" is weighed too, and writes 5m when it wins. Modes `5m`/`1h`
    force a TTL, `off` never writes.
    """
    if mode in ("5m", "1h"):
        return Choice(mode, {})
    if mode == "off":
        return Choice(None, {})
    read = max(0, prefix_tokens - new_tokens)
    if held is None:
        held = [Held(read, 300)] if read else []
    costs = expected_costs(rhythm, new_tokens, held, upgradable)
    options = [k for k in costs if k != "none" or rhythm.odds[0] < QUICK_FLOOR]
    order = ["5m", "1h", "5m, then 1h", "none"]
    best = min(options, key=lambda k: (round(costs[k], 6), order.index(k)))
    return Choice({"none": None, "5m, then 1h": "5m"}.get(best, best), costs)


@dataclass(frozen=True)
class Entries:
    """The thread's cache entries as the bot last left them: the newest write (the tail) and
    the last 1-hour write (the anchor), each if it should still be alive, with a note."""

    tail: PriorCache | None
    tail_life: float
    tail_tokens: int
    anchor: PriorCache | None
    anchor_life: float
    anchor_tokens: int
    note: str


def _life(touched: datetime | None, ttl: str, now: datetime) -> float:
    """Seconds an entry last touched at `touched` has left (0: count it as expired)."""
    if touched is None:
        return 0.0
    left = TTL_SECONDS[ttl] - MARGIN - (now - touched).total_seconds()
    return max(0.0, left)


def entries(state: ThreadState | None, now: datetime) -> Entries:
    """The entries the bot wrote on this thread that should still be alive."""
    if state is None or not state.cache_boundary_ts or not state.cache_prefix_digest:
        return Entries(
            None, 0, 0, None, 0, 0, "none (the bot has not written a cache entry for this thread)"
        )
    ttl = state.cache_ttl if state.cache_ttl in TTL_SECONDS else "5m"
    touched = data.as_utc(state.cache_written_at)
    used = touched.strftime("%Y-%m-%d %H:%M:%S UTC") if touched else "never"
    where = f"at message {state.cache_boundary_ts} (ttl {ttl}, last used {used})"
    life = _life(touched, ttl, now)
    tail = PriorCache(state.cache_boundary_ts, state.cache_prefix_digest, ttl) if life else None
    note = f"{where}: alive" if tail else f"{where}: expired, so not read back"
    anchor, anchor_life = None, 0.0
    same = state.anchor_ts == state.cache_boundary_ts
    if state.anchor_ts and state.anchor_digest and not same:
        anchor_at = data.as_utc(state.anchor_at)
        anchor_life = _life(anchor_at, "1h", now)
        at = anchor_at.strftime("%Y-%m-%d %H:%M:%S UTC") if anchor_at else "never"
        if anchor_life:
            anchor = PriorCache(state.anchor_ts, state.anchor_digest, "1h")
        state_word = "alive" if anchor else "expired"
        note += f"; 1h anchor at message {state.anchor_ts} (last used {at}): {state_word}"
    tokens = state.cache_prefix_tokens or 0
    return Entries(
        tail, life, tokens, anchor, anchor_life, state.anchor_tokens or 0, note
    )


def record_entries(state: ThreadState, built: Built, usage: Usage, now: datetime) -> None:
    """After a call: the entry it read was refreshed; its write is the new tail (and, for an
    hour, the new anchor). An entry is counted alive only when the endpoint reported cache
    activity for the call (a prefix under the minimum, or a relay, writes nothing)."""
    touched = bool(usage.cache_creation_tokens or usage.cache_read_tokens)
    read = built.read_from
    if touched and read is not None:
        if read.boundary_ts == state.cache_boundary_ts:
            state.cache_written_at = now
        if read.boundary_ts == state.anchor_ts:
            state.anchor_at = now
    if built.boundary_ts is None or built.write_ttl is None:
        return
    tokens = (usage.cache_read_tokens + usage.cache_creation_tokens) or built.prefix_tokens
    state.cache_boundary_ts = built.boundary_ts
    state.cache_prefix_digest = built.digest
    state.cache_prefix_tokens = tokens
    state.cache_ttl = built.write_ttl
    state.cache_written_at = now if touched else None
    if built.write_ttl == "1h":
        state.anchor_ts, state.anchor_digest = built.boundary_ts, built.digest
        state.anchor_tokens = tokens
        state.anchor_at = now if touched else None


def rhythm_after(state: ThreadState, habits: Habits) -> Rhythm:
    """The thread's rhythm as its last request left it (what is expected to follow it)."""
    return Rhythm(
        state.requests or 0,
        state.gaps or 0,
        state.gaps_within_5m or 0,
        state.gaps_within_1h or 0,
        state.last_gap_seconds,
        habits,
    )


def rhythm_now(state: ThreadState | None, habits: Habits, now: datetime) -> Rhythm:
    """The thread's rhythm once a request arrives at `now` (the workspace's `habits` beneath)."""
    if state is None:
        return Rhythm(habits=habits).after_gap(None)
    last_at = data.as_utc(state.last_request_at)
    gap = (now - last_at).total_seconds() if last_at else None
    return rhythm_after(state, habits).after_gap(gap)


@dataclass(frozen=True)
class CachePlan:
    """A request's cache decisions from stored state: the entry to read back (`prior`, else
    `fallback`), and the rhythm (to store) that chooses the write once the prompt's sizes are
    known (`ttl`)."""

    prior: PriorCache | None
    prior_note: str
    rhythm: Rhythm
    mode: str
    fallback: PriorCache | None = None
    found: Entries | None = None
    upgradable: bool = False  # a 5-minute write may be upgraded by the keep-alive

    def held(
        self, new_tokens: int, prefix_tokens: int, read: PriorCache | None
    ) -> list[Held]:
        """What stays readable without a new write when this request reads `read` (the tokens
        before the new ones): that entry, refreshed now, and an anchor still alive."""
        tokens = max(0, prefix_tokens - new_tokens)
        e = self.found
        if read is None or not tokens:
            return []
        out = [Held(tokens, TTL_SECONDS.get(read.ttl, 300))]
        if e is not None and e.anchor is not None and read != e.anchor:
            out.append(Held(min(tokens, e.anchor_tokens), e.anchor_life))
        return out

    def choose(
        self, new_tokens: int, prefix_tokens: int, read: PriorCache | None = None
    ) -> Choice:
        """The write for a prompt with these token counts, reading `read`, and the expected
        costs behind it."""
        return choose_ttl(
            self.rhythm,
            new_tokens=new_tokens,
            prefix_tokens=prefix_tokens,
            mode=self.mode,
            held=self.held(new_tokens, prefix_tokens, read),
            upgradable=self.upgradable,
        )

    def ttl(
        self, new_tokens: int, prefix_tokens: int, read: PriorCache | None = None
    ) -> str | None:
        """The TTL to write with (None: write nothing): `build_request`'s chooser."""
        return self.choose(new_tokens, prefix_tokens, read).ttl


class TtlPolicy:
    """`CACHE_TTL` applied to stored state; keeps each workspace's habits for HABIT_REFRESH s."""

    def __init__(self, mode: str) -> None:
        self._mode = mode
        self._habits: dict[str, tuple[float, Habits]] = {}

    def plan(
        self,
        session: Session,
        team_id: str,
        state: ThreadState | None,
        now: datetime,
        upgradable: bool = False,
    ) -> CachePlan:
        """What to read back and how to choose the write for a request on `state`'s thread
        (`upgradable`: a 5-minute write would get keep-alive calls that may upgrade it)."""
        found = entries(state, now)
        rhythm = rhythm_now(state, self.habits(session, team_id, now), now)
        prior = found.tail or found.anchor
        fallback = found.anchor if found.tail is not None else None
        upgradable = upgradable and self._mode == "auto"
        return CachePlan(prior, found.note, rhythm, self._mode, fallback, found, upgradable)

    def habits(self, session: Session, team_id: str, now: datetime) -> Habits:
        """The workspace's habits, recomputed at most every HABIT_REFRESH seconds."""
        at = now.timestamp()
        cached = self._habits.get(team_id)
        if cached and 0 <= at - cached[0] < HABIT_REFRESH:
            return cached[1]
        habits = Habits(
            data.habit_counts(session, team_id, now),
            data.continuation_counts(session, team_id, now),
        )
        self._habits[team_id] = (at, habits)
        return habits
