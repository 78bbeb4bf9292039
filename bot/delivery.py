"""Every way the bot delivers text to Slack: the answer in the thread (`ThreadReply`), a short
message to a requester (`tell`), and private replies (`ResponseUrl`, `Ephemeral`).

`ThreadReply`: an answer that appears in the thread while the model writes it. In order of
preference: Slack's streaming API (chat.startStream / appendStream / stopStream); a placeholder
message edited at most every UPDATE_INTERVAL seconds (chat.update); one post at the end. Each
step falls back to the next when Slack refuses it; a refusal that will not change
(`channel_type_not_supported`, a missing scope) is remembered in `Refusals`, so later answers in
that kind of conversation skip the call.

The answer's last message ends with the 👍/👎 control (`feedback.control`): Slack's feedback
buttons, or two ordinary buttons where Slack refuses those (`invalid_blocks`): the message is
sent again with the buttons and the refusal remembered in `Refusals` like the others.

A stream is closed before Slack's own limits (about five minutes, STREAM_LIMIT characters) and
the answer continues in a new one; a stream Slack closed anyway is finished with chat.update.
The stream calls never wait out a 429 while the model is writing: the text is gathered and sent
once Slack's Retry-After has passed (or posted at the end).

Progress shows as a status line under the thread (assistant.threads.setStatus, with rotating
`loading_messages`), refreshed while it lasts since Slack drops it after two minutes. The status
line is independent of streaming: when Slack refuses it, a streamed answer still streams; only an
answer that cannot stream shows progress in its placeholder instead.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from bot import feedback
from bot.formatting import (
    build_messages,
    inert_markdown,
    markdown_to_mrkdwn,
    neutralise_pings,
    note_block,
    tail_blocks,
)

log = logging.getLogger(__name__)

STREAM_CHUNK = 200  # characters gathered before an appendStream call
UPDATE_INTERVAL = 1.5  # seconds between chat.update edits of a placeholder (Tier 3 allows ~1/s)
STREAM_LIMIT = 10_000  # characters streamed into one message; the answer continues in a new one
STREAM_MAX_AGE = 240.0  # seconds one stream stays open (Slack closes streams after about 5 min)
STATUS_REFRESH = 60.0  # seconds between status refreshes (Slack drops one after 2 minutes)
REFUSAL_MEMORY = 3600.0  # seconds a permanent refusal is remembered (a reinstall may lift it)
LOADING_MAX = 10  # assistant.threads.setStatus takes at most 10 loading_messages…
LOADING_CHARS = 50  # …of at most 50 characters each
CONTINUED = "(continued in the next message)"
# Where `tell` gives up on the thread and tells the requester privately instead.
_UNDELIVERABLE = {"not_in_channel", "channel_not_found", "is_archived", "restricted_action"}

# Errors that will not go away by asking again in the same kind of conversation.
PERMANENT = frozenset(
    {
        "channel_type_not_supported",
        "method_not_supported_for_channel_type",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
        "access_denied",
    }
)


def conversation_kind(channel: str) -> str:
    """The kind of a conversation from its id: `im` (D…), `group` (G…: private channels and
    group DMs of old) or `channel` (C…: public and private channels)."""
    return {"D": "im", "G": "group"}.get(channel[:1], "channel")


class Refusals:
    """Slack methods that refused a kind of conversation in a workspace for good, remembered for
    `ttl` seconds so later answers do not spend a failing call each. Thread-safe."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, ttl: float = REFUSAL_MEMORY
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._until: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def refused(self, method: str, team_id: str, channel: str) -> bool:
        """Whether `method` refused this kind of conversation lately."""
        key = (method, team_id, conversation_kind(channel))
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return False
            if self._clock() >= until:
                del self._until[key]
                return False
            return True

    def note(self, method: str, team_id: str, channel: str, error: str | None) -> bool:
        """Remember `error` if it is permanent; True when it is."""
        if error not in PERMANENT:
            return False
        self.refuse(method, team_id, channel, str(error))
        return True

    def refuse(self, method: str, team_id: str, channel: str, error: str) -> None:
        """Remember that `method` (or a block element, e.g. `feedback.FEEDBACK_BUTTONS`) is
        refused in this kind of conversation, whatever the error."""
        kind = conversation_kind(channel)
        with self._lock:
            self._until[(method, team_id, kind)] = self._clock() + self._ttl
        log.info("%s refused for %s conversations of %s (%s)", method, kind, team_id, error)


def loading_messages(texts: Sequence[str]) -> list[str]:
    """`texts` within Slack's limits for `loading_messages` (10 of at most 50 characters)."""
    out = []
    for text in texts[:LOADING_MAX]:
        text = text.strip()
        if len(text) > LOADING_CHARS:
            text = text[: LOADING_CHARS - 1].rstrip() + "…"
        if text:
            out.append(text)
    return out


def _safe_cut(text: str) -> int:
    """How much of `text` can be sent now without splitting a word or a `<…>` token."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    opening = text.rfind("<")
    if opening != -1 and ">" not in text[opening:]:
        cut = min(cut, opening)
    return max(cut, 0)


def retry_after(exc: SlackApiError) -> float:
    """The seconds a 429's Retry-After header asks for (1 when it names none)."""
    headers = getattr(exc.response, "headers", None) or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(value[0] if isinstance(value, list) else value))
            except (TypeError, ValueError):
                break
    return 1.0


def impatient(client: WebClient) -> WebClient:
    """The same client without waiting out 429s (the caller decides when to try again)."""
    quick = copy.copy(client)
    quick.retry_handlers = [
        h for h in client.retry_handlers if not isinstance(h, RateLimitErrorRetryHandler)
    ]
    return quick


class ThreadReply:
    """One answer in one thread, delivered as it is written."""

    def __init__(
        self,
        client: WebClient,
        *,
        channel: str,
        thread_ts: str,
        team_id: str,
        user_id: str,
        stream: bool = True,
        clock: Callable[[], float] = time.monotonic,
        refusals: Refusals | None = None,
    ) -> None:
        self._client = client
        self._quick = impatient(client)
        self._channel = channel
        self._thread = thread_ts
        self._team = team_id
        self._user = user_id
        self._clock = clock
        self._refusals = refusals or Refusals(clock)
        self._text = ""
        self._sent = 0  # characters of _text delivered (streams) or shown (placeholder)
        self._ts: str | None = None  # the open stream, or the placeholder
        self._head = 0  # where the open stream's text starts in _text
        self._began = 0.0  # when the open stream started
        self._full = False  # the open stream holds all it may; the rest goes into a new one
        self._start_after = 0.0  # no chat.startStream before this (Slack's Retry-After)
        self._stop_after = 0.0  # no chat.stopStream to rotate before this (likewise)
        self._last_update = 0.0
        self._status_ok = not self._refusals.refused(
            "assistant.threads.setStatus", team_id, channel
        )
        self._status_at: float | None = None
        self._status: tuple[str, list[str]] = ("", [])
        self._control: dict[str, Any] | None = None  # the 👍/👎 block under the answer
        # The text each message of this reply holds in Slack, by ts, as last sent or edited.
        self.delivered: dict[str, str] = {}
        if not stream:
            self._mode = "post"
        elif self._refusals.refused("chat.startStream", team_id, channel):
            self._mode = "update"
        else:
            self._mode = "stream"

    @property
    def mode(self) -> str:
        """stream | update | post | broken | stopped: how the answer is being delivered."""
        return self._mode

    @property
    def placeholder_ts(self) -> str | None:
        """The progress message posted where there is no status line (None: none)."""
        return self._ts if self._mode == "update" else None

    @property
    def posted_ts(self) -> str | None:
        """The ts of the answer's (first) message, once there is one."""
        return self._ts or next(iter(self.delivered), None)

    def adopt(self, placeholder_ts: str | None) -> None:
        """Carry on in the progress message an earlier attempt posted (a deferred job)."""
        if placeholder_ts:
            self._ts = placeholder_ts
            self._mode = "update"

    @property
    def stopped_by_user(self) -> bool:
        """The requester pressed stop on the streamed answer: nothing more is posted."""
        return self._mode == "stopped"

    # -- status ---------------------------------------------------------------------------

    def status(self, text: str, loading: Sequence[str] = ()) -> None:
        """Show progress ("is reading 412 messages…") under the thread, with `loading` messages
        rotating in it; where Slack refuses that and the answer is not streamed, in the
        placeholder. A refused status line never stops the answer from streaming."""
        self._status = (text, loading_messages(loading))
        if self._set_status(*self._status):
            return
        if self._mode == "update":
            self._placeholder(f"_{text[0].upper()}{text[1:]}_" if text else "…")

    def keep_status(self) -> None:
        """Set the status again when it is about to lapse (Slack drops it after two minutes
        without a message); call it during long work."""
        if self._status_at is None or self._ts is not None or self._mode == "stopped":
            return
        if self._clock() - self._status_at >= STATUS_REFRESH:
            self._set_status(*self._status)

    def clear_status(self) -> None:
        """Remove the status line (an empty status clears it)."""
        if self._status_ok and self._status_at is not None:
            self._set_status("", [])
            self._status_at = None

    def _set_status(self, text: str, loading: list[str]) -> bool:
        if not self._status_ok:
            return False
        try:
            self._quick.assistant_threads_setStatus(
                channel_id=self._channel,
                thread_ts=self._thread,
                status=text,
                loading_messages=loading or None,
            )
        except SlackApiError as exc:
            error = exc.response.get("error")
            if self._refusals.note("assistant.threads.setStatus", self._team, self._channel, error):
                self._status_ok = False
            log.info("status line unavailable in %s (%s)", self._channel, error)
            return False
        self._status_at = self._clock()
        return True

    # -- the answer -----------------------------------------------------------------------

    def append(self, piece: str) -> bool:
        """More of the answer arrived; True once the requester has stopped the answer (the
        writer should stop: nothing more will be shown)."""
        self._text += piece
        if self._mode == "stream":
            self._stream_some(final=False)
        elif self._mode == "update":
            if self._ts is None:
                self._placeholder("…")
            elif self._clock() - self._last_update >= UPDATE_INTERVAL:
                self._update_placeholder()
        return self._mode == "stopped"

    def finish(
        self,
        footer: str | None,
        *,
        note: str | None = None,
        text: str | None = None,
        feedback_id: int | None = None,
    ) -> str:
        """The answer is complete; `note` says why it may not be whole. Returns "ok",
        "stopped_by_user" (nothing more was posted) or post_<error>.

        `text` is the whole answer when it was not handed over piece by piece; `feedback_id`
        its ledger row, for the 👍/👎 control under it (None: no control).
        """
        if text is not None and len(text) >= len(self._text):
            self._text = text
        if feedback_id is not None:
            self._control = control_for(self._refusals, self._team, self._channel, feedback_id)
        if self._mode == "stream":
            self._stream_some(final=True)
            unsent = bool(self._text[self._sent :].strip())  # Slack asked to wait: posted below
            if self._mode == "stream" and self._ts is not None:
                blocks = (
                    [note_block(CONTINUED)] if unsent else tail_blocks(note, footer, self._control)
                )
                if self._close_stream(blocks) and not unsent:
                    return "ok"
                if self._mode == "stream":
                    self._mode = "broken"  # the message stays as it is; the rest is posted
        if self._mode == "stopped":
            return "stopped_by_user"
        if self._mode == "update" and self._ts is not None:
            outcome = self._final_update(footer, note)
            if outcome is not None:
                return outcome
        if self._sent and self._mode in ("stream", "broken"):
            return self._post_rest(footer, note)
        return self._post_parts(self._text, footer, note)

    def fail(self, text: str) -> bool:
        """Say what went wrong in the placeholder, if there is one; False when there is none."""
        if self._mode == "stopped":
            return True  # the requester stopped the answer: nothing more to say
        self.clear_status()
        if self._mode == "update" and self._ts is not None:
            return self._edit(self._ts, text)
        return False

    # -- streaming ------------------------------------------------------------------------

    def _stream_some(self, *, final: bool) -> None:
        """Send what can be sent, closing the open stream and starting a new one when it is
        too old or full."""
        while self._mode == "stream":
            now = self._clock()
            rotate = (
                self._ts is not None
                and now >= self._stop_after
                and (self._full or now - self._began >= STREAM_MAX_AGE)
            )
            head = self._sent if self._ts is None or rotate else self._head
            end = len(self._text) if final else _safe_cut(self._text)
            limit = head + STREAM_LIMIT
            clipped = end > limit
            if clipped:
                cut = _safe_cut(self._text[:limit])
                end = cut if cut > self._sent else limit
            if end - self._sent < (1 if final else STREAM_CHUNK):
                return
            if rotate:
                self._close_stream([note_block(CONTINUED)], rotating=True)
                if self._mode != "stream":
                    return
                if self._ts is not None:  # Slack asked to wait: keep this stream a while longer
                    continue
            if not self._send(self._text[self._sent : end]):
                return
            self._full = clipped
            if not clipped:
                return

    def _send(self, piece: str) -> bool:
        """Deliver `piece` into the open stream, or a new one; False when it was not sent."""
        markdown = inert_markdown(piece)
        if self._ts is None:
            if self._clock() < self._start_after:
                return False  # Slack asked to wait: gather the text meanwhile
            try:
                resp = self._quick.chat_startStream(
                    channel=self._channel,
                    thread_ts=self._thread,
                    markdown_text=markdown,
                    recipient_team_id=self._team,
                    recipient_user_id=self._user,
                )
            except SlackApiError as exc:
                return self._stream_refused("chat.startStream", exc, piece)
            self._ts, self._head, self._full = resp["ts"], self._sent, False
            self._began = self._clock()
            self.delivered[resp["ts"]] = markdown
        else:
            try:
                self._quick.chat_appendStream(
                    channel=self._channel, ts=self._ts, markdown_text=markdown
                )
            except SlackApiError as exc:
                return self._stream_refused("chat.appendStream", exc, piece)
            self.delivered[self._ts] = self.delivered.get(self._ts, "") + markdown
        self._sent += len(piece)
        return True

    def _stream_refused(self, method: str, exc: SlackApiError, piece: str) -> bool:
        """Slack refused a stream call: wait, continue in a new stream, or fall back."""
        error = str(exc.response.get("error"))
        if error == "stopped_by_user":
            self._user_stopped()
            return False
        if exc.response.status_code == 429 or error == "ratelimited":
            wait = retry_after(exc)
            log.info("%s rate-limited in %s; trying again in %.0fs", method, self._channel, wait)
            if method == "chat.startStream":
                self._start_after = self._clock() + wait
            return False
        if method == "chat.appendStream" and error == "message_not_in_streaming_state":
            log.info("Slack closed the stream in %s; continuing in a new one", self._channel)
            self._finalise(self._ts, self._text[self._head : self._sent], [note_block(CONTINUED)])
            self._ts = None
            return self._send(piece)
        log.warning("streaming in %s failed (%s)", self._channel, error)
        if method == "chat.startStream":
            self._refusals.note(method, self._team, self._channel, error)
        if self._ts is not None or self._sent:
            self._mode = "broken"  # what was streamed stays; the rest is posted at the end
            if self._ts is not None:
                self._close_stream(None)
        else:
            self._mode = "update"
            self._placeholder("…")
        return False

    def _close_stream(self, blocks: list[dict[str, Any]] | None, *, rotating: bool = False) -> bool:
        """Stop the open stream with `blocks` under it; True when the message is finished.
        `rotating`: the model is still writing, so a 429 is not waited out: the stream stays
        open (and takes more text) until Slack's Retry-After has passed."""
        ts, text, full = self._ts, self._text[self._head : self._sent], self._full
        self._ts, self._full = None, False
        if ts is None:
            return False
        client = self._quick if rotating else self._client
        try:
            self._with_control(
                lambda b: client.chat_stopStream(channel=self._channel, ts=ts, blocks=b or None),
                blocks,
            )
            return True
        except SlackApiError as exc:
            error = exc.response.get("error")
            if rotating and (exc.response.status_code == 429 or error == "ratelimited"):
                self._ts, self._full = ts, full
                self._stop_after = self._clock() + max(1.0, retry_after(exc))
                return False
            if error == "stopped_by_user":
                self._user_stopped()
                return False
            if error == "message_not_in_streaming_state":  # Slack closed it: finish it by hand
                return self._finalise(ts, text, blocks)
            log.warning("stopping the stream in %s failed: %s", self._channel, error)
            return False

    def _finalise(self, ts: str | None, text: str, blocks: list[dict[str, Any]] | None) -> bool:
        """Rewrite a stream message Slack closed on its own: its text, then `blocks`."""
        if ts is None:
            return False
        part = build_messages(text, None, limit=1)[0]
        extra = blocks or []
        fallback = "\n\n".join([part.text, *(b["text"]["text"] for b in extra if "text" in b)])
        return self._edit(ts, fallback, [*part.blocks, *extra])

    def _user_stopped(self) -> None:
        log.info("the requester stopped the answer in %s", self._channel)
        self._mode = "stopped"
        self._ts = None

    def _post_rest(self, footer: str | None, note: str | None) -> str:
        rest = self._text[self._sent :]
        if not rest.strip() and not note:
            rest = "_(end of answer)_"
        return self._post_parts(rest, footer, note)

    # -- placeholder ----------------------------------------------------------------------

    def _placeholder(self, text: str) -> None:
        if self._ts is not None and self._mode == "update":
            self._edit(self._ts, text)
            return
        try:
            resp = self._client.chat_postMessage(
                channel=self._channel, thread_ts=self._thread, text=text
            )
            self._ts = resp["ts"]
            self.delivered[resp["ts"]] = text
            self._mode = "update"
        except SlackApiError as exc:
            log.warning("placeholder in %s failed: %s", self._channel, exc.response.get("error"))
            self._mode = "post"

    def _edit(self, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> bool:
        try:
            self._with_control(
                lambda b: self._client.chat_update(
                    channel=self._channel, ts=ts, text=text, blocks=b
                ),
                blocks,
            )
            self._last_update = self._clock()
            self.delivered[ts] = text
            return True
        except SlackApiError as exc:
            log.info("chat.update in %s failed: %s", self._channel, exc.response.get("error"))
            return False

    def _update_placeholder(self) -> None:
        shown = markdown_to_mrkdwn(self._text[: _safe_cut(self._text)])
        if shown and self._ts is not None and not self._edit(self._ts, f"{shown[:3800]} …"):
            self._mode = "post"

    def _final_update(self, footer: str | None, note: str | None) -> str | None:
        parts = build_messages(self._text, footer, note=note, control=self._control)
        if self._ts is None or not self._edit(self._ts, parts[0].text, parts[0].blocks):
            self._mode = "post"
            return None
        for part in parts[1:]:
            outcome = self._post(part.text, part.blocks)
            if outcome != "ok":
                return outcome
        return "ok"

    def _with_control(
        self,
        call: Callable[[list[dict[str, Any]] | None], Any],
        blocks: list[dict[str, Any]] | None,
    ) -> Any:
        """`call(blocks)`, falling back to the 👍/👎 buttons where Slack refuses the feedback
        buttons (`with_control`); later messages of this reply use the buttons then."""

        def sent(b: list[dict[str, Any]] | None) -> Any:
            resp = call(b)
            if b is not blocks and b is not None:
                self._control = feedback.control_of(b)
            return resp

        return with_control(sent, blocks, self._refusals, self._team, self._channel)

    # -- single posts ---------------------------------------------------------------------

    def _post_parts(self, text: str, footer: str | None, note: str | None) -> str:
        for part in build_messages(text, footer, note=note, control=self._control):
            outcome = self._post(part.text, part.blocks)
            if outcome != "ok":
                return outcome
        return "ok"

    def _post(self, text: str, blocks: list[dict[str, Any]]) -> str:
        try:
            resp = self._with_control(
                lambda b: self._client.chat_postMessage(
                    channel=self._channel,
                    thread_ts=self._thread,
                    text=text,
                    blocks=b,
                    unfurl_links=False,
                    unfurl_media=False,
                ),
                blocks,
            )
            self.delivered[resp["ts"]] = text
            return "ok"
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            log.warning("posting answer in %s failed: %s", self._channel, error)
            if error in ("invalid_blocks", "msg_too_long", "msg_blocks_too_long"):
                try:
                    resp = self._client.chat_postMessage(
                        channel=self._channel,
                        thread_ts=self._thread,
                        text=text[:3900],
                        unfurl_links=False,
                        unfurl_media=False,
                    )
                    self.delivered[resp["ts"]] = text[:3900]
                    return "ok"
                except SlackApiError as again:
                    error = str(again.response.get("error"))
            return f"post_{error}"


def with_control(
    call: Callable[[list[dict[str, Any]] | None], Any],
    blocks: list[dict[str, Any]] | None,
    refusals: Refusals,
    team_id: str,
    channel: str,
) -> Any:
    """`call(blocks)` (a Web API call); when Slack refuses the blocks (`invalid_blocks`) and
    they hold the feedback buttons, the same call with two ordinary buttons instead, and the
    refusal remembered once that works (a refusal of something else in the blocks is not
    blamed on the feedback buttons: the second call fails too, and nothing is remembered)."""
    try:
        return call(blocks)
    except SlackApiError as exc:
        error = str(exc.response.get("error"))
        fallback = None
        if error == "invalid_blocks" and _blames_control(exc, blocks):
            fallback = feedback.as_buttons(blocks)
        if fallback is None:
            raise
        resp = call(fallback)
        refusals.refuse(feedback.FEEDBACK_BUTTONS, team_id, channel, error)
        return resp


def _blames_control(exc: SlackApiError, blocks: list[dict[str, Any]] | None) -> bool:
    """Whether Slack's `invalid_blocks` may be about the 👍/👎 control: its messages point at
    the block they refuse (`[json-pointer:/blocks/3/type]`); without them, it may."""
    meta = exc.response.get("response_metadata") or {}
    messages = [*(exc.response.get("errors") or []), *(meta.get("messages") or [])]
    pointers = [m for m in map(str, messages) if "json-pointer:/blocks/" in m]
    if not pointers or not blocks:
        return True
    at = [i for i, b in enumerate(blocks) if feedback.is_control(b)]
    return any(re.search(rf"json-pointer:/blocks/{i}[/\]]", m) for i in at for m in pointers)


def control_for(refusals: Refusals, team_id: str, channel: str, usage_id: int) -> dict[str, Any]:
    """The 👍/👎 control for an answer in `channel`: the feedback buttons, or the ordinary
    buttons where Slack refused those lately."""
    refused = refusals.refused(feedback.FEEDBACK_BUTTONS, team_id, channel)
    return feedback.control(usage_id, buttons=refused)


def tell(
    client: WebClient, channel: str, thread_ts: str, user: str, text: str, *, private: bool = False
) -> None:
    """A short message to the requester in the thread; ephemeral or DM when that fails.

    `private`: only the requester sees it (ephemeral in the thread, else a DM).
    """
    text = neutralise_pings(text)
    try:
        if not private:
            client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text)
            return
    except SlackApiError as exc:
        error = exc.response.get("error")
        if error not in _UNDELIVERABLE:
            log.error("could not tell user in %s: %s", channel, error)
            return
    try:
        client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread_ts, text=text)
        return
    except SlackApiError as exc:
        log.info(
            "ephemeral in %s failed (%s); sending a DM",
            channel,
            exc.response.get("error"),
        )
    try:
        client.chat_postMessage(channel=user, text=text)
    except SlackApiError as exc:
        log.error("could not reach user %s at all: %s", user, exc.response.get("error"))


class Responder(Protocol):
    """Somewhere to tell the requester privately."""

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> str | None:
        """Show `text` (and `blocks`); None when shown, else why not (`invalid_blocks`, …)."""
        ...


class ResponseUrl:
    """Ephemeral replies through a command's or action's response_url."""

    def __init__(self, url: str, *, fallback: Responder | None = None) -> None:
        self._hook = WebhookClient(url, timeout=15)
        self._fallback = fallback  # when the URL no longer takes messages (30 minutes, 5 uses)

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> str | None:
        resp = self._hook.send(
            text=text, blocks=blocks, response_type="ephemeral", replace_original=replace
        )
        if resp.status_code == 200:
            return None
        error = (resp.body or "").strip()[:60] or str(resp.status_code)
        log.warning("response_url answered %s (%s)", resp.status_code, error)
        if error == "invalid_blocks":
            return error  # another URL would refuse the same blocks
        if self._fallback is not None:
            return self._fallback.send(text, blocks)
        return error


class Ephemeral:
    """Ephemeral messages in a thread (chat.postEphemeral), else through the response_url."""

    def __init__(
        self, client: WebClient, channel: str, user: str, thread_ts: str, fallback: str | None
    ) -> None:
        self._client, self._channel, self._user, self._thread = client, channel, user, thread_ts
        self._fallback = ResponseUrl(fallback) if fallback else None

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> str | None:
        try:
            self._client.chat_postEphemeral(
                channel=self._channel,
                user=self._user,
                thread_ts=self._thread or None,
                text=text,
                blocks=blocks,
            )
            return None
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            log.info("postEphemeral failed (%s); using response_url", error)
            if error == "invalid_blocks" or self._fallback is None:
                return error
            return self._fallback.send(text, blocks, replace=replace)


class InThread:
    """Replies in a thread everyone in it sees (the bot's DM, where that is only the asker):
    the first message is posted, each later one with `replace` edits it (a progress note
    becomes the result), others are posted after it. `delivered` holds the text of each."""

    def __init__(
        self, client: WebClient, channel: str, thread_ts: str, ts: str | None = None
    ) -> None:
        self._client, self._channel, self._thread = client, channel, thread_ts
        self.ts = ts  # the message a `replace` edits (carried over by a deferred job)
        self.delivered: dict[str, str] = {}

    def status(self, text: str, loading: Sequence[str] = ()) -> None:
        """A status line under the thread until the next message (best effort)."""
        try:
            impatient(self._client).assistant_threads_setStatus(
                channel_id=self._channel,
                thread_ts=self._thread,
                status=text,
                loading_messages=loading_messages(loading) or None,
            )
        except SlackApiError as exc:
            log.info("status line unavailable in %s (%s)", self._channel, exc.response.get("error"))

    def send(
        self, text: str, blocks: list[dict[str, Any]] | None = None, *, replace: bool = False
    ) -> str | None:
        text = neutralise_pings(text)
        if replace and self.ts is not None:
            try:
                self._client.chat_update(
                    channel=self._channel, ts=self.ts, text=text, blocks=blocks
                )
                self.delivered[self.ts] = text
                return None
            except SlackApiError as exc:
                log.info("chat.update in %s failed: %s", self._channel, exc.response.get("error"))
        try:
            resp = self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread,
                text=text,
                blocks=blocks,
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            log.warning("posting in %s failed: %s", self._channel, error)
            return error
        self.ts = resp["ts"]
        self.delivered[resp["ts"]] = text
        return None
