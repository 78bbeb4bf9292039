"""A local fake of the Anthropic Messages API (``POST /v1/messages``) with prompt caching.

Standard library only, besides pypdf (a dependency of the bot) to read PDF document blocks as
the API does: their pages and text. The server runs on 127.0.0.1 (random port) in a daemon
thread and keeps all of its state behind one lock. Cache accounting follows
``shared/reference/messages-api.md``: entries are written at breakpoints whose cumulative prefix
reaches the model's floor, and reads walk back at most 20 block positions from each breakpoint.
Expiry uses the simulated clock ``now`` (see :meth:`FakeMessagesAPI.advance`), never the wall
clock.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pypdf import PdfReader

__all__ = [
    "DEFAULT_MIN_CACHEABLE",
    "FakeMessagesAPI",
    "count_tokens",
    "default_error_type",
]

LOOKBACK = 20
MAX_BREAKPOINTS = 4
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}

DEFAULT_MIN_CACHEABLE: dict[str, int] = {
    "": 1024,
    "claude-opus-4-6": 4096,
    "claude-opus-4-5": 4096,
    "claude-haiku-4-5": 4096,
    "claude-3-5-haiku": 2048,
    "claude-3-haiku": 2048,
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_DEFAULT_MESSAGES = {
    "invalid_request_error": "Invalid request",
    "authentication_error": "invalid x-api-key",
    "billing_error": "Your credit balance is too low to access the Anthropic API.",
    "permission_error": "Your API key does not have permission to use the specified resource.",
    "not_found_error": "Not found",
    "timeout_error": "Request timed out",
    "conflict_error": "Conflict",
    "request_too_large": "Request exceeds the maximum allowed number of bytes.",
    "rate_limit_error": "Number of request tokens has exceeded your per-minute rate limit",
    "api_error": "Internal server error",
    "overloaded_error": "Overloaded",
}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}

USAGE_STYLES = ("anthropic", "null", "missing")
ERROR_SHAPES = ("anthropic", "openai", "html", "drop")


def count_tokens(text: str) -> int:
    """The fake's tokenizer: one token per 4 UTF-8 bytes, rounded up; 0 for the empty string."""
    if not text:
        return 0
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def default_error_type(status: int) -> str:
    """The Anthropic error ``type`` for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    if status >= 500:
        return "api_error"
    return "invalid_request_error"


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class BadRequest(Exception):
    """A request the fake answers with an error status (raised during validation)."""

    def __init__(self, message: str, status: int = 400, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_type = error_type or default_error_type(status)


@dataclass
class _Failure:
    status: int
    error_type: str
    message: str
    headers: dict[str, str]
    shape: str


@dataclass
class _StreamFailure:
    error_type: str
    message: str
    after_chars: int


@dataclass
class _Stop:
    stop_reason: str
    after_chars: int | None
    explanation: str | None


@dataclass
class _Entry:
    ttl: str
    expires_at: float


@dataclass
class _Position:
    """One cacheable block of the flattened prompt (tools, then system, then messages)."""

    section: str  # "tools" | "system" | "messages"
    canonical: str  # canonical JSON of the block (without cache_control) and its location
    tokens: int
    ttl: str | None  # set when the block carries cache_control


@dataclass
class CacheResult:
    total: int
    read: int
    creation: int
    creation_5m: int
    creation_1h: int
    hit_position: int | None = None
    written_positions: list[int] = field(default_factory=list)

    @property
    def input_tokens(self) -> int:
        return self.total - self.read - self.creation


# ---------------------------------------------------------------------------------------------
# Validation and flattening


def _check_cache_control(value: Any, where: str) -> str:
    if not isinstance(value, dict) or value.get("type") != "ephemeral":
        raise BadRequest(f'{where}.cache_control: type must be "ephemeral"')
    extra = set(value) - {"type", "ttl"}
    if extra:
        raise BadRequest(
            f"{where}.cache_control.{sorted(extra)[0]}: Extra inputs are not permitted"
        )
    ttl = value.get("ttl", "5m")
    if ttl not in TTL_SECONDS:
        raise BadRequest(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def _strip_cc(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k != "cache_control"}


# Vision (Anthropic's docs): PNG, JPEG, GIF and WebP, base64 at most 5 MB; an image costs about
# width x height / 750 tokens after it is scaled to a long edge of at most 1,568 px.
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
MAX_IMAGE_BASE64 = 5 * 1024 * 1024
IMAGE_LONG_EDGE = 1568
URL_IMAGE_TOKENS = 1600
# Per request (Anthropic's vision docs; the API's 400 reads "Too much media: P document pages
# + I images > 100"): at most 100 images and document pages together, an image over 8,000 px
# on an edge is refused, over 2,000 px when the request has more than 20 images.
MAX_MEDIA = 100
MANY_IMAGES = 20
MAX_IMAGE_EDGE = 8000
MANY_IMAGES_EDGE = 2000


def _image_size(content: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF, WebP or JPEG header, else None."""
    if content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) >= 24:
        return int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")
    if content[:6] in (b"GIF87a", b"GIF89a") and len(content) >= 10:
        return int.from_bytes(content[6:8], "little"), int.from_bytes(content[8:10], "little")
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP" and len(content) >= 30:
        chunk = content[12:16]
        if chunk == b"VP8X":  # extended
            return (
                int.from_bytes(content[24:27], "little") + 1,
                int.from_bytes(content[27:30], "little") + 1,
            )
        if chunk == b"VP8L":  # lossless: 14 bits each, minus one
            bits = int.from_bytes(content[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 ":  # lossy: after the frame tag and start code
            return (
                int.from_bytes(content[26:28], "little") & 0x3FFF,
                int.from_bytes(content[28:30], "little") & 0x3FFF,
            )
        return None
    i = 2 if content.startswith(b"\xff\xd8") else len(content)
    while i + 9 <= len(content) and content[i] == 0xFF:
        marker = content[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(content[i + 5 : i + 7], "big")
            return int.from_bytes(content[i + 7 : i + 9], "big"), h
        i += 2 + int.from_bytes(content[i + 2 : i + 4], "big")
    return None


def image_block_tokens(block: dict[str, Any], where: str = "image") -> int:
    """What an image block costs, validating it as the API does (400s as BadRequest)."""
    size = image_block_size(block, where)
    if size is None:
        return URL_IMAGE_TOKENS  # the fake fetches nothing: an image at the 1,568 px ceiling
    width, height = size
    if max(width, height) > IMAGE_LONG_EDGE:
        factor = IMAGE_LONG_EDGE / max(width, height)
        width, height = int(width * factor), int(height * factor)
    return max(1, math.ceil(width * height / 750))


def image_block_size(block: dict[str, Any], where: str = "image") -> tuple[int, int] | None:
    """An image block's width and height (None for a URL image), validating it as the API does
    (400s as BadRequest)."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "url":
        return None
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise BadRequest(f"{where}.source.type: Input should be 'base64' or 'url'")
    if source.get("media_type") not in IMAGE_MEDIA_TYPES:
        raise BadRequest(f"{where}.source.media_type: Input should be one of {IMAGE_MEDIA_TYPES}")
    data = source.get("data")
    if not isinstance(data, str) or len(data) > MAX_IMAGE_BASE64:
        raise BadRequest(f"{where}.source.data: image exceeds 5 MB maximum")
    try:
        size = _image_size(base64.b64decode(data, validate=True))
    except ValueError:
        size = None
    if size is None:
        raise BadRequest(f"{where}.source.data: Could not process image")
    if max(size) > MAX_IMAGE_EDGE:
        raise BadRequest(
            f"{where}.image.source.base64.data: At least one of the image dimensions exceed max "
            f"allowed size: {MAX_IMAGE_EDGE} pixels"
        )
    return size


def check_media(body: dict[str, Any]) -> None:
    """The per-request limits on images (400s as BadRequest, worded as the API words them)."""
    images: list[tuple[str, tuple[int, int] | None]] = []
    pages = 0
    for m, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for b, block in enumerate(content if isinstance(content, list) else []):
            where = f"messages.{m}.content.{b}"
            if isinstance(block, dict) and block.get("type") == "image":
                images.append((where, image_block_size(block, where)))
            elif isinstance(block, dict) and block.get("type") == "document":
                pages += document_block_cost(block, where)[0]
    if pages + len(images) > MAX_MEDIA:
        raise BadRequest(f"Too much media: {pages} document pages + {len(images)} images > 100")
    if len(images) > MANY_IMAGES:
        for where, size in images:
            if size is not None and max(size) > MANY_IMAGES_EDGE:
                raise BadRequest(
                    f"{where}.image.source.base64.data: At least one of the image dimensions "
                    f"exceed max allowed size for many-image requests: {MANY_IMAGES_EDGE} pixels"
                )


# PDF support (Anthropic's docs, "Check PDF requirements"): at most 32 MB a request and 100 PDF
# pages a request (600 only with a 1M-token context window), "Standard PDF (no
# passwords/encryption)". Costs ("Estimate your costs"): each page's text is extracted and each
# page is also converted into an image, priced like any image. The fake's rule: per page, its
# extracted text's tokens (count_tokens) + the page as an image: its MediaBox scaled to the
# vision ceiling (long edge 1,568 px, then at most ~1,600 tokens: "If your image's long edge is
# more than 1568 pixels, or your image is more than ~1,600 tokens, it will first be scaled
# down"), so a Letter or A4 page costs 1,600 tokens plus its text.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
MAX_PDF_PAGES = 100
PAGE_IMAGE_CEILING = 1600
_PDF_COSTS: dict[str, tuple[int, int]] = {}  # sha256 of a document's data -> (pages, tokens)


def page_image_tokens(width: float, height: float) -> int:
    """What a page of `width` x `height` (its MediaBox) costs as an image."""
    width, height = max(abs(width), 1.0), max(abs(height), 1.0)
    factor = IMAGE_LONG_EDGE / max(width, height)
    tokens = math.ceil((width * factor) * (height * factor) / 750)
    return max(1, min(PAGE_IMAGE_CEILING, tokens))


def document_block_cost(block: dict[str, Any], where: str = "document") -> tuple[int, int]:
    """The pages and tokens of a document block, validating it as the API does (400s as
    BadRequest): a base64 PDF, or a plain-text source (no pages)."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        if source.get("media_type") != "text/plain" or not isinstance(source.get("data"), str):
            raise BadRequest(f"{where}.source.media_type: Input should be 'text/plain'")
        return 0, count_tokens(source["data"])
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise BadRequest(f"{where}.source.type: Input should be 'base64' or 'text'")
    if source.get("media_type") != "application/pdf":
        raise BadRequest(f"{where}.source.media_type: Input should be 'application/pdf'")
    data = source.get("data")
    if not isinstance(data, str):
        raise BadRequest(f"{where}.source.data: Field required (a base64 string)")
    key = hashlib.sha256(data.encode("ascii", errors="replace")).hexdigest()
    if key in _PDF_COSTS:
        return _PDF_COSTS[key]
    try:
        reader = PdfReader(io.BytesIO(base64.b64decode(data, validate=True)))
        encrypted = reader.is_encrypted
        if not encrypted:
            tokens = 0
            for page in reader.pages:
                box = page.mediabox
                tokens += count_tokens(page.extract_text() or "")
                tokens += page_image_tokens(float(box.width), float(box.height))
            cost = len(reader.pages), tokens
    except Exception:  # noqa: BLE001 - pypdf raises many kinds on a broken file
        raise BadRequest(f"{where}.source.data: The PDF specified was not valid.") from None
    if encrypted:
        raise BadRequest(f"{where}.source.data: The PDF specified is password protected.")
    if cost[0] == 0:
        raise BadRequest(f"{where}.source.data: The PDF specified has no pages.")
    if len(_PDF_COSTS) > 64:
        _PDF_COSTS.clear()
    _PDF_COSTS[key] = cost
    return cost


def document_refusal(where: str) -> BadRequest:
    """What an endpoint without document support answers (a relay; Amazon Bedrock documents
    this pydantic wording for a block type it does not take)."""
    return BadRequest(
        f"{where}: Input tag 'document' found using 'type' does not match any of the expected "
        "tags: 'text', 'image', 'tool_use', 'tool_result'"
    )


def _block_tokens(block: dict[str, Any]) -> int:
    if block.get("type") == "document":
        return document_block_cost(block)[1]
    if block.get("type") == "text":
        return count_tokens(str(block["text"]))
    if block.get("type") == "image":
        return image_block_tokens(block)
    return count_tokens(_canon(_strip_cc(block)))


def _check_text_block(block: Any, where: str) -> None:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise BadRequest(f"{where}: each content block must be an object with a string `type`")
    if block["type"] == "image":
        image_block_tokens(block, where)
        return
    if block["type"] != "text":
        return
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{where}.text: Field required (string)")
    if not text:
        raise BadRequest(f"{where}: text content blocks must be non-empty")
    if not text.strip():
        raise BadRequest(f"{where}: text content blocks must contain non-whitespace text")


def flatten_prompt(body: dict[str, Any], *, documents: bool = True) -> list[_Position]:
    """Validate the prompt parts of ``body`` and flatten them into ordered cache positions.

    Raises :class:`BadRequest` for anything the real API would reject with a 400 (and, with
    ``documents`` False, for a document block, as a relay without document support does).
    """
    positions: list[_Position] = []
    pdf_pages = 0

    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            where = f"tools.{i}"
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise BadRequest(f"{where}.name: Field required")
            ttl = None
            if "cache_control" in tool:
                ttl = _check_cache_control(tool["cache_control"], where)
            stripped = _strip_cc(tool)
            positions.append(
                _Position("tools", _canon(["tool", stripped]), count_tokens(_canon(stripped)), ttl)
            )

    system = body.get("system")
    if system is not None:
        if isinstance(system, str):
            if system:
                block = {"type": "text", "text": system}
                positions.append(
                    _Position("system", _canon(["system", block]), count_tokens(system), None)
                )
        elif isinstance(system, list):
            for i, block in enumerate(system):
                where = f"system.{i}"
                _check_text_block(block, where)
                if block["type"] != "text":
                    raise BadRequest(f"{where}.type: system blocks must be text blocks")
                ttl = None
                if "cache_control" in block:
                    ttl = _check_cache_control(block["cache_control"], where)
                stripped = _strip_cc(block)
                positions.append(
                    _Position("system", _canon(["system", stripped]), _block_tokens(block), ttl)
                )
        else:
            raise BadRequest("system: Input should be a valid string or a list of text blocks")

    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: Field required (a list of messages)")
    if not messages:
        raise BadRequest("messages: at least one message is required")
    previous_role: str | None = None
    for m, message in enumerate(messages):
        where = f"messages.{m}"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}: Input should be an object")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise BadRequest(f"{where}.role: Input should be 'user' or 'assistant'")
        if m == 0 and role != "user":
            raise BadRequest('messages: first message must use the "user" role')
        if role == previous_role:
            raise BadRequest(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        previous_role = role
        content = message.get("content")
        if isinstance(content, str):
            if not content:
                raise BadRequest(f"{where}: text content blocks must be non-empty")
            block = {"type": "text", "text": content}
            canonical = _canon(["message", m, role, 0, block])
            positions.append(_Position("messages", canonical, count_tokens(content), None))
        elif isinstance(content, list):
            if not content:
                raise BadRequest(f"{where}.content: at least one content block is required")
            for b, block in enumerate(content):
                bwhere = f"{where}.content.{b}"
                if isinstance(block, dict) and block.get("type") == "document":
                    if not documents:
                        raise document_refusal(bwhere)
                    pages, tokens = document_block_cost(block, bwhere)
                    pdf_pages += pages
                    if pdf_pages > MAX_PDF_PAGES:
                        raise BadRequest(
                            f"A maximum of {MAX_PDF_PAGES} PDF pages may be provided."
                        )
                else:
                    _check_text_block(block, bwhere)
                    tokens = _block_tokens(block)
                ttl = None
                if "cache_control" in block:
                    ttl = _check_cache_control(block["cache_control"], bwhere)
                canonical = _canon(["message", m, role, b, _strip_cc(block)])
                positions.append(_Position("messages", canonical, tokens, ttl))
        else:
            raise BadRequest(f"{where}.content: Input should be a string or a list of blocks")

    breakpoints = [p for p in positions if p.ttl is not None]
    if len(breakpoints) > MAX_BREAKPOINTS:
        raise BadRequest(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(breakpoints)}."
        )
    seen_5m = False
    for p in breakpoints:
        if p.ttl == "5m":
            seen_5m = True
        elif seen_5m:
            raise BadRequest(
                "a cache_control block with ttl='1h' must not come after a cache_control block "
                "with ttl='5m' (1h breakpoints must precede 5m breakpoints in prefix order)"
            )
    return positions


def validate_body(body: Any, *, documents: bool = True) -> list[_Position]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required (a non-empty string)")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("max_tokens: Field required (an integer)")
    if max_tokens < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequest("stream: Input should be a valid boolean")
    positions = flatten_prompt(body, documents=documents)
    check_media(body)
    return positions


# ---------------------------------------------------------------------------------------------
# The server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeMessagesAPI) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client hung up (e.g. stopped reading a stream): not the fake's problem
        super().handle_error(request, client_address)

    def close_open_connections(self) -> None:
        """Hang up on kept-alive client connections so their handler threads finish."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeMessagesAPI:
    """An in-process HTTP server speaking the Anthropic Messages API, with prompt caching."""

    def __init__(self, *, api_key: str = "test-key", start_time: float = 1_700_000_000.0) -> None:
        self.api_key = api_key
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        self.usages: list[dict[str, Any]] = []
        self.reply: str | Callable[[dict[str, Any]], str] = self._default_reply
        self.output_tokens: int | None = None
        self.caching = True
        self.usage_style = "anthropic"
        self.min_cacheable: dict[str, int] = dict(DEFAULT_MIN_CACHEABLE)
        self.reject_models: set[str] = set()
        # False: behave like a relay without PDF support (a document block gets a 400).
        self.accept_documents = True
        # When set, every request waits for this event before it is answered (a slow model).
        self.gate: threading.Event | None = None
        self.arrived = 0  # requests that reached the server (counted before any gate)
        # Simulated model latency in seconds for each request (benchmarks only).
        self.delay: Callable[[], float] | None = None
        # Characters per text_delta event when streaming (None: the reply in three pieces).
        self.delta_chars: int | None = None
        self._now = float(start_time)
        self._lock = threading.RLock()
        self.activity = threading.Condition(self._lock)  # notified when a request arrives
        self._cache: dict[str, _Entry] = {}
        self._failures: deque[_Failure] = deque()
        self._stream_failures: deque[_StreamFailure] = deque()
        self._stops: deque[_Stop] = deque()
        self._counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- clock --------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        with self._lock:
            return self._now

    @now.setter
    def now(self, value: float) -> None:
        with self._lock:
            self._now = float(value)

    def advance(self, seconds: float) -> None:
        """Move the simulated clock forward."""
        with self._lock:
            self._now += float(seconds)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeMessagesAPI:
        if self._server is not None:
            return self
        server = _Server(self)
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="fake-messages-api",
            daemon=True,
        )
        self._server = server
        self._thread = thread
        thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = None
        self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeMessagesAPI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- configuration ------------------------------------------------------------------------

    def floor_for(self, model: str) -> int:
        """Minimum cacheable prefix for ``model``: the longest matching prefix in min_cacheable."""
        with self._lock:
            table = dict(self.min_cacheable)
        name = model.rsplit("/", 1)[-1]  # "anthropic/claude-..." relay ids
        best_len = -1
        floor = 1024
        for prefix, value in table.items():
            if name.startswith(prefix) and len(prefix) > best_len:
                best_len = len(prefix)
                floor = value
        return floor

    def enqueue(
        self,
        status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        shape: str = "anthropic",
        times: int = 1,
    ) -> None:
        """Make the next ``times`` requests to /v1/messages fail with this error."""
        if shape not in ERROR_SHAPES:
            raise ValueError(f"unknown error shape {shape!r}; expected one of {ERROR_SHAPES}")
        etype = error_type or default_error_type(status)
        failure = _Failure(
            status=status,
            error_type=etype,
            message=message if message is not None else _DEFAULT_MESSAGES.get(etype, "Error"),
            headers=dict(headers or {}),
            shape=shape,
        )
        with self._lock:
            self._failures.extend([failure] * times)

    def enqueue_stream_error(
        self,
        error_type: str = "overloaded_error",
        *,
        after_chars: int = 10,
        message: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` stream=true requests answer HTTP 200, stream the first
        ``after_chars`` characters of the reply, then send ``event: error``."""
        failure = _StreamFailure(
            error_type=error_type,
            message=message if message is not None else _DEFAULT_MESSAGES.get(error_type, "Error"),
            after_chars=max(0, after_chars),
        )
        with self._lock:
            self._stream_failures.extend([failure] * times)

    def enqueue_stop(
        self,
        stop_reason: str,
        *,
        after_chars: int | None = None,
        explanation: str | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` answers (streamed or not) end with ``stop_reason`` after the
        first ``after_chars`` characters of the reply (all of it when None). A ``refusal`` carries
        ``stop_details`` (type, category null, ``explanation``) as the API documents; a
        ``max_tokens`` stop reports ``max_tokens`` output tokens."""
        stop = _Stop(stop_reason, after_chars, explanation)
        with self._lock:
            self._stops.extend([stop] * times)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def cache_size(self) -> int:
        """Number of unexpired cache entries."""
        with self._lock:
            return sum(1 for e in self._cache.values() if e.expires_at > self._now)

    @staticmethod
    def _default_reply(body: dict[str, Any]) -> str:
        n = 0
        system = body.get("system")
        if isinstance(system, str) and system:
            n += 1
        elif isinstance(system, list):
            n += len(system)
        for message in body.get("messages", []):
            content = message.get("content")
            n += 1 if isinstance(content, str) else len(content)
        return f"Fake reply: the prompt had {n} blocks."

    # -- internals ----------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}_fake{self._counter:020d}"

    def _record(
        self, headers: dict[str, str], body: Any, status: int, received_at: float | None = None
    ) -> None:
        """Keep a request; `received_at` is time.perf_counter() when it arrived (benchmarks)."""
        arrived = time.perf_counter() if received_at is None else received_at
        with self.activity:
            self.requests.append(
                {"headers": headers, "body": body, "status": status, "received_at": arrived}
            )
            self.activity.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        """Block until `predicate()` holds, re-checking as requests arrive; False on timeout."""
        with self.activity:
            return self.activity.wait_for(predicate, timeout)

    def _pop_failure(self) -> _Failure | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _pop_stream_failure(self) -> _StreamFailure | None:
        with self._lock:
            return self._stream_failures.popleft() if self._stream_failures else None

    def _account(self, model: str, positions: list[_Position]) -> CacheResult:
        """Read and write the cache for one request (atomically) and return the token split."""
        cumulative: list[int] = []
        running = 0
        for p in positions:
            running += p.tokens
            cumulative.append(running)
        total = running
        if not positions:
            return CacheResult(total, 0, 0, 0, 0)

        hasher = hashlib.sha256()
        hasher.update(_canon(["fake-messages-api", self.api_key, model]).encode("utf-8"))
        keys: list[str] = []
        for p in positions:
            hasher.update(b"\n")
            hasher.update(p.canonical.encode("utf-8"))
            keys.append(hasher.copy().hexdigest())

        floor = self.floor_for(model)
        breakpoints = [i for i, p in enumerate(positions) if p.ttl is not None]
        with self._lock:
            if not self.caching:
                return CacheResult(total, 0, 0, 0, 0)
            now = self._now
            hit: int | None = None
            for b in breakpoints:
                for j in range(b, max(0, b - LOOKBACK + 1) - 1, -1):
                    entry = self._cache.get(keys[j])
                    if entry is not None and entry.expires_at > now:
                        if hit is None or j > hit:
                            hit = j
                        break
            read = 0
            if hit is not None:
                entry = self._cache[keys[hit]]
                entry.expires_at = now + TTL_SECONDS[entry.ttl]
                read = cumulative[hit]

            written: list[int] = []
            split = {"5m": 0, "1h": 0}
            start = read
            for b in breakpoints:
                if hit is not None and b <= hit:
                    continue
                if cumulative[b] < floor:
                    continue
                ttl = positions[b].ttl or "5m"
                self._cache[keys[b]] = _Entry(ttl=ttl, expires_at=now + TTL_SECONDS[ttl])
                split[ttl] += cumulative[b] - start
                start = cumulative[b]
                written.append(b)
            creation = start - read
            return CacheResult(
                total=total,
                read=read,
                creation=creation,
                creation_5m=split["5m"],
                creation_1h=split["1h"],
                hit_position=hit,
                written_positions=written,
            )

    def _usage(self, result: CacheResult, output_tokens: int) -> dict[str, Any]:
        with self._lock:
            style = self.usage_style
        if style == "anthropic":
            return {
                "input_tokens": result.input_tokens,
                "cache_creation_input_tokens": result.creation,
                "cache_read_input_tokens": result.read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": result.creation_5m,
                    "ephemeral_1h_input_tokens": result.creation_1h,
                },
                "output_tokens": output_tokens,
            }
        # Relays that do not report caching: the whole prompt shows up as input_tokens.
        if style == "null":
            return {
                "input_tokens": result.total,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": None,
                "output_tokens": output_tokens,
            }
        if style == "missing":
            return {"input_tokens": result.total, "output_tokens": output_tokens}
        raise ValueError(f"unknown usage_style {style!r}; expected one of {USAGE_STYLES}")

    def _reply_text(self, body: dict[str, Any]) -> tuple[str, int, str, dict[str, Any] | None]:
        """Return (text, output_tokens, stop_reason, stop_details), honouring max_tokens and
        any enqueued stop."""
        with self._lock:
            reply = self.reply
            forced = self.output_tokens
            stop = self._stops.popleft() if self._stops else None
        text = reply(body) if callable(reply) else str(reply)
        max_tokens = int(body["max_tokens"])
        if stop is not None:
            if stop.after_chars is not None:
                text = text[: stop.after_chars]
            out = forced if forced is not None else count_tokens(text)
            details = None
            if stop.stop_reason == "refusal":
                details = {"type": "refusal", "category": None, "explanation": stop.explanation}
            if stop.stop_reason == "max_tokens":
                out = max_tokens
            return text, min(out, max_tokens), stop.stop_reason, details
        out = forced if forced is not None else count_tokens(text)
        if out <= max_tokens:
            return text, out, "end_turn", None
        if forced is None:
            text = text.encode("utf-8")[: max_tokens * 4].decode("utf-8", errors="ignore")
        return text, max_tokens, "max_tokens", None


def _split_text(text: str, pieces: int = 3, size: int | None = None) -> list[str]:
    if not text:
        return []
    size = size or max(1, math.ceil(len(text) / pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server_version = "FakeMessagesAPI/1.0"
    sys_version = ""
    server: _Server
    _received_at: float | None = None  # time.perf_counter() when the current request arrived

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def fake(self) -> FakeMessagesAPI:
        return self.server.fake

    def _read_body(self) -> bytes:
        length = self.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                n = 0
            return self.rfile.read(n) if n > 0 else b""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            data = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _headers_dict(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _send_bytes(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status, _REASONS.get(status))
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        self.send_header("request-id", self.fake._next_id("req"))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()

    def _send_json(
        self, status: int, obj: dict[str, Any], extra: dict[str, str] | None = None
    ) -> None:
        self._send_bytes(status, json.dumps(obj).encode(), "application/json", extra)

    def _send_error(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        shape: str = "anthropic",
        extra: dict[str, str] | None = None,
    ) -> None:
        if shape == "openai":
            obj = {"error": {"message": message, "type": error_type, "code": error_type}}
            self._send_json(status, obj, extra)
        elif shape == "html":
            reason = _REASONS.get(status, "Error")
            page = (
                f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
                f"<center><h1>{status} {reason}</h1></center>\r\n<p>{message}</p>\r\n"
                "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            )
            self._send_bytes(status, page.encode(), "text/html; charset=utf-8", extra)
        else:
            obj = {"type": "error", "error": {"type": error_type, "message": message}}
            self._send_json(status, obj, extra)

    def _fail(self, headers: dict[str, str], body: Any, err: BadRequest) -> None:
        self.fake._record(headers, body, err.status, self._received_at)
        self._send_error(err.status, err.error_type, err.message)

    # -- routing ------------------------------------------------------------------------------

    def _not_found(self) -> None:
        self._received_at = time.perf_counter()
        self._read_body()
        self.fake._record(self._headers_dict(), None, 404, self._received_at)
        self._send_error(404, "not_found_error", f"Not found: {self.command} {self.path}")

    do_GET = _not_found
    do_PUT = _not_found
    do_PATCH = _not_found
    do_DELETE = _not_found

    def do_POST(self) -> None:
        self._received_at = time.perf_counter()
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/messages":
            self._not_found()
            return
        raw = self._read_body()
        headers = self._headers_dict()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except (ValueError, UnicodeDecodeError):
            body = None
        fake = self.fake
        with fake.activity:
            fake.arrived += 1
            fake.activity.notify_all()
        gate = fake.gate
        if gate is not None:
            gate.wait(timeout=60)
        if fake.delay is not None:
            time.sleep(fake.delay())

        failure = fake._pop_failure()
        if failure is not None:
            if failure.shape == "drop":
                fake._record(headers, body, 0, self._received_at)
                self.close_connection = True
                return
            fake._record(headers, body, failure.status, self._received_at)
            self._send_error(
                failure.status,
                failure.error_type,
                failure.message,
                shape=failure.shape,
                extra=failure.headers,
            )
            return

        key = fake.api_key
        if headers.get("x-api-key") != key and headers.get("authorization") != f"Bearer {key}":
            self._fail(headers, body, BadRequest("invalid x-api-key", 401))
            return
        if not headers.get("anthropic-version"):
            self._fail(headers, body, BadRequest("anthropic-version: header is required"))
            return
        if len(raw) > MAX_REQUEST_BYTES:  # the documented 413 for a request over 32 MB
            self._fail(headers, body, BadRequest(_DEFAULT_MESSAGES["request_too_large"], 413))
            return
        if body is None:
            self._fail(headers, body, BadRequest("request body must be valid JSON"))
            return
        with fake._lock:
            documents = fake.accept_documents
        try:
            positions = validate_body(body, documents=documents)
        except BadRequest as err:
            self._fail(headers, body, err)
            return
        model = body["model"]
        with fake._lock:
            rejected = model in fake.reject_models
        if rejected:
            self._fail(headers, body, BadRequest(f"model: {model}", 404))
            return

        result = fake._account(model, positions)
        text, out_tokens, stop_reason, details = fake._reply_text(body)
        usage = fake._usage(result, out_tokens)
        message_id = fake._next_id("msg")

        if body.get("stream"):
            self._stream(headers, body, message_id, text, usage, stop_reason, details)
            return

        fake._record(headers, body, 200, self._received_at)
        with fake._lock:
            fake.usages.append(json.loads(json.dumps(usage)))
        self._send_json(
            200,
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": stop_reason,
                "stop_sequence": None,
                **({"stop_details": details} if details else {}),
                "usage": usage,
            },
        )

    # -- streaming ----------------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(
        self,
        headers: dict[str, str],
        body: dict[str, Any],
        message_id: str,
        text: str,
        usage: dict[str, Any],
        stop_reason: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        fake = self.fake
        stream_failure = fake._pop_stream_failure()
        fake._record(headers, body, 200, self._received_at)
        if stream_failure is None:
            with fake._lock:
                fake.usages.append(json.loads(json.dumps(usage)))

        start_usage = dict(usage)
        start_usage["output_tokens"] = 1
        self.send_response(200, "OK")
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", fake._next_id("req"))
        self.end_headers()

        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        self._write_chunk(_sse("message_start", {"type": "message_start", "message": message}))
        self._write_chunk(_sse("ping", {"type": "ping"}))
        block_start = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        self._write_chunk(_sse("content_block_start", block_start))
        streamed = text if stream_failure is None else text[: stream_failure.after_chars]
        for piece in _split_text(streamed, size=fake.delta_chars):
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            self._write_chunk(_sse("content_block_delta", delta))
        if stream_failure is not None:
            error = {"type": stream_failure.error_type, "message": stream_failure.message}
            self._write_chunk(_sse("error", {"type": "error", "error": error}))
            self._write_chunk(b"")
            return
        self._write_chunk(_sse("future_thing", {"type": "future_thing", "note": "ignore me"}))
        self._write_chunk(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        self._write_chunk(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": stop_reason,
                        "stop_sequence": None,
                        **({"stop_details": details} if details else {}),
                    },
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        self._write_chunk(_sse("message_stop", {"type": "message_stop"}))
        self._write_chunk(b"")
