"""Conversations in the bot's Messages tab (its DM; Slack's Agent messaging experience).

Each message a person writes there is a job (bot/listeners/dm.py). `parse_dm` decides what it
asks for: a recap of a channel ("catch me up on #channel since yesterday"), a summary of a
pasted thread link, their usage, one of the hints behind the suggested prompts, or else an
ordinary turn of the conversation, answered by `AnswerService` like a mention (kind "dm": the
conversation as real user/assistant turns, its prefix cached, streamed, footer, ledger,
budgets). Recaps and summaries go through `SummaryService` with the same permission rule as
`/summarize` and are posted into the DM thread (`delivery.InThread`).

Once per conversation (its first turn) it gets a short title (assistant.threads.setTitle) and
the suggested prompts are set again (assistant.threads.setSuggestedPrompts: for an agent_view
app they live at the top of the Messages tab, so no thread_ts). A person opening the tab for
the first time is greeted once.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from sqlalchemy.orm import Session, sessionmaker

from bot.delivery import InThread
from bot.formatting import neutralise_pings
from bot.jobs import Deferred
from bot.service import AnswerService, ThreadRequest
from bot.store import data
from bot.summaries import Requester, SummaryService, ThreadLink, parse_link, wait_for_reads
from bot.threads import ReadsPending
from bot.transcript import clean, mentioned_users
from bot.usage import UsageService
from bot.user_messages import (
    DM_HELP,
    DM_HINT_RECAP,
    DM_HINT_THREAD,
    DM_READING_STATUS,
    DM_REFUSAL,
    SOMETHING_WRONG,
)

log = logging.getLogger(__name__)

# Shown at the top of the Messages tab (also in manifest.yml, features.agent_view); clicking
# one sends its `message` as the person's message.
PROMPTS: tuple[dict[str, str], ...] = (
    {"title": "Catch up on a channel", "message": "How do I catch up on a channel?"},
    {"title": "Summarize a thread", "message": "How do I get a thread summarized?"},
    {"title": "My usage this week", "message": "My usage this week"},
    {"title": "What can you do?", "message": "What can you do?"},
)
PROMPTS_TITLE = "Try asking"
TITLE_CHARS = 60
DAY = 86_400

_HINTS = {
    "how do i catch up on a channel": DM_HINT_RECAP,
    "how do i get a thread summarized": DM_HINT_THREAD,
    "what can you do": DM_HELP,
    "help": DM_HELP,
}
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|[^>]*)?>")
_LINKS = re.compile(r"<(https?://[^>|\s]+)(?:\|[^>]*)?>|(https?://\S+)")
_CATCH_UP = re.compile(
    r"\b(summari[sz]e|summary|recap|catch\s*(?:me\s+|us\s+)?up|what\s+did\s+i\s+miss|"
    r"what\s+i\s+missed|tl;?dr|what'?s\s+new|what\s+happened)\b",
    re.IGNORECASE,
)
_WINDOW = re.compile(
    r"\b(\d{1,3})\s*(m|mins?|minutes?|h|hrs?|hours?|d|days?|w|weeks?)\b", re.IGNORECASE
)
_UNIT = {"m": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
_WEEK = re.compile(r"\b(this|last|past)\s+week\b", re.IGNORECASE)
_USAGE = re.compile(
    r"^\s*(?:show\s+(?:me\s+)?|what(?:'s|\s+is|\s+was)\s+)?my\s+(?:usage|spend(?:ing)?|costs?)"
    r"\b(?P<rest>.*)$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class Intent:
    """What a message in the DM asks for: `action` is turn (an ordinary conversation turn),
    recap (`channel` over `seconds`), thread (`link`, with the rest of the message as
    `extra`), usage (`period`) or hint (`text` is the whole answer)."""

    action: str
    channel: str = ""
    seconds: int = DAY
    link: ThreadLink | None = None
    extra: str = ""
    period: str = "7d"
    text: str = ""


def _window(text: str) -> int:
    """The recap window a message names: "3d", "12 hours", "this week"; else a day (also for
    "since yesterday"), within 10 minutes and 31 days."""
    if m := _WINDOW.search(text):
        seconds = int(m.group(1)) * _UNIT[m.group(2)[0].lower()]
        return min(max(seconds, 600), 31 * DAY)
    return 7 * DAY if _WEEK.search(text) else DAY


def _period(rest: str) -> str:
    """The usage period a message names ("this month", "30d"); else the last 7 days."""
    rest = rest.lower()
    if m := re.search(r"\b(\d{1,3})\s*(d|days?|w|weeks?)\b", rest):
        return f"{m.group(1)}{m.group(2)[0]}"
    return "30d" if "month" in rest else "7d"


def parse_dm(text: str) -> Intent:
    """What the DM message `text` (Slack markup) asks for; see `Intent`."""
    plain = " ".join(text.split())
    hint = _HINTS.get(plain.lower().rstrip("?!. "))
    if hint is not None:
        return Intent("hint", text=hint)
    if m := _USAGE.match(plain):
        return Intent("usage", period=_period(m.group("rest")))
    for m in _LINKS.finditer(text):
        link = parse_link(m.group(1) or m.group(2))
        if link is not None:
            extra = " ".join((text[: m.start()] + " " + text[m.end() :]).split())
            return Intent("thread", link=link, extra=extra)
    channel = _CHANNEL.search(text)
    if channel and _CATCH_UP.search(_CHANNEL.sub(" ", text)):
        return Intent("recap", channel=channel.group(1), seconds=_window(text))
    return Intent("turn")


def title_of(intent: Intent, text: str, names: dict[str, str]) -> str:
    """A conversation's short title, from what its first message asks (mentions resolved with
    `names`, no pings; a channel it names is not repeated: it may be one the asker can't
    read)."""
    fixed = {
        "recap": "Channel catch-up",
        "thread": "Thread summary",
        "usage": "Your usage",
        "hint": "Getting started",
    }
    if intent.action in fixed:
        return fixed[intent.action]
    plain = " ".join(neutralise_pings(clean(text, names)).split()) or "Conversation"
    if len(plain) <= TITLE_CHARS:
        return plain
    cut = plain[: TITLE_CHARS - 1].rsplit(" ", 1)[0] or plain[: TITLE_CHARS - 1]
    return cut.rstrip(" ,.;:") + "…"


class DmService:
    """Runs the DM's jobs and greets newcomers to the Messages tab."""

    def __init__(
        self,
        *,
        answers: AnswerService,
        summaries: SummaryService,
        usage: UsageService | None,
        sessions: sessionmaker[Session],
    ) -> None:
        self._answers = answers
        self._summaries = summaries
        self._usage = usage
        self._sessions = sessions

    # -- the Messages tab opened ------------------------------------------------------------

    def greet(self, team_id: str, user_id: str, channel: str, enterprise_id: str | None) -> None:
        """The first time `user_id` opens the Messages tab: a greeting and the suggested
        prompts (never again: a later visit, in any process, finds the greeting noted)."""
        if not user_id or not channel:
            return
        with self._sessions.begin() as s:
            if not data.first_greeting(s, team_id, user_id, self._answers.now()):
                return
        client = self._answers.client_for(team_id, enterprise_id)
        try:
            client.chat_postMessage(channel=channel, text=DM_HELP, unfurl_links=False)
        except SlackApiError as exc:
            log.warning("greeting in team=%s failed: %s", team_id, exc.response.get("error"))
            with self._sessions.begin() as s:
                data.forget_greeting(s, team_id, user_id)  # the next visit tries again
            return
        self._prompts(team_id, channel, enterprise_id)

    def _prompts(self, team_id: str, channel: str, enterprise_id: str | None) -> None:
        """The suggested prompts at the top of the Messages tab (no thread_ts: an agent app's
        call with one silently does nothing)."""
        try:
            self._answers.client_for(team_id, enterprise_id).assistant_threads_setSuggestedPrompts(
                channel_id=channel, prompts=list(PROMPTS), title=PROMPTS_TITLE
            )
        except SlackApiError as exc:
            log.info("suggested prompts in team=%s: %s", team_id, exc.response.get("error"))

    # -- a message in the DM ----------------------------------------------------------------

    def run(self, payload: dict[str, Any]) -> None:
        """The job of one message in the DM. Raises Deferred while Slack's read budget makes a
        recap or summary wait."""
        payload = dict(payload)
        at = payload.pop("at", None)
        req = ThreadRequest(**payload)
        intent = parse_dm(req.text)
        try:
            if self._answers.from_elsewhere(req):  # Slack Connect: nothing for other orgs
                return
            self._first_turn(req, intent)
            if intent.action == "turn":
                self._answers.answer(req)  # tells the asker of any failure itself
                return
            self._other(req, intent, at)
        except Deferred:
            raise
        except Exception:
            log.exception("the DM job in team=%s failed", req.team_id)
            self._answers.tell(req, SOMETHING_WRONG)

    def give_up(self, payload: dict[str, Any]) -> None:
        """The job kept failing: say so in the conversation."""
        payload = dict(payload)
        payload.pop("at", None)
        self._answers.tell(
            ThreadRequest(**payload),
            "Sorry, I couldn't answer this after several attempts. Please ask again.",
        )

    def _first_turn(self, req: ThreadRequest, intent: Intent) -> None:
        """The conversation's first turn: its title and the suggested prompts, once."""
        with self._sessions.begin() as s:
            fresh = data.first_turn(
                s, req.team_id, req.channel_id, req.thread_ts, self._answers.now()
            )
        if not fresh:
            return
        users = mentioned_users(req.text, unlabelled=True)
        names = {u: self._answers.display_name(req.team_id, u) for u in users}
        client = self._answers.client_for(req.team_id, req.enterprise_id)
        try:
            client.assistant_threads_setTitle(
                channel_id=req.channel_id,
                thread_ts=req.thread_ts,
                title=title_of(intent, req.text, names),
            )
        except SlackApiError as exc:
            log.info("title in team=%s: %s", req.team_id, exc.response.get("error"))
        self._prompts(req.team_id, req.channel_id, req.enterprise_id)

    def _other(self, req: ThreadRequest, intent: Intent, at: float | None) -> None:
        """Everything but an ordinary turn, answered in the DM thread."""
        client = self._answers.client_for(req.team_id, req.enterprise_id)
        out = InThread(client, req.channel_id, req.thread_ts, req.placeholder_ts)
        # A recap that waits for reads is of the channel as it was when asked (its windows
        # stay the same from one run to the next).
        at = self._summaries.clock() if at is None else at
        try:
            if intent.action == "hint":
                out.send(intent.text)
            elif intent.action == "usage":
                self._send_usage(req, intent, out)
            else:
                self._summary(req, intent, out, at)
        except ReadsPending as wait:
            later = {**dataclasses.asdict(req), "at": at, "placeholder_ts": out.ts}
            raise wait_for_reads(wait, later, out) from None
        finally:
            self._keep(req, out)

    def _send_usage(self, req: ThreadRequest, intent: Intent, out: InThread) -> None:
        if self._usage is None:
            out.send("The usage digest is not available yet.")
            return
        text, blocks = self._usage.for_requester(req.team_id, req.user_id, intent.period)
        out.send(text[:3000], blocks or None)

    def _summary(self, req: ThreadRequest, intent: Intent, out: InThread, at: float) -> None:
        """A channel recap or a thread summary, with /summarize's permission rule; a channel
        the asker may not read is refused without a word about it."""
        who = Requester(
            team_id=req.team_id,
            user_id=req.user_id,
            bot_user_id=req.bot_user_id,
            bot_id=req.bot_id,
            enterprise_id=req.enterprise_id,
        )
        if not req.waited:
            out.status(*DM_READING_STATUS)
        if intent.action == "thread":
            assert intent.link is not None
            self._summaries.summarize_link(intent.link, intent.extra, who, out, share=False)
            return
        refusal = self._summaries.check_access(intent.channel, who, refused=DM_REFUSAL)
        if refusal is not None:
            out.send(refusal, replace=True)
            return
        self._summaries.recap(
            intent.channel, who, out, seconds=intent.seconds, count=None, now=at, share=False
        )

    def _keep(self, req: ThreadRequest, out: InThread) -> None:
        """Keep what was posted in the conversation, so its next turn reads nothing from
        Slack. A failure only costs a read."""
        try:
            self._answers.keeper.answer(
                req.team_id, req.channel_id, req.thread_ts, out.delivered, req.bot_user_id,
                req.bot_id,
            )
        except Exception as exc:  # noqa: BLE001 - delivered already; the events may keep it
            log.warning("keeping a DM reply in team=%s failed: %s", req.team_id, type(exc).__name__)
