"""Feedback on answers (#18): the 👍/👎 under every answer, votes at the wire (signed
block_actions), one per person per answer and changeable, refused across workspaces, the
fallback buttons where Slack refuses the feedback buttons element, the digest's counts, and
what uninstall and retention do to votes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from bot.housekeeping import run_housekeeping
from bot.store.models import AnswerFeedback, UsageRecord
from tests.harness import SlackUI


def words(i: int) -> str:
    return f"Item {i}: the vendor contract renewal needs legal review before Friday, says Dana."


def control(message: dict) -> dict:
    (block,) = [b for b in message.get("blocks") or [] if b.get("block_id") == "answer_feedback"]
    return block


def votes(engine) -> list[tuple[int, str, bool, str | None]]:
    with sessionmaker(engine)() as s:
        rows = s.execute(
            select(
                AnswerFeedback.usage_id,
                AnswerFeedback.user_id,
                AnswerFeedback.positive,
                AnswerFeedback.reason,
            ).order_by(AnswerFeedback.user_id)
        ).all()
    return [tuple(r) for r in rows]


def ledger_ids(engine, kind: str) -> list[int]:
    with sessionmaker(engine)() as s:
        return list(s.scalars(select(UsageRecord.id).where(UsageRecord.kind == kind)))


def answer(bot, slack, text: str = "summarize") -> dict:
    parent = slack.add_thread("C1", 5, text_fn=words)
    bot.mention("C1", text, thread_ts=parent)
    return bot.posts_in("C1", parent)[-1]


def feedback_section(text: str) -> str:
    """The digest's Feedback section, in its plain-text rendering."""
    part = text.split("\nFeedback\n", 1)[1]
    return part.split("\n\n", 1)[0]


@pytest.mark.parametrize("stream", [True, False])
def test_every_answer_ends_with_slacks_feedback_buttons(make_bot, slack, model, engine, stream):
    bot = make_bot(stream_answers=stream)
    last = answer(bot, slack)
    (usage_id,) = ledger_ids(engine, "mention")
    block = last["blocks"][-1]
    assert block == control(last)
    # The documented shape: a context_actions block holding one feedback_buttons element whose
    # buttons carry plain_text and a value; the value names the ledger row and nothing else.
    assert block["type"] == "context_actions"
    (element,) = block["elements"]
    assert element["type"] == "feedback_buttons" and element["action_id"] == "answer_feedback"
    assert element["positive_button"]["value"] == f"up:{usage_id}"
    assert element["negative_button"]["value"] == f"down:{usage_id}"
    assert element["positive_button"]["text"]["type"] == "plain_text"
    assert "👍" not in last["text"]  # the text fallback stays the answer and its footer


def test_a_vote_is_stored_once_per_voter_changed_and_counted_in_the_digest(
    make_bot, slack, model, engine
):
    bot = make_bot()
    ui = SlackUI(bot)
    last = answer(bot, slack)
    (usage_id,) = ledger_ids(engine, "mention")
    posts, updates = len(slack.posts), len(slack.updates)

    _, url = ui.vote(last, up=True, user="U1")
    ui.vote(last, up=True, user="U1")  # the same vote again: still one
    (thanks,) = ui.responses(url)
    assert thanks["response_type"] == "ephemeral" and thanks["replace_original"] is False
    assert votes(engine) == [(usage_id, "U1", True, None)]

    _, url = ui.vote(last, up=False, user="U2")
    (ask,) = ui.responses(url)  # only the voter sees the menu of reasons
    assert ask["response_type"] == "ephemeral" and not ask["replace_original"]
    _, url = ui.choose(ask, f"wrong:{usage_id}", user="U2")
    assert ui.responses(url)[-1]["replace_original"] is True
    assert votes(engine)[1] == (usage_id, "U2", False, "wrong")

    ui.vote(last, up=True, user="U2")  # changed: the later click replaces the earlier vote
    assert votes(engine)[1] == (usage_id, "U2", True, None)
    _, url = ui.choose(ask, f"missed:{usage_id}", user="U2")  # no 👎 left to explain
    assert "no longer" in ui.responses(url)[-1]["text"]
    ui.vote(last, up=False, user="U3")
    assert [(u, p) for _, u, p, _ in votes(engine)] == [("U1", True), ("U2", True), ("U3", False)]

    # Nothing public changed: no post, no edit of the answer.
    assert len(slack.posts) == posts and len(slack.updates) == updates

    _, url = ui.command("usage")
    text = ui.responses(url)[-1]["text"]
    section = feedback_section(text)
    assert "66.7% positive: 2 👍, 1 👎 on 1 answer" in section
    assert "mention 67% (2 of 3)" in section
    for who in ("U1", "U2", "U3", "alice", "bob", "carol", "Alice", "Bob", "Carol"):
        assert who not in section


def test_worst_rated_kinds_in_the_digest_and_app_home(make_bot, slack, model, engine):
    bot = make_bot(clock=lambda: slack.now)  # the recap's window is on the fake's clock
    ui = SlackUI(bot)
    mention = answer(bot, slack)
    slack.add_message("C1", words(1), user="U2")
    _, url = ui.command("")  # a private recap of the channel
    recap = ui.responses(url)[-1]
    ui.vote(mention, up=True, user="U1")
    ui.vote(mention, up=True, user="U2")
    _, down = ui.vote(recap, up=False, user="U1")
    (recap_id,) = ledger_ids(engine, "recap")
    ui.choose(ui.responses(down)[-1], f"too_long:{recap_id}", user="U1")

    _, url = ui.command("usage")
    section = feedback_section(ui.responses(url)[-1]["text"])
    assert "Worst rated first: recap 0% (0 of 1) · mention 100% (2 of 2)" in section
    assert "Why 👎: too long 1" in section

    bot.event({"type": "app_home_opened", "user": "U3", "tab": "home", "channel": "D1"})
    home = str(slack.views[-1]["view"]["blocks"])
    assert "recap 0% (0 of 1)" in home and "66.7% positive" in home


def test_a_summary_and_its_shared_copy_take_votes_for_the_same_answer(
    make_bot, slack, model, engine
):
    ui = SlackUI(make_bot())
    parent = slack.add_thread("C1", 4, text_fn=words)
    _, url = ui.command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    shown = ui.responses(url)[-1]
    (usage_id,) = ledger_ids(engine, "summarize")
    assert shown["blocks"][-1] == control(shown)
    assert [b["type"] for b in shown["blocks"][-3:]] == ["context", "actions", "context_actions"]
    ui.vote(shown, up=True, user="U1")
    share = next(b for b in shown["blocks"] if b["type"] == "actions")["elements"][0]["value"]
    ui.click(share)
    (shared,) = ui.bot.posts_in("C1", parent)
    assert control(shared) == control(shown)
    ui.vote(shared, up=False, user="U2")
    assert votes(engine) == [(usage_id, "U1", True, None), (usage_id, "U2", False, None)]


def test_a_vote_from_another_workspace_or_on_no_answer_is_refused(make_bot, slack, model, engine):
    bot = make_bot()
    ui = SlackUI(bot)
    last = answer(bot, slack)
    (usage_id,) = ledger_ids(engine, "mention")
    _, url = ui.vote(last, up=False, user="U9", team_id="T0002")
    assert "can't be rated" in ui.responses(url)[-1]["text"]
    for value in (f"up:{usage_id + 1000}", "up:0", "up:abc", f"sideways:{usage_id}", ""):
        action = {"type": "button", "action_id": "answer_feedback_up", "value": value}
        resp, url = ui.act(action, user="U1")
        assert resp.status_code == 200 and "can't be rated" in ui.responses(url)[-1]["text"]
    # A reason for an answer of another workspace is refused as well.
    _, url = ui.vote(last, up=False, user="U1")
    ask = ui.responses(url)[-1]
    ui.choose(ask, f"wrong:{usage_id}", user="U1", team_id="T0002")
    assert votes(engine) == [(usage_id, "U1", False, None)]


@pytest.mark.parametrize("stream", [True, False])
def test_refused_feedback_buttons_fall_back_to_buttons_and_are_remembered(
    make_bot, slack, model, engine, stream
):
    slack.refused_blocks = frozenset({"context_actions"})  # this Slack refuses the element
    bot = make_bot(stream_answers=stream)
    ui = SlackUI(bot)
    first = answer(bot, slack)
    block = control(first)
    assert block["type"] == "actions" and first["blocks"][-1] == block
    up, down = block["elements"]
    (usage_id,) = ledger_ids(engine, "mention")
    assert (up["value"], down["value"]) == (f"up:{usage_id}", f"down:{usage_id}")
    assert [e["text"]["text"] for e in block["elements"]] == ["👍", "👎"]

    second = answer(bot, slack, "and now?")
    assert control(second)["type"] == "actions"
    method = "chat.stopStream" if stream else "chat.postMessage"
    tried = [p for m, p in slack.calls if m == method and "context_actions" in str(p)]
    assert len(tried) == 1  # refused once, then remembered: the second answer used the buttons

    ui.vote(second, up=False, user="U2")
    assert votes(engine) == [(max(ledger_ids(engine, "mention")), "U2", False, None)]


def test_refused_feedback_buttons_under_a_private_summary_fall_back(make_bot, slack, model):
    slack.refused_blocks = frozenset({"context_actions"})
    ui = SlackUI(make_bot())
    parent = slack.add_thread("C1", 4, text_fn=words)
    _, url = ui.command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    shown = ui.responses(url)[-1]
    assert control(shown)["type"] == "actions" and "Fake reply" in shown["text"]


def test_uninstall_purges_votes_and_retention_removes_them_with_the_ledger(
    make_bot, slack, model, engine
):
    bot = make_bot(usage_retention_days=31)
    ui = SlackUI(bot)
    last = answer(bot, slack)
    ui.vote(last, up=True, user="U1")
    ui.vote(last, up=False, user="U2")
    sessions = sessionmaker(engine)

    later = datetime.now(UTC) + timedelta(days=32)
    run_housekeeping(sessions, bot.app.settings, later - timedelta(days=2))  # within retention
    assert len(votes(engine)) == 2
    run_housekeeping(sessions, bot.app.settings, later)  # the ledger row goes, its votes too
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 0
    assert votes(engine) == []

    again = answer(bot, slack, "once more")
    ui.vote(again, up=True, user="U1")
    assert bot.event({"type": "app_uninstalled"}).status_code == 200
    bot.wait()
    assert votes(engine) == []  # who voted is gone; the ledger keeps its numbers
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(UsageRecord)) == 1
