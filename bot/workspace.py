"""Per-workspace settings that workspace admins choose in App Home.

Model, answer language, the cache-savings footer, a channel allow-list and spend limits. A
setting left empty falls back to the operator's (the environment); budgets can only tighten the
operator's limits, never loosen them. Read on every request, so a change applies to the next one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from bot.config import Settings
from bot.formatting import neutralise_pings
from bot.pricing import money
from bot.store import data
from bot.store.db import scrub_deleted
from bot.store.models import WorkspaceSettings

log = logging.getLogger(__name__)

OPEN_ACTION = "open_workspace_settings"
CALLBACK_ID = "workspace_settings"
MAX_CHANNELS = 100
MAX_BUDGET = 1_000_000.0
LANGUAGE_MAX = 40
_LANGUAGE_EXTRA = set(" -()'.,")
_BUDGETS = (
    ("budget_daily_usd", "Daily limit for the workspace (USD)", "BUDGET_DAILY_USD"),
    ("budget_monthly_usd", "Monthly limit for the workspace (USD)", "BUDGET_MONTHLY_USD"),
    ("budget_user_daily_usd", "Daily limit per person (USD)", "BUDGET_USER_DAILY_USD"),
)


@dataclass(frozen=True)
class Choice:
    """What admins chose; None means "the operator's default"."""

    model: str | None = None
    language: str | None = None
    footer: bool | None = None
    channels: tuple[str, ...] = ()
    budget_daily_usd: float | None = None
    budget_monthly_usd: float | None = None
    budget_user_daily_usd: float | None = None
    keep_transcripts: bool | None = None
    backfill_on_join: bool | None = None


@dataclass(frozen=True)
class Effective:
    """The settings a request of the workspace runs with."""

    model: str
    language: str | None = None
    footer: bool = True
    channels: frozenset[str] = field(default_factory=frozenset)
    budget_daily_usd: float | None = None
    budget_monthly_usd: float | None = None
    budget_user_daily_usd: float | None = None
    keep_transcripts: bool = True  # messages kept from events (else every answer reads Slack)
    backfill_on_join: bool = True
    chosen: Choice = field(default_factory=Choice)
    updated_by: str | None = None
    updated_at: datetime | None = None

    def limit_source(self, name: str) -> str:
        """Where a budget comes from, for messages: the env variable or App Home."""
        env = dict((n, v) for n, _, v in _BUDGETS)[name]
        mine = getattr(self.chosen, name)
        return "App Home → Workspace settings" if mine and mine == getattr(self, name) else env


def _tighter(operator: float | None, workspace: float | None) -> float | None:
    values = [v for v in (operator, workspace) if v]
    return min(values) if values else None


class Workspaces:
    """Read and write workspace settings; decide what a request of a workspace runs with."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self._sessions = sessions
        self._orgs: dict[str, str | None] = {}
        self._lock = threading.Lock()

    # -- which Enterprise Grid org a workspace belongs to ------------------------------------

    def remember(self, team_id: str, enterprise_id: str | None) -> None:
        """Note that `team_id` belongs to the org `enterprise_id` (once per process)."""
        if not team_id or not enterprise_id or self._orgs.get(team_id) == enterprise_id:
            return
        try:
            with self._sessions.begin() as s:
                row = s.get(WorkspaceSettings, team_id)
                if row is None:
                    s.add(WorkspaceSettings(team_id=team_id, enterprise_id=enterprise_id))
                else:
                    row.enterprise_id = enterprise_id
        except IntegrityError:  # another process noted it at the same moment
            pass
        with self._lock:
            self._orgs[team_id] = enterprise_id

    def enterprise_of(self, team_id: str) -> str | None:
        """The org a workspace belongs to, as noted by `remember` (None: not in a Grid org)."""
        with self._lock:
            if team_id in self._orgs:
                return self._orgs[team_id]
        with self._sessions() as s:
            row = s.get(WorkspaceSettings, team_id)
            org = row.enterprise_id if row is not None else None
        with self._lock:
            self._orgs[team_id] = org
        return org

    def teams_of(self, enterprise_id: str) -> list[str]:
        """Every workspace noted as part of the org."""
        with self._sessions() as s:
            return list(
                s.scalars(
                    select(WorkspaceSettings.team_id).where(
                        WorkspaceSettings.enterprise_id == enterprise_id
                    )
                )
            )

    def forget(self, team_id: str) -> None:
        """Drop what this process remembers of a workspace (after uninstall)."""
        with self._lock:
            self._orgs.pop(team_id, None)

    @property
    def models(self) -> list[str]:
        """The models admins may pick (the operator's default first)."""
        return self.settings.model_choices

    def effective(self, team_id: str) -> Effective:
        """The workspace's settings merged over the operator's (one read; once per request)."""
        with self._sessions() as s:
            return self.merge(s.get(WorkspaceSettings, team_id))

    def merge(self, row: WorkspaceSettings | None) -> Effective:
        """The settings of a workspace whose stored choice is `row` (None: none stored)."""
        s = self.settings
        if row is None:
            return Effective(
                model=s.anthropic_model,
                budget_daily_usd=s.budget_daily_usd,
                budget_monthly_usd=s.budget_monthly_usd,
                budget_user_daily_usd=s.budget_user_daily_usd,
                keep_transcripts=s.keep_transcripts,
                backfill_on_join=s.backfill_on_join,
            )
        chosen = Choice(
            model=row.model,
            language=row.language,
            footer=row.footer,
            channels=tuple((row.channels or "").split()),
            budget_daily_usd=row.budget_daily_usd,
            budget_monthly_usd=row.budget_monthly_usd,
            budget_user_daily_usd=row.budget_user_daily_usd,
            keep_transcripts=row.keep_transcripts,
            backfill_on_join=row.backfill_on_join,
        )
        # A model the operator no longer offers falls back to the default.
        model = row.model if row.model in self.models else s.anthropic_model
        return Effective(
            model=model,
            language=row.language or None,
            footer=True if row.footer is None else row.footer,
            channels=frozenset(chosen.channels),
            budget_daily_usd=_tighter(s.budget_daily_usd, row.budget_daily_usd),
            budget_monthly_usd=_tighter(s.budget_monthly_usd, row.budget_monthly_usd),
            budget_user_daily_usd=_tighter(s.budget_user_daily_usd, row.budget_user_daily_usd),
            # An admin can turn keeping (and backfill) off, never on against the operator.
            keep_transcripts=s.keep_transcripts and row.keep_transcripts is not False,
            backfill_on_join=s.backfill_on_join and row.backfill_on_join is not False,
            chosen=chosen,
            updated_by=row.updated_by,
            updated_at=row.updated_at,
        )

    def save(
        self,
        team_id: str,
        enterprise_id: str | None,
        choice: Choice,
        user_id: str,
        now: datetime,
    ) -> list[str]:
        """Store `choice` for the workspace; returns the names of the settings that changed.
        Turning keeping off deletes what was kept, in the same transaction."""
        removed: int | None = None
        with self._sessions.begin() as s:
            row = s.get(WorkspaceSettings, team_id)
            kept_before = self.merge(row).keep_transcripts
            if row is None:
                row = WorkspaceSettings(team_id=team_id)
                s.add(row)
            values = {
                "model": choice.model,
                "language": choice.language,
                "footer": choice.footer,
                "channels": " ".join(choice.channels) or None,
                "budget_daily_usd": choice.budget_daily_usd,
                "budget_monthly_usd": choice.budget_monthly_usd,
                "budget_user_daily_usd": choice.budget_user_daily_usd,
                "keep_transcripts": choice.keep_transcripts,
                "backfill_on_join": choice.backfill_on_join,
            }
            changed = [k for k, v in values.items() if getattr(row, k) != v]
            for key, value in values.items():
                setattr(row, key, value)
            row.enterprise_id = enterprise_id or row.enterprise_id
            row.updated_by = user_id
            row.updated_at = now
            if kept_before and not self.merge(row).keep_transcripts:
                removed = data.forget_kept(s, team_id)
        if removed is not None:
            scrub_deleted(self._sessions)
            log.info("keeping off in team=%s: %d kept messages deleted", team_id, removed)
        return changed


def refusal(eff: Effective, channel_id: str) -> str | None:
    """Why the workspace's allow-list keeps the bot out of `channel_id`, or None when it may."""
    allowed = eff.channels
    if not allowed or channel_id in allowed:
        return None
    names = ", ".join(f"<#{c}>" for c in sorted(allowed)[:10])
    more = f" and {len(allowed) - 10} more" if len(allowed) > 10 else ""
    return (
        f"This workspace's admins have limited me to {names}{more}. Ask there, or ask an "
        "admin to add this conversation in my App Home (Workspace settings)."
    )


def team_of(body: dict[str, Any], context_team: str | None) -> str:
    """The workspace a request came from. Bolt leaves `context.team_id` empty for events of
    org-wide (Enterprise Grid) installs; the envelope still names the workspace."""
    if context_team:
        return context_team
    event = body.get("event") if isinstance(body.get("event"), dict) else {}
    user = body.get("user") if isinstance(body.get("user"), dict) else {}
    view = body.get("view") if isinstance(body.get("view"), dict) else {}
    return str(
        body.get("team_id") or event.get("team") or user.get("team_id") or view.get("team_id") or ""
    )


def is_admin(client: WebClient, user_id: str) -> bool:
    """True when Slack says the user is an admin or owner of the workspace (or of its org)."""
    try:
        user = client.users_info(user=user_id)["user"]
    except SlackApiError as exc:
        log.warning(
            "users.info %s for the admin check failed: %s", user_id, exc.response.get("error")
        )
        return False
    grid = user.get("enterprise_user") or {}
    return bool(
        user.get("is_admin")
        or user.get("is_owner")
        or user.get("is_primary_owner")
        or grid.get("is_admin")
        or grid.get("is_owner")
    ) and not user.get("deleted")


# -- App Home ----------------------------------------------------------------------------------


def _limit(value: float | None) -> str:
    return money(value, 2) if value else "none"


def home_blocks(eff: Effective, *, can_edit: bool) -> list[dict[str, Any]]:
    """The Workspace settings section of App Home: current values, and an Edit button for admins."""
    channels = (
        ", ".join(f"<#{c}>" for c in sorted(eff.channels)[:20])
        + (f" and {len(eff.channels) - 20} more" if len(eff.channels) > 20 else "")
        if eff.channels
        else "every conversation I'm a member of"
    )
    language = neutralise_pings(eff.language) if eff.language else "the language of the question"
    lines = [
        f"*Model:* `{eff.model}`",
        f"*Answer language:* {language}",
        f"*Cache-savings footer:* {'shown' if eff.footer else 'hidden'}",
        f"*Channels:* {channels}",
        f"*Spend limits:* daily {_limit(eff.budget_daily_usd)} · monthly "
        f"{_limit(eff.budget_monthly_usd)} · per person daily {_limit(eff.budget_user_daily_usd)}",
        f"*Transcripts kept from events:* {'on' if eff.keep_transcripts else 'off'} · "
        f"*backfill on join:* {'on' if eff.keep_transcripts and eff.backfill_on_join else 'off'}",
    ]
    if eff.updated_by and eff.updated_at:
        lines.append(
            f"_Last changed by <@{eff.updated_by}> on {eff.updated_at:%Y-%m-%d %H:%M} UTC._"
        )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "Workspace settings"}},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)}},
    ]
    if can_edit:
        blocks.append(
            {
                "type": "actions",
                "block_id": "workspace_settings",
                "elements": [
                    {
                        "type": "button",
                        "action_id": OPEN_ACTION,
                        "text": {"type": "plain_text", "text": "Edit settings"},
                    }
                ],
            }
        )
    else:
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "Workspace admins and owners can change these."}
                ],
            }
        )
    return blocks


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text[:75]}, "value": value}


def _input(block_id: str, label: str, element: dict[str, Any], hint: str = "") -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "input",
        "block_id": block_id,
        "optional": True,
        "label": {"type": "plain_text", "text": label},
        "element": {**element, "action_id": block_id},
    }
    if hint:
        block["hint"] = {"type": "plain_text", "text": hint}
    return block


def settings_modal(eff: Effective, models: list[str], settings: Settings) -> dict[str, Any]:
    """The modal admins edit the workspace's settings in."""
    blocks = [
        *_model_input(eff, models),
        _language_input(eff.chosen),
        _footer_input(eff),
        _channels_input(eff.chosen),
        *(_budget_input(name, label, eff.chosen, settings) for name, label, _ in _BUDGETS),
        *_keeping_inputs(eff, settings),
    ]
    return {
        "type": "modal",
        "callback_id": CALLBACK_ID,
        "title": {"type": "plain_text", "text": "Workspace settings"},
        "submit": {"type": "plain_text", "text": "Save"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": blocks,
    }


def _model_input(eff: Effective, models: list[str]) -> list[dict[str, Any]]:
    """The model picker, first model the default; none when the operator offers one model."""
    if len(models) <= 1:
        return []
    options = [_option(f"{m} (default)" if i == 0 else m, m) for i, m in enumerate(models)]
    return [
        _input(
            "model",
            "Model",
            {
                "type": "static_select",
                "options": options,
                "initial_option": options[models.index(eff.model)]
                if eff.model in models
                else options[0],
            },
        )
    ]


def _language_input(chosen: Choice) -> dict[str, Any]:
    language: dict[str, Any] = {
        "type": "plain_text_input",
        "max_length": LANGUAGE_MAX,
        "placeholder": {"type": "plain_text", "text": "e.g. English, 日本語, Español"},
    }
    if chosen.language:
        language["initial_value"] = chosen.language
    return _input(
        "language",
        "Answer language",
        language,
        "Leave empty to answer in the language of the question.",
    )


def _footer_input(eff: Effective) -> dict[str, Any]:
    shown, hidden = _option("Show", "on"), _option("Hide", "off")
    return _input(
        "footer",
        "Cache-savings footer under answers",
        {
            "type": "radio_buttons",
            "options": [shown, hidden],
            "initial_option": shown if eff.footer else hidden,
        },
    )


def _channels_input(chosen: Choice) -> dict[str, Any]:
    conversations: dict[str, Any] = {
        "type": "multi_conversations_select",
        "filter": {"include": ["public", "private"], "exclude_bot_users": True},
        "max_selected_items": MAX_CHANNELS,
        "placeholder": {"type": "plain_text", "text": "Every conversation I'm a member of"},
    }
    if chosen.channels:
        conversations["initial_conversations"] = list(chosen.channels)
    return _input(
        "channels",
        "Only answer in these channels",
        conversations,
        "Leave empty to answer wherever I'm invited.",
    )


# Admins can turn these off, never on against the operator; (block id, label, one-line hint).
_KEEPING = (
    (
        "keep_transcripts",
        "Keep transcripts from events",
        "Store the messages of conversations I'm in as they arrive, so answers read less from "
        "Slack. Off deletes what is stored.",
    ),
    (
        "backfill_on_join",
        "Backfill when I'm added to a channel",
        "Read a channel's recent messages when I join it, so its first question starts warm.",
    ),
)


def _keeping_inputs(eff: Effective, settings: Settings) -> list[dict[str, Any]]:
    """On/off for keeping transcripts and backfill; none of what the operator turned off."""
    blocks = []
    for name, label, hint in _KEEPING:
        if not getattr(settings, name):
            continue
        on, off = _option("On", "on"), _option("Off", "off")
        blocks.append(
            _input(
                name,
                label,
                {
                    "type": "radio_buttons",
                    "options": [on, off],
                    "initial_option": on if getattr(eff, name) else off,
                },
                hint,
            )
        )
    return blocks


def _budget_input(name: str, label: str, chosen: Choice, settings: Settings) -> dict[str, Any]:
    """One spend limit in dollars; the hint names the operator's ceiling, if any."""
    element: dict[str, Any] = {
        "type": "number_input",
        "is_decimal_allowed": True,
        "min_value": "0.01",
    }
    current = getattr(chosen, name)
    if current:
        element["initial_value"] = f"{current:.2f}".rstrip("0").rstrip(".")  # never 1e+06
    ceiling = getattr(settings, name)
    hint = (
        f"The operator's limit is {money(ceiling, 2)}; yours can only be lower."
        if ceiling
        else "Leave empty for no limit."
    )
    return _input(name, label, element, hint)


def parse_submission(
    values: dict[str, dict[str, Any]], models: list[str], settings: Settings
) -> tuple[Choice, dict[str, str]]:
    """The modal's state -> a Choice, and errors by block id (empty when valid)."""
    errors: dict[str, str] = {}

    def element(block: str) -> dict[str, Any]:
        return (values.get(block) or {}).get(block) or {}

    model = (element("model").get("selected_option") or {}).get("value")
    if model is not None and model not in models:
        errors["model"] = "Pick one of the offered models."
        model = None
    if model == models[0]:
        model = None  # the default follows the operator's ANTHROPIC_MODEL
    language = " ".join((element("language").get("value") or "").split()) or None
    if language is not None and (
        len(language) > LANGUAGE_MAX
        or not language[0].isalpha()
        or not all(c.isalpha() or c in _LANGUAGE_EXTRA for c in language)
    ):
        errors["language"] = "Write a language name, e.g. English or 日本語 (letters only)."
        language = None
    footer_value = (element("footer").get("selected_option") or {}).get("value")
    footer = {"on": True, "off": False}.get(footer_value or "")
    channels = tuple(
        dict.fromkeys(c for c in element("channels").get("selected_conversations") or [] if c)
    )
    if len(channels) > MAX_CHANNELS:
        errors["channels"] = f"Pick at most {MAX_CHANNELS} conversations."
    budgets: dict[str, float | None] = {}
    for name, _, _ in _BUDGETS:
        raw = (element(name).get("value") or "").strip()
        budgets[name] = None
        if not raw:
            continue
        try:
            amount = float(raw)
        except ValueError:
            errors[name] = "Write an amount in dollars, e.g. 25 or 7.50."
            continue
        if not 0.01 <= amount <= MAX_BUDGET:  # also refuses nan and inf
            errors[name] = f"Write an amount between $0.01 and {money(MAX_BUDGET, 0)}."
            continue
        ceiling = getattr(settings, name)
        if ceiling and amount > ceiling:
            errors[name] = f"The operator's limit is {money(ceiling, 2)}; pick a lower amount."
            continue
        budgets[name] = round(amount, 2)
    keeping = {
        name: {"on": True, "off": False}.get(
            (element(name).get("selected_option") or {}).get("value") or ""
        )
        for name, _, _ in _KEEPING
    }
    choice = Choice(
        model=model,
        language=language,
        footer=footer,
        channels=channels,
        **budgets,
        **keeping,
    )
    return choice, errors
