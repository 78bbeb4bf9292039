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
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from bot.formatting import build_messages, neutralise_pings
from bot.llm import LLMError
from bot.service import (
    AnswerService,
    ThreadRequest,
    llm_error_text,
    read_error_text,
    stop_note,
)
from bot.store.models import Summary
from bot.threads import ThreadReadError, is_member, ts_key
from bot.usage import BudgetExceeded
from bot.workspace import Effective, refusal

log = logging.getLogger(__name__)

SHARE_ACTION = "share_summary"
MAX_RECAP_THREADS = 50
HISTORY_PAGE = 200

HELP = """\
*How to use /summarize*
• `/summarize` — recap of this channel's last 24 hours, thread replies included
• `/summarize 3d` / `12h` / `90m` — recap of another window
• `/summarize 200` — recap of the last 200 messages
• `/summarize <thread link>` — summary of that thread (use *Copy link* on any of its messages)
• `/summarize usage [30d]` — what the bot cost and what caching saved
• Inside a thread: the message shortcut *Summarize thread* (⋮ on any message)
Summaries are shown only to you, with a button to post them for everyone."""

REFUSAL = (
    "I can't summarize that link: either it doesn't exist, or it's a private conversation "
    "that you or I are not part of. If you are a member, invite me there "
    "(/invite <@{bot}>) and try again."
)

_LINK = re.compile(
    r"^https?://(?P<host>[a-z0-9.-]+)\.slack\.com/archives/(?P<channel>[CGD][A-Z0-9]+)"
    r"/p(?P<ts>\d{16})/?(?:\?(?P<query>\S*))?$",
    re.IGNORECASE,
)
_WINDOW = re.compile(r"^(\d{1,4})\s*([mhdw])$", re.IGNORECASE)
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class ThreadLink:
    """A message link: where the thread is, and which workspace host it names."""

    host: str
    channel_id: str
    ts: str
    thread_ts: str


@dataclass(frozen=True)
class Parsed:
    """What `/summarize TEXT` asks for. `action` is help|usage|recap|thread|invalid."""

    action: str
    seconds: int | None = None
    count: int | None = None
    link: ThreadLink | None = None
    extra: str = ""
    error: str = ""
    period: str = ""


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


def parse_command(text: str) -> Parsed:
    """Parse the argument of `/summarize`."""
    text = text.strip()
    if not text:
        return Parsed("recap", seconds=86400)
    if text.startswith("<") and ">" in text:  # <url> or <url|label with spaces>
        end = text.index(">") + 1
        word, rest = text[:end], text[end:]
    else:
        word, _, rest = text.partition(" ")
    lowered = word.lower()
    if lowered in ("help", "-h", "--help", "?"):
        return Parsed("help")
    if lowered == "usage":
        return Parsed("usage", period=rest.strip())
    if m := _WINDOW.match(text):
        seconds = int(m.group(1)) * _UNIT[m.group(2).lower()]
        if not 60 * 10 <= seconds <= 31 * 86400:
            return Parsed("invalid", error="A recap window must be between 10m and 31d.")
        return Parsed("recap", seconds=seconds)
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= 2000:
            return Parsed("invalid", error="A recap can cover 1 to 2000 messages.")
        return Parsed("recap", count=count)
    if "slack.com/archives" in word or word.startswith(("<http", "http")):
        link = parse_link(word)
        if link is None:
            return Parsed(
                "invalid",
                error="That doesn't look like a Slack message link. Use *Copy link* on a "
                "message of the thread and paste it after /summarize.",
            )
        return Parsed("thread", link=link, extra=rest.strip())
    return Parsed("invalid", error="I didn't understand that.")


def window_start(now: float, seconds: int) -> int:
    """Start of a recap window, floored to a step so recaps minutes apart share a prefix."""
    step = max(3600, seconds // 24) if seconds >= 3600 else 600
    return int((now - seconds) // step * step)


class Responder(Protocol):
    """Somewhere to tell the requester privately."""

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> None: ...


class ResponseUrl:
    """Ephemeral replies through a command's or action's response_url."""

    def __init__(self, url: str) -> None:
        self._hook = WebhookClient(url, timeout=15)

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> None:
        resp = self._hook.send(
            text=text, blocks=blocks, response_type="ephemeral", replace_original=replace
        )
        if resp.status_code != 200:
            log.warning("response_url answered %s", resp.status_code)


class Ephemeral:
    """Ephemeral messages in a thread (chat.postEphemeral), else through the response_url."""

    def __init__(
        self, client: WebClient, channel: str, user: str, thread_ts: str, fallback: str | None
    ) -> None:
        self._client, self._channel, self._user, self._thread = client, channel, user, thread_ts
        self._fallback = ResponseUrl(fallback) if fallback else None

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> None:
        try:
            self._client.chat_postEphemeral(
                channel=self._channel,
                user=self._user,
                thread_ts=self._thread,
                text=text,
                blocks=blocks,
            )
        except SlackApiError as exc:
            log.info("postEphemeral failed (%s); using response_url", exc.response.get("error"))
            if self._fallback is not None:
                self._fallback.send(text, blocks, replace=replace)


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
        answers: AnswerService,
        sessions: sessionmaker[Session],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._answers = answers
        self._sessions = sessions
        self._clock = clock

    # -- permissions ------------------------------------------------------------------------

    def check_access(self, channel: str, who: Requester) -> str | None:
        """None when `who` may read `channel` and the bot can; else what to tell them."""
        try:
            info = self._client(who).conversations_info(channel=channel)["channel"]
        except SlackApiError as exc:
            log.info("conversations.info %s: %s", channel, exc.response.get("error"))
            return REFUSAL.format(bot=who.bot_user_id)
        private = bool(
            info.get("is_private")
            or info.get("is_im")
            or info.get("is_mpim")
            or info.get("is_group")
        )
        if private and not is_member(self._client(who), channel, who.user_id):
            return REFUSAL.format(bot=who.bot_user_id)
        if not private and not info.get("is_member"):
            return (
                f"I'm not in <#{channel}>, so I can't read it. Invite me with "
                f"/invite <@{who.bot_user_id}> in that channel and try again."
            )
        return None

    def _allowed(self, channel: str, who: Requester, out: Responder) -> Effective | None:
        """The workspace's settings, or None (after telling `who`) when its channel allow-list
        excludes `channel`."""
        eff = self._answers.workspaces.effective(who.team_id)
        text = refusal(eff, channel)
        if text is not None:
            out.send(text, replace=True)
            return None
        return eff

    def _client(self, who: Requester) -> WebClient:
        return self._answers.client_for(who.team_id, who.enterprise_id)

    # -- thread summaries -------------------------------------------------------------------

    def summarize_link(self, link: ThreadLink, extra: str, who: Requester, out: Responder) -> None:
        """`/summarize <link>`: permission checks, then a private summary of the thread."""
        if who.team_domain and link.host.split(".")[0] != who.team_domain.lower():
            out.send(
                f"That link is from another workspace ({link.host}.slack.com). I can only "
                "summarize threads in this workspace.",
                replace=True,
            )
            return
        refusal = self.check_access(link.channel_id, who)
        if refusal:
            out.send(refusal, replace=True)
            return
        self.summarize_thread(link.channel_id, link.thread_ts, who, out, extra=extra)

    def summarize_thread(
        self, channel: str, thread_ts: str, who: Requester, out: Responder, *, extra: str = ""
    ) -> None:
        """A private summary of the thread that `thread_ts` belongs to."""
        eff = self._allowed(channel, who, out)
        if eff is None:
            return
        try:
            read = self._answers.reader.read
            now = self._answers.now()
            messages = read(who.team_id, channel, thread_ts, now, who.enterprise_id)
            if messages and messages[0].get("thread_ts") not in (None, messages[0]["ts"]):
                thread_ts = messages[0]["thread_ts"]  # a reply's ts: read its whole thread
                messages = read(who.team_id, channel, thread_ts, now, who.enterprise_id)
        except ThreadReadError as exc:
            log.warning("reading %s/%s failed: %s", channel, thread_ts, exc.error)
            out.send(self._read_error(exc.error, who), replace=True)
            return
        if not messages:
            out.send("That message no longer exists (it may have been deleted).", replace=True)
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
        self._finish(req, messages, request, out, thread_ts=thread_ts, recap=False, eff=eff)

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
    ) -> None:
        """A private recap of the channel: a time window (aligned) or the last N messages."""
        eff = self._allowed(channel, who, out)
        if eff is None:
            return
        now = self._clock() if now is None else now
        oldest = window_start(now, seconds) if seconds else None
        try:
            top = self._history(self._client(who), channel, oldest=oldest, count=count)
        except ThreadReadError as exc:
            log.warning("reading history of %s failed: %s", channel, exc.error)
            out.send(self._read_error(exc.error, who), replace=True)
            return
        if not top:
            out.send("Nothing was said in this channel in that window.", replace=True)
            return
        messages = list(top)
        parents = [m for m in top if m.get("reply_count")]
        parents.sort(key=lambda m: ts_key(m["ts"]), reverse=True)
        for parent in parents[:MAX_RECAP_THREADS]:
            try:
                replies = self._answers.reader.read(
                    who.team_id, channel, parent["ts"], self._answers.now(), who.enterprise_id
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
        self._finish(req, messages, request, out, thread_ts=None, recap=True, eff=eff)

    @staticmethod
    def _history(
        client: WebClient, channel: str, *, oldest: int | None, count: int | None
    ) -> list[dict]:
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            limit = HISTORY_PAGE if count is None else min(HISTORY_PAGE, count - len(out))
            kwargs: dict[str, Any] = {"channel": channel, "limit": limit, "cursor": cursor}
            if oldest is not None:
                kwargs["oldest"] = str(oldest)
            try:
                resp = client.conversations_history(**kwargs)
            except SlackApiError as exc:
                raise ThreadReadError(str(exc.response.get("error"))) from None
            out.extend(resp.get("messages") or [])
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not cursor or (count is not None and len(out) >= count):
                break
        out = [m for m in out if m.get("subtype") not in ("channel_join", "channel_leave")]
        out.sort(key=lambda m: ts_key(m["ts"]))
        return out[-count:] if count is not None else out

    # -- shared -----------------------------------------------------------------------------

    def _read_error(self, error: str, who: Requester) -> str:
        if error == "thread_not_found":
            return "That message no longer exists (it may have been deleted)."
        if error == "channel_not_found":
            return REFUSAL.format(bot=who.bot_user_id)
        return read_error_text(error, who.bot_user_id)

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
    ) -> None:
        try:
            done = self._answers.complete(req, messages, request, recap=recap, eff=eff)
        except LLMError as exc:
            out.send(llm_error_text(exc), replace=True)
            return
        except BudgetExceeded as exc:
            out.send(f"Sorry, {exc}", replace=True)
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
        out.send(part.text, [*part.blocks, button], replace=True)

    # -- the share button -------------------------------------------------------------------

    def share(self, summary_id: str, user_id: str, sharer_name: str, out: Responder) -> None:
        """Post a private summary for everyone, once, saying who shared it."""
        with self._sessions.begin() as s:
            summary = s.get(Summary, summary_id)
            if summary is None or summary.user_id != user_id:
                out.send("That summary is no longer available; run /summarize again.")
                return
            claimed = s.execute(
                update(Summary)
                .where(Summary.id == summary_id, Summary.shared_at.is_(None))
                .values(shared_at=datetime.now(UTC))
            ).rowcount
        if not claimed:
            out.send("That summary was already posted.", replace=True)
            return
        footer = f"Shared by {neutralise_pings(sharer_name)}"
        if summary.footer:
            footer += f" · {summary.footer}"
        parts = build_messages(summary.text, footer, note=summary.note)
        try:
            for part in parts:
                self._answers.client_for(summary.team_id).chat_postMessage(
                    channel=summary.channel_id,
                    thread_ts=summary.thread_ts,
                    text=part.text,
                    blocks=part.blocks,
                    unfurl_links=False,
                    unfurl_media=False,
                )
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.warning("sharing summary in %s failed: %s", summary.channel_id, error)
            with self._sessions.begin() as s:
                s.execute(update(Summary).where(Summary.id == summary_id).values(shared_at=None))
            out.send(
                f"I couldn't post it (Slack said `{error}`). If I'm not in the channel, "
                "invite me and try again."
            )
            return
        where = "thread" if summary.thread_ts else "channel"
        out.send(f"Posted to the {where} for everyone.", replace=True)
