"""The long-running processes: `serve` (HTTP and job workers in one process), `web` (acks and
enqueues, runs no jobs) and `worker` (runs jobs, serves Slack nothing).

`prepare` does every check that can fail for a configuration reason — settings, the Slack token,
the SQLite one-process rule, the listening ports — before the database is touched; `run` then
migrates and serves.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

from bot.config import Settings, SettingsError

if TYPE_CHECKING:
    from bot.app import BotApp

log = logging.getLogger("bot")

ROLES = ("serve", "web", "worker")


@dataclass
class Prepared:
    """A process that passed its checks: its role, its app, (SQLite) the file lock it holds,
    warnings to log once logging is set up, and its bound (not yet serving) waitress servers:
    Slack's HTTP (None for a worker or Socket Mode) and METRICS_PORT's (None without it)."""

    role: str
    app: BotApp
    lock: IO[str] | None
    warnings: list[str]
    http: Any = None
    metrics: Any = None

    def close(self, timeout: float = 30.0) -> None:
        """Release what `prepare` holds: the listening sockets, the app (finishing or re-queuing
        jobs in hand within `timeout` seconds), the SQLite lock."""
        for server in (self.http, self.metrics):
            if server is not None:
                stop_server(server)
        self.app.close(timeout=timeout)
        if self.lock is not None:
            self.lock.close()


def prepare(settings: Settings, role: str) -> Prepared:
    """Check settings, Slack and the database rule for `role`, and bind its listening sockets;
    SettingsError says what is wrong. Touches no database (an SQLite file is not created)."""
    from bot.installations import check_token_encryption

    if role not in ROLES:
        raise ValueError(f"unknown role {role}")
    if role != "worker":
        settings.require_http()
    warnings = [w for w in [check_token_encryption(settings)] if w]
    sqlite = make_url(settings.database_url).get_backend_name() == "sqlite"
    if sqlite and role != "serve":
        raise SettingsError(
            f"`python -m bot {role}` needs PostgreSQL: DATABASE_URL is an SQLite file, which "
            "only one process may use (run `python -m bot serve`)"
        )
    app = open_app(settings)
    prepared = Prepared(role, app, None, warnings)
    try:
        prepared.lock = _hold_sqlite_file(settings.database_url) if sqlite else None
        if role != "worker" and not settings.socket_mode:
            prepared.http = _bind(
                app.wsgi(), "PORT", "0.0.0.0", settings.port, settings.http_threads
            )
        if settings.metrics_port is not None:
            prepared.metrics = _bind(
                app.metrics_wsgi(),
                "METRICS_BIND and METRICS_PORT",
                settings.metrics_bind,
                settings.metrics_port,
                2,
            )
    except SettingsError:
        prepared.close()
        raise
    return prepared


def _bind(wsgi: Any, names: str, host: str, port: int, threads: int) -> Any:  # noqa: ANN401
    """A waitress server listening on host:port (bound now, serving once run); SettingsError
    naming the variables `names` when the port is taken or the address is not this host's."""
    import waitress

    try:
        return waitress.create_server(wsgi, host=host, port=port, threads=threads, ident="bot")
    except (OSError, ValueError) as exc:  # ValueError: waitress could not resolve the host
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SettingsError(f"{names}: cannot listen on {host}:{port} ({cause})") from None


def stop_server(server: Any, timeout: float = 2.0) -> None:  # noqa: ANN401 - a waitress server
    """Stop a waitress server in the order that loses nothing: close its listening sockets (no
    new connections), let the requests in hand finish (`timeout` seconds: Slack waits 3 s for
    any answer, and this comes out of the SIGTERM grace before the jobs'
    `SHUTDOWN_TIMEOUT_SECONDS`) and their answers go out, then close the rest, which ends the
    server's poll loop.

    waitress's own `close()` closes the loop's wake-up pipe first: a request finishing after it
    logs a traceback (EBADF) and its answer is never sent. It also leaves the worker threads
    waiting for work that never comes: a process that opens and closes servers (tests,
    benches) would keep every one's threads, and everything they hold, until it exits. Safe
    to call twice, and from a thread other than the poll loop's (which must keep running to
    send the answers)."""
    from waitress import wasyncore
    from waitress.server import BaseWSGIServer

    sockets = server._map if isinstance(server, BaseWSGIServer) else server.map  # all it polls
    for listener in [d for d in list(sockets.values()) if isinstance(d, BaseWSGIServer)]:
        wasyncore.dispatcher.close(listener)
    server.task_dispatcher.shutdown(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        getattr(d, "total_outbufs_len", 0) for d in list(sockets.values())
    ):
        time.sleep(0.01)  # the poll loop is sending the last answers
    wasyncore.close_all(sockets)


def open_app(settings: Settings) -> BotApp:
    """The app, once Slack has accepted the bot token; SettingsError when Slack refuses it or
    cannot be reached. Touches no database."""
    from slack_bolt.error import BoltError
    from slack_sdk.errors import SlackClientError

    from bot.app import create_app

    try:
        return create_app(settings)  # checks the bot token with auth.test
    except (BoltError, SlackClientError, OSError) as exc:  # OSError: Slack unreachable
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SettingsError(
            f"Slack rejected SLACK_BOT_TOKEN or could not be reached at SLACK_API_URL "
            f"({settings.slack_api_url}): {cause}"
        ) from None


def _hold_sqlite_file(url: str) -> IO[str] | None:
    """Lock `<file>.serve.lock` for this process's lifetime (the kernel drops it when the process
    dies, even by SIGKILL); SettingsError when another process holds it."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    path = Path(database).resolve()
    try:
        fh = open(f"{path}.serve.lock", "a+")  # held until the process exits
    except OSError as exc:
        raise SettingsError(f"DATABASE_URL: cannot create files next to {path}: {exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        fh.close()
        raise SettingsError(
            f"another bot process (pid {holder}) is already using the SQLite file {path}; "
            "SQLite allows one process: stop that one, or use PostgreSQL to run several"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def run(prepared: Prepared, settings: Settings) -> None:
    """Migrate, start the role's parts, say in one line what this process serves, and run until
    SIGTERM or SIGINT; then finish or re-queue the jobs in hand."""
    from bot.store.db import migrate

    app, role = prepared.app, prepared.role
    stop: list[Callable[[], None]] = []
    background: list[Callable[[], None]] = []
    for warning in prepared.warnings:
        log.warning("%s", warning)
    try:
        migrate(app.engine)
    except BaseException:
        prepared.close()  # nothing started: main says in one line why
        raise
    try:
        if role != "worker":
            app.start_receiving()
        if role != "web":
            app.start()
            _start_background(app, settings, background)
        metrics_note = _start_metrics(prepared.metrics, settings)
        _on_signals(stop)
        _serve(prepared, settings, metrics_note, stop)
    finally:
        for fn in background:
            fn()
        prepared.close(settings.shutdown_timeout_seconds)
        log.info("stopped")


def _start_background(app: BotApp, settings: Settings, stops: list[Callable[[], None]]) -> None:
    """Start housekeeping and (when scheduled) the digest; add how to stop each to `stops`."""
    from bot.housekeeping import Housekeeper

    housekeeper = Housekeeper(app.sessions, settings)
    housekeeper.start()
    stops.append(housekeeper.stop)
    if settings.digest_schedule and settings.digest_channel:
        from bot.usage import DigestScheduler

        scheduler = DigestScheduler(app.usage, app.team_ids, settings.digest_channel)
        scheduler.start()
        stops.append(scheduler.stop)


def _start_metrics(server: Any, settings: Settings) -> str:  # noqa: ANN401 - a waitress server
    """Serve METRICS_PORT's bound `server` (if any) on a thread of its own; what the ready line
    says about it."""
    if server is None:
        return ""
    threading.Thread(target=_serve_forever, args=(server,), name="metrics", daemon=True).start()
    return f"; GET /metrics on {settings.metrics_bind}:{server.effective_port}"


def _on_signals(stop: list[Callable[[], None]]) -> None:
    """On SIGTERM or SIGINT, call everything in `stop` (filled in as the parts start)."""

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: no new work; finishing what is in hand", signal.Signals(signum).name)
        for fn in stop:
            fn()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _serve(
    prepared: Prepared, settings: Settings, metrics_note: str, stop: list[Callable[[], None]]
) -> None:
    """Say in one line what this process serves, and serve until a signal: nothing for Slack
    (worker), Socket Mode, or HTTP (on the server `prepare` bound)."""
    app, role, server = prepared.app, prepared.role, prepared.http
    does = {
        "serve": f"and running jobs on {settings.worker_threads} worker threads",
        "web": "and queueing jobs for `python -m bot worker` (no worker threads here)",
        "worker": f"running jobs on {settings.worker_threads} worker threads",
    }[role]
    if role == "worker":
        _until_signal(stop, "worker: %s; no Slack-facing HTTP%s", does, metrics_note)
    elif settings.socket_mode:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        assert settings.slack_app_token is not None
        handler = SocketModeHandler(app.bolt, settings.slack_app_token.get_secret_value())
        stop.append(handler.close)
        handler.connect()
        _until_signal(stop, "serving Slack over Socket Mode %s%s", does, metrics_note)
    else:
        # from a thread of its own: the poll loop (this thread) sends the answers in hand
        stop.append(lambda: threading.Thread(target=stop_server, args=(server,)).start())
        routes = "POST /slack/events, GET /healthz" + (", GET /metrics" * (not metrics_note))
        log.info(
            "serving HTTP on port %s (%s) %s%s", server.effective_port, routes, does, metrics_note
        )
        _serve_forever(server)


def _until_signal(stop: list[Callable[[], None]], line: str, *args: object) -> None:
    """Log `line` (ready), then wait until a signal calls what is in `stop`."""
    closed = threading.Event()
    stop.append(closed.set)
    log.info(line, *args)
    closed.wait()


def _serve_forever(server: Any) -> None:  # noqa: ANN401 - waitress has two server types
    try:
        server.run()
    except OSError:
        pass  # the listening socket was closed by the signal handler
