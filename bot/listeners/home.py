"""App Home: the viewer's usage, the workspace digest, and the workspace's settings (editable by
workspace admins and owners in a modal), rebuilt when the tab opens and after a save."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.usage import UsageService
from bot.workspace import (
    CALLBACK_ID,
    OPEN_ACTION,
    Workspaces,
    home_blocks,
    is_admin,
    parse_submission,
    settings_modal,
    team_of,
)

log = logging.getLogger(__name__)

NOT_ADMIN = "Only workspace admins and owners can change these settings."


def register(
    app: App, usage: UsageService, workspaces: Workspaces, now: Callable[[], datetime]
) -> None:
    """Publish the Home tab on app_home_opened; handle the settings button and modal."""

    def publish(client: WebClient, team_id: str, user_id: str) -> None:
        try:
            admin = is_admin(client, user_id)
            view = usage.home_view(team_id, user_id, admin=admin)
            eff = workspaces.effective(team_id)
            extra = [{"type": "divider"}, *home_blocks(eff, can_edit=admin)]
            view["blocks"] = view["blocks"][: 100 - len(extra)] + extra
            client.views_publish(user_id=user_id, view=view)
        except SlackApiError as exc:
            log.warning(
                "publishing App Home for team=%s failed: %s", team_id, exc.response.get("error")
            )

    @app.event("app_home_opened")
    def on_home(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        publish(context.client, team_of(body, context.team_id), event["user"])

    @app.action(OPEN_ACTION)
    def open_settings(ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
        ack()
        user_id = body["user"]["id"]
        team_id = team_of(body, context.team_id)
        client = context.client
        if is_admin(client, user_id):
            eff = workspaces.effective(team_id)
            view = settings_modal(eff, workspaces.models, workspaces.settings)
        else:
            view = {
                "type": "modal",
                "title": {"type": "plain_text", "text": "Workspace settings"},
                "close": {"type": "plain_text", "text": "Close"},
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": NOT_ADMIN}}],
            }
        try:
            client.views_open(trigger_id=body["trigger_id"], view=view)
        except SlackApiError as exc:
            log.warning(
                "opening the settings modal for team=%s failed: %s",
                team_id,
                exc.response.get("error"),
            )

    @app.view(CALLBACK_ID)
    def save_settings(ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
        user_id = body["user"]["id"]
        team_id = team_of(body, context.team_id)
        client = context.client
        if not is_admin(client, user_id):
            ack(response_action="errors", errors={"language": NOT_ADMIN})
            return
        values = ((body.get("view") or {}).get("state") or {}).get("values") or {}
        choice, errors = parse_submission(values, workspaces.models, workspaces.settings)
        if errors:
            ack(response_action="errors", errors=errors)
            return
        try:
            changed = workspaces.save(team_id, context.enterprise_id, choice, user_id, now())
        except Exception:
            log.exception("saving workspace settings of team=%s failed", team_id)
            ack(
                response_action="errors",
                errors={"language": "Saving failed on my side; nothing changed. Try again."},
            )
            return
        ack()
        log.info(
            "workspace settings of team=%s changed by %s: %s",
            team_id,
            user_id,
            ", ".join(changed) or "nothing",
        )
        publish(client, team_id, user_id)
