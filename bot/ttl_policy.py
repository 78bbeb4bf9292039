"""The TTL policy: from a thread's stored state to the cache entry to read and the TTL to write.

`TtlPolicy.plan` is the one entry point (the answer path and `inspect` call it); below it the
arithmetic is pure. Prices are relative to the base input price: a 5-minute write costs 1.25,
a 1-hour write 2, a read 0.1. A write pays for itself only if a later request reads it before
it expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from bot.pricing import READ, WRITE_1H, WRITE_5M
from bot.prompt import PriorCache
from bot.store import data
from bot.store.models import ThreadState

# What the next request pays per token of a prefix it cannot read: it writes it again.
MISS = WRITE_5M
# Prior beliefs (pseudo-counts) before a thread has shown its rhythm: an even chance of a quick
# follow-up; the 1-hour TTL has to be earned by observed 5-60 minute gaps.
PRIOR_GAPS = 1.0
PRIOR_WITHIN_5M = 0.5
PRIOR_WITHIN_1H = 0.5
BURST_FLOOR = 0.75  # a slow thread still gets quick follow-ups at this share of the usual rate
MAX_CHAIN = 4.0  # expected follow-ups in a row counted at most
WORKSPACE_WEIGHT = 2.0  # how many of a thread's own gaps the workspace's habits are worth
TTL_SECONDS = {"5m": 300, "1h": 3600}
PRIOR_REFRESH = 60.0  # seconds between recomputing a workspace's rhythm


@dataclass(frozen=True)
class Prior:
    """What the workspace's threads have shown so far, the starting belief for a thread."""

    p_5m: float = PRIOR_WITHIN_5M / PRIOR_GAPS
    p_1h: float = PRIOR_WITHIN_1H / PRIOR_GAPS
    p_next: float = 0.5
    weight: float = PRIOR_GAPS
    learned: bool = False  # from the workspace's own history (at least 10 gaps)

    @classmethod
    def from_totals(
        cls, *, threads: int, requests: int, gaps: int, within_5m: int, within_1h: int
    ) -> Prior:
        """A prior from the workspace's totals (shrunk towards the fixed one when few)."""
        return cls(
            p_5m=(within_5m + PRIOR_WITHIN_5M) / (gaps + PRIOR_GAPS),
            p_1h=(within_1h + PRIOR_WITHIN_1H) / (gaps + PRIOR_GAPS),
            p_next=(gaps + 1.0) / (requests + 2.0),
            weight=WORKSPACE_WEIGHT if gaps >= 10 else PRIOR_GAPS,
            learned=gaps >= 10,
        )


@dataclass(frozen=True)
class Rhythm:
    """How a thread's requests have been spaced so far (on top of the workspace's prior)."""

    requests: int = 0
    gaps: int = 0
    within_5m: int = 0
    within_1h: int = 0
    prior: Prior = Prior()

    def after_gap(self, seconds: float | None) -> Rhythm:
        """The rhythm once a request arrives `seconds` after the previous one (None: first)."""
        if seconds is None:
            return Rhythm(self.requests + 1, self.gaps, self.within_5m, self.within_1h, self.prior)
        return Rhythm(
            self.requests + 1,
            self.gaps + 1,
            self.within_5m + (seconds <= 300),
            self.within_1h + (seconds <= 3600),
            self.prior,
        )

    @property
    def p_5m(self) -> float:
        """Chance the next request comes within 5 minutes, if it comes. Requests come in bursts:
        a thread's own slow history lowers the workspace's chance by at most BURST_FLOOR."""
        w = self.prior.weight
        own = (self.within_5m + w * self.prior.p_5m) / (self.gaps + w)
        return max(own, BURST_FLOOR * self.prior.p_5m) if self.prior.learned else own

    @property
    def p_1h(self) -> float:
        """Chance the next request comes within an hour, if it comes."""
        w = self.prior.weight
        return (self.within_1h + w * self.prior.p_1h) / (self.gaps + w)

    @property
    def p_next(self) -> float:
        """Chance there is another request on this thread at all: the workspace's follow-up
        rate, or more when this thread has already shown several."""
        return max(self.prior.p_next, (self.requests + 1) / (self.requests + 2))


@dataclass(frozen=True)
class Choice:
    """The TTL to write with (None: write nothing) and the expected costs that chose it."""

    ttl: str | None
    costs: dict[str, float]


def choose_ttl(
    rhythm: Rhythm,
    *,
    new_tokens: int,
    prefix_tokens: int,
    mode: str = "auto",
    future_new_tokens: int | None = None,
) -> Choice:
    """Pick the write (5m, 1h or none) with the lowest expected cost from now on.

    Writing `new_tokens` now costs the TTL's premium. Its value is a chain of later requests
    that each read the whole prefix (`prefix_tokens`) at 0.1 instead of paying again: the chain
    goes on while the next request comes (p_next) within the TTL (p_5m / p_1h), so its expected
    length is a/(1-a) with a = p_next * p_ttl; each request in it writes its own new tokens at
    the same premium. No write costs the base price and builds no chain.
    Modes `5m`/`1h` force a TTL, `off` never writes.
    """
    if mode in ("5m", "1h"):
        return Choice(mode, {})
    if mode == "off":
        return Choice(None, {})
    w, p = float(new_tokens), float(prefix_tokens)
    wf = float(future_new_tokens) if future_new_tokens is not None else min(w, 0.05 * p)
    costs = {"none": 1.0 * w}
    for ttl, premium, p_within in (
        ("5m", WRITE_5M, rhythm.p_5m),
        ("1h", WRITE_1H, max(rhythm.p_1h, rhythm.p_5m)),
    ):
        a = rhythm.p_next * p_within
        chain = min(a / (1 - a), MAX_CHAIN)
        costs[ttl] = premium * (w + chain * wf) - (MISS - READ) * p * chain
    best = min(costs, key=lambda k: (costs[k], ["5m", "1h", "none"].index(k)))
    return Choice(None if best == "none" else best, costs)


def alive_prior(state: ThreadState | None, now: datetime) -> tuple[PriorCache | None, str]:
    """The previous write on this thread if the endpoint should still hold it, and a note."""
    if state is None or not state.cache_boundary_ts or not state.cache_prefix_digest:
        return None, "none (the bot has not written a cache entry for this thread)"
    touched = data.as_utc(state.cache_written_at)
    ttl = state.cache_ttl if state.cache_ttl in TTL_SECONDS else "5m"
    used = touched.strftime("%Y-%m-%d %H:%M:%S UTC") if touched else "never"
    where = f"at message {state.cache_boundary_ts} (ttl {ttl}, last used {used})"
    if touched is None or (now - touched).total_seconds() > TTL_SECONDS[ttl] - 5:
        return None, f"{where}: expired, so not read back"
    return PriorCache(state.cache_boundary_ts, state.cache_prefix_digest, ttl), f"{where}: alive"


def rhythm_now(state: ThreadState | None, habits: Prior, now: datetime) -> Rhythm:
    """The thread's rhythm once a request arrives at `now` (the workspace's `habits` beneath)."""
    if state is None:
        return Rhythm(prior=habits).after_gap(None)
    last_at = data.as_utc(state.last_request_at)
    rhythm = Rhythm(
        state.requests or 0,
        state.gaps or 0,
        state.gaps_within_5m or 0,
        state.gaps_within_1h or 0,
        habits,
    )
    return rhythm.after_gap((now - last_at).total_seconds() if last_at else None)


@dataclass(frozen=True)
class CachePlan:
    """A request's cache decisions from stored state: the entry to read back (`prior`) and the
    rhythm (to store) that chooses the write once the prompt's sizes are known (`ttl`)."""

    prior: PriorCache | None
    prior_note: str
    rhythm: Rhythm
    mode: str

    def choose(self, new_tokens: int, prefix_tokens: int) -> Choice:
        """The write for a prompt with these token counts, and the expected costs behind it."""
        return choose_ttl(
            self.rhythm, new_tokens=new_tokens, prefix_tokens=prefix_tokens, mode=self.mode
        )

    def ttl(self, new_tokens: int, prefix_tokens: int) -> str | None:
        """The TTL to write with (None: write nothing): `build_request`'s chooser."""
        return self.choose(new_tokens, prefix_tokens).ttl


class TtlPolicy:
    """`CACHE_TTL` applied to stored state; keeps each workspace's rhythm for PRIOR_REFRESH s."""

    def __init__(self, mode: str) -> None:
        self._mode = mode
        self._priors: dict[str, tuple[float, Prior]] = {}

    def plan(
        self, session: Session, team_id: str, state: ThreadState | None, now: datetime
    ) -> CachePlan:
        """What to read back and how to choose the write for a request on `state`'s thread."""
        prior, note = alive_prior(state, now)
        rhythm = rhythm_now(state, self._workspace(session, team_id, now.timestamp()), now)
        return CachePlan(prior, note, rhythm, self._mode)

    def _workspace(self, session: Session, team_id: str, at: float) -> Prior:
        """The workspace's request rhythm, recomputed at most every PRIOR_REFRESH seconds."""
        cached = self._priors.get(team_id)
        if cached and 0 <= at - cached[0] < PRIOR_REFRESH:
            return cached[1]
        prior = Prior.from_totals(**data.rhythm_totals(session, team_id))
        self._priors[team_id] = (at, prior)
        return prior
