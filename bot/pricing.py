"""Model prices, cache floors, the cost/savings arithmetic of one call; `money` shows dollars."""

from __future__ import annotations

from dataclasses import dataclass

# $ per million tokens (input, output) and minimum cacheable prefix, by model-id prefix.
# The longest matching prefix wins, so dated ids ("claude-sonnet-4-5-20250929") match too.
_TABLE: dict[str, tuple[float, float, int]] = {
    "claude-opus-4-6": (5.0, 25.0, 4096),
    "claude-opus-4-5": (5.0, 25.0, 4096),
    "claude-opus-4-1": (15.0, 75.0, 1024),
    "claude-opus-4": (15.0, 75.0, 1024),
    "claude-sonnet-4-6": (3.0, 15.0, 2048),
    "claude-sonnet-4-5": (3.0, 15.0, 1024),
    "claude-sonnet-4": (3.0, 15.0, 1024),
    "claude-3-7-sonnet": (3.0, 15.0, 1024),
    "claude-3-5-sonnet": (3.0, 15.0, 1024),
    "claude-haiku-4-5": (1.0, 5.0, 4096),
    "claude-3-5-haiku": (0.8, 4.0, 2048),
    "claude-3-haiku": (0.25, 1.25, 2048),
}
DEFAULT_FLOOR = 1024
WRITE_5M = 1.25
WRITE_1H = 2.0
READ = 0.1


@dataclass(frozen=True)
class Price:
    """Dollars per token for one model."""

    input: float
    output: float


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, as the endpoint reported them (missing counts are 0)."""

    input_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    creation_5m: int = 0
    creation_1h: int = 0

    @property
    def prompt_tokens(self) -> int:
        """Every prompt token: uncached + written + read."""
        return self.input_tokens + self.cache_creation_tokens + self.cache_read_tokens

    @property
    def read_share(self) -> float:
        """Share of the prompt served from cache (0..1)."""
        return self.cache_read_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _lookup(model: str) -> tuple[float, float, int] | None:
    best = None
    for prefix, row in _TABLE.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, row)
    return best[1] if best else None


def price_for(model: str) -> Price | None:
    """The model's price per token, or None when unknown."""
    row = _lookup(model)
    return Price(row[0] / 1e6, row[1] / 1e6) if row else None


def cache_floor(model: str, overrides: dict[str, int] | None = None) -> int:
    """Minimum cacheable prefix in tokens for `model` (overrides by prefix win)."""
    for prefix, floor in sorted((overrides or {}).items(), key=lambda kv: -len(kv[0])):
        if model.startswith(prefix):
            return floor
    row = _lookup(model)
    return row[2] if row else DEFAULT_FLOOR


def _split_creation(usage: Usage) -> tuple[int, int]:
    """(5m, 1h) written tokens; an unsplit count is taken as 5m."""
    if usage.creation_5m or usage.creation_1h:
        return usage.creation_5m, usage.creation_1h
    return usage.cache_creation_tokens, 0


def cost(usage: Usage, price: Price) -> float:
    """Dollars this call cost."""
    e5m, e1h = _split_creation(usage)
    return (
        usage.input_tokens * price.input
        + e5m * WRITE_5M * price.input
        + e1h * WRITE_1H * price.input
        + usage.cache_read_tokens * READ * price.input
        + usage.output_tokens * price.output
    )


def savings(usage: Usage, price: Price) -> float:
    """Dollars saved versus the same call without caching (negative on a pure write)."""
    e5m, e1h = _split_creation(usage)
    uncached = usage.prompt_tokens * price.input
    cached = (
        usage.input_tokens + WRITE_5M * e5m + WRITE_1H * e1h + READ * usage.cache_read_tokens
    ) * price.input
    return uncached - cached


def money(usd: float, places: int | None = None, *, bare: bool = False) -> str:
    """Dollars as a person reads them: the one formatter for every amount the bot shows.

    - `places` given: that many decimals with thousands separators, "$1,234.5678" (ledger
      figures in App Home, `doctor` and `inspect` use 4, spend limits 2, the largest limit 0).
    - default: two decimals, four under a cent; "-$0.50" when negative, "$0.00" for nothing
      and "<$0.0001" for less than that shows (the digest).
    - `bare=True`: two decimals, four under a cent, and nothing else: "$-0.0050", "$0.0000"
      (the ⚡ footer).
    """
    if places is not None:
        return f"${usd:,.{places}f}"
    if bare:
        return money(usd, 2 if abs(usd) >= 0.01 else 4)
    if usd == 0:
        return "$0.00"
    sign = "-" if usd < 0 else ""
    if abs(usd) < 0.00005:
        return f"{sign}<$0.0001"
    return sign + money(abs(usd), bare=True)
