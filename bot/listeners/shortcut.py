"""Message shortcut "Summarize thread": a private summary of the thread a message belongs to."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient

from bot.summaries import Ephemeral, Requester, SummaryService

log = logging.getLogger(__name__)

CALLBACK_ID = "summarize_thread"


def register(app: App, summaries: SummaryService) -> None:
    """Wire the shortcut; it works on thread replies too (slash commands cannot run in threads)."""

    def ack_shortcut(ack: Ack) -> None:
        ack()

    def run_shortcut(shortcut: dict[str, Any], context: BoltContext, client: WebClient) -> None:
        message = shortcut.get("message") or {}
        channel = (shortcut.get("channel") or {}).get("id", "")
        user = (shortcut.get("user") or {}).get("id", "")
        thread_ts = message.get("thread_ts") or message.get("ts", "")
        out = Ephemeral(client, channel, user, thread_ts, shortcut.get("response_url"))
        who = Requester(
            team_id=context.team_id or (shortcut.get("team") or {}).get("id", ""),
            user_id=user,
            bot_user_id=context.bot_user_id or "",
            bot_id=context.bot_id,
        )
        try:
            summaries.summarize_thread(channel, thread_ts, who, out)
        except Exception:
            log.exception("shortcut failed in %s", channel)
            out.send(
                "Sorry, something went wrong on my side. The operator's logs have the "
                "details; please try again."
            )

    app.message_shortcut(CALLBACK_ID)(ack=ack_shortcut, lazy=[run_shortcut])
