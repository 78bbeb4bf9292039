"""Load: many mentions arriving at once against the real server, with a slow model.

`python -m bench.load [--mentions 500] [--threads 50] [--database-url URL]`
The bot runs as `python -m bot serve` in its own process (waitress, 16 HTTP threads); the
Slack and model fakes run in this one.
Prints ack latency p50/p99, answers posted, duplicates, lost requests and throughput.
The model fake takes 1-3 s per call (seeded), the Slack fake answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from sqlalchemy import text

from bot.store.db import make_engine, migrate
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import SIGNING_SECRET, BotProcess, mention_envelope, signature_headers


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(mentions: int, threads: int, database_url: str | None, workers: int, seed: int) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack, FakeMessagesAPI() as model:
        url = database_url or f"sqlite:///{Path(tmp) / 'load.db'}"
        engine = make_engine(url)
        if engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
        migrate(engine)
        lock = threading.Lock()
        model.delay = lambda: (lock.acquire(), rng.uniform(1.0, 3.0), lock.release())[1]

        def reply(body: dict) -> str:
            return "Answer to " + body["messages"][0]["content"][-1]["text"].rsplit(" ", 1)[-1]

        model.reply = reply
        for uid in ("U1", "U2", "U3"):
            slack.add_user(uid, uid, uid.lower())
        slack.add_channel("C1", "load", members={"U1", "U2", "U3"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
        env.update({
            "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": slack.url, "ANTHROPIC_API_KEY": model.api_key,
            "ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_MODEL": "claude-sonnet-4-5",
            "DATABASE_URL": url, "PORT": "0", "WORKER_THREADS": str(workers),
            "HTTP_THREADS": "16", "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        })
        server = BotProcess(env, Path(tmp))
        parents = [slack.add_thread("C1", 20, users=["U1", "U2"]) for _ in range(threads)]
        events = []
        for n in range(mentions):
            parent = parents[n % threads]
            tag = f"q{n:04d}"
            ts = slack.add_message("C1", f"<@UBOT> {tag}", user="U3", thread_ts=parent)
            events.append(({"type": "app_mention", "user": "U3", "text": f"<@UBOT> {tag}",
                            "ts": ts, "thread_ts": parent, "channel": "C1", "event_ts": ts},
                           f"Ev{n:06d}"))
        acks: list[float] = []
        statuses: list[int] = []
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30,
                              limits=httpx.Limits(max_connections=64))

        def send(item: tuple[dict, str]) -> None:
            body = json.dumps(mention_envelope(slack.team_id, *item)).encode()
            headers = {"content-type": "application/json", **signature_headers(body)}
            started = time.perf_counter()
            resp = client.post("/slack/events", content=body, headers=headers)
            elapsed = time.perf_counter() - started
            with lock:
                acks.append(elapsed)
                statuses.append(resp.status_code)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(send, events))
        sent = time.perf_counter() - t0
        answered = slack.wait_for(
            lambda: sum(1 for p in slack.posts if p.get("thread_ts") in set(parents)) >= mentions,
            timeout=mentions * 3.0 / max(1, min(workers, threads)) + 120,
        )
        total = time.perf_counter() - t0
        server.stop()
        posted = [p for p in slack.posts if p.get("thread_ts") in set(parents)]
        tags = [p["text"].split("Answer to ", 1)[1].split()[0] for p in posted
                if "Answer to " in p["text"]]
        duplicates = len(tags) - len(set(tags))
        lost = mentions - len(set(tags))
        engine.dispose()
    print(f"database: {engine.dialect.name}; {mentions} mentions over {threads} threads; "
          f"{workers} workers; model 1-3 s")
    print(f"{'ack p50':>10} {'ack p99':>10} {'ack max':>10} {'non-200':>8} {'answers':>8} "
          f"{'dupes':>6} {'lost':>5} {'sent in':>8} {'total':>8} {'answers/s':>10}")
    print(f"{statistics.median(acks) * 1000:>8.1f}ms {percentile(acks, 0.99) * 1000:>8.1f}ms "
          f"{max(acks) * 1000:>8.1f}ms {sum(s != 200 for s in statuses):>8} {len(posted):>8} "
          f"{duplicates:>6} {lost:>5} {sent:>7.1f}s {total:>7.1f}s {len(posted) / total:>10.2f}")
    print(f"targets: ack p99 < 500 ms: {'PASS' if percentile(acks, 0.99) < 0.5 else 'MISS'}; "
          f"0 duplicates: {'PASS' if duplicates == 0 else 'MISS'}; "
          f"0 lost: {'PASS' if lost == 0 and answered else 'MISS'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mentions", type=int, default=500)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    run(args.mentions, args.threads, args.database_url, args.workers, args.seed)


if __name__ == "__main__":
    main()
