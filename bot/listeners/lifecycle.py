"""Uninstall and token revocation: forget the workspace's conversations at once. Also notes
which Enterprise Grid org each workspace belongs to, so an org-wide uninstall reaches them all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltContext
from sqlalchemy.orm import Session, sessionmaker

from bot.installations import EncryptedInstallationStore
from bot.jobs import Handler
from bot.service import AnswerService
from bot.store import data
from bot.store.db import scrub_deleted
from bot.workspace import Workspaces, team_of

log = logging.getLogger(__name__)


def remember_orgs(app: App, workspaces: Workspaces) -> None:
    """A middleware noting each workspace's Grid org (a database write once per process)."""

    @app.middleware
    def note_org(
        body: dict[str, Any],
        context: BoltContext,
        next: Callable[[], Any],  # noqa: A002
    ) -> Any:
        if context.enterprise_id and isinstance(body, dict):
            team_id = team_of(body, context.team_id)
            if team_id and team_id != context.enterprise_id:
                workspaces.remember(team_id, context.enterprise_id)
        return next()


def after_job(handler: Handler, answers: AnswerService, sessions: sessionmaker[Session]) -> Handler:
    """`handler`, then: if the job's workspace uninstalled while it ran, purge what it wrote."""

    def run(payload: dict[str, Any]) -> None:
        try:
            handler.run(payload)
        finally:
            team_id = payload.get("team_id")
            if team_id and not answers.installed(team_id, payload.get("enterprise_id")):
                with sessions.begin() as s:
                    counts = data.purge_workspace(s, team_id)
                scrub_deleted(sessions)
                log.info("workspace team=%s uninstalled during a job; purged %s", team_id, counts)

    return Handler(run, handler.give_up)


def register(
    app: App,
    sessions: sessionmaker[Session],
    store: EncryptedInstallationStore | None,
    workspaces: Workspaces,
) -> None:
    """On app_uninstalled, or tokens_revoked naming bot tokens, purge the workspace: its
    installation (tokens) and every stored text; the usage ledger keeps only numbers. For an
    org-wide install, every workspace of the org is purged."""

    def purge(body: dict[str, Any], context: BoltContext, why: str) -> None:
        team_id = team_of(body, context.team_id)
        org = context.enterprise_id
        org_wide = bool(context.is_enterprise_install and org)
        teams = {team_id} if team_id else set()
        if org_wide and org:
            teams.update(workspaces.teams_of(org))

        def purge_teams() -> None:
            for team in sorted(teams):
                with sessions.begin() as s:
                    counts = data.purge_workspace(s, team)
                workspaces.forget(team)
                log.info("purged workspace team=%s after %s: %s", team, why, counts)
            scrub_deleted(sessions)

        purge_teams()  # before the installation goes: a failure here is retried by Slack
        if store is not None:
            store.delete_all(enterprise_id=org, team_id=None if org_wide else team_id)
            # Again: a job running meanwhile may have written after the first pass; jobs
            # ending from now on find no installation and purge after themselves (after_job).
            purge_teams()

    @app.event("app_uninstalled")
    def on_uninstalled(body: dict[str, Any], context: BoltContext) -> None:
        purge(body, context, "app_uninstalled")

    @app.event("tokens_revoked")
    def on_revoked(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        if (event.get("tokens") or {}).get("bot"):
            purge(body, context, "tokens_revoked")
