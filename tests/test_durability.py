"""Durable work across real processes: kill -9 after the ack, SIGTERM, two servers, one event;
web and worker processes; one process per SQLite file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.store.models import Job

POSTGRES = bool(os.environ.get("TEST_DATABASE_URL"))
needs_postgres = pytest.mark.skipif(not POSTGRES, reason="several processes need PostgreSQL")
needs_sqlite = pytest.mark.skipif(POSTGRES, reason="the SQLite one-process rule")


def _mention_event(slack, parent: str) -> dict:
    ts = slack.add_message("C1", "<@UBOT> summarize please", user="U1", thread_ts=parent)
    return {"type": "app_mention", "user": "U1", "text": "<@UBOT> summarize please", "ts": ts,
            "thread_ts": parent, "channel": "C1", "event_ts": ts}


def _posts(slack, parent: str) -> list[dict]:
    return [p for p in slack.posts if p.get("thread_ts") == parent]


def test_killed_after_the_ack_the_answer_arrives_once_after_restart(spawn, slack, model, engine):
    parent = slack.add_thread("C1", 20)
    gate = threading.Event()
    model.gate = gate
    first = spawn()
    assert first.mention(slack.team_id, _mention_event(slack, parent), "EvKILL").status_code == 200
    assert model.wait_for(lambda: model.arrived >= 1)  # the worker is mid-call
    first.stop(signal.SIGKILL)
    model.gate = None
    gate.set()  # the dead process's call completes into a closed socket
    second = spawn()
    assert slack.wait_for(lambda: len(_posts(slack, parent)) >= 1, timeout=60), second.lines
    assert second.stop() == 0  # lets the job in hand finish
    with sessionmaker(engine)() as s:
        job = s.scalar(select(Job))
    assert job.status == "done" and job.attempts == 2
    assert len(_posts(slack, parent)) == 1
    assert any("re-queued 1 jobs" in line for line in second.lines)


def test_sigterm_requeues_unfinished_work_which_the_next_process_answers(
    spawn, slack, model, engine
):
    parent = slack.add_thread("C1", 20)
    gate = threading.Event()
    model.gate = gate
    first = spawn()
    assert first.mention(slack.team_id, _mention_event(slack, parent), "EvTERM").status_code == 200
    assert model.wait_for(lambda: model.arrived >= 1)
    assert first.stop(signal.SIGTERM) == 0
    assert any("re-queued 1 unfinished jobs" in line for line in first.lines), first.lines
    with sessionmaker(engine)() as s:
        assert s.scalar(select(Job.status)) == "queued"
    model.gate = None
    gate.set()
    second = spawn()
    assert slack.wait_for(lambda: len(_posts(slack, parent)) >= 1, timeout=60), second.lines
    assert second.stop() == 0
    assert len(_posts(slack, parent)) == 1


@needs_postgres
def test_two_servers_one_database_same_event_one_answer(spawn, slack, model):
    parent = slack.add_thread("C1", 20)
    a, b = spawn(), spawn()
    event = _mention_event(slack, parent)
    results: list[int] = []
    threads = [threading.Thread(target=lambda p=p: results.append(
        p.mention(slack.team_id, event, "EvTWICE").status_code)) for p in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200, 200]
    assert slack.wait_for(lambda: len(_posts(slack, parent)) >= 1, timeout=60)
    assert a.stop() == 0 and b.stop() == 0  # both drained: nothing else can still post
    assert len(_posts(slack, parent)) == 1
    assert len(model.usages) == 1


def _run(role: str, env: dict[str, str], cwd) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", role], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=60,
    )


def test_a_normal_start_says_one_line_then_nothing_until_work(spawn):
    bot = spawn()  # on a database already at the latest schema, as after `release: migrate`
    assert bot.stop() == 0
    said = [line.split(" INFO ", 1)[1].strip() for line in bot.lines]
    assert said[0] == (
        f"bot: serving HTTP on port {bot.port} (POST /slack/events, GET /healthz, GET /metrics) "
        "and running jobs on 16 worker threads"
    ), bot.lines
    assert said[1:] == ["bot: SIGTERM: no new work; finishing what is in hand", "bot: stopped"]


@needs_sqlite
def test_a_second_server_on_one_sqlite_file_is_refused(spawn, process_env, tmp_path):
    first = spawn()
    second = _run("serve", process_env, tmp_path)
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"configuration error: another bot process (pid {first.proc.pid}) is already using the "
        f"SQLite file {process_env['DATABASE_URL'].removeprefix('sqlite:///')}; SQLite allows one "
        "process: stop that one, or use PostgreSQL to run several"
    ]
    first.stop(signal.SIGKILL)  # the kernel drops the lock of a killed process
    assert spawn().stop() == 0


@needs_sqlite
@pytest.mark.parametrize("role", ["web", "worker"])
def test_web_and_worker_refuse_an_sqlite_file(role, process_env, tmp_path):
    proc = _run(role, process_env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"configuration error: `python -m bot {role}` needs PostgreSQL: DATABASE_URL is an SQLite "
        "file, which only one process may use (run `python -m bot serve`)"
    ]


@needs_postgres
def test_a_worker_process_answers_what_a_web_process_queued(spawn, slack, model, engine):
    parent = slack.add_thread("C1", 20)
    web = spawn("web", metrics_port=0)
    assert "(no worker threads here)" in web.lines[0]
    assert web.mention(slack.team_id, _mention_event(slack, parent), "EvSPLIT").status_code == 200
    with sessionmaker(engine)() as s:
        job = s.scalar(select(Job))
    assert (job.status, job.attempts) == ("queued", 0)  # acked and stored; no one runs it here
    worker = spawn("worker", metrics_port=0)
    assert worker.port is None  # serves Slack nothing
    assert slack.wait_for(lambda: len(_posts(slack, parent)) >= 1, timeout=60), worker.lines
    assert worker.stop() == 0 and web.stop(signal.SIGTERM) == 0
    assert len(_posts(slack, parent)) == 1 and len(model.usages) == 1
    with sessionmaker(engine)() as s:
        job = s.scalar(select(Job))
    assert (job.status, job.attempts) == ("done", 1)
    assert not any("Traceback" in line for line in web.lines + worker.lines)


@needs_postgres
def test_metrics_port_takes_metrics_off_the_slack_port_and_shows_a_worker_jobs(
    spawn, slack, model
):
    parent = slack.add_thread("C1", 20)
    web = spawn("web", metrics_port=0)
    worker = spawn("worker", metrics_port=0, stream_answers="false")  # one post, after the call
    assert web.mention(slack.team_id, _mention_event(slack, parent), "EvMETRICS").status_code == 200
    assert slack.wait_for(lambda: len(_posts(slack, parent)) >= 1, timeout=60)

    def metrics(port: int | None) -> str:
        resp = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        return str(resp.status_code) + "\n" + resp.text

    assert metrics(web.port).startswith("404")  # the port Slack (and everyone) reaches
    web_text = metrics(web.metrics_port)
    assert 'bot_http_requests_total{status="200"} 1.0' in web_text
    assert "bot_model_calls_total{" not in web_text
    worker_text = metrics(worker.metrics_port)
    assert 'bot_model_calls_total{outcome="ok"} 1.0' in worker_text  # counted before the post
    assert "bot_queue_depth" in worker_text


def test_metrics_port_serves_metrics_and_health_apart_from_the_slack_port(spawn):
    bot = spawn("serve", metrics_port=0)
    assert f"GET /metrics on 127.0.0.1:{bot.metrics_port}" in bot.lines[0]
    assert "GET /metrics," not in bot.lines[0]  # no longer on the Slack port
    public = f"http://127.0.0.1:{bot.port}"
    private = f"http://127.0.0.1:{bot.metrics_port}"
    assert httpx.get(f"{public}/metrics", timeout=10).status_code == 404
    assert httpx.get(f"{public}/healthz", timeout=10).text == "ok"
    resp = httpx.get(f"{private}/metrics", timeout=10)
    assert resp.status_code == 200 and "bot_queue_depth 0.0" in resp.text
    assert httpx.get(f"{private}/healthz", timeout=10).text == "ok"
    assert httpx.post(f"{private}/slack/events", content=b"{}", timeout=10).status_code == 404
    assert bot.stop() == 0


@needs_postgres
def test_a_mention_right_after_the_database_dropped_the_connections_is_acked_and_answered(
    bot, slack, engine, caplog
):
    """Pooled connections are pinged only after a second idle (store/db.py); one the server
    dropped within that second fails its first statement, and the ack's insert is tried again on
    a new connection: Slack still gets its 200 after the job is stored, and one answer."""
    parent = slack.add_thread("C1", 20)
    assert bot.mention("C1", "first", thread_ts=parent)[1].status_code == 200
    bot.wait()
    pool = bot.app.engine.pool
    held = [bot.app.engine.connect() for _ in range(pool.checkedin())]  # every idle one at once
    pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in held]
    for c in held:
        c.close()
    with engine.begin() as admin:
        for pid in pids:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
    _, resp = bot.mention("C1", "second", thread_ts=parent)
    assert resp.status_code == 200
    bot.wait()
    with sessionmaker(engine)() as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
    assert [(j.status, j.attempts) for j in jobs] == [("done", 1), ("done", 1)]
    assert len(bot.posts_in("C1", parent)) == 2
