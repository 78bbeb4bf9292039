"""Load: many mentions arriving at once against the real server, with a slow model.

`python -m bench.load [--shape serve|split|both] [--mentions 500] [--threads 50]
[--database-url URL] [--background-nice N] [--pin] [--http-threads 16] [--runs 1]`
Shape `serve`: the bot runs as `python -m bot serve` in its own process (waitress, 16 HTTP
threads, the workers beside them). Shape `split`: `python -m bot web` takes the requests and
`python -m bot worker` runs the jobs, two processes (PostgreSQL only). The Slack and model
fakes run in this process; 32 senders, in a process of their own, send at once (a closed loop:
each sends its next mention when the last is acked). Before the timed mentions they deliver,
untimed, the `message` events Slack sends for the threads' messages and the mentions (the bot
keeps transcripts from them instead of reading each thread again within Slack's read limit).
Prints, per run, ack latency p50/p95/p99/max, acks/s, the acking process's CPU per ack (and
what the other processes and PostgreSQL used meanwhile), answers posted, duplicates, lost
requests, throughput and the 1-minute load average before and after. The model fake takes 1-3 s
per call (seeded), the Slack fake answers at once. `--pin` puts the acking process alone on
CPU 0 and the rest on CPU 1 (Linux), standing in for hosts of their own. On PostgreSQL each
run uses a schema of its own, created and dropped here.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bot.store.db import make_engine, migrate
from tests.conftest import fresh_database
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import SIGNING_SECRET, BotProcess, mention_envelope, signature_headers

SENDERS = 32


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(shape: str, mentions: int, threads: int, database_url: str | None, workers: int,
        seed: int, background_nice: int = 0, pin: bool = False, http_threads: int = 16) -> dict:
    """One run of `shape` on a fresh database; the figures of one table row."""
    rng = random.Random(seed)
    # Slack's ts are the time now (the bot judges what its kept transcripts cover on its own
    # clock): the fake's clock starts a minute ahead, so every message it mints is dated after
    # the bot began receiving events.
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeSlack(start_time=time.time() + 60) as slack,
        FakeMessagesAPI() as model,
    ):
        if database_url:
            os.environ["TEST_DATABASE_URL"] = database_url  # fresh_database: a schema of its own
        with fresh_database(Path(tmp)) as url:
            return _run(shape, mentions, threads, url, workers, rng, slack, model, Path(tmp),
                        background_nice, pin, http_threads)


def _run(shape: str, mentions: int, threads: int, url: str, workers: int, rng: random.Random,
         slack: FakeSlack, model: FakeMessagesAPI, tmp: Path, background_nice: int, pin: bool,
         http_threads: int) -> dict:
    engine = make_engine(url)
    dialect = engine.dialect.name
    migrate(engine)
    engine.dispose()
    lock = threading.Lock()
    model.delay = lambda: (lock.acquire(), rng.uniform(1.0, 3.0), lock.release())[1]

    def reply(body: dict) -> str:
        return "Answer to " + body["messages"][0]["content"][-1]["text"].rsplit(" ", 1)[-1]

    model.reply = reply
    for uid in ("U1", "U2", "U3"):
        slack.add_user(uid, uid, uid.lower())
    slack.add_channel("C1", "load", members={"U1", "U2", "U3"})
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "ANTHROPIC_", "TEST_DATABASE_URL"))}
    env.update({
        "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url, "ANTHROPIC_API_KEY": model.api_key,
        "ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_MODEL": "claude-sonnet-4-5",
        "DATABASE_URL": url, "PORT": "0", "WORKER_THREADS": str(workers),
        "HTTP_THREADS": str(http_threads), "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    })
    if shape == "split":
        processes = [BotProcess(env, tmp, "worker", nice=background_nice),
                     BotProcess(env, tmp, "web")]
    else:
        processes = [BotProcess(env, tmp, "serve")]
    port = processes[-1].port
    acker = processes[-1].proc.pid  # serve, or web
    if pin:
        # Separate hosts on one machine: the acking process alone on CPU 0, the rest on CPU 1.
        for process in processes[:-1]:
            _pin_process(process.proc.pid, {1})
        _pin_process(acker, {0})
        _pin_process(os.getpid(), {1})  # the fakes (and the senders, started from here)
    # Slack delivers a `message` event for every message in a channel the bot is in (the
    # threads' and the mentions' own), besides the mentions' `app_mention`: the bot keeps the
    # transcripts from them and reads no thread from Slack (whose read limit, Tier 3, would
    # pace 500 answers over ten minutes). They are sent before the timed mentions.
    kept: list[dict] = []

    def post(text: str, user: str, thread_ts: str | None = None) -> str:
        kept.append(slack.post_event("C1", text, user=user, thread_ts=thread_ts))
        return kept[-1]["ts"]

    parents = []
    for _ in range(threads):
        parents.append(post("parent message", "U1"))
        for i in range(1, 21):
            post(f"reply {i}", ("U1", "U2")[i % 2], parents[-1])
    events = []
    for n in range(mentions):
        parent = parents[n % threads]
        tag = f"q{n:04d}"
        ts = post(f"<@UBOT> {tag}", "U3", parent)
        events.append(({"type": "app_mention", "user": "U3", "text": f"<@UBOT> {tag}",
                        "ts": ts, "thread_ts": parent, "channel": "C1", "event_ts": ts},
                       f"Ev{n:06d}"))
    bodies = [json.dumps(mention_envelope(slack.team_id, *item)).encode() for item in events]
    messages = [json.dumps(mention_envelope(slack.team_id, ev, f"Em{k:06d}")).encode()
                for k, ev in enumerate(kept)]
    load_before = os.getloadavg()[0]
    with multiprocessing.get_context("spawn").Pool(1) as senders:
        _, kept_statuses = senders.apply(send_all, (port, messages))  # untimed
        if set(kept_statuses) != {200}:
            raise SystemExit(f"message events answered {sorted(set(kept_statuses))}")
        _renice(background_nice)  # the fakes' threads, not the senders' process
        others = [p.proc.pid for p in processes[:-1]]
        cpu_before = (_cpu_seconds(acker), sum(map(_cpu_seconds, others)), _postgres_cpu())
        t0 = time.perf_counter()
        acks, statuses = senders.apply(send_all, (port, bodies))
        sent = time.perf_counter() - t0
        cpu_after = (_cpu_seconds(acker), sum(map(_cpu_seconds, others)), _postgres_cpu())
        _renice(0)
    answered = slack.wait_for(
        lambda: sum(1 for p in slack.posts if p.get("thread_ts") in set(parents)) >= mentions,
        timeout=mentions * 3.0 / max(1, min(workers, threads)) + 120,
    )
    total = time.perf_counter() - t0
    for process in processes:
        process.stop()
        if not answered:  # say why
            print("".join(line for line in process.lines if " INFO " not in line)[-3000:])
    posted = [p for p in slack.posts if p.get("thread_ts") in set(parents)]
    tags = [p["text"].split("Answer to ", 1)[1].split()[0] for p in posted
            if "Answer to " in p["text"]]
    notes = [f"{'worker, ' * (shape == 'split')}fakes at nice {background_nice}"] * bool(
        background_nice) + [f"{shape == 'split' and 'web' or 'serve'} pinned to CPU 0"] * pin
    if pin:
        _pin_process(os.getpid(), set(range(os.cpu_count() or 1)))
    return {
        "shape": shape + (f" ({'; '.join(notes)})" if notes else ""),
        "database": dialect, "p50": statistics.median(acks), "p95": percentile(acks, 0.95),
        "p99": percentile(acks, 0.99), "max": max(acks),
        "acker_cpu_ms": (cpu_after[0] - cpu_before[0]) * 1000 / mentions,
        "others_cpu_s": cpu_after[1] - cpu_before[1],
        "postgres_cpu_s": cpu_after[2] - cpu_before[2],
        "load": (load_before, os.getloadavg()[0]),
        "non200": sum(s != 200 for s in statuses), "answers": len(posted),
        "dupes": len(tags) - len(set(tags)), "lost": mentions - len(set(tags)),
        "answered": answered, "sent": sent, "total": total, "acks": acks,
    }


def _pin_process(pid: int, cpus: set[int]) -> None:
    """Run every thread of process `pid` on `cpus` only (Linux: affinity is per thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended
            pass


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu() -> float:
    """CPU time used so far by every PostgreSQL server process this user can see (0 without)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if name.startswith("postgres"):
                total += _cpu_seconds(int(entry))
    return total


def _renice(value: int) -> None:
    """Set every thread of this process (Linux: niceness is per thread) to `value`."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), value)
        except OSError:  # a thread that ended, or raising priority again without privileges
            pass


def send_all(port: int, bodies: list[bytes]) -> tuple[list[float], list[int]]:
    """Post every body, SENDERS at a time, as Slack would; each ack's latency and status. Runs in
    a process of its own so that the fakes' threads do not delay reading the acks. Each sender
    keeps one plain `http.client` connection: 32 httpx senders on one GIL measured a do-nothing
    WSGI app at p99 128 ms (http.client: 22 ms), so the senders, not the server, were measured."""
    acks: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    local = threading.local()

    def send(body: bytes) -> None:
        headers = {"content-type": "application/json", **signature_headers(body)}
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        conn.request("POST", "/slack/events", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - started
        if resp.will_close:
            conn.close()
            local.conn = None
        with lock:
            acks.append(elapsed)
            statuses.append(resp.status)

    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        list(pool.map(send, bodies))
    return acks, statuses


def table(rows: list[dict]) -> str:
    """The figures as a Markdown table."""
    out = ["| shape | ack p50 | ack p95 | ack p99 | ack max | acks/s | answers/s | CPU per ack "
           "in the acking process | non-200 | answers | duplicates | lost | load before, after |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['shape']} | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms "
            f"| {r['p99'] * 1000:.0f} ms | {r['max'] * 1000:.0f} ms "
            f"| {len(r['acks']) / r['sent']:.0f} | {r['answers'] / r['total']:.1f} "
            f"| {r['acker_cpu_ms']:.2f} ms | {r['non200']} | {r['answers']} | {r['dupes']} "
            f"| {r['lost']} | {r['load'][0]:.2f}, {r['load'][1]:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=("serve", "split", "both"), default="both",
                        help="serve: one process; split: web + worker (PostgreSQL); both")
    parser.add_argument("--mentions", type=int, default=500)
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--background-nice", type=int, default=0,
                        help="run the fakes (and, in split, the worker) at this lower CPU "
                        "priority than the process that acks and the senders, standing in for "
                        "hosts of their own on a machine the processes share")
    parser.add_argument("--pin", action="store_true",
                        help="Linux: the acking process (serve, or web) alone on CPU 0 and the "
                        "rest (worker, fakes, senders) on CPU 1, standing in for hosts of their "
                        "own; PostgreSQL is left where the system runs it")
    parser.add_argument("--http-threads", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="runs of each shape")
    args = parser.parse_args()
    postgres = bool(args.database_url) and not args.database_url.startswith("sqlite")
    shapes = ["serve", "split"] if args.shape == "both" else [args.shape]
    if "split" in shapes and not postgres:
        if args.shape == "split":
            parser.error("--shape split needs --database-url postgresql://…")
        shapes.remove("split")  # SQLite runs only `serve`
    rows = [run(shape, args.mentions, args.threads, args.database_url, args.workers, args.seed,
                args.background_nice, args.pin, args.http_threads)
            for _ in range(args.runs) for shape in shapes]
    print(f"{args.mentions} mentions over {args.threads} threads from {SENDERS} concurrent "
          f"senders; {args.workers} worker threads; model 1-3 s")
    print(table(rows))
    for r in rows:
        print(f"{r['shape']}: during the acks, other bot processes used {r['others_cpu_s']:.2f} s "
              f"CPU and PostgreSQL {r['postgres_cpu_s']:.2f} s, over {r['sent']:.2f} s")
    for r in rows:
        print(f"{r['shape']}: ack p99 < 100 ms: {'PASS' if r['p99'] < 0.1 else 'MISS'}; "
              f"0 duplicates: {'PASS' if r['dupes'] == 0 else 'MISS'}; "
              f"0 lost: {'PASS' if r['lost'] == 0 and r['answered'] else 'MISS'}")


if __name__ == "__main__":
    main()
