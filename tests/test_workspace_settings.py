"""Per-workspace settings: admins edit them from App Home; the next request runs with them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.store.models import UsageRecord, WorkspaceSettings
from bot.workspace import OPEN_ACTION
from tests.harness import SlackUI

NOW = 1_800_000_000.0


def words(i: int) -> str:
    return f"Line {i}: the quarterly roadmap review moved to Tuesday; Erin owns the deck."


@pytest.fixture
def ui(make_bot, slack):
    slack.now = NOW - 3600
    slack.add_user("UADM", "Ada Admin", is_admin=True)
    slack.add_user("UOWN", "Olga Owner", is_owner=True)
    slack.add_channel("C1", "general", members={"U1", "U2", "UADM"})
    slack.add_channel("C2", "random", members={"U1", "U2", "UADM"})
    return SlackUI(
        make_bot(clock=lambda: NOW, workspace_models="claude-haiku-4-5", budget_daily_usd="20")
    )


def open_home(ui: SlackUI, user: str) -> dict:
    before = len(ui.slack.views)
    resp = ui.bot.event(
        {"type": "app_home_opened", "user": user, "tab": "home", "channel": "D1", "event_ts": "1.2"}
    )
    assert resp.status_code == 200
    assert len(ui.slack.views) == before + 1
    return ui.slack.views[-1]["view"]


def settings_text(view: dict) -> str:
    i = next(i for i, b in enumerate(view["blocks"]) if b.get("text", {}).get("text") == (
        "Workspace settings"))
    return json.dumps(view["blocks"][i:], ensure_ascii=False)


def open_modal(ui: SlackUI, user: str = "UADM") -> dict:
    before = len(ui.slack.modals)
    assert ui.home_action(OPEN_ACTION, user=user).status_code == 200
    assert len(ui.slack.modals) == before + 1
    return ui.slack.modals[-1]


def option(value: str) -> dict:
    return {"selected_option": {"text": {"type": "plain_text", "text": value}, "value": value}}


def stored(engine) -> WorkspaceSettings | None:
    with sessionmaker(engine)() as s:
        return s.get(WorkspaceSettings, "T0001")


def test_admin_edits_settings_and_the_next_mention_uses_them(ui, slack, model, engine):
    home = open_home(ui, "UADM")
    assert OPEN_ACTION in settings_text(home)
    assert "claude-sonnet-4-5" in settings_text(home)
    modal = open_modal(ui)
    ids = [b["block_id"] for b in modal["blocks"] if b["type"] == "input"]
    assert ids == [
        "model", "language", "footer", "channels",
        "budget_daily_usd", "budget_monthly_usd", "budget_user_daily_usd",
        "keep_transcripts", "backfill_on_join",
    ]
    resp = ui.submit(modal, {
        "model": option("claude-haiku-4-5"),
        "language": {"value": "  日本語 "},
        "footer": option("off"),
        "channels": {"selected_conversations": ["C1"]},
        "budget_user_daily_usd": {"value": "2.5"},
    }, user="UADM")
    assert resp.status_code == 200 and resp.text == ""  # the modal closes
    row = stored(engine)
    assert row is not None and row.updated_by == "UADM"
    assert (row.model, row.language, row.footer, row.channels) == (
        "claude-haiku-4-5", "日本語", False, "C1")
    assert row.budget_user_daily_usd == 2.5 and row.budget_daily_usd is None
    republished = slack.views[-1]
    assert republished["user_id"] == "UADM" and "日本語" in settings_text(republished["view"])
    again = {b["block_id"]: b["element"] for b in open_modal(ui)["blocks"]}
    assert again["budget_user_daily_usd"]["initial_value"] == "2.5"
    assert again["model"]["initial_option"]["value"] == "claude-haiku-4-5"
    assert again["footer"]["initial_option"]["value"] == "off"
    assert again["channels"]["initial_conversations"] == ["C1"]

    parent = slack.add_thread("C1", 6, text_fn=words)
    ui.bot.mention("C1", "what did we decide?", thread_ts=parent)
    body = model.requests[-1]["body"]
    assert body["model"] == "claude-haiku-4-5"
    assert body["messages"][0]["content"][-1]["text"].endswith("(Answer in 日本語.)")
    post = ui.bot.posts_in("C1", parent)[-1]
    assert not [b for b in post.get("blocks") or [] if b["type"] == "context"]  # no footer
    with engine.connect() as conn:
        assert conn.execute(select(UsageRecord.model)).scalar_one() == "claude-haiku-4-5"


def test_channel_allow_list_refuses_privately_elsewhere(ui, slack, model, engine):
    modal = open_modal(ui, "UOWN")
    ui.submit(modal, {"channels": {"selected_conversations": ["C1"]}}, user="UOWN")
    parent = slack.add_thread("C2", 3, text_fn=words)
    ui.bot.mention("C2", "summarize", thread_ts=parent, user="U1")
    assert model.requests == []
    assert ui.bot.posts_in("C2", parent) == []  # nothing public in a channel it may not use
    note = slack.ephemerals[-1]
    assert note["user"] == "U1" and note["channel"] == "C2"
    assert "limited me to <#C1>" in note["text"]
    resp, url = ui.command("", channel="C2")  # a channel recap is refused the same way
    assert "limited me to <#C1>" in ui.responses(url)[-1]["text"]
    assert model.requests == []
    parent_ok = slack.add_thread("C1", 3, text_fn=words)
    ui.bot.mention("C1", "summarize", thread_ts=parent_ok)
    assert len(model.requests) == 1


def test_invalid_values_are_explained_and_nothing_is_saved(ui, slack, engine):
    modal = open_modal(ui)
    resp = ui.submit(modal, {
        "language": {"value": "<!channel> please"},
        "budget_daily_usd": {"value": "50"},  # the operator's limit is $20
        "budget_monthly_usd": {"value": "-3"},
        "budget_user_daily_usd": {"value": "0.004"},  # would round to $0.00: no limit at all
    }, user="UADM")
    answer = resp.json()
    assert answer["response_action"] == "errors"
    assert set(answer["errors"]) == {
        "language", "budget_daily_usd", "budget_monthly_usd", "budget_user_daily_usd"}
    assert "$20.00" in answer["errors"]["budget_daily_usd"]
    assert stored(engine) is None
    resp = ui.submit(modal, {"model": option("claude-opus-4-1")}, user="UADM")  # not offered
    assert resp.json()["errors"] == {"model": "Pick one of the offered models."}
    assert stored(engine) is None


def test_people_who_are_not_admins_cannot_change_anything(ui, slack, engine):
    home = open_home(ui, "U1")
    assert OPEN_ACTION not in settings_text(home)
    assert "Workspace admins and owners can change these." in settings_text(home)
    modal = open_modal(ui, "U1")  # e.g. a stale Home tab from when they were an admin
    assert not [b for b in modal["blocks"] if b["type"] == "input"]
    assert "Only workspace admins" in json.dumps(modal)
    admin_modal = open_modal(ui, "UADM")
    resp = ui.submit(admin_modal, {"footer": option("off")}, user="U1")  # a forged submission
    assert resp.json()["response_action"] == "errors"
    assert stored(engine) is None


def test_workspace_budget_tightens_the_operators_and_says_where_to_raise_it(
    ui, slack, model, engine
):
    ui.submit(open_modal(ui), {"budget_daily_usd": {"value": "1"}}, user="UADM")
    with sessionmaker(engine).begin() as s:
        s.add(UsageRecord(
            created_at=datetime.fromtimestamp(NOW - 600, UTC), team_id="T0001", channel_id="C1",
            thread_ts="1.1", user_id="U2", kind="mention", model="claude-sonnet-4-5",
            input_tokens=100, cache_creation_tokens=0, cache_read_tokens=0, output_tokens=10,
            cost_usd=1.0, savings_usd=0.0, latency_ms=5, outcome="ok",
        ))
    parent = slack.add_thread("C1", 3, text_fn=words)
    ui.bot.mention("C1", "summarize", thread_ts=parent)
    assert model.requests == []
    text = ui.bot.posts_in("C1", parent)[-1]["text"]
    assert "daily spend limit of $1.00 is reached" in text and "App Home" in text


def test_clearing_a_setting_returns_to_the_operators_default(ui, slack, model, engine):
    ui.submit(open_modal(ui), {"language": {"value": "Deutsch"}}, user="UADM")
    modal = open_modal(ui)
    language = next(b for b in modal["blocks"] if b["block_id"] == "language")
    assert language["element"]["initial_value"] == "Deutsch"  # the modal shows what is stored
    ui.submit(modal, {"language": {"value": ""}}, user="UADM")
    assert stored(engine).language is None
    parent = slack.add_thread("C1", 3, text_fn=words)
    ui.bot.mention("C1", "summarize", thread_ts=parent)
    assert "Answer in" not in model.requests[-1]["body"]["messages"][0]["content"][-1]["text"]


def test_the_model_picker_is_hidden_when_the_operator_offers_one_model(make_bot, slack):
    slack.add_user("UADM", "Ada Admin", is_admin=True)
    ui = SlackUI(make_bot())
    modal = open_modal(ui)
    assert "model" not in [b["block_id"] for b in modal["blocks"]]


def test_a_model_the_operator_stopped_offering_falls_back_to_the_default(
    ui, make_bot, slack, model, engine
):
    ui.submit(open_modal(ui), {"model": option("claude-haiku-4-5")}, user="UADM")
    assert stored(engine).model == "claude-haiku-4-5"
    later = make_bot(clock=lambda: NOW)  # restarted without WORKSPACE_MODELS
    parent = slack.add_thread("C1", 3, text_fn=words)
    later.mention("C1", "summarize", thread_ts=parent)
    assert model.requests[-1]["body"]["model"] == "claude-sonnet-4-5"
