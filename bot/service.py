"""Answering a request about a thread: read it, build the prompt, call the model, reply, record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.orm import Session, sessionmaker

from bot.compaction import Compactor
from bot.config import Settings
from bot.engine import Prior, Rhythm, choose_ttl
from bot.formatting import footer_line, neutralise_pings
from bot.installations import SlackClients
from bot.llm import Completion, LLMError, MessagesClient
from bot.metrics import Metrics
from bot.pricing import Usage, cache_floor, cost, price_for, savings
from bot.prompt import Built, PriorCache, build_request
from bot.store import data
from bot.store.models import ThreadState, UsageRecord
from bot.streaming import Refusals, ThreadReply
from bot.threads import (
    NameResolver,
    ThreadReader,
    ThreadReadError,
    clean_request,
    is_external,
    render_thread,
    ts_key,
)
from bot.usage import BudgetExceeded, Budgets
from bot.workspace import Effective, Workspaces
from bot.workspace import refusal as channel_refusal

log = logging.getLogger(__name__)

TTL_SECONDS = {"5m": 300, "1h": 3600}
PRIOR_REFRESH = 60.0  # seconds between recomputing a workspace's rhythm

LLM_MESSAGES = {
    "auth": "the model endpoint rejected the API key. An admin needs to check `ANTHROPIC_API_KEY`.",
    "billing": "the model endpoint refused the request for billing reasons. An admin needs to "
    "check the account's credit.",
    "permission": "the API key is not allowed to use this model. An admin needs to check the key "
    "and `ANTHROPIC_MODEL` (or the model picked in my App Home).",
    "not_found": "the configured model is not available on this endpoint. An admin needs to "
    "check `ANTHROPIC_MODEL` (or the model picked in my App Home).",
    "rate_limited": "the model is rate-limited right now, even after retrying. Please try again "
    "in a minute.",
    "overloaded": "the model is overloaded right now, even after retrying. Please try again in a "
    "few minutes.",
    "too_large": "this thread is too large for the model. Ask about a narrower part of it, or an "
    "admin can lower `CONTEXT_BUDGET_TOKENS`.",
    "timeout": "the model did not answer in time. Please try again shortly.",
    "connection": "I could not reach the model endpoint. Please try again shortly; if it keeps "
    "failing, an admin should check `ANTHROPIC_BASE_URL`.",
    "server": "the model endpoint had an internal error, even after retrying. Please try again "
    "shortly.",
}
LLM_CUT_OFF = {
    "overloaded": "the model became overloaded partway",
    "rate_limited": "the model hit a rate limit partway",
    "connection": "the connection to the model broke partway",
    "timeout": "the model took too long partway",
}
STOP_NOTES = {
    "max_tokens": "The answer was cut off at the length limit. Ask me for the rest, or ask a "
    "narrower question.",
    "model_context_window_exceeded": "The answer was cut off: the thread and the answer filled "
    "the model's context window. Ask a narrower question, about part of the thread.",
    "refusal": "The model declined to continue this answer{why}. Try rephrasing the question, "
    "or ask about another part of the thread.",
    "pause_turn": "The model paused before finishing this answer. Ask again to get the whole "
    "answer.",
    "tool_use": "The model stopped to use a tool I don't offer, so the answer is incomplete. Ask "
    "again, perhaps more narrowly.",
}
_WHOLE = {None, "end_turn", "stop_sequence"}
_OTHER_STOP = (
    "The model stopped early ({reason}), so the answer may be incomplete. Ask again, or ask a "
    "narrower question."
)
_DEFAULT_LLM_MESSAGE = (
    "the model endpoint rejected the request. An admin can find the cause in the bot's logs."
)
SLACK_READ_MESSAGES = {
    "not_in_channel": "I'm not a member of this channel, so I can't read it. Invite me with "
    "/invite <@{bot}> and ask again.",
    "channel_not_found": "I can't see this conversation. Invite me with /invite <@{bot}> and ask "
    "again.",
    "thread_not_found": "I couldn't find that thread; it may have been deleted.",
    "missing_scope": "I'm missing a Slack permission needed to read this conversation. An admin "
    "needs to reinstall the app with the scopes in its manifest.",
    "ratelimited": "Slack is rate-limiting me right now. Please try again in a minute.",
}
EXTERNAL_REQUESTER = (
    "Sorry, I only answer people of the organisation that installed me; in a shared channel, "
    "what other organisations post stays out of my prompts. Ask someone from that "
    "organisation to ask me."
)
_UNDELIVERABLE = {"not_in_channel", "channel_not_found", "is_archived", "restricted_action"}


def llm_error_text(exc: LLMError) -> str:
    """What to tell the user about a failed model call."""
    return "Sorry, " + LLM_MESSAGES.get(exc.kind, _DEFAULT_LLM_MESSAGE)


def stop_note(completion: Completion) -> str | None:
    """What to tell the reader when the model did not finish its answer (None when it did)."""
    reason = completion.stop_reason
    if reason in _WHOLE:
        return None
    if reason == "refusal":
        why = f" ({completion.stop_explanation.rstrip('.')})" if completion.stop_explanation else ""
        return STOP_NOTES["refusal"].format(why=why)
    return STOP_NOTES.get(str(reason)) or _OTHER_STOP.format(reason=str(reason)[:32])


def reading_status(count: int) -> tuple[str, list[str]]:
    """The status line (and its rotating loading messages) while a thread is read."""
    what = f"{count:,} messages" if count else "the thread"
    return f"is reading {what}…", [
        f"Reading {what}…",
        "Following who said what…",
        "Looking for decisions and owners…",
        "Noting open questions…",
    ]


def writing_status(count: int) -> tuple[str, list[str]]:
    """The status line (and its loading messages) once the thread is read."""
    return f"is reading {count:,} messages…", [
        f"Read {count:,} messages…",
        "Weighing what matters…",
        "Writing the answer…",
    ]


def read_error_text(error: str, bot_user_id: str) -> str:
    """What to tell the user when Slack refused a read."""
    text = SLACK_READ_MESSAGES.get(
        error, "Slack wouldn't let me read this conversation ({error}). Please try again."
    )
    return text.format(bot=bot_user_id, error=error)


@dataclass(frozen=True)
class Done:
    """A completed model call: the answer, its footer line and its ledger row."""

    completion: Completion
    footer: str
    usage_id: int


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
    ) -> None:
        self._settings = settings
        self.workspaces = workspaces or Workspaces(settings, sessions)
        self.metrics = metrics or Metrics()
        self.budgets = budgets
        self._clients = clients
        self._llm = llm
        self._sessions = sessions
        self._clock = clock
        self._resolvers: dict[str, NameResolver] = {}
        self._scale: dict[str, float] = {}
        self._priors: dict[str, tuple[float, Prior]] = {}
        self._warned_no_cache: set[str] = set()
        self.refusals = Refusals(clock)  # Slack methods refused for good, per conversation kind
        self.reader = ThreadReader(
            clients, sessions, full_every=timedelta(hours=settings.full_reread_hours)
        )

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
        except Exception:
            log.exception("answering %s/%s failed", req.channel_id, req.thread_ts)
            self.tell(
                req,
                "Sorry, something went wrong on my side. The operator's logs have "
                "the details; please try again.",
            )

    def _answer(self, req: ThreadRequest) -> None:
        started = time.monotonic()
        names = self._names(req.team_id)
        eff = self.workspaces.effective(req.team_id)
        refusal = channel_refusal(eff, req.channel_id)
        if refusal is not None:
            log.info("team=%s channel=%s is not on the allow-list", req.team_id, req.channel_id)
            self.tell(req, refusal, private=True)
            return
        org = req.enterprise_id or self.workspaces.enterprise_of(req.team_id)
        if is_external(
            req.user_team, req.user_id, team_id=req.team_id, enterprise_id=org, names=names
        ):
            log.info("team=%s: request from another organisation (%s)", req.team_id, req.user_team)
            self.tell(req, EXTERNAL_REQUESTER, private=True)
            return
        streaming = self._settings.stream_answers
        reply = ThreadReply(
            self._client(req),
            channel=req.channel_id,
            thread_ts=req.thread_ts,
            team_id=req.team_id,
            user_id=req.user_id,
            stream=streaming,
            clock=self._clock,
            refusals=self.refusals,
        )
        if streaming:
            with self._sessions() as s:
                known = data.get_thread(s, req.team_id, req.channel_id, req.thread_ts)
                seen = known.messages_seen if known is not None else 0
            reply.status(*reading_status(seen))
        try:
            messages = self.reader.read(
                req.team_id,
                req.channel_id,
                req.thread_ts,
                self.now(),
                req.enterprise_id,
                on_page=(lambda _n: reply.keep_status()) if streaming else None,
            )
        except ThreadReadError as exc:
            log.warning(
                "reading team=%s channel=%s thread=%s failed: %s",
                req.team_id,
                req.channel_id,
                req.thread_ts,
                exc.error,
            )
            self._record_failure(req, f"slack_{exc.error}", started)
            text = read_error_text(exc.error, req.bot_user_id)
            if not reply.fail(text):
                self.tell(req, text)
            return
        before = [m for m in messages if ts_key(m["ts"]) < ts_key(req.message_ts)]
        request = clean_request(req.text, names, req.bot_user_id)
        if streaming:
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
            )
        except BudgetExceeded as exc:
            text = f"Sorry, {exc}"
            if not reply.fail(text):
                self.tell(req, text)
            return
        except LLMError as exc:
            if exc.partial:
                why = LLM_CUT_OFF.get(exc.kind, "the model stopped partway")
                reply.finish(None, note=f"The answer was cut off: {why}. Ask again for the rest.")
            elif not reply.fail(llm_error_text(exc)):
                self.tell(req, llm_error_text(exc))
            return
        outcome = reply.finish(
            done.footer, text=done.completion.text, note=stop_note(done.completion)
        )
        if outcome == "stopped_by_user":
            with self._sessions.begin() as s:
                data.set_stopped_by_user(s, done.usage_id)
        elif outcome != "ok":
            self.tell(
                req,
                f"I wrote an answer but couldn't post it here (Slack said "
                f"`{outcome.removeprefix('post_')}`).",
            )
            with self._sessions.begin() as s:
                data.set_outcome(s, done.usage_id, outcome)

    def complete(
        self,
        req: ThreadRequest,
        messages: list[dict[str, Any]],
        request: str,
        *,
        seen: list[dict[str, Any]] | None = None,
        started: float | None = None,
        recap: bool = False,
        on_text: Callable[[str], None] | None = None,
        eff: Effective | None = None,
    ) -> Done:
        """Render `messages`, call the model with the thread's cache state, record state and usage.

        Raises LLMError after recording the failure; the caller tells the user.
        """
        started = time.monotonic() if started is None else started
        names = self._names(req.team_id)
        eff = eff or self.workspaces.effective(req.team_id)  # the caller's read, if it made one
        model = eff.model
        if eff.language:
            request = f"{request}\n\n(Answer in {eff.language}.)"
        turns = render_thread(
            messages,
            names,
            bot_user_id=req.bot_user_id,
            bot_id=req.bot_id,
            recap=recap,
            team_id=req.team_id,
            enterprise_id=req.enterprise_id or self.workspaces.enterprise_of(req.team_id),
        )
        now = self.now()
        with self._sessions() as s:
            state = data.get_thread(s, req.team_id, req.channel_id, req.thread_ts)
            last_at = data.as_utc(state.last_request_at) if state else None
            gap = (now - last_at).total_seconds() if last_at else None
            habits = self._prior(s, req.team_id)
            rhythm = (
                Rhythm(
                    state.requests or 0,
                    state.gaps or 0,
                    state.gaps_within_5m or 0,
                    state.gaps_within_1h or 0,
                    habits,
                )
                if state
                else Rhythm(prior=habits)
            )
            prior = self._alive_prior(state, now)
        scale = self._scale.get(model, 1.0)
        try:
            compacted = self._compactor(req, model).compacted(
                req.team_id, req.channel_id, req.thread_ts, turns, scale, now
            )
        except LLMError as exc:
            log.error("compacting %s/%s failed: %s", req.channel_id, req.thread_ts, exc.detail)
            self._record_failure(req, exc.kind, started, model)
            raise
        rhythm = rhythm.after_gap(gap)
        choice: dict[str, Any] = {}

        def decide(new_tokens: int, prefix_tokens: int) -> str | None:
            picked = choose_ttl(
                rhythm,
                new_tokens=new_tokens,
                prefix_tokens=prefix_tokens,
                mode=self._settings.cache_ttl,
            )
            choice["costs"] = picked.costs
            return picked.ttl

        built = build_request(
            model=model,
            turns=turns,
            request=request,
            requester=names.name(req.user_id),
            prior=prior,
            ttl=decide,
            max_tokens=self._settings.max_output_tokens,
            budget_tokens=self._settings.context_budget_tokens,
            compacted=compacted,
            scale=scale,
        )
        hold = None
        if self.budgets is not None and self.budgets.enabled_for(eff):
            try:
                hold = self.budgets.reserve(
                    req.team_id, req.user_id, self._worst_case(built, model), now, eff
                )
            except BudgetExceeded:
                self._record_failure(req, "budget", started, model)
                raise
        try:
            completion = self._llm.create(built.body, on_text=on_text)
        except LLMError as exc:
            log.error("model call for %s/%s failed: %s", req.channel_id, req.thread_ts, exc.detail)
            self._record_failure(req, exc.kind, started, model)
            raise
        finally:
            if hold is not None and self.budgets is not None:
                self.budgets.release(req.team_id, hold)
        usage = completion.usage
        self.metrics.observe_usage(usage)
        self._calibrate(model, built.estimated_tokens, usage.prompt_tokens)
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
        latency_ms = int((time.monotonic() - started) * 1000)
        seen = messages if seen is None else seen
        with self._sessions.begin() as s:
            state = data.get_or_create_thread(s, req.team_id, req.channel_id, req.thread_ts)
            state.messages_seen = len(seen)
            state.last_message_ts = seen[-1]["ts"] if seen else None
            state.last_request_at = now
            state.requests = rhythm.requests
            state.gaps, state.gaps_within_5m = rhythm.gaps, rhythm.within_5m
            state.gaps_within_1h = rhythm.within_1h
            touched = usage.cache_creation_tokens or usage.cache_read_tokens
            if built.boundary_ts is not None and built.write_ttl is not None:
                state.cache_boundary_ts = built.boundary_ts
                state.cache_prefix_digest = built.digest
                state.cache_prefix_tokens = (
                    usage.cache_read_tokens + usage.cache_creation_tokens
                ) or built.prefix_tokens
                state.cache_ttl = built.write_ttl
            if touched:
                state.cache_written_at = now
            row = self._usage_row(req, completion.model, usage, latency_ms, "ok", now)
            row.stop_reason = (completion.stop_reason or "")[:32] or None
            data.add_usage(s, row)
            s.flush()
            usage_id = row.id
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
        return Done(completion, footer if eff.footer else "", usage_id)

    def _prior(self, session: Session, team_id: str) -> Prior:
        """The workspace's request rhythm, recomputed at most every PRIOR_REFRESH seconds."""
        cached = self._priors.get(team_id)
        now = self._clock()
        if cached and 0 <= now - cached[0] < PRIOR_REFRESH:
            return cached[1]
        prior = Prior.from_totals(**data.rhythm_totals(session, team_id))
        self._priors[team_id] = (now, prior)
        return prior

    def _worst_case(self, built: Built, model: str) -> float:
        """Dollars the call could cost at most: every prompt token written, max output."""
        price = price_for(model)
        if price is None:
            return 0.0
        return built.estimated_tokens * price.input * 2 + built.body["max_tokens"] * price.output

    def _alive_prior(self, state: ThreadState | None, now: datetime) -> PriorCache | None:
        """The previous write, if the endpoint should still hold it."""
        if not state or not state.cache_boundary_ts or not state.cache_prefix_digest:
            return None
        touched = data.as_utc(state.cache_written_at)
        ttl = state.cache_ttl if state.cache_ttl in TTL_SECONDS else "5m"
        if touched is None or (now - touched).total_seconds() > TTL_SECONDS[ttl] - 5:
            return None
        return PriorCache(state.cache_boundary_ts, state.cache_prefix_digest, ttl)

    def _calibrate(self, model: str, estimated: int, actual: int) -> None:
        """Learn how the estimate compares with the endpoint's count (moving average)."""
        if estimated <= 0 or actual <= 0:
            return
        ratio = min(4.0, max(0.25, actual / estimated))
        old = self._scale.get(model)
        self._scale[model] = ratio if old is None else 0.8 * old + 0.2 * ratio

    def _compactor(self, req: ThreadRequest, model: str) -> Compactor:
        def record(done: Completion) -> None:
            now = self.now()
            compact_req = ThreadRequest(
                team_id=req.team_id,
                channel_id=req.channel_id,
                thread_ts=req.thread_ts,
                message_ts="",
                user_id=req.user_id,
                text="",
                bot_user_id=req.bot_user_id,
                kind="compact",
            )
            row = self._usage_row(compact_req, done.model, done.usage, 0, "ok", now)
            row.stop_reason = (done.stop_reason or "")[:32] or None
            with self._sessions.begin() as s:
                data.add_usage(s, row)

        return Compactor(
            self._llm,
            self._sessions,
            model=model,
            budget=self._settings.context_budget_tokens,
            record=record,
        )

    def tell(self, req: ThreadRequest, text: str, *, private: bool = False) -> None:
        """A short message to the requester in the thread; ephemeral or DM when that fails.

        `private`: only the requester sees it (ephemeral in the thread, else a DM).
        """
        text = neutralise_pings(text)
        try:
            client = self._client(req)
        except LookupError:
            log.error("cannot tell user in team=%s: workspace not installed", req.team_id)
            return
        try:
            if not private:
                client.chat_postMessage(channel=req.channel_id, thread_ts=req.thread_ts, text=text)
                return
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error not in _UNDELIVERABLE:
                log.error("could not tell user in %s: %s", req.channel_id, error)
                return
        try:
            client.chat_postEphemeral(
                channel=req.channel_id, user=req.user_id, thread_ts=req.thread_ts, text=text
            )
            return
        except SlackApiError as exc:
            log.info(
                "ephemeral in %s failed (%s); sending a DM",
                req.channel_id,
                exc.response.get("error"),
            )
        try:
            client.chat_postMessage(channel=req.user_id, text=text)
        except SlackApiError as exc:
            log.error("could not reach user %s at all: %s", req.user_id, exc.response.get("error"))

    def _usage_row(
        self,
        req: ThreadRequest,
        model: str,
        usage: Usage,
        latency_ms: int,
        outcome: str,
        now: datetime,
    ) -> UsageRecord:
        price = price_for(model)
        return UsageRecord(
            created_at=now,
            team_id=req.team_id,
            channel_id=req.channel_id,
            thread_ts=req.thread_ts,
            user_id=req.user_id,
            kind=req.kind,
            model=model,
            input_tokens=usage.input_tokens,
            cache_creation_tokens=usage.cache_creation_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=cost(usage, price) if price else None,
            savings_usd=savings(usage, price) if price else None,
            latency_ms=latency_ms,
            outcome=outcome,
        )

    def _record_failure(
        self, req: ThreadRequest, outcome: str, started: float, model: str | None = None
    ) -> None:
        self.metrics.model_calls.labels(outcome).inc()
        now = self.now()
        latency_ms = int((time.monotonic() - started) * 1000)
        with self._sessions.begin() as s:
            data.add_usage(
                s,
                self._usage_row(
                    req,
                    model or self._settings.anthropic_model,
                    Usage(),
                    latency_ms,
                    outcome,
                    now,
                ),
            )
