"""An answer that appears in the thread while the model writes it.

In order of preference: Slack's streaming API (chat.startStream / appendStream / stopStream);
a placeholder message edited at most every UPDATE_INTERVAL seconds (chat.update); one post
at the end. Each step falls back to the next when Slack refuses it. Progress shows first as a
status line under the thread (assistant.threads.setStatus), or in the placeholder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.replies import build_messages, inert_markdown, markdown_to_mrkdwn

log = logging.getLogger(__name__)

STREAM_CHUNK = 200  # characters gathered before an appendStream call
UPDATE_INTERVAL = 1.5  # seconds between chat.update edits of a placeholder (Tier 3 allows ~1/s)
STREAM_LIMIT = 10_000  # characters streamed into one message; the rest is posted after it


def _safe_cut(text: str) -> int:
    """How much of `text` can be sent now without splitting a word or a `<…>` token."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    opening = text.rfind("<")
    if opening != -1 and ">" not in text[opening:]:
        cut = min(cut, opening)
    return max(cut, 0)


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
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread = thread_ts
        self._team = team_id
        self._user = user_id
        self._clock = clock
        self._text = ""
        self._sent = 0  # characters of _text delivered (stream) or shown (placeholder)
        self._ts: str | None = None
        self._mode = "stream" if stream else "post"
        self._last_update = 0.0
        self._status_ok = True

    @property
    def mode(self) -> str:
        """stream | update | post: how the answer is being delivered."""
        return self._mode

    def status(self, text: str) -> None:
        """Show progress ("is reading 412 messages…") under the thread, else in a placeholder."""
        if self._status_ok:
            try:
                self._client.assistant_threads_setStatus(
                    channel_id=self._channel, thread_ts=self._thread, status=text
                )
                return
            except SlackApiError as exc:
                log.info(
                    "status line unavailable in %s (%s); using a placeholder",
                    self._channel,
                    exc.response.get("error"),
                )
                self._status_ok = False
        self._placeholder(f"_{text[0].upper()}{text[1:]}_" if text else "…")

    def clear_status(self) -> None:
        """Remove the status line (an empty status clears it)."""
        if self._status_ok:
            try:
                self._client.assistant_threads_setStatus(
                    channel_id=self._channel, thread_ts=self._thread, status=""
                )
            except SlackApiError:
                pass

    def append(self, piece: str) -> None:
        """More of the answer arrived."""
        self._text += piece
        if self._mode == "stream":
            self._stream_some(final=False)
        elif self._mode == "update" and self._clock() - self._last_update >= UPDATE_INTERVAL:
            self._update_placeholder()

    def finish(
        self, footer: str | None, *, note: str | None = None, text: str | None = None
    ) -> str:
        """The answer is complete (or broke: `note` says so). Returns "ok" or post_<error>.

        `text` is the whole answer when it was not handed over piece by piece.
        """
        if text is not None and len(text) >= len(self._text):
            self._text = text
        full = self._text if not note else f"{self._text.rstrip()}\n\n_{note}_"
        if self._mode == "stream":
            outcome = self._stop_stream(full, footer, note)
            if outcome is not None:
                return outcome
        if self._mode == "update" and self._ts is not None:
            outcome = self._final_update(full, footer)
            if outcome is not None:
                return outcome
        return self._post_all(full, footer)

    # -- streaming ------------------------------------------------------------------------

    def _stream_some(self, *, final: bool) -> None:
        cut = len(self._text) if final else _safe_cut(self._text)
        cut = min(cut, STREAM_LIMIT)
        if cut - self._sent < (1 if final else STREAM_CHUNK):
            return
        piece = inert_markdown(self._text[self._sent : cut])
        try:
            if self._ts is None:
                resp = self._client.chat_startStream(
                    channel=self._channel,
                    thread_ts=self._thread,
                    markdown_text=piece,
                    recipient_team_id=self._team,
                    recipient_user_id=self._user,
                )
                self._ts = resp["ts"]
            else:
                self._client.chat_appendStream(
                    channel=self._channel, ts=self._ts, markdown_text=piece
                )
            self._sent = cut
        except SlackApiError as exc:
            error = exc.response.get("error")
            log.warning(
                "streaming in %s failed (%s); editing a placeholder instead", self._channel, error
            )
            if self._ts is not None:
                self._mode = "broken"  # the streamed part stays; the rest is posted at the end
            else:
                self._mode = "update"
                self._placeholder("…")

    def _stop_stream(self, text: str, footer: str | None, note: str | None) -> str | None:
        self._text = text
        if self._sent < min(len(self._text), STREAM_LIMIT):
            self._stream_some(final=True)
        if self._mode != "stream" or self._ts is None:
            return None if self._mode != "broken" else self._post_rest(footer)
        longer = len(self._text) > self._sent  # the rest goes into posts after this message
        blocks = None if longer else _footer_blocks(footer)
        try:
            self._client.chat_stopStream(channel=self._channel, ts=self._ts, blocks=blocks)
        except SlackApiError as exc:
            log.warning(
                "stopping the stream in %s failed: %s", self._channel, exc.response.get("error")
            )
            self._mode = "broken"
            return self._post_rest(footer)
        if longer:
            return self._post_parts(self._text[self._sent :], footer)
        return "ok"

    def fail(self, text: str) -> bool:
        """Say what went wrong in the placeholder, if there is one; False when there is none."""
        if self._mode == "post" and self._ts is None:
            return False
        self.clear_status()
        if self._mode == "update" and self._ts is not None:
            return self._edit(text)
        return False

    def _post_rest(self, footer: str | None) -> str:
        rest = self._text[self._sent :]
        if not rest.strip():
            rest = "_(end of answer)_"
        return self._post_parts(rest, footer)

    # -- placeholder ----------------------------------------------------------------------

    def _placeholder(self, text: str) -> None:
        if self._ts is not None and self._mode == "update":
            self._edit(text)
            return
        try:
            resp = self._client.chat_postMessage(
                channel=self._channel, thread_ts=self._thread, text=text
            )
            self._ts = resp["ts"]
            self._mode = "update"
        except SlackApiError as exc:
            log.warning("placeholder in %s failed: %s", self._channel, exc.response.get("error"))
            self._mode = "post"

    def _edit(self, text: str, blocks: list[dict[str, Any]] | None = None) -> bool:
        try:
            self._client.chat_update(channel=self._channel, ts=self._ts, text=text, blocks=blocks)
            self._last_update = self._clock()
            return True
        except SlackApiError as exc:
            log.info("chat.update in %s failed: %s", self._channel, exc.response.get("error"))
            return False

    def _update_placeholder(self) -> None:
        shown = markdown_to_mrkdwn(self._text[: _safe_cut(self._text)])
        if shown and not self._edit(f"{shown[:3800]} …"):
            self._mode = "post"

    def _final_update(self, text: str, footer: str | None) -> str | None:
        parts = build_messages(text, footer)
        if not self._edit(parts[0].text, parts[0].blocks):
            self._mode = "post"
            return None
        for part in parts[1:]:
            outcome = self._post(part.text, part.blocks)
            if outcome != "ok":
                return outcome
        return "ok"

    # -- single posts ---------------------------------------------------------------------

    def _post_all(self, text: str, footer: str | None) -> str:
        return self._post_parts(text, footer)

    def _post_parts(self, text: str, footer: str | None) -> str:
        for part in build_messages(text, footer):
            outcome = self._post(part.text, part.blocks)
            if outcome != "ok":
                return outcome
        return "ok"

    def _post(self, text: str, blocks: list[dict[str, Any]]) -> str:
        try:
            self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread,
                text=text,
                blocks=blocks,
                unfurl_links=False,
                unfurl_media=False,
            )
            return "ok"
        except SlackApiError as exc:
            error = str(exc.response.get("error"))
            log.warning("posting answer in %s failed: %s", self._channel, error)
            if error in ("invalid_blocks", "msg_too_long", "msg_blocks_too_long"):
                try:
                    self._client.chat_postMessage(
                        channel=self._channel,
                        thread_ts=self._thread,
                        text=text[:3900],
                        unfurl_links=False,
                        unfurl_media=False,
                    )
                    return "ok"
                except SlackApiError as again:
                    error = str(again.response.get("error"))
            return f"post_{error}"


def _footer_blocks(footer: str | None) -> list[dict[str, Any]] | None:
    if not footer:
        return None
    return [{"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]}]
