"""`python -m bot inspect <thread link> [--send]`: the request the bot would send for a thread.

A dry run: reads the thread from Slack, renders it and builds the request with the same
functions and inputs the answering service uses (the thread's stored cache state and compaction
included), then prints the transcript, where each cache breakpoint sits and why, the TTL, the
token estimate and the expected cost cold and warm. Nothing is posted and no state is changed
(display names looked up are cached, as the bot does). `--send` calls the model once.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.app import make_llm, make_slack_client
from bot.compaction import reusable
from bot.config import Settings
from bot.coverage import thread_gaps
from bot.doctor import FAIL, MaskedOutput, secret_values
from bot.files import FileReader
from bot.formatting import footer_line
from bot.images import image_size
from bot.keepalive import describe as describe_keepalive
from bot.llm import LLMError
from bot.pricing import Usage, cache_floor, cost, money, price_for
from bot.prompt import (
    MAX_IMAGES,
    SYSTEM_PROMPT,
    Built,
    Compacted,
    build_request,
)
from bot.store import data
from bot.store.db import current_revision, head_revision, make_engine, make_session_factory
from bot.store.models import ConversationState
from bot.summaries import parse_link
from bot.threads import (
    NameResolver,
    ThreadReadError,
    clean_request,
    fetch_thread,
    read_whole_thread,
    render_thread,
    slim,
    ts_key,
)
from bot.transcript import Part, estimate_tokens, image_tokens
from bot.ttl_policy import CachePlan, TtlPolicy
from bot.workspace import Workspaces

PREVIEW_CHARS = 160
_WRITE_PRICE = {"5m": "1.25×", "1h": "2×"}


def _preview(text: str, width: int) -> str:
    flat = text.replace("\n", " ⏎ ")
    if len(flat) <= width:
        return flat
    return f"{flat[:width]}… (+{len(flat) - width:,} chars)"


def run_inspect(
    settings: Settings,
    link: str,
    *,
    send: bool,
    out: TextIO,
    request: str = "summarize",
    preview: int = PREVIEW_CHARS,
) -> int:
    """Print the request the bot would build for the thread at `link`; with `send`, send it once.

    A link to a reply that mentions the bot rebuilds that mention's request (the messages before
    it); any other link builds one for `request` asked after the thread's last message.
    Returns 0, 1 when Slack, the database or the model failed, 2 for a bad link or setup.
    """
    w = MaskedOutput(out, secret_values(settings))
    parsed = parse_link(link)
    if parsed is None:
        w.write(f"{FAIL} not a Slack message link: use “Copy link” on a message of the thread\n")
        return 2
    if settings.slack_bot_token is None:
        w.write(f"{FAIL} inspect reads with SLACK_BOT_TOKEN, which is not set (OAuth mode)\n")
        return 2
    try:
        engine = make_engine(settings.database_url, pool_size=2)
    except Exception as exc:  # noqa: BLE001 - unknown driver or malformed URL
        w.write(f"{FAIL} DATABASE_URL is not usable ({type(exc).__name__}); run the doctor\n")
        return 2
    try:
        try:
            current, head = current_revision(engine), head_revision(engine)
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            w.write(f"{FAIL} database not reachable ({type(exc).__name__}); run the doctor\n")
            return 1
        if current != head:
            at = f"at {current}" if current else "empty"
            w.write(f"{FAIL} database is {at}, not at {head}: run `python -m bot migrate`\n")
            return 1
        return _inspect(settings, parsed, engine, w, send=send, request=request, width=preview)
    finally:
        engine.dispose()


def _inspect(
    settings: Settings,
    link: Any,
    engine: Any,
    w: MaskedOutput,
    *,
    send: bool,
    request: str,
    width: int,
) -> int:
    sessions = make_session_factory(engine)
    client = make_slack_client(settings)
    auth = _auth(client, w)
    if auth is None:
        return 1
    team_id, bot_user_id = str(auth["team_id"]), str(auth["user_id"])
    channel, thread_ts = link.channel_id, link.thread_ts
    eff = Workspaces(settings, sessions).effective(team_id)  # what the workspace's admins chose
    read = _kept(sessions, team_id, channel, thread_ts, eff.keep_transcripts, w)
    if read is None:
        read = _read(client, channel, thread_ts, auth, w)
    if read is None:
        return 1
    thread_ts, messages = read
    names = NameResolver(lambda: client, sessions, team_id)
    model = eff.model
    asked = _asked(messages, link.ts, thread_ts, names, bot_user_id, request)
    ask = f"{asked.ask}\n\n(Answer in {eff.language}.)" if eff.language else asked.ask
    now = datetime.now(UTC)
    reader = FileReader(sessions)  # the files as the bot sends them: kept ones, else downloaded

    def files(readable: list[dict[str, Any]]) -> dict[str, tuple[Part, ...]]:
        return reader.prepare((team_id, channel, thread_ts), client.token, readable, now).parts

    turns = render_thread(
        asked.before,
        names,
        bot_user_id=bot_user_id,
        bot_id=auth.get("bot_id"),
        recap=False,
        team_id=team_id,
        enterprise_id=auth.get("enterprise_id"),
        files=files,
    )
    with sessions() as s:
        state = data.get_thread(s, team_id, channel, thread_ts)
        cache = TtlPolicy(settings.cache_ttl).plan(
            s, team_id, state, now, upgradable=eff.keep_transcripts
        )
        stored = data.get_compaction(s, team_id, channel, thread_ts)
    compacted, compaction_note = _compaction(turns, settings, stored, model)
    built = build_request(
        model=model,
        turns=turns,
        request=ask,
        requester=asked.requester,
        prior=cache.prior,
        fallback=cache.fallback,
        ttl=cache.ttl,
        max_tokens=settings.max_output_tokens,
        budget_tokens=settings.context_budget_tokens,
        compacted=compacted,
    )
    with sessions() as s:
        keepalive = describe_keepalive(
            s,
            team_id,
            channel,
            thread_ts,
            mode=settings.cache_ttl,
            write_ttl=built.write_ttl,
            keeps=eff.keep_transcripts,
        )
    w.write(
        f"Thread {channel}/{thread_ts} in {auth.get('team')} ({team_id}): {len(messages):,} "
        f"messages; request: {asked.what}\n"
    )
    return _report(
        settings, built, cache, compaction_note, w, send=send, width=width, keepalive=keepalive
    )


def _report(
    settings: Settings,
    built: Built,
    cache: CachePlan,
    compaction_note: str,
    w: MaskedOutput,
    *,
    send: bool,
    width: int,
    keepalive: str = "",
) -> int:
    """Print the request and what it would cost; with `send`, send it once."""
    w.write(f"Previous cache write: {cache.prior_note}\n")
    if compaction_note:
        w.write(f"Compaction: {compaction_note}\n")
    _print_transcript(built, w, width)
    _print_breakpoints(built, cache, w)
    if keepalive:
        w.write(f"Keep-alive reads: {keepalive}\n")
    _print_costs(built, settings, built.body["model"], w)
    if not send:
        w.write("Dry run: nothing was sent to the model. Add --send to send it once.\n")
        return 0
    return _send(settings, built, w)


def _auth(client: WebClient, w: MaskedOutput) -> Any:
    """Slack's auth.test answer for the token, or None (said why)."""
    try:
        return client.auth_test()
    except (SlackClientError, OSError) as exc:
        error = exc.response.get("error") if isinstance(exc, SlackApiError) else type(exc)
        w.write(f"{FAIL} Slack auth.test failed ({error}); run `python -m bot doctor`\n")
        return None


def _kept(
    sessions: Any, team_id: str, channel: str, thread_ts: str, keep: bool, w: MaskedOutput
) -> tuple[str, list[dict[str, Any]]] | None:
    """The thread from the kept transcript when it is whole (said so), else None (said what
    may be missing): the bot's answer would then read that from Slack."""
    now = datetime.now(UTC)
    with sessions.begin() as s:
        conversation = s.get(ConversationState, (team_id, channel))
        if not keep or conversation is None or conversation.member_since is None:
            w.write("Kept transcript: none for this conversation (answers read it from Slack)\n")
            return None
        gaps = thread_gaps(s, team_id, channel, thread_ts, now)
        messages = data.load_messages(s, team_id, channel, thread_ts)
    if gaps or not any(m["ts"] == thread_ts for m in messages):
        spans = ", ".join(f"{a:%Y-%m-%d %H:%M:%S}–{b:%H:%M:%S} UTC" for a, b in gaps[:3])
        w.write(
            f"Kept transcript: {len(messages):,} messages; may be missing {len(gaps)} "
            f"window(s) ({spans or 'the parent'}): an answer reads those from Slack\n"
        )
        return None
    messages.sort(key=lambda m: ts_key(m["ts"]))
    w.write(f"Kept transcript: complete from events ({len(messages):,} messages, no Slack read)\n")
    return thread_ts, messages


def _read(
    client: WebClient, channel: str, thread_ts: str, auth: Any, w: MaskedOutput
) -> tuple[str, list[dict[str, Any]]] | None:
    """The thread's ts and its messages (the whole thread when the link named a reply), or
    None (said why)."""
    try:
        thread_ts, messages = read_whole_thread(
            lambda ts: [slim(m) for m in fetch_thread(client, channel, ts)], thread_ts
        )
    except ThreadReadError as exc:
        w.write(f"{FAIL} Slack refused to read {channel}/{thread_ts}: {exc.error}\n")
        if exc.error in ("not_in_channel", "channel_not_found"):
            w.write(f"    invite the bot to the channel (/invite @{auth.get('user')})\n")
        return None
    if not messages:
        w.write(f"{FAIL} the thread {channel}/{thread_ts} has no messages\n")
        return None
    return thread_ts, messages


@dataclass(frozen=True)
class _Asked:
    """The request inspect rebuilds: the messages before it, its text, who asked, a summary."""

    before: list[dict[str, Any]]
    ask: str
    requester: str
    what: str


def _asked(
    messages: list[dict[str, Any]],
    link_ts: str,
    thread_ts: str,
    names: NameResolver,
    bot_user_id: str,
    request: str,
) -> _Asked:
    """A linked reply that mentions the bot is that mention's request (the messages before
    it); any other link asks `request` after the thread's last message."""
    mention = next(
        (
            m
            for m in messages
            if m["ts"] == link_ts
            and m["ts"] != thread_ts
            and f"<@{bot_user_id}" in (m.get("text") or "")
        ),
        None,
    )
    if mention is None:
        what = f"“{request}” asked after the last message (--request to change)"
        return _Asked(messages, request, "", what)
    ask = clean_request(mention.get("text") or "", names, bot_user_id)
    requester = names.name(mention["user"]) if mention.get("user") else ""
    what = f"the mention at {mention['ts']} by {requester or 'unknown'}: “{ask}”"
    before = [m for m in messages if ts_key(m["ts"]) < ts_key(mention["ts"])]
    return _Asked(before, ask, requester, what)


def _compaction(
    turns: list[Any], settings: Settings, stored: Any, model: str
) -> tuple[Compacted | None, str]:
    """The stored compaction the bot would reuse, or why there is none."""
    upto, reused = reusable(
        turns, stored, model=model, budget=settings.context_budget_tokens, scale=1.0
    )
    if upto is None:
        return None, ""
    if reused is not None:
        return reused, f"messages 1..{upto - 1} are replaced by the stored summary"
    return None, (
        f"the thread is over CONTEXT_BUDGET_TOKENS: the bot would first fold messages "
        f"1..{upto - 1} into a summary (a model call this dry run does not make); shown here "
        "with older messages dropped instead"
    )


def _print_transcript(built: Built, w: MaskedOutput, width: int) -> None:
    blocks = built.body["messages"][0]["content"]
    system_tokens = estimate_tokens(SYSTEM_PROMPT)
    w.write(
        f"\nTranscript ({len(blocks) - 1:,} blocks, each shown up to {width} characters; "
        f"◆ = cache breakpoint):\n"
    )
    w.write(f"  system  fixed instructions, ~{system_tokens:,} tokens (cached with the blocks)\n")
    for i, block in enumerate(blocks):
        control = block.get("cache_control")
        mark = f"◆ {control.get('ttl', '5m')} " if control else ""
        tail = "   ← not cached" if i == len(blocks) - 1 else ""
        shown = _preview(block["text"], width) if block["type"] == "text" else _image(block)
        w.write(f"  #{i:<5} {mark}{shown}{tail}\n")
    if built.omitted:
        w.write(f"  ({built.omitted:,} older messages are left out for length)\n")
    if built.images_left_out:
        w.write(
            f"  ({len(built.images_left_out):,} older images are left out: at most {MAX_IMAGES} "
            "images go in one request)\n"
        )


def _image(block: dict[str, Any]) -> str:
    """An image block in one line: type, size in pixels, its tokens and bytes."""
    source = block["source"]
    width, height = image_size(base64.b64decode(source["data"]))
    return (
        f"[image {source['media_type']}, {width}×{height} px, ~{image_tokens(width, height):,} "
        f"tokens, {len(source['data']) // 1024:,} KB as base64]"
    )


def _print_breakpoints(built: Built, cache: CachePlan, w: MaskedOutput) -> None:
    mode = cache.mode
    w.write("\nBreakpoints:\n")
    if not built.breakpoints:
        why = (
            "CACHE_TTL=off: the bot writes no cache"
            if mode == "off"
            else "the transcript is empty: nothing to cache"
        )
        w.write(f"  none — {why}\n")
    for line in built.breakpoints:
        if "(write" in line:
            why = "writes system + transcript so the next request on this thread reads it at 0.1×"
        elif "nothing new" in line:
            why = "nothing arrived since the previous write: the whole prefix is read back"
        else:
            why = (
                "where the previous request on this thread wrote (same message, same digest): "
                "read back even when more than 20 blocks arrived since"
            )
        w.write(f"  {line} — {why}\n")
    if mode == "auto":
        chosen = f"{built.write_ttl or 'none'} ({_auto_note(built, cache)})"
    elif mode == "off":
        chosen = "none (CACHE_TTL=off)"
    else:
        chosen = f"{mode} (CACHE_TTL={mode})"
    w.write(f"TTL: {chosen}\n")


# How `inspect` names the options the TTL policy compares (`ttl_policy.expected_costs`).
COST_NAMES = {"5m, then 1h": "5m and the keep-alive's upgrade to 1h"}


def _auto_note(built: Built, cache: CachePlan) -> str:
    """Why CACHE_TTL=auto chose this TTL: what the next request is expected to be (from the
    workspace's habits and the thread's own gaps), what stays readable, and the expected costs
    it compared."""
    r = cache.rhythm
    q5, q1 = r.odds
    h5, h1 = r.habits.odds(r.context)
    known, followed = r.habits.continued
    choice = cache.choose(built.new_tokens, built.prefix_tokens, built.read_from)
    per = ", ".join(f"{COST_NAMES.get(k, k)} {v:,.0f}" for k, v in choice.costs.items())
    held = cache.held(built.new_tokens, built.prefix_tokens, built.read_from)
    kept = "; ".join(f"{h.tokens:,} tokens readable for {h.seconds / 60:.0f} min" for h in held)
    return (
        f"CACHE_TTL=auto chooses per thread from its rhythm: this would be request {r.requests} "
        f"({_context_words(r.context)}), {r.within_5m} of {r.gaps} earlier gaps within 5 min and "
        f"{r.within_1h} within 1 h; after such a request the workspace's next one came within "
        f"5 min {h5:.0%} and within 1 h {h1:.0%} of the time ({r.habits.seen(r.context)} seen); "
        f"the thread's own gaps count at the {r.habits.continuation():.0%} chance that a request "
        f"is followed at all ({followed} of {known} of the workspace's requests were), "
        f"so the next one on this thread is expected within 5 min {q5:.0%}, within 1 h {q1:.0%}; "
        f"{built.new_tokens:,} new tokens to write, "
        f"{kept or 'nothing readable without a write'}; expected cost now and at the next "
        f"request, in base-price tokens: {per}"
        + (
            "; not writing would cost least, but a follow-up within 5 minutes must read its "
            "prefix from cache"
            if choice.costs and min(choice.costs, key=lambda k: choice.costs[k]) == "none"
            and choice.ttl is not None
            else ""
        )
    )


def _context_words(context: str) -> str:
    return {
        "first": "the first on the thread",
        "short": "within 5 min of the previous one",
        "medium": "5-60 min after the previous one",
        "long": "over an hour after the previous one",
    }[context]


def _print_costs(built: Built, settings: Settings, model: str, w: MaskedOutput) -> None:
    floor = cache_floor(model, settings.cache_floors)
    prefix = built.prefix_tokens
    tail = built.estimated_tokens - prefix
    w.write(
        f"Estimated tokens: {built.estimated_tokens:,} prompt ({prefix:,} cacheable prefix incl. "
        f"system, {tail:,} uncached request), up to {settings.max_output_tokens:,} output\n"
    )
    ttl = built.write_ttl
    cacheable = ttl is not None and prefix >= floor
    if ttl is not None and not cacheable:
        w.write(
            f"  the prefix is under the {floor:,}-token minimum {model} caches: nothing will be "
            "cached\n"
        )
    whole = Usage(input_tokens=built.estimated_tokens)
    cold = (
        Usage(
            input_tokens=tail,
            cache_creation_tokens=prefix,
            creation_5m=prefix if ttl == "5m" else 0,
            creation_1h=prefix if ttl == "1h" else 0,
        )
        if cacheable
        else whole
    )
    warm = Usage(input_tokens=tail, cache_read_tokens=prefix) if cacheable else whole
    price = price_for(model)
    if price is None:
        w.write(f"Expected cost: no price known for {model}; in tokens:\n")
        w.write(f"  cold: {cold.cache_creation_tokens:,} written, {cold.input_tokens:,} uncached\n")
        w.write(f"  warm: {warm.cache_read_tokens:,} read, {warm.input_tokens:,} uncached\n")
        return
    out_max = settings.max_output_tokens * price.output
    write_note = f"prefix written at {_WRITE_PRICE[ttl]}" if cacheable and ttl else "no cache"
    read_note = "prefix read at 0.1×" if cacheable else "no cache"
    w.write(
        f"Expected cost of the prompt at {model}'s price (output adds up to {money(out_max, 4)}):\n"
    )
    rows = [
        (f"cold ({write_note})", cost(cold, price)),
        (f"warm ({read_note})", cost(warm, price)),
        ("without caching", cost(whole, price)),
    ]
    pad = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        w.write(f"  {label + ':':<{pad}} {money(value, 4)}\n")


def _send(settings: Settings, built: Built, w: MaskedOutput) -> int:
    llm = make_llm(settings)
    try:
        done = llm.create(built.body)
    except LLMError as exc:
        w.write(f"{FAIL} the model call failed: {exc.detail}\n")
        return 1
    finally:
        llm.close()
    usage = done.usage
    w.write(
        f"\nSent once to {done.model}: {usage.prompt_tokens:,} prompt tokens "
        f"({usage.input_tokens:,} uncached, {usage.cache_creation_tokens:,} written, "
        f"{usage.cache_read_tokens:,} read), {usage.output_tokens:,} output; "
        f"stop: {done.stop_reason}\n"
    )
    if built.estimated_tokens:
        off = (usage.prompt_tokens - built.estimated_tokens) / built.estimated_tokens
        w.write(f"  the estimate was {built.estimated_tokens:,} ({off:+.0%})\n")
    price = price_for(done.model)
    if price is not None:
        w.write(f"  cost: {money(cost(usage, price), 4)}\n")
    w.write(f"  footer: {footer_line(usage, done.model, settings.cache_floors)}\n")
    answer = re.sub(r"\s+", " ", done.text).strip()
    w.write(f"  answer: {_preview(answer, 300)}\n")
    return 0
