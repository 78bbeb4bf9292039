"""manifest.yml is valid for Slack and declares what the code handles, and nothing more."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
# shared/ sits beside the clone (CI, developer machines), or beside a worktree's parent folder
SCHEMAS = next(
    (
        d / "shared" / "reference" / "slack-manifest-schema"
        for d in ROOT.parents
        if (d / "shared" / "reference" / "slack-manifest-schema").is_dir()
    ),
    ROOT.parent / "shared" / "reference" / "slack-manifest-schema",
)


def load() -> dict:
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


def test_manifest_validates_against_slacks_schema():
    manifest = load()
    version = manifest.get("_metadata", {}).get("major_version", 1)
    schema_file = SCHEMAS / f"manifest.schema.{version}.0.0.json"
    if not schema_file.exists():  # shared/ sits beside the clone in CI and on developer machines
        import pytest

        pytest.skip(f"{schema_file} not present")
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft7Validator(schema).validate(manifest)


def test_every_declared_event_is_handled(bot, slack):
    """Bolt answers 404 to an event no listener takes, and Slack then retries it."""
    for name in load()["settings"]["event_subscriptions"]["bot_events"]:
        # message.channels / .groups / .im / .mpim arrive as type "message" with channel_type
        event_type, _, channel_type = name.partition(".")
        event = {
            "type": event_type,
            "channel_type": channel_type or None,
            "user": "U1",
            "text": "<@UBOT> hi",
            "channel": "C9",
            "ts": "1700000000.000100",
            "event_ts": "1700000000.000100",
            "bot_id": "BX",
        }
        assert bot.event(event).status_code == 200, name
    assert bot.event({"type": "undeclared_event"}).status_code == 404


def test_request_urls_point_at_the_events_path():
    manifest = load()
    assert manifest["settings"]["interactivity"]["request_url"].endswith("/slack/events")
    assert manifest["settings"]["event_subscriptions"]["request_url"].endswith("/slack/events")
    for command in manifest["features"]["slash_commands"]:
        assert command["url"].endswith("/slack/events")


def test_declared_command_and_shortcut_are_handled(bot, slack):
    from tests.harness import SlackUI

    ui = SlackUI(bot)
    for command in load()["features"]["slash_commands"]:
        assert command["command"] == "/summarize"
        resp, _ = ui.command("help")
        assert resp.status_code == 200 and "/summarize" in resp.text
    for shortcut in load()["features"]["shortcuts"]:
        assert shortcut["callback_id"] == "summarize_thread" and shortcut["type"] == "message"
        parent = slack.add_thread("C1", 1)
        resp, _ = ui.shortcut("C1", parent)
        assert resp.status_code == 200


def _registered(bot) -> dict[str, set[str]]:
    """What the app's listeners match on, read from Bolt's built-in matchers."""
    found: dict[str, set[str]] = {"event": set(), "command": set(), "message_shortcut": set(),
                                  "action": set()}
    for listener in bot.app.bolt._listeners:
        for matcher in listener.matchers:
            func = getattr(matcher, "func", None)
            kind = func.__qualname__.split(".")[0] if func else ""
            values = [c.cell_contents for c in (func.__closure__ or [])] if func else []
            if kind in ("event", "command", "message_shortcut"):
                found[kind].update(v if isinstance(v, str) else v.get("type", "")
                                   for v in values if isinstance(v, str | dict))
            elif kind in ("action", "block_action"):
                found["action"].update(str(v) for v in values if isinstance(v, str))
    return found


def test_nothing_is_registered_without_being_declared(bot):
    manifest = load()
    declared_events = {e.split(".")[0] for e in manifest["settings"]["event_subscriptions"]
                       ["bot_events"]}
    declared_events.add("app_mention")  # answered by a middleware before the listeners
    found = _registered(bot)
    assert found["event"] and found["event"] <= declared_events, found["event"]
    assert found["command"] == {c["command"] for c in manifest["features"]["slash_commands"]}
    assert found["message_shortcut"] == {
        s["callback_id"] for s in manifest["features"]["shortcuts"] if s["type"] == "message"
    }
    assert manifest["settings"]["interactivity"]["is_enabled"]  # the share button


def test_oauth_scopes_default_to_the_manifests():
    from bot.config import Settings

    default = Settings.model_fields["slack_scopes"].default.split(",")
    assert sorted(default) == sorted(load()["oauth_config"]["scopes"]["bot"])


def test_the_messages_tab_is_an_agents_conversation_place():
    from bot.dm import PROMPTS

    manifest = load()
    features = manifest["features"]
    assert features["app_home"]["messages_tab_enabled"] is True
    assert features["app_home"]["messages_tab_read_only_enabled"] is False
    agent = features["agent_view"]
    assert 0 < len(agent["agent_description"]) <= 300
    assert agent["suggested_prompts"] == list(PROMPTS)  # the ones the bot sets again
    assert "assistant_view" not in features  # the older form Slack will deprecate
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert {"assistant:write", "im:history", "chat:write"} <= set(scopes)
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert {"message.im", "app_home_opened"} <= set(events)
