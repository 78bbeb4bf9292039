"""Rotating bot tokens under races: several processes (or threads) that find the same workspace's
token about to expire refresh it once, and a newer stored token is never overwritten.

Each "process" is an independent SlackClients with its own engine, store and WebClient on one
real database (SQLite file or TEST_DATABASE_URL's PostgreSQL), against the fake Slack Web API,
whose refresh tokens are single-use. Races are pinned with the fake's refresh gate
(hold_refreshes / release_refreshes) and events set by SQL listeners, never with sleeps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.fernet import Fernet
from slack_sdk import WebClient
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.token_rotation import TokenRotator
from sqlalchemy import Engine, event, func, select

from bot.installations import EncryptedInstallationStore, SlackClients, TokenCipher
from bot.store.db import make_engine
from bot.store.models import slack_bots

KEY = Fernet.generate_key().decode()
TEAM = "T0042"
INITIAL_TOKEN = "xoxe.xoxb-initial"
INITIAL_REFRESH = "xoxe-refresh-initial"
ROTATED = "xoxe.xoxb-rotated-1"  # the fake's first refreshed token
WAIT = 20  # seconds: a bound on waiting for an event, never a delay


class SqlWatch:
    """Counts one engine's statements on slack_bots from one thread (or any) and signals the
    first read, so a test knows that a racer holds the token it read."""

    def __init__(self, engine: Engine, thread: int | None = None) -> None:
        self.thread = thread
        self.reads = 0
        self.writes: list[str] = []
        self.advisory_locks = 0  # PostgreSQL: pg_advisory_lock calls
        self.first_read = threading.Event()
        event.listen(engine, "after_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.thread is not None and threading.get_ident() != self.thread:
            return
        sql = " ".join(statement.split()).upper()
        if "PG_ADVISORY_LOCK(" in sql:
            self.advisory_locks += 1
        if "SLACK_BOTS" not in sql:
            return
        if sql.startswith("SELECT"):
            self.reads += 1
            self.first_read.set()
        elif sql.startswith(("INSERT", "UPDATE", "DELETE")):
            self.writes.append(sql.split()[0])


class Process:
    """What one bot process has: its own engine, store, Web API client and SlackClients."""

    def __init__(self, slack, database_url: str) -> None:
        self.engine = make_engine(database_url)
        self.store = EncryptedInstallationStore(slack.client_id, self.engine, TokenCipher(KEY))
        self.web = WebClient(base_url=slack.url, timeout=WAIT)
        self.clients = SlackClients(
            self.web, self.store, client_id=slack.client_id, client_secret=slack.client_secret
        )
        self.watch = SqlWatch(self.engine)

    def token(self) -> str:
        """The token of the client for_team hands out (what the racer would use)."""
        return self.clients.for_team(TEAM).token

    def stored(self) -> Bot:
        bot = self.store.find_bot(enterprise_id=None, team_id=TEAM)
        assert bot is not None
        return bot


@pytest.fixture
def processes(slack, database_url, engine) -> Iterator[Any]:
    made: list[Process] = []

    def factory() -> Process:
        made.append(Process(slack, database_url))
        return made[-1]

    yield factory
    for p in made:
        p.engine.dispose()


@pytest.fixture
def pool(slack) -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as ex:
        try:
            yield ex
        finally:
            slack.release_refreshes()  # a failed test must not leave a racer parked


def install_rotating(slack, engine: Engine, *, expires_in: int = 300) -> None:
    """Install TEAM through oauth.v2.access with a rotating token that expires in `expires_in`
    seconds (under the 10 minutes at which SlackClients refreshes), as the OAuth redirect
    handler would: from an engine and store of its own, not the racers'."""
    store = EncryptedInstallationStore(slack.client_id, engine, TokenCipher(KEY))
    slack.add_oauth_code(
        "code-rot", TEAM, INITIAL_TOKEN, refresh_token=INITIAL_REFRESH, expires_in=expires_in
    )
    resp = WebClient(base_url=slack.url).oauth_v2_access(
        client_id=slack.client_id, client_secret=slack.client_secret, code="code-rot"
    )
    store.save(
        Installation(
            app_id=resp["app_id"],
            team_id=resp["team"]["id"],
            bot_token=resp["access_token"],
            bot_id="BBOT",
            bot_user_id=resp["bot_user_id"],
            bot_refresh_token=resp["refresh_token"],
            bot_token_expires_in=int(resp["expires_in"]),
            user_id=resp["authed_user"]["id"],
        )
    )


def refreshes(slack) -> list[str]:
    """The refresh tokens presented to oauth.v2.access, in order."""
    return [
        c["refresh_token"]
        for c in slack.calls_to("oauth.v2.access")
        if c.get("grant_type") == "refresh_token"
    ]


def bot_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(slack_bots)).scalar_one()


def park_first_refresh(slack, pool: ThreadPoolExecutor, racer: Process) -> Future:
    """Start `racer` and return once its refresh request is parked at the fake: it then holds
    the rotation lock and has read the expiring token under it."""
    slack.hold_refreshes(1)
    fut = pool.submit(racer.token)
    assert slack.wait_for(lambda: slack.refreshes_parked == 1 or fut.done(), timeout=WAIT)
    assert not fut.done(), fut.exception()
    return fut


def test_two_processes_racing_refresh_once_and_share_the_new_token(slack, engine, processes, pool):
    a, b = processes(), processes()
    install_rotating(slack, engine)
    first = park_first_refresh(slack, pool, a)

    second = pool.submit(b.token)
    # B has read the expiring token: without a cross-process lock it would now refresh it too.
    assert b.watch.first_read.wait(WAIT)
    assert a.stored().bot_token == INITIAL_TOKEN  # A has not saved yet: B's read was stale
    slack.release_refreshes()

    assert first.result(WAIT) == ROTATED
    assert second.result(WAIT) == ROTATED
    assert refreshes(slack) == [INITIAL_REFRESH]  # exactly one refresh at Slack
    assert b.watch.reads >= 2  # B re-read the store after waiting for the lock
    assert b.watch.writes == []  # ... and saved nothing
    assert a.stored().bot_token == ROTATED and a.stored().bot_refresh_token == "xoxe-refresh-1"
    assert bot_rows(a.engine) == 1
    # The new token works, and neither racer refreshes again while it is fresh.
    assert b.clients.for_team(TEAM).auth_test()["team_id"] == TEAM
    assert a.token() == ROTATED and refreshes(slack) == [INITIAL_REFRESH]


def test_threads_of_one_process_refresh_once(slack, engine, processes, pool):
    p = processes()
    install_rotating(slack, engine)
    first = park_first_refresh(slack, pool, p)

    started = threading.Event()
    watch: dict[str, SqlWatch] = {}

    def second_thread() -> str:
        watch["w"] = SqlWatch(p.engine, threading.get_ident())
        started.set()
        return p.token()

    second = pool.submit(second_thread)
    assert started.wait(WAIT)
    assert watch["w"].first_read.wait(WAIT)
    slack.release_refreshes()

    assert first.result(WAIT) == second.result(WAIT) == ROTATED
    assert refreshes(slack) == [INITIAL_REFRESH]
    assert watch["w"].reads >= 2 and watch["w"].writes == []
    # It waited on this process's lock and re-read: no cross-process lock was needed.
    assert watch["w"].advisory_locks == 0
    if p.engine.url.get_backend_name() == "postgresql":
        assert p.watch.advisory_locks == 1  # the first thread's
    assert p.stored().bot_token == ROTATED


def test_refresh_token_used_by_a_process_outside_the_lock_falls_back_to_its_stored_token(
    slack, engine, processes, pool
):
    a, other = processes(), processes()
    install_rotating(slack, engine)
    first = park_first_refresh(slack, pool, a)  # A read INITIAL_REFRESH under the lock

    # Meanwhile a process that does not take the lock (as Bolt's built-in authorize does)
    # rotates the same token and saves the result.
    rotator = TokenRotator(
        client_id=slack.client_id, client_secret=slack.client_secret, client=other.web
    )
    theirs = rotator.perform_bot_token_rotation(bot=other.stored(), minutes_before_expiration=10)
    assert theirs is not None and theirs.bot_token == ROTATED
    other.store.save_bot(theirs)
    slack.release_refreshes()  # A's refresh now presents a used refresh token

    assert first.result(WAIT) == ROTATED  # A uses the token the other process stored
    assert refreshes(slack) == [INITIAL_REFRESH, INITIAL_REFRESH]  # A's was refused
    assert a.watch.writes == []
    assert a.stored().bot_token == ROTATED and a.stored().bot_refresh_token == "xoxe-refresh-1"
    assert bot_rows(a.engine) == 1


def test_used_refresh_token_without_a_newer_stored_token_is_a_clear_lookup_error(
    slack, engine, processes, caplog
):
    p = processes()
    install_rotating(slack, engine)
    # A process refreshed and died before saving: Slack has used the stored refresh token.
    WebClient(base_url=slack.url).oauth_v2_access(
        client_id=slack.client_id,
        client_secret=slack.client_secret,
        grant_type="refresh_token",
        refresh_token=INITIAL_REFRESH,
    )
    with caplog.at_level(logging.DEBUG, logger="bot.installations"):
        with pytest.raises(LookupError, match=TEAM):
            p.clients.for_team(TEAM)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(TEAM in m and "refresh token was already used" in m for m in errors), errors
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "xoxe" not in logged and slack.client_secret not in logged  # no secrets in logs
    assert p.watch.writes == []
    assert p.stored().bot_token == INITIAL_TOKEN


@pytest.mark.parametrize("newer", ["same install, later expiry", "reinstall"])
def test_a_newer_token_stored_during_a_refresh_is_never_overwritten(
    slack, engine, processes, pool, newer
):
    a, other = processes(), processes()
    install_rotating(slack, engine)
    first = park_first_refresh(slack, pool, a)  # A will refresh successfully, but late

    # While A's refresh is in flight, a writer that bypasses the lock stores a newer bot.
    slack.add_workspace("xoxe.xoxb-newer", TEAM)
    old = other.stored()
    if newer == "reinstall":
        other.store.save(
            Installation(
                app_id=old.app_id,
                team_id=TEAM,
                bot_token="xoxe.xoxb-newer",
                bot_id=old.bot_id,
                bot_user_id=old.bot_user_id,
                bot_refresh_token="xoxe-refresh-newer",
                bot_token_expires_in=43200,
                user_id="U1",
                installed_at=old.installed_at + 60,
            )
        )
    else:
        later = Bot(**old.to_dict_for_copying())
        later.bot_token = "xoxe.xoxb-newer"
        later.bot_refresh_token = "xoxe-refresh-newer"
        later.bot_token_expires_at = int(time.time()) + 2 * 43200  # beyond A's refresh
        other.store.save_bot(later)
    writes_before = len(a.watch.writes)
    slack.release_refreshes()

    assert first.result(WAIT) == "xoxe.xoxb-newer"  # A uses the newer token, not its own
    assert refreshes(slack) == [INITIAL_REFRESH]  # A's refresh did succeed at Slack
    assert a.watch.writes[writes_before:] == []  # ... and A stored nothing over the newer bot
    stored = a.stored()
    assert stored.bot_token == "xoxe.xoxb-newer"
    assert stored.bot_refresh_token == "xoxe-refresh-newer"
