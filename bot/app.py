"""Application factory: builds the Bolt app, clients and database; importing builds nothing."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.oauth.callback_options import CallbackOptions, FailureArgs, SuccessArgs
from slack_bolt.oauth.oauth_settings import OAuthSettings
from slack_bolt.request import BoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from bot import listeners
from bot.budgets import Budgets
from bot.config import Settings
from bot.coverage import Receiver
from bot.installations import (
    ClientsAuthorize,
    EncryptedInstallationStore,
    OAuthStates,
    SlackClients,
    TokenCipher,
    TokenUnreadable,
)
from bot.jobs import Handler, JobQueue, WorkerPool
from bot.keepalive import KIND as KEEPALIVE
from bot.keepalive import KeepAlive
from bot.listeners.messages import MessageRouter
from bot.llm import MessagesClient
from bot.logsafety import withhold_details
from bot.metrics import Metrics
from bot.service import AnswerService
from bot.store.db import make_engine, make_session_factory, ping
from bot.store.models import slack_bots
from bot.summaries import SummaryService
from bot.usage import UsageService
from bot.user_messages import UNREADABLE_REPLY
from bot.workspace import Workspaces

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000
# Slack's OAuth redirect carries a code and a state of well under 200 characters each.
MAX_OAUTH_QUERY_CHARS = 2_000
# Slack signs every request with its time; older ones are refused as possible replays.
MAX_REQUEST_AGE_SECONDS = 300


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
    messages: MessageRouter = field(default_factory=MessageRouter)
    receiver: Receiver | None = None  # this process's record of receiving events (coverage.py)
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
                try:
                    pending = self.queue.pending()
                except DBAPIError as exc:  # a pooled connection the server dropped: once
                    if not exc.connection_invalidated:
                        raise
                    continue
                if pending == 0 and self.pool.in_flight() == 0:
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
        secret = self.settings.slack_signing_secret
        signing_key = secret.get_secret_value().encode() if secret else None
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
                if signing_key is not None:
                    unsigned = _unsigned(signing_key, environ, body, time.time())
                    if unsigned:
                        # Here, not in Bolt: Bolt logs a badly signed request's whole body.
                        log.warning("rejected a request to /slack/events: %s", unsigned)
                        return _plain(start_response, 401, "invalid request signature")
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
            if path in oauth_paths and len(environ.get("QUERY_STRING", "")) > MAX_OAUTH_QUERY_CHARS:
                log.warning(
                    "rejected a request to %s: query string of %d characters (limit %d)",
                    path,
                    len(environ.get("QUERY_STRING", "")),
                    MAX_OAUTH_QUERY_CHARS,
                )
                return _plain(start_response, 400, "query string too long")
            return handler(environ, start_response)

        return application

    def start_receiving(self) -> None:
        """Record that this process serves Slack's events from now on (serve, web, Socket Mode);
        kept transcripts count on it (see bot/coverage.py)."""
        if self.receiver is not None:
            self.receiver.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, finish or re-queue what is in hand, release connections."""
        if self.receiver is not None:
            self.receiver.stop()
        if self._started:
            self.pool.stop(timeout)
        self.executor.shutdown(wait=True)
        self.llm.close()
        self.engine.dispose()


def _unsigned(key: bytes, environ: dict[str, Any], body: bytes, now: float) -> str | None:
    """Why a request is not signed by Slack (no text of it), or None when it is: v0= HMAC-SHA256
    of `v0:{timestamp}:{body}` with the signing secret, at most five minutes old."""
    timestamp = environ.get("HTTP_X_SLACK_REQUEST_TIMESTAMP", "")
    signature = environ.get("HTTP_X_SLACK_SIGNATURE", "")
    if not timestamp or not signature:
        return "no X-Slack-Signature / X-Slack-Request-Timestamp headers"
    try:
        age = now - int(timestamp)
    except ValueError:
        return "X-Slack-Request-Timestamp is not a number"
    if abs(age) > MAX_REQUEST_AGE_SECONDS:
        return (
            f"signed {int(age)} s ago, more than {MAX_REQUEST_AGE_SECONDS} s (a replay, or this "
            "host's clock is off)"
        )
    expected = "v0=" + hmac.new(key, f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.encode(errors="replace")):
        return "signature does not match SLACK_SIGNING_SECRET"
    return None


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
        401: "Unauthorized",
        404: "Not Found",
        413: "Payload Too Large",
        503: "Unavailable",
    }
    start_response(f"{status} {reason.get(status, '')}", [("content-type", "text/plain")])
    return [text.encode()]


def _installed(args: SuccessArgs) -> BoltResponse:
    """The OAuth install finished: one line with ids, then Bolt's page."""
    done = args.installation
    log.info(
        "installed in team=%s enterprise=%s (org-wide: %s)",
        done.team_id,
        done.enterprise_id,
        bool(done.is_enterprise_install),
    )
    return args.default.success(args)


def _install_failed(args: FailureArgs) -> BoltResponse:
    """The OAuth install failed: one line with Bolt's reason (never the code or state)."""
    error = f" ({type(args.error).__name__})" if args.error else ""
    log.warning("OAuth install failed: %s%s", args.reason, error)
    return args.default.failure(args)


def _on_error(
    error: Exception, request: BoltRequest, response: BoltResponse | None
) -> BoltResponse | None:
    """Bolt's error handler. A workspace whose stored token cannot be decrypted (a wrong
    ENCRYPTION_KEY) is answered 200 with one line naming it and the cause: retrying cannot help
    until the operator acts, and non-200 answers (even with X-Slack-No-Retry) count against the
    failure rate at which Slack disables an app's event subscriptions. Anything else is logged
    like Bolt does (the exception's type, not its text)."""
    if not isinstance(error, TokenUnreadable):
        log.exception("a listener or middleware raised %s", type(error).__name__)
        return None
    log.error(
        "cannot serve workspace %s: %s; answered 200 so Slack does not retry. Set the right "
        "ENCRYPTION_KEY (`python -m bot doctor` checks it)",
        error.workspace or "?",
        error.cause,
    )
    if response is None:  # already acknowledged
        return None
    body = request.body if isinstance(request.body, dict) else {}
    return BoltResponse(status=200, body=UNREADABLE_REPLY if body.get("command") else "")


def create_app(
    settings: Settings,
    *,
    slack_client: WebClient | None = None,
    llm: MessagesClient | None = None,
    engine: Engine | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> BotApp:
    """Build the bot. Pass clients or an engine to replace the ones settings would make;
    `clock` and `sleep` are the time the bot lives in (tests pass a fake Slack's)."""
    engine = engine or make_engine(
        settings.database_url, pool_size=settings.worker_threads + settings.http_threads + 4
    )
    sessions = make_session_factory(engine)
    client = slack_client or make_slack_client(settings)
    llm = llm or make_llm(settings)
    executor = WorkExecutor(settings.worker_threads)
    store, oauth = _oauth(settings, engine)
    clients = _slack_clients(settings, client, store)
    if store is not None:
        oauth["authorize"] = ClientsAuthorize(clients)  # one place refreshes tokens, locked
    bolt = _bolt(settings, client, executor, oauth)
    metrics = Metrics()
    service = _answer_service(settings, clients, llm, sessions, clock, sleep, metrics)
    summaries = SummaryService(
        reader=service.reader,
        workspaces=service.workspaces,
        complete=service.complete,
        client_for=service.client_for,
        sessions=sessions,
        clock=clock,
        refusals=service.refusals,
    )
    usage = UsageService(settings, sessions, service.client_for, service.display_name, clock)
    queue = JobQueue(engine, sessions, lease_seconds=settings.job_lease_seconds, clock=clock)
    messages = MessageRouter()
    receiver = Receiver(sessions, clock)
    handlers = listeners.register(
        bolt,
        answers=service,
        summaries=summaries,
        sessions=sessions,
        queue=queue,
        store=store,
        usage=usage,
        messages=messages,
        receiver=receiver,
    )
    service.keepalive = KeepAlive(
        queue=queue,
        sessions=sessions,
        llm=llm,
        ledger=service.ledger,
        budgets=service.budgets,
        effective=service.workspaces.effective,
        clock=clock,
        habits=service.habits,
        prefix_now=service.prefix_now,
    )
    handlers[KEEPALIVE] = service.keepalive.handler()
    pool = _worker_pool(settings, queue, handlers, metrics)
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
        messages,
        receiver,
    )


def _oauth(
    settings: Settings, engine: Engine
) -> tuple[EncryptedInstallationStore | None, dict[str, Any]]:
    """With OAuth settings: the installation store and Bolt's OAuth arguments; else (None, {})."""
    if not settings.oauth:
        return None, {}
    assert settings.slack_client_id and settings.slack_client_secret
    key = settings.encryption_key
    store = EncryptedInstallationStore(
        settings.slack_client_id, engine, TokenCipher(key.get_secret_value() if key else None)
    )
    return store, {
        "installation_store": store,
        "oauth_settings": OAuthSettings(
            client_id=settings.slack_client_id,
            client_secret=settings.slack_client_secret.get_secret_value(),
            scopes=[s.strip() for s in settings.slack_scopes.split(",") if s.strip()],
            installation_store=store,
            state_store=OAuthStates(engine),
            install_page_rendering_enabled=True,
            callback_options=CallbackOptions(success=_installed, failure=_install_failed),
        ),
    }


def _slack_clients(
    settings: Settings, client: WebClient, store: EncryptedInstallationStore | None
) -> SlackClients:
    """The Web API client of each workspace: the token's, or each installation's."""
    return SlackClients(
        client,
        store,
        client_id=settings.slack_client_id,
        client_secret=(
            settings.slack_client_secret.get_secret_value()
            if settings.slack_client_secret
            else None
        ),
    )


def _bolt(
    settings: Settings, client: WebClient, executor: WorkExecutor, oauth: dict[str, Any]
) -> App:
    """The Bolt app: listeners run on `executor`, its logs withhold request details."""
    secret = settings.slack_signing_secret
    bolt_logger = logging.getLogger("bot.bolt")
    # Before App(): Bolt copies this logger's filters to the loggers it makes from it.
    withhold_details(bolt_logger, client.logger)
    bolt = App(
        client=client,
        signing_secret=secret.get_secret_value() if secret else None,
        # BotApp.wsgi verifies first and logs only the cause; Bolt's check stays as a second one.
        request_verification_enabled=not settings.socket_mode,
        # The bot's own messages are part of the transcripts it keeps (listeners/keep.py);
        # every listener that reacts to messages skips the bot's own (MessageRouter, mention).
        ignoring_self_events_enabled=False,
        listener_executor=executor,
        logger=bolt_logger,
        **oauth,
    )
    bolt.error(_on_error)
    return bolt


def _answer_service(
    settings: Settings,
    clients: SlackClients,
    llm: MessagesClient,
    sessions: sessionmaker[Session],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    metrics: Metrics,
) -> AnswerService:
    """The answer path, with the spend budgets (alerts go to DIGEST_CHANNEL) and the
    per-workspace settings."""
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
        sleep=sleep,
    )
    return service


def _worker_pool(
    settings: Settings, queue: JobQueue, handlers: dict[str, Handler], metrics: Metrics
) -> WorkerPool:
    """The threads that run stored jobs, counted and timed in `metrics`."""
    metrics.add_gauges(queue.pending, queue.oldest_queued_age)

    def job_done(kind: str, outcome: str, seconds: float) -> None:
        metrics.jobs.labels(kind, outcome).inc()
        metrics.job_seconds.labels(kind).observe(seconds)

    return WorkerPool(queue, handlers, threads=settings.worker_threads, on_done=job_done)
