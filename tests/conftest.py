"""Shared fixtures: real databases (SQLite file or PostgreSQL), fake Slack and Messages API
servers on loopback, and the bot itself served over HTTP by waitress."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import waitress
from sqlalchemy import text

from bot.app import BotApp, create_app
from bot.config import Settings, load_settings
from bot.store.db import make_engine, migrate
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack

SIGNING_SECRET = "test-signing-secret"
PG_URL_ENV = "TEST_DATABASE_URL"


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or the PostgreSQL named by TEST_DATABASE_URL."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        yield f"sqlite:///{tmp_path / 'bot.db'}"
        return
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
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


def make_settings(slack: FakeSlack, model: FakeMessagesAPI, database_url: str, **extra: Any):
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url,
        "ANTHROPIC_API_KEY": model.api_key,
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_MODEL": "claude-sonnet-4-5",
        "DATABASE_URL": database_url,
        "WORKER_THREADS": "4",
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return load_settings(env, env_file=None)


class Bot:
    """The bot served over HTTP on loopback, and a way to talk to it like Slack does."""

    _ids = itertools.count(1)

    def __init__(self, app: BotApp, slack: FakeSlack, model: FakeMessagesAPI) -> None:
        self.app = app
        self.slack = slack
        self.model = model
        self.server = waitress.create_server(app.wsgi(), host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def _serve(self) -> None:
        try:
            self.server.run()
        except OSError:  # the listening socket closed under the poll loop: we are stopping
            pass

    def close(self) -> None:
        self.http.close()
        self.server.close()
        self.app.close()

    def signed_post(
        self,
        body: bytes,
        content_type: str,
        *,
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        base = b"v0:" + ts.encode() + b":" + body
        sig = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
        all_headers = {
            "content-type": content_type,
            "x-slack-request-timestamp": ts,
            "x-slack-signature": sig,
            **(headers or {}),
        }
        return self.http.post("/slack/events", content=body, headers=all_headers)

    def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        wait: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        envelope = {
            "token": "legacy",
            "team_id": self.slack.team_id,
            "api_app_id": "A0001",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):08d}",
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": self.slack.team_id, "user_id": "UBOT", "is_bot": True}
            ],
        }
        headers = {}
        if retry_num is not None:
            headers = {"x-slack-retry-num": str(retry_num), "x-slack-retry-reason": "http_timeout"}
        resp = self.signed_post(
            json.dumps(envelope).encode(), "application/json", headers=headers, **kwargs
        )
        if wait:
            self.wait()
        return resp

    def mention(
        self, channel: str, text: str, *, user: str = "U1", thread_ts: str | None = None, **kw: Any
    ) -> tuple[str, httpx.Response]:
        """Post a message that mentions the bot into the fake, then deliver app_mention."""
        full = f"<@UBOT> {text}"
        ts = self.slack.add_message(channel, full, user=user, thread_ts=thread_ts)
        event = {
            "type": "app_mention",
            "user": user,
            "text": full,
            "ts": ts,
            "channel": channel,
            "team": self.slack.team_id,
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return ts, self.event(event, **kw)

    def form(self, fields: dict[str, str], **kwargs: Any) -> httpx.Response:
        body = urllib.parse.urlencode(fields).encode()
        return self.signed_post(body, "application/x-www-form-urlencoded", **kwargs)

    def wait(self) -> None:
        assert self.app.executor.wait_idle(timeout=60), "background work did not finish"

    def posts_in(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        posts = self.slack.posts
        return [p for p in posts if p["channel"] == channel and p.get("thread_ts") == thread_ts]


@pytest.fixture
def make_bot(slack, model, database_url, engine) -> Iterator[Any]:
    bots: list[Bot] = []

    def factory(**settings_extra: Any) -> Bot:
        url = settings_extra.pop("database_url", database_url)
        settings: Settings = make_settings(slack, model, url, **settings_extra)
        app = create_app(settings, engine=make_engine(url))
        bot = Bot(app, slack, model)
        bots.append(bot)
        return bot

    yield factory
    for b in bots:
        b.close()


@pytest.fixture
def bot(make_bot) -> Bot:
    return make_bot()
