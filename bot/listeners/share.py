"""The "Post to the thread/channel" button under a private summary."""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt import Ack, App, BoltContext

from bot.delivery import ResponseUrl
from bot.jobs import Handler, JobQueue
from bot.service import AnswerService
from bot.summaries import SHARE_ACTION, SummaryService
from bot.user_messages import SHARE_GAVE_UP, SHARE_WENT_WRONG

log = logging.getLogger(__name__)

KIND = "share_summary"


def register(
    app: App, summaries: SummaryService, answers: AnswerService, queue: JobQueue
) -> dict[str, Handler]:
    """Post a summary for everyone when its requester clicks the button (once)."""

    @app.action(SHARE_ACTION)
    def on_share(
        ack: Ack, body: dict[str, Any], action: dict[str, Any], context: BoltContext
    ) -> None:
        user = (body.get("user") or {}).get("id", "")
        payload = {
            "team_id": context.team_id or (body.get("team") or {}).get("id", ""),
            "user_id": user,
            "summary_id": action.get("value", ""),
            "response_url": body.get("response_url", ""),
        }
        queue.enqueue(
            KIND,
            payload,
            lane=f"{payload['team_id']}:share:{payload['summary_id']}",
            dedupe_key=f"action:{user}:{action.get('action_ts') or body.get('trigger_id')}",
        )
        ack()

    def run(payload: dict[str, Any]) -> None:
        out = ResponseUrl(payload["response_url"])
        try:
            name = answers.display_name(payload["team_id"], payload["user_id"])
            summaries.share(payload["summary_id"], payload["user_id"], name, out)
        except Exception:
            log.exception("sharing a summary failed")
            out.send(SHARE_WENT_WRONG)

    def give_up(payload: dict[str, Any]) -> None:
        ResponseUrl(payload["response_url"]).send(SHARE_GAVE_UP)

    return {KIND: Handler(run, give_up)}
