"""`/summarize`: a channel recap, a thread by its link, help, or the usage digest.

Each sub-command is one entry of `ACTIONS`: how its text is recognised, what the ack says, the
lane its job takes and what the job does. The ack answers at once with what is coming; the work
is stored as a job first (so it survives a restart) and a worker does it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.delivery import Ephemeral, ResponseUrl
from bot.jobs import Handler, JobQueue
from bot.summaries import Requester, SummaryService, ThreadLink, parse_link, wait_for_reads
from bot.threads import ReadsPending
from bot.usage import UsageService
from bot.user_messages import SOMETHING_WRONG

log = logging.getLogger(__name__)

KIND = "summarize_command"

HELP = """\
*How to use /summarize*
• `/summarize` — recap of this channel's last 24 hours, thread replies included
• `/summarize 3d` / `12h` / `90m` — recap of another window
• `/summarize 200` — recap of the last 200 messages
• `/summarize <thread link>` — summary of that thread (use *Copy link* on any of its messages)
• `/summarize usage [30d]` — what the bot cost and what caching saved
• Inside a thread: the message shortcut *Summarize thread* (⋮ on any message)
Summaries are shown only to you, with a button to post them for everyone."""

_WINDOW = re.compile(r"^(\d{1,4})\s*([mhdw])$", re.IGNORECASE)
_UNIT = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Parsed:
    """What `/summarize TEXT` asks for: `action` names its entry in ACTIONS."""

    action: str
    seconds: int | None = None
    count: int | None = None
    link: ThreadLink | None = None
    extra: str = ""
    error: str = ""
    period: str = ""


@dataclass(frozen=True)
class Job:
    """What a sub-command's job works with: the stored payload, who asked, where to answer,
    and the services it may use."""

    payload: dict[str, Any]
    who: Requester
    out: ResponseUrl
    summaries: SummaryService
    usage: UsageService | None


@dataclass(frozen=True)
class Action:
    """One sub-command. `parse(text, first word, rest)` recognises it (None: not this one);
    `ack` is what the ack says; `lane(parsed, payload)` orders its jobs; `run` does the work.
    Without `run` the ack is the whole answer and no job is stored."""

    parse: Callable[[str, str, str], Parsed | None]
    ack: Callable[[Parsed], str]
    lane: Callable[[Parsed, dict[str, Any]], str] = lambda parsed, payload: ""
    run: Callable[[Parsed, Job], None] | None = None


def _describe(seconds: int | None, count: int | None) -> str:
    if count:
        return f"the last {count} messages"
    assert seconds is not None
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"the last {n} {unit}{'s' if n != 1 else ''}" if n != 1 else f"the last {unit}"
    return f"the last {seconds} seconds"


def _parse_help(text: str, word: str, rest: str) -> Parsed | None:
    return Parsed("help") if word.lower() in ("help", "-h", "--help", "?") else None


def _parse_usage(text: str, word: str, rest: str) -> Parsed | None:
    return Parsed("usage", period=rest.strip()) if word.lower() == "usage" else None


def _parse_recap(text: str, word: str, rest: str) -> Parsed | None:
    if not text:
        return Parsed("recap", seconds=86400)
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
    return None


def _parse_thread(text: str, word: str, rest: str) -> Parsed | None:
    if not ("slack.com/archives" in word or word.startswith(("<http", "http"))):
        return None
    link = parse_link(word)
    if link is None:
        return Parsed(
            "invalid",
            error="That doesn't look like a Slack message link. Use *Copy link* on a "
            "message of the thread and paste it after /summarize.",
        )
    return Parsed("thread", link=link, extra=rest.strip())


def _run_usage(parsed: Parsed, job: Job) -> None:
    if job.usage is None:
        job.out.send("The usage digest is not available yet.", replace=True)
        return
    text, blocks = job.usage.for_requester(job.who.team_id, job.who.user_id, parsed.period)
    job.out.send(text[:3000], blocks or None, replace=True)


def _run_thread(parsed: Parsed, job: Job) -> None:
    assert parsed.link is not None
    job.summaries.summarize_link(parsed.link, parsed.extra, job.who, job.out)


def _run_recap(parsed: Parsed, job: Job) -> None:
    channel = job.payload["channel_id"]
    # A recap that waited for reads is of the channel as it was when asked (`at`): its windows
    # stay the same from one run to the next, so each run goes on where the last one stopped.
    job.summaries.recap(
        channel,
        job.who,
        job.out,
        seconds=parsed.seconds,
        count=parsed.count,
        now=job.payload.get("at"),
    )


def _link_lane(parsed: Parsed, payload: dict[str, Any]) -> str:
    assert parsed.link is not None
    return f"{parsed.link.channel_id}:{parsed.link.thread_ts}"


# The sub-commands, tried in this order; "invalid" takes whatever no other one recognised.
ACTIONS: dict[str, Action] = {
    "help": Action(_parse_help, lambda parsed: HELP),
    "usage": Action(
        _parse_usage,
        lambda parsed: "Working on the usage digest…",
        lambda parsed, payload: "usage",
        _run_usage,
    ),
    "recap": Action(
        _parse_recap,
        lambda p: f"Working on a recap of {_describe(p.seconds, p.count)} here…",
        lambda parsed, payload: f"{payload['channel_id']}:recap",
        _run_recap,
    ),
    "thread": Action(
        _parse_thread,
        lambda parsed: "Working on a summary of that thread…",
        _link_lane,
        _run_thread,
    ),
    "invalid": Action(
        lambda text, word, rest: Parsed("invalid", error="I didn't understand that."),
        lambda parsed: f"{parsed.error}\n\n{HELP}",
    ),
}


def parse_command(text: str) -> Parsed:
    """Parse the argument of `/summarize`: the first entry of ACTIONS that recognises it."""
    text = text.strip()
    if text.startswith("<") and ">" in text:  # <url> or <url|label with spaces>
        end = text.index(">") + 1
        word, rest = text[:end], text[end:]
    else:
        word, _, rest = text.partition(" ")
    for action in ACTIONS.values():
        parsed = action.parse(text, word, rest)
        if parsed is not None:
            return parsed
    raise AssertionError("the last action recognises everything")


def _payload(command: dict[str, Any], context: BoltContext) -> dict[str, Any]:
    """What the job needs of the command, stored with it."""
    fields = ("team_id", "team_domain", "channel_id", "user_id", "text", "response_url")
    payload = {
        **{k: command.get(k, "") for k in fields},
        "bot_user_id": context.bot_user_id or "",
        "bot_id": context.bot_id,
        "enterprise_id": command.get("enterprise_id") or None,
    }
    if context.team_id:
        payload["team_id"] = context.team_id
    return payload


def requester_of(payload: dict[str, Any], *, with_org: bool = False) -> Requester:
    """Who asked, from a stored job's payload; `with_org`: their Grid org too (the shortcut
    reads with it; `/summarize` jobs use the workspace's client)."""
    return Requester(
        team_id=payload["team_id"],
        user_id=payload["user_id"],
        bot_user_id=payload["bot_user_id"],
        bot_id=payload.get("bot_id"),
        team_domain=payload.get("team_domain", ""),
        enterprise_id=payload.get("enterprise_id") if with_org else None,
    )


def register(
    app: App, summaries: SummaryService, queue: JobQueue, usage: UsageService | None
) -> dict[str, Handler]:
    """Wire `/summarize`; return its job handler."""

    @app.command("/summarize")
    def ack_command(ack: Ack, command: dict[str, Any], context: BoltContext) -> None:
        parsed = parse_command(command.get("text") or "")
        action = ACTIONS[parsed.action]
        if action.run is not None:
            payload = _payload(command, context)
            queue.enqueue(
                KIND,
                payload,
                lane=f"{payload['team_id']}:{action.lane(parsed, payload)}",
                dedupe_key=f"trigger:{command.get('trigger_id') or command.get('response_url')}",
            )
        ack(text=action.ack(parsed), response_type="ephemeral")

    def run(payload: dict[str, Any]) -> None:
        parsed = parse_command(payload.get("text") or "")
        payload.setdefault("at", summaries.clock())
        # A response_url takes messages for 30 minutes: a summary whose reads waited longer
        # comes as an ephemeral message in the channel instead.
        later = Ephemeral(
            summaries.client_of(payload["team_id"]),
            payload["channel_id"],
            payload["user_id"],
            "",
            None,
        )
        out = ResponseUrl(payload["response_url"], fallback=later)
        job = Job(payload, requester_of(payload), out, summaries, usage)
        try:
            action = ACTIONS[parsed.action]
            if action.run is not None:
                action.run(parsed, job)
        except ReadsPending as wait:
            raise wait_for_reads(wait, payload, out) from None
        except Exception:
            log.exception("/summarize failed in %s", payload.get("channel_id"))
            out.send(SOMETHING_WRONG, replace=True)

    def give_up(payload: dict[str, Any]) -> None:
        ResponseUrl(payload["response_url"]).send(
            "Sorry, I couldn't finish this after several attempts. Please try again.",
            replace=True,
        )

    return {KIND: Handler(run, give_up)}
