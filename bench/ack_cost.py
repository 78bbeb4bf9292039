"""What one ack costs the process that acks, without a network or a busy machine in the way.

`python -m bench.ack_cost [--database-url URL] [--acks 500] [--warmup 50] [--profile]`
Builds the bot as `python -m bot web` does (no worker threads, receiving events), calls its WSGI
application directly with signed `app_mention` envelopes one at a time, and prints the CPU time
of the acking thread per ack (and, on PostgreSQL, of the database's server processes), the wall
time per ack, and the database round trips per ack. CPU time, unlike wall time, barely changes
when the machine is busy; for a figure that does not change at all, run it under
`valgrind --tool=callgrind` with two `--acks` values and divide the difference in instructions
by the difference in acks. `--profile`: the functions where the acks spend their time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import http.client
import io
import json
import logging
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import waitress
from sqlalchemy import event, func, select, text

from bot.app import BotApp
from bot.config import load_settings
from bot.server import open_app, stop_server
from bot.store.db import migrate
from bot.store.models import Job
from tests.conftest import fresh_database
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import bot_env, mention_envelope, signature_headers


def environ_for(body: bytes) -> dict[str, Any]:
    """The WSGI environ waitress would build for Slack's POST of `body`."""
    headers = signature_headers(body)
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/slack/events",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "3000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_X_SLACK_REQUEST_TIMESTAMP": headers["x-slack-request-timestamp"],
        "HTTP_X_SLACK_SIGNATURE": headers["x-slack-signature"],
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _server_cpu(app: BotApp) -> Callable[[], float]:
    """CPU seconds used so far by the PostgreSQL server processes serving the app's connections
    now (0 on SQLite, or where /proc of the server is not readable)."""
    if app.engine.dialect.name != "postgresql":
        return lambda: 0.0
    with app.engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        ).scalars().all()
    tick = os.sysconf("SC_CLK_TCK")

    def used() -> float:
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    return used


def measure(app: BotApp, team_id: str, acks: int, warmup: int, profile: bool,
            http_threads: int = 0) -> dict[str, float]:
    """Send warmup + acks mentions; the per-ack figures of the last `acks`. With `http_threads`,
    through waitress on loopback (as `web` serves them) from one keep-alive connection: the CPU
    is then the whole process's less the sending thread's."""
    wsgi = app.wsgi()
    statements = [0]

    @event.listens_for(app.engine, "before_cursor_execute")
    def _count(*_args: Any) -> None:  # noqa: ANN401
        statements[0] += 1

    def body_of(n: int) -> bytes:
        ts = f"1700000000.{n:06d}"
        ev = {"type": "app_mention", "user": "U3", "text": f"<@UBOT> q{n}", "ts": ts,
              "thread_ts": "1700000000.000000", "channel": "C1", "event_ts": ts}
        return json.dumps(mention_envelope(team_id, ev, f"Ev{n:08d}")).encode()

    def call(n: int) -> None:
        status: list[str] = []
        b"".join(wsgi(environ_for(body_of(n)), lambda s, h, *e: status.append(s)))
        if not status or not status[0].startswith("200"):
            raise SystemExit(f"ack {n}: {status}")

    send = call
    cpu_now = time.thread_time
    if http_threads:
        httpd = waitress.create_server(wsgi, host="127.0.0.1", port=0, threads=http_threads)
        threading.Thread(target=httpd.run, daemon=True).start()
        conn = http.client.HTTPConnection("127.0.0.1", httpd.effective_port, timeout=30)

        def post(n: int) -> None:
            body = body_of(n)
            headers = {"content-type": "application/json", **signature_headers(body)}
            conn.request("POST", "/slack/events", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"ack {n}: {resp.status}")

        send = post

        def cpu_now() -> float:
            return time.process_time() - time.thread_time()

    for n in range(warmup):
        send(n)
    pauses: list[float] = []  # full (generation 2) collections during the measured acks
    started: list[float] = []

    def timed(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses.append(time.perf_counter() - started.pop())

    gc.callbacks.append(timed)
    server_cpu = _server_cpu(app)
    profiler = cProfile.Profile() if profile else None
    before = (cpu_now(), time.perf_counter(), server_cpu(), statements[0])
    if profiler:
        profiler.enable()
    for n in range(warmup, warmup + acks):
        send(n)
    if profiler:
        profiler.disable()
    cpu, wall, server, stmts = (cpu_now(), time.perf_counter(), server_cpu(),
                                statements[0])
    gc.callbacks.remove(timed)
    if http_threads:
        conn.close()
        stop_server(httpd)
    if profiler:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    with app.engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(Job)).scalar_one()
    if stored != warmup + acks:
        raise SystemExit(f"{warmup + acks} mentions acked but {stored} jobs stored")
    return {
        "cpu_ms": (cpu - before[0]) * 1000 / acks,
        "wall_ms": (wall - before[1]) * 1000 / acks,
        "server_cpu_ms": (server - before[2]) * 1000 / acks,
        "statements": (stmts - before[3]) / acks,
        "full_collections": len(pauses),
        "longest_collection_ms": max(pauses, default=0.0) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--acks", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--http", type=int, default=0, metavar="THREADS",
                        help="send over loopback HTTP to waitress with this many threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # as `python -m bot` logs
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as slack, FakeMessagesAPI() as model:
        if args.database_url:
            os.environ["TEST_DATABASE_URL"] = args.database_url
        with fresh_database(Path(tmp)) as url:
            settings = load_settings(
                bot_env(slack, model, url, worker_threads=50, http_threads=16), env_file=None
            )
            app = open_app(settings)
            try:
                migrate(app.engine)
                app.start_receiving()  # as `web` does; no worker threads
                r = measure(app, slack.team_id, args.acks, args.warmup, args.profile, args.http)
            finally:
                app.close()
    where = f"the process serving HTTP ({args.http} threads)" if args.http else "the acking thread"
    print(f"{args.acks} acks ({app.engine.dialect.name}): {r['cpu_ms']:.3f} ms CPU per ack in "
          f"{where}, {r['server_cpu_ms']:.3f} ms in the database server, "
          f"{r['wall_ms']:.3f} ms wall; {r['statements']:.2f} statements per ack; "
          f"{r['full_collections']} full garbage collections, the longest "
          f"{r['longest_collection_ms']:.1f} ms")


if __name__ == "__main__":
    main()
