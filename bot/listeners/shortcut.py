"""Message shortcut "Summarize thread": a private summary of the thread a message belongs to."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.delivery import Ephemeral
from bot.jobs import Handler, JobQueue
from bot.listeners.summarize import requester_of
from bot.service import AnswerService
from bot.summaries import SummaryService, wait_for_reads
from bot.threads import ReadsPending, thread_of
from bot.user_messages import GAVE_UP_SUMMARY, SOMETHING_WRONG

log = logging.getLogger(__name__)

CALLBACK_ID = "summarize_thread"
KIND = "summarize_shortcut"


def _payload(shortcut: dict[str, Any], context: BoltContext) -> dict[str, Any]:
    """What the job needs of the shortcut, stored with it."""
    message = shortcut.get("message") or {}
    return {
        "team_id": context.team_id or (shortcut.get("team") or {}).get("id", ""),
        "channel_id": (shortcut.get("channel") or {}).get("id", ""),
        "thread_ts": thread_of(message),
        "user_id": (shortcut.get("user") or {}).get("id", ""),
        "response_url": shortcut.get("response_url"),
        "bot_user_id": context.bot_user_id or "",
        "bot_id": context.bot_id,
        "enterprise_id": context.enterprise_id,
    }


def _responder(answers: AnswerService, payload: dict[str, Any]) -> Ephemeral:
    client = answers.client_for(payload["team_id"], payload.get("enterprise_id"))
    return Ephemeral(
        client,
        payload["channel_id"],
        payload["user_id"],
        payload["thread_ts"],
        payload.get("response_url"),
    )


def register(
    app: App, summaries: SummaryService, answers: AnswerService, queue: JobQueue
) -> dict[str, Handler]:
    """Wire the shortcut; it works on thread replies too (slash commands cannot run in threads)."""

    @app.message_shortcut(CALLBACK_ID)
    def ack_shortcut(ack: Ack, shortcut: dict[str, Any], context: BoltContext) -> None:
        payload = _payload(shortcut, context)
        queue.enqueue(
            KIND,
            payload,
            lane=f"{payload['team_id']}:{payload['channel_id']}:{payload['thread_ts']}",
            dedupe_key=f"trigger:{shortcut.get('trigger_id') or shortcut.get('action_ts')}",
        )
        ack()

    def run(payload: dict[str, Any]) -> None:
        out = _responder(answers, payload)
        who = requester_of(payload, with_org=True)
        try:
            summaries.summarize_thread(payload["channel_id"], payload["thread_ts"], who, out)
        except ReadsPending as wait:
            raise wait_for_reads(wait, payload, out) from None
        except Exception:
            log.exception("shortcut failed in %s", payload["channel_id"])
            out.send(SOMETHING_WRONG)

    def give_up(payload: dict[str, Any]) -> None:
        _responder(answers, payload).send(GAVE_UP_SUMMARY)

    return {KIND: Handler(run, give_up)}
