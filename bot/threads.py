"""Reading a Slack thread (every page), and what rendering it needs from Slack (names, orgs)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.orm import Session, sessionmaker

from bot.store import data
from bot.transcript import (
    EXTERNAL_STUB,
    OWN_NAME,
    Renderer,
    Turn,
    clean,
    is_own,
    mentioned_users,
    rendered,
)

if TYPE_CHECKING:
    from bot.installations import SlackClients

log = logging.getLogger(__name__)

PAGE_LIMIT = 200
NAME_TTL = timedelta(days=7)


class ThreadReadError(Exception):
    """Slack refused to give the thread; `error` is Slack's error code."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def slim(message: dict[str, Any]) -> dict[str, Any]:
    """The fields of a Slack message that the transcript uses (what is stored)."""
    out = {
        k: message[k]
        for k in (
            "ts",
            "thread_ts",
            "user",
            "text",
            "bot_id",
            "subtype",
            "username",
            "team",
            "user_team",
        )
        if message.get(k) is not None
    }
    name = (message.get("bot_profile") or {}).get("name")
    if name:
        out["bot_profile"] = {"name": name}
    files = [
        {k: f[k] for k in ("name", "title", "filetype", "pretty_type") if f.get(k)}
        for f in message.get("files") or []
    ]
    if files:
        out["files"] = files
    return out


def fetch_thread(
    client: WebClient,
    channel: str,
    thread_ts: str,
    *,
    oldest: str | None = None,
    on_page: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every message of the thread (newer than `oldest`, parent always first), all pages;
    `on_page` hears how many messages have arrived after each page."""
    messages: list[dict[str, Any]] = []
    seen: set[str] = set()
    cursor: str | None = None
    while True:
        kwargs: dict[str, Any] = {"channel": channel, "ts": thread_ts, "limit": PAGE_LIMIT}
        if cursor:
            kwargs["cursor"] = cursor
        if oldest:
            kwargs["oldest"] = oldest
        try:
            resp = client.conversations_replies(**kwargs)
        except SlackApiError as exc:
            raise ThreadReadError(str(exc.response.get("error", "unknown_error"))) from None
        for msg in resp.get("messages") or []:
            ts = msg.get("ts")
            if ts and ts not in seen:
                seen.add(ts)
                messages.append(msg)
        cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
        if on_page is not None:
            on_page(len(messages))
        if not cursor:
            break
    messages.sort(key=lambda m: ts_key(m["ts"]))
    return messages


def thread_of(message: dict[str, Any]) -> str:
    """The ts of the thread `message` belongs to: its parent's, or its own when it starts one
    or stands alone."""
    return message.get("thread_ts") or message.get("ts", "")


def is_reply(message: dict[str, Any]) -> bool:
    """Whether `message` is a reply in a thread (not the thread's parent, not a lone message)."""
    return thread_of(message) != message.get("ts", "")


def read_whole_thread(
    read: Callable[[str], list[dict[str, Any]]], ts: str
) -> tuple[str, list[dict[str, Any]]]:
    """(thread ts, messages) of the thread the message `ts` belongs to, with `read` (ts →
    messages). A link may name a reply, and conversations.replies answers a reply's ts with
    just that reply: then read its parent's whole thread."""
    messages = read(ts)
    if messages and is_reply(messages[0]):
        ts = thread_of(messages[0])
        messages = read(ts)
    return ts, messages


def is_private(info: dict[str, Any] | None) -> bool:
    """Whether a conversation (its conversations.info object; None when the bot cannot see it)
    is private. Slack's docs: `is_private` marks private channels (`is_group` too, for those
    created before March 2021: check both), `is_im` and `is_mpim` direct messages."""
    if info is None:
        return True
    return bool(
        info.get("is_private") or info.get("is_group") or info.get("is_im") or info.get("is_mpim")
    )


def is_member(client: WebClient, channel: str, user: str) -> bool:
    """Whether `user` is in `channel` (every page of conversations.members); False on errors."""
    cursor = None
    while True:
        try:
            resp = client.conversations_members(channel=channel, limit=1000, cursor=cursor)
        except SlackApiError as exc:
            log.info("conversations.members %s: %s", channel, exc.response.get("error"))
            return False
        if user in (resp.get("members") or []):
            return True
        cursor = (resp.get("response_metadata") or {}).get("next_cursor")
        if not cursor:
            return False


def ts_key(ts: str) -> tuple[int, int]:
    """Slack ts as a sortable pair (string order is wrong across digit counts)."""
    sec, _, frac = ts.partition(".")
    return int(sec), int(frac or 0)


class ThreadReader:
    """Reads threads incrementally: the first read fetches everything, later ones only what is
    new (`oldest=`). Edits and deletions arrive as events (see listeners/message_events.py);
    a full re-read after `full_every` catches anything those missed."""

    def __init__(
        self, clients: SlackClients, sessions: sessionmaker[Session], *, full_every: timedelta
    ) -> None:
        self._clients = clients
        self._sessions = sessions
        self._full_every = full_every

    def read(
        self,
        team_id: str,
        channel: str,
        thread_ts: str,
        now: datetime,
        enterprise_id: str | None = None,
        on_page: Callable[[int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """The thread's current messages, parent first; raises ThreadReadError. `on_page` hears
        of each page read from Slack (long reads: keep a status line alive)."""
        client = self._clients.for_team(team_id, enterprise_id)
        with self._sessions() as s:
            state = data.get_thread(s, team_id, channel, thread_ts)
            fresh_at = data.as_utc(state.full_read_at) if state else None
            stored = (
                data.load_messages(s, team_id, channel, thread_ts)
                if fresh_at is not None and now - fresh_at < self._full_every
                else []
            )
        if stored:
            last = max(stored, key=lambda m: ts_key(m["ts"]))["ts"]
            fetched = fetch_thread(client, channel, thread_ts, oldest=last, on_page=on_page)
            new = [slim(m) for m in fetched]
            known = {m["ts"] for m in stored}
            added = [m for m in new if m["ts"] not in known]
            if added:
                with self._sessions.begin() as s:
                    data.store_messages(s, team_id, channel, thread_ts, added, now)
            messages = stored + added
            messages.sort(key=lambda m: ts_key(m["ts"]))
            return messages
        messages = [slim(m) for m in fetch_thread(client, channel, thread_ts, on_page=on_page)]
        if messages and is_reply(messages[0]):
            return messages  # `thread_ts` named a reply: Slack returned just it; keep nothing
        with self._sessions.begin() as s:
            data.store_messages(s, team_id, channel, thread_ts, messages, now, replace=True)
            state = data.get_or_create_thread(s, team_id, channel, thread_ts)
            state.full_read_at = now
        return messages


class NameResolver:
    """Display names of users, from the database or `users.info` (once per user per week)."""

    def __init__(
        self, client: Callable[[], WebClient], sessions: sessionmaker[Session], team_id: str
    ) -> None:
        self._client = client
        self._sessions = sessions
        self._team_id = team_id
        self._names: dict[str, str] = {}
        self._orgs: dict[str, str | None] = {}

    def preload(self, user_ids: set[str]) -> None:
        """Resolve many users with one query and as few API calls as needed."""
        missing = {u for u in user_ids if u not in self._names}
        if not missing:
            return
        now = datetime.now(UTC)
        with self._sessions() as s:
            known = data.get_user_names(s, self._team_id, missing, fresh_after=now - NAME_TTL)
        self._names.update(known)
        for user_id in sorted(missing - known.keys()):
            self._names[user_id] = self._fetch(user_id, now)

    def names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """The display names of `user_ids`, looked up in that order."""
        return {u: self.name(u) for u in user_ids}

    def alias(self, user_id: str, name: str) -> None:
        """Use `name` for `user_id` without asking Slack (the bot itself)."""
        self._names[user_id] = name

    def name(self, user_id: str) -> str:
        """The user's display name (falls back to the id)."""
        if user_id not in self._names:
            self.preload({user_id})
        return self._names[user_id]

    def org(self, user_id: str) -> str | None:
        """The Enterprise Grid org the user belongs to (None: none, or unknown). Asked of Slack
        once per user per process; a failure counts as unknown, so a transcript stays stable."""
        if user_id not in self._orgs:
            try:
                user = self._client().users_info(user=user_id)["user"]
            except (SlackApiError, LookupError) as exc:
                error = exc.response.get("error") if isinstance(exc, SlackApiError) else exc
                log.warning("users.info %s for its org failed: %s", user_id, error)
                user = {}
            self._orgs[user_id] = org_of(user)
        return self._orgs[user_id]

    def _fetch(self, user_id: str, now: datetime) -> str:
        try:
            user = self._client().users_info(user=user_id)["user"]
        except SlackApiError as exc:
            log.warning("users.info %s failed: %s", user_id, exc.response.get("error"))
            return user_id
        self._orgs[user_id] = org_of(user)
        profile = user.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or user.get("real_name")
            or user.get("name")
            or user_id
        )
        with self._sessions.begin() as s:
            data.save_user_name(s, self._team_id, user_id, name, bool(user.get("is_bot")), now)
        return name


class OrgLookup(Protocol):
    """Who tells which Enterprise Grid org a user belongs to (None: none, or unknown)."""

    def org(self, user_id: str) -> str | None: ...


def external_stub(message: dict[str, Any]) -> dict[str, Any]:
    """What is stored of another organisation's message: where it sits, never what it says."""
    out = {k: message[k] for k in ("ts", "thread_ts", "team", "user_team") if message.get(k)}
    out[EXTERNAL_STUB] = True
    return out


def org_of(user: dict[str, Any]) -> str | None:
    """The Enterprise Grid org of a users.info user (None outside Grid)."""
    return (user.get("enterprise_user") or {}).get("enterprise_id")


def is_external(
    author_team: str | None,
    user_id: str | None,
    *,
    team_id: str | None,
    enterprise_id: str | None,
    names: OrgLookup,
) -> bool:
    """Slack Connect: True when an author of team `author_team` belongs to another organisation
    than the workspace `team_id` and its Enterprise Grid org `enterprise_id` (same-org authors
    from other workspaces are recognised by `user_team` being the org, or by users.info)."""
    if not team_id or not author_team or author_team == team_id:
        return False
    if enterprise_id and author_team == enterprise_id:
        return False
    return not (enterprise_id and user_id and names.org(user_id) == enterprise_id)


def render_thread(
    messages: list[dict[str, Any]],
    names: NameResolver,
    *,
    bot_user_id: str,
    bot_id: str | None,
    recap: bool = False,
    team_id: str | None = None,
    enterprise_id: str | None = None,
) -> list[Turn]:
    """Resolve what the transcript needs from Slack, then render it (`transcript.Renderer`).

    Slack Connect: a message whose author belongs to another organisation than `team_id` (and
    its Enterprise Grid org `enterprise_id`, when there is one) is shown only as a placeholder.
    """

    def foreign(m: dict[str, Any]) -> bool:
        if m.get(EXTERNAL_STUB):
            return True
        return is_external(
            m.get("user_team") or m.get("team"),
            m.get("user"),
            team_id=team_id,
            enterprise_id=enterprise_id,
            names=names,
        )

    users = {
        m["user"] for m in messages if m.get("user") and not m.get("bot_id") and not foreign(m)
    }
    for m in messages:
        users.update(mentioned_users(m.get("text") or ""))
    names.alias(bot_user_id, OWN_NAME)
    names.preload(users)
    external = {
        m["ts"]
        for m in messages
        if rendered(m) and not is_own(m, bot_user_id, bot_id) and foreign(m)
    }
    return Renderer(
        names=names.names(users),
        is_external=lambda m: m["ts"] in external,
        bot_user_id=bot_user_id,
        bot_id=bot_id,
        recap=recap,
    ).render(messages)


def clean_request(text: str, names: NameResolver, bot_user_id: str) -> str:
    """The mention's text without the bot's own mention, as plain text."""
    text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", "", text)
    return clean(text, names.names(mentioned_users(text, unlabelled=True))).strip()
