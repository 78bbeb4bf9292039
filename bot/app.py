"""Application factory: builds the Bolt app, clients and database; importing builds nothing."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.oauth.oauth_settings import OAuthSettings
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from bot import listeners
from bot.config import Settings
from bot.installations import (
    ClientsAuthorize,
    EncryptedInstallationStore,
    OAuthStates,
    SlackClients,
    TokenCipher,
)
from bot.jobs import JobQueue, WorkerPool
from bot.llm import MessagesClient
from bot.metrics import Metrics
from bot.service import AnswerService
from bot.store.db import make_engine, make_session_factory, ping
from bot.store.models import slack_bots
from bot.summaries import SummaryService
from bot.usage import Budgets, UsageService
from bot.workspace import Workspaces

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


class WorkExecutor(ThreadPoolExecutor):
    """The pool for slow work after the ack; it can tell when everything submitted has finished."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="work")
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until all work submitted so far (and work it submits) is done; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return True
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, not_done = wait(pending, timeout=remaining)
            if not_done:
                return False


def make_slack_client(settings: Settings) -> WebClient:
    """A Web API client that retries 429s (honouring Retry-After), 5xx and dropped connections."""
    token = settings.slack_bot_token
    return WebClient(
        token=token.get_secret_value() if token is not None else None,
        base_url=settings.slack_api_url,
        timeout=30,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def make_llm(settings: Settings) -> MessagesClient:
    """The Messages API client configured from settings."""
    return MessagesClient(
        settings.anthropic_base_url,
        settings.anthropic_api_key.get_secret_value(),
        timeout=settings.anthropic_timeout,
        max_retries=settings.anthropic_max_retries,
    )


@dataclass
class BotApp:
    """Everything one running bot needs, built by `create_app`."""

    settings: Settings
    bolt: App
    engine: Engine
    sessions: sessionmaker[Session]
    service: AnswerService
    llm: MessagesClient
    executor: WorkExecutor
    queue: JobQueue
    pool: WorkerPool
    usage: UsageService
    clients: SlackClients
    store: EncryptedInstallationStore | None
    _started: bool = False

    def team_ids(self) -> list[str]:
        """The workspaces this bot serves: the token's, or every OAuth installation's (for an
        org-wide install, the org's workspaces the bot has heard from)."""
        if self.store is None:
            return [str(self.clients.base.auth_test()["team_id"])]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(slack_bots.c.team_id, slack_bots.c.enterprise_id).distinct()
            ).all()
        teams = {team for team, _ in rows if team}
        for org in {org for team, org in rows if not team and org}:
            teams.update(self.service.workspaces.teams_of(org))
        return sorted(teams)

    def start(self) -> None:
        """Start the workers that run stored jobs (and pick up what a previous run left)."""
        if not self._started:
            self.pool.start()
            self._started = True

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Block until no job is queued or running and no listener is busy; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.executor.wait_idle(timeout=max(0.0, deadline - time.monotonic())):
                return False
            with self.queue.changed:
                if self.queue.pending() == 0 and self.pool.in_flight() == 0:
                    return self.executor.wait_idle(timeout=max(0.0, deadline - time.monotonic()))
                self.queue.changed.wait(0.5)
        return False

    def _observe(self, path: str, start_response: Callable[..., Any]) -> list[bytes] | None:
        """GET /metrics and GET /healthz; None for any other path."""
        if path == "/metrics":
            start_response("200 OK", [("content-type", CONTENT_TYPE_LATEST)])
            return [self.service.metrics.render()]
        if path == "/healthz":
            ok = ping(self.engine)
            return _plain(start_response, 200 if ok else 503, "ok" if ok else "database down")
        return None

    def metrics_wsgi(self) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
        """The WSGI application of the METRICS_PORT listener: GET /metrics and GET /healthz."""

        def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            found = self._observe(environ.get("PATH_INFO", ""), start_response)
            return found if found is not None else _plain(start_response, 404, "not found")

        return application

    def wsgi(self) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
        """The WSGI application: POST /slack/events, GET /healthz, and GET /metrics unless
        METRICS_PORT moves it to a listener of its own."""
        handler = SlackRequestHandler(self.bolt, path="/slack/events")
        oauth_paths = {"/slack/install", "/slack/oauth_redirect"}
        public_metrics = self.settings.metrics_port is None

        def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            path = environ.get("PATH_INFO", "")
            if path == "/healthz" or (path == "/metrics" and public_metrics):
                return self._observe(path, start_response)
            if path == "/slack/events" and environ.get("REQUEST_METHOD") == "POST":
                try:
                    length = int(environ.get("CONTENT_LENGTH") or 0)
                except ValueError:
                    return _plain(start_response, 400, "bad content-length")
                if length > MAX_BODY_BYTES:
                    return _plain(start_response, 413, "request body too large")
                body = environ["wsgi.input"].read(length) if length else b""
                problem = _malformed(body, environ.get("CONTENT_TYPE", ""))
                if problem:
                    log.warning("rejected a malformed request body: %s", problem)
                    return _plain(start_response, 400, problem)
                environ["wsgi.input"] = io.BytesIO(body)
                started = time.perf_counter()
                status_holder: list[str] = []

                def recording_start(status: str, headers: Any, *exc: Any) -> Any:
                    status_holder.append(status.split(" ", 1)[0])
                    return start_response(status, headers, *exc)

                result = handler(environ, recording_start)
                metrics = self.service.metrics
                metrics.ack_seconds.observe(time.perf_counter() - started)
                metrics.http_requests.labels(status_holder[0] if status_holder else "?").inc()
                return result
            if path in oauth_paths and self.bolt.oauth_flow is None:
                return _plain(start_response, 404, "OAuth is not configured")
            return handler(environ, start_response)

        return application

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, finish or re-queue what is in hand, release connections."""
        if self._started:
            self.pool.stop(timeout)
        self.executor.shutdown(wait=True)
        self.llm.close()
        self.engine.dispose()


def _malformed(body: bytes, content_type: str) -> str | None:
    """Why a body cannot be a Slack request, or None when it can."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    if not text.strip():
        return "empty body"
    if content_type.startswith("application/json"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return "body is not valid JSON"
        return None if isinstance(parsed, dict) else "JSON body is not an object"
    fields = urllib.parse.parse_qs(text, keep_blank_values=True)
    if not fields:
        return "form body has no fields"
    if "payload" in fields:
        try:
            parsed = json.loads(fields["payload"][0])
        except ValueError:
            return "payload is not valid JSON"
        if not isinstance(parsed, dict):
            return "payload is not a JSON object"
    return None


def _plain(start_response: Callable[..., Any], status: int, text: str) -> list[bytes]:
    reason = {
        200: "OK",
        400: "Bad Request",
        404: "Not Found",
        413: "Payload Too Large",
        503: "Unavailable",
    }
    start_response(f"{status} {reason.get(status, '')}", [("content-type", "text/plain")])
    return [text.encode()]


def create_app(
    settings: Settings,
    *,
    slack_client: WebClient | None = None,
    llm: MessagesClient | None = None,
    engine: Engine | None = None,
    clock: Callable[[], float] = time.time,
) -> BotApp:
    """Build the bot. Pass clients or an engine to replace the ones settings would make."""
    engine = engine or make_engine(
        settings.database_url, pool_size=settings.worker_threads + settings.http_threads + 4
    )
    sessions = make_session_factory(engine)
    client = slack_client or make_slack_client(settings)
    llm = llm or make_llm(settings)
    executor = WorkExecutor(settings.worker_threads)
    secret = settings.slack_signing_secret
    store: EncryptedInstallationStore | None = None
    oauth: dict[str, Any] = {}
    if settings.oauth:
        assert settings.slack_client_id and settings.slack_client_secret
        key = settings.encryption_key
        store = EncryptedInstallationStore(
            settings.slack_client_id, engine, TokenCipher(key.get_secret_value() if key else None)
        )
        oauth = {
            "installation_store": store,
            "oauth_settings": OAuthSettings(
                client_id=settings.slack_client_id,
                client_secret=settings.slack_client_secret.get_secret_value(),
                scopes=[s.strip() for s in settings.slack_scopes.split(",") if s.strip()],
                installation_store=store,
                state_store=OAuthStates(engine),
                install_page_rendering_enabled=True,
            ),
        }
    clients = SlackClients(
        client,
        store,
        client_id=settings.slack_client_id,
        client_secret=(
            settings.slack_client_secret.get_secret_value()
            if settings.slack_client_secret
            else None
        ),
    )
    if store is not None:
        oauth["authorize"] = ClientsAuthorize(clients)  # one place refreshes tokens, locked
    bolt = App(
        client=client,
        signing_secret=secret.get_secret_value() if secret else None,
        request_verification_enabled=not settings.socket_mode,
        listener_executor=executor,
        logger=logging.getLogger("bot.bolt"),
        **oauth,
    )
    metrics = Metrics()
    digest_channel = settings.digest_channel

    def budget_alert(team_id: str, text: str) -> None:
        if digest_channel:
            try:
                service.client_for(team_id).chat_postMessage(channel=digest_channel, text=text)
            except Exception as exc:  # noqa: BLE001 - an alert must not break a request
                log.warning("budget alert for team=%s not posted: %s", team_id, exc)

    budgets = Budgets(settings, sessions, notify=budget_alert)
    workspaces = Workspaces(settings, sessions)
    service = AnswerService(
        settings=settings,
        clients=clients,
        llm=llm,
        sessions=sessions,
        clock=clock,
        metrics=metrics,
        budgets=budgets,
        workspaces=workspaces,
    )
    summaries = SummaryService(service, sessions, clock=clock)
    usage = UsageService(settings, sessions, service.client_for, service.display_name, clock)
    queue = JobQueue(engine, sessions, lease_seconds=settings.job_lease_seconds)
    handlers = listeners.register(
        bolt,
        answers=service,
        summaries=summaries,
        sessions=sessions,
        queue=queue,
        store=store,
        usage=usage,
    )
    metrics.add_gauges(queue.pending, queue.oldest_queued_age)

    def job_done(kind: str, outcome: str, seconds: float) -> None:
        metrics.jobs.labels(kind, outcome).inc()
        metrics.job_seconds.labels(kind).observe(seconds)

    pool = WorkerPool(queue, handlers, threads=settings.worker_threads, on_done=job_done)
    return BotApp(
        settings,
        bolt,
        engine,
        sessions,
        service,
        llm,
        executor,
        queue,
        pool,
        usage,
        clients,
        store,
    )
