"""Slack formatting: Markdown to mrkdwn, no pings, splitting within limits, the cache footer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.pricing import Usage, cache_floor, price_for, savings
from bot.threads import FOOTER_MARK

SECTION_LIMIT = 2900  # Slack allows 3,000 characters of section text
MESSAGE_LIMIT = 11_000  # headroom below the ~13k where msg_blocks_too_long has been seen
MAX_MESSAGES = 4
_TRIMMED_NOTE = "_(answer trimmed to fit Slack)_"

_PING = re.compile(r"<!(channel|here|everyone|subteam\^[^>]*)(\|[^>]*)?>", re.IGNORECASE)
_BARE_PING = re.compile(r"(?<![\w@])@(channel|here|everyone)\b", re.IGNORECASE)
_FENCE = re.compile(r"^\s*```")


def neutralise_pings(text: str) -> str:
    """Make @channel/@here/@everyone and group mentions inert (a zero-width space after @)."""
    text = _PING.sub(lambda m: "@\u200b" + m.group(1).split("^")[0], text)
    return _BARE_PING.sub(lambda m: "@\u200b" + m.group(1), text)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _emphasis(part: str) -> str:
    """Links, bold, italic and strike of text outside code spans."""
    links: list[str] = []

    def keep_link(m: re.Match[str]) -> str:
        label, url = m.group(1), m.group(2)
        links.append(f"<{url.replace('>', '%3E').replace('|', '%7C')}|{_escape(label)}>")
        return f"\x00{len(links) - 1}\x00"

    part = re.sub(r"\[([^\]]+)\]\((https?://[^)\s]+)\)", keep_link, part)
    part = _escape(part)
    part = re.sub(r"\*\*\*(.+?)\*\*\*", "\x01_\\1_\x01", part)
    part = re.sub(r"(?<!\*)\*(?!\*)(\S(?:.*?\S)?)\*(?!\*)", r"_\1_", part)
    part = re.sub(r"\*\*(.+?)\*\*", "\x01\\1\x01", part)
    part = re.sub(r"__(.+?)__", "\x01\\1\x01", part)
    part = re.sub(r"~~(.+?)~~", r"~\1~", part)
    part = part.replace("\x01", "*")
    return re.sub(r"\x00(\d+)\x00", lambda m: links[int(m.group(1))], part)


def _inline(line: str) -> str:
    """Inline Markdown of one line (outside code blocks) to mrkdwn."""
    parts = re.split(r"(`[^`]+`)", line)
    return "".join(
        _escape(p) if len(p) > 1 and p.startswith("`") and p.endswith("`") else _emphasis(p)
        for p in parts
    )


def markdown_to_mrkdwn(text: str) -> str:
    """Convert common Markdown to Slack mrkdwn; code blocks pass through (escaped)."""
    lines = []
    in_code = False
    for line in neutralise_pings(text).split("\n"):
        if _FENCE.match(line):
            in_code = not in_code
            lines.append("```")
            continue
        if in_code:
            lines.append(_escape(line))
            continue
        heading = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            lines.append(f"*{_inline(heading.group(1)).replace('*', '')}*")
            continue
        bullet = re.match(r"^(\s*)[-*+]\s+(.*)$", line)
        if bullet:
            depth = len(bullet.group(1).replace("\t", "  ")) // 2
            lines.append("    " * depth + "• " + _inline(bullet.group(2)))
            continue
        if re.match(r"^\s*([-*_]\s*){3,}$", line):
            lines.append("──────────")
            continue
        lines.append(_inline(line))
    if in_code:
        lines.append("```")
    return "\n".join(lines).strip()


def _split(text: str, limit: int) -> list[str]:
    """Split at paragraph, then line boundaries; a split code block is closed and reopened."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    in_code = False
    for line in text.split("\n"):
        while len(line) > limit:
            head, line = line[:limit], line[limit:]
            chunks.append("\n".join([*current, head]) + ("\n```" if in_code else ""))
            current, size = (["```"] if in_code else []), 0
        if size + len(line) + 1 > limit - 4 and current:
            chunks.append("\n".join(current) + ("\n```" if in_code else ""))
            current, size = (["```"] if in_code else []), 0
        current.append(line)
        size += len(line) + 1
        if line.startswith("```"):
            in_code = not in_code
    if current:
        chunks.append("\n".join(current))
    return [c for c in chunks if c.strip()]


@dataclass(frozen=True)
class Outgoing:
    """One Slack message: plain-text fallback plus blocks."""

    text: str
    blocks: list[dict[str, Any]]


def build_messages(markdown: str, footer: str | None) -> list[Outgoing]:
    """The answer as one or more Slack messages, the footer on the last one."""
    mrkdwn = markdown_to_mrkdwn(markdown) or "_(the model returned an empty answer)_"
    sections = _split(mrkdwn, SECTION_LIMIT)
    groups: list[list[str]] = [[]]
    for section in sections:
        if groups[-1] and sum(map(len, groups[-1])) + len(section) > MESSAGE_LIMIT:
            groups.append([])
        groups[-1].append(section)
    if len(groups) > MAX_MESSAGES:
        groups = groups[:MAX_MESSAGES]
        groups[-1].append(_TRIMMED_NOTE)
    out = []
    for i, group in enumerate(groups):
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": s}} for s in group
        ]
        text = "\n\n".join(group)
        if footer and i == len(groups) - 1:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
            text = f"{text}\n\n{footer}"
        out.append(Outgoing(text=text, blocks=blocks))
    return out


def _money(value: float) -> str:
    if abs(value) >= 0.01:
        return f"${value:,.2f}"
    return f"${value:,.4f}"


def footer_line(usage: Usage, model: str, floor_overrides: dict[str, int] | None = None) -> str:
    """One line: cache reads and their share, money saved; or what was written; or why not."""
    prompt = usage.prompt_tokens
    price = price_for(model)
    floor = cache_floor(model, floor_overrides)
    if usage.cache_read_tokens:
        line = (
            f"{FOOTER_MARK} {usage.cache_read_tokens:,} of {prompt:,} prompt tokens from cache "
            f"({usage.read_share:.0%})"
        )
        if price is not None:
            line += f" · saved {_money(savings(usage, price))}"
        if usage.cache_creation_tokens:
            line += f" · {usage.cache_creation_tokens:,} more cached for follow-ups"
        return line
    if usage.cache_creation_tokens:
        line = (
            f"{FOOTER_MARK} {usage.cache_creation_tokens:,} of {prompt:,} prompt tokens cached "
            "for follow-ups"
        )
        if price is not None:
            full = usage.cache_creation_tokens * price.input
            line += f" · each follow-up saves up to {_money(full * 0.9)}"
        return line
    if prompt < floor:
        return (
            f"{FOOTER_MARK} {prompt:,} prompt tokens · under the {floor:,}-token minimum "
            f"{model} caches, so not cached"
        )
    return f"{FOOTER_MARK} {prompt:,} prompt tokens · endpoint did not cache"
