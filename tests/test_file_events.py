"""Files in threads (#19), what happens to them, at the wire: Slack's file_deleted and
file_change events, a deleted message, Slack Connect, the mention's own files, who may have a
file read into an answer, and what retention leaves."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from bot.housekeeping import run_housekeeping
from bot.store import data
from bot.store.models import ThreadFile, ThreadMessage
from tests.harness import SlackUI
from tests.test_files import IMAGE_TOKENS, SCREENSHOT, png, texts, thread_with, user_blocks
from tests.test_keep_events import NOW, Clock

SECOND = png(800, 600)  # another picture: other bytes
ON_POSTGRES = bool(os.environ.get("TEST_DATABASE_URL"))


def file_rows(engine) -> list[ThreadFile]:
    with sessionmaker(engine)() as s:
        return list(s.scalars(select(ThreadFile)))


def bodies(engine) -> str:
    with engine.connect() as conn:
        return "\n".join(r[0] for r in conn.execute(text("SELECT body FROM thread_message")))


def images(model, i: int) -> list[dict]:
    return [b for b in user_blocks(model, i) if b["type"] == "image"]


def file_id(slack, channel: str, ts: str) -> str:
    """The id of the first file of message `ts`, or of the first in the thread it starts."""
    return next(f["id"] for m in slack.thread(channel, ts) for f in m.get("files") or [])


@pytest.fixture
def kbot(make_bot, slack, model):
    """The bot receiving events as they happen (messages dated after it began receiving)."""
    slack.now = model.now = NOW
    return make_bot(clock=Clock())


def kept_thread(bot, slack, files: list[dict]) -> tuple[str, str]:
    """A thread whose messages arrive as events, the last one carrying `files`: (parent, its
    ts)."""
    parent = slack.post_event("C1", "the deploy fails")
    bot.deliver(parent)
    bot.deliver(slack.post_event("C1", "which step?", user="U2", thread_ts=parent["ts"]))
    shared = slack.post_event("C1", "this one", thread_ts=parent["ts"], files=files)
    bot.deliver(shared)
    return parent["ts"], shared["ts"]


# ------------------------------------------------------------------ file_deleted


def test_a_deleted_file_is_gone_from_the_next_prompt_and_its_bytes_from_the_database(
    bot, slack, model, engine
):
    parent = thread_with(slack, [{"name": "payroll-2026.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does the screenshot say?", thread_ts=parent)
    assert len(images(model, 0)) == 1 and len(file_rows(engine)) == 1
    fid = file_id(slack, "C1", parent)

    event, _ = slack.file_deleted_event(fid)
    assert set(event) == {"type", "file_id", "event_ts"}
    assert bot.event(event).status_code == 200
    assert file_rows(engine) == []  # the prepared bytes
    assert "payroll-2026" not in bodies(engine)  # the kept message shows Slack's tombstone

    bot.mention("C1", "and now?", thread_ts=parent)
    assert images(model, 1) == []
    sent = json.dumps(model.requests[1]["body"])
    assert "payroll-2026" not in sent
    line = [t for t in texts(model, 1) if "this is what I get" in t]
    assert line and "[file deleted]" in line[0]
    assert len(slack.downloads) == 1  # no attempt to read the deleted file

    assert bot.event(event).status_code == 200  # Slack delivering it again changes nothing
    assert file_rows(engine) == []


@pytest.mark.parametrize("order", ["file_deleted", "message_changed", "both", "reversed"])
def test_file_deleted_and_the_tombstone_edit_end_the_same_in_any_order(
    kbot, slack, model, engine, order
):
    parent, shared = kept_thread(kbot, slack, [{"name": "secret.png", "content": SCREENSHOT}])
    kbot.mention("C1", "what does it say?", thread_ts=parent)
    assert len(images(model, 0)) == 1 and len(file_rows(engine)) == 1
    event, edits = slack.file_deleted_event(file_id(slack, "C1", shared))
    assert len(edits) == 1 and edits[0]["message"]["files"] == [
        {"id": event["file_id"], "mode": "tombstone"}
    ]
    sequence = {
        "file_deleted": [event],
        "message_changed": edits,
        "both": [event, *edits],
        "reversed": [*edits, event],
    }[order]
    for e in sequence:
        assert kbot.deliver(e).status_code == 200
    assert file_rows(engine) == []
    assert "secret.png" not in bodies(engine)
    reads = len(slack.calls_to("conversations.replies"))
    kbot.mention("C1", "and now?", thread_ts=parent)
    assert len(slack.calls_to("conversations.replies")) == reads  # answered from what is kept
    assert images(model, 1) == []
    assert "secret.png" not in json.dumps(model.requests[1]["body"])
    assert any("this one\n[file deleted]" in t for t in texts(model, 1))
    assert len(slack.downloads) == 1


def test_a_deleted_file_leaves_threads_nobody_asked_about_too(kbot, slack, model, engine):
    """Before the ack only the threads that held its prepared bytes change; a job then finds
    every other kept message that showed it."""
    parent, _ = kept_thread(kbot, slack, [{"name": "never-asked.png", "content": SCREENSHOT}])
    kbot.deliver(slack.post_event("C1", "another picture", user="U2",
                                  files=[{"name": "other.png", "content": SECOND}]))
    assert "never-asked.png" in bodies(engine) and file_rows(engine) == []
    event, _ = slack.file_deleted_event(file_id(slack, "C1", parent))
    assert kbot.event(event).status_code == 200
    assert "never-asked.png" not in bodies(engine)
    assert "other.png" in bodies(engine)  # only the deleted file


@pytest.mark.skipif(ON_POSTGRES, reason="PostgreSQL's files are not ours to read; see SECURITY.md")
def test_a_deleted_files_contents_and_name_are_not_left_in_the_sqlite_file(
    bot, slack, model, database_url
):
    db = Path(str(make_url(database_url).database))
    parent = thread_with(slack, [{"name": "NAMEMARK-q7.txt", "content": b"FILEMARK-9d2c secret",
                                  "mode": "snippet", "filetype": "text"}])
    bot.mention("C1", "what is in the snippet?", thread_ts=parent)
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = db.read_bytes()
    assert b"FILEMARK-9d2c" in raw and b"NAMEMARK-q7" in raw  # the search below can see them
    event, _ = slack.file_deleted_event(file_id(slack, "C1", parent))
    assert bot.event(event).status_code == 200
    wal = Path(f"{db}-wal")
    on_disk = db.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert b"FILEMARK-9d2c" not in on_disk and b"NAMEMARK-q7" not in on_disk


def test_a_file_shared_in_two_conversations_is_kept_for_each_and_deleted_from_both(
    bot, slack, model, engine
):
    slack.add_channel("C2", "random", members={"U1", "U2"})
    shared = {"id": "FSHARED1", "name": "plan.png", "content": SCREENSHOT}
    one = thread_with(slack, [shared])
    two = slack.add_thread("C2", 1)
    slack.add_message("C2", "the same plan, shared here", thread_ts=two, files=[shared])
    bot.mention("C1", "what does it say?", thread_ts=one)
    bot.mention("C2", "what does it say?", thread_ts=two)
    assert slack.downloads == ["FSHARED1", "FSHARED1"]  # one copy per conversation
    assert sorted(r.channel_id for r in file_rows(engine)) == ["C1", "C2"]
    event, _ = slack.file_deleted_event("FSHARED1")
    assert bot.event(event).status_code == 200
    assert file_rows(engine) == [] and "plan.png" not in bodies(engine)


def test_a_file_deleted_without_an_event_is_named_not_fatal(kbot, slack, model, engine):
    """Slack sends no file_deleted when its file retention policy removes a file: the kept
    message still shows it, the download answers 404 (the fake's choice: Slack's documentation
    does not say), and the file is named with the reason, in the transcript and under the
    answer."""
    parent, _ = kept_thread(kbot, slack, [{"name": "expired.png", "content": SCREENSHOT}])
    fid = file_id(slack, "C1", parent)
    url = next(f for m in slack.thread("C1", parent) for f in m.get("files") or [])
    url = url["url_private_download"]
    slack.delete_file(fid)  # and no event reaches the bot
    assert httpx.get(url, headers={"Authorization": "Bearer xoxb-test"}).status_code == 404
    kbot.mention("C1", "what is in the thread?", thread_ts=parent)
    assert images(model, 0) == [] and slack.downloads == []
    assert any("expired.png could not be read: Slack answered HTTP 404" in t
               for t in texts(model, 0))
    answer = json.dumps(kbot.posts_in("C1", parent)[-1])
    assert "expired.png (Slack answered HTTP 404)" in answer
    assert file_rows(engine) == []


def test_a_thread_read_after_a_deletion_shows_the_tombstone(bot, slack, model):
    parent = thread_with(slack, [{"name": "gone.png", "content": SCREENSHOT}])
    slack.delete_file(file_id(slack, "C1", parent))
    bot.mention("C1", "what is in the thread?", thread_ts=parent)
    assert images(model, 0) == [] and slack.downloads == []
    assert any("this is what I get\n[file deleted]" in t for t in texts(model, 0))
    assert "gone.png" not in json.dumps(model.requests[0]["body"])


def test_a_deleted_message_takes_its_files_bytes(kbot, slack, model, engine):
    parent, shared = kept_thread(kbot, slack, [{"name": "a.png", "content": SCREENSHOT}])
    kbot.mention("C1", "what does it say?", thread_ts=parent)
    assert len(file_rows(engine)) == 1
    assert kbot.deliver(slack.delete_event("C1", shared)).status_code == 200
    assert file_rows(engine) == []


def test_a_failed_purge_is_not_acknowledged(bot, slack, model, engine):
    parent = thread_with(slack, [{"name": "a.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does it say?", thread_ts=parent)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(
                "CREATE FUNCTION refuse_purge() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql"
            ))
            conn.execute(text(
                "CREATE TRIGGER refuse_purge BEFORE DELETE ON thread_file "
                "FOR EACH ROW EXECUTE FUNCTION refuse_purge()"
            ))
        else:
            conn.execute(text("CREATE TABLE gone (x INTEGER)"))
            conn.execute(text(
                "CREATE TRIGGER refuse_purge BEFORE DELETE ON thread_file BEGIN "
                "INSERT INTO gone VALUES (1); END"
            ))
            conn.execute(text("DROP TABLE gone"))
    event, _ = slack.file_deleted_event(file_id(slack, "C1", parent))
    assert bot.event(event).status_code >= 500  # Slack delivers it again
    assert len(file_rows(engine)) == 1
    assert "a.png" in bodies(engine)  # nothing half-done: the message is unchanged too


# ------------------------------------------------------------------ file_change


def test_a_changed_file_is_downloaded_again_once(bot, slack, model, engine):
    parent = thread_with(
        slack,
        [{"name": "config.yaml", "content": b"replicas: 2\n", "mode": "snippet",
          "filetype": "yaml"}],
    )
    bot.mention("C1", "how many replicas?", thread_ts=parent)
    assert any("replicas: 2" in t for t in texts(model, 0))
    fid = file_id(slack, "C1", parent)

    event = slack.file_change_event(fid, b"replicas: 5\n")
    assert event == {"type": "file_change", "file_id": fid, "file": {"id": fid}}
    assert bot.event(event).status_code == 200
    assert file_rows(engine) == []
    bot.mention("C1", "and now?", thread_ts=parent)
    assert any("replicas: 5" in t for t in texts(model, 1))
    assert not any("replicas: 2" in t for t in texts(model, 1))
    assert slack.downloads == [fid, fid]
    bot.mention("C1", "sure?", thread_ts=parent)
    assert any("replicas: 5" in t for t in texts(model, 2))
    assert slack.downloads == [fid, fid]  # once per version
    assert slack.calls_to("files.info") == []  # nothing else read


def test_a_change_of_a_file_no_thread_holds_changes_nothing(bot, slack, engine):
    parent = thread_with(slack, [{"name": "a.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does it say?", thread_ts=parent)
    assert bot.event({"type": "file_change", "file_id": "F99999999",
                      "file": {"id": "F99999999"}}).status_code == 200
    assert len(file_rows(engine)) == 1
    assert bot.event({"type": "file_deleted", "file_id": "not an id"}).status_code == 200
    assert len(file_rows(engine)) == 1


def test_file_events_of_another_workspace_leave_this_ones_files(bot, slack, engine):
    parent = thread_with(slack, [{"name": "a.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does it say?", thread_ts=parent)
    fid = file_id(slack, "C1", parent)
    event = {"type": "file_deleted", "file_id": fid, "event_ts": "1700000000.000100"}
    assert bot.event(event, team_id="T0OTHER").status_code == 200
    assert len(file_rows(engine)) == 1


# ------------------------------------------------------------------ Slack Connect


def test_another_organisations_file_read_from_slack_is_never_downloaded(bot, slack, model):
    slack.add_user("UEXT", "Eve External", "eve")
    parent = slack.add_thread("C1", 1)
    slack.add_message("C1", "our logs", user="UEXT", user_team="TOTHER", thread_ts=parent,
                      files=[{"name": "their.png", "content": SCREENSHOT}])
    slack.add_message("C1", "their spec, shared here", user="U2", thread_ts=parent,
                      files=[{"name": "spec.png", "content": SCREENSHOT, "mode": "file_access",
                              "file_access": "check_file_info"}])
    bot.mention("C1", "what do their files say?", thread_ts=parent)
    assert slack.downloads == []  # at the wire: no request for either file
    assert images(model, 0) == []
    sent = json.dumps(model.requests[0]["body"])
    assert "their.png" not in sent and "our logs" not in sent  # the placeholder only


def test_another_organisations_file_kept_from_an_event_is_never_downloaded(
    kbot, slack, model, engine
):
    parent = slack.post_event("C1", "the deploy fails")
    kbot.deliver(parent)
    kbot.deliver(slack.post_event("C1", "our logs", user="UEXT", user_team="TOTHER",
                                  thread_ts=parent["ts"],
                                  files=[{"name": "their.png", "content": SCREENSHOT}]))
    assert "their.png" not in bodies(engine)  # kept as a stub
    reads = len(slack.calls_to("conversations.replies"))
    kbot.mention("C1", "what do their files say?", thread_ts=parent["ts"])
    assert len(slack.calls_to("conversations.replies")) == reads
    assert slack.downloads == [] and images(model, 0) == []
    assert "their.png" not in json.dumps(model.requests[0]["body"])


# ------------------------------------------------------------------ the mention's own files


def test_a_file_on_the_mention_read_from_slack_is_sent(bot, slack, model):
    parent = slack.add_thread("C1", 2)
    bot.mention("C1", "what does this screenshot say?", thread_ts=parent,
                files=[{"name": "error.png", "content": SCREENSHOT}])
    blocks = user_blocks(model, 0)
    (i,) = [n for n, b in enumerate(blocks) if b["type"] == "image"]
    assert "what does this screenshot say?" in blocks[i - 1]["text"]
    assert "[file: error.png (PNG)]" in blocks[i - 1]["text"]
    assert len(slack.downloads) == 1
    bot.mention("C1", "and what should I do?", thread_ts=parent)
    assert len(slack.downloads) == 1  # kept for the follow-up
    assert [b["source"] for b in images(model, 1)] == [blocks[i]["source"]]
    assert model.usages[1]["cache_read_input_tokens"] >= IMAGE_TOKENS  # the image from cache


def test_a_file_on_the_mention_kept_from_its_event_is_sent(kbot, slack, model):
    parent = slack.post_event("C1", "the deploy fails")
    kbot.deliver(parent)
    message = slack.post_event("C1", "<@UBOT> what does this screenshot say?",
                               thread_ts=parent["ts"],
                               files=[{"name": "error.png", "content": SCREENSHOT}])
    kbot.deliver(message)
    mention = slack.app_mention_event("C1", message["ts"])
    assert mention["files"] and mention["upload"] is False and "subtype" not in mention
    reads = len(slack.calls_to("conversations.replies"))
    kbot.deliver(mention)
    assert len(slack.calls_to("conversations.replies")) == reads  # the thread as kept
    assert len(images(model, 0)) == 1 and len(slack.downloads) == 1


def test_a_file_on_the_mention_before_its_message_event_is_kept_is_sent(kbot, slack, model):
    """app_mention and the message event are separate deliveries: the mention may be answered
    before the message is kept; its files come from the app_mention event itself."""
    parent = slack.post_event("C1", "the deploy fails")
    kbot.deliver(parent)
    ts = slack.add_message("C1", "<@UBOT> what does this screenshot say?", thread_ts=parent["ts"],
                           files=[{"name": "error.png", "content": SCREENSHOT}])
    reads = len(slack.calls_to("conversations.replies"))
    kbot.deliver(slack.app_mention_event("C1", ts))
    assert len(slack.calls_to("conversations.replies")) == reads
    assert len(images(model, 0)) == 1 and len(slack.downloads) == 1


# ------------------------------------------------------------------ who may have it read


def test_a_private_channels_file_is_read_only_for_its_members(make_bot, slack, model, engine):
    slack.now = NOW - 5 * 3600
    ui = SlackUI(make_bot(clock=lambda: NOW))
    slack.add_channel("G9", "acquisition", is_private=True, members={"U1", "U2"})
    parent = slack.add_thread("G9", 1, users=["U2"])
    slack.add_message("G9", "the term sheet", user="U2", thread_ts=parent,
                      files=[{"name": "terms.png", "content": SCREENSHOT}])
    link = f"https://acme.slack.com/archives/G9/p{parent.replace('.', '')}"
    ui.command(link, user="U1")  # a member: the summary reads the picture
    assert len(images(model, 0)) == 1 and len(slack.downloads) == 1 and len(file_rows(engine))
    requests = len(model.requests)
    _, url = ui.command(link, user="U3")  # not a member: refused, nothing read or sent
    assert "can't summarize that link" in ui.responses(url)[-1]["text"]
    assert len(model.requests) == requests and len(slack.downloads) == 1


def test_a_private_channels_file_is_not_read_for_a_dm_thread_link_of_a_non_member(
    make_bot, slack, model
):
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    bot.app.start_receiving()
    slack.add_channel("G9", "acquisition", is_private=True, members={"U2"})
    parent = slack.add_thread("G9", 1, users=["U2"])
    slack.add_message("G9", "the term sheet", user="U2", thread_ts=parent,
                      files=[{"name": "terms.png", "content": SCREENSHOT}])
    link = f"https://acme.slack.com/archives/G9/p{parent.replace('.', '')}"
    event = slack.dm_event("U1", f"summarize <{link}>")
    bot.deliver(event)
    assert model.requests == [] and slack.downloads == []
    said = [p["text"] for p in slack.posts if p.get("thread_ts") == event["ts"]]
    assert len(said) == 1 and "can't summarize that link" in said[0]  # naming nothing
    assert "acquisition" not in said[0] and "terms" not in said[0]


def test_another_organisations_mention_with_a_file_reads_nothing(bot, slack, model):
    slack.add_user("UEXT", "Eve External", "eve")
    parent = slack.add_thread("C1", 1)
    ts = slack.add_message("C1", "<@UBOT> what is this?", user="UEXT", user_team="TOTHER",
                           thread_ts=parent, files=[{"name": "their.png", "content": SCREENSHOT}])
    bot.event(slack.app_mention_event("C1", ts))
    assert model.requests == [] and slack.downloads == []


def test_the_bot_leaving_a_channel_forgets_its_files(kbot, slack, model, engine):
    parent, _ = kept_thread(kbot, slack, [{"name": "a.png", "content": SCREENSHOT}])
    kbot.mention("C1", "what does it say?", thread_ts=parent)
    assert len(file_rows(engine)) == 1
    assert kbot.deliver(slack.bot_left_event("C1")).status_code == 200
    assert file_rows(engine) == []


# ------------------------------------------------------------------ retention


def test_housekeeping_purges_file_bytes_past_the_retention(bot, slack, model, engine):
    idle = thread_with(slack, [{"name": "old.png", "content": SCREENSHOT}])
    bot.mention("C1", "what does it say?", thread_ts=idle)
    asked = slack.add_thread("C1", 1)
    slack.add_message("C1", "again", thread_ts=asked, files=[{"name": "b.png", "content": SECOND}])
    bot.mention("C1", "and this?", thread_ts=asked)
    orphan = slack.add_thread("C1", 1)
    slack.add_message("C1", "lone", thread_ts=orphan, files=[{"name": "c.png", "content": SECOND}])
    bot.mention("C1", "and this one?", thread_ts=orphan)
    assert len(file_rows(engine)) == 3
    days = bot.app.settings.message_retention_days
    now = datetime.now(UTC) + timedelta(days=days, hours=1)
    with sessionmaker(engine).begin() as s:
        # the asked thread had a request within the retention; the orphan lost its text
        data.get_or_create_thread(s, "T0001", "C1", asked).last_request_at = now - timedelta(days=1)
        s.execute(ThreadMessage.__table__.delete().where(ThreadMessage.thread_ts == orphan))
        s.execute(ThreadMessage.__table__.update().where(ThreadMessage.thread_ts == asked)
                  .values(updated_at=now - timedelta(days=1)))
    run_housekeeping(sessionmaker(engine), bot.app.settings, now)
    assert [r.thread_ts for r in file_rows(engine)] == [asked]
    with sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).select_from(ThreadFile)) == 1
