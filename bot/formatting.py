"""Slack formatting: Markdown to mrkdwn (or `markdown` blocks), no pings, splitting, the footer.

The rules, with examples, are in docs/formatting.md.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bot.pricing import Usage, cache_floor, money, price_for, savings
from bot.transcript import FOOTER_MARK

SECTION_LIMIT = 2900  # Slack allows 3,000 characters of section text
MESSAGE_LIMIT = 11_000  # headroom below the ~13k where msg_blocks_too_long has been seen
MARKDOWN_LIMIT = 11_000  # a `markdown` block allows 12,000 characters across a message
# 50 blocks per message, less a trim note, the stop note, the footer, the 👍/👎 control and a
# caller's button (the share button of a summary).
MAX_SECTIONS = 45
MAX_MESSAGES = 4
TABLE_MAX_WIDTH = 60  # wider tables become one line per row
ZWSP = "\u200b"
_EMPTY = "_(the model returned an empty answer)_"
_TRIMMED_NOTE = "_(answer trimmed to fit Slack)_"

_PING = re.compile(r"<!(channel|here|everyone|group|subteam\^[^>|]*)(?:\|([^>]*))?>", re.IGNORECASE)
_BARE_PING = re.compile(r"@(channel|here|everyone)(?![A-Za-z0-9_])", re.IGNORECASE)
_ADDRESS_BEFORE = re.compile(r"[A-Za-z0-9._%+-]")
_DOMAIN_AFTER = re.compile(r"\.[A-Za-z0-9]")


def neutralise_pings(text: str) -> str:
    """Make @channel/@here/@everyone and group mentions inert (a zero-width space after @)."""

    def inert(m: re.Match[str]) -> str:
        name = m.group(1).split("^")[0]
        if name.lower() == "subteam" and m.group(2):
            name = m.group(2).lstrip("@") or name
        return "@" + ZWSP + name

    def bare(m: re.Match[str]) -> str:
        before = m.string[m.start() - 1 : m.start()]
        if before == "/" or (
            _ADDRESS_BEFORE.fullmatch(before) and _DOMAIN_AFTER.match(m.string, m.end())
        ):
            return m.group(0)  # a URL path or an e-mail address such as ops@here.com
        return "@" + ZWSP + m.group(1)

    return _BARE_PING.sub(bare, _PING.sub(inert, text))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clean(markdown: str) -> str:
    """Unix newlines, no characters this module reserves, no pings."""
    text = markdown.replace("\r\n", "\n").replace("\r", "\n")
    return neutralise_pings(_RESERVED.sub("", text))


# -- inline Markdown ------------------------------------------------------------------------
# Emphasis is first written with private-use sentinels, so that the last pass knows which
# marker opens and which closes and can put a zero-width space outside it where the neighbour
# would stop Slack from seeing the marker (CJK text has no spaces between words).

BO, BC, IO, IC, SO, SC, CO, CC = (chr(0xE000 + i) for i in range(8))
_MARK = {BO: "*", BC: "*", IO: "_", IC: "_", SO: "~", SC: "~", CO: "`", CC: "`"}
_OPENERS = frozenset((BO, IO, SO, CO))
_CLOSERS = frozenset((BC, IC, SC, CC))
_RESERVED = re.compile("[\x00\ue000-\ue007]")
_SLOT = re.compile("\x00(\\d+)\x00")

# Spans are capped at 500 characters: a long line full of stray markers stays linear.
_CODE_SPAN = re.compile(r"(`+)(?!`)(.{1,500}?)(?<!`)\1(?!`)")
_MD_LINK = re.compile(
    r"(!?)\[([^\]\n]*)\]\(\s*<?((?:[^()\s<>]|\([^()\s]*\))+)>?(?:\s+\"[^\"]*\")?\s*\)"
)
_AUTOLINK = re.compile(r"<((?:https?://|mailto:)[^\s<>|]+)>", re.IGNORECASE)
_BARE_URL = re.compile(r"https?://[^\s<>|\"\x00\u3000-\u303f\uff01-\uff65]+", re.IGNORECASE)
_BACKSLASH = re.compile(r"\\([!-/:-@\[-`{-~])")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_BOLD_ITALIC = re.compile(r"\*\*\*(?=\S)(.{1,500}?)(?<=\S)\*\*\*")
_BOLD = re.compile(r"\*\*(?=\S)(.{1,500}?)(?<=\S)\*\*")
_BOLD_U = re.compile(r"(?<![A-Za-z0-9_])__(?=\S)(.{1,500}?)(?<=\S)__(?![A-Za-z0-9_])")
_ITALIC = re.compile(r"(?<![A-Za-z0-9*\\])\*(?=[^\s*])(.{1,500}?)(?<=[^\s*])\*(?![A-Za-z0-9*])")
_ITALIC_U = re.compile(r"(?<![A-Za-z0-9_])_(?=[^\s_])(.{1,500}?)(?<=[^\s_])_(?![A-Za-z0-9_])")
_STRIKE = re.compile(r"~~(?=\S)(.{1,500}?)(?<=\S)~~")
_ONLY_URL = re.compile(f"[{BO}{IO}{SO}]+(\x00\\d+\x00)[{BC}{IC}{SC}]+")


def _wordlike(ch: str) -> bool:
    return unicodedata.category(ch)[0] in "LNM"


def _needs_gap_before(ch: str) -> bool:
    """Would `ch` right before an opening marker hide it? Letters, digits, CJK, emoji do."""
    return _wordlike(ch) or (ord(ch) > 127 and unicodedata.category(ch)[0] == "S")


def _needs_gap_after(ch: str) -> bool:
    """Would `ch` right after a closing marker hide it? Also full-width punctuation (。，）)."""
    return _wordlike(ch) or (ord(ch) > 127 and unicodedata.category(ch)[0] not in "ZC")


def _finish(text: str) -> str:
    """Sentinels to mrkdwn markers, with a zero-width space outside where Slack needs one."""
    out: list[str] = []
    last = len(text) - 1
    for i, ch in enumerate(text):
        if ch in _OPENERS:
            prev = text[i - 1] if i else ""
            if prev and prev not in _OPENERS and _needs_gap_before(_MARK.get(prev, prev)):
                out.append(ZWSP)
            out.append(_MARK[ch])
        elif ch in _CLOSERS:
            out.append(_MARK[ch])
            nxt = text[i + 1] if i < last else ""
            if nxt and nxt not in _CLOSERS and _needs_gap_after(_MARK.get(nxt, nxt)):
                out.append(ZWSP)
        else:
            out.append(ch)
    return "".join(out)


def _strip_markers(text: str) -> str:
    """Markdown emphasis and code marks removed (for link labels and table cells)."""
    text = _CODE_SPAN.sub(lambda m: m.group(2), text)
    for pattern in (_BOLD_ITALIC, _BOLD, _BOLD_U, _ITALIC, _ITALIC_U, _STRIKE):
        text = pattern.sub(r"\1", text)
    return _BACKSLASH.sub(r"\1", text)


def _trim_url(url: str) -> str:
    """A bare URL without the sentence punctuation or emphasis marks glued to its end."""
    while url and (url[-1] in ".,:;!?'*_~" or (url[-1] == ")" and url.count(")") > url.count("("))):
        url = url[:-1]
    return url


def _inline_tokens(text: str) -> str:
    """One line of Markdown to escaped mrkdwn, emphasis still as sentinels."""
    saved: list[str] = []
    urls: set[str] = set()

    def keep(value: str) -> str:
        saved.append(value)
        return f"\x00{len(saved) - 1}\x00"

    def code(m: re.Match[str]) -> str:
        body = m.group(2)
        if len(body) > 2 and body[0] == body[-1] == " " and body.strip():
            body = body[1:-1]
        return keep(CO + _escape(body) + CC)

    def link(m: re.Match[str]) -> str:
        label = _escape(_strip_markers(m.group(2)).strip())
        url = m.group(3)
        if not re.match(r"https?://", url, re.IGNORECASE):
            return keep(label or _escape(url))
        safe = url.replace("&", "&amp;").replace("<", "%3C").replace(">", "%3E")
        return keep(f"<{safe.replace('|', '%7C')}|{label or _escape(url)}>")

    def bare(m: re.Match[str]) -> str:
        url = _trim_url(m.group(0))
        slot = keep(_escape(url))
        urls.add(slot)
        return slot + m.group(0)[len(url) :]

    text = _CODE_SPAN.sub(code, text)
    text = _MD_LINK.sub(link, text)
    text = _AUTOLINK.sub(lambda m: keep(_escape(re.sub("^mailto:", "", m.group(1)))), text)
    text = _BARE_URL.sub(bare, text)
    text = _BACKSLASH.sub(lambda m: keep(_escape(m.group(1))), text)
    text = _escape(_BR.sub("\n", text))
    text = _BOLD_ITALIC.sub(f"{BO}{IO}\\1{IC}{BC}", text)
    text = _BOLD.sub(f"{BO}\\1{BC}", text)
    text = _BOLD_U.sub(f"{BO}\\1{BC}", text)
    text = _ITALIC.sub(f"{IO}\\1{IC}", text)
    text = _ITALIC_U.sub(f"{IO}\\1{IC}", text)
    text = _STRIKE.sub(f"{SO}\\1{SC}", text)
    # Slack's auto-linker would take a closing mark into a bare URL: a URL is not emphasised.
    text = _ONLY_URL.sub(lambda m: m.group(1) if m.group(1) in urls else m.group(0), text)
    if text.count("~") >= 2 or ("~" in text and SO in text):
        text = text.replace("~", "\u223c")  # "~5 min to ~10 min" must not strike through
    return _SLOT.sub(lambda m: saved[int(m.group(1))], text)


def _inline(text: str) -> str:
    """One line of Markdown (outside code blocks) to mrkdwn."""
    return _unfence(_finish(_inline_tokens(text)))


# -- tables ---------------------------------------------------------------------------------

_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-+:?\s*(?:\|\s*:?-+:?\s*)*\|?\s*$")


def _cells(line: str) -> list[str]:
    """A pipe-table row's cells; `\\|` and pipes inside code spans are content."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells: list[str] = []
    cur: list[str] = []
    in_code = False
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and s[i + 1 : i + 2] == "|":
            cur.append("|")
            i += 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
        i += 1
    cells.append("".join(cur).strip())
    return cells


@dataclass(frozen=True)
class _Table:
    header: list[str]
    aligns: list[str]  # "l", "r" or "c"
    rows: list[list[str]]


def _table_at(lines: list[str], i: int) -> tuple[_Table, int] | None:
    """The pipe table starting at line i and the index after it, or None."""
    if i + 1 >= len(lines) or "|" not in lines[i] or "|" not in lines[i + 1]:
        return None
    if not _TABLE_RULE.match(lines[i + 1]):
        return None
    header = _cells(lines[i])
    aligns = []
    for rule in _cells(lines[i + 1]):
        left, right = rule.startswith(":"), rule.endswith(":")
        aligns.append("c" if left and right else "r" if right else "l")
    width = len(header)
    aligns = (aligns + ["l"] * width)[:width]
    rows = []
    j = i + 2
    while j < len(lines) and lines[j].strip() and "|" in lines[j]:
        row = _cells(lines[j])
        if len(row) > width:
            row = [*row[: width - 1], " | ".join(row[width - 1 :])]
        rows.append(row + [""] * (width - len(row)))
        j += 1
    return _Table(header, aligns, rows), j


def display_width(text: str) -> int:
    """Columns `text` takes in a monospaced font: CJK and other wide characters count 2."""
    width = 0
    for ch in text:
        if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _plain_cell(cell: str) -> str:
    text = _MD_LINK.sub(lambda m: m.group(2) or m.group(3), _BR.sub(" ", cell))
    return _strip_markers(_AUTOLINK.sub(r"\1", text)).strip()


def _table_grid(table: _Table) -> list[str] | None:
    """The table as padded monospaced lines, or None when too wide or holding links."""
    if any("://" in cell for row in (table.header, *table.rows) for cell in row):
        return None  # links stay clickable in the list form
    grid = [[neutralise_pings(_plain_cell(c)) for c in row] for row in (table.header, *table.rows)]
    widths = [max(display_width(row[k]) for row in grid) for k in range(len(table.header))]
    if sum(widths) + 3 * (len(widths) - 1) > TABLE_MAX_WIDTH:
        return None

    def pad(text: str, k: int) -> str:
        gap = widths[k] - display_width(text)
        left = {"l": 0, "r": gap, "c": gap // 2}[table.aligns[k]]
        return " " * left + text + " " * (gap - left)

    lines = [" | ".join(pad(c, k) for k, c in enumerate(row)).rstrip() for row in grid]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


def _table_rows(table: _Table, cell: Callable[[str], str]) -> list[str]:
    """One "col1: value, col2: value" line per row, empty cells left out."""
    if not table.rows:
        return [", ".join(cell(h) for h in table.header if h.strip())]
    out = []
    for row in table.rows:
        parts = [
            f"{cell(h)}: {cell(v)}" if h else cell(v)
            for h, v in zip(table.header, row, strict=True)
            if v.strip()
        ]
        if parts:
            out.append(", ".join(parts))
    return out


# -- blocks ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """A piece a message may be split before: a paragraph, or a whole code block."""

    text: str
    gap: bool  # a blank line before it
    fence: str = ""  # for a code block, its opening fence line (it closes with ```)


class _Units:
    """Collects converted lines into units, remembering where blank lines were."""

    def __init__(self) -> None:
        self.units: list[_Unit] = []
        self._para: list[str] = []
        self._para_gap = False
        self._gap = False

    def blank(self) -> None:
        self.flush()
        self._gap = bool(self.units)

    def line(self, text: str) -> None:
        if not self._para:
            self._para_gap, self._gap = self._gap, False
        self._para.append(neutralise_pings(text))  # again: conversion may expose "@here"

    def code(self, fence: str, body: list[str]) -> None:
        self.flush()
        self.units.append(_Unit("\n".join([fence, *body, "```"]), self._gap, fence))
        self._gap = False

    def flush(self) -> None:
        if self._para:
            self.units.append(_Unit("\n".join(self._para), self._para_gap))
            self._para = []


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^\s{0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*$")
_RULE = re.compile(r"^\s{0,3}([-*_])(?:\s*\1){2,}\s*$")
_QUOTE = re.compile(r"^\s{0,3}((?:>\s?)+)(.*)$")
_ITEM = re.compile(r"^(\s*)([-*+•]|\d{1,9}[.)])\s+(.*)$")
_TASK = re.compile(r"^\[([ xX])\]\s+(.*)$")
_BULLETS = ("•", "◦", "▪")


def _unfence(line: str) -> str:
    """A line of code that cannot end Slack's code block early."""
    return line.replace("```", "`" + ZWSP + "``")


def _fence_at(lines: list[str], i: int) -> tuple[str, list[str], int] | None:
    """A fenced code block at line i: (info string, body dedented, index after), or None."""
    m = _FENCE.match(lines[i])
    if not m or (m.group(2)[0] == "`" and "`" in m.group(3)):
        return None
    indent, marker = len(m.group(1)), m.group(2)
    close = re.compile(rf"^\s*{re.escape(marker[0])}{{{len(marker)},}}\s*$")
    body = []
    j = i + 1
    while j < len(lines) and not close.match(lines[j]):
        line = lines[j]
        strip = min(indent, len(line) - len(line.lstrip(" ")))
        body.append(line[strip:])
        j += 1
    while j >= len(lines) and body and not body[-1].strip():
        body.pop()  # an unclosed fence ran to the end: no trailing blank lines
    return m.group(3).strip(), body, j + 1


class _Renderer(Protocol):
    """What one output form decides; the walk over fences, blank lines and tables is shared."""

    bullet: str  # before each row of a table laid out as a list

    def fence(self, info: str) -> str:
        """The opening fence line of a code block with this info string."""
        ...

    def code(self, line: str) -> str:
        """One line inside a fenced code block, made safe for this form."""
        ...

    def grid(self, line: str) -> str:
        """One line of a table laid out as a monospaced grid."""
        ...

    def inline(self, text: str) -> str:
        """One line of Markdown text (a table cell, a paragraph line) in this form."""
        ...

    def table_done(self) -> None:
        """A table ended (it closes any open list)."""
        ...

    def line(self, line: str, units: _Units) -> None:
        """Any other non-blank line outside code blocks and tables."""
        ...


def _units(markdown: str, render: _Renderer) -> list[_Unit]:
    """The one walk over lines: code blocks, blank lines and tables here, the rest by `render`."""
    lines = _clean(markdown).split("\n")
    units = _Units()
    i = 0
    while i < len(lines):
        fenced = _fence_at(lines, i)
        if fenced:
            info, body, i = fenced
            if any(b.strip() for b in body):
                units.code(render.fence(info), [_unfence(render.code(b)) for b in body])
            continue
        table = _table_at(lines, i)
        if table:
            parsed, i = table
            units.flush()
            grid = _table_grid(parsed)
            if grid:
                units.code("```", [_unfence(render.grid(g)) for g in grid])
            else:
                for row in _table_rows(parsed, render.inline):
                    units.line(render.bullet + row)
            render.table_done()
            continue
        if lines[i].strip():
            render.line(lines[i], units)
        else:
            units.blank()
        i += 1
    units.flush()
    return units.units


class _Mrkdwn:
    """mrkdwn: escaped text, Slack's markers, headings in bold, lists drawn with glyphs."""

    bullet = "• "

    def __init__(self) -> None:
        self.depths: list[int] = []  # indentation of each open list level

    def fence(self, info: str) -> str:
        return "```"  # mrkdwn shows no language

    def code(self, line: str) -> str:
        return _escape(line)

    def grid(self, line: str) -> str:
        return _escape(line)

    def inline(self, text: str) -> str:
        return _inline(text)

    def table_done(self) -> None:
        self.depths.clear()

    def line(self, line: str, units: _Units) -> None:
        heading = _HEADING.match(line)
        quote = _QUOTE.match(line)
        if heading:
            units.flush()
            title = _inline_tokens(heading.group(1) or "").replace(BO, "").replace(BC, "")
            if title.strip():
                units.line(_unfence(_finish(BO + title + BC)))
            self.depths.clear()
        elif _RULE.match(line):
            units.line("──────────")
            self.depths.clear()
        elif quote:
            item = _ITEM.match(quote.group(2))
            body = ("• " + _inline(item.group(3))) if item else _inline(quote.group(2).strip())
            units.line(("> " + body).rstrip())
        else:
            units.line(self._list_or_text(line))

    def _list_or_text(self, line: str) -> str:
        """A list item, a list item's continuation line, or a line of a paragraph."""
        item = _ITEM.match(line)
        indent = len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip(" "))
        if item:
            return self._item(indent, item.group(2), item.group(3))
        if self.depths and indent >= 2:
            return "    " * (len(self.depths) - 1) + "  " + _inline(line.strip())
        self.depths.clear()
        return _inline(line.strip())

    def _item(self, indent: int, marker: str, content: str) -> str:
        """A list item at its depth: a bullet glyph per level, numbers kept, tasks as boxes."""
        depths = self.depths
        while depths and indent < depths[-1]:
            depths.pop()
        if not depths or indent > depths[-1]:
            depths.append(indent)
        depth = len(depths) - 1
        glyph = _BULLETS[min(depth, 2)] if not marker[0].isdigit() else marker[:-1] + "."
        task = _TASK.match(content)
        if task:
            box = "☐" if task.group(1) == " " else "☑"
            glyph = f"{glyph} {box}" if marker[0].isdigit() else box
            content = task.group(2)
        return "    " * depth + glyph + " " + _inline(content)


def _join(units: list[_Unit]) -> str:
    parts = []
    for k, unit in enumerate(units):
        if k:
            parts.append("\n\n" if unit.gap else "\n")
        parts.append(unit.text)
    return "".join(parts)


def markdown_to_mrkdwn(text: str) -> str:
    """Convert common Markdown to Slack mrkdwn; code blocks pass through (escaped)."""
    return _join(_units(text, _Mrkdwn())).strip("\n")


# -- the `markdown` block -------------------------------------------------------------------

_ANGLE = re.compile(r"<([^<>\s][^<>\n]*)>")
_UNDERSCORES = re.compile(
    r"(?<![A-Za-z0-9_\\])(__?)(?=[^\s_])(.{1,500}?)(?<=[^\s_])\1(?![A-Za-z0-9_])"
)
_MD_TOKEN = re.compile(
    r"(`+)[^`\n]{1,500}?\1(?!`)"
    r"|\*\*\*(?=\S).{1,500}?(?<=\S)\*\*\*"
    r"|\*\*(?=\S).{1,500}?(?<=\S)\*\*"
    r"|~~(?=\S).{1,500}?(?<=\S)~~"
    r"|(?<![A-Za-z0-9*\\])\*(?=[^\s*]).{1,500}?(?<=[^\s*])\*(?![A-Za-z0-9*])"
)


def _defuse_angles(text: str) -> str:
    """No Slack `<…>` syntax from the model: a Markdown autolink stays, the rest is text."""

    def repl(m: re.Match[str]) -> str:
        inner = m.group(1)
        if re.fullmatch(r"https?://[^\s|]+", inner, re.IGNORECASE):
            return m.group(0)
        if re.fullmatch(r"br\s*/?", inner, re.IGNORECASE):
            return "\n"
        return f"\uff1c{inner}\uff1e"

    return _ANGLE.sub(repl, text)


def inert_markdown(text: str) -> str:
    """Markdown text from the model made safe to send as-is (streamed `markdown_text`):
    no pings, no Slack `<…>` mentions or links except plain URLs."""
    return _defuse_angles(neutralise_pings(text))


def _md_inline(text: str) -> str:
    """One line of Markdown for a `markdown` block: no Slack syntax, CJK-safe emphasis."""
    saved: list[str] = []

    def keep(value: str) -> str:
        saved.append(value)
        return f"\x00{len(saved) - 1}\x00"

    def link(m: re.Match[str]) -> str:
        label = _defuse_angles(m.group(2)).replace("\n", " ")
        return keep(f"{m.group(1)}[{label}]({m.group(3)})")

    text = _CODE_SPAN.sub(lambda m: keep(re.sub(r"<(?=[@#!])", "<" + ZWSP, m.group(0))), text)
    text = _MD_LINK.sub(link, text)
    text = _defuse_angles(text)
    text = _BARE_URL.sub(lambda m: keep(m.group(0)), text)
    text = _UNDERSCORES.sub(lambda m: "*" * len(m[1]) + m[2] + "*" * len(m[1]), text)
    text = _SLOT.sub(lambda m: saved[int(m.group(1))], text)

    def gap(m: re.Match[str]) -> str:
        s, e = m.span()
        before = ZWSP if s and _needs_gap_before(text[s - 1]) else ""
        after = ZWSP if e < len(text) and _needs_gap_after(text[e]) else ""
        return before + m.group(0) + after

    first, *more = _MD_TOKEN.sub(gap, text).split("\n")  # more: lines a <br> started
    return "\n".join([first, *(_unfence(m).replace("~~~", "~" + ZWSP + "~~") for m in more)])


class _Markdown:
    """A `markdown` block: standard Markdown kept, Slack's syntax and pings made inert."""

    bullet = "- "

    def fence(self, info: str) -> str:
        return "```" + info.split(" ")[0].replace("`", "")  # the language, for highlighting

    def code(self, line: str) -> str:
        return re.sub(r"<(?=[@#!])", "<" + ZWSP, line)

    def grid(self, line: str) -> str:
        return line

    def inline(self, text: str) -> str:
        return _md_inline(text)

    def table_done(self) -> None:
        pass

    def line(self, line: str, units: _Units) -> None:
        units.line(_md_inline(line))


# -- splitting ------------------------------------------------------------------------------


def _size(text: str) -> int:
    """Length as Slack counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def _prefix(text: str, limit: int) -> int:
    """The longest prefix of `text` within `limit`, not cutting an entity or a <…> link."""
    size = end = 0
    for end, ch in enumerate(text):  # noqa: B007
        size += 2 if ord(ch) > 0xFFFF else 1
        if size > limit:
            break
    else:
        return len(text)
    amp, semi = text.rfind("&", 0, end), text.rfind(";", 0, end)
    if amp > semi and end - amp < 6:
        end = amp
    lt, gt = text.rfind("<", 0, end), text.rfind(">", 0, end)
    if lt > gt and lt > 0 and text.find(">", end) != -1:
        end = lt
    return max(end, 1)


def _cut_line(line: str, limit: int, prose: bool) -> list[str]:
    """A line longer than `limit` in pieces; prose is cut after a sentence or at a space."""
    pieces = []
    while _size(line) > limit:
        end = _prefix(line, limit)
        if prose:
            head = line[:end]
            best = max(head.rfind(p) + len(p) for p in (". ", "。", "！", "？", "! ", "? "))
            if best < end // 2:
                best = head.rfind(" ") + 1
            if best >= end // 2:
                end = best
        pieces.append(line[:end].rstrip() if prose else line[:end])
        line = line[end:].lstrip() if prose else line[end:]
    return [*pieces, line] if line else pieces


def _fit(unit: _Unit, limit: int) -> list[str]:
    """A unit in pieces within `limit`; a split code block is closed and reopened."""
    if _size(unit.text) <= limit:
        return [unit.text]
    if unit.fence:
        lines = unit.text.split("\n")
        fence, close, body = lines[0], lines[-1], lines[1:-1]
        budget = limit - _size(fence) - _size(close) - 2
    else:
        fence = close = ""
        body = unit.text.split("\n")
        budget = limit
    pieces: list[list[str]] = [[]]
    size = 0
    for line in body:
        for part in _cut_line(line, budget, not unit.fence) or [""]:
            if pieces[-1] and size + _size(part) + 1 > budget:
                pieces.append([])
                size = 0
            pieces[-1].append(part)
            size += _size(part) + 1
    if not unit.fence:
        return ["\n".join(p) for p in pieces]
    return ["\n".join([fence, *p, close]) for p in pieces]


def _sections(units: list[_Unit], limit: int) -> list[str]:
    """Units packed into texts within `limit`, split only between units where possible."""
    out: list[str] = []
    current = ""
    for unit in units:
        for k, piece in enumerate(_fit(unit, limit)):
            sep = "\n\n" if unit.gap and k == 0 else "\n"
            if current and _size(current) + len(sep) + _size(piece) <= limit:
                current += sep + piece
            else:
                if current:
                    out.append(current)
                current = piece
    if current:
        out.append(current)
    return [s for s in out if s.strip()]


# -- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outgoing:
    """One Slack message: plain-text fallback plus blocks."""

    text: str
    blocks: list[dict[str, Any]]


def note_block(note: str) -> dict[str, Any]:
    """A short note under an answer (why it may be incomplete), as its own mrkdwn section: apart
    from the answer's text, so no unclosed code fence or emphasis there can swallow it."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": f"_{_escape(note)}_"}}


def tail_blocks(
    note: str | None, footer: str | None, control: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The blocks that end an answer's last message: the note, the footer, then `control` (the
    👍/👎 block, `feedback.control`)."""
    blocks = [note_block(note)] if note else []
    if footer:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    if control is not None:
        blocks.append(control)
    return blocks


def _messages(
    parts: list[str],
    footer: str | None,
    block: Callable[[str], dict[str, Any]],
    fallback: Callable[[str], str],
    *,
    note: str | None = None,
    limit: int = MAX_MESSAGES,
    control: dict[str, Any] | None = None,
) -> list[Outgoing]:
    """Parts grouped into at most `limit` messages within Slack's limits; the note, the footer
    and the control on the last one."""
    tail = tail_blocks(note, footer, control)
    budget = MESSAGE_LIMIT - sum(_size(_block_text(b)) for b in tail)
    groups: list[list[str]] = [[]]
    for part in parts:
        group = groups[-1]
        if group and (sum(map(_size, group)) + _size(part) > budget or len(group) >= MAX_SECTIONS):
            groups.append([])
        groups[-1].append(part)
    if len(groups) > limit:
        groups = groups[:limit]
        groups[-1].append(_TRIMMED_NOTE)
    out = []
    for i, group in enumerate(groups):
        blocks = [block(p) for p in group]
        texts = [fallback(p) for p in group]
        if i == len(groups) - 1:
            blocks.extend(tail)
            texts.extend(t for t in map(_block_text, tail) if t)
        out.append(Outgoing(text="\n\n".join(texts), blocks=blocks))
    return out


def _block_text(block: dict[str, Any]) -> str:
    """The text a tail block shows ("" for the control, which shows buttons)."""
    if block["type"] == "context":
        return str(block["elements"][0]["text"])
    if "text" not in block:
        return ""
    return str(block["text"]["text"])


def build_messages(
    markdown: str,
    footer: str | None,
    *,
    note: str | None = None,
    limit: int = MAX_MESSAGES,
    control: dict[str, Any] | None = None,
) -> list[Outgoing]:
    """The answer as mrkdwn section blocks in at most `limit` messages; `note` (why the answer
    may be incomplete), the footer and `control` (the 👍/👎 block) end the last one."""
    parts = _sections(_units(markdown, _Mrkdwn()), SECTION_LIMIT) or ([] if note else [_EMPTY])
    return _messages(
        parts,
        footer,
        lambda p: {"type": "section", "text": {"type": "mrkdwn", "text": p}},
        str,
        note=note,
        limit=limit,
        control=control,
    )


def build_markdown_messages(
    markdown: str,
    footer: str | None,
    *,
    note: str | None = None,
    limit: int = MAX_MESSAGES,
    control: dict[str, Any] | None = None,
) -> list[Outgoing]:
    """The answer as Slack `markdown` blocks (standard Markdown, pings and Slack syntax made
    inert, tables laid out), one per message; the text fallback is the mrkdwn rendering; `note`,
    the footer and `control` end the last message."""
    parts = _sections(_units(markdown, _Markdown()), MARKDOWN_LIMIT) or ([] if note else [_EMPTY])
    return _messages(
        parts,
        footer,
        lambda p: {"type": "markdown", "text": p},
        markdown_to_mrkdwn,
        note=note,
        limit=limit,
        control=control,
    )


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
            saved = savings(usage, price)
            if saved >= 0:
                line += f" · saved {money(saved, bare=True)}"
            else:  # the write for follow-ups cost more than the read saved
                line += f" · {money(-saved, bare=True)} more than uncached"
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
            line += f" · each follow-up saves up to {money(full * 0.9, bare=True)}"
        return line
    if prompt < floor:
        return (
            f"{FOOTER_MARK} {prompt:,} prompt tokens · under the {floor:,}-token minimum "
            f"{model} caches, so not cached"
        )
    return f"{FOOTER_MARK} {prompt:,} prompt tokens · endpoint did not cache"
