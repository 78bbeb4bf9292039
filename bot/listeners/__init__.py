"""Slack entry points, one file each; `register` wires them all and returns the job handlers."""

from __future__ import annotations

from slack_bolt import App
from sqlalchemy.orm import Session, sessionmaker

from bot.installations import EncryptedInstallationStore
from bot.jobs import Handler, JobQueue
from bot.listeners import lifecycle, mention, message_events, share, shortcut, summarize
from bot.listeners.summarize import UsageHandler
from bot.service import AnswerService
from bot.summaries import SummaryService


def register(
    app: App,
    *,
    answers: AnswerService,
    summaries: SummaryService,
    sessions: sessionmaker[Session],
    queue: JobQueue,
    store: EncryptedInstallationStore | None = None,
    usage: UsageHandler | None = None,
) -> dict[str, Handler]:
    """Attach every listener to `app`; the returned handlers run the stored jobs."""
    handlers: dict[str, Handler] = {}
    handlers.update(mention.register(app, answers, queue))
    handlers.update(summarize.register(app, summaries, queue, usage))
    handlers.update(shortcut.register(app, summaries, answers, queue))
    handlers.update(share.register(app, summaries, answers, queue))
    message_events.register(app, answers, sessions)
    lifecycle.register(app, sessions, store)
    return handlers
