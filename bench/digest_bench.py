"""Digest benchmark: the usage digest over a large ledger.

`python -m bench.digest_bench [--rows 1000000] [--database-url URL] [--reset] [--try-index]`

Creates a fresh database (default: a temporary SQLite file), migrates it, bulk-inserts `rows`
ledger rows (seeded) spread over 90 days, 20 workspaces, 200 channels and 2,000 users (Core
executemany in batches of 10,000 on SQLite, COPY on PostgreSQL) in time order, as the bot
appends them, runs (VACUUM) ANALYZE, reports the bytes the ledger takes (table and indexes),
then times `build_digest` + `render_blocks` for one workspace over 7 days and over 90 days
(median of 5 runs each).

A --database-url that already holds tables is refused unless --reset is given: on PostgreSQL
--reset drops and recreates schema `public`, on SQLite it deletes the file.
--try-index also times the digest again after creating, by hand in this database only, a
covering index for the digest's queries (the migrations are not changed).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from bot.digest import Period, build_digest, render_blocks
from bot.pricing import Usage, cost, price_for, savings
from bot.store.db import make_engine, migrate
from bot.store.models import UsageRecord

END = datetime(2025, 6, 1, tzinfo=UTC)
DAYS = 90
TEAMS = 20
CHANNELS = 200
USERS = 2_000
BATCH = 10_000
RUNS = 5
COLUMNS = (
    "created_at",
    "team_id",
    "channel_id",
    "thread_ts",
    "user_id",
    "kind",
    "model",
    "input_tokens",
    "cache_creation_tokens",
    "cache_read_tokens",
    "output_tokens",
    "cost_usd",
    "savings_usd",
    "latency_ms",
    "outcome",
)
KINDS = (("mention", 60), ("summarize", 25), ("recap", 15))
MODELS = (("claude-sonnet-4-5", 70), ("claude-haiku-4-5", 25), ("in-house-model-x", 5))
OUTCOMES = (
    ("ok", 960),
    ("overloaded", 20),
    ("rate_limited", 10),
    ("auth", 5),
    ("slack_not_in_channel", 5),
)
INDEX_SQL = {
    "postgresql": "CREATE INDEX ix_bench_usage_cover ON usage_record (team_id, created_at) "
    "INCLUDE (channel_id, thread_ts, user_id, kind, model, outcome, input_tokens, "
    "cache_creation_tokens, cache_read_tokens, output_tokens, cost_usd, savings_usd)",
    "sqlite": "CREATE INDEX ix_bench_usage_cover ON usage_record (team_id, created_at, "
    "channel_id, thread_ts, user_id, kind, model, outcome, input_tokens, "
    "cache_creation_tokens, cache_read_tokens, output_tokens, cost_usd, savings_usd)",
}


def team_id(t: int) -> str:
    return f"T{t:04d}"


def channel_id(c: int) -> str:
    # One in five conversations is private: a DM (D…) or a private channel (G…).
    return f"{'DG'[c % 2] if c % 5 == 0 else 'C'}{c:06d}"


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...], n: int) -> list[str]:
    return rng.choices([v for v, _ in table], [w for _, w in table], k=n)


def ledger(rows: int, seed: int) -> Iterator[tuple[Any, ...]]:
    """`rows` ledger rows as tuples in COLUMNS order; channel c and user u belong to team
    c % TEAMS and u % TEAMS."""
    rng = random.Random(seed)
    prices = {m: price_for(m) for m, _ in MODELS}
    span = DAYS * 86_400
    start = END - timedelta(seconds=span)
    for done in range(0, rows, BATCH):
        n = min(BATCH, rows - done)
        kinds, models = _weighted(rng, KINDS, n), _weighted(rng, MODELS, n)
        outcomes = _weighted(rng, OUTCOMES, n)
        for j, (kind, model, outcome) in enumerate(zip(kinds, models, outcomes, strict=True)):
            t = rng.randrange(TEAMS)
            c = t + TEAMS * rng.randrange(CHANNELS // TEAMS)
            u = t + TEAMS * rng.randrange(USERS // TEAMS)
            if outcome == "ok":
                read = rng.choice((0, rng.randrange(1_000, 60_000)))
                usage = Usage(
                    input_tokens=rng.randrange(50, 2_000),
                    cache_creation_tokens=0
                    if read and rng.random() < 0.7
                    else rng.randrange(4_000),
                    cache_read_tokens=read,
                    output_tokens=rng.randrange(50, 1_200),
                )
            else:
                usage = Usage()
            price = prices[model]
            yield (
                # In time order, as the bot appends them.
                start + timedelta(seconds=(done + j + rng.random()) * span / rows),
                team_id(t),
                channel_id(c),
                f"{1_740_000_000 + rng.randrange(400)}.{c:06d}",
                f"U{u:06d}",
                kind,
                model,
                usage.input_tokens,
                usage.cache_creation_tokens,
                usage.cache_read_tokens,
                usage.output_tokens,
                cost(usage, price) if price else None,
                savings(usage, price) if price else None,
                rng.randrange(200, 20_000),
                outcome,
            )


def fresh_database(url: str, reset: bool) -> Engine:
    """A migrated, empty database at `url`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        path = Path(parsed.database)
        if path.exists():
            if not reset:
                raise SystemExit(f"{path} exists; pass --reset to delete it")
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
    engine = make_engine(url)
    if parsed.get_backend_name() == "postgresql":
        if inspect(engine).get_table_names() and not reset:
            raise SystemExit("the database holds tables; pass --reset to drop schema public")
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    migrate(engine)
    return engine


def bulk_insert(engine: Engine, rows: int, seed: int) -> None:
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            with raw.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                copy_sql = f"COPY usage_record ({', '.join(COLUMNS)}) FROM STDIN"
                with cur.copy(copy_sql) as copy:
                    for r in ledger(rows, seed):
                        copy.write_row(r)
            raw.commit()
        finally:
            raw.close()
    else:
        stmt = insert(UsageRecord.__table__)
        batch: list[dict[str, Any]] = []
        with engine.begin() as conn:
            for r in ledger(rows, seed):
                batch.append(dict(zip(COLUMNS, r, strict=True)))
                if len(batch) == BATCH:
                    conn.execute(stmt, batch)
                    batch = []
            if batch:
                conn.execute(stmt, batch)
    analyze(engine)


def analyze(engine: Engine) -> None:
    """Planner statistics (and, on PostgreSQL, the visibility map) as autovacuum would leave
    them some time after the load."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE usage_record"))
    else:
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()


def ledger_bytes(engine: Engine) -> int:
    """Bytes on disk for the ledger: on PostgreSQL its table, indexes and TOAST; on SQLite the
    pages in use of the whole file (measure before and after a load for the ledger's share)."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            sql = "SELECT pg_total_relation_size('usage_record')"
            return int(conn.execute(text(sql)).scalar_one())
        pages = conn.execute(text("PRAGMA page_count")).scalar_one()
        free = conn.execute(text("PRAGMA freelist_count")).scalar_one()
        return int((pages - free) * conn.execute(text("PRAGMA page_size")).scalar_one())


def timed(fn: Callable[[], Any], runs: int = RUNS) -> float:
    """Median seconds of `runs` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def digest_timings(engine: Engine) -> dict[str, tuple[float, int]]:
    """Median seconds and rows covered, per period, for workspace T0003."""
    factory = sessionmaker(engine)
    team = team_id(3)
    private = {channel_id(c) for c in range(3, CHANNELS, TEAMS) if channel_id(c)[0] != "C"}
    out = {}
    for label, days in (("7d", 7), ("90d", 90)):
        period = Period.ending(END, days, "day")

        def run(period: Period = period) -> int:
            with factory() as s:
                d = build_digest(s, team, period, private_channels=private)
            render_blocks(d)
            return d.totals.requests

        out[label] = (timed(run), run())
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--database-url", help="default: a temporary SQLite file")
    ap.add_argument("--reset", action="store_true", help="empty the given database first")
    ap.add_argument("--try-index", action="store_true", help="also time with a covering index")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'digest.db'}"
        engine = fresh_database(url, args.reset)
        empty = ledger_bytes(engine)
        started = time.perf_counter()
        bulk_insert(engine, args.rows, args.seed)
        insert_s = time.perf_counter() - started
        size = ledger_bytes(engine) - empty
        with engine.connect() as conn:
            count = conn.execute(text("SELECT count(*) FROM usage_record")).scalar_one()
        timings = digest_timings(engine)
        indexed = {}
        if args.try_index:
            with engine.begin() as conn:
                conn.execute(text(INDEX_SQL[engine.dialect.name]))
            analyze(engine)
            indexed = digest_timings(engine)
        engine.dispose()

    print(f"database         {engine.dialect.name} ({make_url(url).render_as_string()})")
    print(f"ledger rows      {count:>12,}")
    print(f"insert           {insert_s:>11.1f}s  ({count / insert_s:,.0f} rows/s)")
    per_row = size / count if count else 0
    print(f"ledger on disk   {size / 1e6:>10.1f}MB  ({per_row:.0f} bytes per row, with indexes)")
    for label, (seconds, covered) in timings.items():
        line = f"digest {label:<4}      {seconds * 1000:>10.1f}ms  (1 workspace, {covered:,} rows"
        if label in indexed:
            with_index = indexed[label][0] * 1000
            line += f"; {with_index:.1f}ms with a covering index"
        print(line + f"; median of {RUNS})")


if __name__ == "__main__":
    main()
