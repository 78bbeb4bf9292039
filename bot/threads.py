"""Reading a Slack thread (every page), and what rendering it needs from Slack (names, orgs)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy.orm import Session, sessionmaker

from bot.coverage import (
    CHANNEL,
    Interval,
    add_span,
    channel_gaps,
    forget_spans,
    missing,
    spans,
    thread_gaps,
    time_ts,
    ts_time,
)
from bot.delivery import impatient, retry_after
from bot.read_budget import HISTORY, REPLIES, ReadBudget, pages
from bot.store import data
from bot.store.models import ConversationState
from bot.transcript import (
    EXTERNAL_STUB,
    OWN_NAME,
    Part,
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
# What is kept of a message's files: what the transcript shows, and what reading one needs.
FILE_FIELDS = (
    "id",
    "name",
    "title",
    "filetype",
    "pretty_type",
    "mimetype",
    "size",
    "mode",
    "url_private_download",
)
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
    files = [{k: f[k] for k in FILE_FIELDS if f.get(k)} for f in message.get("files") or []]
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


class ReadsPending(Exception):  # noqa: N818 - not an error: the read goes on later
    """Slack's read budget for the workspace asks to wait longer than is worth holding a worker:
    what is kept so far is stored; read again at `until`. `eta` is the estimated seconds until
    the whole read is done, `kept`/`expected` the messages stored so far and in all (if known)."""

    def __init__(self, until: datetime, eta: float, kept: int, expected: int | None, why: str):
        super().__init__(f"reads wait until {until.isoformat()}")
        self.until = until
        self.eta = eta
        self.kept = kept
        self.expected = expected
        self.why = why


class ThreadReader:
    """Reads what a kept transcript may be missing, and only that, within the read budget.

    With keeping on, message events keep transcripts (bot/coverage.py says which windows they
    cover); without it, only windows read from Slack count, and a thread is read whole again
    after `full_every` (edits). Every request takes a slot of the workspace's read budget; a wait
    longer than `short_wait` seconds raises ReadsPending, keeping what was read.
    """

    def __init__(
        self,
        clients: SlackClients,
        sessions: sessionmaker[Session],
        *,
        full_every: timedelta,
        budget: ReadBudget,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
        short_wait: float = 5.0,
    ) -> None:
        self._clients = clients
        self._sessions = sessions
        self._full_every = full_every
        self.budget = budget
        self._sleep = sleep
        self._clock = clock
        self._short_wait = short_wait
        # What is stored of a message read from Slack (the keeper's policy: another
        # organisation's message is kept as a stub only); slim fields until one is set.
        self.shape: Callable[[str, str | None, dict[str, Any]], dict[str, Any]] = (
            lambda _team, _org, m: slim(m)
        )

    def _current(self) -> datetime:
        """The time now (a read's `now` may be the moment a waiting request was asked at)."""
        return datetime.fromtimestamp(self._clock(), UTC)

    def _client(self, team_id: str, enterprise_id: str | None) -> WebClient:
        """The workspace's client without waiting out 429s: the budget decides when to retry."""
        return impatient(self._clients.for_team(team_id, enterprise_id))

    def _slot(self, team_id: str, method: str, pending: Callable[[float], ReadsPending]) -> None:
        """Wait for a request slot: briefly in place, else raise `pending(wait)`."""
        while True:
            wait = self.budget.take(team_id, method)
            if wait <= 0:
                return
            if wait > self._short_wait:
                raise pending(wait)
            self._sleep(wait)

    def gaps(
        self, team_id: str, channel: str, thread_ts: str, now: datetime, *, keep: bool
    ) -> list[Interval]:
        """The windows of the thread that a read has to fill (empty: the stored copy is whole)."""
        with self._sessions.begin() as s:
            kept = s.get(ConversationState, (team_id, channel))
            if keep and kept is not None and kept.member_since is not None:
                return thread_gaps(s, team_id, channel, thread_ts, now)
            # Not kept from events: windows read count, and the thread is read whole again
            # after `full_every` (edits made meanwhile are seen only so).
            state = data.get_thread(s, team_id, channel, thread_ts)
            fresh_at = data.as_utc(state.full_read_at) if state else None
            if fresh_at is not None and now - fresh_at >= self._full_every:
                forget_spans(s, team_id, channel, thread_ts)  # read it whole again (edits)
                data.store_messages(s, team_id, channel, thread_ts, [], now, replace=True)
                return [(ts_time(thread_ts), now)]
            return missing((ts_time(thread_ts), now), spans(s, team_id, channel, thread_ts))

    def read(
        self,
        team_id: str,
        channel: str,
        thread_ts: str,
        now: datetime,
        enterprise_id: str | None = None,
        on_page: Callable[[int], None] | None = None,
        *,
        keep: bool = False,
    ) -> list[dict[str, Any]]:
        """The thread's current messages, parent first; raises ThreadReadError, or ReadsPending
        when the budget makes the rest wait. `on_page` hears of each page read from Slack."""
        with self._sessions() as s:
            named = data.get_message(s, team_id, channel, thread_ts)
        if named is not None and is_reply(named):
            return [named]  # `thread_ts` names a reply: the caller reads its parent's thread
        gaps = self.gaps(team_id, channel, thread_ts, now, keep=keep)
        with self._sessions() as s:
            if not gaps and data.get_message(s, team_id, channel, thread_ts) is None:
                gaps = [(ts_time(thread_ts), ts_time(thread_ts))]  # the parent is not kept
        client = self._client(team_id, enterprise_id) if gaps else None
        for start, end in gaps:
            assert client is not None
            if start > ts_time(thread_ts):  # a gap starts where a kept window ends: after it
                start += timedelta(microseconds=1)
            alone = self._fill(
                client, team_id, channel, thread_ts, (start, end), now, on_page, enterprise_id
            )
            if alone is not None:
                return [alone]
        with self._sessions.begin() as s:
            messages = data.load_messages(s, team_id, channel, thread_ts)
            state = data.get_or_create_thread(s, team_id, channel, thread_ts)
            if gaps and gaps[0][0] <= ts_time(thread_ts):
                state.full_read_at = now  # read from its start: whole as of now
        messages.sort(key=lambda m: ts_key(m["ts"]))
        return messages

    def _fill(
        self,
        client: WebClient,
        team_id: str,
        channel: str,
        thread_ts: str,
        gap: Interval,
        now: datetime,
        on_page: Callable[[int], None] | None,
        enterprise_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Read the thread's messages in `gap` page by page, oldest first; the window read so far
        is recorded as kept after every page, so a wait for the budget loses nothing. Returns
        the message alone when `thread_ts` turns out to name a reply."""
        start, end = gap
        read = 0
        first: dict[str, Any] = {"oldest": time_ts(start), "inclusive": True}
        if end < self._current() - OPEN_END:  # an open window has no upper bound: Slack's now is it
            first["latest"] = time_ts(end)
        cursor: str | None = None
        while True:
            tier = self.budget.tier(team_id, REPLIES)
            self._slot(
                team_id, REPLIES, lambda wait: self._pending(team_id, channel, thread_ts, wait)
            )
            # Within one run, Slack's cursor (the parent is not sent again); after a wait, the
            # next run starts after the last message kept.
            bounds = {**first, "cursor": cursor} if cursor else first
            try:
                resp = client.conversations_replies(
                    channel=channel, ts=thread_ts, limit=tier.page_limit, **bounds
                )
            except SlackApiError as exc:
                if exc.response.status_code == 429:
                    self.budget.throttled(team_id, REPLIES, retry_after(exc))
                    continue
                raise ThreadReadError(str(exc.response.get("error", "unknown_error"))) from None
            raw = resp.get("messages") or []
            if raw and is_reply(raw[0]) and raw[0].get("ts") == thread_ts:
                return slim(raw[0])
            more = bool(resp.get("has_more"))
            if more:
                self.budget.page_cut(team_id, REPLIES, asked=tier.page_limit, got=len(raw))
            page = [self.shape(team_id, enterprise_id, m) for m in raw]
            newest = max((ts_time(m["ts"]) for m in page), default=start)
            # A window ending now is read up to its newest message only: a message posted
            # during the read, or a clock a little off Slack's, must not fall inside it.
            reached = end if not more and end < self._current() - OPEN_END else max(newest, start)
            with self._sessions.begin() as s:
                data.put_messages(s, team_id, channel, thread_ts, page, now)
                add_span(s, team_id, channel, thread_ts, (start, reached))
                parent = next((m for m in raw if m.get("ts") == thread_ts), None)
                if parent is not None and parent.get("reply_count") is not None:
                    state = data.get_or_create_thread(s, team_id, channel, thread_ts)
                    state.messages_seen = int(parent["reply_count"]) + 1
            read += len(page)
            if on_page is not None:
                on_page(read)
            if not more:
                return None
            start = reached + timedelta(microseconds=1)
            cursor = (resp.get("response_metadata") or {}).get("next_cursor") or None
            if cursor is None:
                first = {**first, "oldest": time_ts(start)}

    def _pending(self, team_id: str, channel: str, thread_ts: str, wait: float) -> ReadsPending:
        """What a wait of `wait` seconds means for the rest of this thread's read."""
        tier = self.budget.tier(team_id, REPLIES)
        with self._sessions() as s:
            kept = len(data.load_messages(s, team_id, channel, thread_ts))
            state = data.get_thread(s, team_id, channel, thread_ts)
            expected = state.messages_seen if state is not None and state.messages_seen else None
        left = pages(max(1, (expected or 0) - kept), tier)
        eta = wait + (left - 1) * tier.interval
        until = datetime.fromtimestamp(self._clock() + wait, UTC)
        return ReadsPending(until, eta, kept, expected, tier.describe())

    def read_channel(
        self,
        team_id: str,
        channel: str,
        window: Interval,
        now: datetime,
        enterprise_id: str | None = None,
        *,
        keep: bool = False,
        count: int | None = None,
    ) -> list[dict[str, Any]]:
        """The channel's top-level messages in `window` (the last `count` of them, if given),
        each with `reply_count` (Slack's, or the kept replies'), reading conversations.history
        only where the kept transcript may miss something, newest first."""
        with self._sessions.begin() as s:
            kept = s.get(ConversationState, (team_id, channel))
            if keep and kept is not None and kept.member_since is not None:
                gaps = channel_gaps(s, team_id, channel, window, now)
            else:  # not kept from events: only windows read before count
                gaps = missing(window, spans(s, team_id, channel, CHANNEL))
        client = self._client(team_id, enterprise_id) if gaps else None
        # Newest first, but the open end (up to now) last once something is kept: a read that
        # waited goes on where it stopped instead of spending each slot on the newest minute.
        closed = [g for g in gaps if g[1] < self._current() - OPEN_END]
        order = [*reversed(closed), *(g for g in gaps if g not in closed)]
        for gap in order:
            assert client is not None
            if gap[0] > window[0]:  # it starts where a kept window ends: after it
                gap = (gap[0] + timedelta(microseconds=1), gap[1])
            if count is not None and len(self._top(team_id, channel, (gap[1], window[1]))) >= count:
                break
            self._fill_history(client, team_id, channel, gap, now, window[1], count)
        # A window ending now takes what Slack dated a moment later too (clocks differ).
        open_end = window[1] >= self._current() - OPEN_END
        top = self._top(team_id, channel, (window[0], window[1] + OPEN_END) if open_end else window)
        return top[-count:] if count is not None else top

    def _top(self, team_id: str, channel: str, window: Interval) -> list[dict[str, Any]]:
        with self._sessions() as s:
            top = data.load_top_level(s, team_id, channel, time_ts(window[0]), time_ts(window[1]))
            counts = data.reply_counts(s, team_id, channel, [m["ts"] for m in top])
        for m in top:
            m["reply_count"] = max(int(m.get("reply_count") or 0), counts.get(m["ts"], 0))
        top.sort(key=lambda m: ts_key(m["ts"]))
        return top

    def _fill_history(
        self,
        client: WebClient,
        team_id: str,
        channel: str,
        gap: Interval,
        now: datetime,
        newest: datetime,
        count: int | None,
    ) -> None:
        """Read the channel's top-level messages in `gap`, newest first, page by page; after
        each page the window from its oldest message to the gap's end is kept. With `count`,
        stop once that many are kept between the page and `newest`."""
        start, end = gap
        top: datetime | None = None  # where the kept window ends (see _fill)
        while True:
            tier = self.budget.tier(team_id, HISTORY)
            self._slot(team_id, HISTORY, lambda wait: self._history_pending(team_id, wait))
            bounds = {"oldest": time_ts(start), "inclusive": True}
            if top is not None or end < self._current() - OPEN_END:
                bounds["latest"] = time_ts(end)
            try:
                resp = client.conversations_history(
                    channel=channel, limit=tier.page_limit, **bounds
                )
            except SlackApiError as exc:
                if exc.response.status_code == 429:
                    self.budget.throttled(team_id, HISTORY, retry_after(exc))
                    continue
                raise ThreadReadError(str(exc.response.get("error", "unknown_error"))) from None
            raw = [
                m
                for m in resp.get("messages") or []
                if m.get("ts") and m.get("subtype") not in SKIPPED_SUBTYPES and not is_reply(m)
            ]
            more = bool(resp.get("has_more"))
            if more:
                self.budget.page_cut(team_id, HISTORY, asked=tier.page_limit, got=len(raw))
            oldest = min((ts_time(m["ts"]) for m in raw), default=end)
            reached = min(oldest, end) if more else start
            if top is None:
                newest = max((ts_time(m["ts"]) for m in raw), default=start)
                top = end if end < self._current() - OPEN_END else newest
            with self._sessions.begin() as s:
                for m in raw:
                    body = self.shape(team_id, None, m)
                    if m.get("reply_count"):
                        body["reply_count"] = int(m["reply_count"])
                    data.put_messages(s, team_id, channel, m["ts"], [body], now)
                if top >= reached:
                    add_span(s, team_id, channel, CHANNEL, (reached, top))
            if not more or reached <= start:
                return
            if count is not None and len(self._top(team_id, channel, (reached, newest))) >= count:
                return
            end = reached - timedelta(microseconds=1)

    def _history_pending(self, team_id: str, wait: float) -> ReadsPending:
        tier = self.budget.tier(team_id, HISTORY)
        until = datetime.fromtimestamp(self._clock() + wait, UTC)
        return ReadsPending(until, wait, 0, None, tier.describe())


SKIPPED_SUBTYPES = ("channel_join", "channel_leave")
# A window that ends less than this before now is open: kept only up to its newest message.
OPEN_END = timedelta(seconds=10)


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
    conversation: bool = False,
    files: Callable[[list[dict[str, Any]]], Mapping[str, tuple[Part, ...]]] | None = None,
) -> list[Turn]:
    """Resolve what the transcript needs from Slack, then render it (`transcript.Renderer`;
    `conversation`: the bot's DM, its own messages as bare answers; `files`: given the messages
    whose files the model may see (none of another organisation's), what they hold by file id,
    `bot.files`).

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
        conversation=conversation,
        files=files([m for m in messages if rendered(m) and m["ts"] not in external])
        if files
        else {},
    ).render(messages)


def clean_request(text: str, names: NameResolver, bot_user_id: str) -> str:
    """The mention's text without the bot's own mention, as plain text."""
    text = re.sub(rf"<@{re.escape(bot_user_id)}(\|[^>]*)?>", "", text)
    return clean(text, names.names(mentioned_users(text, unlabelled=True))).strip()
