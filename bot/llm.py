"""Client for an Anthropic-format `POST /v1/messages` endpoint (Anthropic or a relay).

Errors are one class, `LLMError`, whose `kind` says what went wrong:
    auth | billing | permission | rate_limited | overloaded | too_large | bad_request |
    not_found | server | timeout | connection | bad_response
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.pricing import Usage

log = logging.getLogger(__name__)

# Takes each piece of a streamed answer; returns True to stop reading (the stream is closed).
OnText = Callable[[str], bool | None]

ANTHROPIC_VERSION = "2023-06-01"
_MAX_RETRY_AFTER = 60.0

_KIND_BY_STATUS = {
    400: "bad_request",
    401: "auth",
    402: "billing",
    403: "permission",
    404: "not_found",
    408: "timeout",
    413: "too_large",
    429: "rate_limited",
    500: "server",
    502: "server",
    503: "overloaded",
    504: "timeout",
    529: "overloaded",
}
_KIND_BY_TYPE = {
    "authentication_error": "auth",
    "billing_error": "billing",
    "permission_error": "permission",
    "not_found_error": "not_found",
    "request_too_large": "too_large",
    "rate_limit_error": "rate_limited",
    "overloaded_error": "overloaded",
    "api_error": "server",
    "timeout_error": "timeout",
}


@dataclass
class _Stream:
    """What a streamed answer has said so far."""

    model: str
    on_text: OnText
    parts: list[str] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    explanation: str | None = None
    stopped: bool = False  # `on_text` asked to stop reading (the requester pressed stop)

    def take(self, kind: str, data: dict[str, Any]) -> bool:
        """Take one event of type `kind`; True once the message is complete or `on_text` asked
        to stop reading. Raises LLMError (with the text so far) on an error event."""
        if kind == "message_start":
            message = data.get("message") or {}
            self.model = str(message.get("model") or self.model)
            self.usage.update(message.get("usage") or {})
        elif kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                self.parts.append(delta["text"])
                if self.on_text(delta["text"]):
                    self.stopped = True
                    return True
        elif kind == "message_delta":
            delta = data.get("delta") or {}
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            self.explanation = _explanation(delta.get("stop_details")) or self.explanation
            for key, value in (data.get("usage") or {}).items():
                if value is not None:
                    self.usage[key] = value
        elif kind == "error":
            err = data.get("error") or {}
            error = LLMError(
                _KIND_BY_TYPE.get(str(err.get("type")), "server"),
                f"stream error {err.get('type')}: {str(err.get('message'))[:200]}",
                status=200,
            )
            error.partial = "".join(self.parts)
            raise error
        return kind == "message_stop"


class LLMError(Exception):
    """A call to the Messages endpoint failed; `kind` classifies it, `detail` is for operators."""

    def __init__(self, kind: str, detail: str, *, status: int | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.partial = ""  # text already streamed when a stream broke
        self.usage_id: int | None = None  # the ledger row that recorded the failure, if any


@dataclass(frozen=True)
class Completion:
    """A model answer and what it cost in tokens."""

    text: str
    usage: Usage
    model: str
    stop_reason: str | None
    request_id: str | None = None
    stop_explanation: str | None = None  # stop_details.explanation (a refusal's reason), if any
    stopped: bool = False  # the reader stopped before the end (stop_reason None, usage so far)


def parse_usage(raw: dict[str, Any] | None) -> Usage:
    """Usage from a response's `usage`; absent or null counts become 0."""
    raw = raw or {}

    def num(value: Any) -> int:
        return int(value) if isinstance(value, int | float) else 0

    creation = raw.get("cache_creation") if isinstance(raw.get("cache_creation"), dict) else {}
    return Usage(
        input_tokens=num(raw.get("input_tokens")),
        cache_creation_tokens=num(raw.get("cache_creation_input_tokens")),
        cache_read_tokens=num(raw.get("cache_read_input_tokens")),
        output_tokens=num(raw.get("output_tokens")),
        creation_5m=num(creation.get("ephemeral_5m_input_tokens")),
        creation_1h=num(creation.get("ephemeral_1h_input_tokens")),
    )


def _explanation(details: Any) -> str | None:
    """The human-readable `explanation` of a `stop_details` object (refusals); may be absent."""
    if isinstance(details, dict) and isinstance(details.get("explanation"), str):
        return details["explanation"].strip()[:300] or None
    return None


def _error_from_response(resp: httpx.Response) -> LLMError:
    """Classify an error response in Anthropic's shape, OpenAI's shape, or neither."""
    err_type = ""
    message = ""
    try:
        body = resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        err_type = str(err.get("type") or err.get("code") or "")
        message = str(err.get("message") or "")
    elif isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        ctype = resp.headers.get("content-type", "")
        message = f"non-JSON error body ({ctype or 'no content-type'})"
    kind = _KIND_BY_TYPE.get(err_type) or _KIND_BY_STATUS.get(resp.status_code)
    if kind is None:
        kind = "server" if resp.status_code >= 500 else "bad_request"
    if kind == "bad_request" and "too long" in message.lower():
        kind = "too_large"
    detail = f"HTTP {resp.status_code} {err_type or '-'}: {message[:300]}"
    return LLMError(kind, detail, status=resp.status_code)


def _retry_after(resp: httpx.Response) -> float | None:
    ms = resp.headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class MessagesClient:
    """One long-lived HTTP client for `POST {base}/v1/messages`, with retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "x-api-key": api_key,
                "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json",
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )
        self._max_retries = max_retries
        self._sleep = sleep

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def create(self, body: dict[str, Any], on_text: OnText | None = None) -> Completion:
        """Send one request; retry what is worth retrying; raise LLMError.

        With `on_text`, the answer is streamed (server-sent events) and each piece of text is
        handed over as it arrives; a stream that breaks after text arrived is not retried (the
        error carries the text received in `partial`). When `on_text` returns True the stream is
        closed there: the model stops generating, and the Completion is `stopped`, with the
        usage known so far.
        """
        attempt = 0
        while True:
            try:
                if on_text is None:
                    resp = self._client.post("/v1/messages", json=body)
                    if resp.status_code == 200:
                        return self._parse(resp, body)
                    error = _error_from_response(resp)
                else:
                    with self._client.stream(
                        "POST", "/v1/messages", json={**body, "stream": True}
                    ) as resp:
                        if resp.status_code == 200:
                            return self._consume(resp, body, on_text)
                        resp.read()
                        error = _error_from_response(resp)
            except httpx.TimeoutException as exc:
                error = LLMError("timeout", f"{type(exc).__name__}")
                resp = None
            except httpx.TransportError as exc:
                error = LLMError("connection", f"{type(exc).__name__}")
                resp = None
            if attempt >= self._max_retries or not self._should_retry(resp):
                raise error
            delay = self._delay(resp, attempt)
            log.warning(
                "messages call failed (%s), retry %d/%d in %.1fs",
                error.detail,
                attempt + 1,
                self._max_retries,
                delay,
            )
            self._sleep(delay)
            attempt += 1

    @staticmethod
    def _should_retry(resp: httpx.Response | None) -> bool:
        if resp is None:
            return True
        header = resp.headers.get("x-should-retry", "").lower()
        if header in ("true", "false"):
            return header == "true"
        return resp.status_code in (408, 409, 429) or resp.status_code >= 500

    @staticmethod
    def _delay(resp: httpx.Response | None, attempt: int) -> float:
        if resp is not None:
            after = _retry_after(resp)
            if after is not None and 0 <= after <= _MAX_RETRY_AFTER:
                return after
        return min(0.5 * 2**attempt, 8.0) * (1 - 0.25 * random.random())

    @staticmethod
    def _consume(resp: httpx.Response, body: dict[str, Any], on_text: OnText) -> Completion:
        """Read an SSE stream: text deltas go to `on_text`; usage from start and delta events.
        Stops at message_stop, or when `on_text` asks (the caller's `with` then closes it)."""
        stream = _Stream(str(body.get("model")), on_text)
        event_name = ""
        try:
            for line in resp.iter_lines():
                if line.startswith("event:"):
                    event_name = line[6:].strip()
                    continue
                if not line.startswith("data:"):
                    continue
                try:
                    data = json.loads(line[5:].strip())
                except ValueError:
                    continue
                if stream.take(data.get("type") or event_name, data):
                    break
        except httpx.TransportError as exc:
            error = LLMError("connection", f"stream broke: {type(exc).__name__}", status=200)
            error.partial = "".join(stream.parts)
            raise error from None
        text = "".join(stream.parts)
        if stream.stopped:  # output so far: as last reported, or estimated from the text
            reported = parse_usage(stream.usage).output_tokens
            stream.usage["output_tokens"] = max(reported, -(-len(text) // 4))
        return Completion(
            text=text,
            usage=parse_usage(stream.usage),
            model=stream.model,
            stop_reason=None if stream.stopped else stream.stop_reason,
            request_id=resp.headers.get("request-id"),
            stop_explanation=stream.explanation,
            stopped=stream.stopped,
        )

    @staticmethod
    def _parse(resp: httpx.Response, body: dict[str, Any]) -> Completion:
        try:
            data = resp.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise LLMError("bad_response", "200 with a non-JSON body", status=200) from None
        if not isinstance(data, dict):
            raise LLMError("bad_response", "200 with a non-object body", status=200)
        if data.get("type") == "error" or (
            isinstance(data.get("error"), dict) and "content" not in data
        ):
            raise _error_from_response(httpx.Response(500, json=data))
        blocks = data.get("content") or []
        text = "".join(
            b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text"
        )
        return Completion(
            text=text,
            usage=parse_usage(data.get("usage")),
            model=str(data.get("model") or body.get("model")),
            stop_reason=data.get("stop_reason"),
            request_id=resp.headers.get("request-id"),
            stop_explanation=_explanation(data.get("stop_details")),
        )
