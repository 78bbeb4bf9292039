"""`/summarize` and the "Summarize thread" shortcut: parsing, permission checks, recap windows,
private delivery and the share button."""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bot import feedback
from bot.budgets import BudgetExceeded
from bot.delivery import Refusals, Responder, control_for, with_control
from bot.formatting import build_messages, neutralise_pings
from bot.jobs import Deferred
from bot.llm import LLMError
from bot.service import Complete, ThreadRequest
from bot.store.models import Summary
from bot.threads import (
    ReadsPending,
    ThreadReader,
    ThreadReadError,
    is_member,
    is_private,
    read_whole_thread,
    ts_key,
)
from bot.user_messages import (
    MESSAGE_GONE,
    NOTHING_IN_WINDOW,
    REFUSAL,
    SUMMARY_GONE,
    SUMMARY_SHARED,
    llm_error_text,
    not_in_channel,
    other_workspace,
    reads_wait_text,
    refused_text,
    share_failed,
    stop_note,
    summary_read_error,
)
from bot.workspace import Effective, Workspaces, refusal

log = logging.getLogger(__name__)

SHARE_ACTION = "share_summary"
MAX_RECAP_THREADS = 50
HISTORY_PAGE = 200


_LINK = re.compile(
    r"^https?://(?P<host>[a-z0-9.-]+)\.slack\.com/archives/(?P<channel>[CGD][A-Z0-9]+)"
    r"/p(?P<ts>\d{16})/?(?:\?(?P<query>\S*))?$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ThreadLink:
    """A message link: where the thread is, and which workspace host it names."""

    host: str
    channel_id: str
    ts: str
    thread_ts: str


def _p_to_ts(digits: str) -> str:
    return f"{digits[:10]}.{digits[10:]}"


def parse_link(text: str) -> ThreadLink | None:
    """A Slack message link in any form Slack sends (bare, `<url>`, `<url|label>`)."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].split("|", 1)[0]
    m = _LINK.match(text)
    if not m:
        return None
    ts = _p_to_ts(m.group("ts"))
    query = urllib.parse.parse_qs(m.group("query") or "")
    thread_ts = (query.get("thread_ts") or [ts])[0]
    if not re.fullmatch(r"\d{10}\.\d{6}", thread_ts):
        return None
    channel = (query.get("cid") or [m.group("channel")])[0].upper()
    return ThreadLink(m.group("host").lower(), channel, ts, thread_ts)


def wait_for_reads(wait: ReadsPending, payload: dict[str, Any], out: Responder) -> Deferred:
    """Slack's read budget makes a summary's reads wait: tell the requester once how long it
    will take (a response_url takes five messages), and run the job again when reads may go."""
    if not payload.get("waited"):
        out.send(reads_wait_text(wait.eta, wait.why), replace=True)
    return Deferred(wait.until, {**payload, "waited": int(payload.get("waited") or 0) + 1})


def window_start(now: float, seconds: int) -> int:
    """Start of a recap window, floored to a step so recaps minutes apart share a prefix."""
    step = max(3600, seconds // 24) if seconds >= 3600 else 600
    return int((now - seconds) // step * step)


@dataclass(frozen=True)
class Requester:
    """Who asked, in which workspace, and who the bot is there."""

    team_id: str
    user_id: str
    bot_user_id: str
    bot_id: str | None
    team_domain: str = ""
    enterprise_id: str | None = None


class SummaryService:
    """Thread summaries and channel recaps, shown privately, shareable with a button."""

    def __init__(
        self,
        *,
        reader: ThreadReader,
        workspaces: Workspaces,
        complete: Complete,
        client_for: Callable[[str, str | None], WebClient],
        sessions: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
        refusals: Refusals | None = None,
    ) -> None:
        self._refusals = refusals or Refusals()  # the answers' (feedback buttons refused?)
        self._reader = reader
        self._workspaces = workspaces
        self._complete = complete
        self._client_for = client_for
        self._sessions = sessions
        self._clock = clock

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def clock(self) -> float:
        """The time now, on the app's clock (epoch seconds)."""
        return self._clock()

    def client_of(self, team_id: str) -> WebClient:
        """The workspace's Web API client."""
        return self._client_for(team_id, None)

    # -- permissions ------------------------------------------------------------------------

    def check_access(self, channel: str, who: Requester, refused: str = REFUSAL) -> str | None:
        """None when `who` may read `channel` and the bot can; else what to tell them:
        `refused` (naming nothing of the conversation) when it is private to others or
        unknown."""
        try:
            info = self._client(who).conversations_info(channel=channel)["channel"]
        except SlackApiError as exc:
            log.info("conversations.info %s: %s", channel, exc.response.get("error"))
            return refused.format(bot=who.bot_user_id)
        private = is_private(info)
        if private and not is_member(self._client(who), channel, who.user_id):
            return refused.format(bot=who.bot_user_id)
        if not private and not info.get("is_member"):
            return not_in_channel(channel, who.bot_user_id)
        return None

    def _allowed(self, channel: str, who: Requester, out: Responder) -> Effective | None:
        """The workspace's settings, or None (after telling `who`) when its channel allow-list
        excludes `channel`."""
        eff = self._workspaces.effective(who.team_id)
        text = refusal(eff, channel)
        if text is not None:
            out.send(text, replace=True)
            return None
        return eff

    def _client(self, who: Requester) -> WebClient:
        return self._client_for(who.team_id, who.enterprise_id)

    # -- thread summaries -------------------------------------------------------------------

    def summarize_link(
        self, link: ThreadLink, extra: str, who: Requester, out: Responder, *, share: bool = True
    ) -> None:
        """`/summarize <link>`: permission checks, then a private summary of the thread
        (`share`: with the button that posts it for everyone)."""
        if who.team_domain and link.host.split(".")[0] != who.team_domain.lower():
            out.send(other_workspace(link.host), replace=True)
            return
        refusal = self.check_access(link.channel_id, who)
        if refusal:
            out.send(refusal, replace=True)
            return
        self.summarize_thread(link.channel_id, link.thread_ts, who, out, extra=extra, share=share)

    def summarize_thread(
        self,
        channel: str,
        thread_ts: str,
        who: Requester,
        out: Responder,
        *,
        extra: str = "",
        share: bool = True,
    ) -> None:
        """A private summary of the thread that `thread_ts` belongs to."""
        eff = self._allowed(channel, who, out)
        if eff is None:
            return
        try:
            read = self._reader.read
            now = self._now()
            thread_ts, messages = read_whole_thread(
                lambda ts: read(
                    who.team_id, channel, ts, now, who.enterprise_id, keep=eff.keep_transcripts
                ),
                thread_ts,
            )
        except ThreadReadError as exc:
            log.warning("reading %s/%s failed: %s", channel, thread_ts, exc.error)
            out.send(summary_read_error(exc.error, who.bot_user_id), replace=True)
            return
        if not messages:
            out.send(MESSAGE_GONE, replace=True)
            return
        out.send(
            f"Reading {len(messages):,} messages… the summary follows in a moment.", replace=True
        )
        request = (
            "Summarize this thread for someone who missed it: the key points, decisions and who "
            "made them, open questions, and action items with owners. Answer in the language "
            "most of the thread is written in."
        )
        if extra:
            request += f" The requester adds: {extra}"
        req = self._request(who, channel, thread_ts, "summarize", request)
        self._finish(
            req, messages, request, out, thread_ts=thread_ts, recap=False, eff=eff, share=share
        )

    # -- channel recaps ---------------------------------------------------------------------

    def recap(
        self,
        channel: str,
        who: Requester,
        out: Responder,
        *,
        seconds: int | None,
        count: int | None,
        now: float | None = None,
        share: bool = True,
    ) -> None:
        """A private recap of the channel: a time window (aligned) or the last N messages."""
        eff = self._allowed(channel, who, out)
        if eff is None:
            return
        now = self._clock() if now is None else now
        oldest = window_start(now, seconds) if seconds else None
        now_at = datetime.fromtimestamp(now, UTC)
        window = (datetime.fromtimestamp(oldest or 0, UTC), now_at)
        keep = eff.keep_transcripts
        try:
            top = self._reader.read_channel(
                who.team_id, channel, window, now_at, who.enterprise_id, keep=keep, count=count
            )
        except ThreadReadError as exc:
            log.warning("reading history of %s failed: %s", channel, exc.error)
            out.send(summary_read_error(exc.error, who.bot_user_id), replace=True)
            return
        if not top:
            out.send(NOTHING_IN_WINDOW, replace=True)
            return
        messages = list(top)
        parents = [m for m in top if m.get("reply_count")]
        parents.sort(key=lambda m: ts_key(m["ts"]), reverse=True)
        for parent in parents[:MAX_RECAP_THREADS]:
            try:
                replies = self._reader.read(
                    who.team_id, channel, parent["ts"], now_at, who.enterprise_id, keep=keep
                )
            except ThreadReadError as exc:
                log.info("skipping thread %s in recap: %s", parent["ts"], exc.error)
                continue
            messages.extend(r for r in replies if r["ts"] != parent["ts"])
        unique = {m["ts"]: m for m in messages}
        messages = sorted(unique.values(), key=lambda m: ts_key(m["ts"]))
        out.send(
            f"Reading {len(messages):,} messages ({len(top):,} in the channel, the rest in "
            f"{min(len(parents), MAX_RECAP_THREADS)} threads)… the recap follows in a moment.",
            replace=True,
        )
        since = datetime.fromtimestamp(float(messages[0]["ts"]), UTC).strftime("%Y-%m-%d %H:%M")
        request = (
            f"Recap this channel's activity since {since} UTC, thread replies included: the "
            "main topics, who said what, decisions, open questions and action items. Answer in "
            "the language most of the messages are written in."
        )
        key = f"recap:{oldest}" if oldest is not None else f"recap:last{count}"
        req = self._request(who, channel, key, "recap", request)
        self._finish(req, messages, request, out, thread_ts=None, recap=True, eff=eff, share=share)

    # -- shared -----------------------------------------------------------------------------

    @staticmethod
    def _request(who: Requester, channel: str, key: str, kind: str, text: str) -> ThreadRequest:
        return ThreadRequest(
            team_id=who.team_id,
            channel_id=channel,
            thread_ts=key,
            message_ts="",
            user_id=who.user_id,
            text=text,
            bot_user_id=who.bot_user_id,
            bot_id=who.bot_id,
            kind=kind,
        )

    def _finish(
        self,
        req: ThreadRequest,
        messages: list[dict[str, Any]],
        request: str,
        out: Responder,
        *,
        thread_ts: str | None,
        recap: bool,
        eff: Effective,
        share: bool = True,
    ) -> None:
        try:
            done = self._complete(req, messages, request, recap=recap, eff=eff)
        except LLMError as exc:
            out.send(llm_error_text(exc), replace=True)
            return
        except BudgetExceeded as exc:
            out.send(refused_text(exc), replace=True)
            return
        summary_id = uuid.uuid4().hex
        note = stop_note(done.completion)
        with self._sessions.begin() as s:
            s.add(
                Summary(
                    id=summary_id,
                    created_at=datetime.now(UTC),
                    team_id=req.team_id,
                    channel_id=req.channel_id,
                    thread_ts=thread_ts,
                    user_id=req.user_id,
                    kind=req.kind,
                    text=done.completion.text,
                    footer=done.footer,
                    note=note,
                    usage_id=done.usage_id,
                )
            )
        part = build_messages(done.completion.text, done.footer, note=note, limit=1)[0]
        where = "thread" if thread_ts else "channel"
        button = {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "action_id": SHARE_ACTION,
                    "value": summary_id,
                    "text": {"type": "plain_text", "text": f"Post to the {where}"},
                }
            ],
        }
        control = control_for(self._refusals, req.team_id, req.channel_id, done.usage_id)
        blocks = [*part.blocks, button, control] if share else [*part.blocks, control]
        self._show(req, out, part.text, blocks)

    def _show(
        self, req: ThreadRequest, out: Responder, text: str, blocks: list[dict[str, Any]]
    ) -> None:
        """Show a summary privately; where Slack refuses its feedback buttons, with the 👍/👎
        as ordinary buttons (and the refusal remembered, as for answers in threads)."""
        error = out.send(text, blocks, replace=True)
        fallback = feedback.as_buttons(blocks) if error == "invalid_blocks" else None
        if fallback is not None and out.send(text, fallback, replace=True) is None:
            refused = feedback.FEEDBACK_BUTTONS
            self._refusals.refuse(refused, req.team_id, req.channel_id, "invalid_blocks")

    # -- the share button -------------------------------------------------------------------

    def share(self, summary_id: str, user_id: str, sharer_name: str, out: Responder) -> None:
        """Post a private summary for everyone, once, saying who shared it."""
        with self._sessions.begin() as s:
            summary = s.get(Summary, summary_id)
            if summary is None or summary.user_id != user_id:
                out.send(SUMMARY_GONE)
                return
            claimed = s.execute(
                update(Summary)
                .where(Summary.id == summary_id, Summary.shared_at.is_(None))
                .values(shared_at=datetime.now(UTC))
            ).rowcount
        if not claimed:
            out.send(SUMMARY_SHARED, replace=True)
            return
        footer = f"Shared by {neutralise_pings(sharer_name)}"
        if summary.footer:
            footer += f" · {summary.footer}"
        team, channel = summary.team_id, summary.channel_id
        control = None
        if summary.usage_id is not None:  # votes on the copy count for the same answer
            control = control_for(self._refusals, team, channel, summary.usage_id)
        parts = build_messages(summary.text, footer, note=summary.note, control=control)
        client = self._client_for(team, None)
        try:
            for part in parts:
                with_control(
                    lambda b, part=part: client.chat_postMessage(
                        channel=channel,
                        thread_ts=summary.thread_ts,
                        text=part.text,
                        blocks=b,
                        unfurl_links=False,
                        unfurl_media=False,
                    ),
                    part.blocks,
                    self._refusals,
                    team,
                    channel,
                )
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.warning("sharing summary in %s failed: %s", summary.channel_id, error)
            with self._sessions.begin() as s:
                s.execute(update(Summary).where(Summary.id == summary_id).values(shared_at=None))
            out.send(share_failed(error))
            return
        where = "thread" if summary.thread_ts else "channel"
        out.send(f"Posted to the {where} for everyone.", replace=True)
