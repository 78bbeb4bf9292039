"""Shared fixtures: real databases (SQLite file or PostgreSQL), fake Slack and Messages API
servers on loopback, and the bot itself served over HTTP by waitress."""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.app import create_app
from bot.config import Settings
from bot.store.db import make_engine, migrate
from tests import harness
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import ENCRYPTION_KEY, Bot, BotProcess, make_settings

PG_URL_ENV = "TEST_DATABASE_URL"


@contextlib.contextmanager
def fresh_database(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a schema of its own in the PostgreSQL database
    named by TEST_DATABASE_URL, created here and dropped on exit. Nothing the suite did not
    create is touched."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        yield f"sqlite:///{tmp_path / 'bot.db'}"
        return
    schema = f"bot_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        # Every connection of the test (the bot's, Alembic's, subprocesses') sees only its schema.
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield scoped.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:
    with fresh_database(tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url):
    eng = make_engine(database_url)
    migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_user("U1", "Alice Archer", "alice")
        fake.add_user("U2", "Bob Baker", "bob")
        fake.add_user("U3", "Carol Chen", "carol")
        fake.add_user("UBOT", "Thread Bot", "threadbot", is_bot=True)
        fake.add_channel("C1", "general", members={"U1", "U2", "U3"})
        yield fake


@pytest.fixture
def model() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as fake:
        yield fake


@pytest.fixture
def make_bot(slack, model, database_url, engine) -> Iterator[Any]:
    bots: list[Bot] = []

    def factory(**settings_extra: Any) -> Bot:
        url = settings_extra.pop("database_url", database_url)
        clock = settings_extra.pop("clock", time.time)
        # The bot waits (for Slack's read budget) on its own clock: a test clock moves on.
        sleep = settings_extra.pop("sleep", getattr(clock, "advance", time.sleep))
        settings: Settings = make_settings(slack, model, url, **settings_extra)
        app = create_app(settings, engine=make_engine(url), clock=clock, sleep=sleep)
        bot = Bot(app, slack, model)
        bots.append(bot)
        return bot

    yield factory
    for b in bots:
        b.close()


@pytest.fixture
def bot(make_bot) -> Bot:
    return make_bot()


@pytest.fixture
def oauth_bot(make_bot, slack) -> Bot:
    """The bot in OAuth mode (many workspaces), tokens encrypted with ENCRYPTION_KEY."""
    return make_bot(
        slack_bot_token="",
        slack_client_id=slack.client_id,
        slack_client_secret=slack.client_secret,
        encryption_key=ENCRYPTION_KEY,
    )


@pytest.fixture
def process_env(slack, model, database_url, engine) -> dict[str, str]:
    """The environment of a `python -m bot …` child process on the fakes and the test's
    (migrated) database, with short leases so tests of killed processes end quickly."""
    return harness.process_env(
        slack, model, database_url, JOB_LEASE_SECONDS="3", SHUTDOWN_TIMEOUT_SECONDS="1"
    )


@pytest.fixture
def spawn(process_env, tmp_path) -> Iterator[Any]:
    """Start `python -m bot <role>` children (killed at the end); keyword arguments are extra
    settings, e.g. `spawn("worker", metrics_port=0)`."""
    procs: list[BotProcess] = []

    def start(role: str = "serve", **settings: Any) -> BotProcess:
        env = {**process_env, **{k.upper(): str(v) for k, v in settings.items()}}
        p = BotProcess(env, tmp_path, role)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop(signal.SIGKILL)
