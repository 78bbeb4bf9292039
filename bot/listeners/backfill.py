"""Backfill on join: when the bot is added to a channel, read its recent top-level messages
within the workspace's read budget, so the first question there does not start from nothing.

The job is queued by the join event (bot/listeners/message_events.py); it waits for the budget
like any read (deferred, never holding a worker) and stops at BACKFILL_MESSAGES."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from bot.jobs import Deferred, Handler
from bot.service import AnswerService
from bot.threads import ReadsPending, ThreadReadError

log = logging.getLogger(__name__)

KIND = "backfill"


def register(answers: AnswerService, count: int) -> dict[str, Handler]:
    """The job handler of `backfill` jobs ({team_id, channel_id, enterprise_id})."""

    def run(payload: dict[str, Any]) -> None:
        team_id, channel = payload["team_id"], payload["channel_id"]
        eff = answers.workspaces.effective(team_id)
        if not (eff.keep_transcripts and eff.backfill_on_join) or count <= 0:
            return
        now = answers.now()
        window = (datetime.fromtimestamp(0, UTC), now)
        try:
            kept = answers.reader.read_channel(
                team_id, channel, window, now, payload.get("enterprise_id"), keep=True, count=count
            )
        except ReadsPending as wait:
            raise Deferred(wait.until) from None
        except ThreadReadError as exc:
            log.info("backfill of team=%s channel=%s stopped: %s", team_id, channel, exc.error)
            return
        log.info("backfill of team=%s channel=%s: %d messages kept", team_id, channel, len(kept))

    return {KIND: Handler(run, lambda payload: None)}
