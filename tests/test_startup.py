"""Start-up failures of `python -m bot …` in a child process: each is one line on stderr saying
what is wrong, with the exit status main documents (2 configuration, 3 database), no traceback,
and nothing done to the database that was not asked for."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from bot.store.db import current_revision, head_revision, make_engine
from tests import harness


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=60,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other program is listening on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def fresh(process_env, tmp_path) -> tuple[dict[str, str], Path]:
    """The environment of a first start on a new SQLite file, and the folder it would be in."""
    folder = tmp_path / "fresh"
    folder.mkdir()
    return {**process_env, "DATABASE_URL": f"sqlite:///{folder / 'bot.db'}"}, folder


def test_metrics_port_the_same_as_port_is_a_configuration_error(fresh, busy_port):
    env, folder = fresh
    env.update(PORT=str(busy_port), METRICS_PORT=str(busy_port))
    proc = _run(["serve"], env, folder)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"configuration error: METRICS_PORT must differ from PORT ({busy_port}), on which "
        "Slack's requests are served"
    ]
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("setting", ["PORT", "METRICS_PORT", "METRICS_BIND"])
def test_a_port_that_cannot_be_listened_on_is_one_line_before_the_database(
    setting, fresh, busy_port
):
    env, folder = fresh
    if setting == "PORT":
        env["PORT"] = str(busy_port)
        names, address, cause = "PORT", f"0.0.0.0:{busy_port}", "Address already in use"
    elif setting == "METRICS_PORT":
        env["METRICS_PORT"] = str(busy_port)
        names, address, cause = (
            "METRICS_BIND and METRICS_PORT", f"127.0.0.1:{busy_port}", "Address already in use"
        )
    else:  # an address of no interface here (TEST-NET-1): nothing is sent anywhere
        env.update(METRICS_PORT="0", METRICS_BIND="192.0.2.1")
        names, address, cause = (
            "METRICS_BIND and METRICS_PORT", "192.0.2.1:0", "Cannot assign requested address"
        )
    proc = _run(["serve"], env, folder)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"configuration error: {names}: cannot listen on {address} ({cause})"
    ]
    # the database was not created, let alone migrated (the lock says who held the file)
    assert [p.name for p in folder.iterdir()] == ["bot.db.serve.lock"]


@pytest.mark.parametrize(
    "args", [["migrate"], ["serve"], ["digest"], ["housekeeping"]], ids=lambda a: a[0]
)
def test_a_database_from_a_newer_release_is_one_line(args, process_env, engine, tmp_path):
    head = head_revision(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    proc = _run(args, process_env, tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        f"database error: the database is at revision 0099, which this code does not know "
        f"(latest here: {head}): deploy the release that migrated it, or restore the database"
    ]
    assert current_revision(engine) == "0099"


def test_housekeeping_on_a_database_without_schema_says_to_migrate(
    slack, model, database_url, tmp_path
):
    env = harness.process_env(slack, model, database_url)
    proc = _run(["housekeeping"], env, tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.splitlines() == [
        "database error: the database has no schema yet: run `python -m bot migrate` first"
    ]
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) is None  # housekeeping did not migrate it
    finally:
        engine.dispose()
    assert _run(["migrate"], env, tmp_path).returncode == 0
    proc = _run(["housekeeping"], env, tmp_path)
    assert proc.returncode == 0 and "housekeeping: 0 finished jobs" in proc.stderr, proc.stderr
