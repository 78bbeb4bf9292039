"""Answering a request about a thread: read it, build the prompt, call the model, reply, record."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from slack_sdk import WebClient
from sqlalchemy.orm import Session, sessionmaker

from bot.budgets import BudgetExceeded, Budgets
from bot.compaction import Compactor, reusable
from bot.config import Settings
from bot.delivery import Refusals, ThreadReply, tell
from bot.files import (
    DocumentRefusals,
    FileReader,
    Prepared,
    documents_unsupported,
    has_documents,
    refuses_documents,
)
from bot.formatting import footer_line
from bot.installations import SlackClients
from bot.jobs import Deferred
from bot.keepalive import KeepAlive, KeepCaller
from bot.keeping import Keeper, OrgCache
from bot.ledger import Ledger
from bot.llm import Completion, LLMError, MessagesClient, OnText
from bot.metrics import Metrics
from bot.pricing import cache_floor, price_for
from bot.prompt import MAX_IMAGES, Built, build_conversation_request, build_request
from bot.read_budget import ReadBudget
from bot.store import data
from bot.threads import (
    NameResolver,
    ReadsPending,
    ThreadReader,
    ThreadReadError,
    clean_request,
    is_external,
    render_thread,
    ts_key,
)
from bot.transcript import DocumentPart, Part, Turn
from bot.ttl_policy import Habits, Rhythm, TtlPolicy, record_entries
from bot.user_messages import (
    EXTERNAL_REQUESTER,
    SOMETHING_WRONG,
    cut_off_note,
    images_left_out_note,
    llm_error_text,
    partial_note,
    read_error_text,
    reading_status,
    refused_text,
    stop_note,
    unposted_text,
    waiting_status,
    writing_status,
)
from bot.workspace import Effective, Workspaces
from bot.workspace import refusal as channel_refusal

log = logging.getLogger(__name__)

DM = "dm"  # the kind of a request in the bot's DM (its Messages tab): a conversation turn
# How a DM conversation's earlier turns reach the model: "turns" (real user/assistant turns,
# the default: measured to cache more, docs/caching.md) or "transcript" (one user turn holding
# the conversation as a transcript, as for mentions; kept for the measurement).
DM_LAYOUTS = ("turns", "transcript")

# Reads that will take this long get an answer from what is kept first, marked partial.
PARTIAL_AFTER_SECONDS = 120.0
# A job waiting for reads comes back at least this often to keep the status line alive (Slack
# drops it after two minutes without a message).
STATUS_REFRESH_SECONDS = 60.0


class DocumentsRefused(Exception):
    """The endpoint refused a request's PDF document blocks (remembered): send it again with
    the PDFs' text."""


@dataclass(frozen=True)
class Done:
    """A completed model call: the answer, its footer line and its ledger row."""

    completion: Completion
    footer: str
    usage_id: int
    # Files of the thread that could not be read, and why (a line for the answer), if any.
    files_note: str | None = None


class Complete(Protocol):
    """`AnswerService.complete` as its other callers see it (summaries, recaps)."""

    def __call__(
        self,
        req: ThreadRequest,
        messages: list[dict[str, Any]],
        request: str,
        *,
        recap: bool = False,
        eff: Effective | None = None,
    ) -> Done: ...


@dataclass(frozen=True)
class Plan:
    """A model call ready to go: the request built on the thread's cache state, the rhythm to
    store after it, and the budget hold that ends with the call."""

    req: ThreadRequest
    eff: Effective
    model: str
    built: Built
    rhythm: Rhythm
    now: datetime
    started: float
    hold: str | None


@dataclass(frozen=True)
class ThreadRequest:
    """Somebody asked about a thread: where, who, and what."""

    team_id: str
    channel_id: str
    thread_ts: str
    message_ts: str
    user_id: str
    text: str
    bot_user_id: str
    bot_id: str | None = None
    kind: str = "mention"
    enterprise_id: str | None = None
    user_team: str | None = None  # the requester's workspace (another one in shared channels)
    # The files on the asking message itself, as its event showed them (`threads.slim`): read
    # with it when the message is not read or kept yet.
    files: list[dict[str, Any]] | None = None
    # Waiting for Slack's read budget (the job is deferred between attempts):
    waited: int = 0  # attempts that had to wait so far
    placeholder_ts: str | None = None  # the message showing progress, where there is no status
    partial_ts: str | None = None  # a partial answer posted while the reads go on


class AnswerService:
    """Slack thread -> prompt with cache breakpoints -> model -> reply in thread + ledger."""

    def __init__(
        self,
        *,
        settings: Settings,
        clients: SlackClients,
        llm: MessagesClient,
        sessions: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        budgets: Budgets | None = None,
        workspaces: Workspaces | None = None,
        ledger: Ledger | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._settings = settings
        self.workspaces = workspaces or Workspaces(settings, sessions)
        self.metrics = metrics or Metrics()
        self.ledger = ledger or Ledger(
            sessions, metrics=self.metrics, default_model=settings.anthropic_model, clock=clock
        )
        self.budgets = budgets
        self._clients = clients
        self._llm = llm
        self._sessions = sessions
        self._clock = clock
        self._resolvers: dict[str, NameResolver] = {}
        self._scale: dict[str, float] = {}
        self._ttl = TtlPolicy(settings.cache_ttl)
        self._warned_no_cache: set[str] = set()
        self.refusals = Refusals(clock)  # Slack methods refused for good, per conversation kind
        self.budget = ReadBudget(sessions, clock, setting=settings.slack_read_tier)
        self.reader = ThreadReader(
            clients,
            sessions,
            full_every=timedelta(hours=settings.full_reread_hours),
            budget=self.budget,
            sleep=sleep,
            clock=clock,
        )
        # What message events (and the bot's own answers) store, for workspaces that keep them.
        self.keeper = Keeper(sessions, self.workspaces, OrgCache(self.client_for), self.now)
        self.reader.shape = lambda team, org, m: self.keeper.content(team, org, m, False)
        self.dm_layout = DM_LAYOUTS[0]  # see DM_LAYOUTS (bench/dm_conversation.py sets it)
        # A PDF as a document may take up to half the context budget; a larger one goes as text.
        self.files = FileReader(sessions, max_document_tokens=settings.context_budget_tokens // 2)
        self.documents = DocumentRefusals(clock)  # endpoints that refused PDF document blocks
        self.keepalive: KeepAlive | None = None  # set by create_app (it needs the job queue)

    @property
    def settings(self) -> Settings:
        """The operator's settings this service runs with."""
        return self._settings

    def client_for(self, team_id: str, enterprise_id: str | None = None) -> WebClient:
        """The Web API client of a workspace (an org-wide install's, for a Grid workspace)."""
        return self._clients.for_team(
            team_id, enterprise_id or self.workspaces.enterprise_of(team_id)
        )

    def installed(self, team_id: str, enterprise_id: str | None = None) -> bool:
        """False once the workspace has uninstalled the app (OAuth mode)."""
        return self._clients.installed(
            team_id, enterprise_id or self.workspaces.enterprise_of(team_id)
        )

    def _client(self, req: ThreadRequest) -> WebClient:
        return self.client_for(req.team_id, req.enterprise_id)

    def now(self) -> datetime:
        """The current time (UTC) from the injected clock."""
        return datetime.fromtimestamp(self._clock(), UTC)

    def _names(self, team_id: str) -> NameResolver:
        if team_id not in self._resolvers:
            self._resolvers[team_id] = NameResolver(
                lambda: self.client_for(team_id), self._sessions, team_id
            )
        return self._resolvers[team_id]

    def display_name(self, team_id: str, user_id: str) -> str:
        """A user's display name (cached)."""
        return self._names(team_id).name(user_id)

    def answer(self, req: ThreadRequest) -> None:
        """Answer `req` in its thread; every failure ends as one short message to the user."""
        try:
            self._answer(req)
        except Deferred:
            raise  # waiting for Slack's read budget: the job runs again later
        except Exception:
            log.exception("answering %s/%s failed", req.channel_id, req.thread_ts)
            self.tell(req, SOMETHING_WRONG)

    def _answer(self, req: ThreadRequest) -> None:
        started = time.monotonic()
        names = self._names(req.team_id)
        eff = self.workspaces.effective(req.team_id)
        if self._turned_away(req, eff, names):
            return
        streaming = self._settings.stream_answers
        reply = self._reply(req, stream=streaming)
        reply.adopt(req.placeholder_ts)
        try:
            messages = self._read(req, reply, started, eff)
        except ReadsPending as wait:
            raise self._wait(req, reply, wait, eff, started) from None
        if messages is None:
            return
        before, request = self._context(req, messages, names)
        reply.status(*writing_status(len(before)))
        try:
            done = self.complete(
                req,
                before,
                request,
                seen=messages,
                started=started,
                on_text=reply.append if streaming else None,
                eff=eff,
                on_progress=reply.keep_status,
            )
        except BudgetExceeded as exc:
            self._fail(req, reply, refused_text(exc))
            return
        except LLMError as exc:
            if exc.partial:
                outcome = reply.finish(None, note=cut_off_note(exc.kind), feedback_id=exc.usage_id)
                self._keep(req, reply)
                self._ended(req, outcome, exc.usage_id)
            else:
                self._fail(req, reply, llm_error_text(exc))
            return
        self._deliver(req, reply, done)

    def _context(
        self, req: ThreadRequest, messages: list[dict[str, Any]], names: NameResolver
    ) -> tuple[list[dict[str, Any]], str]:
        """The messages the model sees and the request after them: for a mention, the messages
        before it (and the mention itself when it carries files, so they are read) and its
        text; in a conversation (`conversational`), the messages up to and including the one
        asked, whose text is then the last turn (no request of its own)."""
        asked = next((m for m in messages if m["ts"] == req.message_ts), None)
        if asked is None:  # not read or kept (yet): as its event showed it
            asked = {"ts": req.message_ts, "user": req.user_id, "text": req.text}
            if req.files:
                asked["files"] = req.files
        if not self.conversational(req):
            before = [m for m in messages if ts_key(m["ts"]) < ts_key(req.message_ts)]
            if asked.get("files"):  # "what does this screenshot say?": its files are asked about
                if req.user_team and "user_team" not in asked:  # Slack Connect: whose they are
                    asked = {**asked, "user_team": req.user_team}
                before.append(asked)
            return before, clean_request(req.text, names, req.bot_user_id)
        upto = [m for m in messages if ts_key(m["ts"]) < ts_key(req.message_ts)]
        return [*upto, asked], ""

    def conversational(self, req: ThreadRequest) -> bool:
        """Whether `req` is answered as a conversation in real turns (a DM, DM_LAYOUTS)."""
        return req.kind == DM and self.dm_layout == "turns"

    def _reply(self, req: ThreadRequest, *, stream: bool) -> ThreadReply:
        """A new answer in the request's thread."""
        return ThreadReply(
            self._client(req),
            channel=req.channel_id,
            thread_ts=req.thread_ts,
            team_id=req.team_id,
            user_id=req.user_id,
            stream=stream,
            clock=self._clock,
            refusals=self.refusals,
        )

    def _turned_away(self, req: ThreadRequest, eff: Effective, names: NameResolver) -> bool:
        """True (after telling the requester) when the channel is not on the workspace's
        allow-list or the requester belongs to another organisation. The bot's own DM is no
        channel: the allow-list (of channels) does not apply to it."""
        refusal = None if req.kind == DM else channel_refusal(eff, req.channel_id)
        if refusal is not None:
            log.info("team=%s channel=%s is not on the allow-list", req.team_id, req.channel_id)
            self.tell(req, refusal, private=True)
            return True
        return self.from_elsewhere(req, names)

    def from_elsewhere(self, req: ThreadRequest, names: NameResolver | None = None) -> bool:
        """True (after telling them privately) when the requester belongs to another
        organisation than the workspace's (Slack Connect): they get no answers."""
        org = req.enterprise_id or self.workspaces.enterprise_of(req.team_id)
        if is_external(
            req.user_team,
            req.user_id,
            team_id=req.team_id,
            enterprise_id=org,
            names=names or self._names(req.team_id),
        ):
            log.info("team=%s: request from another organisation (%s)", req.team_id, req.user_team)
            self.tell(req, EXTERNAL_REQUESTER, private=True)
            return True
        return False

    def _read(
        self, req: ThreadRequest, reply: ThreadReply, started: float, eff: Effective
    ) -> list[dict[str, Any]] | None:
        """The thread's messages, with a status line while they are read; None (after telling
        the requester) when Slack refused the read. Raises ReadsPending when the read budget
        makes the rest wait."""
        with self._sessions() as s:
            known = data.get_thread(s, req.team_id, req.channel_id, req.thread_ts)
            seen = known.messages_seen if known is not None else 0
        if not req.waited:
            reply.status(*reading_status(seen))
        try:
            return self.reader.read(
                req.team_id,
                req.channel_id,
                req.thread_ts,
                self.now(),
                req.enterprise_id,
                on_page=lambda _n: reply.keep_status(),
                keep=eff.keep_transcripts,
            )
        except ThreadReadError as exc:
            log.warning(
                "reading team=%s channel=%s thread=%s failed: %s",
                req.team_id,
                req.channel_id,
                req.thread_ts,
                exc.error,
            )
            self.ledger.failed(req, f"slack_{exc.error}", started)
            self._fail(req, reply, read_error_text(exc.error, req.bot_user_id))
            return None

    def _wait(
        self,
        req: ThreadRequest,
        reply: ThreadReply,
        wait: ReadsPending,
        eff: Effective,
        started: float,
    ) -> Deferred:
        """Slack's read budget makes the rest of the read wait: say so (status line, or the
        progress message), answer from what is kept when the wait is long (marked partial,
        once), and come back when the next read may go (or sooner, to keep the status alive)."""
        log.info(
            "team=%s channel=%s thread=%s: reads wait %.0f s (about %.0f s in all)",
            req.team_id,
            req.channel_id,
            req.thread_ts,
            (wait.until - self.now()).total_seconds(),
            wait.eta,
        )
        reply.status(*waiting_status(wait.eta, wait.kept, wait.expected, wait.why))
        partial_ts = req.partial_ts
        if partial_ts is None and wait.eta >= PARTIAL_AFTER_SECONDS:
            partial_ts = self._partial(req, eff, wait, started)
        until = min(wait.until, self.now() + timedelta(seconds=STATUS_REFRESH_SECONDS))
        later = dataclasses.replace(
            req,
            waited=req.waited + 1,
            placeholder_ts=reply.placeholder_ts,
            partial_ts=partial_ts,
        )
        return Deferred(until, dataclasses.asdict(later))

    def _partial(
        self, req: ThreadRequest, eff: Effective, wait: ReadsPending, started: float
    ) -> str | None:
        """Answer from the messages kept so far, marked partial; its ts ("" when nothing was
        posted, so it is not tried again)."""
        with self._sessions() as s:
            kept = data.load_messages(s, req.team_id, req.channel_id, req.thread_ts)
        kept.sort(key=lambda m: ts_key(m["ts"]))
        names = self._names(req.team_id)
        before, request = self._context(req, kept, names)
        if len(before) < 2:
            return ""
        reply = self._reply(req, stream=False)
        try:
            done = self.complete(req, before, request, started=started, eff=eff)
        except (BudgetExceeded, LLMError) as exc:
            log.info("no partial answer for %s: %s", req.thread_ts, type(exc).__name__)
            return ""
        note = partial_note(len(before), wait.expected, wait.eta)
        reply.finish(done.footer, text=done.completion.text, note=note, feedback_id=done.usage_id)
        return reply.posted_ts or ""

    def _fail(self, req: ThreadRequest, reply: ThreadReply, text: str) -> None:
        """Say what went wrong in the reply's placeholder, else in a message of its own."""
        if not reply.fail(text):
            self.tell(req, text)

    def _deliver(self, req: ThreadRequest, reply: ThreadReply, done: Done) -> None:
        """Finish the reply with the answer; note in the ledger how its delivery ended."""
        notes = [n for n in (stop_note(done.completion), done.files_note) if n]
        outcome = reply.finish(
            done.footer,
            text=done.completion.text,
            note="\n".join(notes) or None,
            feedback_id=done.usage_id,
        )
        self._keep(req, reply)
        self._ended(req, outcome, done.usage_id)

    def _keep(self, req: ThreadRequest, reply: ThreadReply) -> None:
        """Keep the answer's final text in the transcript (when the workspace keeps them): the
        next answer in the thread sees it without reading Slack. A failure only costs a read."""
        try:
            self.keeper.answer(
                req.team_id,
                req.channel_id,
                req.thread_ts,
                reply.delivered,
                req.bot_user_id,
                req.bot_id,
            )
        except Exception as exc:  # noqa: BLE001 - the answer is delivered; the event may keep it
            log.warning("keeping the answer in %s failed: %s", req.channel_id, type(exc).__name__)

    def _ended(self, req: ThreadRequest, outcome: str, usage_id: int | None) -> None:
        """Note in ledger row `usage_id` how the reply's delivery ended (`reply.finish`'s
        outcome); tell the requester when the answer could not be posted."""
        if outcome == "ok":
            return
        if outcome != "stopped_by_user":
            self.tell(req, unposted_text(outcome))
        if usage_id is None:
            return
        if outcome == "stopped_by_user":
            self.ledger.stopped_by_user(usage_id)
        else:
            self.ledger.set_outcome(usage_id, outcome)

    def complete(
        self,
        req: ThreadRequest,
        messages: list[dict[str, Any]],
        request: str,
        *,
        seen: list[dict[str, Any]] | None = None,
        started: float | None = None,
        recap: bool = False,
        on_text: OnText | None = None,
        eff: Effective | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> Done:
        """Render `messages`, call the model with the thread's cache state, record state and usage:
        plan (`_plan`), call (`_call`), record (`_record`).

        `on_progress` is called between the model calls of a compaction (a status line's refresh).
        Raises LLMError or BudgetExceeded after recording the failure; the caller tells the user.
        """
        started = time.monotonic() if started is None else started
        eff = eff or self.workspaces.effective(req.team_id)  # the caller's read, if it made one
        endpoint = self._settings.anthropic_base_url
        prepared = Prepared()
        documents = not self.documents.refused(endpoint, eff.model)
        turns = self._turns(req, messages, recap, prepared, documents=documents)
        try:  # a compaction (in the plan) carries the folded messages' documents too
            plan = self._plan(req, turns, request, eff, started, on_progress)
            completion = self._call(plan, on_text)
        except DocumentsRefused:  # remembered; the same request again, PDFs as their text
            prepared = Prepared()
            turns = self._turns(req, messages, recap, prepared, documents=False)
            plan = self._plan(req, turns, request, eff, started, on_progress)
            completion = self._call(plan, on_text)
        done = self._record(plan, completion, messages if seen is None else seen)
        left_out = images_left_out_note(plan.built.images_left_out, MAX_IMAGES)
        notes = [n for n in (prepared.note(), left_out) if n]
        return replace(done, files_note="\n".join(notes) or None)

    def _turns(
        self,
        req: ThreadRequest,
        messages: list[dict[str, Any]],
        recap: bool,
        prepared: Prepared | None = None,
        *,
        documents: bool = True,
    ) -> list[Turn]:
        """The transcript of `messages`, their files read (`bot.files`) into `prepared`; PDFs as
        documents unless `documents` is False (then as their text)."""
        names = self._names(req.team_id)
        into = Prepared() if prepared is None else prepared

        def files(readable: list[dict[str, Any]]) -> dict[str, tuple[Part, ...]]:
            where = (req.team_id, req.channel_id, req.thread_ts)
            token = self._client(req).token
            got = self.files.prepare(where, token, readable, self.now(), documents=documents)
            into.parts.update(got.parts)
            into.problems.extend(got.problems)
            return got.parts

        return render_thread(
            messages,
            names,
            bot_user_id=req.bot_user_id,
            bot_id=req.bot_id,
            recap=recap,
            team_id=req.team_id,
            enterprise_id=req.enterprise_id or self.workspaces.enterprise_of(req.team_id),
            conversation=self.conversational(req),
            files=None if recap else files,  # a channel recap names files only
        )

    def _plan(
        self,
        req: ThreadRequest,
        turns: list[Turn],
        request: str,
        eff: Effective,
        started: float,
        on_progress: Callable[[], None] | None = None,
    ) -> Plan:
        """The plan step: the thread's stored state and the TTL decision, compaction, the request
        with its cache breakpoints, the budget hold."""
        names = self._names(req.team_id)
        model = eff.model
        note = f"(Answer in {eff.language}.)" if eff.language else ""
        if note:
            request = f"{request}\n\n{note}"
        now = self.now()
        with self._sessions() as s:
            state = data.get_thread(s, req.team_id, req.channel_id, req.thread_ts)
            upgradable = self._upgradable(s, req)
            cache = self._ttl.plan(s, req.team_id, state, now, upgradable)
        scale = self._scale.get(model, 1.0)
        try:
            compacted = self._compactor(req, model, on_progress).compacted(
                req.team_id, req.channel_id, req.thread_ts, turns, scale, now
            )
        except LLMError as exc:
            folded = any(isinstance(p, DocumentPart) for t in turns for p in t.extra)
            if folded and self._documents_refused(exc, model):
                raise DocumentsRefused(exc.detail) from exc  # not a failure: sent again as text
            log.error("compacting %s/%s failed: %s", req.channel_id, req.thread_ts, exc.detail)
            self.ledger.failed(req, exc.kind, started, model)
            raise
        if self.conversational(req):
            built = build_conversation_request(
                model=model,
                turns=turns,
                note=note,
                prior=cache.prior,
                ttl=cache.ttl,
                max_tokens=self._settings.max_output_tokens,
                budget_tokens=self._settings.context_budget_tokens,
                compacted=compacted,
                scale=scale,
            )
        else:
            built = build_request(
                model=model,
                turns=turns,
                request=request,
                requester=names.name(req.user_id),
                prior=cache.prior,
                fallback=cache.fallback,
                ttl=cache.ttl,
                max_tokens=self._settings.max_output_tokens,
                budget_tokens=self._settings.context_budget_tokens,
                compacted=compacted,
                scale=scale,
            )
        hold = self._hold(req, built, model, now, eff, started)
        return Plan(req, eff, model, built, cache.rhythm, now, started, hold)

    def _hold(
        self,
        req: ThreadRequest,
        built: Built,
        model: str,
        now: datetime,
        eff: Effective,
        started: float,
    ) -> str | None:
        """Reserve the call's worst case against the spend budgets (None when none is set)."""
        if self.budgets is None or not self.budgets.enabled_for(eff):
            return None
        try:
            return self.budgets.reserve(
                req.team_id, req.user_id, self._worst_case(built, model), now, eff
            )
        except BudgetExceeded:
            self.ledger.failed(req, "budget", started, model)
            raise

    def _call(self, plan: Plan, on_text: OnText | None) -> Completion:
        """The call step: the model call; the budget hold ends with it, however it ends."""
        req = plan.req
        try:
            return self._llm.create(plan.built.body, on_text=on_text)
        except LLMError as exc:
            if has_documents(plan.built.body) and self._documents_refused(exc, plan.model):
                raise DocumentsRefused(exc.detail) from exc  # not a failure: sent again as text
            log.error("model call for %s/%s failed: %s", req.channel_id, req.thread_ts, exc.detail)
            exc.usage_id = self.ledger.failed(req, exc.kind, plan.started, plan.model)
            raise
        finally:
            if plan.hold is not None and self.budgets is not None:
                self.budgets.release(req.team_id, plan.hold)

    def _documents_refused(self, exc: LLMError, model: str) -> bool:
        """Whether `exc` refuses a request's PDF document blocks (then remembered for the
        endpoint and model when the error says documents are unsupported)."""
        if not refuses_documents(exc.status, exc.detail):
            return False
        if documents_unsupported(exc.detail):  # remembered: the next ones go as text
            self.documents.refuse(self._settings.anthropic_base_url, model, exc.detail)
        else:
            log.warning("a PDF document block was refused (%s)", exc.detail)
        return True

    def _check_caching(self, built: Built, completion: Completion) -> None:
        """Warn once per model when the endpoint reports no cache activity where it should."""
        usage = completion.usage
        floor = cache_floor(completion.model, self._settings.cache_floors)
        relay_ignored = (
            bool(built.breakpoints)
            and usage.prompt_tokens >= floor
            and not usage.cache_creation_tokens
            and not usage.cache_read_tokens
            and (built.write_ttl is not None or built.read_prior)
        )
        if relay_ignored and completion.model not in self._warned_no_cache:
            self._warned_no_cache.add(completion.model)
            log.warning(
                "endpoint reported no cache activity for a %d-token prompt of %s (floor %d): it "
                "may accept cache_control without caching",
                usage.prompt_tokens,
                completion.model,
                floor,
            )

    def _record(self, plan: Plan, completion: Completion, seen: list[dict[str, Any]]) -> Done:
        """The record step: metrics, the thread's state (rhythm, cache boundary) and the ledger
        row, in one transaction."""
        req, built, now, rhythm = plan.req, plan.built, plan.now, plan.rhythm
        usage = completion.usage
        self.metrics.observe_usage(usage)
        self._calibrate(plan.model, built.estimated_tokens, usage.prompt_tokens)
        self._check_caching(built, completion)
        latency_ms = int((time.monotonic() - plan.started) * 1000)
        with self._sessions.begin() as s:
            state = data.get_or_create_thread(s, req.team_id, req.channel_id, req.thread_ts)
            state.messages_seen = len(seen)
            state.last_message_ts = seen[-1]["ts"] if seen else None
            if rhythm.last_gap is not None:  # what followed the previous request: a habit
                data.note_habit(
                    s, req.team_id, data.gap_context(state.last_gap_seconds), rhythm.last_gap
                )
            state.last_request_at = now
            state.requests = rhythm.requests
            state.gaps, state.gaps_within_5m = rhythm.gaps, rhythm.within_5m
            state.gaps_within_1h = rhythm.within_1h
            state.last_gap_seconds = rhythm.last_gap
            record_entries(state, built, usage, now)
            usage_id = self.ledger.answered(s, req, completion, latency_ms, now)
            tail = (state.cache_ttl, state.cache_written_at, state.cache_boundary_ts)
            seen_ts = [t for t in (state.last_message_ts, req.message_ts) if t]
            newest = max(seen_ts, key=ts_key, default="")
        self._keep_alive(req, built, *tail, newest)
        log.info(
            "answered %s/%s kind=%s stop=%s prompt=%d read=%d written=%d ttl=%s breakpoints=%d",
            req.channel_id,
            req.thread_ts,
            req.kind,
            completion.stop_reason,
            usage.prompt_tokens,
            usage.cache_read_tokens,
            usage.cache_creation_tokens,
            built.write_ttl,
            len(built.breakpoints),
        )
        footer = footer_line(usage, completion.model, self._settings.cache_floors)
        return Done(completion, footer if plan.eff.footer else "", usage_id)

    def prefix_now(self, request: dict[str, Any]) -> Built | None:
        """The thread's transcript as it is kept now, laid out as its next request will send it
        (every kept message, before any new question), reading back the thread's live entry and
        writing the end for an hour: what a keep-alive upgrade sends (bot/keepalive.py). None
        when that cannot be built without the network or the model: a conversation in real
        turns, a thread that would need a new compaction, a message with files."""
        req = ThreadRequest(**request)
        if self.conversational(req) or req.kind == "recap":
            return None
        now = self.now()
        with self._sessions() as s:
            kept = data.load_messages(s, req.team_id, req.channel_id, req.thread_ts)
            state = data.get_thread(s, req.team_id, req.channel_id, req.thread_ts)
            cache = self._ttl.plan(s, req.team_id, state, now)
            stored = data.get_compaction(s, req.team_id, req.channel_id, req.thread_ts)
        since = ts_key((state.cache_boundary_ts if state else None) or "0")
        if not kept or any(m.get("files") for m in kept if ts_key(m["ts"]) > since):
            return None  # a file since the entry: the next request downloads it, not this
        kept.sort(key=lambda m: ts_key(m["ts"]))
        eff = self.workspaces.effective(req.team_id)
        documents = not self.documents.refused(self._settings.anthropic_base_url, eff.model)
        turns = self._turns(req, kept, False, Prepared(), documents=documents)
        scale = self._scale.get(eff.model, 1.0)
        upto, compacted = reusable(
            turns, stored, model=eff.model, budget=self._settings.context_budget_tokens,
            scale=scale,
        )
        if upto is not None and compacted is None:
            return None
        return build_request(
            model=eff.model,
            turns=turns,
            request="",
            prior=cache.prior,
            fallback=cache.fallback,
            ttl="1h",
            max_tokens=1,
            budget_tokens=self._settings.context_budget_tokens,
            compacted=compacted,
            scale=scale,
        )

    def habits(self, session: Session, team_id: str, now: datetime) -> Habits:
        """The workspace's habits as the TTL policy sees them (kept a minute per process)."""
        return self._ttl.habits(session, team_id, now)

    def _keeps_alive(self, session: Session, req: ThreadRequest) -> bool:
        """Whether an answer to `req` that leaves a live 5-minute tail gets keep-alive calls
        (bot/keepalive.py): CACHE_TTL=auto, not a recap, and the workspace keeps transcripts
        (they tell whether the thread is still active)."""
        if self.keepalive is None or self._settings.cache_ttl != "auto" or req.kind == "recap":
            return False
        return self.keeper.keeps(session, req.team_id)

    def _upgradable(self, session: Session, req: ThreadRequest) -> bool:
        """Whether those keep-alive calls may upgrade a 5-minute write for `req`
        (`prefix_now`): they are made, and the thread is in the mention layout."""
        return not self.conversational(req) and self._keeps_alive(session, req)

    def _keep_alive(
        self,
        req: ThreadRequest,
        built: Built,
        ttl: str | None,
        touched: datetime | None,
        boundary_ts: str | None,
        seen_ts: str,
    ) -> None:
        """Queue keep-alive calls for a thread whose tail is a live entry, where they are made
        (`_keeps_alive`): reads of a 5-minute tail, or the renewal of a 1-hour one (which, like
        an upgrade, needs the thread in the mention layout: `prefix_now`); any answer there
        drops the one waiting."""
        if self.keepalive is None:
            return
        with self._sessions() as s:
            if not self._keeps_alive(s, req):
                return
        caller = KeepCaller(req.team_id, req.channel_id, req.thread_ts, req.user_id)
        try:
            self.keepalive.after_answer(
                caller, req.bot_user_id, built.body, ttl, touched, boundary_ts, seen_ts,
                request=None if self.conversational(req) else dataclasses.asdict(req),
            )
        except Exception:  # noqa: BLE001 - the answer stands; only the keep-alive is lost
            log.exception("queueing a keep-alive for %s/%s failed", req.channel_id, req.thread_ts)

    def _worst_case(self, built: Built, model: str) -> float:
        """Dollars the call could cost at most: every prompt token written, max output."""
        price = price_for(model)
        if price is None:
            return 0.0
        return built.estimated_tokens * price.input * 2 + built.body["max_tokens"] * price.output

    def _calibrate(self, model: str, estimated: int, actual: int) -> None:
        """Learn how the estimate compares with the endpoint's count (moving average)."""
        if estimated <= 0 or actual <= 0:
            return
        ratio = min(4.0, max(0.25, actual / estimated))
        old = self._scale.get(model)
        self._scale[model] = ratio if old is None else 0.8 * old + 0.2 * ratio

    def _compactor(
        self, req: ThreadRequest, model: str, progress: Callable[[], None] | None = None
    ) -> Compactor:
        return Compactor(
            self._llm,
            self._sessions,
            model=model,
            budget=self._settings.context_budget_tokens,
            record=lambda done: self.ledger.compacted(req, done),
            progress=progress,
        )

    def tell(self, req: ThreadRequest, text: str, *, private: bool = False) -> None:
        """A short message to the requester in the thread (see `delivery.tell`)."""
        try:
            client = self._client(req)
        except LookupError:
            log.error("cannot tell user in team=%s: workspace not installed", req.team_id)
            return
        tell(client, req.channel_id, req.thread_ts, req.user_id, text, private=private)
