"""Pure cache arithmetic: which TTL (if any) a request should write, from the thread's rhythm.

Prices are relative to the base input price: a 5-minute write costs 1.25, a 1-hour write 2,
a read 0.1. A write pays for itself only if a later request reads it before it expires.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.pricing import READ, WRITE_1H, WRITE_5M

# What the next request pays per token of a prefix it cannot read: it writes it again.
MISS = WRITE_5M
# Prior beliefs (pseudo-counts) before a thread has shown its rhythm.
PRIOR_GAPS = 1.0
PRIOR_WITHIN_5M = 0.5
PRIOR_WITHIN_1H = 0.75


@dataclass(frozen=True)
class Rhythm:
    """How a thread's requests have been spaced so far."""

    requests: int = 0
    gaps: int = 0
    within_5m: int = 0
    within_1h: int = 0

    def after_gap(self, seconds: float | None) -> Rhythm:
        """The rhythm once a request arrives `seconds` after the previous one (None: first)."""
        if seconds is None:
            return Rhythm(self.requests + 1, self.gaps, self.within_5m, self.within_1h)
        return Rhythm(
            self.requests + 1,
            self.gaps + 1,
            self.within_5m + (seconds <= 300),
            self.within_1h + (seconds <= 3600),
        )

    @property
    def p_5m(self) -> float:
        """Chance the next request comes within 5 minutes, if it comes."""
        return (self.within_5m + PRIOR_WITHIN_5M) / (self.gaps + PRIOR_GAPS)

    @property
    def p_1h(self) -> float:
        """Chance the next request comes within an hour, if it comes."""
        return (self.within_1h + PRIOR_WITHIN_1H) / (self.gaps + PRIOR_GAPS)

    @property
    def p_next(self) -> float:
        """Chance there is another request on this thread at all (grows with its history)."""
        return (self.requests + 1) / (self.requests + 2)


@dataclass(frozen=True)
class Choice:
    """The TTL to write with (None: write nothing) and the expected costs that chose it."""

    ttl: str | None
    costs: dict[str, float]


def choose_ttl(
    rhythm: Rhythm, *, new_tokens: int, prefix_tokens: int, mode: str = "auto"
) -> Choice:
    """Pick the write that minimises expected cost of this request plus the next one's prefix.

    `new_tokens` would be written now; `prefix_tokens` (all of the transcript) is what the next
    request could read. Modes `5m`/`1h` force a TTL, `off` never writes.
    """
    if mode in ("5m", "1h"):
        return Choice(mode, {})
    if mode == "off":
        return Choice(None, {})
    q = rhythm.p_next
    p5 = rhythm.p_5m
    p60 = max(rhythm.p_1h, p5)
    w, p = float(new_tokens), float(prefix_tokens)
    costs = {
        "none": 1.0 * w + q * MISS * p,
        "5m": WRITE_5M * w + q * (p5 * READ + (1 - p5) * MISS) * p,
        "1h": WRITE_1H * w + q * (p60 * READ + (1 - p60) * MISS) * p,
    }
    best = min(costs, key=lambda k: (costs[k], k != "5m"))
    return Choice(None if best == "none" else best, costs)
