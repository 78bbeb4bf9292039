"""Settings: one clear line per problem, no secrets, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import SettingsError, load_settings

GOOD = {
    "SLACK_BOT_TOKEN": "xoxb-secret-token-value",
    "SLACK_SIGNING_SECRET": "sign-secret-value",
    "ANTHROPIC_API_KEY": "sk-ant-secret-key-value",
}


def test_defaults():
    s = load_settings(GOOD, env_file=None)
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.anthropic_base_url == "https://api.anthropic.com"
    assert s.anthropic_model.startswith("claude-sonnet")
    assert s.database_url.startswith("sqlite:///")
    assert s.port == 3000 and not s.socket_mode


def test_missing_required_names_each_variable():
    with pytest.raises(SettingsError) as err:
        load_settings({}, env_file=None)
    assert "SLACK_BOT_TOKEN is required" in str(err.value)
    assert "ANTHROPIC_API_KEY is required" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PORT", "eighty", "PORT"),
        ("PORT", "70000", "PORT"),
        ("SLACK_BOT_TOKEN", "not-a-token", "SLACK_BOT_TOKEN must be a bot token"),
        ("SLACK_APP_TOKEN", "xoxb-wrong-kind", "SLACK_APP_TOKEN must be an app-level token"),
        ("ANTHROPIC_BASE_URL", "api.anthropic.com", "ANTHROPIC_BASE_URL must be an http(s) URL"),
        ("CACHE_TTL", "10m", "CACHE_TTL must be auto, 5m, 1h or off"),
        ("CACHE_MIN_TOKENS", "sonnet:1024", "CACHE_MIN_TOKENS must look like"),
    ],
)
def test_malformed_values_are_named(name, value, expected):
    with pytest.raises(SettingsError) as err:
        load_settings({**GOOD, name: value}, env_file=None)
    assert expected in str(err.value)
    for secret in GOOD.values():
        assert secret not in str(err.value)


@pytest.mark.parametrize(
    ("given", "read"),
    [
        ("postgres://u:pw@db.example.com:5432/d1", "postgresql://u:pw@db.example.com:5432/d1"),
        ("postgres+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("sqlite:///postgres://odd.db", "sqlite:///postgres://odd.db"),
    ],
)
def test_database_url_postgres_scheme_is_read_as_postgresql(given, read):
    assert load_settings({**GOOD, "DATABASE_URL": given}, env_file=None).database_url == read


def test_http_mode_needs_signing_secret_but_socket_mode_does_not():
    env = {k: v for k, v in GOOD.items() if k != "SLACK_SIGNING_SECRET"}
    with pytest.raises(SettingsError, match="SLACK_SIGNING_SECRET"):
        load_settings(env, env_file=None).require_http()
    socket = load_settings({**env, "SLACK_APP_TOKEN": "xapp-1-abc"}, env_file=None)
    assert socket.socket_mode
    socket.require_http()


def test_dotenv_file_is_read(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in GOOD.items()) + "\nPORT=4000\n")
    assert load_settings(env_file=str(env_file)).port == 4000


def test_start_up_with_bad_settings_prints_one_line(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    env.update({"SLACK_BOT_TOKEN": "xoxb-secret-token-value", "PORT": "nope"})
    proc = subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "ANTHROPIC_API_KEY is required" in lines[0] and "PORT" in lines[0]
    assert "Traceback" not in proc.stderr and "xoxb-secret" not in proc.stderr


def test_start_up_when_slack_cannot_be_reached_says_so_in_one_line(tmp_path: Path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    env.update(GOOD)
    env.update({"SLACK_API_URL": f"http://127.0.0.1:{port}/api/", "PORT": "0",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}"})
    proc = subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no migration or retry log lines before it
    assert lines[0].startswith("configuration error: Slack rejected SLACK_BOT_TOKEN or could not "
                               f"be reached at SLACK_API_URL (http://127.0.0.1:{port}/api/)"), lines
    assert "Traceback" not in proc.stderr and "xoxb-secret" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # checked before the database was created


def test_start_up_without_a_signing_secret_says_so_before_anything_else(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    env.update({k: v for k, v in GOOD.items() if k != "SLACK_SIGNING_SECRET"})
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'bot.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "configuration error: SLACK_SIGNING_SECRET is required in HTTP mode (or set "
        "SLACK_APP_TOKEN to use Socket Mode)"
    ]
    assert list(tmp_path.iterdir()) == []
