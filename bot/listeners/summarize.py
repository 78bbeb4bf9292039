"""`/summarize`: a channel recap, a thread by its link, help, or the usage digest.

The ack answers at once with what is coming; the work is stored as a job first (so it survives
a restart) and a worker does it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.delivery import ResponseUrl
from bot.jobs import Handler, JobQueue
from bot.summaries import HELP, Requester, SummaryService, parse_command

log = logging.getLogger(__name__)

KIND = "summarize_command"
UsageHandler = Callable[[dict[str, Any], str, ResponseUrl], None]


def _describe(seconds: int | None, count: int | None) -> str:
    if count:
        return f"the last {count} messages"
    assert seconds is not None
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"the last {n} {unit}{'s' if n != 1 else ''}" if n != 1 else f"the last {unit}"
    return f"the last {seconds} seconds"


def register(
    app: App, summaries: SummaryService, queue: JobQueue, usage: UsageHandler | None
) -> dict[str, Handler]:
    """Wire `/summarize`; return its job handler."""

    @app.command("/summarize")
    def ack_command(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
        parsed = parse_command(command.get("text") or "")
        if parsed.action == "help":
            ack(text=HELP, response_type="ephemeral")
            return
        if parsed.action == "invalid":
            ack(text=f"{parsed.error}\n\n{HELP}", response_type="ephemeral")
            return
        if parsed.action == "thread":
            text = "Working on a summary of that thread…"
            assert parsed.link is not None
            lane = f"{parsed.link.channel_id}:{parsed.link.thread_ts}"
        elif parsed.action == "usage":
            text = "Working on the usage digest…"
            lane = "usage"
        else:
            text = f"Working on a recap of {_describe(parsed.seconds, parsed.count)} here…"
            lane = f"{command.get('channel_id')}:recap"
        payload = {
            **{
                k: command.get(k, "")
                for k in ("team_id", "team_domain", "channel_id", "user_id", "text", "response_url")
            },
            "bot_user_id": context.bot_user_id or "",
            "bot_id": context.bot_id,
            "enterprise_id": command.get("enterprise_id") or None,
        }
        if context.team_id:
            payload["team_id"] = context.team_id
        queue.enqueue(
            KIND,
            payload,
            lane=f"{payload['team_id']}:{lane}",
            dedupe_key=f"trigger:{command.get('trigger_id') or command.get('response_url')}",
        )
        ack(text=text, response_type="ephemeral")

    def run(payload: dict[str, Any]) -> None:
        parsed = parse_command(payload.get("text") or "")
        out = ResponseUrl(payload["response_url"])
        who = Requester(
            team_id=payload["team_id"],
            user_id=payload["user_id"],
            bot_user_id=payload["bot_user_id"],
            bot_id=payload.get("bot_id"),
            team_domain=payload.get("team_domain", ""),
        )
        try:
            if parsed.action == "thread":
                assert parsed.link is not None
                summaries.summarize_link(parsed.link, parsed.extra, who, out)
            elif parsed.action == "usage":
                if usage is None:
                    out.send("The usage digest is not available yet.", replace=True)
                else:
                    usage(payload, parsed.period, out)
            elif parsed.action == "recap":
                summaries.recap(
                    payload["channel_id"], who, out, seconds=parsed.seconds, count=parsed.count
                )
        except Exception:
            log.exception("/summarize failed in %s", payload.get("channel_id"))
            out.send(
                "Sorry, something went wrong on my side. The operator's logs have the details; "
                "please try again.",
                replace=True,
            )

    def give_up(payload: dict[str, Any]) -> None:
        ResponseUrl(payload["response_url"]).send(
            "Sorry, I couldn't finish this after several attempts. Please try again.",
            replace=True,
        )

    return {KIND: Handler(run, give_up)}
