"""Files in threads: what a thread's files hold, as content parts for the model.

Images (PNG, JPEG, GIF, WebP) become image parts, scaled to what the model uses (`bot.images`),
PDFs document parts (or their extracted text, when a document block is not possible: over the
API's page or size limits, or an endpoint that refuses documents), text files and Slack
snippets their text (bounded), anything else stays only named in its message's line
(`transcript.Renderer`). A file is downloaded once, from its
`url_private_download` with the workspace's bot token, bounded in size and time; what was
prepared is stored with the thread (`ThreadFile`, purged with its text) so every later request
sends the same bytes and downloads nothing. A file that cannot be read is named with the
reason, never fatal.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pypdf import PdfReader
from sqlalchemy.orm import Session, sessionmaker

from bot.images import ImageUnreadable, prepare_image, target_size
from bot.store import data
from bot.store.models import ThreadFile
from bot.transcript import (
    PDF_MEDIA_TYPE,
    DocumentPart,
    ImagePart,
    Part,
    TextPart,
    document_tokens,
    estimate_tokens,
)

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 10 * 1024 * 1024  # text files and snippets (their text is cut anyway)
# Larger caps where the model can still use a large file: a phone photo is scaled down, a PDF
# up to the API's 32 MB request goes as a document or else as its text.
DOWNLOAD_CAPS = {"image": 20 * 1024 * 1024, "pdf": 32 * 1024 * 1024}
DOWNLOAD_TIMEOUT_SECONDS = 20.0
MAX_TEXT_CHARS = 20_000
IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
# Slack filetypes that are text (snippets and code files), besides any text/* mimetype.
TEXT_FILETYPES = {
    "text", "txt", "markdown", "md", "csv", "tsv", "json", "yaml", "yml", "xml", "log", "diff",
    "patch", "python", "javascript", "typescript", "java", "go", "rust", "ruby", "php", "shell",
    "bash", "sql", "c", "cpp", "csharp", "kotlin", "swift", "html", "css", "toml", "ini",
}  # fmt: skip
NO_SCOPE = "the app may not read files here (it lacks the files:read permission; reinstall it)"
# Anthropic's PDF support: a request may hold at most 100 PDF pages (600 only with a 1M-token
# context window, far above this bot's budget) and 32 MB in all, and no password-protected or
# encrypted PDF. The documents of one request keep their base64 within 20 MB, leaving the rest
# of the 32 MB to the transcript and its images.
MAX_DOCUMENT_PAGES = 100
MAX_DOCUMENT_BASE64 = 20 * 1024 * 1024
# How long reading a PDF's text may take: pypdf is pure Python and a crafted or huge file can
# keep it busy for minutes. Past this, no more pages are read (checked between pages).
PDF_TEXT_SECONDS = 10.0
# How long an endpoint that refused document blocks is sent PDFs' text instead.
DOCUMENT_REFUSAL_MEMORY = 24 * 3600.0
# The stored kind of a file whose own bytes cannot be read: the reason is kept instead of them.
UNREADABLE = "unreadable"
# The stored media type of a PDF encrypted with an empty password: its text only.
ENCRYPTED_PDF = "application/pdf; encrypted"


class FileUnreadable(Exception):
    """A file could not be read; the message says why, for the transcript and the answer.

    `lasting`: the file's own bytes are the cause (damaged, encrypted, too large, not what its
    type says), so it is remembered with the thread and not downloaded again until Slack says
    the file changed; otherwise (a failed or refused download, a missing scope) the next request
    tries again."""

    def __init__(self, why: str, *, lasting: bool = False) -> None:
        super().__init__(why)
        self.lasting = lasting


def looks_like_login_page(content_type: str, content: bytes) -> bool:
    """Slack's answer to a download without files:read: status 200 with an HTML sign-in page."""
    head = content[:512].lstrip().lower()
    return content_type.lower().startswith("text/html") or head.startswith(
        (b"<!doctype html", b"<html")
    )


@dataclass(frozen=True)
class PdfText:
    """What a PDF holds as text: its page count, its text (bounded like a text file, each page
    headed `[page N]`) and the estimated tokens of all of its text."""

    pages: int
    text: str
    text_tokens: int
    encrypted: bool = False  # opens without a password, but no document block may hold it


def read_pdf(
    content: bytes,
    *,
    seconds: float = PDF_TEXT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> PdfText:
    """The pages and text of a PDF (pypdf); FileUnreadable when it is broken or needs a
    password (one encrypted with an empty password, as many forms and statements are, is read).

    Every page's text is read up to MAX_DOCUMENT_PAGES (a document block's estimate needs all
    of it); past that, only as much as the bounded text holds; and no page is begun once
    `seconds` have passed (the pages not read count as dense as those read)."""
    started = clock()
    if b"%PDF-" not in content[:1024]:
        raise FileUnreadable("not a PDF")
    try:
        reader = PdfReader(io.BytesIO(content))
        encrypted = reader.is_encrypted
        if encrypted and not reader.decrypt(""):
            raise FileUnreadable("the PDF is encrypted (password-protected); send it unprotected")
        pages = len(reader.pages)
        if pages == 0:
            raise FileUnreadable("the PDF has no pages")
        texts: list[str] = []
        tokens = 0
        size = 0
        for i, page in enumerate(reader.pages):
            if i >= MAX_DOCUMENT_PAGES and size > MAX_TEXT_CHARS:
                break
            if texts and clock() - started > seconds:
                log.info("PDF text: stopped after %d of %d pages (%.0f s)", i, pages, seconds)
                break
            piece = f"[page {i + 1}]\n{(page.extract_text() or '').strip()}"
            texts.append(piece)
            tokens += estimate_tokens(piece)
            size += len(piece) + 1
    except FileUnreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on a broken file
        raise FileUnreadable(f"the PDF is damaged or not a PDF ({type(exc).__name__})") from None
    text = "\n".join(texts)
    if len(texts) < pages:
        tokens = tokens * pages // len(texts)  # pages not read: as dense as those read
    if len(text) > MAX_TEXT_CHARS or len(texts) < pages:
        cut = text[:MAX_TEXT_CHARS]
        shown = cut.count("[page ")
        text = cut + f"\n[… cut: the text goes on to page {pages}; only up to page {shown} is here]"
    return PdfText(pages, text, tokens, encrypted)


def pack_pdf(pdf: bytes, text: str) -> bytes:
    """A PDF's stored content: the length of its bytes (8 bytes, big-endian), its bytes (empty
    when it cannot be a document block), then its extracted text (UTF-8)."""
    return struct.pack(">Q", len(pdf)) + pdf + text.encode("utf-8")


def unpack_pdf(content: bytes) -> tuple[bytes, str]:
    """A stored PDF's bytes (maybe empty) and its extracted text (`pack_pdf`)."""
    (length,) = struct.unpack(">Q", content[:8])
    return content[8 : 8 + length], content[8 + length :].decode("utf-8")


def refuses_documents(status: int | None, detail: str) -> bool:
    """Whether a model call's error is about its PDFs: a 400 that names the document block or
    PDFs. The request is worth sending again with their text."""
    return status == 400 and re.search(r"document|pdf", detail, re.IGNORECASE) is not None


def documents_unsupported(detail: str) -> bool:
    """Whether such an error says the endpoint takes no document blocks at all (worth
    remembering), not that one PDF was refused: an unknown block type, in pydantic's wording
    ("Input tag 'document' found using 'type' does not match any of the expected tags", as
    Amazon Bedrock documents it) or a relay's ("unsupported content type", "not supported")."""
    return (
        re.search(r"tag|type|support|unknown|not (?:allowed|permitted)", detail, re.IGNORECASE)
        is not None
    )


def has_documents(body: dict[str, Any]) -> bool:
    """Whether a request body holds a document block."""
    return any(
        isinstance(block, dict) and block.get("type") == "document"
        for message in body.get("messages") or []
        if isinstance(message.get("content"), list)
        for block in message["content"]
    )


class DocumentRefusals:
    """Model endpoints (base URL, model) that refused document blocks, remembered for `ttl`
    seconds, so their next requests carry PDFs' text at once. In memory, per process: another
    process learns it from one refusal of its own (answered all the same). Thread-safe."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, ttl: float = DOCUMENT_REFUSAL_MEMORY
    ) -> None:
        self._clock = clock
        self._ttl = ttl
        self._until: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def refused(self, endpoint: str, model: str) -> bool:
        """Whether `model` at `endpoint` refused documents lately."""
        with self._lock:
            until = self._until.get((endpoint, model))
            if until is not None and self._clock() >= until:
                del self._until[(endpoint, model)]
                until = None
            return until is not None

    def refuse(self, endpoint: str, model: str, detail: str) -> None:
        """Remember that `model` at `endpoint` refused documents (`detail`: its error)."""
        with self._lock:
            self._until[(endpoint, model)] = self._clock() + self._ttl
        log.warning(
            "the model endpoint refused a PDF document block for %s (%s); PDFs go as their "
            "extracted text for %d hours",
            model,
            detail[:200],
            self._ttl // 3600,
        )


def kind_of(f: dict[str, Any]) -> str | None:
    """ "image", "pdf", "text" or None (only named) for a file object as `threads.slim` keeps
    it."""
    if f.get("mode") in ("tombstone", "hidden_by_limit", "file_access"):
        # Deleted, hidden by the plan's limit, or shown only through files.info (Slack
        # Connect: `file_access: check_file_info`): no URL to read, only named.
        return None
    mimetype = str(f.get("mimetype") or "").lower()
    filetype = str(f.get("filetype") or "").lower()
    if mimetype in IMAGE_TYPES:
        return "image"
    if mimetype == PDF_MEDIA_TYPE or filetype == "pdf":
        return "pdf"
    if f.get("mode") == "snippet" or mimetype.startswith("text/") or filetype in TEXT_FILETYPES:
        return "text" if filetype != "html" or f.get("mode") == "snippet" else None
    return None


def _name(f: dict[str, Any]) -> str:
    return str(f.get("name") or f.get("title") or "unnamed")


@dataclass
class Prepared:
    """What the files of some messages hold: parts by file id, and why some could not be read."""

    parts: dict[str, tuple[Part, ...]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        """A line for the answer naming the files that could not be read, if any."""
        if not self.problems:
            return None
        return "Some files could not be read: " + "; ".join(self.problems) + "."


def parts_of(row: ThreadFile, name: str, why_text: str | None = None) -> tuple[Part, ...]:
    """A stored file as content parts (the same bytes every time). A PDF is a document unless
    `why_text` says why its extracted text goes instead (or it was stored without its bytes)."""
    if row.kind == "image":
        encoded = base64.b64encode(row.content).decode("ascii")
        return (ImagePart(row.media_type, encoded, row.width, row.height, name),)
    if row.kind == UNREADABLE:
        return (TextPart(f"[{name} could not be read: {row.content.decode('utf-8')}]"),)
    if row.kind == "pdf":
        pdf, text = unpack_pdf(row.content)
        if pdf and why_text is None:
            return (DocumentPart(base64.b64encode(pdf).decode("ascii"), row.width, row.height),)
        why = why_text or too_large_why(row.width, row.media_type)
        pages = f"{row.width} page{'s' if row.width != 1 else ''}"
        head = f"[the text extracted from {name} ({pages}): {why}, so its layout and images are"
        return (TextPart(f"{head} not here]\n{text}"),)
    return (TextPart(f"[contents of {name}]\n{row.content.decode('utf-8')}"),)


def too_large_why(pages: int, media_type: str = PDF_MEDIA_TYPE) -> str:
    """Why a stored PDF has no document block: its encryption, its pages, or else its size."""
    if media_type == ENCRYPTED_PDF:
        return "it is encrypted, which the model does not take as a document"
    if pages > MAX_DOCUMENT_PAGES:
        return f"it has more than the {MAX_DOCUMENT_PAGES} pages a request may hold"
    return "it is too large to send as a document"


def _base64_size(content: bytes) -> int:
    return (len(content) + 2) // 3 * 4


@dataclass
class _DocumentRoom:
    """What is left of one request's room for document blocks (pages, base64 bytes)."""

    pages: int
    size: int
    max_tokens: int | None

    def why_text(self, row: ThreadFile) -> str | None:
        """None when stored PDF `row` goes as a document (its room taken), else why its text
        goes instead."""
        pdf, _ = unpack_pdf(row.content)
        if not pdf:
            return too_large_why(row.width, row.media_type)
        tokens = document_tokens(row.width, row.height)
        if self.max_tokens is not None and tokens > self.max_tokens:
            return f"as a document it would take about {tokens:,} tokens, too many for a request"
        if row.width > self.pages or _base64_size(pdf) > self.size:
            return "the thread's earlier PDFs fill what one request may hold"
        self.pages -= row.width
        self.size -= _base64_size(pdf)
        return None


def _unscaled(row: ThreadFile) -> bool:
    """Whether a stored image is larger than the model uses (kept before scaling existed)."""
    return row.kind == "image" and target_size(row.width, row.height) != (row.width, row.height)


class FileReader:
    """Prepares a thread's files once and keeps them (`prepare`)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        http: httpx.Client | None = None,
        *,
        max_bytes: int | None = None,
        timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
        max_document_tokens: int | None = None,
    ) -> None:
        self._sessions = sessions
        # A PDF whose document block would cost more goes as its text (None: no such limit).
        self._max_document_tokens = max_document_tokens
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=True)
        self._max_bytes = max_bytes  # None: by kind (DOWNLOAD_CAPS, else MAX_DOWNLOAD_BYTES)
        self._timeout = timeout
        self._told: set[str] = set()  # workspaces whose missing scope was logged
        self._lock = threading.Lock()

    def prepare(
        self,
        where: tuple[str, str, str],
        token: str | None,
        messages: Sequence[dict[str, Any]],
        now: datetime,
        *,
        documents: bool = True,
    ) -> Prepared:
        """The parts of the readable files of `messages` in thread `where` (team, channel,
        thread ts): stored ones as stored, the others downloaded with `token` and stored.

        PDFs are document parts, oldest first, while the request's limits allow (pages, size,
        `max_document_tokens`) and `documents` (False: the endpoint refuses them); the others
        are their extracted text. Earlier files decide first, so a new file never changes how
        an earlier one is sent (the cached prefix stays the same)."""
        files = {
            f["id"]: f
            for m in messages
            if not m.get("external")
            for f in m.get("files") or []
            if f.get("id") and kind_of(f)
        }
        out = Prepared()
        if not files:
            return out
        room = _DocumentRoom(MAX_DOCUMENT_PAGES, MAX_DOCUMENT_BASE64, self._max_document_tokens)
        with self._sessions() as s:
            stored = data.thread_files(s, *where, files)
            for row in stored.values():
                s.expunge(row)
        for file_id, f in files.items():
            row = stored.get(file_id)
            if row is not None and _unscaled(row):
                row = None  # kept before images were scaled: downloaded and prepared again
            if row is None:
                try:
                    row = self._download(where, file_id, f, token, now)
                except FileUnreadable as exc:
                    if not exc.lasting:
                        out.parts[file_id] = (TextPart(f"[{_name(f)} could not be read: {exc}]"),)
                        out.problems.append(f"{_name(f)} ({exc})")
                        continue
                    row = self._unreadable(where, file_id, str(exc), now)
                with self._sessions.begin() as s:
                    data.keep_thread_file(s, row)
            if row.kind == UNREADABLE:
                out.problems.append(f"{_name(f)} ({row.content.decode('utf-8')})")
            why_text = None
            if row.kind == "pdf":
                why_text = room.why_text(row) if documents else "the model endpoint takes no PDFs"
            out.parts[file_id] = parts_of(row, _name(f), why_text)
        return out

    @staticmethod
    def _unreadable(
        where: tuple[str, str, str], file_id: str, why: str, now: datetime
    ) -> ThreadFile:
        """The row that remembers why a file's own bytes cannot be read (no bytes kept)."""
        team_id, channel_id, thread_ts = where
        return ThreadFile(
            team_id=team_id, channel_id=channel_id, thread_ts=thread_ts, file_id=file_id,
            stored_at=now, kind=UNREADABLE, media_type="", width=0, height=0,
            content=why.encode("utf-8"),
        )

    def _download(
        self,
        where: tuple[str, str, str],
        file_id: str,
        f: dict[str, Any],
        token: str | None,
        now: datetime,
    ) -> ThreadFile:
        url = f.get("url_private_download")
        if not url or not token:
            raise FileUnreadable("Slack gave no way to download it")
        cap = self._max_bytes or DOWNLOAD_CAPS.get(kind_of(f) or "", MAX_DOWNLOAD_BYTES)
        if int(f.get("size") or 0) > cap:
            raise FileUnreadable(f"larger than {cap // (1024 * 1024)} MB", lasting=True)
        content, content_type = self._fetch(str(url), token, cap)
        if looks_like_login_page(content_type, content) and f.get("filetype") != "html":
            self._tell_operator(where[0])
            raise FileUnreadable(NO_SCOPE)
        team_id, channel_id, thread_ts = where
        row = ThreadFile(
            team_id=team_id,
            channel_id=channel_id,
            thread_ts=thread_ts,
            file_id=file_id,
            stored_at=now,
        )
        if kind_of(f) == "image":
            try:
                image = prepare_image(content)  # scaled to what the model uses (bot.images)
            except ImageUnreadable as exc:
                raise FileUnreadable(str(exc), lasting=True) from None
            row.kind, row.media_type = "image", image.media_type
            row.width, row.height, row.content = image.width, image.height, image.content
            return row
        if kind_of(f) == "pdf":
            try:
                pdf = read_pdf(content)
            except FileUnreadable as exc:
                raise FileUnreadable(str(exc), lasting=True) from None
            fits = pdf.pages <= MAX_DOCUMENT_PAGES and _base64_size(content) <= MAX_DOCUMENT_BASE64
            fits = fits and not pdf.encrypted
            row.kind, row.media_type = "pdf", ENCRYPTED_PDF if pdf.encrypted else PDF_MEDIA_TYPE
            row.width, row.height = pdf.pages, pdf.text_tokens
            row.content = pack_pdf(content if fits else b"", pdf.text)
            return row
        text = content.decode("utf-8", errors="replace")
        if len(text) > MAX_TEXT_CHARS:
            cut = len(text) - MAX_TEXT_CHARS
            text = text[:MAX_TEXT_CHARS] + f"\n[… cut: {cut} more characters]"
        row.kind, row.media_type, row.width, row.height = "text", "text/plain", 0, 0
        row.content = text.encode("utf-8")
        return row

    def _fetch(self, url: str, token: str, cap: int) -> tuple[bytes, str]:
        """The file's bytes and content type; at most `cap` bytes, within the timeout."""
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + self._timeout  # in all, not only between two reads
        try:
            with self._http.stream("GET", url, headers=headers, timeout=self._timeout) as resp:
                if resp.status_code != 200:
                    raise FileUnreadable(f"Slack answered HTTP {resp.status_code}")
                chunks: list[bytes] = []
                total = 0
                for chunk in resp.iter_bytes():
                    total += len(chunk)
                    if total > cap:
                        raise FileUnreadable(f"larger than {cap // (1024 * 1024)} MB", lasting=True)
                    chunks.append(chunk)
                    if time.monotonic() > deadline:
                        raise FileUnreadable("the download timed out")
                return b"".join(chunks), resp.headers.get("content-type", "")
        except httpx.TimeoutException:
            raise FileUnreadable("the download timed out") from None
        except httpx.HTTPError as exc:
            raise FileUnreadable(f"the download failed ({type(exc).__name__})") from None

    def _tell_operator(self, team_id: str) -> None:
        with self._lock:
            if team_id in self._told:
                return
            self._told.add(team_id)
        log.warning(
            "workspace %s: Slack answered a file download with its sign-in page: the bot token "
            "lacks the files:read scope; add it (manifest.yml) and reinstall the app",
            team_id,
        )
