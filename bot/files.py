"""Files in threads: what a thread's files hold, as content parts for the model.

Images (PNG, JPEG, GIF, WebP) become image parts, scaled to what the model uses (`bot.images`),
text files and Slack snippets their text (bounded), anything else stays only named in its
message's line (`transcript.Renderer`). A file is downloaded once, from its
`url_private_download` with the workspace's bot token, bounded in size and time; what was
prepared is stored with the thread (`ThreadFile`, purged with its text) so every later request
sends the same bytes and downloads nothing. A file that cannot be read is named with the
reason, never fatal.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from bot.images import ImageUnreadable, prepare_image, target_size
from bot.store import data
from bot.store.models import ThreadFile
from bot.transcript import ImagePart, Part, TextPart

log = logging.getLogger(__name__)

MAX_DOWNLOAD_BYTES = 10 * 1024 * 1024
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


class FileUnreadable(Exception):
    """A file could not be read; the message says why, for the transcript and the answer."""


def looks_like_login_page(content_type: str, content: bytes) -> bool:
    """Slack's answer to a download without files:read: status 200 with an HTML sign-in page."""
    head = content[:512].lstrip().lower()
    return content_type.lower().startswith("text/html") or head.startswith(
        (b"<!doctype html", b"<html")
    )


def kind_of(f: dict[str, Any]) -> str | None:
    """ "image", "text" or None (only named) for a file object as `threads.slim` keeps it."""
    mimetype = str(f.get("mimetype") or "").lower()
    filetype = str(f.get("filetype") or "").lower()
    if mimetype in IMAGE_TYPES:
        return "image"
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


def parts_of(row: ThreadFile, name: str) -> tuple[Part, ...]:
    """A stored file as content parts (the same bytes every time)."""
    if row.kind == "image":
        encoded = base64.b64encode(row.content).decode("ascii")
        return (ImagePart(row.media_type, encoded, row.width, row.height, name),)
    return (TextPart(f"[contents of {name}]\n{row.content.decode('utf-8')}"),)


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
        max_bytes: int = MAX_DOWNLOAD_BYTES,
        timeout: float = DOWNLOAD_TIMEOUT_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=True)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._told: set[str] = set()  # workspaces whose missing scope was logged
        self._lock = threading.Lock()

    def prepare(
        self,
        where: tuple[str, str, str],
        token: str | None,
        messages: Sequence[dict[str, Any]],
        now: datetime,
    ) -> Prepared:
        """The parts of the readable files of `messages` in thread `where` (team, channel,
        thread ts): stored ones as stored, the others downloaded with `token` and stored."""
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
                    out.parts[file_id] = (TextPart(f"[{_name(f)} could not be read: {exc}]"),)
                    out.problems.append(f"{_name(f)} ({exc})")
                    continue
                with self._sessions.begin() as s:
                    data.keep_thread_file(s, row)
            out.parts[file_id] = parts_of(row, _name(f))
        return out

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
        if int(f.get("size") or 0) > self._max_bytes:
            raise FileUnreadable(f"larger than {self._max_bytes // (1024 * 1024)} MB")
        content, content_type = self._fetch(str(url), token)
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
                raise FileUnreadable(str(exc)) from None
            row.kind, row.media_type = "image", image.media_type
            row.width, row.height, row.content = image.width, image.height, image.content
            return row
        text = content.decode("utf-8", errors="replace")
        if len(text) > MAX_TEXT_CHARS:
            cut = len(text) - MAX_TEXT_CHARS
            text = text[:MAX_TEXT_CHARS] + f"\n[… cut: {cut} more characters]"
        row.kind, row.media_type, row.width, row.height = "text", "text/plain", 0, 0
        row.content = text.encode("utf-8")
        return row

    def _fetch(self, url: str, token: str) -> tuple[bytes, str]:
        """The file's bytes and content type; at most `max_bytes`, within the timeout."""
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
                    if total > self._max_bytes:
                        raise FileUnreadable(f"larger than {self._max_bytes // (1024 * 1024)} MB")
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
