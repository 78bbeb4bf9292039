"""Pure: Slack messages -> transcript turns, and token estimates. No Slack client, no database.

The caller resolves what needs Slack first (display names, which authors belong to another
organisation) and passes it in, so the same messages and inputs always give the same bytes.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

OWN_NAME = "You (assistant)"
FOOTER_MARK = "⚡"
EXTERNAL_NOTE = (
    "[a message from another organisation in this shared channel (Slack Connect); "
    "its content is not shared with the assistant]"
)
# The key of a stored stub that stands for another organisation's message (Slack Connect): only
# its ts, thread and team are kept, never its content; it renders as EXTERNAL_NOTE.
EXTERNAL_STUB = "external"
SKIPPED_SUBTYPES = {"channel_join", "channel_leave", "tombstone", "group_join", "group_leave"}

USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL_REF = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL_REF = re.compile(
    r"<!(subteam\^[A-Z0-9]+|here|channel|everyone|date\^[^>|]*)(?:\|([^>]*))?>"
)
_LINK_REF = re.compile(r"<((?:https?|mailto):[^>|]+)(?:\|([^>]*))?>")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")


def estimate_tokens(text: str) -> int:
    """A network-free token estimate: CJK characters ~1 token each, other text ~4 chars a token."""
    cjk = len(_CJK.findall(text))
    return cjk + (len(text) - cjk + 3) // 4 + 1


@dataclass(frozen=True)
class TextPart:
    """A text content part (what every turn has today)."""

    text: str

    def block(self) -> dict[str, Any]:
        """The part as a Messages API content block."""
        return {"type": "text", "text": self.text}

    def tokens(self) -> int:
        """Its estimated size in tokens."""
        return estimate_tokens(self.text)


# Anthropic's vision guidance: an image costs about width x height / 750 tokens, after the API
# scales it down to a long edge of 1,568 px.
IMAGE_LONG_EDGE = 1568
IMAGE_TOKEN_DIVISOR = 750


def image_tokens(width: int, height: int) -> int:
    """What an image of `width` x `height` pixels costs the model, in tokens."""
    long_edge = max(width, height, 1)
    if long_edge > IMAGE_LONG_EDGE:
        factor = IMAGE_LONG_EDGE / long_edge
        width, height = int(width * factor), int(height * factor)
    return max(1, (width * height + IMAGE_TOKEN_DIVISOR - 1) // IMAGE_TOKEN_DIVISOR)


@dataclass(frozen=True)
class ImagePart:
    """An image content part (a file in the thread): its base64 bytes and size in pixels, and
    the file's name (for a note when the image has to be left out of a request)."""

    media_type: str
    data: str
    width: int
    height: int
    name: str = ""

    def block(self) -> dict[str, Any]:
        """The part as a Messages API image block."""
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": self.media_type, "data": self.data},
        }

    def tokens(self) -> int:
        """Its estimated size in tokens."""
        return image_tokens(self.width, self.height)


# Anthropic's PDF support ("Estimate your costs"): every page is extracted as text and also
# converted into an image, so a page costs its text's tokens ("typically 1,500-3,000 a page",
# depending on density) plus an image's, which the vision guidance caps at about 1,600 tokens
# (a page at the 1.15-megapixel ceiling). The estimate: the text's own estimate + 1,600 a page.
PAGE_IMAGE_TOKENS = 1600
PDF_MEDIA_TYPE = "application/pdf"


def document_tokens(pages: int, text_tokens: int) -> int:
    """What a PDF of `pages` pages whose text is about `text_tokens` tokens costs the model."""
    return max(1, pages) * PAGE_IMAGE_TOKENS + max(0, text_tokens)


@dataclass(frozen=True)
class DocumentPart:
    """A PDF content part (a file in the thread): its base64 bytes, its page count and the
    estimated tokens of its text."""

    data: str
    pages: int
    text_tokens: int

    def block(self) -> dict[str, Any]:
        """The part as a Messages API document block."""
        return {
            "type": "document",
            "source": {"type": "base64", "media_type": PDF_MEDIA_TYPE, "data": self.data},
        }

    def tokens(self) -> int:
        """Its estimated size in tokens."""
        return document_tokens(self.pages, self.text_tokens)


# The kinds of content a turn can carry.
Part = TextPart | ImagePart | DocumentPart


@dataclass(frozen=True)
class Turn:
    """One message of the transcript, rendered once and never changed: its text line
    (`[time] author: body`), then any further content parts (`extra`: its files' contents)."""

    ts: str
    text: str
    own: bool = False
    extra: tuple[Part, ...] = ()

    @property
    def parts(self) -> tuple[Part, ...]:
        """The turn's content, in order."""
        return (TextPart(self.text), *self.extra)

    def blocks(self) -> list[dict[str, Any]]:
        """The turn as Messages API content blocks, one a part."""
        return [p.block() for p in self.parts]

    def tokens(self) -> int:
        """Its estimated size in tokens."""
        return sum(p.tokens() for p in self.parts)


def mentioned_users(text: str, *, unlabelled: bool = False) -> list[str]:
    """The user ids that `<@U…>` mentions in Slack markup name, in order of first mention
    (`unlabelled`: only those that carry no name of their own, the ones `clean` looks up)."""
    found = USER_REF.findall(text)
    return list(dict.fromkeys(u for u, label in found if not (unlabelled and label)))


def is_own(m: dict[str, Any], bot_user_id: str, bot_id: str | None) -> bool:
    """Whether the bot wrote message `m`."""
    return m.get("user") == bot_user_id or (bot_id is not None and m.get("bot_id") == bot_id)


def rendered(m: dict[str, Any]) -> bool:
    """Whether message `m` has a turn (joins and leaves have none)."""
    return m.get("subtype") not in SKIPPED_SUBTYPES


def clean(text: str, names: Mapping[str, str]) -> str:
    """Slack's markup to plain text: mentions become names (`names`, else the id), links show
    label and URL."""

    def user(m: re.Match[str]) -> str:
        return "@" + (m.group(2) or names.get(m.group(1), m.group(1)))

    def channel(m: re.Match[str]) -> str:
        return "#" + (m.group(2) or m.group(1))

    def special(m: re.Match[str]) -> str:
        if m.group(2):
            return m.group(2)
        kind = m.group(1)
        return "@" + kind if kind in ("here", "channel", "everyone") else "@group"

    def link(m: re.Match[str]) -> str:
        url, label = m.group(1), m.group(2)
        return f"{label} ({url})" if label and label != url else url

    text = USER_REF.sub(user, text)
    text = _CHANNEL_REF.sub(channel, text)
    text = _SPECIAL_REF.sub(special, text)
    text = _LINK_REF.sub(link, text)
    return html.unescape(text)


def _strip_footer(text: str) -> str:
    lines = text.rstrip().split("\n")
    while lines and lines[-1].startswith(FOOTER_MARK):
        lines.pop()
    return "\n".join(lines).rstrip()


def stamp(ts: str) -> str:
    """A Slack ts as the transcript shows it (minutes, UTC)."""
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Renderer:
    """How to render one thread's messages: who is the bot, who is who, who is outside."""

    names: Mapping[str, str]
    is_external: Callable[[dict[str, Any]], bool]
    bot_user_id: str
    bot_id: str | None
    recap: bool = False
    # A conversation with the bot (its DM): the bot's own messages are its earlier answers, in
    # turns of their own, so they are only their text (no time or author line).
    conversation: bool = False
    # What the files of the messages hold, by file id (`bot.files`): parts after the turn's text.
    files: Mapping[str, tuple[Part, ...]] = field(default_factory=dict)

    def render(self, messages: Sequence[dict[str, Any]]) -> list[Turn]:
        """The transcript turns of `messages`; the same inputs always give the same bytes.

        With `recap`, replies say which thread they belong to (a channel's messages interleave).
        A message by another organisation's author is only a placeholder: its text, files and
        name never reach the model.
        """
        return [self.turn(m) for m in messages if rendered(m)]

    def turn(self, m: dict[str, Any]) -> Turn:
        """One message as a turn."""
        own = is_own(m, self.bot_user_id, self.bot_id)
        if not own and (m.get(EXTERNAL_STUB) or self.is_external(m)):
            return Turn(ts=m["ts"], text=f"[{stamp(m['ts'])}] {EXTERNAL_NOTE}", own=False)
        author, body = self._author_and_body(m, own)
        body = clean(body, self.names).strip()
        if own and self.conversation:
            return Turn(ts=m["ts"], text=body or "…", own=True)
        extra: list[Part] = []
        for f in m.get("files") or []:
            if f.get("mode") == "tombstone":  # deleted: Slack keeps only the id
                body += "\n[file deleted]"
                continue
            kind = f.get("pretty_type") or f.get("filetype") or "file"
            body += f"\n[file: {f.get('name') or f.get('title') or 'unnamed'} ({kind})]"
            extra.extend(self.files.get(f.get("id") or "", ()))
        parent = m.get("thread_ts")
        if self.recap and parent and parent != m["ts"]:
            author += f" (reply in the thread started {stamp(parent)})"
        text = f"[{stamp(m['ts'])}] {author}: {body.strip()}"
        return Turn(ts=m["ts"], text=text, own=own, extra=tuple(extra))

    def _author_and_body(self, m: dict[str, Any], own: bool) -> tuple[str, str]:
        if own:
            return OWN_NAME, _strip_footer(m.get("text") or "")
        if m.get("bot_id") or m.get("subtype") == "bot_message":
            profile = m.get("bot_profile") or {}
            return f"{m.get('username') or profile.get('name') or 'bot'} (bot)", m.get("text") or ""
        user = m.get("user")
        return (self.names.get(user, user) if user else "unknown"), m.get("text") or ""
