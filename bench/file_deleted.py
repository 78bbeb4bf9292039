"""What Slack's `file_deleted` costs: the event names only the file. Before the ack, its
prepared copies are deleted by file id and the kept messages of the threads that held them are
changed (indexed); a job then searches the workspace's other kept messages for the file's id.

`python -m bench.file_deleted [--database-url URL] [--messages 100000] [--runs 5]`
Fills a fresh database (SQLite file by default; a schema of its own on PostgreSQL) with
`--messages` kept messages of one workspace in 1,000-message threads, one in twenty carrying a
file (each file shown by three messages, prepared in one thread), plus as many of another
workspace, then times both transactions for `--runs` files, and the job's for a file no message
shows. Prints the minimum, median and maximum in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from bot.store import data
from bot.store.db import make_engine, migrate
from bot.store.models import ThreadFile, ThreadMessage
from tests.conftest import fresh_database


def fill(sessions: sessionmaker, team: str, n: int, now: datetime) -> list[str]:
    """`n` kept messages of `team`; returns the ids of files carried by three messages."""
    shared: list[str] = []
    rows = []
    for i in range(n):
        thread = f"{1_700_000_000 + i // 1000}.000000"
        body: dict = {
            "ts": f"{1_700_000_000 + i // 1000}.{i % 1000 + 1:06d}",
            "thread_ts": thread,
            "user": f"U{i % 50:04d}",
            "text": f"message {i}: the rollout of build {i} went fine, see the dashboard " * 2,
        }
        if i % 20 == 0:
            fid = f"F{team}{i // 60:07d}"  # three messages share each file
            body["files"] = [{"id": fid, "name": f"shot-{i}.png", "mimetype": "image/png",
                              "filetype": "png", "pretty_type": "PNG", "size": 123456,
                              "url_private_download": f"https://files.slack.com/{fid}/d.png"}]
            if i % 60 == 0:
                shared.append(fid)
                with sessions.begin() as s:
                    s.add(ThreadFile(team_id=team, channel_id=f"C{i % 7}", thread_ts=thread,
                                     file_id=fid, kind="image", media_type="image/png", width=1,
                                     height=1, content=b"x" * 50_000, stored_at=now))
        rows.append({"team_id": team, "channel_id": f"C{i % 7}", "ts": body["ts"],
                     "thread_ts": thread, "updated_at": now,
                     "body": json.dumps(body, ensure_ascii=False, sort_keys=True)})
        if len(rows) == 5000:
            with sessions.begin() as s:
                s.execute(ThreadMessage.__table__.insert(), rows)
            rows = []
    if rows:
        with sessions.begin() as s:
            s.execute(ThreadMessage.__table__.insert(), rows)
    return shared


def ack(sessions: sessionmaker, team: str, file_id: str) -> tuple[float, int]:
    """The transaction before the ack: copies by file id, the threads that held them."""
    started = time.perf_counter()
    with sessions.begin() as s:
        threads = data.forget_file(s, team, file_id)
        changed = data.tombstone_file(s, team, file_id, threads)
    return (time.perf_counter() - started) * 1000, changed


def job(sessions: sessionmaker, team: str, file_id: str) -> tuple[float, int]:
    """The job's transaction: the workspace's kept messages searched for the file."""
    started = time.perf_counter()
    with sessions.begin() as s:
        data.forget_file(s, team, file_id)
        changed = data.tombstone_file(s, team, file_id)
    return (time.perf_counter() - started) * 1000, changed


def run(database_url: str | None, messages: int, runs: int) -> dict[str, list[float]]:
    """Fill a fresh database (SQLite, or a schema of its own in `database_url`) and time
    `runs` deletions: milliseconds by phase."""
    saved = os.environ.get("TEST_DATABASE_URL")
    if database_url:
        os.environ["TEST_DATABASE_URL"] = database_url
    else:
        os.environ.pop("TEST_DATABASE_URL", None)
    try:
        with tempfile.TemporaryDirectory() as tmp, fresh_database(Path(tmp)) as url:
            engine = make_engine(url)
            try:
                migrate(engine)
                sessions = sessionmaker(engine)
                now = datetime.now(UTC)
                started = time.perf_counter()
                shared = fill(sessions, "T1", messages, now)
                fill(sessions, "T2", messages, now)
                print(f"{engine.dialect.name}: {2 * messages:,} kept messages in "
                      f"{time.perf_counter() - started:.1f} s")
                acks = [ack(sessions, "T1", fid) for fid in shared[:runs]]
                assert all(changed == 1 for _, changed in acks), acks  # that thread's message
                jobs = [job(sessions, "T1", fid) for fid in shared[:runs]]
                assert all(changed == 2 for _, changed in jobs), jobs  # the other two
                missing = [job(sessions, "T1", f"FNOTHING{i}")[0] for i in range(runs)]
            finally:
                engine.dispose()
    finally:
        if saved is None:
            os.environ.pop("TEST_DATABASE_URL", None)
        else:
            os.environ["TEST_DATABASE_URL"] = saved
    return {
        "before the ack": [m for m, _ in acks],
        "the job, file in 2 more messages": [m for m, _ in jobs],
        "the job, a file no message shows": missing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for label, ms in run(args.database_url, args.messages, args.runs).items():
        print(f"file_deleted {label}: min {min(ms):.1f} ms, median "
              f"{statistics.median(ms):.1f} ms, max {max(ms):.1f} ms")


if __name__ == "__main__":
    main()
