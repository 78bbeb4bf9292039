"""What must not outlive its promise (docs/SECURITY.md): an uninstalled workspace's text on
disk, message text and secrets in logs, tokens stored without a word, an unreadable key."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.harness import mention_envelope
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
