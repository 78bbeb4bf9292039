"""Uninstall and token revocation: forget the workspace's conversations at once."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.store import data

log = logging.getLogger(__name__)


def register(app: App, sessions: sessionmaker[Session]) -> None:
    """On app_uninstalled, or tokens_revoked naming bot tokens, purge the workspace's text."""

    def purge(team_id: str, why: str) -> None:
        with sessions.begin() as s:
            counts = data.purge_workspace(s, team_id)
        log.info("purged workspace %s after %s: %s", team_id, why, counts)

    @app.event("app_uninstalled")
    def on_uninstalled(body: dict[str, Any], context: BoltContext) -> None:
        purge(context.team_id or body.get("team_id", ""), "app_uninstalled")

    @app.event("tokens_revoked")
    def on_revoked(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        if (event.get("tokens") or {}).get("bot"):
            purge(context.team_id or body.get("team_id", ""), "tokens_revoked")
