"""What must not outlive its promise (docs/SECURITY.md): an uninstalled workspace's text on
disk, message text and secrets in logs, tokens stored without a word, an unreadable key."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from bot.doctor import FAIL, OK, WARN, run_doctor
from tests.harness import ENCRYPTION_KEY as KEY
from tests.harness import BotProcess, make_settings, mention_envelope, process_env
from tests.test_workspaces import install, mention_in

ON_POSTGRES = bool(os.environ.get("TEST_DATABASE_URL"))


def two_workspaces_talking(bot, slack, marker: str) -> None:
    """Two workspaces installed; each has a thread holding `{team}-{marker}` that the bot read."""
    for team, channel in (("T0002", "C2"), ("T0003", "C3")):
        install(bot, slack, team, f"xoxb-{team.lower()}")
        slack.add_channel(channel, team.lower(), members={"U1"})
        slack.channel_teams[channel] = team
        parent = slack.add_thread(
            channel, 6, text_fn=lambda i, t=team: f"{t}-{marker} line {i}: the plan stays secret"
        )
        mention_in(bot, slack, team, channel, parent, f"summarize {team}-{marker}-ASK")


def _raw(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


@pytest.mark.skipif(ON_POSTGRES, reason="PostgreSQL's files are not ours to read; see SECURITY.md")
def test_uninstalled_text_is_not_left_in_the_sqlite_file_or_its_wal(
    oauth_bot, slack, model, database_url
):
    db = Path(str(make_url(database_url).database))
    wal = Path(f"{db}-wal")
    two_workspaces_talking(oauth_bot, slack, "DISKMARK")
    # Some of the text in the database file itself, some still only in WAL frames.
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    parent = slack.add_thread("C2", 3, text_fn=lambda i: f"T0002-DISKMARK late line {i}")
    mention_in(oauth_bot, slack, "T0002", "C2", parent, "and this one")
    assert b"T0002-DISKMARK" in _raw(db) + _raw(wal)  # the grep below can see text

    assert oauth_bot.event({"type": "app_uninstalled"}, team_id="T0002").status_code == 200
    oauth_bot.wait()
    assert b"T0002-DISKMARK" not in _raw(db) and b"T0002-DISKMARK" not in _raw(wal)
    with sqlite3.connect(db) as conn:  # whatever a later checkpoint copies into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"T0002-DISKMARK" not in _raw(db) + _raw(wal)
    assert b"T0003-DISKMARK" in _raw(db) + _raw(wal)  # the other workspace keeps its text


# -- logs -------------------------------------------------------------------------------------

LOG_MARKER = "LOGMARKER-7f3a"


def _event_body(text: str) -> bytes:
    event = {"type": "app_mention", "user": "U1", "text": f"<@UBOT> {text}", "channel": "C2",
             "ts": "1700000000.000100", "event_ts": "1700000000.000100", "team": "T0002"}
    return json.dumps(mention_envelope("T0002", event, "Ev0LOGS")).encode()


def _install_state(bot) -> tuple[str, dict[str, str]]:
    """A valid state from the install page, and the browser cookie that goes with it."""
    page = bot.http.get("/slack/install")
    state = re.search(r"state=([A-Za-z0-9_-]+)", page.text).group(1)
    return state, {"cookie": "; ".join(f"{k}={v}" for k, v in page.cookies.items())}


def test_bad_requests_leave_their_text_codes_and_states_out_of_every_log_line(
    oauth_bot, slack, caplog
):
    caplog.set_level(logging.DEBUG)  # the libraries' debug lines too
    install(oauth_bot, slack, "T0002", "xoxb-t0002")
    body = _event_body(f"{LOG_MARKER} the secret plan")
    sent = {
        "wrong signature": oauth_bot.signed_post(body, "application/json", secret="not-it"),
        "stale timestamp": oauth_bot.signed_post(
            body, "application/json", timestamp=int(time.time()) - 3600
        ),
        "no signature": oauth_bot.http.post(
            "/slack/events", content=body, headers={"content-type": "application/json"}
        ),
        "malformed JSON": oauth_bot.signed_post(body[:-7], "application/json"),
        "malformed form": oauth_bot.signed_post(
            f"payload=%7B%22text%22%3A%22{LOG_MARKER}".encode(),
            "application/x-www-form-urlencoded",
        ),
        "forged state": oauth_bot.http.get(
            "/slack/oauth_redirect",
            params={"code": f"{LOG_MARKER}-code", "state": f"{LOG_MARKER}-state"},
        ),
    }
    state, cookie = _install_state(oauth_bot)
    sent["unknown code"] = oauth_bot.http.get(
        "/slack/oauth_redirect", params={"code": f"{LOG_MARKER}-code", "state": state},
        headers=cookie,
    )
    state, cookie = _install_state(oauth_bot)
    sent["oversized code"] = oauth_bot.http.get(
        "/slack/oauth_redirect", params={"code": LOG_MARKER * 4_000, "state": state},
        headers=cookie,
    )
    oauth_bot.wait()
    statuses = {what: resp.status_code for what, resp in sent.items()}
    assert statuses == {
        "wrong signature": 401,
        "stale timestamp": 401,
        "no signature": 401,
        "malformed JSON": 400,
        "malformed form": 400,
        "forged state": 400,
        "unknown code": 401,
        "oversized code": 400,
    }
    codes = [c.get("code") for c in slack.calls_to("oauth.v2.access")]
    assert codes[-1] == f"{LOG_MARKER}-code"  # exchanged; the oversized one was not

    # The test's own HTTP client logs the URLs it requests; everything else is the bot's.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    lines = [caplog.handler.format(r) for r in records]  # with any traceback
    assert not [line for line in lines if LOG_MARKER in line]
    assert all(len(line) < 2_000 for line in lines)
    causes = [
        "rejected a request to /slack/events: signature does not match SLACK_SIGNING_SECRET",
        "rejected a request to /slack/events: signed 3600 s ago",
        "rejected a request to /slack/events: no X-Slack-Signature",
        "rejected a malformed request body: body is not valid JSON",
        "rejected a malformed request body: payload is not valid JSON",
        "OAuth install failed: invalid_browser",
        "OAuth install failed: invalid_code",
        "rejected a request to /slack/oauth_redirect: query string of",
    ]
    for cause in causes:
        assert [line for line in lines if cause in line], (cause, lines)


# -- tokens at rest ---------------------------------------------------------------------------


def test_oauth_start_up_without_a_key_warns_once_or_refuses_when_asked(
    slack, model, database_url, engine, tmp_path
):
    env = process_env(
        slack, model, database_url, SLACK_BOT_TOKEN="",
        SLACK_CLIENT_ID=slack.client_id, SLACK_CLIENT_SECRET=slack.client_secret,
    )
    proc = BotProcess(env, tmp_path)
    try:
        assert httpx.get(f"http://127.0.0.1:{proc.port}/healthz").status_code == 200
    finally:
        assert proc.stop() == 0
    warned = [line for line in proc.lines if "stored in plain text" in line]
    assert len(warned) == 1 and " WARNING " in warned[0] and "ENCRYPTION_KEY" in warned[0]

    strict = subprocess.run(
        [sys.executable, "-m", "bot", "serve"], env={**env, "REQUIRE_ENCRYPTION": "true"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert strict.returncode == 2
    assert strict.stderr.splitlines()[-1].startswith(
        "configuration error: REQUIRE_ENCRYPTION is set but ENCRYPTION_KEY is not"
    )
    assert "serving HTTP" not in strict.stderr
    assert "Traceback" not in strict.stderr

    keyed = BotProcess({**env, "ENCRYPTION_KEY": KEY, "REQUIRE_ENCRYPTION": "true"}, tmp_path)
    assert keyed.stop() == 0
    assert not [line for line in keyed.lines if "plain text" in line]


def _command(bot, team: str) -> httpx.Response:
    return bot.form({
        "token": "legacy", "team_id": team, "team_domain": "two", "channel_id": "C2",
        "channel_name": "two", "user_id": "U1", "user_name": "someone", "command": "/summarize",
        "text": "", "api_app_id": "A0001", "is_enterprise_install": "false",
        "response_url": bot.slack.response_url(), "trigger_id": "9.1700000000.abcdef",
    })


def test_a_wrong_key_answers_each_request_once_with_one_line_naming_the_workspace(
    oauth_bot, make_bot, slack, model, caplog
):
    install(oauth_bot, slack, "T0002", "xoxb-t0002")
    wrong = make_bot(
        slack_bot_token="", slack_client_id=slack.client_id,
        slack_client_secret=slack.client_secret, encryption_key=Fernet.generate_key().decode(),
    )
    slack.add_channel("C2", "two", members={"U1"})
    slack.channel_teams["C2"] = "T0002"
    parent = slack.add_thread("C2", 3, text_fn=lambda i: f"T0002 line {i}")
    caplog.set_level(logging.INFO)
    event = mention_in(wrong, slack, "T0002", "C2", parent, "summarize")
    assert event.status_code == 200 and event.text == ""  # acknowledged: Slack does not retry
    command = _command(wrong, "T0002")
    assert command.status_code == 200 and "operator has been told" in command.text
    assert "Traceback" not in command.text
    wrong.wait()
    assert model.requests == [] and slack.posts == []
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines  # one per request, nothing else
    assert all(
        line.startswith("cannot serve workspace T0002: a stored token cannot be decrypted with "
                        "ENCRYPTION_KEY") for line in lines
    )
    assert "Traceback" not in caplog.text
    # The bot with the right key still serves the workspace.
    mention_in(oauth_bot, slack, "T0002", "C2", parent, "summarize")
    assert len(model.requests) == 1


def test_doctor_reports_plain_text_tokens_and_a_key_that_cannot_read_them(
    oauth_bot, make_bot, slack, model, database_url
):
    install(oauth_bot, slack, "T0002", "xoxb-t0002")
    oauth = {"slack_bot_token": "", "slack_client_id": slack.client_id,
             "slack_client_secret": slack.client_secret}

    def doctor(**extra) -> str:
        out = io.StringIO()
        run_doctor(make_settings(slack, model, database_url, **oauth, **extra), channels=[],
                   out=out)
        return out.getvalue()

    right = doctor(encryption_key=KEY)
    assert f"{OK} tokens: encrypted at rest; ENCRYPTION_KEY reads the stored tokens of 1" in right
    wrong = doctor(encryption_key=Fernet.generate_key().decode())
    assert f"{FAIL} tokens: ENCRYPTION_KEY cannot decrypt the stored tokens of 1 workspace(s) " \
        "(T0002)" in wrong
    assert f"{FAIL} tokens: ENCRYPTION_KEY is not set, but encrypted are" in doctor()
    assert f"{FAIL} tokens: REQUIRE_ENCRYPTION is set" in doctor(require_encryption="true")
    assert "xoxb-t0002" not in right + wrong

    plain = make_bot(**oauth)  # a workspace installed while no key was set
    install(plain, slack, "T0003", "xoxb-t0003")
    mixed = doctor(encryption_key=KEY)
    assert f"{WARN} tokens: 1 workspace(s) still have tokens in plain text" in mixed
    assert "rotate-key" in mixed and "xoxb-t0003" not in mixed


def test_a_finished_job_keeps_no_request_text(bot, slack, model, engine):
    """SECURITY.md: a job holds the mention's text until it is answered, not for the two days
    its row is kept to recognise a redelivered event."""
    from sqlalchemy import select

    from bot.store.models import Job

    parent = slack.add_thread("C1", 3)
    _, resp = bot.mention("C1", "what did JOBTEXTMARK decide?", thread_ts=parent)
    assert resp.status_code == 200
    bot.wait()
    assert bot.posts_in("C1", parent)  # answered
    with engine.connect() as conn:
        rows = conn.execute(select(Job.status, Job.payload)).all()
    assert rows and all(status == "done" for status, _ in rows)
    assert all("JOBTEXTMARK" not in payload for _, payload in rows)


def test_a_failed_database_write_logs_no_message_text(bot, slack, engine, caplog):
    """SQLAlchemy puts a failed statement's parameters into the exception's text, and a job's
    parameters are the mention's text: with the database refusing writes, no log line (with its
    traceback) may carry it."""
    from sqlalchemy import text as sql

    caplog.set_level(logging.DEBUG)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sql(
                "CREATE FUNCTION refuse_jobs() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'could not extend file: No space left on device'; END $$ "
                "LANGUAGE plpgsql"
            ))
            conn.execute(sql(
                "CREATE TRIGGER refuse_jobs BEFORE INSERT ON job "
                "FOR EACH ROW EXECUTE FUNCTION refuse_jobs()"
            ))
        else:
            conn.execute(sql("CREATE TABLE gone (x INTEGER)"))
            conn.execute(sql(
                "CREATE TRIGGER refuse_jobs BEFORE INSERT ON job BEGIN "
                "INSERT INTO gone VALUES (1); END"
            ))
            conn.execute(sql("DROP TABLE gone"))  # every job insert now fails (no such table)
    parent = slack.add_thread("C1", 2)
    _, resp = bot.mention("C1", "is the DBWRITEMARK acquisition still secret?", thread_ts=parent)
    assert resp.status_code != 200 or bot.posts_in("C1", parent) == []  # nothing was queued
    lines = [caplog.handler.format(r) for r in caplog.records]
    assert any("job" in line.lower() or "database" in line.lower() for line in lines)
    assert not [line for line in lines if "DBWRITEMARK" in line or "acquisition" in line]


@pytest.mark.skipif(ON_POSTGRES, reason="PostgreSQL's files are not ours to read; see SECURITY.md")
def test_a_deleted_message_is_not_left_in_the_sqlite_file(bot, slack, database_url):
    """SECURITY.md: a deletion event removes the text — from the file too, not an hour later."""
    db = Path(str(make_url(database_url).database))
    parent = slack.add_thread("C1", 3, text_fn=lambda i: f"line {i}: DELMARK-{i} stays private")
    bot.mention("C1", "summarize", thread_ts=parent)
    bot.wait()
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    replies = [m for m in slack._channels["C1"].messages.values() if "DELMARK-1" in m["text"]]
    assert replies and b"DELMARK-1" in _raw(db)
    event = {"type": "message", "subtype": "message_deleted", "channel": "C1",
             "channel_type": "channel", "deleted_ts": replies[0]["ts"], "hidden": True,
             "previous_message": {"ts": replies[0]["ts"]}}
    slack.delete_message("C1", replies[0]["ts"])
    assert bot.event(event).status_code == 200
    assert b"DELMARK-1" not in _raw(db) + _raw(Path(f"{db}-wal"))
    assert b"DELMARK-2" in _raw(db) + _raw(Path(f"{db}-wal"))  # the rest is still kept
