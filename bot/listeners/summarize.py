"""`/summarize`: a channel recap, a thread by its link, help, or the usage digest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.summaries import HELP, Requester, ResponseUrl, SummaryService, parse_command

log = logging.getLogger(__name__)

UsageHandler = Callable[[dict[str, Any], BoltContext, str, ResponseUrl], None]


def _describe(seconds: int | None, count: int | None) -> str:
    if count:
        return f"the last {count} messages"
    assert seconds is not None
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"the last {n} {unit}{'s' if n != 1 else ''}" if n != 1 else f"the last {unit}"
    return f"the last {seconds} seconds"


def register(app: App, summaries: SummaryService, usage: UsageHandler | None) -> None:
    """Wire `/summarize`: ack at once with what is coming, then do the work after the ack."""

    def ack_command(ack: Ack, command: dict[str, Any]) -> None:
        parsed = parse_command(command.get("text") or "")
        if parsed.action == "help":
            text = HELP
        elif parsed.action == "invalid":
            text = f"{parsed.error}\n\n{HELP}"
        elif parsed.action == "thread":
            text = "Working on a summary of that thread…"
        elif parsed.action == "usage":
            text = "Working on the usage digest…"
        else:
            text = f"Working on a recap of {_describe(parsed.seconds, parsed.count)} here…"
        ack(text=text, response_type="ephemeral")

    def run_command(command: dict[str, Any], context: BoltContext) -> None:
        parsed = parse_command(command.get("text") or "")
        if parsed.action in ("help", "invalid"):
            return
        out = ResponseUrl(command["response_url"])
        who = Requester(
            team_id=context.team_id or command.get("team_id", ""),
            user_id=command["user_id"],
            bot_user_id=context.bot_user_id or "",
            bot_id=context.bot_id,
            team_domain=command.get("team_domain", ""),
        )
        try:
            if parsed.action == "thread":
                assert parsed.link is not None
                summaries.summarize_link(parsed.link, parsed.extra, who, out)
            elif parsed.action == "usage":
                if usage is None:
                    out.send("The usage digest is not available yet.", replace=True)
                else:
                    usage(command, context, parsed.period, out)
            else:
                summaries.recap(
                    command["channel_id"], who, out, seconds=parsed.seconds, count=parsed.count
                )
        except Exception:
            log.exception("/summarize failed in %s", command.get("channel_id"))
            out.send(
                "Sorry, something went wrong on my side. The operator's logs have the details; "
                "please try again.",
                replace=True,
            )

    app.command("/summarize")(ack=ack_command, lazy=[run_command])
