"""Slack entry points, one file each; `register` wires them all and returns the job handlers."""

from __future__ import annotations

from slack_bolt import App
from sqlalchemy.orm import Session, sessionmaker

from bot.coverage import Receiver
from bot.dm import DmService
from bot.feedback import Votes
from bot.installations import EncryptedInstallationStore
from bot.jobs import Handler, JobQueue
from bot.listeners import (
    backfill,
    dm,
    feedback,
    file_events,
    home,
    keep,
    lifecycle,
    mention,
    message_events,
    share,
    shortcut,
    summarize,
)
from bot.listeners.messages import MessageRouter
from bot.service import AnswerService
from bot.summaries import SummaryService
from bot.usage import UsageService


def register(
    app: App,
    *,
    answers: AnswerService,
    summaries: SummaryService,
    sessions: sessionmaker[Session],
    queue: JobQueue,
    store: EncryptedInstallationStore | None = None,
    usage: UsageService | None = None,
    messages: MessageRouter | None = None,
    receiver: Receiver | None = None,
) -> dict[str, Handler]:
    """Attach every listener to `app`; the returned handlers run the stored jobs. `messages`
    routes `message` events (pass one to register more handlers on it)."""
    handlers: dict[str, Handler] = {}
    messages = messages if messages is not None else MessageRouter()
    lifecycle.remember_orgs(app, answers.workspaces)  # first: the mention middleware returns early
    keep.register(app, answers.keeper, queue, sessions, receiver)  # every event, before the ack
    handlers.update(file_events.register(app, sessions, queue))  # before the ack, and a job
    handlers.update(mention.register(app, answers, queue))
    dms = DmService(answers=answers, summaries=summaries, usage=usage, sessions=sessions)
    handlers.update(dm.register(app, dms, queue))  # its app_home_opened listener before home's
    handlers.update(summarize.register(app, summaries, queue, usage))
    handlers.update(shortcut.register(app, summaries, answers, queue))
    handlers.update(share.register(app, summaries, answers, queue))
    feedback.register(app, Votes(sessions, answers.now))
    handlers.update(backfill.register(answers, answers.settings.backfill_messages))
    message_events.register(messages, sessions, answers.now, answers.keeper)
    messages.attach(app)
    lifecycle.register(app, sessions, store, answers.workspaces)
    if usage is not None:
        home.register(app, usage, answers.workspaces, answers.now)
    if store is not None:  # OAuth: a workspace can uninstall while one of its jobs runs
        handlers = {k: lifecycle.after_job(h, answers, sessions) for k, h in handlers.items()}
    return handlers
