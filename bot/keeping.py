"""Transcripts kept from Slack's events: what is stored of each message event, and when.

A workspace that keeps transcripts (`Effective.keep_transcripts`) stores every content message
of the conversations the bot is a member of as its event arrives, before Slack is acknowledged
(`bot/listeners/keep.py`), so a failed write is retried by Slack instead of lost. A message whose
author belongs to another organisation (Slack Connect) is stored only as a stub: where it sits,
never what it says. What is kept, and what may be missing, is read by `bot/coverage.py`.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.orm import Session, sessionmaker

from bot.coverage import ts_time
from bot.store import data
from bot.store.models import WorkspaceSettings
from bot.threads import external_stub, is_external, org_of, slim, thread_of
from bot.workspace import Workspaces

log = logging.getLogger(__name__)

# Message subtypes with content (Slack's message subtypes: a plain message has none). Joins,
# leaves, topic and name changes and the like are not part of a transcript.
KEPT_SUBTYPES = frozenset({"", "bot_message", "file_share", "thread_broadcast", "me_message"})
FINAL = "final"  # key of a stored answer whose text the bot itself recorded when it finished
ORG_LOOKUP_TIMEOUT = 2.0  # seconds for users.info in the ack path (Slack waits 3)
ORG_KNOWN_SECONDS = 86_400.0  # how long a user's org is remembered
ORG_FAILED_SECONDS = 300.0  # how long a failed lookup counts (as external) before asking again


class OrgCache:
    """The Enterprise Grid org of authors, for the Slack Connect check in the ack path: asked of
    Slack once per author per process with a short timeout; a failed lookup answers None (so
    the author counts as external) for a few minutes."""

    def __init__(
        self,
        client_for: Callable[[str, str | None], WebClient],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_for = client_for
        self._clock = clock
        self._known: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def for_team(self, team_id: str, enterprise_id: str | None) -> _TeamOrgs:
        """The lookup for authors seen in workspace `team_id`."""
        return _TeamOrgs(self, team_id, enterprise_id)

    def org(self, team_id: str, enterprise_id: str | None, user_id: str) -> str | None:
        """The org of `user_id` (None: none, unknown, or the lookup failed)."""
        key = (team_id, user_id)
        now = self._clock()
        with self._lock:
            found = self._known.get(key)
        if found is not None and found[1] > now:
            return found[0]
        try:
            client = copy.copy(self._client_for(team_id, enterprise_id))
            client.timeout = int(ORG_LOOKUP_TIMEOUT) or 1
            client.retry_handlers = []  # no waiting: the ack is due
            org = org_of(client.users_info(user=user_id)["user"])
            until = now + ORG_KNOWN_SECONDS
        except (SlackApiError, LookupError, OSError) as exc:
            error = exc.response.get("error") if isinstance(exc, SlackApiError) else exc
            log.warning("users.info %s for its org failed (%s): external", user_id, error)
            org, until = None, now + ORG_FAILED_SECONDS
        with self._lock:
            self._known[key] = (org, until)
        return org


class _TeamOrgs:
    """`OrgCache` bound to one workspace (a `threads.OrgLookup`)."""

    def __init__(self, cache: OrgCache, team_id: str, enterprise_id: str | None) -> None:
        self._cache, self._team, self._org = cache, team_id, enterprise_id

    def org(self, user_id: str) -> str | None:
        return self._cache.org(self._team, self._org, user_id)


class Keeper:
    """Stores what message events deliver, for workspaces that keep transcripts."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        workspaces: Workspaces,
        orgs: OrgCache,
        now: Callable[[], datetime],
    ) -> None:
        self._sessions = sessions
        self._workspaces = workspaces
        self._orgs = orgs
        self._now = now

    def keeps(self, session: Session, team_id: str) -> bool:
        """Whether the workspace keeps transcripts, read in `session` (the storing transaction:
        no cache, so an admin turning keeping off stops it at once in every process)."""
        row = session.get(WorkspaceSettings, team_id)
        return self._workspaces.merge(row).keep_transcripts

    def content(
        self, team_id: str, enterprise_id: str | None, message: dict[str, Any], own: bool
    ) -> dict[str, Any]:
        """What is stored of `message`: its slim fields, or a stub when its author belongs to
        another organisation (Enterprise Grid: asked of Slack, a failure counts as external)."""
        kept = slim(message)
        if own:
            return kept
        org = enterprise_id or self._workspaces.enterprise_of(team_id)
        foreign = is_external(
            kept.get("user_team") or kept.get("team"),
            kept.get("user"),
            team_id=team_id,
            enterprise_id=org,
            names=self._orgs.for_team(team_id, enterprise_id),
        )
        return external_stub(kept) if foreign else kept

    def message(
        self, team_id: str, enterprise_id: str | None, event: dict[str, Any], own: bool
    ) -> bool:
        """Store a new message event (one transaction); False when it is not kept (no content,
        or the workspace does not keep transcripts). Raises when the database fails."""
        channel, ts = event.get("channel") or "", event.get("ts") or ""
        if (event.get("subtype") or "") not in KEPT_SUBTYPES or not channel or not ts:
            return False
        kept = self.content(team_id, enterprise_id, event, own)  # before the write lock
        with self._sessions.begin() as s:
            if not self.keeps(s, team_id):
                return False
            data.note_conversation(s, team_id, channel, event.get("channel_type"), ts_time(ts))
            data.store_messages(s, team_id, channel, thread_of(event), [kept], self._now())
        return True

    def changed(
        self,
        team_id: str,
        enterprise_id: str | None,
        channel: str,
        message: dict[str, Any],
        own: bool,
    ) -> bool:
        """An edited message (`message_changed`): replace what is stored; a message not stored
        yet is inserted when its conversation is kept. The bot's own answers keep the text
        recorded when they were finished (an edit event of an earlier state may come late).
        Returns whether anything changed."""
        ts = message.get("ts") or ""
        if not ts:
            return False
        now = self._now()
        kept = self.content(team_id, enterprise_id, message, own)  # before the write lock
        with self._sessions.begin() as s:
            stored = data.get_message(s, team_id, channel, ts)
            if stored is not None and own and stored.get(FINAL):
                return False
            if stored is None and not (
                self.keeps(s, team_id) and data.is_kept(s, team_id, channel)
            ):
                return False
            if stored is None:
                data.store_messages(s, team_id, channel, thread_of(message), [kept], now)
                return True
            return data.update_message(s, team_id, channel, ts, kept, now)

    def answer(
        self,
        team_id: str,
        channel: str,
        thread_ts: str,
        delivered: dict[str, str],
        bot_user_id: str,
        bot_id: str | None,
    ) -> None:
        """The bot finished an answer: store the final text of each message it is in (streamed
        and edited answers may send no event with their final text)."""
        if not delivered:
            return
        now = self._now()
        with self._sessions.begin() as s:
            if not self.keeps(s, team_id):
                return
            for ts, text in delivered.items():
                message = {"ts": ts, "thread_ts": thread_ts, "user": bot_user_id, "text": text}
                if bot_id:
                    message["bot_id"] = bot_id
                message[FINAL] = True
                data.put_message(s, team_id, channel, thread_ts, message, now)

    def joined(self, team_id: str, channel: str, at: datetime) -> bool:
        """The bot joined `channel` at `at`: keep its events from then on. Returns whether the
        workspace keeps transcripts and wants a backfill."""
        with self._sessions.begin() as s:
            row = s.get(WorkspaceSettings, team_id)
            eff = self._workspaces.merge(row)
            if not eff.keep_transcripts:
                return False
            data.joined_conversation(s, team_id, channel, None, at)
        return eff.backfill_on_join

    def left(self, team_id: str, channel: str) -> int:
        """The bot left `channel`: nothing of it is kept any more. Returns messages deleted."""
        with self._sessions.begin() as s:
            return data.forget_kept(s, team_id, channel)
