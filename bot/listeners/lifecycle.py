"""Uninstall and token revocation: forget the workspace's conversations at once."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.installations import EncryptedInstallationStore
from bot.store import data

log = logging.getLogger(__name__)


def register(
    app: App, sessions: sessionmaker[Session], store: EncryptedInstallationStore | None
) -> None:
    """On app_uninstalled, or tokens_revoked naming bot tokens, purge the workspace: its
    installation (tokens) and every stored text; the usage ledger keeps only numbers."""

    def purge(team_id: str, enterprise_id: str | None, why: str) -> None:
        with sessions.begin() as s:
            counts = data.purge_workspace(s, team_id)
        if store is not None:
            store.delete_all(enterprise_id=enterprise_id, team_id=team_id)
        log.info("purged workspace team=%s after %s: %s", team_id, why, counts)

    @app.event("app_uninstalled")
    def on_uninstalled(body: dict[str, Any], context: BoltContext) -> None:
        purge(context.team_id or body.get("team_id", ""), context.enterprise_id, "app_uninstalled")

    @app.event("tokens_revoked")
    def on_revoked(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        if (event.get("tokens") or {}).get("bot"):
            purge(
                context.team_id or body.get("team_id", ""), context.enterprise_id, "tokens_revoked"
            )
