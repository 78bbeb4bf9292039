"""Slack entry points, one file each; `register` wires them all."""

from __future__ import annotations

from slack_bolt import App

from bot.listeners import mention, share, shortcut, summarize
from bot.listeners.summarize import UsageHandler
from bot.service import AnswerService
from bot.summaries import SummaryService


def register(
    app: App,
    answers: AnswerService,
    summaries: SummaryService,
    usage: UsageHandler | None = None,
) -> None:
    """Attach every listener to `app`."""
    mention.register(app, answers)
    summarize.register(app, summaries, usage)
    shortcut.register(app, summaries)
    share.register(app, summaries, answers)
