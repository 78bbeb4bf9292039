"""Slack entry points, one file each; `register` wires them all."""

from __future__ import annotations

from slack_bolt import App

from bot.listeners import mention
from bot.service import AnswerService


def register(app: App, service: AnswerService) -> None:
    """Attach every listener to `app`."""
    mention.register(app, service)
