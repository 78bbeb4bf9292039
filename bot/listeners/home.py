"""App Home: the viewer's own usage and the workspace digest, rebuilt when the tab opens."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import App, BoltContext
from slack_sdk.errors import SlackApiError

from bot.usage import UsageService

log = logging.getLogger(__name__)


def register(app: App, usage: UsageService) -> None:
    """Publish the Home tab on app_home_opened."""

    @app.event("app_home_opened")
    def on_home(event: dict[str, Any], context: BoltContext) -> None:
        if event.get("tab", "home") != "home" or not event.get("user"):
            return
        team_id = context.team_id or ""
        try:
            view = usage.home_view(team_id, event["user"])
            context.client.views_publish(user_id=event["user"], view=view)
        except SlackApiError as exc:
            log.warning(
                "publishing App Home for team=%s failed: %s", team_id, exc.response.get("error")
            )
