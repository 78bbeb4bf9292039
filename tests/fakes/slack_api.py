"""A local HTTP server that plays Slack's Web API for tests.

A real ``slack_sdk.WebClient(token=..., base_url=fake.url)`` works against it: every method
accepts GET query parameters, POST form bodies (urlencoded or multipart) and POST JSON, and
checks ``Authorization: Bearer <bot_token>`` (or a ``token`` parameter) like Slack does.

Standard library only. All state sits behind one lock; the server runs on 127.0.0.1, port 0,
in a daemon thread.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import mimetypes
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP as HTTP_POLICY
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

MAX_LIMIT = 1000
MAX_TEXT_CHARS = 40_000
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3_000
MAX_SECTION_FIELDS = 10
MAX_FIELD_TEXT = 2_000
MAX_CONTEXT_ELEMENTS = 10
MAX_HEADER_TEXT = 150
MAX_MARKDOWN_TOTAL = 12_000
MAX_BLOCK_ID = 255
# Block Kit's context_actions block: "An array of feedback buttons elements and icon button
# elements. Maximum number of items is 5." A feedback_buttons element has a positive_button and a
# negative_button (both required), each with `text` (plain_text only, at most 75 characters),
# `value` (at most 2000 characters) and an optional `accessibility_label` (at most 75); its
# `action_id` is optional, at most 255 characters. Buttons: text plain_text at most 75,
# value at most 2000, action_id at most 255 and unique in its block.
MAX_CONTEXT_ACTIONS = 5
CONTEXT_ACTION_ELEMENTS = frozenset({"feedback_buttons", "icon_button"})
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2000
MAX_ACTION_ID = 255
MAX_ACTIONS_ELEMENTS = 25
RESPONSE_URL_MAX_USES = 5
RESPONSE_URL_TTL_SECONDS = 30 * 60
STATUS_TTL_SECONDS = 120  # a status line vanishes after two minutes without a message
MAX_LOADING_MESSAGES = 10  # assistant.threads.setStatus: at most 10 loading_messages…
MAX_LOADING_CHARS = 50  # …of at most 50 characters each
STREAM_LIFETIME_SECONDS = 300.0  # reports: Slack closes a stream after about five minutes

# Read tiers of conversations.replies / conversations.history (set_read_tier). Slack's method
# pages: apps commercially distributed outside the Marketplace get "1 request per minute" and
# "the maximum and default values for the limit parameter have both been reduced to 15
# objects"; Marketplace and internal apps keep Tier 3 ("50+ per minute"). Rate limits apply
# "per API method per workspace/team per app" (Rate limits page).
READ_METHODS = ("conversations.replies", "conversations.history")
READ_WINDOW_SECONDS = 60.0
READ_TIERS: dict[str, int | None] = {"unlimited": None, "tier3": 50, "limited": 1}
LIMITED_PAGE_MAX = 15

KNOWN_BLOCK_TYPES = frozenset(
    {
        "actions",
        "context",
        "context_actions",
        "divider",
        "file",
        "header",
        "image",
        "input",
        "markdown",
        "rich_text",
        "section",
        "table",
        "video",
    }
)


class SlackError(Exception):
    """An API-level error: answered as ``{"ok": false, "error": ...}``."""

    def __init__(self, error: str, *, status: int = 200, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.extra = extra


@dataclass
class _Channel:
    id: str
    name: str
    is_private: bool = False
    is_im: bool = False
    is_archived: bool = False
    members: set[str] = field(default_factory=set)
    is_mpim: bool = False
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _User:
    id: str
    real_name: str
    display_name: str = ""
    is_bot: bool = False
    deleted: bool = False
    is_admin: bool = False
    is_owner: bool = False
    team_id: str | None = None
    enterprise_id: str | None = None


@dataclass
class _Failure:
    error: str
    status: int
    retry_after: int | None
    remaining: int


@dataclass
class _ResponseUrl:
    minted_at: float
    uses: int = 0


def ts_to_us(ts: str) -> int:
    """Parse a Slack ts ("1700000000.000100") into integer microseconds."""
    text = str(ts).strip()
    whole, _, frac = text.partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise ValueError(f"not a Slack ts: {ts!r}")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def us_to_ts(us: int) -> str:
    whole, frac = divmod(us, 1_000_000)
    return f"{whole}.{frac:06d}"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes"}
    return bool(value)


def _encode_cursor(us: int) -> str:
    return base64.b64encode(f"next_ts:{us}".encode()).decode("ascii")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.b64decode(cursor.encode("ascii"), validate=True).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "next_ts":
            raise ValueError(raw)
        return int(value)
    except (ValueError, UnicodeError) as exc:
        raise SlackError("invalid_cursor") from exc


def _text_len(obj: Any) -> int:
    if isinstance(obj, dict):
        return len(str(obj.get("text", "")))
    if isinstance(obj, str):
        return len(obj)
    return 0


def _plain_text_errors(text: Any, where: str, limit: int) -> list[str]:
    """A `text` object that must be plain_text of at most `limit` characters."""
    if not isinstance(text, dict) or not isinstance(text.get("text"), str):
        return [f"missing required field: text [json-pointer:{where}]"]
    if text.get("type") != "plain_text":
        return [f"must be a plain_text object [json-pointer:{where}/type]"]
    if not text["text"] or len(text["text"]) > limit:
        return [f"must be between 1 and {limit} characters [json-pointer:{where}/text]"]
    return []


def _action_id_errors(element: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    action_id = element.get("action_id")
    if action_id is None:
        return []
    if not isinstance(action_id, str) or len(action_id) > MAX_ACTION_ID:
        return [
            f"must be less than {MAX_ACTION_ID + 1} characters [json-pointer:{where}/action_id]"
        ]
    if action_id in seen:
        return [f"duplicate action_id [json-pointer:{where}/action_id]"]
    seen.add(action_id)
    return []


def _value_errors(value: Any, where: str, *, required: bool) -> list[str]:
    if value is None:
        return [f"missing required field: value [json-pointer:{where}]"] if required else []
    if not isinstance(value, str) or len(value) > MAX_BUTTON_VALUE:
        return [f"must be less than {MAX_BUTTON_VALUE + 1} characters [json-pointer:{where}/value]"]
    return []


def _feedback_buttons_errors(element: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    for side in ("positive_button", "negative_button"):
        button = element.get(side)
        at = f"{where}/{side}"
        if not isinstance(button, dict):
            errors.append(f"missing required field: {side} [json-pointer:{where}]")
            continue
        errors += _plain_text_errors(button.get("text"), f"{at}/text", MAX_BUTTON_TEXT)
        errors += _value_errors(button.get("value"), at, required=True)
        label = button.get("accessibility_label")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_BUTTON_TEXT):
            errors.append(
                f"must be less than {MAX_BUTTON_TEXT + 1} characters "
                f"[json-pointer:{at}/accessibility_label]"
            )
    return errors


def _context_actions_errors(block: dict[str, Any], where: str) -> list[str]:
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [f"must provide elements [json-pointer:{where}/elements]"]
    if len(elements) > MAX_CONTEXT_ACTIONS:
        return [
            f"must be less than {MAX_CONTEXT_ACTIONS + 1} items [json-pointer:{where}/elements]"
        ]
    errors: list[str] = []
    seen: set[str] = set()
    for j, element in enumerate(elements):
        at = f"{where}/elements/{j}"
        kind = element.get("type") if isinstance(element, dict) else None
        if kind not in CONTEXT_ACTION_ELEMENTS:
            errors.append(f"unsupported type: {kind} [json-pointer:{at}/type]")
            continue
        errors += _action_id_errors(element, at, seen)
        if kind == "feedback_buttons":
            errors += _feedback_buttons_errors(element, at)
        else:  # icon_button
            errors += _plain_text_errors(element.get("text"), f"{at}/text", MAX_BUTTON_TEXT)
            if not element.get("icon"):
                errors.append(f"missing required field: icon [json-pointer:{at}]")
    return errors


def _actions_errors(block: dict[str, Any], where: str) -> list[str]:
    """An actions block: its buttons are checked; other interactive elements are let through."""
    elements = block.get("elements")
    if not isinstance(elements, list) or not elements:
        return [f"must provide elements [json-pointer:{where}/elements]"]
    if len(elements) > MAX_ACTIONS_ELEMENTS:
        return [
            f"must be less than {MAX_ACTIONS_ELEMENTS + 1} items [json-pointer:{where}/elements]"
        ]
    errors: list[str] = []
    seen: set[str] = set()
    for j, element in enumerate(elements):
        at = f"{where}/elements/{j}"
        if not isinstance(element, dict) or not isinstance(element.get("type"), str):
            errors.append(f"missing required field: type [json-pointer:{at}]")
            continue
        errors += _action_id_errors(element, at, seen)
        if element["type"] == "button":
            errors += _plain_text_errors(element.get("text"), f"{at}/text", MAX_BUTTON_TEXT)
            errors += _value_errors(element.get("value"), at, required=False)
    return errors


def validate_blocks(blocks: Any, refused: frozenset[str] = frozenset()) -> list[str]:
    """Return Slack-style error strings for blocks Slack would reject (empty if fine).
    `refused`: block types this workspace's Slack does not take (answered like unknown ones)."""
    if not isinstance(blocks, list):
        return ["must be an array [json-pointer:/blocks]"]
    errors: list[str] = []
    if len(blocks) > MAX_BLOCKS:
        errors.append(f"no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]")
    markdown_total = 0
    seen_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"/blocks/{i}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            errors.append(f"missing required field: type [json-pointer:{where}]")
            continue
        kind = block["type"]
        if kind not in KNOWN_BLOCK_TYPES or kind in refused:
            errors.append(f"unsupported type: {kind} [json-pointer:{where}/type]")
            continue
        block_id = block.get("block_id")
        if block_id is not None:
            if len(str(block_id)) > MAX_BLOCK_ID:
                errors.append(
                    f"must be less than {MAX_BLOCK_ID + 1} characters "
                    f"[json-pointer:{where}/block_id]"
                )
            if block_id in seen_ids:
                errors.append(f"duplicate block_id [json-pointer:{where}/block_id]")
            seen_ids.add(str(block_id))
        if kind == "section":
            text = block.get("text")
            fields = block.get("fields")
            if text is None and not fields:
                errors.append(f"must provide either text or fields [json-pointer:{where}]")
            if text is not None and _text_len(text) > MAX_SECTION_TEXT:
                errors.append(
                    f"must be less than {MAX_SECTION_TEXT + 1} characters "
                    f"[json-pointer:{where}/text/text]"
                )
            if fields is not None:
                if not isinstance(fields, list) or len(fields) > MAX_SECTION_FIELDS:
                    errors.append(
                        f"must be less than {MAX_SECTION_FIELDS + 1} items "
                        f"[json-pointer:{where}/fields]"
                    )
                else:
                    for j, item in enumerate(fields):
                        if _text_len(item) > MAX_FIELD_TEXT:
                            errors.append(
                                f"must be less than {MAX_FIELD_TEXT + 1} characters "
                                f"[json-pointer:{where}/fields/{j}/text]"
                            )
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements:
                errors.append(f"must provide elements [json-pointer:{where}/elements]")
            elif len(elements) > MAX_CONTEXT_ELEMENTS:
                errors.append(
                    f"must be less than {MAX_CONTEXT_ELEMENTS + 1} items "
                    f"[json-pointer:{where}/elements]"
                )
        elif kind == "header":
            if _text_len(block.get("text")) > MAX_HEADER_TEXT:
                errors.append(
                    f"must be less than {MAX_HEADER_TEXT + 1} characters "
                    f"[json-pointer:{where}/text/text]"
                )
        elif kind == "markdown":
            markdown_total += len(str(block.get("text", "")))
        elif kind == "context_actions":
            errors.extend(_context_actions_errors(block, where))
        elif kind == "actions":
            errors.extend(_actions_errors(block, where))
    if markdown_total > MAX_MARKDOWN_TOTAL:
        errors.append(
            f"markdown blocks may hold at most {MAX_MARKDOWN_TOTAL} characters "
            "[json-pointer:/blocks]"
        )
    return errors


def _normalize_file(index: int, given: dict[str, Any], base: str, team_id: str) -> dict[str, Any]:
    """A file object as Slack shows it in a message; its content (`content`, bytes) is served
    at `url_private_download` (see `FakeSlack.files_read`)."""
    out = copy.deepcopy({k: v for k, v in given.items() if k != "content"})
    name = str(out.get("name") or out.get("title") or f"file{index}.txt")
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else "binary"
    out.setdefault("id", f"F{index:08d}")
    out.setdefault("name", name)
    out.setdefault("title", name)
    out.setdefault("filetype", ext)
    out.setdefault("pretty_type", str(out["filetype"]).upper())
    out.setdefault("mimetype", mimetypes.guess_type(name)[0] or "application/octet-stream")
    out.setdefault("size", len(given.get("content") or b""))
    out.setdefault("url_private", f"{base}/files-pri/{team_id}-{out['id']}/{name}")
    out.setdefault(
        "url_private_download", f"{base}/files-pri/{team_id}-{out['id']}/download/{name}"
    )
    return out


# What Slack serves for a file URL to a request without a token that may read files (no
# Authorization header, a bad token, or a token without files:read): its sign-in page, status 200.
LOGIN_PAGE = (
    b'<!DOCTYPE html>\n<html lang="en-US"><head><title>Slack</title></head>'
    b'<body><form action="/signin">Sign in to your workspace</form></body></html>\n'
)


class FakeSlack:
    """A fake Slack Web API. See module docstring."""

    def __init__(
        self,
        *,
        team_id: str = "T0001",
        team_domain: str = "acme",
        bot_token: str = "xoxb-test",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        start_time: float = 1_700_000_000.0,
        stream_lifetime: float = STREAM_LIFETIME_SECONDS,
    ) -> None:
        self.team_id = team_id
        self.team_domain = team_domain
        self.bot_token = bot_token
        self.workspaces: dict[str, str] = {}  # more installed workspaces: token -> team id
        self.org_tokens: dict[str, str] = {}  # org-wide (Enterprise Grid) tokens -> org id
        self.channel_teams: dict[str, str] = {}  # channel -> workspace its messages come from
        self.streams: dict[str, dict[str, Any]] = {}  # ts -> streamed message state
        # Block types refused like unknown ones (invalid_blocks), e.g. {"context_actions"} for
        # a Slack that does not take the feedback buttons element (fallback paths).
        self.refused_blocks: frozenset[str] = frozenset()
        self.streaming_enabled = True  # False: chat.startStream is refused (fallback paths)
        self.stream_refusal = "channel_type_not_supported"  # the error it is refused with
        # Seconds (of `now`) after which Slack closes a stream on its own: later append/stop
        # calls answer message_not_in_streaming_state.
        self.stream_lifetime = stream_lifetime
        # The requester presses stop after this many appendStream calls to a stream: later
        # append/stop calls answer stopped_by_user.
        self.stop_after_appends: int | None = None
        # Simulated seconds that pass during every API call (long reads and streams, no sleeps).
        self.seconds_per_call = 0.0
        # Status lines that vanished by Slack's two-minute timeout before being replaced.
        self.status_lapses: list[dict[str, Any]] = []
        self._status_set: dict[tuple[str, str], float] = {}  # (channel, thread) -> set at
        self.client_id = "1111.2222"
        self.client_secret = "fake-client-secret"
        self._oauth_codes: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, str] = {}
        self._rotations = 0
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.now: float = start_time
        self.page_shortfall: bool = False
        # Extra knob (off by default): repeat the thread parent first on every replies page.
        self.parent_on_every_page: bool = False

        self.calls: list[tuple[str, dict[str, Any]]] = []
        # One entry per successful conversations.replies/history call: method, channel,
        # thread_ts (None for history), the message ts returned, and {ts: edited ts} of those
        # that were edited (so a benchmark can tell a re-read of unchanged messages).
        self.reads: list[dict[str, Any]] = []
        self.posts: list[dict[str, Any]] = []
        self.ephemerals: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []
        self.modals: list[dict[str, Any]] = []
        self._used_triggers: set[str] = set()
        self.reactions: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        # assistant.threads.setSuggestedPrompts: what the Messages tab of each DM shows (an
        # agent_view app's prompts live at the top of the tab, not in a thread), and every
        # accepted call (`_dropped`: sent with thread_ts, which Slack ignores for agent apps).
        self.agent_view = True  # False: the legacy assistant_view (prompts set per thread)
        self.suggested_prompts: dict[str, dict[str, Any]] = {}
        self.prompt_calls: list[dict[str, Any]] = []
        # assistant.threads.setTitle: the title of each (channel, thread_ts), and every call.
        self.titles: dict[tuple[str, str], str] = {}
        self.title_calls: list[dict[str, Any]] = []
        # chat.postMessage calls whose thread_ts was not a parent message of that channel.
        self.misthreaded: list[dict[str, Any]] = []
        # Read tiers (set_read_tier): None is every workspace without a tier of its own.
        self._read_tiers: dict[str | None, str] = {None: "unlimited"}
        # One entry per conversations.replies/history request that passed authentication,
        # allowed or throttled: method, team, channel, at (fake now), throttled, returned.
        self.read_log: list[dict[str, Any]] = []

        self._lock = threading.RLock()
        self.activity = threading.Condition(self._lock)  # notified after every API call
        self._channels: dict[str, _Channel] = {}
        self._users: dict[str, _User] = {}
        self._failures: dict[str, list[_Failure]] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._last_us = 0
        self._file_counter = 0
        # Files served at their url_private_download: id -> (bytes, mimetype). `files_read`
        # False: the bot token lacks files:read, and downloads get Slack's sign-in page.
        self.file_contents: dict[str, tuple[bytes, str]] = {}
        self.files_read = True
        self.downloads: list[str] = []  # file ids served with their content, in order

        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base = ""
        self.url = ""
        self._bind()
        self.add_user(bot_user_id, "Bot", "bot", is_bot=True)

    # ------------------------------------------------------------------ lifecycle

    def _bind(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        port = server.server_address[1]
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/api/"

    def start(self) -> FakeSlack:
        if self._thread is not None:
            return self
        if self._server is None:
            self._bind()
        assert self._server is not None
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-slack-api",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            if thread is not None:
                server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ clock

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def clock(self) -> float:
        """The test clock: pass ``clock=slack.clock`` to create_app, so the bot's time is the
        fake's (message ts, read budgets, Retry-After) and a test moves both with advance()."""
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        """The test clock's sleep: moves ``now`` on by `seconds` at once, never blocks."""
        self.advance(max(0.0, seconds))

    def _mint_us(self) -> int:
        us = max(int(round(self.now * 1_000_000)), self._last_us + 1)
        self._last_us = us
        return us

    # ------------------------------------------------------------------ seeding

    def add_user(
        self,
        user_id: str,
        real_name: str,
        display_name: str = "",
        *,
        is_bot: bool = False,
        deleted: bool = False,
        is_admin: bool = False,
        is_owner: bool = False,
        team_id: str | None = None,
        enterprise_id: str | None = None,
    ) -> None:
        """A user; `team_id` is their home workspace (default: this fake's), `enterprise_id`
        their Enterprise Grid org (users.info then carries `enterprise_user`)."""
        with self._lock:
            self._users[user_id] = _User(
                user_id,
                real_name,
                display_name,
                is_bot,
                deleted,
                is_admin,
                is_owner,
                team_id,
                enterprise_id,
            )

    def add_channel(
        self,
        channel_id: str,
        name: str,
        *,
        is_private: bool = False,
        is_im: bool = False,
        members: set[str] | None = None,
        bot_member: bool = True,
        is_archived: bool = False,
        is_mpim: bool = False,
    ) -> None:
        """A conversation: public channel (default), private (`is_private`), a DM (`is_im`)
        or a multi-person DM (`is_mpim`); its kind sets `channel_type` in events."""
        with self._lock:
            member_set = set(members or ())
            if bot_member:
                member_set.add(self.bot_user_id)
            else:
                member_set.discard(self.bot_user_id)
            old = self._channels.get(channel_id)
            self._channels[channel_id] = _Channel(
                id=channel_id,
                name=name,
                is_private=is_private or is_im or is_mpim,
                is_im=is_im,
                is_archived=is_archived,
                members=member_set,
                messages=old.messages if old is not None else {},
                is_mpim=is_mpim,
            )

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = "U1",
        ts: str | None = None,
        thread_ts: str | None = None,
        bot_id: str | None = None,
        subtype: str | None = None,
        files: list[dict] | None = None,
        edited: bool = False,
        user_team: str | None = None,
    ) -> str:
        with self._lock:
            ch = self._seed_channel(channel)
            if ts is None:
                ts = us_to_ts(self._mint_us())
            else:
                us = ts_to_us(ts)
                ts = us_to_ts(us)
                if ts in ch.messages:
                    raise ValueError(f"message {ts} already exists in {channel}")
                self._last_us = max(self._last_us, us)
            if thread_ts is not None:
                thread_ts = us_to_ts(ts_to_us(thread_ts))
                parent = ch.messages.get(thread_ts)
                if parent is None or self._is_reply(parent):
                    raise ValueError(f"thread parent {thread_ts} not found in {channel}")
            msg: dict[str, Any] = {"ts": ts, "user": user, "text": text, "thread_ts": thread_ts}
            if bot_id is not None:
                msg["bot_id"] = bot_id
            if user_team is not None:
                msg["user_team"] = user_team
            if subtype is not None:
                msg["subtype"] = subtype
            if files:
                normalized = []
                for f in files:
                    self._file_counter += 1
                    obj = _normalize_file(self._file_counter, f, self.base, self.team_id)
                    self.file_contents[obj["id"]] = (f.get("content") or b"", obj["mimetype"])
                    normalized.append(obj)
                msg["files"] = normalized
            if edited:
                msg["edited"] = {"user": user, "ts": us_to_ts(self._mint_us())}
            ch.messages[ts] = msg
            return ts

    def add_thread(
        self,
        channel: str,
        n_replies: int,
        *,
        text_fn: Callable[[int], str] | None = None,
        users: Sequence[str] = ("U1", "U2"),
    ) -> str:
        """Add a parent (text_fn(0)) and n replies (text_fn(1..n)); return the parent ts."""
        fn = text_fn or (lambda i: "parent message" if i == 0 else f"reply {i}")
        people = list(users) or ["U1"]
        with self._lock:
            parent = self.add_message(channel, fn(0), user=people[0])
            for i in range(1, n_replies + 1):
                self.add_message(channel, fn(i), user=people[i % len(people)], thread_ts=parent)
            return parent

    def edit_message(self, channel: str, ts: str, text: str) -> None:
        with self._lock:
            msg = self._seed_message(channel, ts)
            msg["text"] = text
            msg["edited"] = {"user": msg.get("user"), "ts": us_to_ts(self._mint_us())}

    def delete_message(self, channel: str, ts: str) -> None:
        """Delete a message; a parent with replies becomes a tombstone, like Slack."""
        with self._lock:
            ch = self._seed_channel(channel)
            msg = self._seed_message(channel, ts)
            if not self._is_reply(msg) and self._replies(ch, msg["ts"]):
                ch.messages[msg["ts"]] = {
                    "ts": msg["ts"],
                    "user": "USLACKBOT",
                    "text": "This message was deleted.",
                    "thread_ts": None,
                    "subtype": "tombstone",
                    "hidden": True,
                }
            else:
                del ch.messages[msg["ts"]]

    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        with self._lock:
            ch = self._seed_channel(channel)
            parent = self._seed_message(channel, thread_ts)
            out = [self._render(ch, parent)]
            out.extend(self._render(ch, m) for m in self._replies(ch, parent["ts"]))
            return out

    # ------------------------------------------------------------------ Events API payloads
    #
    # Each builder changes the fake's store as the action would and returns the inner `event`
    # Slack's Events API would deliver for it (tests wrap it: harness `Bot.deliver`). Shapes
    # from Slack's event reference pages (message, message.channels/groups/im/mpim,
    # bot_message, file_share, thread_broadcast, message_changed, message_deleted,
    # member_joined_channel, member_left_channel, channel_left, group_left).

    def channel_type(self, channel: str) -> str:
        """A message event's `channel_type`: channel, group (private), im or mpim."""
        with self._lock:
            ch = self._seed_channel(channel)
            if ch.is_im:
                return "im"
            if ch.is_mpim:
                return "mpim"
            return "group" if ch.is_private else "channel"

    def _message_event(self, ch: _Channel, msg: dict[str, Any]) -> dict[str, Any]:
        event = self._render(ch, msg)
        event["channel"] = ch.id
        event["event_ts"] = msg["ts"]
        event["channel_type"] = self.channel_type(ch.id)
        return event

    def post_event(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = "U1",
        thread_ts: str | None = None,
        files: list[dict] | None = None,
        bot: bool = False,
        bot_id: str | None = None,
        subtype: str | None = None,
        team: str | None = None,
        user_team: str | None = None,
    ) -> dict[str, Any]:
        """Post a message (as add_message does) and return its `message` event.

        A thread reply is an ordinary message event with `thread_ts` and `parent_user_id`
        (Slack does not deliver message_replied). `files`: a `file_share` with `upload`.
        `bot`: a `bot_message` from an integration: `bot_id` (default "B0OTHER"),
        `username`, no user. `bot_id` without `bot`: an app's bot user posting (user, bot_id,
        `bot_profile`, no subtype). `subtype="thread_broadcast"`: a reply also sent to the
        channel. `team`: the workspace whose member posted (default: the channel's);
        `user_team`: the poster's own organisation, for a Slack Connect channel (adds
        `user_team` and `source_team`)."""
        with self._lock:
            ch = self._seed_channel(channel)
            if bot:
                subtype = subtype or "bot_message"
                bot_id = bot_id or "B0OTHER"
                user = None
            elif files and subtype is None:
                subtype = "file_share"
            if subtype == "thread_broadcast" and thread_ts is None:
                raise ValueError("a thread_broadcast needs thread_ts")
            ts = self.add_message(
                channel,
                text,
                user=user,
                thread_ts=thread_ts,
                bot_id=bot_id,
                subtype=subtype,
                files=files,
                user_team=user_team,
            )
            event = self._message_event(ch, ch.messages[ts])
            home = team or self.channel_teams.get(ch.id, self.team_id)
            event["team"] = user_team or home
            if user_team:
                event["source_team"] = user_team
            if bot:
                event["username"] = "bot"
                event["icons"] = {}
            elif bot_id is not None:
                event["bot_profile"] = {
                    "id": bot_id,
                    "deleted": False,
                    "name": "bot",
                    "app_id": "A0OTHER",
                    "team_id": home,
                }
            elif user is not None:
                event["client_msg_id"] = f"msg-{ts}"
            if subtype == "file_share":
                event["upload"] = True
                event["display_as_bot"] = False
            if subtype == "thread_broadcast":
                parent = ch.messages[event["thread_ts"]]
                root = self._render(ch, parent)
                event["root"] = root
            return event

    def edit_event(self, channel: str, ts: str, text: str) -> dict[str, Any]:
        """Edit a message (as edit_message does) and return its `message_changed` event:
        hidden, `message` (the new version, with `edited`) and `previous_message`; its ts and
        event_ts are the edit's."""
        with self._lock:
            ch = self._seed_channel(channel)
            previous = self._render(ch, self._seed_message(channel, ts))
            self.edit_message(channel, ts, text)
            message = self._render(ch, self._seed_message(channel, ts))
            at = message["edited"]["ts"]
            return {
                "type": "message",
                "subtype": "message_changed",
                "hidden": True,
                "channel": ch.id,
                "channel_type": self.channel_type(ch.id),
                "ts": at,
                "event_ts": at,
                "message": message,
                "previous_message": previous,
            }

    def delete_event(self, channel: str, ts: str) -> dict[str, Any]:
        """Delete a message (as delete_message does) and return its `message_deleted` event:
        hidden, `deleted_ts` and `previous_message`; its ts and event_ts are the deletion's."""
        with self._lock:
            ch = self._seed_channel(channel)
            previous = self._render(ch, self._seed_message(channel, ts))
            self.delete_message(channel, ts)
            at = us_to_ts(self._mint_us())
            return {
                "type": "message",
                "subtype": "message_deleted",
                "hidden": True,
                "channel": ch.id,
                "channel_type": self.channel_type(ch.id),
                "ts": at,
                "event_ts": at,
                "deleted_ts": previous["ts"],
                "previous_message": previous,
            }

    def _messages_with_file(self, file_id: str) -> list[tuple[_Channel, dict[str, Any]]]:
        return [
            (ch, msg)
            for ch in self._channels.values()
            for msg in ch.messages.values()
            if any(f.get("id") == file_id for f in msg.get("files") or [])
        ]

    def delete_file(self, file_id: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """Delete a file (files.delete): every message that showed it keeps only a tombstone,
        `{"id": …, "mode": "tombstone"}`, and its URLs answer 404 (Slack's documentation does
        not say what a deleted file's URL answers; 404 is this fake's choice). Returns each
        changed message: (channel, before, after), as rendered."""
        with self._lock:
            self.file_contents.pop(file_id, None)
            changed = []
            for ch, msg in self._messages_with_file(file_id):
                before = self._render(ch, msg)
                msg["files"] = [
                    {"id": file_id, "mode": "tombstone"} if f.get("id") == file_id else f
                    for f in msg["files"]
                ]
                changed.append((ch.id, before, self._render(ch, msg)))
            return changed

    def file_deleted_event(self, file_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Delete a file (as delete_file does) and return Slack's `file_deleted` event (only
        `file_id` and `event_ts`, as its reference page shows; it names no channel), and the
        `message_changed` events that may also come for the messages now showing the
        tombstone (hidden, `message` and `previous_message`, like edit_event's)."""
        with self._lock:
            changed = self.delete_file(file_id)
            at = us_to_ts(self._mint_us())
            event = {"type": "file_deleted", "file_id": file_id, "event_ts": at}
            edits = [
                {
                    "type": "message",
                    "subtype": "message_changed",
                    "hidden": True,
                    "channel": channel,
                    "channel_type": self.channel_type(channel),
                    "ts": at,
                    "event_ts": at,
                    "message": after,
                    "previous_message": before,
                }
                for channel, before, after in changed
            ]
            return event, edits

    def change_file(self, file_id: str, content: bytes, **fields: Any) -> None:
        """A new version of a file (an edited snippet, a replaced image): its URL serves
        `content` from now on; `fields` (e.g. `name`) change its object in every message."""
        with self._lock:
            _, mimetype = self.file_contents[file_id]
            self.file_contents[file_id] = (content, fields.get("mimetype", mimetype))
            for _, msg in self._messages_with_file(file_id):
                for f in msg["files"]:
                    if f.get("id") == file_id:
                        f.update(fields)
                        f["size"] = len(content)

    def file_change_event(self, file_id: str, content: bytes, **fields: Any) -> dict[str, Any]:
        """Change a file (as change_file does) and return Slack's `file_change` event: only
        `file_id` and `file: {id}` (its reference page: other details via files.info)."""
        self.change_file(file_id, content, **fields)
        return {"type": "file_change", "file_id": file_id, "file": {"id": file_id}}

    def app_mention_event(self, channel: str, ts: str) -> dict[str, Any]:
        """The `app_mention` event of a stored message that mentions the bot: the message's
        fields (with `files` and `upload: false` when it carries files, as Slack sends them),
        without `subtype` or `channel_type`."""
        with self._lock:
            ch = self._seed_channel(channel)
            msg = self._seed_message(channel, ts)
            event = self._render(ch, msg)
            event["type"] = "app_mention"
            event["channel"] = ch.id
            event["event_ts"] = msg["ts"]
            for key in ("subtype", "hidden", "reply_count", "reply_users_count", "reply_users",
                        "latest_reply"):  # fmt: skip
                event.pop(key, None)
            if event.get("files"):
                event["upload"] = False
            return event

    @staticmethod
    def _letter(ch: _Channel) -> str:
        """member_*_channel's `channel_type`: one letter, the channel id's prefix (C, or G for
        private channels made before March 2021)."""
        return "G" if ch.id.startswith("G") else "C"

    def member_joined_event(
        self, channel: str, user: str, *, inviter: str | None = None, team: str | None = None
    ) -> dict[str, Any]:
        """`user` (the bot's user id when it is invited) joins `channel`; return its
        `member_joined_channel` event (`team`: the user's workspace)."""
        with self._lock:
            ch = self._seed_channel(channel)
            ch.members.add(user)
            event = {
                "type": "member_joined_channel",
                "user": user,
                "channel": ch.id,
                "channel_type": self._letter(ch),
                "team": team or self.channel_teams.get(ch.id, self.team_id),
                "event_ts": us_to_ts(self._mint_us()),
            }
            if inviter is not None:
                event["inviter"] = inviter
            return event

    def member_left_event(
        self, channel: str, user: str, *, team: str | None = None
    ) -> dict[str, Any]:
        """`user` leaves `channel`; return its `member_left_channel` event."""
        with self._lock:
            ch = self._seed_channel(channel)
            ch.members.discard(user)
            return {
                "type": "member_left_channel",
                "user": user,
                "channel": ch.id,
                "channel_type": self._letter(ch),
                "team": team or self.channel_teams.get(ch.id, self.team_id),
                "event_ts": us_to_ts(self._mint_us()),
            }

    def bot_left_event(self, channel: str, *, actor: str | None = None) -> dict[str, Any]:
        """The bot leaves (or is removed from) `channel`; return what Slack sends the bot:
        `channel_left` for a public channel, `group_left` for a private one, with the
        remover as `actor_id`. Reads of the channel then fail like Slack's."""
        with self._lock:
            ch = self._seed_channel(channel)
            ch.members.discard(self.bot_user_id)
            event = {
                "type": "group_left" if ch.is_private else "channel_left",
                "channel": ch.id,
                "event_ts": us_to_ts(self._mint_us()),
            }
            if actor is not None:
                event["actor_id"] = actor
            return event

    def open_dm(self, user: str) -> str:
        """The id of the bot's DM with `user` (its Messages tab), created when missing."""
        with self._lock:
            dm_id = "D" + user
            if dm_id not in self._channels:
                self._channels[dm_id] = _Channel(
                    id=dm_id,
                    name=user,
                    is_private=True,
                    is_im=True,
                    members={user, self.bot_user_id},
                )
            return dm_id

    def app_home_opened_event(self, user: str, *, tab: str = "messages") -> dict[str, Any]:
        """`user` opens the app's `tab` ("messages": the DM, "home": the Home tab); return its
        `app_home_opened` event (Slack's event reference: user, channel (the DM), tab,
        event_ts; a Home tab that was published before also carries its `view`)."""
        with self._lock:
            if tab not in ("home", "messages", "about"):
                raise ValueError(f"unknown App Home tab {tab!r}")
            dm = self.open_dm(user)
            event: dict[str, Any] = {
                "type": "app_home_opened",
                "user": user,
                "channel": dm,
                "tab": tab,
                "event_ts": us_to_ts(self._mint_us()),
            }
            published = [v for v in self.views if v.get("user_id") == user]
            if tab == "home" and published:
                event["view"] = {
                    **copy.deepcopy(published[-1]["view"]),
                    "id": "VHOME",
                    "team_id": self.team_id,
                }
            return event

    def dm_event(
        self, user: str, text: str, *, thread_ts: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        """`user` writes `text` in their DM with the bot (the Messages tab), a new conversation
        or, with `thread_ts`, a reply in one; return its `message` event (channel_type "im").
        `kw` as for post_event (e.g. `bot_id=` for a message the bot posted itself)."""
        dm = self.open_dm(user)
        return self.post_event(dm, text, user=user, thread_ts=thread_ts, **kw)

    # ------------------------------------------------------------------ fault injection

    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        with self._lock:
            self._failures.setdefault(method, []).append(
                _Failure(error=error, status=status, retry_after=retry_after, remaining=times)
            )

    # ------------------------------------------------------------------ read tiers

    def set_read_tier(self, tier: str, team_id: str | None = None) -> None:
        """Pace conversations.replies/history like Slack, on the fake's clock.

        `tier`: "unlimited" (no limit, the default), "tier3" (50 requests per 60 s) or
        "limited" (1 request per 60 s, and `limit` capped at 15, also its default: the
        commercially distributed non-Marketplace apps). Counted per method per workspace (the
        calling token's); a request over the limit answers HTTP 429 ``ratelimited`` with
        ``Retry-After`` (whole seconds until one would be allowed) and does not count.
        `team_id` None: every workspace that has no tier of its own."""
        if tier not in READ_TIERS:
            raise ValueError(f"unknown read tier {tier!r}: one of {sorted(READ_TIERS)}")
        with self._lock:
            self._read_tiers[team_id] = tier

    def read_tier(self, team_id: str) -> str:
        with self._lock:
            return self._read_tiers.get(team_id, self._read_tiers[None])

    def max_reads_per_window(
        self, team: str, method: str | None = None, window: float = READ_WINDOW_SECONDS
    ) -> int:
        """The most allowed read requests of `team` in any `window` seconds (of `method`;
        None: the busiest read method, as Slack's limits are per method)."""
        with self._lock:
            methods = [method] if method is not None else list(READ_METHODS)
            best = 0
            for name in methods:
                times = sorted(
                    e["at"]
                    for e in self.read_log
                    if e["team"] == team and e["method"] == name and not e["throttled"]
                )
                start = 0
                for end, at in enumerate(times):
                    while times[start] <= at - window:
                        start += 1
                    best = max(best, end - start + 1)
            return best

    def _read_throttle(self, method: str, team: str) -> int | None:
        """Seconds to wait before `team` may call read `method` again, or None if it may now."""
        budget = READ_TIERS[self.read_tier(team)]
        if budget is None:
            return None
        recent = [
            e["at"]
            for e in self.read_log
            if e["team"] == team
            and e["method"] == method
            and not e["throttled"]
            and e["at"] > self.now - READ_WINDOW_SECONDS
        ]
        if len(recent) < budget:
            return None
        allowed_at = sorted(recent)[-budget] + READ_WINDOW_SECONDS
        return max(1, math.ceil(allowed_at - self.now))

    def _read_limit(self, params: dict[str, Any], default: int) -> int:
        """The `limit` of a read, capped at 15 (also the default) for a limited workspace."""
        if self.read_tier(getattr(self, "_caller_team", self.team_id)) != "limited":
            return self._limit(params, default)
        return min(self._limit(params, LIMITED_PAGE_MAX), LIMITED_PAGE_MAX)

    def response_url(self) -> str:
        with self._lock:
            rid = secrets.token_hex(8)
            self._response_urls[rid] = _ResponseUrl(minted_at=self.now)
            return f"{self.base}/response/{rid}"

    def calls_to(self, method: str) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(params) for name, params in self.calls if name == method]

    # ------------------------------------------------------------------ internals

    def _seed_channel(self, channel: str) -> _Channel:
        ch = self._channels.get(channel)
        if ch is None:
            raise KeyError(f"unknown channel {channel!r}: call add_channel first")
        return ch

    def _seed_message(self, channel: str, ts: str) -> dict[str, Any]:
        ch = self._seed_channel(channel)
        msg = ch.messages.get(us_to_ts(ts_to_us(ts)))
        if msg is None:
            raise KeyError(f"unknown message {ts!r} in {channel!r}")
        return msg

    @staticmethod
    def _is_reply(msg: dict[str, Any]) -> bool:
        return msg.get("thread_ts") is not None and msg["thread_ts"] != msg["ts"]

    def _replies(self, ch: _Channel, parent_ts: str) -> list[dict[str, Any]]:
        replies = [
            m
            for m in ch.messages.values()
            if m.get("thread_ts") == parent_ts and m["ts"] != parent_ts
        ]
        replies.sort(key=lambda m: ts_to_us(m["ts"]))
        return replies

    def _record_read(
        self, method: str, ch: _Channel, thread_ts: str | None, rendered: list[dict[str, Any]]
    ) -> None:
        self.reads.append(
            {
                "method": method,
                "channel": ch.id,
                "thread_ts": thread_ts,
                "ts": [m["ts"] for m in rendered],
                "edited": {m["ts"]: m["edited"]["ts"] for m in rendered if m.get("edited")},
            }
        )

    def _render(self, ch: _Channel, msg: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "message", "ts": msg["ts"]}
        if msg.get("user") is not None:
            out["user"] = msg["user"]
        out["text"] = msg.get("text", "")
        out["team"] = msg.get("user_team") or self.channel_teams.get(ch.id, self.team_id)
        for key in (
            "bot_id",
            "subtype",
            "hidden",
            "edited",
            "files",
            "blocks",
            "reactions",
            "user_team",
        ):
            if msg.get(key) is not None:
                out[key] = copy.deepcopy(msg[key])
        if self._is_reply(msg):
            out["thread_ts"] = msg["thread_ts"]
            out["parent_user_id"] = ch.messages.get(msg["thread_ts"], {}).get("user")
            if out["parent_user_id"] is None:
                del out["parent_user_id"]
        else:
            replies = self._replies(ch, msg["ts"])
            if replies:
                reply_users: list[str] = []
                for r in replies:
                    u = r.get("user")
                    if u is not None and u not in reply_users:
                        reply_users.append(u)
                out["thread_ts"] = msg["ts"]
                out["reply_count"] = len(replies)
                out["reply_users_count"] = len(reply_users)
                out["reply_users"] = reply_users[:5]
                out["latest_reply"] = replies[-1]["ts"]
        return out

    def _user_dict(self, user: _User) -> dict[str, Any]:
        name = user.display_name or user.real_name or user.id
        handle = name.lower().replace(" ", ".")
        out: dict[str, Any] = {
            "id": user.id,
            "team_id": user.team_id or self.team_id,
            "name": handle,
            "real_name": user.real_name,
            "deleted": user.deleted,
            "is_bot": user.is_bot,
            "is_app_user": False,
            "is_admin": user.is_admin or user.is_owner,
            "is_owner": user.is_owner,
            "is_primary_owner": False,
            "profile": {
                "display_name": user.display_name,
                "real_name": user.real_name,
                "display_name_normalized": user.display_name,
                "real_name_normalized": user.real_name,
            },
        }
        if user.enterprise_id:
            out["enterprise_user"] = {
                "id": user.id,
                "enterprise_id": user.enterprise_id,
                "enterprise_name": "Org",
                "is_admin": user.is_admin,
                "is_owner": user.is_owner,
                "teams": [user.team_id or self.team_id],
            }
        return out

    def _channel_dict(self, ch: _Channel) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": ch.id,
            "name": ch.name,
            "is_channel": not (ch.is_im or ch.is_mpim),
            "is_group": False,
            "is_private": ch.is_private,
            "is_im": ch.is_im,
            "is_mpim": ch.is_mpim,
            "is_member": self.bot_user_id in ch.members,
            "is_archived": ch.is_archived,
            "is_ext_shared": False,
        }
        if ch.is_im:
            others = sorted(m for m in ch.members if m != self.bot_user_id)
            if others:
                out["user"] = others[0]
        return out

    # ---- request-time helpers (called with the lock held)

    def _channel_for_read(self, params: dict[str, Any], key: str = "channel") -> _Channel:
        channel_id = params.get(key)
        if not channel_id:
            raise SlackError("channel_not_found")
        ch = self._channels.get(str(channel_id))
        if ch is None:
            raise SlackError("channel_not_found")
        if self.bot_user_id not in ch.members:
            raise SlackError("channel_not_found" if ch.is_private else "not_in_channel")
        return ch

    def _channel_visible(self, params: dict[str, Any], key: str = "channel") -> _Channel:
        """A channel the bot can see (public, or private where it is a member)."""
        channel_id = params.get(key)
        ch = self._channels.get(str(channel_id)) if channel_id else None
        if ch is None or (ch.is_private and self.bot_user_id not in ch.members):
            raise SlackError("channel_not_found")
        return ch

    def _channel_for_write(self, params: dict[str, Any], *, open_dm: bool) -> _Channel:
        channel_id = str(params.get("channel") or "")
        if not channel_id:
            raise SlackError("channel_not_found")
        ch = self._channels.get(channel_id)
        if ch is None and channel_id.lstrip("#"):
            name = channel_id.lstrip("#")
            ch = next((c for c in self._channels.values() if c.name == name and not c.is_im), None)
        if ch is None and open_dm and channel_id[:1] in {"U", "W"}:
            user = self._users.get(channel_id)
            if user is not None and user.deleted:
                raise SlackError("user_disabled")
            dm_id = "D" + channel_id
            ch = self._channels.get(dm_id)
            if ch is None:
                ch = _Channel(
                    id=dm_id,
                    name=channel_id,
                    is_private=True,
                    is_im=True,
                    members={channel_id, self.bot_user_id},
                )
                self._channels[dm_id] = ch
        if ch is None or (ch.is_private and self.bot_user_id not in ch.members):
            raise SlackError("channel_not_found")
        if ch.is_archived:
            raise SlackError("is_archived")
        if self.bot_user_id not in ch.members:
            raise SlackError("not_in_channel")
        return ch

    @staticmethod
    def _limit(params: dict[str, Any], default: int) -> int:
        raw = params.get("limit")
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except (TypeError, ValueError) as exc:
            raise SlackError("invalid_limit") from exc
        if value <= 0:
            return default
        return min(value, MAX_LIMIT)

    @staticmethod
    def _bound(params: dict[str, Any], key: str) -> int | None:
        raw = params.get(key)
        if raw is None or raw == "":
            return None
        try:
            return ts_to_us(str(raw))
        except ValueError:
            try:
                return int(float(raw) * 1_000_000)
            except (TypeError, ValueError) as exc:
                raise SlackError(f"invalid_ts_{key}") from exc

    @staticmethod
    def _in_window(us: int, oldest: int | None, latest: int | None, inclusive: bool) -> bool:
        if oldest is not None and (us < oldest or (us == oldest and not inclusive)):
            return False
        if latest is not None and (us > latest or (us == latest and not inclusive)):
            return False
        return True

    def _page_size(self, limit: int, available: int) -> int:
        if available <= limit:
            return available
        if self.page_shortfall and limit > 1:
            return limit - 1
        return limit

    def _parse_blocks(self, params: dict[str, Any]) -> list[Any] | None:
        blocks = params.get("blocks")
        if blocks is None or blocks == "":
            return None
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks)
            except json.JSONDecodeError as exc:
                raise SlackError("invalid_blocks_format") from exc
        errors = validate_blocks(blocks, self.refused_blocks)
        if errors:
            raise SlackError(
                "invalid_blocks",
                errors=errors,
                response_metadata={"messages": [f"[ERROR] {e}" for e in errors]},
            )
        return blocks

    @staticmethod
    def _check_text(params: dict[str, Any], blocks: list[Any] | None) -> str:
        text = params.get("text")
        text = "" if text is None else str(text)
        has_other = bool(params.get("attachments")) or bool(params.get("markdown_text"))
        if not text and not blocks and not has_other:
            raise SlackError("no_text")
        if len(text) > MAX_TEXT_CHARS:
            raise SlackError("msg_too_long")
        return text

    # ------------------------------------------------------------------ dispatch

    def _serve_file(self, path: str, auth_header: str | None) -> tuple[int, bytes, str]:
        """A GET of a file URL (`/files-pri/<team>-<file id>/[download/]<name>`): its bytes
        with a token that may read files, else Slack's sign-in page with status 200."""
        with self._lock:
            file_id = path[len("/files-pri/") :].split("/", 1)[0].split("-", 1)[-1]
            token = (
                auth_header[7:].strip()
                if auth_header and auth_header[:7].lower() == "bearer "
                else ""
            )
            if not self.files_read or (token != self.bot_token and token not in self.workspaces):
                return 200, LOGIN_PAGE, "text/html; charset=utf-8"
            if file_id not in self.file_contents:
                return 404, b"not found", "text/plain"
            self.downloads.append(file_id)
            content, mimetype = self.file_contents[file_id]
            return 200, content, mimetype

    def _handle_api(
        self, method: str, params: dict[str, Any], auth_header: str | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        try:
            return self._handle_api_inner(method, params, auth_header)
        finally:
            with self.activity:
                self.activity.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Block until `predicate()` holds, re-checking after every API call; False on timeout."""
        with self.activity:
            return self.activity.wait_for(predicate, timeout)

    def _handle_api_inner(
        self, method: str, params: dict[str, Any], auth_header: str | None
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self._lock:
            self.now += self.seconds_per_call
            recorded = {k: v for k, v in params.items() if k != "token"}
            self.calls.append((method, copy.deepcopy(recorded)))
            handler = _METHODS.get(method)
            if handler is None:
                return 200, {}, {"ok": False, "error": "unknown_method"}
            token: str | None = None
            if auth_header and auth_header.lower().startswith("bearer "):
                token = auth_header[7:].strip()
            elif params.get("token"):
                token = str(params["token"])
            if method == "oauth.v2.access":  # authenticated by client id/secret, not a token
                if auth_header and auth_header.lower().startswith("basic "):
                    pair = base64.b64decode(auth_header[6:].strip()).decode()
                    params = {
                        **params,
                        "client_id": pair.split(":", 1)[0],
                        "client_secret": pair.split(":", 1)[1],
                    }
                try:
                    return 200, {}, {"ok": True, **self._api_oauth_v2_access(params)}
                except SlackError as err:
                    return err.status, {}, {"ok": False, "error": err.error}
            if not token:
                return 200, {}, {"ok": False, "error": "not_authed"}
            if token != self.bot_token and token not in self.workspaces:
                return 200, {}, {"ok": False, "error": "invalid_auth"}
            self._caller_team = self.workspaces.get(token, self.team_id)
            self._caller_token = token
            queue = self._failures.get(method)
            if queue:
                failure = queue[0]
                failure.remaining -= 1
                if failure.remaining <= 0:
                    queue.pop(0)
                if failure.status == 429:
                    retry_after = 1 if failure.retry_after is None else failure.retry_after
                    return (
                        429,
                        {"Retry-After": str(retry_after)},
                        {
                            "ok": False,
                            "error": "ratelimited",
                        },
                    )
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = str(failure.retry_after)
                return failure.status, headers, {"ok": False, "error": failure.error}
            if method in READ_METHODS:
                return self._read(method, handler, params)
            try:
                body = handler(self, params)
            except SlackError as err:
                return err.status, {}, {"ok": False, "error": err.error, **err.extra}
            return 200, {}, {"ok": True, **body}

    def _read(
        self,
        method: str,
        handler: Callable[[FakeSlack, dict[str, Any]], dict[str, Any]],
        params: dict[str, Any],
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """A conversations.replies/history request under its workspace's read tier."""
        team = self._caller_team
        entry: dict[str, Any] = {
            "method": method,
            "team": team,
            "channel": params.get("channel"),
            "at": self.now,
            "throttled": False,
            "returned": 0,
        }
        wait = self._read_throttle(method, team)
        self.read_log.append(entry)
        if wait is not None:
            entry["throttled"] = True
            return 429, {"Retry-After": str(wait)}, {"ok": False, "error": "ratelimited"}
        try:
            body = handler(self, params)
        except SlackError as err:  # an answered request still counts against the budget
            return err.status, {}, {"ok": False, "error": err.error, **err.extra}
        entry["returned"] = len(body.get("messages", []))
        return 200, {}, {"ok": True, **body}

    def _handle_response_url(self, rid: str, body: bytes) -> tuple[int, str]:
        with self._lock:
            entry = self._response_urls.get(rid)
            if entry is None:
                return 404, "no_service"
            if self.now - entry.minted_at > RESPONSE_URL_TTL_SECONDS:
                return 404, "expired_url"
            if entry.uses >= RESPONSE_URL_MAX_USES:
                return 404, "used_url"
            try:
                payload = json.loads(body.decode("utf-8") or "null")
            except (UnicodeDecodeError, json.JSONDecodeError):
                return 400, "invalid_payload"
            if not isinstance(payload, dict):
                return 400, "invalid_payload"
            blocks = payload.get("blocks")
            if blocks is not None and validate_blocks(blocks, self.refused_blocks):
                return 400, "invalid_blocks"  # a refused message does not use the URL up
            entry.uses += 1
            record = copy.deepcopy(payload)
            record["_url"] = f"{self.base}/response/{rid}"
            self.responses.append(record)
            return 200, "ok"

    # ------------------------------------------------------------------ API methods

    def add_workspace(self, team_id: str, token: str) -> None:
        """Another workspace that installed the app: `token` acts for `team_id` (channels are
        shared by all workspaces in this fake; give each workspace its own channel ids)."""
        with self._lock:
            self.workspaces[token] = team_id

    def add_oauth_code(
        self,
        code: str,
        team_id: str,
        token: str,
        *,
        refresh_token: str | None = None,
        expires_in: int | None = None,
        enterprise_id: str | None = None,
        org_wide: bool = False,
    ) -> None:
        """A one-time code that oauth.v2.access exchanges for `token` of `team_id`.

        `org_wide`: an Enterprise Grid org-wide install of `enterprise_id` (started from
        `team_id`): the response has no team and `is_enterprise_install: true`."""
        with self._lock:
            self._oauth_codes[code] = {
                "team_id": team_id,
                "token": token,
                "refresh_token": refresh_token,
                "expires_in": expires_in,
                "enterprise_id": enterprise_id,
                "org_wide": org_wide,
            }

    # Test hook for token-rotation races (see hold_refreshes).
    _refresh_holds = 0
    _refresh_releases = 0
    refreshes_parked = 0  # refresh-token grants waiting for release_refreshes() right now

    def hold_refreshes(self, count: int = 1) -> None:
        """Park the next `count` refresh-token grants (oauth.v2.access with
        grant_type=refresh_token) before they look at their refresh token, until
        release_refreshes(); later grants go through. Wait for one to be parked with
        ``wait_for(lambda: fake.refreshes_parked == 1)``."""
        with self.activity:
            self._refresh_holds = count

    def release_refreshes(self) -> None:
        """Let every parked refresh-token grant go on, and drop holds not used yet."""
        with self.activity:
            self._refresh_holds = 0
            self._refresh_releases += 1
            self.activity.notify_all()

    def _api_oauth_v2_access(self, params: dict[str, Any]) -> dict[str, Any]:
        if (
            params.get("client_id") != self.client_id
            or params.get("client_secret") != self.client_secret
        ):
            raise SlackError("invalid_client_id")
        if params.get("grant_type") == "refresh_token":
            if self._refresh_holds > 0:  # test hook: parked until release_refreshes()
                self._refresh_holds -= 1
                released = self._refresh_releases
                self.refreshes_parked += 1
                self.activity.notify_all()
                # Waiting on the condition releases the fake's lock: other calls go on.
                self.activity.wait_for(lambda: self._refresh_releases != released, timeout=30)
                self.refreshes_parked -= 1
            old = self._refresh.pop(str(params.get("refresh_token")), None)
            if old is None:
                raise SlackError("invalid_refresh_token")
            self._rotations += 1
            token = f"xoxe.xoxb-rotated-{self._rotations}"
            refresh = f"xoxe-refresh-{self._rotations}"
            self.workspaces[token] = old
            self._refresh[refresh] = old
            return {
                "access_token": token,
                "refresh_token": refresh,
                "expires_in": 43200,
                "token_type": "bot",
                "team": {"id": old},
                "bot_user_id": self.bot_user_id,
            }
        grant = self._oauth_codes.pop(str(params.get("code")), None)
        if grant is None:
            raise SlackError("invalid_code")
        self.workspaces[grant["token"]] = grant["team_id"]
        out: dict[str, Any] = {
            "app_id": "A0001",
            "authed_user": {"id": "U1"},
            "scope": "app_mentions:read,channels:history,chat:write,commands,users:read",
            "token_type": "bot",
            "access_token": grant["token"],
            "bot_user_id": self.bot_user_id,
            "team": {"id": grant["team_id"], "name": f"Team {grant['team_id']}"},
            "enterprise": (
                {"id": grant["enterprise_id"], "name": "Org"} if grant["enterprise_id"] else None
            ),
            "is_enterprise_install": False,
        }
        if grant["org_wide"]:
            out["team"] = None
            out["is_enterprise_install"] = True
            self.org_tokens[grant["token"]] = grant["enterprise_id"]
        if grant["refresh_token"]:
            out["refresh_token"] = grant["refresh_token"]
            out["expires_in"] = grant["expires_in"] or 43200
            self._refresh[grant["refresh_token"]] = grant["team_id"]
        return out

    def _api_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        team = getattr(self, "_caller_team", self.team_id)
        org = self.org_tokens.get(getattr(self, "_caller_token", ""))
        out = {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team_domain,
            "user": "bot",
            "team_id": team,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": org is not None,
        }
        if org is not None:
            out["enterprise_id"] = org
        return out

    def _api_conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_for_read(params)
        raw_ts = params.get("ts")
        if not raw_ts:
            raise SlackError("invalid_arguments")
        try:
            ts = us_to_ts(ts_to_us(str(raw_ts)))
        except ValueError as exc:
            raise SlackError("thread_not_found") from exc
        msg = ch.messages.get(ts)
        if msg is None:
            raise SlackError("thread_not_found")
        if self._is_reply(msg):
            rendered = [self._render(ch, msg)]
            self._record_read("conversations.replies", ch, msg["thread_ts"], rendered)
            return {
                "messages": rendered,
                "has_more": False,
                "response_metadata": {"next_cursor": ""},
            }
        limit = self._read_limit(params, MAX_LIMIT)
        oldest = self._bound(params, "oldest")
        latest = self._bound(params, "latest")
        inclusive = _truthy(params.get("inclusive"))
        cursor = params.get("cursor")
        start_us = _decode_cursor(str(cursor)) if cursor else None
        replies = [
            r
            for r in self._replies(ch, ts)
            if self._in_window(ts_to_us(r["ts"]), oldest, latest, inclusive)
            and (start_us is None or ts_to_us(r["ts"]) >= start_us)
        ]
        with_parent = start_us is None or self.parent_on_every_page
        items: list[dict[str, Any]] = ([msg] if with_parent else []) + replies
        size = self._page_size(limit, len(items))
        page, rest = items[:size], items[size:]
        rendered = [self._render(ch, m) for m in page]
        self._record_read("conversations.replies", ch, ts, rendered)
        return {
            "messages": rendered,
            "has_more": bool(rest),
            "response_metadata": {
                "next_cursor": _encode_cursor(ts_to_us(rest[0]["ts"])) if rest else ""
            },
        }

    def _api_conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_for_read(params)
        limit = self._read_limit(params, 100)
        oldest = self._bound(params, "oldest")
        latest = self._bound(params, "latest")
        inclusive = _truthy(params.get("inclusive"))
        cursor = params.get("cursor")
        start_us = _decode_cursor(str(cursor)) if cursor else None
        items = [
            m
            for m in ch.messages.values()
            if (not self._is_reply(m) or m.get("subtype") == "thread_broadcast")
            and self._in_window(ts_to_us(m["ts"]), oldest, latest, inclusive)
            and (start_us is None or ts_to_us(m["ts"]) <= start_us)
        ]
        items.sort(key=lambda m: ts_to_us(m["ts"]), reverse=True)
        size = self._page_size(limit, len(items))
        page, rest = items[:size], items[size:]
        rendered = [self._render(ch, m) for m in page]
        self._record_read("conversations.history", ch, None, rendered)
        return {
            "messages": rendered,
            "has_more": bool(rest),
            "pin_count": 0,
            "response_metadata": {
                "next_cursor": _encode_cursor(ts_to_us(rest[0]["ts"])) if rest else ""
            },
        }

    def _api_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_visible(params)
        return {"channel": self._channel_dict(ch)}

    def _api_conversations_members(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_visible(params)
        limit = self._limit(params, 100)
        members = sorted(ch.members)
        cursor = params.get("cursor")
        start = 0
        if cursor:
            try:
                raw = base64.b64decode(str(cursor).encode("ascii"), validate=True).decode()
                prefix, _, value = raw.partition(":")
                if prefix != "user":
                    raise ValueError(raw)
                start = next((i for i, m in enumerate(members) if m >= value), len(members))
            except (ValueError, UnicodeError) as exc:
                raise SlackError("invalid_cursor") from exc
        page = members[start : start + limit]
        rest = members[start + limit :]
        next_cursor = base64.b64encode(f"user:{rest[0]}".encode()).decode() if rest else ""
        return {"members": page, "response_metadata": {"next_cursor": next_cursor}}

    def _api_conversations_join(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id = params.get("channel")
        ch = self._channels.get(str(channel_id)) if channel_id else None
        if ch is None:
            raise SlackError("channel_not_found")
        if ch.is_im or ch.is_private:
            if ch.is_im or self.bot_user_id not in ch.members:
                raise SlackError("method_not_supported_for_channel_type")
        if ch.is_archived:
            raise SlackError("is_archived")
        out: dict[str, Any] = {}
        if self.bot_user_id in ch.members:
            out["warning"] = "already_in_channel"
            out["response_metadata"] = {"warnings": ["already_in_channel"]}
        ch.members.add(self.bot_user_id)
        out["channel"] = self._channel_dict(ch)
        return out

    def _api_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._users.get(str(params.get("user") or ""))
        if user is None:
            raise SlackError("user_not_found")
        return {"user": self._user_dict(user)}

    def _status_ends(self, channel: str, thread_ts: str | None) -> None:
        """A status line ends (a reply, a new or empty status); note it if it had lapsed."""
        if thread_ts is None:
            return
        set_at = self._status_set.pop((channel, str(thread_ts)), None)
        if set_at is not None and self.now - set_at > STATUS_TTL_SECONDS:
            self.status_lapses.append(
                {
                    "channel": channel,
                    "thread_ts": str(thread_ts),
                    "set_at": set_at,
                    "lapsed_at": set_at + STATUS_TTL_SECONDS,
                }
            )

    def _api_chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_for_write(params, open_dm=True)
        blocks = self._parse_blocks(params)
        text = self._check_text(params, blocks)
        thread_ts: str | None = None
        raw_thread = params.get("thread_ts")
        if raw_thread:
            target: dict[str, Any] | None = None
            try:
                target = ch.messages.get(us_to_ts(ts_to_us(str(raw_thread))))
            except ValueError:
                target = None
            if target is None:
                self.misthreaded.append({**copy.deepcopy(params), "_reason": "unknown_ts"})
            elif self._is_reply(target):
                # Slack files it under the reply's parent; still a caller bug.
                self.misthreaded.append({**copy.deepcopy(params), "_reason": "reply_ts"})
                thread_ts = target["thread_ts"]
            else:
                thread_ts = target["ts"]
        self._status_ends(ch.id, thread_ts)
        ts = us_to_ts(self._mint_us())
        msg: dict[str, Any] = {
            "ts": ts,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": text,
            "thread_ts": thread_ts,
        }
        if blocks is not None:
            msg["blocks"] = copy.deepcopy(blocks)
        if thread_ts is not None and _truthy(params.get("reply_broadcast")):
            msg["subtype"] = "thread_broadcast"
        ch.messages[ts] = msg
        record = copy.deepcopy(params)
        record.pop("token", None)
        if blocks is not None:
            record["blocks"] = copy.deepcopy(blocks)
        record["_team"] = getattr(self, "_caller_team", self.team_id)
        self.posts.append(record)
        return {"channel": ch.id, "ts": ts, "message": self._render(ch, msg)}

    # -- streaming (chat.startStream / appendStream / stopStream) -------------------------------

    def _api_chat_start_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        if not self.streaming_enabled:
            raise SlackError(self.stream_refusal)
        ch = self._channel_for_write(params, open_dm=False)
        raw_thread = params.get("thread_ts")
        if not raw_thread:
            raise SlackError("invalid_arguments")
        if not ch.is_im and not (
            params.get("recipient_team_id") and params.get("recipient_user_id")
        ):
            raise SlackError("missing_recipient_team_id")
        self._status_ends(ch.id, str(raw_thread))
        ts = us_to_ts(self._mint_us())
        text = str(params.get("markdown_text") or "")
        ch.messages[ts] = {
            "ts": ts,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": text,
            "thread_ts": str(raw_thread),
        }
        self.streams[ts] = {
            "channel": ch.id,
            "thread_ts": str(raw_thread),
            "text": text,
            "appends": 0,
            "state": "streaming",
            "started_at": self.now,
        }
        return {"channel": ch.id, "ts": ts}

    def _stream(self, params: dict[str, Any]) -> tuple[_Channel, dict[str, Any]]:
        ch = self._channel_visible(params)
        stream = self.streams.get(str(params.get("ts")))
        if stream is None:
            raise SlackError("message_not_found")
        if stream["state"] == "streaming" and (
            self.now - stream["started_at"] >= self.stream_lifetime
        ):
            stream["state"] = "expired"  # Slack closed it; the message keeps what it had
        if stream["state"] == "stopped_by_user":
            raise SlackError("stopped_by_user")
        if stream["state"] != "streaming":
            raise SlackError("message_not_in_streaming_state")
        return ch, stream

    def _api_chat_append_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        ch, stream = self._stream(params)
        piece = str(params.get("markdown_text") or "")
        if not piece:
            raise SlackError("no_text")
        stream["text"] += piece
        stream["appends"] += 1
        if len(stream["text"]) > MAX_TEXT_CHARS:
            raise SlackError("msg_too_long")
        ch.messages[str(params["ts"])]["text"] = stream["text"]
        if self.stop_after_appends is not None and stream["appends"] >= self.stop_after_appends:
            stream["state"] = "stopped_by_user"  # the requester pressed stop
        return {"channel": ch.id, "ts": params["ts"]}

    def _api_chat_stop_stream(self, params: dict[str, Any]) -> dict[str, Any]:
        ch, stream = self._stream(params)
        stream["text"] += str(params.get("markdown_text") or "")
        blocks = self._parse_blocks(params)
        stream["state"] = "stopped"
        msg = ch.messages[str(params["ts"])]
        msg["text"] = stream["text"]
        if blocks is not None:
            msg["blocks"] = copy.deepcopy(blocks)
            stream["blocks"] = copy.deepcopy(blocks)
        record = {
            "channel": ch.id,
            "thread_ts": stream["thread_ts"],
            "text": stream["text"],
            "blocks": copy.deepcopy(blocks),
            "_streamed": True,
            "ts": params["ts"],
            "_team": getattr(self, "_caller_team", self.team_id),
        }
        self.posts.append(record)
        return {"channel": ch.id, "ts": params["ts"]}

    def _api_chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_for_write(params, open_dm=False)
        user = str(params.get("user") or "")
        if not user:
            raise SlackError("user_not_found")
        if user not in ch.members:
            raise SlackError("user_not_in_channel")
        blocks = self._parse_blocks(params)
        self._check_text(params, blocks)
        record = copy.deepcopy(params)
        record.pop("token", None)
        if blocks is not None:
            record["blocks"] = copy.deepcopy(blocks)
        self.ephemerals.append(record)
        return {"message_ts": us_to_ts(self._mint_us())}

    def _api_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_visible(params)
        raw_ts = params.get("ts")
        if not raw_ts:
            raise SlackError("message_not_found")
        try:
            msg = ch.messages.get(us_to_ts(ts_to_us(str(raw_ts))))
        except ValueError:
            msg = None
        if msg is None:
            raise SlackError("message_not_found")
        if msg.get("user") != self.bot_user_id and msg.get("bot_id") != self.bot_id:
            raise SlackError("cant_update_message")
        if ch.is_archived:
            raise SlackError("is_archived")
        blocks = self._parse_blocks(params)
        text = params.get("text")
        if text is not None and len(str(text)) > MAX_TEXT_CHARS:
            raise SlackError("msg_too_long")
        if text is None and blocks is None:
            raise SlackError("no_text")
        if text is not None:
            msg["text"] = str(text)
        if blocks is not None:
            msg["blocks"] = copy.deepcopy(blocks)
        msg["edited"] = {"user": self.bot_user_id, "ts": us_to_ts(self._mint_us())}
        record = copy.deepcopy(params)
        record.pop("token", None)
        if blocks is not None:
            record["blocks"] = copy.deepcopy(blocks)
        self.updates.append(record)
        rendered = self._render(ch, msg)
        return {"channel": ch.id, "ts": msg["ts"], "text": msg["text"], "message": rendered}

    def _api_chat_get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_visible(params)
        raw_ts = params.get("message_ts")
        try:
            msg = ch.messages.get(us_to_ts(ts_to_us(str(raw_ts)))) if raw_ts else None
        except ValueError:
            msg = None
        if msg is None:
            raise SlackError("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{ch.id}/p" + msg["ts"].replace(
            ".", ""
        )
        if self._is_reply(msg):
            link += f"?thread_ts={msg['thread_ts']}&cid={ch.id}"
        return {"channel": ch.id, "permalink": link}

    @staticmethod
    def _json_arg(params: dict[str, Any], key: str) -> Any:
        """An argument sent as JSON text (form bodies) or as a value (JSON bodies)."""
        value = params.get(key)
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise SlackError("invalid_arguments") from exc
        return value

    @classmethod
    def _view(cls, params: dict[str, Any], kind: str) -> dict[str, Any]:
        """The `view` argument (JSON text or an object) of type `kind`, else invalid_arguments."""
        view = cls._json_arg(params, "view")
        if not isinstance(view, dict) or view.get("type") != kind:
            raise SlackError("invalid_arguments")
        return view

    def _api_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("user_id"):
            raise SlackError("invalid_arguments")
        view = self._view(params, "home")
        record = copy.deepcopy(params)
        record.pop("token", None)
        record["view"] = copy.deepcopy(view)
        self.views.append(record)
        rendered = copy.deepcopy(view)
        rendered.setdefault("id", f"V{len(self.views):08d}")
        rendered.setdefault("team_id", self.team_id)
        return {"view": rendered}

    def _api_views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        trigger = str(params.get("trigger_id") or "")
        if not trigger:
            raise SlackError("invalid_arguments")
        if trigger in self._used_triggers:
            raise SlackError("exchanged_trigger_id")
        view = self._view(params, "modal")
        title = (view.get("title") or {}).get("text") or ""
        blocks = view.get("blocks") or []
        if not title or len(title) > 24 or len(blocks) > 100:
            raise SlackError("invalid_arguments")
        has_inputs = any(b.get("type") == "input" for b in blocks)
        if has_inputs and not (view.get("submit") or {}).get("text"):
            raise SlackError("invalid_arguments")  # Slack: inputs need a submit button
        if len(str(view.get("private_metadata") or "")) > 3000:
            raise SlackError("invalid_arguments")
        self._used_triggers.add(trigger)
        rendered = copy.deepcopy(view)
        rendered["id"] = f"VM{len(self.modals) + 1:07d}"
        rendered["team_id"] = getattr(self, "_caller_team", self.team_id)
        rendered.setdefault("state", {"values": {}})
        self.modals.append(rendered)
        return {"view": rendered}

    def _api_reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel_for_read(params)
        name = str(params.get("name") or "").strip(":")
        if not name:
            raise SlackError("invalid_name")
        raw_ts = params.get("timestamp")
        try:
            msg = ch.messages.get(us_to_ts(ts_to_us(str(raw_ts)))) if raw_ts else None
        except ValueError:
            msg = None
        if msg is None:
            raise SlackError("message_not_found")
        reactions = msg.setdefault("reactions", [])
        entry = next((r for r in reactions if r["name"] == name), None)
        if entry is None:
            entry = {"name": name, "users": [], "count": 0}
            reactions.append(entry)
        if self.bot_user_id in entry["users"]:
            raise SlackError("already_reacted")
        entry["users"].append(self.bot_user_id)
        entry["count"] += 1
        record = copy.deepcopy(params)
        record.pop("token", None)
        self.reactions.append(record)
        return {}

    def _api_assistant_threads_set_status(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel_id"):
            raise SlackError("channel_not_found")
        if not params.get("thread_ts"):
            raise SlackError("invalid_arguments")
        loading = self._json_arg(params, "loading_messages")
        if loading is not None and (
            not isinstance(loading, list)
            or not 1 <= len(loading) <= MAX_LOADING_MESSAGES
            or any(not isinstance(m, str) or len(m) > MAX_LOADING_CHARS for m in loading)
        ):
            raise SlackError("invalid_arguments")
        channel, thread_ts = str(params["channel_id"]), str(params["thread_ts"])
        self._status_ends(channel, thread_ts)
        if params.get("status"):
            self._status_set[(channel, thread_ts)] = self.now
        record = copy.deepcopy(params)
        record.pop("token", None)
        record["_at"] = self.now
        self.statuses.append(record)
        return {}

    # -- assistant.threads.setSuggestedPrompts / setTitle -----------------------------------
    #
    # Slack's method pages: both need `assistant:write`; errors channel_not_found (an invalid
    # channel_id), invalid_thread_ts ("Thread not found"), and for prompts message_not_found.
    # setSuggestedPrompts takes up to four prompts, each with `title` and `message`, and an
    # optional list `title`; "The thread_ts parameter should only be used in the legacy
    # assistant messaging experience. Including it in a call for an agent app will cause the
    # call to silently fail" (the prompts "now live at the top of the Messages tab", Slack's
    # "Migrating to the Agent messaging experience"). setTitle needs channel_id, thread_ts and
    # title.

    def _assistant_thread(
        self, params: dict[str, Any], *, required: bool
    ) -> tuple[_Channel, str | None]:
        """The conversation (one the bot can see) and the thread parent `thread_ts` names."""
        ch = self._channel_visible(params, "channel_id")
        raw = params.get("thread_ts")
        if not raw:
            if required:
                raise SlackError("invalid_thread_ts")
            return ch, None
        try:
            msg = ch.messages.get(us_to_ts(ts_to_us(str(raw))))
        except ValueError:
            msg = None
        if msg is None or self._is_reply(msg):
            raise SlackError("invalid_thread_ts")
        return ch, msg["ts"]

    def _api_assistant_threads_set_suggested_prompts(
        self, params: dict[str, Any]
    ) -> dict[str, Any]:
        ch, thread_ts = self._assistant_thread(params, required=False)
        prompts = self._json_arg(params, "prompts")
        if (
            not isinstance(prompts, list)
            or not 1 <= len(prompts) <= 4
            or any(
                not isinstance(p, dict)
                or set(p) - {"title", "message"}
                or not all(isinstance(p.get(k), str) and p[k] for k in ("title", "message"))
                for p in prompts
            )
        ):
            raise SlackError("invalid_arguments")
        title = params.get("title")
        record = {
            "channel_id": ch.id,
            "thread_ts": thread_ts,
            "prompts": copy.deepcopy(prompts),
            "title": title,
            "_at": self.now,
        }
        if thread_ts is not None and self.agent_view:
            record["_dropped"] = True  # accepted, never shown (the documented silent failure)
        else:
            shown = {"prompts": copy.deepcopy(prompts), "title": title}
            self.suggested_prompts[ch.id if thread_ts is None else f"{ch.id}:{thread_ts}"] = shown
        self.prompt_calls.append(record)
        return {}

    def _api_assistant_threads_set_title(self, params: dict[str, Any]) -> dict[str, Any]:
        ch, thread_ts = self._assistant_thread(params, required=True)
        assert thread_ts is not None
        title = params.get("title")
        if not isinstance(title, str) or not title.strip():
            raise SlackError("invalid_arguments")
        self.titles[(ch.id, thread_ts)] = title
        self.title_calls.append(
            {"channel_id": ch.id, "thread_ts": thread_ts, "title": title, "_at": self.now}
        )
        return {}


_METHODS: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": FakeSlack._api_auth_test,
    "oauth.v2.access": FakeSlack._api_oauth_v2_access,
    "conversations.replies": FakeSlack._api_conversations_replies,
    "conversations.history": FakeSlack._api_conversations_history,
    "conversations.info": FakeSlack._api_conversations_info,
    "conversations.members": FakeSlack._api_conversations_members,
    "conversations.join": FakeSlack._api_conversations_join,
    "users.info": FakeSlack._api_users_info,
    "chat.postMessage": FakeSlack._api_chat_post_message,
    "chat.startStream": FakeSlack._api_chat_start_stream,
    "chat.appendStream": FakeSlack._api_chat_append_stream,
    "chat.stopStream": FakeSlack._api_chat_stop_stream,
    "chat.postEphemeral": FakeSlack._api_chat_post_ephemeral,
    "chat.update": FakeSlack._api_chat_update,
    "chat.getPermalink": FakeSlack._api_chat_get_permalink,
    "views.publish": FakeSlack._api_views_publish,
    "views.open": FakeSlack._api_views_open,
    "reactions.add": FakeSlack._api_reactions_add,
    "assistant.threads.setStatus": FakeSlack._api_assistant_threads_set_status,
    "assistant.threads.setSuggestedPrompts": FakeSlack._api_assistant_threads_set_suggested_prompts,
    "assistant.threads.setTitle": FakeSlack._api_assistant_threads_set_title,
}


def _parse_body(content_type: str, body: bytes) -> dict[str, Any]:
    kind = content_type.split(";", 1)[0].strip().lower()
    if not body:
        return {}
    if kind == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SlackError("invalid_json") from exc
        if not isinstance(data, dict):
            raise SlackError("invalid_json")
        return data
    if kind == "multipart/form-data":
        message = BytesParser(policy=HTTP_POLICY).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        out: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            payload = part.get_payload(decode=True) or b""
            if part.get_filename():
                out[str(name)] = payload
            else:
                out[str(name)] = payload.decode("utf-8", errors="replace")
        return out
    return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}


def _make_handler(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "FakeSlack/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(
            self, status: int, body: bytes, content_type: str, headers: dict[str, str]
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, data: dict[str, Any], headers: dict[str, str]) -> None:
            body = json.dumps(data).encode("utf-8")
            self._send(status, body, "application/json; charset=utf-8", headers)

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            body = self._read_body()
            if parts.path.startswith("/response/"):
                if self.command != "POST":
                    self._send(405, b"method_not_allowed", "text/plain", {})
                    return
                status, text = fake._handle_response_url(parts.path[len("/response/") :], body)
                self._send(status, text.encode(), "text/plain; charset=utf-8", {})
                return
            if parts.path.startswith("/files-pri/") and self.command == "GET":
                status, content, content_type = fake._serve_file(
                    parts.path, self.headers.get("Authorization")
                )
                self._send(status, content, content_type, {})
                return
            if not parts.path.startswith("/api/"):
                self._send(404, b"not found", "text/plain", {})
                return
            method = parts.path[len("/api/") :].strip("/")
            params: dict[str, Any] = {
                k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()
            }
            try:
                params.update(_parse_body(self.headers.get("Content-Type", ""), body))
            except SlackError as err:
                self._send_json(200, {"ok": False, "error": err.error}, {})
                return
            status, headers, data = fake._handle_api(
                method, params, self.headers.get("Authorization")
            )
            self._send_json(status, data, headers)

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

    return Handler
