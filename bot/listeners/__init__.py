"""Slack entry points, one file each; `register` wires them all."""

from __future__ import annotations

from slack_bolt import App
from sqlalchemy.orm import Session, sessionmaker

from bot.listeners import lifecycle, mention, message_events, share, shortcut, summarize
from bot.listeners.summarize import UsageHandler
from bot.service import AnswerService
from bot.summaries import SummaryService


def register(
    app: App,
    answers: AnswerService,
    summaries: SummaryService,
    sessions: sessionmaker[Session],
    usage: UsageHandler | None = None,
) -> None:
    """Attach every listener to `app`."""
    mention.register(app, answers)
    summarize.register(app, summaries, usage)
    shortcut.register(app, summaries)
    share.register(app, summaries, answers)
    message_events.register(app, answers, sessions)
    lifecycle.register(app, sessions)
