"""The bot served over HTTP on loopback, and a way to talk to it like Slack does (tests, bench)."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import waitress
from cryptography.fernet import Fernet

from bot.app import BotApp
from bot.config import load_settings
from bot.server import stop_server
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack

SIGNING_SECRET = "test-signing-secret"
ENCRYPTION_KEY = Fernet.generate_key().decode()  # of the OAuth bot (oauth_bot fixture)


def bot_env(
    slack: FakeSlack, model: FakeMessagesAPI, database_url: str, **extra: Any
) -> dict[str, str]:
    """The environment of a bot that talks to these fakes (`extra`: more settings by name)."""
    env = {
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url,
        "ANTHROPIC_API_KEY": model.api_key,
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_MODEL": "claude-sonnet-4-5",
        "DATABASE_URL": database_url,
        "WORKER_THREADS": "4",
    }
    env.update({k.upper(): str(v) for k, v in extra.items()})
    return env


def make_settings(slack: FakeSlack, model: FakeMessagesAPI, database_url: str, **extra: Any):
    return load_settings(bot_env(slack, model, database_url, **extra), env_file=None)


def process_env(
    slack: FakeSlack, model: FakeMessagesAPI, database_url: str, **extra: str
) -> dict[str, str]:
    """The environment of `python -m bot` in a child process that talks to the fakes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    env.update({
        "SLACK_BOT_TOKEN": slack.bot_token, "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url, "ANTHROPIC_API_KEY": model.api_key,
        "ANTHROPIC_BASE_URL": model.url, "ANTHROPIC_MODEL": "claude-sonnet-4-5",
        "DATABASE_URL": database_url, "PORT": "0", "LOG_LEVEL": "INFO",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    })
    env.update(extra)
    return env


def signature_headers(
    body: bytes, secret: str = SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Slack's request signature: v0= HMAC-SHA256 of v0:{timestamp}:{body}."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    base = b"v0:" + ts.encode() + b":" + body
    sig = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"x-slack-request-timestamp": ts, "x-slack-signature": sig}


def mention_envelope(
    team_id: str,
    event: dict[str, Any],
    event_id: str,
    *,
    enterprise_id: str | None = None,
    org_wide: bool = False,
) -> dict[str, Any]:
    """An Events API envelope around `event`, as Slack posts it. `enterprise_id`: the workspace
    belongs to that Enterprise Grid org; `org_wide`: the app is installed org-wide there."""
    auth: dict[str, Any] = {"team_id": team_id, "user_id": "UBOT", "is_bot": True}
    envelope: dict[str, Any] = {
        "token": "legacy",
        "team_id": team_id,
        "api_app_id": "A0001",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [auth],
    }
    if enterprise_id:
        envelope["enterprise_id"] = enterprise_id
        auth["enterprise_id"] = enterprise_id
        auth["is_enterprise_install"] = org_wide
        envelope["is_enterprise_install"] = org_wide
        if org_wide:
            auth["team_id"] = None
    return envelope


class Bot:
    """The bot served over HTTP on loopback, and a way to talk to it like Slack does."""

    _ids = itertools.count(1)

    def __init__(self, app: BotApp, slack: FakeSlack, model: FakeMessagesAPI) -> None:
        self.app = app
        self.slack = slack
        self.model = model
        app.start()
        self.server = waitress.create_server(app.wsgi(), host="127.0.0.1", port=0, threads=4)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def _serve(self) -> None:
        try:
            self.server.run()
        except OSError:  # the listening socket closed under the poll loop: we are stopping
            pass

    def close(self) -> None:
        self.http.close()
        stop_server(self.server)
        self._thread.join(timeout=5)
        self.app.close()

    def signed_post(
        self,
        body: bytes,
        content_type: str,
        *,
        secret: str = SIGNING_SECRET,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        all_headers = {
            "content-type": content_type,
            **signature_headers(body, secret, timestamp),
            **(headers or {}),
        }
        return self.http.post("/slack/events", content=body, headers=all_headers)

    def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        wait: bool = True,
        team_id: str | None = None,
        enterprise_id: str | None = None,
        org_wide: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        envelope = mention_envelope(
            team_id or self.slack.team_id,
            event,
            event_id or f"Ev{next(self._ids):08d}",
            enterprise_id=enterprise_id,
            org_wide=org_wide,
        )
        headers = {}
        if retry_num is not None:
            headers = {"x-slack-retry-num": str(retry_num), "x-slack-retry-reason": "http_timeout"}
        resp = self.signed_post(
            json.dumps(envelope).encode(), "application/json", headers=headers, **kwargs
        )
        if wait:
            self.wait()
        return resp

    def deliver(
        self, event: dict[str, Any], *, team_id: str | None = None, **kw: Any
    ) -> httpx.Response:
        """Deliver an inner event built by the fake (post_event, edit_event, …) in a signed
        envelope, to the workspace `team_id` (default: the one the channel belongs to)."""
        channel = str(event.get("channel") or "")
        team = team_id or self.slack.channel_teams.get(channel, self.slack.team_id)
        return self.event(event, team_id=team, **kw)

    def mention(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U1",
        thread_ts: str | None = None,
        files: list[dict[str, Any]] | None = None,
        **kw: Any,
    ) -> tuple[str, httpx.Response]:
        """Post a message that mentions the bot into the fake, then deliver app_mention
        (`files`: attached to the mention, as the fake's add_message takes them)."""
        full = f"<@UBOT> {text}"
        ts = self.slack.add_message(channel, full, user=user, thread_ts=thread_ts, files=files)
        if files:
            return ts, self.event(self.slack.app_mention_event(channel, ts), **kw)
        event = {
            "type": "app_mention",
            "user": user,
            "text": full,
            "ts": ts,
            "channel": channel,
            "team": self.slack.team_id,
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return ts, self.event(event, **kw)

    def form(self, fields: dict[str, str], **kwargs: Any) -> httpx.Response:
        body = urllib.parse.urlencode(fields).encode()
        return self.signed_post(body, "application/x-www-form-urlencoded", **kwargs)

    def wait(self) -> None:
        assert self.app.wait_idle(timeout=60), "background work did not finish"

    def posts_in(self, channel: str, thread_ts: str) -> list[dict[str, Any]]:
        posts = self.slack.posts
        return [p for p in posts if p["channel"] == channel and p.get("thread_ts") == thread_ts]


class SlackUI:
    """What a person does in Slack, sent to the bot as Slack would send it."""

    _triggers = itertools.count(1)

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.slack = bot.slack

    def _trigger(self) -> str:
        return f"{next(self._triggers)}.1700000000.abcdef"

    def command(
        self, text: str, *, channel: str = "C1", user: str = "U1", wait: bool = True
    ) -> tuple[Any, str]:
        url = self.slack.response_url()
        resp = self.bot.form(
            {
                "token": "legacy",
                "team_id": self.slack.team_id,
                "team_domain": "acme",
                "channel_id": channel,
                "channel_name": "general",
                "user_id": user,
                "user_name": "someone",
                "command": "/summarize",
                "text": text,
                "api_app_id": "A0001",
                "is_enterprise_install": "false",
                "response_url": url,
                "trigger_id": self._trigger(),
            }
        )
        if wait:
            self.bot.wait()
        return resp, url

    def responses(self, url: str) -> list[dict[str, Any]]:
        return [r for r in self.slack.responses if r["_url"] == url]

    def shortcut(
        self, channel: str, message_ts: str, thread_ts: str | None = None, *, user: str = "U1"
    ) -> tuple[Any, str]:
        url = self.slack.response_url()
        message: dict[str, Any] = {
            "type": "message",
            "ts": message_ts,
            "user": "U2",
            "text": "something",
        }
        if thread_ts:
            message["thread_ts"] = thread_ts
        payload = {
            "type": "message_action",
            "callback_id": "summarize_thread",
            "trigger_id": self._trigger(),
            "team": {"id": self.slack.team_id, "domain": "acme"},
            "user": {"id": user, "name": "someone", "team_id": self.slack.team_id},
            "channel": {"id": channel, "name": "general"},
            "message_ts": message_ts,
            "message": message,
            "response_url": url,
            "token": "legacy",
            "api_app_id": "A0001",
            "is_enterprise_install": False,
        }
        resp = self.bot.form({"payload": json.dumps(payload)})
        self.bot.wait()
        return resp, url

    def click(self, value: str, *, user: str = "U1", channel: str = "C1") -> tuple[Any, str]:
        """Click the share button under a private summary."""
        action = {"type": "button", "action_id": "share_summary", "block_id": "b", "value": value}
        return self.act(action, user=user, channel=channel)

    def act(
        self,
        action: dict[str, Any],
        *,
        user: str = "U1",
        channel: str = "C1",
        team_id: str | None = None,
        message: dict[str, Any] | None = None,
    ) -> tuple[Any, str]:
        """A block_actions payload for one interactive element in a message: an ephemeral one
        unless `message` (the message clicked, as Slack sends it back) is given. Returns the
        HTTP response and the payload's response_url."""
        url = self.slack.response_url()
        team = team_id or self.slack.team_id
        container: dict[str, Any] = {"type": "message", "channel_id": channel}
        if message is None:
            container["is_ephemeral"] = True
        else:
            container.update(message_ts=message["ts"], is_ephemeral=False)
            if message.get("thread_ts"):
                container["thread_ts"] = message["thread_ts"]
        payload: dict[str, Any] = {
            "type": "block_actions",
            "trigger_id": self._trigger(),
            "api_app_id": "A0001",
            "team": {"id": team, "domain": "acme"},
            "user": {"id": user, "username": "someone", "team_id": team},
            "channel": {"id": channel, "name": "general"},
            "container": container,
            "response_url": url,
            "token": "legacy",
            "actions": [{**action, "action_ts": self._trigger()}],
        }
        if message is not None:
            payload["message"] = message
        resp = self.bot.form({"payload": json.dumps(payload)})
        self.bot.wait()
        return resp, url

    def vote(
        self,
        message: dict[str, Any],
        up: bool,
        *,
        user: str = "U1",
        team_id: str | None = None,
    ) -> tuple[Any, str]:
        """Click 👍 (`up`) or 👎 under an answer (`message`: a post, a stream or a response as
        the fakes recorded it), as Slack sends it for the element shown there: the feedback
        buttons (the clicked side's value) or the fallback buttons."""
        blocks = message.get("blocks") or []
        control = next(b for b in blocks if b.get("block_id") == "answer_feedback")
        if control["type"] == "context_actions":
            element = control["elements"][0]
            side = element["positive_button" if up else "negative_button"]
            action = {
                "type": "feedback_buttons",
                "action_id": element["action_id"],
                "block_id": control["block_id"],
                "value": side["value"],
                "text": side["text"],
            }
        else:
            button = control["elements"][0 if up else 1]
            action = {
                "type": "button",
                "action_id": button["action_id"],
                "block_id": control["block_id"],
                "value": button["value"],
                "text": button["text"],
            }
        channel = str(message.get("channel") or "C1")
        shown = None
        if message.get("ts"):
            shown = {
                "type": "message",
                "ts": message["ts"],
                "thread_ts": message.get("thread_ts"),
                "text": message.get("text", ""),
                "blocks": blocks,
            }
        return self.act(action, user=user, channel=channel, team_id=team_id, message=shown)

    def choose(
        self,
        response: dict[str, Any],
        value: str,
        *,
        user: str = "U1",
        channel: str = "C1",
        team_id: str | None = None,
    ) -> tuple[Any, str]:
        """Pick the option with `value` from the static_select in a private `response`."""
        select = next(
            e
            for b in response.get("blocks") or []
            if b["type"] == "actions"
            for e in b["elements"]
            if e["type"] == "static_select"
        )
        option = next(o for o in select["options"] if o["value"] == value)
        action = {
            "type": "static_select",
            "action_id": select["action_id"],
            "block_id": "reason",
            "selected_option": option,
        }
        return self.act(action, user=user, channel=channel, team_id=team_id)


    def home_action(
        self, action_id: str, *, user: str = "U1", team_id: str | None = None
    ) -> httpx.Response:
        """Click a button on the App Home tab (block_actions from a `home` view)."""
        team = team_id or self.slack.team_id
        payload = {
            "type": "block_actions",
            "trigger_id": self._trigger(),
            "api_app_id": "A0001",
            "team": {"id": team, "domain": "acme"},
            "user": {"id": user, "username": "someone", "team_id": team},
            "container": {"type": "view", "view_id": "VHOME"},
            "view": {"id": "VHOME", "type": "home", "team_id": team, "blocks": []},
            "token": "legacy",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "workspace_settings",
                    "action_ts": self._trigger(),
                }
            ],
        }
        resp = self.bot.form({"payload": json.dumps(payload)})
        self.bot.wait()
        return resp

    def submit(
        self,
        view: dict[str, Any],
        values: dict[str, dict[str, Any]],
        *,
        user: str = "U1",
        team_id: str | None = None,
    ) -> httpx.Response:
        """Press Submit on an open modal: `values` maps block id -> the element's state (Slack
        sends each input's state under view.state.values[block_id][action_id])."""
        team = team_id or self.slack.team_id
        state: dict[str, dict[str, Any]] = {}
        for block in view.get("blocks", []):
            if block.get("type") != "input":
                continue
            element = block["element"]
            entry: dict[str, Any] = {"type": element["type"]}
            entry.update(values.get(block["block_id"], _untouched(element)))
            state[block["block_id"]] = {element["action_id"]: entry}
        payload = {
            "type": "view_submission",
            "team": {"id": team, "domain": "acme"},
            "user": {"id": user, "username": "someone", "team_id": team},
            "api_app_id": "A0001",
            "token": "legacy",
            "trigger_id": self._trigger(),
            "view": {**view, "state": {"values": state}},
            "response_urls": [],
            "is_enterprise_install": False,
        }
        resp = self.bot.form({"payload": json.dumps(payload)})
        self.bot.wait()
        return resp


def _untouched(element: dict[str, Any]) -> dict[str, Any]:
    """What Slack sends for an input the user left as it was: its initial value, if any."""
    kind = element["type"]
    if kind in ("static_select", "radio_buttons"):
        return {"selected_option": element.get("initial_option")}
    if kind == "multi_conversations_select":
        return {"selected_conversations": list(element.get("initial_conversations") or [])}
    return {"value": element.get("initial_value")}


class BotProcess:
    """`python -m bot <role>` (serve, web or worker) in a child process, logging to a buffer.

    Waits for the one line a process logs once it serves; `port` is its HTTP port (serve, web),
    `metrics_port` its METRICS_PORT listener when one is configured."""

    def __init__(self, env: dict[str, str], cwd: Path, role: str = "serve", nice: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", role], env=env, cwd=cwd,
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,  # bench: a lower CPU priority
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # blocks until the process says what it serves
            self.lines.append(line)
            if " INFO bot: serving " in line or " INFO bot: worker: " in line:
                if "serving HTTP on port " in line:
                    self.port = int(line.split("serving HTTP on port ")[1].split()[0])
                if "GET /metrics on " in line:
                    self.metrics_port = int(line.split("GET /metrics on ")[1].split(":")[1])
                break
        else:
            raise AssertionError("".join(self.lines))
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def mention(self, team_id: str, event: dict, event_id: str) -> httpx.Response:
        body = json.dumps(mention_envelope(team_id, event, event_id)).encode()
        headers = {"content-type": "application/json", **signature_headers(body)}
        return httpx.post(f"http://127.0.0.1:{self.port}/slack/events", content=body,
                          headers=headers, timeout=10)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self._drain.join(timeout=10)
        return code
