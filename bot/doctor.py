"""Operator checks (`python -m bot doctor`) and the generated settings reference (`config-docs`).

Every check prints one line, ✓ (works), ✗ (broken: the bot will misbehave), ⚠ (works, with a
risk the operator should know of) or – (skipped or could not tell); a broken or risky one
prints a one-line fix under it. Secret values never reach the
output: everything written goes through a filter that masks them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import SecretStr
from pydantic_core import PydanticUndefined
from slack_sdk.errors import SlackApiError, SlackClientError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.app import make_llm, make_slack_client
from bot.config import Settings, SettingsError, load_settings
from bot.llm import LLMError, MessagesClient
from bot.pricing import READ, Price, Usage, cache_floor, cost, money, price_for
from bot.transcript import estimate_tokens

OK, FAIL, WARN, SKIP = "✓", "✗", "⚠", "–"
MANIFEST = Path(__file__).resolve().parent.parent / "manifest.yml"
# The caching probe is skipped (not failed) when it would cost more than this.
PROBE_BUDGET_USD = 0.25
PROBE_BUDGET_TOKENS = 50_000
TURN_TOKENS = 100_000  # "a thread turn" in the cost of not caching
_SIGNS = {"Gt": ">", "Ge": "≥", "Lt": "<", "Le": "≤"}

LLM_FIXES = {
    "auth": "set ANTHROPIC_API_KEY to a key issued by {base} (a relay needs its own key)",
    "billing": "add credit to the account behind ANTHROPIC_API_KEY",
    "permission": "use a key allowed to call {model}, or set ANTHROPIC_MODEL to a model it may use",
    "not_found": "set ANTHROPIC_MODEL to a model id {base} serves; ANTHROPIC_BASE_URL must not "
    "end in /v1",
    "bad_request": "check that ANTHROPIC_BASE_URL is an Anthropic-format endpoint "
    "(POST /v1/messages) and that it accepts ANTHROPIC_MODEL",
    "too_large": "check that ANTHROPIC_BASE_URL is an Anthropic-format endpoint",
    "connection": "check ANTHROPIC_BASE_URL ({base}) and that this host can reach it",
    "timeout": "check ANTHROPIC_BASE_URL ({base}); raise ANTHROPIC_TIMEOUT if it is just slow",
    "rate_limited": "the key is rate-limited or over its spend cap; check its limits, then retry",
    "overloaded": "the endpoint is overloaded; run the doctor again in a few minutes",
    "server": "the endpoint is failing; run the doctor again later or ask its operator",
    "bad_response": "ANTHROPIC_BASE_URL answered, but not like a Messages API; check the URL",
}
SLACK_TOKEN_ERRORS = {
    "invalid_auth",
    "not_authed",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "not_allowed_token_type",
}
_CACHE_DOCTOR_SYSTEM = (
    "This is a configuration check of a Slack bot's prompt cache. Answer with one word."
)


# -- output -----------------------------------------------------------------------------------


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold (tokens, keys, the database password), longest first."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            found.add(raw)
            found.update(part.strip() for part in raw.split(","))
    try:
        password = make_url(settings.database_url).password
    except Exception:  # noqa: BLE001 - a malformed URL has no password to hide
        password = None
    if password:
        found.add(str(password))
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


class MaskedOutput:
    """A text stream that writes to `out` with every secret value replaced by `***`."""

    def __init__(self, out: TextIO, secrets: Iterable[str]) -> None:
        self._out = out
        self._secrets = sorted(set(secrets), key=len, reverse=True)

    def write(self, text: str) -> int:
        """Write `text`, masked."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return self._out.write(text)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self._out.flush()


@dataclass
class Report:
    """Prints check lines as they are found and counts the failures."""

    out: MaskedOutput
    failures: list[str] = field(default_factory=list)
    passed: int = 0

    def ok(self, line: str) -> None:
        """A check that passed."""
        self.passed += 1
        self.out.write(f"{OK} {line}\n")

    def fail(self, line: str, fix: str, *, detail: str = "") -> None:
        """A check that failed, with what to do about it."""
        self.failures.append(line)
        self.out.write(f"{FAIL} {line}\n")
        if detail:
            self.out.write(f"    {detail}\n")
        self.out.write(f"    fix: {fix}\n")

    def warn(self, line: str, fix: str) -> None:
        """A check that passed with a risk; it does not fail the run."""
        self.out.write(f"{WARN} {line}\n")
        self.out.write(f"    fix: {fix}\n")

    def skip(self, line: str, hint: str = "") -> None:
        """A check that was skipped or could not decide; it does not fail the run."""
        self.out.write(f"{SKIP} {line}\n")
        if hint:
            self.out.write(f"    {hint}\n")

    def note(self, line: str) -> None:
        """Plain information."""
        self.out.write(f"{line}\n")


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    return (lines[0] if lines else type(cause).__name__)[:200]


# -- settings ---------------------------------------------------------------------------------


def doctor_main(
    channels: Sequence[str],
    out: TextIO,
    *,
    env: dict[str, str] | None = None,
    env_file: str | None = ".env",
) -> int:
    """Load settings (from `env`, else the environment and `.env`) and run the doctor.

    Returns 2 when the settings do not parse, otherwise what `run_doctor` returns.
    """
    try:
        settings = load_settings(env, env_file=env_file)
    except SettingsError as exc:
        out.write(f"{FAIL} settings: {exc}\n")
        out.write(
            "    fix: set it in the environment or in .env in the working directory "
            "(every setting: docs/CONFIG.md)\n"
        )
        return 2
    return run_doctor(settings, channels=channels, out=out)


def _check_settings(settings: Settings, report: Report) -> None:
    if settings.oauth:
        mode = "OAuth (many workspaces)"
    elif settings.socket_mode:
        mode = "Socket Mode"
    else:
        mode = "HTTP"
    try:
        settings.require_http()
    except SettingsError as exc:
        report.fail(
            f"settings: {exc}",
            "copy the Signing Secret (Basic Information) to SLACK_SIGNING_SECRET, or set "
            "SLACK_APP_TOKEN for Socket Mode",
        )
        return
    report.ok(
        f"settings parse: {mode} mode, model {settings.anthropic_model}, "
        f"CACHE_TTL={settings.cache_ttl}"
    )


# -- database ---------------------------------------------------------------------------------


def _check_database(settings: Settings, report: Report) -> None:
    from bot.store.db import current_revision, head_revision, known_revision, make_engine

    url = settings.database_url
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all
        shown = "DATABASE_URL"
    try:
        engine = make_engine(url, pool_size=1)
    except Exception as exc:  # noqa: BLE001 - unknown driver, malformed URL, ...
        report.fail(
            f"database: cannot use DATABASE_URL {shown} ({_first_line(exc)})",
            "set DATABASE_URL to sqlite:///path/bot.db or postgresql://user:password@host/db",
        )
        return
    try:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            report.fail(
                f"database: cannot connect to {shown} ({_first_line(exc)})",
                "check DATABASE_URL (host, port, name, credentials) and that the database "
                "server is running and reachable from here",
            )
            return
        current, head = current_revision(engine), head_revision(engine)
        if current == head:
            report.ok(f"database: {shown} reachable, at the latest migration ({head})")
            return
        if current is None:
            report.fail(
                f"database: {shown} reachable but has no schema yet (latest migration {head})",
                "run `python -m bot migrate` (serve also migrates at start; on Heroku the "
                "release phase does)",
            )
            return
        if not known_revision(engine, current):
            report.fail(
                f"database: {shown} is at revision {current}, which this code does not know "
                f"(latest here: {head})",
                "deploy the code that migrated it (a newer release), or restore the database",
            )
            return
        report.fail(
            f"database: {shown} is at migration {current}, the code needs {head}",
            "run `python -m bot migrate` (on Heroku the release phase runs it on every deploy)",
        )
    finally:
        engine.dispose()


# -- stored tokens ----------------------------------------------------------------------------

KEY_FIX = (
    'set ENCRYPTION_KEY (python -c "from cryptography.fernet import Fernet; '
    'print(Fernet.generate_key().decode())"), restart, then run `python -m bot rotate-key`'
)


def _check_tokens(settings: Settings, report: Report) -> None:
    """OAuth mode: are stored tokens encrypted, and can ENCRYPTION_KEY read every one?"""
    from bot.installations import TokenCipher, token_census
    from bot.store.db import make_engine

    if not settings.oauth:
        return
    key = settings.encryption_key
    if key is None and settings.require_encryption:
        report.fail(
            "tokens: REQUIRE_ENCRYPTION is set but ENCRYPTION_KEY is not; serve refuses to start",
            KEY_FIX,
        )
        return
    try:
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            census = token_census(engine, TokenCipher(key.get_secret_value() if key else None))
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - no database or no schema: its check said so
        report.skip(f"tokens: stored tokens not checked ({type(exc).__name__})")
        return
    if census.unreadable:
        teams = ", ".join(sorted(census.unreadable))
        what = "cannot decrypt" if key else "is not set, but encrypted are"
        report.fail(
            f"tokens: ENCRYPTION_KEY {what} the stored tokens of {len(census.unreadable)} "
            f"workspace(s) ({teams}); their events are answered but not acted on",
            "set ENCRYPTION_KEY to the key they were stored with (while rotating: NEW,OLD); if "
            "that key is lost, those workspaces must install the app again",
        )
    elif key is None:
        report.warn(
            f"tokens: ENCRYPTION_KEY is not set, so bot and refresh tokens are stored in plain "
            f"text ({len(census.plain)} workspace(s) so far)",
            KEY_FIX + "; REQUIRE_ENCRYPTION=true makes start-up refuse without a key",
        )
    elif census.plain:
        report.warn(
            f"tokens: {len(census.plain)} workspace(s) still have tokens in plain text, stored "
            f"before ENCRYPTION_KEY was set ({', '.join(sorted(census.plain))})",
            "run `python -m bot rotate-key` to encrypt them",
        )
    else:
        report.ok(
            f"tokens: encrypted at rest; ENCRYPTION_KEY reads the stored tokens of "
            f"{len(census.readable)} workspace(s)"
        )


# -- Slack ------------------------------------------------------------------------------------


def manifest_scopes(path: Path = MANIFEST) -> list[str]:
    """The bot scopes manifest.yml asks for (`oauth_config.scopes.bot`), in file order."""
    scopes: list[str] = []
    stack: list[tuple[int, str]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = re.match(r"\s*-\s+(\S+)$", line)
        if item:
            if [k for _, k in stack] == ["oauth_config", "scopes", "bot"]:
                scopes.append(item.group(1).strip("'\""))
            continue
        key = re.match(r"\s*([A-Za-z_][\w.-]*)\s*:", line)
        if not key:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.group(1)))
    return scopes


def _header(headers: Any, name: str) -> str | None:
    for key, value in dict(headers or {}).items():
        if str(key).lower() == name:
            return str(value)
    return None


def _check_slack(settings: Settings, channels: Sequence[str], report: Report) -> None:
    if settings.slack_bot_token is None:
        report.skip(
            "Slack token: OAuth mode — each workspace's token is stored when it installs; "
            "auth.test, scopes and channels skipped"
        )
        return
    client = make_slack_client(settings)
    try:
        resp = client.auth_test()
    except SlackApiError as exc:
        error = str(exc.response.get("error") or "unknown_error")
        fix = (
            "copy the Bot User OAuth Token (xoxb-…) from OAuth & Permissions to "
            "SLACK_BOT_TOKEN; reinstall the app if the token was revoked"
            if error in SLACK_TOKEN_ERRORS
            else f"see https://api.slack.com/methods/auth.test for `{error}`"
        )
        report.fail(f"Slack token: auth.test answered `{error}`", fix)
        return
    except (SlackClientError, OSError) as exc:
        report.fail(
            f"Slack: could not reach {settings.slack_api_url} ({type(exc).__name__})",
            "check SLACK_API_URL (normally https://slack.com/api/) and outbound network access",
        )
        return
    bot_name = str(resp.get("user") or "bot")
    report.ok(
        f"Slack token valid: @{bot_name} ({resp.get('user_id')}) in {resp.get('team')} "
        f"({resp.get('team_id')})"
    )
    _check_scopes(settings, _header(resp.headers, "x-oauth-scopes"), report)
    for channel in channels:
        _check_channel(client, channel, bot_name, report)


def _check_scopes(settings: Settings, granted_raw: str | None, report: Report) -> None:
    try:
        wanted = manifest_scopes()
        source = "manifest.yml"
    except OSError:
        wanted = [s.strip() for s in settings.slack_scopes.split(",") if s.strip()]
        source = "SLACK_SCOPES (manifest.yml not found)"
    if granted_raw is None:
        report.skip(
            f"Slack scopes: could not read granted scopes (auth.test sent no x-oauth-scopes "
            f"header); {source} asks for {len(wanted)}",
            "compare them with OAuth & Permissions → Scopes in the app's settings",
        )
        return
    granted = {s.strip() for s in granted_raw.split(",") if s.strip()}
    missing = [s for s in wanted if s not in granted]
    if missing:
        report.fail(
            f"Slack scopes: missing {', '.join(missing)} (of the {len(wanted)} in {source})",
            "add them under OAuth & Permissions (or paste manifest.yml again), then reinstall "
            "the app to the workspace",
        )
        return
    extra = sorted(granted - set(wanted))
    more = f"; also granted: {', '.join(extra)}" if extra else ""
    report.ok(f"Slack scopes: all {len(wanted)} bot scopes of {source} granted{more}")


def _check_channel(client: Any, channel: str, bot_name: str, report: Report) -> None:
    try:
        info = client.conversations_info(channel=channel)["channel"]
    except SlackApiError as exc:
        error = str(exc.response.get("error") or "unknown_error")
        if error == "channel_not_found":
            report.fail(
                f"channel {channel}: the bot cannot see it (channel_not_found)",
                f"check the id (channel details, at the bottom); for a private channel "
                f"/invite @{bot_name} there",
            )
        elif error == "missing_scope":
            report.fail(
                f"channel {channel}: conversations.info needs a scope the bot lacks",
                "grant channels:read and groups:read (manifest.yml) and reinstall the app",
            )
        else:
            report.fail(
                f"channel {channel}: conversations.info answered `{error}`", "check the channel id"
            )
        return
    name = f"#{info.get('name') or channel} ({channel})"
    if info.get("is_archived"):
        report.fail(f"channel {name}: archived", "unarchive it, or stop configuring it")
    elif info.get("is_member"):
        report.ok(f"channel {name}: the bot is a member")
    else:
        report.fail(
            f"channel {name}: the bot is not a member, so it cannot read or answer there",
            f"/invite @{bot_name} in #{info.get('name') or channel}",
        )


# -- Messages endpoint ------------------------------------------------------------------------


@dataclass
class Spending:
    """Model calls the doctor made, and what they cost."""

    model: str
    usages: list[Usage] = field(default_factory=list)

    def add(self, usage: Usage) -> None:
        """Count one call."""
        self.usages.append(usage)

    def line(self) -> str:
        """One line: dollars (when the price is known) and tokens."""
        n = len(self.usages)
        prompt = sum(u.prompt_tokens for u in self.usages)
        written = sum(u.cache_creation_tokens for u in self.usages)
        read = sum(u.cache_read_tokens for u in self.usages)
        output = sum(u.output_tokens for u in self.usages)
        tokens = (
            f"{prompt:,} prompt tokens ({written:,} written to cache, {read:,} read from it), "
            f"{output:,} output"
        )
        price = price_for(self.model)
        if not n:
            return "spent: $0 (no model calls)"
        if price is None:
            return f"spent: {n} model calls, {tokens} (no price known for {self.model})"
        total = sum(cost(u, price) for u in self.usages)
        return f"spent: {money(total, 4)} on {n} model calls, {tokens}"


def cache_filler(tokens: int) -> str:
    """Deterministic text of at least `tokens` estimated tokens (the same bytes every time)."""
    lines = []
    i = 0
    while estimate_tokens("\n".join(lines)) < tokens:
        i += 1
        lines.append(
            f"Reference line {i:05d}: the thread bot checks that the Messages endpoint keeps a "
            f"long, unchanging prompt prefix in its cache, so a follow-up reads it back cheaply."
        )
    return "\n".join(lines)


def _check_messages(settings: Settings, report: Report, spending: Spending) -> bool:
    """The tiny call: endpoint reachable, key accepted, model known. True when it worked."""
    model, base = settings.anthropic_model, settings.anthropic_base_url
    llm = make_llm(settings)
    try:
        done = llm.create(
            {
                "model": model,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "Reply with OK."}],
            }
        )
    except LLMError as exc:
        what = {
            "auth": "the endpoint rejected ANTHROPIC_API_KEY",
            "not_found": f"the endpoint does not know model {model} (or the URL is wrong)",
            "permission": f"the key may not use model {model}",
            "connection": f"could not reach {base}",
            "timeout": f"{base} did not answer in time",
        }.get(exc.kind, "the endpoint refused a one-token request")
        fix = LLM_FIXES.get(
            exc.kind, "check ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY, ANTHROPIC_MODEL"
        ).format(base=base, model=model)
        report.fail(f"Messages endpoint: {what}", fix, detail=f"({exc.detail})")
        return False
    finally:
        llm.close()
    spending.add(done.usage)
    served = f", answered as {done.model}" if done.model and done.model != model else ""
    report.ok(f"Messages endpoint: {base} reachable, key accepted, model {model} known{served}")
    price = price_for(model)
    if price is None:
        report.skip(
            f"price: none known for {model}; replies show cache savings in tokens, not dollars"
        )
    return True


def _check_caching(settings: Settings, report: Report, spending: Spending) -> None:
    model = settings.anthropic_model
    if settings.cache_ttl == "off":
        report.skip("prompt caching: CACHE_TTL=off, the bot never asks for it; not tested")
        return
    floor = cache_floor(model, settings.cache_floors)
    filler = cache_filler(floor * 3 // 2 + 64)
    size = estimate_tokens(filler) + estimate_tokens(_CACHE_DOCTOR_SYSTEM)
    price = price_for(model)
    worst = 2 * size * price.input * 1.25 if price else None
    if (worst is not None and worst > PROBE_BUDGET_USD) or size > PROBE_BUDGET_TOKENS:
        report.skip(
            f"prompt caching: not tested; a {size:,}-token probe (over the {floor:,}-token "
            f"minimum of {model}) would cost too much",
            "check CACHE_MIN_TOKENS",
        )
        return
    body = _cache_probe(model, filler)
    llm: MessagesClient = make_llm(settings)
    try:
        first = llm.create(body)
        spending.add(first.usage)
        second = llm.create(body)
        spending.add(second.usage)
    except LLMError as exc:
        report.fail(
            "prompt caching: a call with cache_control failed",
            "the endpoint may reject cache_control; use one that supports prompt caching",
            detail=f"({exc.detail})",
        )
        return
    finally:
        llm.close()
    usage = second.usage
    if usage.cache_read_tokens:
        report.ok(
            f"prompt caching works: the 2nd identical call read {usage.cache_read_tokens:,} of "
            f"{usage.prompt_tokens:,} prompt tokens from cache (minimum for {model}: {floor:,})"
        )
        return
    why = ""
    if first.usage.cache_creation_tokens:
        why = (
            f" (the 1st call reported writing {first.usage.cache_creation_tokens:,} tokens, the "
            "2nd read none: the endpoint may spread calls over several upstream keys)"
        )
    report.fail(
        f"prompt caching: the endpoint does not cache — two identical {usage.prompt_tokens:,}"
        f"-token calls (over the {floor:,}-token minimum of {model}) reported no cache reads"
        f"{why}",
        "use an endpoint (or relay channel) with prompt caching — relays may accept "
        "cache_control and ignore it; ask the relay's admin — or set CACHE_TTL=off",
        detail=_uncached_cost(model, price),
    )


def _cache_probe(model: str, filler: str) -> dict[str, Any]:
    """The request the caching check sends twice: `filler` marked for caching, a one-token reply."""
    return {
        "model": model,
        "max_tokens": 1,
        "system": _CACHE_DOCTOR_SYSTEM,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": filler, "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "Reply with OK."},
                ],
            }
        ],
    }


def _uncached_cost(model: str, price: Price | None) -> str:
    """What working without the cache costs a thread's follow-ups, in dollars when priced."""
    factor = round(1 / READ)
    if price is not None:
        full = TURN_TOKENS * price.input
        return (
            f"follow-ups will cost {factor}× more than with caching: {money(full, 4)} per "
            f"{TURN_TOKENS // 1000}k-token thread turn at {model}'s price, instead of "
            f"{money(full * READ, 4)}"
        )
    return (
        f"follow-ups will cost {factor}× more than with caching: every turn of a "
        f"{TURN_TOKENS // 1000}k-token thread pays for all {TURN_TOKENS:,} prompt tokens "
        f"instead of about {int(TURN_TOKENS * READ):,}"
    )


# -- the run ----------------------------------------------------------------------------------


def run_doctor(settings: Settings, *, channels: Sequence[str], out: TextIO) -> int:
    """Check everything the bot depends on; print ✓/✗ lines; 0 when nothing failed, else 1."""
    report = Report(MaskedOutput(out, secret_values(settings)))
    spending = Spending(settings.anthropic_model)
    _check_settings(settings, report)
    _check_database(settings, report)
    _check_tokens(settings, report)
    _check_slack(settings, channels, report)
    if _check_messages(settings, report, spending):
        _check_caching(settings, report, spending)
    else:
        report.skip("prompt caching: not tested (the Messages endpoint check failed)")
    report.note(spending.line())
    if report.failures:
        report.note(f"{len(report.failures)} check(s) failed.")
        return 1
    report.note(f"all {report.passed} checks passed.")
    return 0


# -- docs/CONFIG.md ---------------------------------------------------------------------------


def _type_name(annotation: Any) -> tuple[str, bool]:
    """('integer', optional?) for a settings annotation."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    optional = bool(args) and len(args) < len(getattr(annotation, "__args__", ()))
    base = args[0] if optional else annotation
    names = {str: "string", int: "integer", float: "number", bool: "boolean", SecretStr: "secret"}
    return names.get(base, getattr(base, "__name__", str(base))), optional


def _cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def _default(info: Any) -> str:
    if info.default is PydanticUndefined:
        return "**required**"
    value = info.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def config_markdown() -> str:
    """docs/CONFIG.md: every setting, from the Settings class (`python -m bot config-docs`)."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from bot/config.py by `python -m bot config-docs > docs/CONFIG.md`; "
        "do not edit by hand. -->",
        "",
        "Every setting is read from the environment, or from a `.env` file in the working",
        "directory; names are not case-sensitive. A missing or malformed value stops start-up",
        "with one line naming the variable. `python -m bot doctor` checks that the values",
        "work (database, Slack token and scopes, the Messages endpoint, prompt caching).",
        "Secrets are never logged or printed.",
        "",
        "| variable | type | default | description |",
        "|---|---|---|---|",
    ]
    for name, info in Settings.model_fields.items():
        kind, optional = _type_name(info.annotation)
        bounds = [
            f"{_SIGNS[type(m).__name__]} {getattr(m, type(m).__name__.lower())}"
            for m in info.metadata
            if type(m).__name__ in _SIGNS
        ]
        if bounds:
            kind += ", " + ", ".join(bounds)
        if optional:
            kind += ", optional"
        lines.append(
            f"| `{name.upper()}` | {_cell(kind)} | {_cell(_default(info))} "
            f"| {_cell(info.description or '')} |"
        )
    return "\n".join(lines) + "\n"
