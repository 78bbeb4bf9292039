"""Many workspaces: the OAuth install round trip, isolation, uninstall purge, tokens at rest."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import func, select, update
from sqlalchemy.orm import sessionmaker

from bot.installations import EncryptedInstallationStore, TokenCipher
from bot.store.models import (
    Base,
    Job,
    ThreadMessage,
    ThreadState,
    UsageRecord,
    WorkspaceSettings,
    slack_bots,
)
from bot.workspace import OPEN_ACTION
from tests.harness import ENCRYPTION_KEY as KEY
from tests.harness import SlackUI


def words(team: str, i: int) -> str:
    return f"{team} secret plan item {i}: budget numbers for the {team} launch are confidential."


def install(bot, slack, team: str, token: str, **grant) -> None:
    page = bot.http.get("/slack/install")
    assert page.status_code == 200
    state = re.search(r"state=([A-Za-z0-9_-]+)", page.text).group(1)
    code = f"code-{team}"
    slack.add_oauth_code(code, team, token, **grant)
    done = bot.http.get(
        "/slack/oauth_redirect",
        params={"code": code, "state": state},
        headers={"cookie": "; ".join(f"{k}={v}" for k, v in page.cookies.items())},
    )
    assert done.status_code == 200, done.text


def mention_in(bot, slack, team: str, channel: str, parent: str, text: str, **org):
    ts = slack.add_message(channel, f"<@UBOT> {text}", user="U1", thread_ts=parent)
    event = {
        "type": "app_mention",
        "user": "U1",
        "text": f"<@UBOT> {text}",
        "ts": ts,
        "thread_ts": parent,
        "channel": channel,
        "team": team,
        "event_ts": ts,
    }
    return bot.event(event, team_id=team, **org)


def test_install_round_trip_stores_encrypted_tokens_and_answers(oauth_bot, slack, model, engine):
    install(oauth_bot, slack, "T0002", "xoxb-team-two")
    with engine.connect() as conn:
        stored = conn.execute(select(slack_bots.c.team_id, slack_bots.c.bot_token)).all()
    assert [t for t, _ in stored] == ["T0002"]
    assert stored[0][1].startswith("enc1:") and "xoxb-team-two" not in stored[0][1]

    slack.add_channel("C2", "two-general", members={"U1", "U2"})
    slack.channel_teams["C2"] = "T0002"
    parent = slack.add_thread("C2", 5, text_fn=lambda i: words("T0002", i))
    assert mention_in(oauth_bot, slack, "T0002", "C2", parent, "summarize").status_code == 200
    posts = [p for p in slack.posts if p.get("thread_ts") == parent]
    assert len(posts) == 1 and posts[0]["_team"] == "T0002"


def test_uninstalled_workspace_gets_no_answer_and_bad_state_is_refused(oauth_bot, slack, model):
    done = oauth_bot.http.get("/slack/oauth_redirect", params={"code": "x", "state": "forged"})
    assert done.status_code in (400, 401, 403)
    slack.add_channel("C9", "nine", members={"U1"})
    parent = slack.add_thread("C9", 2)
    resp = mention_in(oauth_bot, slack, "T0404", "C9", parent, "hello?")
    assert resp.status_code in (200, 401)  # Bolt refuses unknown installations
    assert model.requests == []


def test_two_workspaces_are_isolated_and_uninstall_purges_one(oauth_bot, slack, model, engine):
    install(oauth_bot, slack, "T0002", "xoxb-team-two")
    install(oauth_bot, slack, "T0003", "xoxb-team-three")
    slack.add_channel("C2", "two", members={"U1"})
    slack.add_channel("C3", "three", members={"U1"})
    slack.channel_teams.update({"C2": "T0002", "C3": "T0003"})
    p2 = slack.add_thread("C2", 30, text_fn=lambda i: words("T0002", i))
    p3 = slack.add_thread("C3", 30, text_fn=lambda i: words("T0003", i))
    mention_in(oauth_bot, slack, "T0002", "C2", p2, "summarize T0002-ASK-MARKER")
    mention_in(oauth_bot, slack, "T0003", "C3", p3, "summarize T0003-ASK-MARKER")
    mention_in(oauth_bot, slack, "T0003", "C3", p3, "and again")
    prompts = {
        team: " ".join(
            b["text"]
            for r in model.requests
            for b in r["body"]["messages"][0]["content"]
            if team in b["text"]
        )
        for team in ("T0002", "T0003")
    }
    third = " ".join(b["text"] for b in model.requests[2]["body"]["messages"][0]["content"])
    assert "T0002" not in third and "T0003 secret plan item 5" in third  # no cross-workspace
    assert "another organisation" not in third
    assert prompts["T0002"] and prompts["T0003"]
    sessions = sessionmaker(engine)
    with sessions() as s:
        teams = dict(s.execute(select(ThreadState.team_id, ThreadState.channel_id)).all())
    assert teams == {"T0002": "C2", "T0003": "C3"}

    resp = oauth_bot.event({"type": "app_uninstalled"}, team_id="T0002")
    assert resp.status_code == 200
    oauth_bot.wait()
    with sessions() as s:
        assert (
            s.scalar(
                select(func.count())
                .select_from(ThreadMessage)
                .where(ThreadMessage.team_id == "T0002")
            )
            == 0
        )
        assert (
            s.scalar(
                select(func.count())
                .select_from(ThreadMessage)
                .where(ThreadMessage.team_id == "T0003")
            )
            > 0
        )
        assert (
            s.scalar(
                select(func.count()).select_from(UsageRecord).where(UsageRecord.team_id == "T0002")
            )
            == 1
        )  # numbers stay
        bots = s.execute(select(slack_bots.c.team_id)).scalars().all()
    assert bots == ["T0003"]
    with engine.connect() as conn:  # every table, every row: nothing of T0002's text is left
        dump = " ".join(
            str(tuple(row)) for table in Base.metadata.sorted_tables
            for row in conn.execute(select(table))
        )
    assert "T0002 secret" not in dump and "T0002-ASK-MARKER" not in dump
    assert "T0003 secret" in dump and "T0003-ASK-MARKER" in dump  # the other workspace keeps its


def test_settings_of_one_workspace_never_reach_another(oauth_bot, slack, model, engine):
    install(oauth_bot, slack, "T0002", "xoxb-team-two")
    install(oauth_bot, slack, "T0003", "xoxb-team-three")
    slack.add_user("UADM", "Ada Admin", is_admin=True, team_id="T0002")
    ui = SlackUI(oauth_bot)
    ui.home_action(OPEN_ACTION, user="UADM", team_id="T0002")
    modal = slack.modals[-1]
    assert modal["team_id"] == "T0002"  # opened with workspace two's own token
    off = {"selected_option": {"text": {"type": "plain_text", "text": "Hide"}, "value": "off"}}
    resp = ui.submit(
        modal, {"language": {"value": "Français"}, "footer": off}, user="UADM", team_id="T0002"
    )
    assert resp.status_code == 200 and resp.text == ""
    for team, channel in (("T0002", "C2"), ("T0003", "C3")):
        slack.add_channel(channel, team.lower(), members={"U1"})
        slack.channel_teams[channel] = team
        parent = slack.add_thread(channel, 4, text_fn=lambda i, t=team: words(t, i))
        mention_in(oauth_bot, slack, team, channel, parent, "summarize")
    two, three = (r["body"]["messages"][0]["content"][-1]["text"] for r in model.requests)
    assert two.endswith("(Answer in Français.)") and "Answer in" not in three
    posts = {p["_team"]: p for p in slack.posts if p.get("thread_ts")}
    assert not [b for b in posts["T0002"].get("blocks") or [] if b["type"] == "context"]
    assert [b for b in posts["T0003"]["blocks"] if b["type"] == "context"]  # footer kept

    oauth_bot.event({"type": "app_uninstalled"}, team_id="T0002")
    oauth_bot.wait()
    with sessionmaker(engine)() as s:
        assert s.execute(select(WorkspaceSettings.team_id)).scalars().all() == []


def test_events_refresh_an_expiring_token_once_through_the_locked_path(
    oauth_bot, slack, model, engine
):
    # Bolt's own authorize would rotate 2 hours ahead, unlocked; the bot's rotates 10 minutes
    # ahead under its lock. An hour left: nobody refreshes yet.
    install(oauth_bot, slack, "T0002", "xoxb-team-two", refresh_token="r-1", expires_in=3600)
    slack.add_channel("C2", "two", members={"U1"})
    slack.channel_teams["C2"] = "T0002"
    parent = slack.add_thread("C2", 3, text_fn=lambda i: words("T0002", i))
    mention_in(oauth_bot, slack, "T0002", "C2", parent, "summarize")
    refreshes = lambda: [c for c in slack.calls_to("oauth.v2.access")  # noqa: E731
                         if c.get("grant_type") == "refresh_token"]
    assert refreshes() == [] and len(model.requests) == 1
    with sessionmaker(engine).begin() as s:  # five minutes left now
        s.execute(update(slack_bots).values(
            bot_token_expires_at=datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=5)))
    mention_in(oauth_bot, slack, "T0002", "C2", parent, "and now?")
    mention_in(oauth_bot, slack, "T0002", "C2", parent, "once more")
    assert len(refreshes()) == 1 and len(model.requests) == 3
    store = EncryptedInstallationStore(slack.client_id, engine, TokenCipher(KEY))
    assert store.find_bot(enterprise_id=None, team_id="T0002").bot_token == "xoxe.xoxb-rotated-1"


def test_an_answer_in_flight_during_uninstall_leaves_nothing_behind(
    oauth_bot, slack, model, engine
):
    install(oauth_bot, slack, "T0002", "xoxb-team-two")
    slack.add_channel("C2", "two", members={"U1"})
    slack.channel_teams["C2"] = "T0002"
    parent = slack.add_thread("C2", 5, text_fn=lambda i: words("T0002", i))
    gate = threading.Event()
    model.gate = gate
    mention_in(oauth_bot, slack, "T0002", "C2", parent, "summarize INFLIGHT-ASK", wait=False)
    assert model.wait_for(lambda: model.arrived >= 1)  # the job has read and stored the thread
    oauth_bot.event({"type": "app_uninstalled"}, team_id="T0002", wait=False)
    assert oauth_bot.app.executor.wait_idle(timeout=30)  # the purge ran while the job waits
    model.gate = None
    gate.set()
    oauth_bot.wait()  # the job ends: it wrote the thread's state after the purge
    with engine.connect() as conn:
        dump = " ".join(
            str(tuple(row)) for table in Base.metadata.sorted_tables
            for row in conn.execute(select(table))
        )
        states = conn.execute(select(func.count()).select_from(ThreadState)).scalar_one()
        jobs = conn.execute(select(func.count()).select_from(Job)).scalar_one()
    # Nothing of the workspace's text, nor the request itself (the running job's payload)
    assert "T0002 secret" not in dump and "INFLIGHT-ASK" not in dump
    assert states == 0 and jobs == 0


def test_tokens_are_unreadable_without_the_key_and_keys_rotate(oauth_bot, slack, engine):
    install(oauth_bot, slack, "T0002", "xoxb-team-two")
    client_id = slack.client_id
    no_key = EncryptedInstallationStore(client_id, engine, TokenCipher(None))
    with pytest.raises(ValueError, match="ENCRYPTION_KEY"):
        no_key.find_bot(enterprise_id=None, team_id="T0002")
    wrong = EncryptedInstallationStore(
        client_id, engine, TokenCipher(Fernet.generate_key().decode())
    )
    with pytest.raises(ValueError, match="cannot be decrypted"):
        wrong.find_bot(enterprise_id=None, team_id="T0002")
    new = Fernet.generate_key().decode()
    both = EncryptedInstallationStore(client_id, engine, TokenCipher(f"{new},{KEY}"))
    assert both.find_bot(enterprise_id=None, team_id="T0002").bot_token == "xoxb-team-two"
    assert both.rotate_keys() >= 2
    only_new = EncryptedInstallationStore(client_id, engine, TokenCipher(new))
    assert only_new.find_bot(enterprise_id=None, team_id="T0002").bot_token == "xoxb-team-two"


def test_slack_connect_messages_from_other_organisations_are_not_sent(bot, slack, model):
    parent = slack.add_thread("C1", 3, text_fn=lambda i: f"our note {i}")
    slack.add_message(
        "C1",
        "EXTERNAL SECRET pricing from the partner",
        user="U2",
        thread_ts=parent,
        user_team="TPARTNER",
    )
    bot.mention("C1", "summarize", thread_ts=parent)
    text = " ".join(b["text"] for b in model.requests[0]["body"]["messages"][0]["content"])
    assert "EXTERNAL SECRET" not in text and "another organisation" in text
    assert "our note 1" in text


def test_people_of_other_organisations_are_not_answered(bot, slack, model):
    slack.add_user("UX", "Xavier Partner", team_id="TPARTNER")
    slack.add_channel("C7", "shared-with-partner", members={"U1", "UX"})
    parent = slack.add_thread("C7", 3, text_fn=lambda i: f"our note {i}")
    ts = slack.add_message("C7", "<@UBOT> summarize for me", user="UX", thread_ts=parent,
                           user_team="TPARTNER")
    bot.event({"type": "app_mention", "user": "UX", "text": "<@UBOT> summarize for me",
               "ts": ts, "thread_ts": parent, "channel": "C7", "team": "TPARTNER",
               "user_team": "TPARTNER", "source_team": "TPARTNER", "event_ts": ts})
    assert model.requests == []  # neither the thread nor their request reaches the model
    assert bot.posts_in("C7", parent) == []
    assert slack.ephemerals[-1]["user"] == "UX"
    assert "only answer people of the organisation" in slack.ephemerals[-1]["text"]
    bot.mention("C7", "summarize", thread_ts=parent)  # a member of the workspace is answered
    assert len(model.requests) == 1


def test_org_wide_install_serves_every_workspace_of_the_org(oauth_bot, slack, model, engine):
    install(oauth_bot, slack, "T0005", "xoxb-org", enterprise_id="E1", org_wide=True)
    with engine.connect() as conn:
        row = conn.execute(
            select(slack_bots.c.enterprise_id, slack_bots.c.team_id,
                   slack_bots.c.is_enterprise_install)
        ).one()
    assert tuple(row) == ("E1", None, True)
    slack.add_user("U6", "Uma Six", team_id="T0006", enterprise_id="E1")
    slack.add_user("UX", "Xavier Partner", team_id="TPARTNER", enterprise_id="E9")
    org = {"enterprise_id": "E1", "org_wide": True}
    parents = {}
    for team, channel in (("T0005", "C5"), ("T0006", "C6")):
        slack.add_channel(channel, team.lower(), members={"U1", "U6", "UX"})
        slack.channel_teams[channel] = team
        parents[team] = slack.add_thread(channel, 3, text_fn=lambda i, t=team: words(t, i))
    slack.add_message("C5", "Six says: ship on Friday", user="U6", thread_ts=parents["T0005"],
                      user_team="T0006")
    slack.add_message("C5", "PARTNER SECRET margin is 40%", user="UX",
                      thread_ts=parents["T0005"], user_team="TPARTNER")
    for team, channel in (("T0005", "C5"), ("T0006", "C6")):
        resp = mention_in(oauth_bot, slack, team, channel, parents[team], "summarize", **org)
        assert resp.status_code == 200
    answered = {p["channel"] for p in slack.posts if p.get("thread_ts") in parents.values()}
    assert answered == {"C5", "C6"}  # both workspaces, with the one org-wide token
    five = " ".join(b["text"] for b in model.requests[0]["body"]["messages"][0]["content"])
    assert "Uma Six: Six says: ship on Friday" in five  # same org, other workspace: kept
    assert "PARTNER SECRET" not in five and "another organisation" in five

    assert oauth_bot.app.team_ids() == ["T0005", "T0006"]  # the scheduled digest reaches both

    resp = oauth_bot.event({"type": "app_uninstalled"}, team_id="T0006", **org)
    assert resp.status_code == 200
    oauth_bot.wait()
    with sessionmaker(engine)() as s:
        assert s.scalar(select(func.count()).select_from(ThreadMessage)) == 0  # both workspaces
        assert s.scalar(select(func.count()).select_from(ThreadState)) == 0
        assert s.scalar(select(func.count()).select_from(slack_bots)) == 0
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 2  # numbers stay
