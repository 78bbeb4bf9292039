"""Message events go through one router: every handler registered for an event's kind of
conversation and subtype is reached, at the wire (signed `message` events)."""

from __future__ import annotations

from typing import Any

import pytest

from bot.listeners.messages import NEW, MessageEvent, MessageRouter
from bot.store import data


def words(i: int) -> str:
    return f"Note {i}: the rollout moves to Thursday; Dana owns the checklist."


def new_message(channel: str, kind: str, ts: str, text: str = "hello") -> dict[str, Any]:
    return {
        "type": "message",
        "channel": channel,
        "channel_type": kind,
        "user": "U1",
        "text": text,
        "ts": ts,
        "event_ts": ts,
    }


def test_a_second_handler_for_new_direct_messages_is_reached(bot, slack):
    seen: list[MessageEvent] = []
    bot.app.messages.on(NEW, seen.append, kinds=["im"])
    resp = bot.event(new_message("D42", "im", "1800000000.000100", "a question for you"))
    assert resp.status_code == 200
    assert [(m.channel, m.kind, m.subtype, m.team_id) for m in seen] == [
        ("D42", "im", NEW, slack.team_id)
    ]
    assert seen[0].event["text"] == "a question for you"
    bot.event(new_message("C1", "channel", "1800000000.000200"))  # another kind: not reached
    bot.event({**new_message("D42", "im", "1800000000.000300"), "subtype": "me_message"})
    assert len(seen) == 1


def test_edits_reach_every_handler_and_still_update_stored_messages(bot, slack):
    parent = slack.add_thread("C1", 5, text_fn=words)
    bot.mention("C1", "summarize", thread_ts=parent)
    target = slack.thread("C1", parent)[2]["ts"]
    seen: list[MessageEvent] = []
    bot.app.messages.on("message_changed", seen.append, kinds=["channel", "group"])
    slack.edit_message("C1", target, "Note 2 (corrected): Friday")
    bot.event(
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": "C1",
            "channel_type": "channel",
            "hidden": True,
            "ts": "1800000100.000000",
            "message": {
                "type": "message",
                "user": "U1",
                "text": "Note 2 (corrected): Friday",
                "ts": target,
                "thread_ts": parent,
            },
        }
    )
    assert [m.subtype for m in seen] == ["message_changed"]
    with bot.app.sessions() as s:
        stored = {m["ts"]: m["text"] for m in data.load_messages(s, slack.team_id, "C1", parent)}
    assert stored[target] == "Note 2 (corrected): Friday"


def test_unknown_kinds_are_refused_when_registering():
    with pytest.raises(ValueError, match="unknown conversation kinds"):
        MessageRouter().on(NEW, lambda m: None, kinds=["app_home"])
