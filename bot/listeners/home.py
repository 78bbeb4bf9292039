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
NOT_ADMIN_VIEW = {
    "type": "modal",
    "title": {"type": "plain_text", "text": "Workspace settings"},
    "close": {"type": "plain_text", "text": "Close"},
    "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": NOT_ADMIN}}],
}


class HomeTab:
    """The Home tab and the workspace settings modal of one bot."""

    def __init__(
        self, usage: UsageService, workspaces: Workspaces, now: Callable[[], datetime]
    ) -> None:
        self._usage = usage
        self._workspaces = workspaces
        self._now = now

    def publish(self, client: WebClient, team_id: str, user_id: str) -> None:
        """Publish `user_id`'s Home tab: their usage, the digest, the workspace's settings."""
        try:
            admin = is_admin(client, user_id)
            view = self._usage.home_view(team_id, user_id, admin=admin)
            eff = self._workspaces.effective(team_id)
            extra = [{"type": "divider"}, *home_blocks(eff, can_edit=admin)]
            view["blocks"] = view["blocks"][: 100 - len(extra)] + extra
            client.views_publish(user_id=user_id, view=view)
        except SlackApiError as exc:
            log.warning(
                "publishing App Home for team=%s failed: %s", team_id, exc.response.get("error")
            )

    def on_home(self, event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
        """app_home_opened on the Home tab."""
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        self.publish(context.client, team_of(body, context.team_id), event["user"])

    def open_settings(self, ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
        """The settings button: the modal for admins, a note for everyone else."""
        ack()
        user_id = body["user"]["id"]
        team_id = team_of(body, context.team_id)
        client = context.client
        view = NOT_ADMIN_VIEW
        if is_admin(client, user_id):
            eff = self._workspaces.effective(team_id)
            view = settings_modal(eff, self._workspaces.models, self._workspaces.settings)
        try:
            client.views_open(trigger_id=body["trigger_id"], view=view)
        except SlackApiError as exc:
            log.warning(
                "opening the settings modal for team=%s failed: %s",
                team_id,
                exc.response.get("error"),
            )

    def save_settings(self, ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
        """The modal's submission: checked, saved, and the Home tab rebuilt."""
        user_id = body["user"]["id"]
        team_id = team_of(body, context.team_id)
        client = context.client
        if not is_admin(client, user_id):
            ack(response_action="errors", errors={"language": NOT_ADMIN})
            return
        values = ((body.get("view") or {}).get("state") or {}).get("values") or {}
        ws = self._workspaces
        choice, errors = parse_submission(values, ws.models, ws.settings)
        if errors:
            ack(response_action="errors", errors=errors)
            return
        try:
            changed = ws.save(team_id, context.enterprise_id, choice, user_id, self._now())
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
        self.publish(client, team_id, user_id)


def register(
    app: App, usage: UsageService, workspaces: Workspaces, now: Callable[[], datetime]
) -> None:
    """Publish the Home tab on app_home_opened; handle the settings button and modal."""
    tab = HomeTab(usage, workspaces, now)
    app.event("app_home_opened")(tab.on_home)
    app.action(OPEN_ACTION)(tab.open_settings)
    app.view(CALLBACK_ID)(tab.save_settings)
