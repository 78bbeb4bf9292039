"""The "Post to the thread/channel" button under a private summary."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.service import AnswerService
from bot.summaries import SHARE_ACTION, ResponseUrl, SummaryService

log = logging.getLogger(__name__)


def register(app: App, summaries: SummaryService, answers: AnswerService) -> None:
    """Post a summary for everyone when its requester clicks the button."""

    @app.action(SHARE_ACTION)
    def on_share(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], context: BoltContext
    ) -> None:
        ack()
        user = (body.get("user") or {}).get("id", "")
        out = ResponseUrl(body["response_url"])
        try:
            name = answers.display_name(context.team_id or "", user)
            summaries.share(action.get("value", ""), user, name, out)
        except Exception:
            log.exception("sharing a summary failed")
            out.send("Sorry, something went wrong on my side; please try again.")
