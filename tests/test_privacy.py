"""What must not outlive its promise (docs/SECURITY.md): an uninstalled workspace's text on
disk, message text and secrets in logs, tokens stored without a word, an unreadable key."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

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
