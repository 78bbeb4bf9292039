"""Transcripts kept from events, at the wire: message events stored before the ack, Slack Connect
stubs, the bot's own messages, membership, keeping turned off, uninstall, retention."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import sessionmaker

from bot.coverage import CHANNEL, add_span, ts_time
from bot.housekeeping import run_housekeeping
from bot.listeners.messages import NEW, MessageEvent
from bot.store import data
from bot.store.models import (
    ConversationState,
    Job,
    KeptSpan,
    ReadBudget,
    ThreadMessage,
    ThreadState,
)
from bot.threads import NameResolver, external_stub, render_thread
from bot.transcript import EXTERNAL_NOTE, Renderer
from tests.harness import SlackUI

NOW = 1_800_000_000.0
TEAM = "T0001"


class Clock:
    def __init__(self, start: float = NOW) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def kbot(make_bot, clock, slack, model):
    slack.now = NOW
    model.now = NOW
    return make_bot(clock=clock)


def ts(n: int) -> str:
    return f"{int(NOW) - 600 + n}.{n:06d}"


def message(
    channel: str, when: str, body: str, *, kind: str = "channel", user: str | None = "U1",
    thread: str | None = None, **extra: Any,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "message", "channel": channel, "channel_type": kind, "text": body,
        "ts": when, "event_ts": when, "team": TEAM, **extra,
    }
    if user:
        event["user"] = user
    if thread:
        event["thread_ts"] = thread
    return event


def rows(engine, channel: str | None = None) -> dict[str, dict[str, Any]]:
    with sessionmaker(engine)() as s:
        query = select(ThreadMessage)
        if channel:
            query = query.where(ThreadMessage.channel_id == channel)
        return {r.ts: {**json.loads(r.body), "_thread": r.thread_ts} for r in s.scalars(query)}


def raw_bodies(engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT body FROM thread_message"))]


def state(engine, channel: str) -> ConversationState | None:
    with sessionmaker(engine)() as s:
        return s.get(ConversationState, (TEAM, channel))


def count(engine, model_cls: Any) -> int:
    with sessionmaker(engine)() as s:
        return s.scalar(select(func.count()).select_from(model_cls)) or 0


def a_thread(bot, channel: str = "C1", kind: str = "channel") -> str:
    """A parent, a reply, another bot's reply and a file shared in the thread, as events."""
    parent = ts(1)
    for event in (
        message(channel, parent, "Parent: ship the release on Friday?", kind=kind),
        message(channel, ts(2), "Reply: QA signs off Thursday", kind=kind, user="U2",
                thread=parent),
        message(channel, ts(3), "Build 412 passed", kind=kind, user=None, thread=parent,
                subtype="bot_message", bot_id="BCI", username="ci-bot"),
        message(channel, ts(4), "the checklist", kind=kind, thread=parent, subtype="file_share",
                files=[{"id": "F1", "name": "checklist.pdf", "filetype": "pdf"}]),
    ):
        assert bot.event(event).status_code == 200
    return parent


def test_a_thread_arriving_as_events_is_stored(kbot, engine):
    parent = a_thread(kbot)
    joined = message("C1", ts(5), "<@U3> has joined the channel", user="U3",
                     subtype="channel_join")
    assert kbot.event(joined).status_code == 200
    with sessionmaker(engine)() as s:
        stored = {m["ts"]: m for m in data.load_messages(s, TEAM, "C1", parent)}
    assert sorted(stored) == [ts(1), ts(2), ts(3), ts(4)]  # the join is not content
    assert stored[ts(2)]["text"] == "Reply: QA signs off Thursday"
    assert stored[ts(3)]["subtype"] == "bot_message" and stored[ts(3)]["username"] == "ci-bot"
    assert stored[ts(4)]["files"] == [{"id": "F1", "name": "checklist.pdf", "filetype": "pdf"}]
    kept = state(engine, "C1")
    assert kept is not None and kept.kind == "channel"
    assert data.as_utc(kept.member_since) == ts_time(parent)  # the first kept message


def test_direct_messages_and_private_channels_are_kept(kbot, engine):
    a_thread(kbot, "D42", "im")
    a_thread(kbot, "G7", "group")
    assert len(rows(engine, "D42")) == 4 and len(rows(engine, "G7")) == 4
    assert state(engine, "D42").kind == "im" and state(engine, "G7").kind == "group"


def test_edits_and_deletions_by_event(kbot, engine):
    parent = a_thread(kbot)
    edit = {
        "type": "message", "subtype": "message_changed", "channel": "C1",
        "channel_type": "channel", "hidden": True, "ts": ts(20), "event_ts": ts(20),
        "message": {"type": "message", "user": "U2", "text": "Reply: QA signs off Wednesday",
                    "ts": ts(2), "thread_ts": parent},
    }
    assert kbot.event(edit).status_code == 200
    # An edit of a message whose own event was missed: the conversation is kept, so it is stored.
    missed = {**edit, "ts": ts(21), "message": {"type": "message", "user": "U3",
                                                "text": "late but kept", "ts": ts(6),
                                                "thread_ts": parent}}
    assert kbot.event(missed).status_code == 200
    gone = {"type": "message", "subtype": "message_deleted", "channel": "C1",
            "channel_type": "channel", "hidden": True, "ts": ts(22), "event_ts": ts(22),
            "deleted_ts": ts(3)}
    assert kbot.event(gone).status_code == 200
    stored = rows(engine, "C1")
    assert stored[ts(2)]["text"] == "Reply: QA signs off Wednesday"
    assert stored[ts(6)]["text"] == "late but kept" and stored[ts(6)]["_thread"] == parent
    assert ts(3) not in stored
    # An edit in a conversation that is not kept stores nothing.
    other = {**edit, "channel": "C9", "message": {**edit["message"], "ts": ts(7)}}
    assert kbot.event(other).status_code == 200
    assert rows(engine, "C9") == {}


def test_another_organisations_message_is_stored_as_a_stub(kbot, engine):
    parent = a_thread(kbot)
    foreign = message("C1", ts(8), "SECRETPARTNERTEXT our price is 42", user="UEXT",
                      thread=parent, user_team="TOTHER", team="TOTHER",
                      files=[{"name": "SECRETFILE.pdf"}])
    assert kbot.event(foreign).status_code == 200
    stub = rows(engine, "C1")[ts(8)]
    assert stub == {"ts": ts(8), "thread_ts": parent, "team": "TOTHER", "user_team": "TOTHER",
                    "external": True, "_thread": parent}
    assert not [b for b in raw_bodies(engine) if "SECRET" in b or "UEXT" in b]


def test_grid_authors_of_the_same_org_are_kept_and_uncertain_ones_are_stubs(kbot, slack, engine):
    slack.add_user("WSAME", "Sam Same", enterprise_id="E1", team_id="T0002")
    parent = ts(1)
    for event in (
        message("C1", parent, "parent", user="U1"),
        message("C1", ts(2), "same org, other workspace", user="WSAME", thread=parent,
                user_team="T0002"),
        message("C1", ts(3), "UNKNOWNTEXT", user="WGONE", thread=parent, user_team="T0003"),
    ):
        assert kbot.event(event, enterprise_id="E1").status_code == 200
    stored = rows(engine, "C1")
    assert stored[ts(2)]["text"] == "same org, other workspace"
    assert stored[ts(3)].get("external") is True and "text" not in stored[ts(3)]  # lookup failed


def test_a_stub_renders_as_the_placeholder(slack, engine):
    stub = external_stub({"ts": ts(8), "thread_ts": ts(1), "user_team": "T0001", "text": "x"})
    assert "text" not in stub
    turns = Renderer(names={}, is_external=lambda m: False, bot_user_id="UBOT",
                     bot_id="BBOT").render([stub])
    assert turns[0].text.endswith(EXTERNAL_NOTE)
    names = NameResolver(lambda: None, sessionmaker(engine), TEAM)  # a stub needs no lookup
    turns = render_thread([stub], names, bot_user_id="UBOT", bot_id="BBOT", team_id=TEAM)
    assert turns[0].text.endswith(EXTERNAL_NOTE)


def test_the_bots_answer_is_kept_and_its_own_events_trigger_nothing(kbot, slack, model, engine):
    # The thread exists in Slack and arrived as events.
    parent = slack.add_message("C1", "Parent: which region fails over first?", user="U1")
    kbot.event(message("C1", parent, "Parent: which region fails over first?"))
    model.reply = "EU-West fails over first; ANSWERMARK."
    mention_ts, _ = kbot.mention("C1", "which region?", thread_ts=parent)
    kbot.event(message("C1", mention_ts, "<@UBOT> which region?", thread=parent))
    answer = [p for p in slack.posts if p.get("thread_ts") == parent][-1]
    stored = rows(engine, "C1")[answer["ts"]]
    assert "ANSWERMARK" in stored["text"] and stored["user"] == "UBOT" and stored["final"]
    # Its own message events: stored (the final text stays), reacted to by nobody.
    reached: list[MessageEvent] = []
    kbot.app.messages.on(NEW, reached.append)
    jobs = count(engine, Job)
    own = message("C1", answer["ts"], "EU-West fa", user="UBOT", thread=parent, bot_id="BBOT")
    assert kbot.event(own).status_code == 200
    stale = {"type": "message", "subtype": "message_changed", "channel": "C1",
             "channel_type": "channel", "hidden": True, "ts": ts(30), "event_ts": ts(30),
             "message": {**own, "text": "EU-West fails"}}
    assert kbot.event(stale).status_code == 200
    self_mention = {"type": "app_mention", "user": "UBOT", "bot_id": "BBOT", "channel": "C1",
                    "text": "<@UBOT> hi", "ts": answer["ts"], "thread_ts": parent,
                    "event_ts": answer["ts"]}
    assert kbot.event(self_mention).status_code == 200
    assert reached == [] and count(engine, Job) == jobs
    assert "ANSWERMARK" in rows(engine, "C1")[answer["ts"]]["text"]
    # The next answer's transcript holds it from the store, though Slack no longer has it.
    slack.delete_message("C1", answer["ts"])
    model.reply = "Then US-East."
    kbot.mention("C1", "and then?", thread_ts=parent)
    assert "ANSWERMARK" in json.dumps(model.requests[-1]["body"]["messages"])


def test_keeping_turned_off_by_an_admin_deletes_and_stops(kbot, slack, engine):
    slack.add_user("UADM", "Ada Admin", is_admin=True)
    a_thread(kbot)
    with sessionmaker(engine).begin() as s:
        add_span(s, TEAM, "C1", CHANNEL, (ts_time(ts(1)), ts_time(ts(9))))
    ui = SlackUI(kbot)
    assert ui.home_action("open_workspace_settings", user="UADM").status_code == 200
    modal = slack.modals[-1]
    off = {"selected_option": {"text": {"type": "plain_text", "text": "Off"}, "value": "off"}}
    assert ui.submit(modal, {"keep_transcripts": off}, user="UADM").status_code == 200
    assert count(engine, ThreadMessage) == 0
    assert count(engine, KeptSpan) == 0 and count(engine, ConversationState) == 0
    a_thread(kbot, "C2")
    assert count(engine, ThreadMessage) == 0 and count(engine, ConversationState) == 0


def test_the_bot_leaving_forgets_the_conversation(kbot, engine):
    a_thread(kbot, "C1")
    a_thread(kbot, "G7", "group")
    a_thread(kbot, "C2")
    with sessionmaker(engine).begin() as s:
        add_span(s, TEAM, "C1", CHANNEL, (ts_time(ts(1)), ts_time(ts(9))))
    assert kbot.event({"type": "channel_left", "channel": "C1", "actor_id": "U1",
                       "event_ts": ts(40)}).status_code == 200
    assert kbot.event({"type": "member_left_channel", "user": "UBOT", "channel": "G7",
                       "channel_type": "G", "team": TEAM, "event_ts": ts(41)}).status_code == 200
    # Someone else leaving changes nothing.
    assert kbot.event({"type": "member_left_channel", "user": "U2", "channel": "C2",
                       "channel_type": "C", "team": TEAM, "event_ts": ts(42)}).status_code == 200
    assert rows(engine, "C1") == {} and rows(engine, "G7") == {} and len(rows(engine, "C2")) == 4
    assert state(engine, "C1") is None and state(engine, "G7") is None
    assert count(engine, KeptSpan) == 0


def test_joining_starts_keeping_and_queues_a_backfill(kbot, engine):
    joined = {"type": "member_joined_channel", "user": "UBOT", "channel": "C5",
              "channel_type": "C", "team": TEAM, "event_ts": ts(50)}
    assert kbot.event(joined, event_id="EvJOIN1").status_code == 200
    assert kbot.event(joined, event_id="EvJOIN1").status_code == 200  # a redelivery
    assert data.as_utc(state(engine, "C5").member_since) == ts_time(ts(50))
    with sessionmaker(engine)() as s:
        jobs = s.scalars(select(Job).where(Job.kind == "backfill")).all()
    # Queued once (its handler is not registered yet: the job fails, nothing else breaks).
    assert [(j.lane, j.dedupe_key) for j in jobs] == [(f"{TEAM}:C5:backfill", "event:EvJOIN1")]
    # A re-join after leaving starts anew.
    kbot.event({"type": "channel_left", "channel": "C5", "event_ts": ts(51)})
    kbot.event({**joined, "event_ts": ts(52)}, event_id="EvJOIN2")
    assert data.as_utc(state(engine, "C5").member_since) == ts_time(ts(52))
    # Someone else joining is not the bot's join.
    kbot.event({**joined, "user": "U2", "channel": "C6"}, event_id="EvJOIN3")
    assert state(engine, "C6") is None


def test_no_backfill_when_the_operator_turned_it_off(make_bot, clock, engine):
    bot = make_bot(clock=clock, backfill_on_join="false")
    joined = {"type": "member_joined_channel", "user": "UBOT", "channel": "C5",
              "channel_type": "C", "team": TEAM, "event_ts": ts(50)}
    assert bot.event(joined).status_code == 200
    assert state(engine, "C5") is not None
    with sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).where(Job.kind == "backfill")) == 0


def test_uninstall_leaves_nothing_kept(kbot, engine):
    a_thread(kbot)
    with sessionmaker(engine).begin() as s:
        add_span(s, TEAM, "C1", CHANNEL, (ts_time(ts(1)), ts_time(ts(9))))
        s.add(ReadBudget(team_id=TEAM, method="conversations.replies", tier="limited"))
    assert kbot.event({"type": "app_uninstalled"}).status_code == 200
    for model_cls in (ThreadMessage, ConversationState, KeptSpan, ReadBudget):
        assert count(engine, model_cls) == 0, model_cls


def test_a_failed_write_is_not_acknowledged(kbot, engine):
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(
                "CREATE FUNCTION refuse_messages() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'disk full'; END $$ LANGUAGE plpgsql"
            ))
            conn.execute(text(
                "CREATE TRIGGER refuse_messages BEFORE INSERT ON thread_message "
                "FOR EACH ROW EXECUTE FUNCTION refuse_messages()"
            ))
        else:
            conn.execute(text("CREATE TABLE gone (x INTEGER)"))
            conn.execute(text(
                "CREATE TRIGGER refuse_messages BEFORE INSERT ON thread_message BEGIN "
                "INSERT INTO gone VALUES (1); END"
            ))
            conn.execute(text("DROP TABLE gone"))
    resp = kbot.event(message("C1", ts(1), "this must not be acked and lost"))
    assert resp.status_code >= 500  # Slack delivers it again
    assert count(engine, ThreadMessage) == 0


def test_retention_drops_idle_kept_threads_and_keeps_asked_ones(kbot, slack, engine, clock):
    idle = a_thread(kbot, "C1")
    slack.add_channel("C2", "random", members={"U1", "U2"})
    asked = slack.add_message("C2", "Parent: asked about", user="U1")
    kbot.event(message("C2", asked, "Parent: asked about"))
    with sessionmaker(engine).begin() as s:
        add_span(s, TEAM, "C1", CHANNEL, (ts_time(ts(1)), ts_time(ts(9))))
        add_span(s, TEAM, "C1", idle, (ts_time(ts(1)), ts_time(ts(9))))
        data.get_or_create_thread(s, TEAM, "C1", idle).full_read_at = datetime.now(UTC)
    clock.now += 31 * 86400
    slack.now = clock.now
    kbot.mention("C2", "what was asked?", thread_ts=asked)
    later = datetime.fromtimestamp(clock.now + 3600, UTC)
    run_housekeeping(sessionmaker(engine), kbot.app.settings, later)
    assert rows(engine, "C1") == {}
    assert asked in rows(engine, "C2")  # asked about within the retention
    cutoff = later - timedelta(days=kbot.app.settings.message_retention_days)
    assert data.as_utc(state(engine, "C1").purged_before) == cutoff
    assert state(engine, "C2").purged_before is None
    with sessionmaker(engine)() as s:
        thread = data.get_thread(s, TEAM, "C1", idle)
        assert data.as_utc(thread.floor_at) == later and thread.full_read_at is None
        assert s.scalar(select(func.count()).select_from(ThreadState)) == 2
    with sessionmaker(engine)() as s:  # C1's windows went with its messages (C2's stay)
        assert s.scalar(
            select(func.count()).select_from(KeptSpan).where(KeptSpan.channel_id == "C1")
        ) == 0


def test_housekeeping_forgets_receivers_long_gone(engine, tmp_path):
    from bot.config import load_settings
    from bot.store.models import EventReceiver

    settings = load_settings(
        {"SLACK_BOT_TOKEN": "xoxb-x", "SLACK_SIGNING_SECRET": "s", "ANTHROPIC_API_KEY": "k"},
        env_file=None,
    )
    now = datetime(2026, 6, 1, tzinfo=UTC)
    with sessionmaker(engine).begin() as s:
        for days in (70, 10):
            at = now - timedelta(days=days)
            s.add(EventReceiver(host="h:1", started_at=at, seen_at=at + timedelta(hours=1)))
    run_housekeeping(sessionmaker(engine), settings, now)
    with sessionmaker(engine)() as s:
        left = s.scalars(select(EventReceiver.seen_at)).all()
    assert len(left) == 1  # the one seen 10 days ago stays (retention 30 days, kept twice that)
