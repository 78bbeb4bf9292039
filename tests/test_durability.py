"""Durable work across real processes: kill -9 after the ack, SIGTERM, two servers, one event."""

from __future__ import annotations

import signal
import threading

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.store.models import Job
from tests.harness import BotProcess, process_env


@pytest.fixture
def spawn(slack, model, database_url, engine, tmp_path):
    env = process_env(
        slack, model, database_url, JOB_LEASE_SECONDS="3", SHUTDOWN_TIMEOUT_SECONDS="1"
    )
    procs: list[BotProcess] = []

    def start() -> BotProcess:
        p = BotProcess(env, tmp_path)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop(signal.SIGKILL)


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
