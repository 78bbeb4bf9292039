"""Conversations in the bot's Messages tab, at the wire: signed `message.im` and
`app_home_opened` events in, the fake Slack and Messages API out."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from bot.dm import PROMPTS, PROMPTS_TITLE, Intent, parse_dm, title_of
from bot.prompt import CONVERSATION_START, DM_SYSTEM_PROMPT
from bot.store.models import DmConversation, DmGreeting, Job, UsageRecord
from bot.user_messages import DM_HELP, DM_HINT_RECAP, DM_REFUSAL

DM = "DU1"  # the fake's id of the bot's DM with U1
REPORT = " ".join(
    f"Finding {i}: the eu-west canary stayed healthy, p99 under 180 ms; payments asked for one "
    f"more day of soak before Thursday's roll-forward, and the on-call rota still lacks a name."
    for i in range(1, 31)
)  # about 1,400 tokens: the first turn alone is over Sonnet 4.5's 1,024-token cache floor
ANSWER = "Here is what stands out. " + "The roll-forward waits for the payments soak. " * 20


@pytest.fixture
def dbot(make_bot, slack, model):
    model.reply = lambda body: ANSWER
    bot = make_bot(clock=slack.clock, sleep=slack.sleep)
    bot.app.start_receiving()  # as `serve` does: kept transcripts count from here
    return bot


def prompt_tokens(u: dict[str, Any]) -> int:
    return u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]


def dm_posts(slack, thread_ts: str | None = None) -> list[dict[str, Any]]:
    return [
        p for p in slack.posts
        if p["channel"] == DM and (thread_ts is None or p.get("thread_ts") == thread_ts)
    ]


def texts(slack) -> str:
    """Everything the bot wrote in the DM: posts, streams, edits, status lines, titles."""
    parts = [str(p.get("text") or "") + str(p.get("blocks") or "") for p in dm_posts(slack)]
    parts += [str(u.get("text") or "") + str(u.get("blocks") or "") for u in slack.updates
              if u.get("channel") == DM]
    parts += [str(s) for s in slack.statuses if s.get("channel_id") == DM]
    parts += [c["title"] for c in slack.title_calls]
    return "\n".join(parts)


def kinds(engine) -> list[str]:
    with sessionmaker(engine)() as s:
        return list(s.scalars(select(UsageRecord.kind).order_by(UsageRecord.id)))


# -- a conversation ---------------------------------------------------------------------------


def test_three_turn_conversation_reads_earlier_turns_from_cache(dbot, slack, model, engine):
    slack.advance(60)  # the bot has been receiving events for a minute
    first = slack.dm_event("U1", f"Please read this report and list the risks.\n{REPORT}")
    assert dbot.deliver(first).status_code == 200
    root = first["ts"]
    for question in ("Which risk is the biggest?", "Who should own it?"):
        slack.advance(40)  # the fake's clock moves (Slack's ts); the model's TTL is 5 minutes
        model.advance(40)
        dbot.deliver(slack.dm_event("U1", question, thread_ts=root))

    one, two, three = model.usages
    # Turn 1 writes the system prompt and the first message; every later turn reads all the
    # turns before it and writes only the answer in between and its own message.
    assert one["cache_read_input_tokens"] == 0 and one["cache_creation_input_tokens"] > 1024
    assert two["cache_read_input_tokens"] == one["cache_creation_input_tokens"]
    assert three["cache_read_input_tokens"] == (
        one["cache_creation_input_tokens"] + two["cache_creation_input_tokens"]
    )
    assert three["input_tokens"] < 50  # only the uncached remainder: nothing
    assert three["cache_read_input_tokens"] / prompt_tokens(three) > 0.7

    body = model.requests[-1]["body"]
    assert body["system"] == DM_SYSTEM_PROMPT
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2 + ["user"]
    answers = [m["content"][0]["text"] for m in body["messages"] if m["role"] == "assistant"]
    assert all(a.startswith("Here is what stands out.") and "⚡" not in a for a in answers)
    last = body["messages"][-1]["content"]
    assert last[-1]["text"].endswith("] alice: Who should own it?")
    assert "cache_control" in last[-1]  # the message answered now is cached for the next turn

    # Answered in the conversation's thread, streamed, with the footer; read from nothing but
    # what the events kept; the ledger says "dm".
    streamed = [p for p in dm_posts(slack, root) if p.get("_streamed")]
    assert len(streamed) == 3 and all("⚡" in str(p["blocks"]) for p in streamed)
    assert slack.calls_to("conversations.replies") == []
    assert slack.calls_to("conversations.history") == []
    assert kinds(engine) == ["dm", "dm", "dm"]
    statuses = [s for s in slack.statuses if s["channel_id"] == DM and s.get("status")]
    assert statuses and all(s["thread_ts"] == root for s in statuses)


def test_a_title_and_the_suggested_prompts_once_per_conversation(dbot, slack, engine):
    first = slack.dm_event(
        "U1", "What makes a good <!channel> announcement for the launch of the new billing page?"
    )
    dbot.deliver(first)
    dbot.deliver(slack.dm_event("U1", "Shorter, please", thread_ts=first["ts"]))
    assert [(c["channel_id"], c["thread_ts"]) for c in slack.title_calls] == [(DM, first["ts"])]
    title = slack.title_calls[0]["title"]
    assert title.startswith("What makes a good @") and title.endswith("…")
    assert len(title) <= 60 and "<!channel>" not in title
    assert len(slack.prompt_calls) == 1
    call = slack.prompt_calls[0]
    assert call["thread_ts"] is None and not call.get("_dropped")  # agent_view: the tab's top
    assert slack.suggested_prompts[DM] == {"prompts": list(PROMPTS), "title": PROMPTS_TITLE}

    second = slack.dm_event("U1", "Another topic: lunch ideas?")  # a new conversation
    dbot.deliver(second)
    assert [c["thread_ts"] for c in slack.title_calls] == [first["ts"], second["ts"]]
    assert slack.title_calls[1]["title"] == "Another topic: lunch ideas?"
    assert len(slack.prompt_calls) == 2
    with sessionmaker(engine)() as s:
        assert len(s.scalars(select(DmConversation)).all()) == 2


def test_the_messages_tab_greets_once(dbot, slack, engine):
    for _ in range(3):
        assert dbot.deliver(slack.app_home_opened_event("U1")).status_code == 200
    greetings = dm_posts(slack)
    assert [p["text"] for p in greetings] == [DM_HELP]
    assert greetings[0].get("thread_ts") is None
    assert len(slack.prompt_calls) == 1 and slack.suggested_prompts[DM]["prompts"] == list(PROMPTS)
    dbot.deliver(slack.app_home_opened_event("U2"))  # somebody else: greeted once too
    assert len([p for p in slack.posts if p["channel"] == "DU2"]) == 1
    dbot.deliver(slack.app_home_opened_event("U1", tab="home"))  # the Home tab: no greeting
    assert len(dm_posts(slack)) == 1 and slack.views
    with sessionmaker(engine)() as s:
        assert {g.user_id for g in s.scalars(select(DmGreeting))} == {"U1", "U2"}


def test_a_greeting_that_could_not_be_posted_is_tried_again(dbot, slack):
    slack.fail_next("chat.postMessage", "fatal_error")
    dbot.deliver(slack.app_home_opened_event("U1"))
    assert dm_posts(slack) == []
    dbot.deliver(slack.app_home_opened_event("U1"))
    assert [p["text"] for p in dm_posts(slack)] == [DM_HELP]


def test_the_bots_own_messages_and_other_bots_never_get_a_reply(dbot, slack, model, engine):
    dm = slack.open_dm("U1")
    dbot.deliver(slack.post_event(dm, "I am the bot talking", user="UBOT", bot_id="BBOT"))
    dbot.deliver(slack.post_event(dm, "an integration posting", bot=True))
    dbot.deliver(slack.post_event(dm, "another app's bot user", user="U9", bot_id="B0OTHER"))
    first = slack.dm_event("U1", "hello")
    dbot.deliver(slack.edit_event(DM, first["ts"], "hello, edited"))  # edits start nothing
    assert model.requests == []
    assert dm_posts(slack) == [] and slack.title_calls == []
    with sessionmaker(engine)() as s:
        assert s.scalars(select(Job)).all() == []


def test_a_redelivered_message_is_answered_once(dbot, slack, model):
    event = slack.dm_event("U1", "What is a canary release?")
    dbot.deliver(event, event_id="EvSAME")
    dbot.deliver(event, event_id="EvSAME", retry_num=1)
    assert len(model.requests) == 1


def test_an_answer_in_the_language_the_workspace_set_keeps_the_prefix_cached(
    dbot, slack, model, engine
):
    from bot.store.models import WorkspaceSettings

    with sessionmaker(engine).begin() as s:
        s.add(WorkspaceSettings(team_id=slack.team_id, language="German"))
    first = slack.dm_event("U1", f"Summarize this report.\n{REPORT}")
    dbot.deliver(first)
    dbot.deliver(slack.dm_event("U1", "And the owners?", thread_ts=first["ts"]))
    one, two = model.usages
    assert two["cache_read_input_tokens"] == one["cache_creation_input_tokens"] > 0
    last = model.requests[-1]["body"]["messages"][-1]["content"]
    assert last[-1] == {"type": "text", "text": "(Answer in German.)"}


def test_a_conversation_started_by_the_bot_opens_with_a_user_turn(dbot, slack, model):
    dm = slack.open_dm("U1")
    root = slack.add_message(dm, "A note from me, the bot.", user="UBOT", bot_id="BBOT")
    dbot.deliver(slack.dm_event("U1", "Thanks, and what next?", thread_ts=root))
    messages = model.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"][0]["text"] == CONVERSATION_START


def test_a_dm_is_answered_whatever_channels_the_workspace_limits_the_bot_to(
    dbot, slack, model, engine
):
    from bot.store.models import WorkspaceSettings

    with sessionmaker(engine).begin() as s:
        s.add(WorkspaceSettings(team_id=slack.team_id, channels="C1"))
    dbot.deliver(slack.dm_event("U1", "What is a canary release?"))
    assert len(model.requests) == 1


def test_a_person_of_another_organisation_gets_no_answer(dbot, slack, model):
    slack.add_user("UX", "Xavier External", "xavier", team_id="TOTHER")
    event = slack.dm_event("UX", "Catch me up on <#C1|general>", user_team="TOTHER")
    dbot.deliver(event)
    assert model.requests == []
    assert slack.title_calls == []
    told = [p["text"] for p in slack.posts] + [e["text"] for e in slack.ephemerals]
    assert any("organisation" in t for t in told)


# -- the rest of Slack, from the DM -----------------------------------------------------------


def test_catch_up_on_a_channel_the_asker_is_in(dbot, slack, model, engine):
    slack.advance(60)
    for i in range(6):
        slack.add_message("C1", f"general chatter {i}: the launch moves to Thursday", user="U2")
    event = slack.dm_event("U1", "what did I miss in <#C1|general> since yesterday?")
    dbot.deliver(event)
    root = event["ts"]
    replies = dm_posts(slack, root)
    assert len(replies) == 1  # the progress note, then edited into the recap
    final = [u for u in slack.updates if u["channel"] == DM][-1]
    assert ANSWER.split(".")[0] in final["text"] and "⚡" in str(final["blocks"])
    assert "share_summary" not in str(final["blocks"])  # nothing to share from the DM
    assert "launch moves to Thursday" in str(model.requests[-1]["body"])
    assert kinds(engine) == ["recap"]
    assert [c["title"] for c in slack.title_calls] == ["Channel catch-up"]

    # The recap is part of the conversation: a follow-up sees it, read from nothing but the
    # kept transcript.
    before = len(slack.calls_to("conversations.replies"))
    slack.advance(40)
    dbot.deliver(slack.dm_event("U1", "Who moved it?", thread_ts=root))
    assert len(slack.calls_to("conversations.replies")) == before
    messages = model.requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][0]["text"].startswith("Here is what stands out.")


@pytest.mark.parametrize("bot_member", [True, False])
def test_a_private_channel_the_asker_is_not_in_is_refused_naming_nothing(
    dbot, slack, model, bot_member
):
    slack.add_channel("CPRIV", "secret-plans", is_private=True, members={"U2"},
                      bot_member=bot_member)
    slack.add_message("CPRIV", "the acquisition closes on Friday", user="U2")
    event = slack.dm_event("U1", "Catch me up on <#CPRIV|secret-plans> please")
    dbot.deliver(event)
    assert model.requests == []
    assert slack.calls_to("conversations.history") == []
    refusal = DM_REFUSAL.format(bot="UBOT")
    assert [p["text"] for p in dm_posts(slack, event["ts"])] == [refusal]
    written = texts(slack)
    for secret in ("secret", "CPRIV", "acquisition", "Friday"):
        assert secret not in written
    assert [c["title"] for c in slack.title_calls] == ["Channel catch-up"]


def test_a_pasted_thread_link_is_summarized_in_the_dm(dbot, slack, model):
    parent = slack.add_thread("C1", 4, text_fn=lambda i: f"thread message {i} about the rollout")
    link = f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}"
    event = slack.dm_event("U1", f"<{link}> what did they decide?")
    dbot.deliver(event)
    body = str(model.requests[-1]["body"])
    assert "thread message 4 about the rollout" in body and "what did they decide?" in body
    final = [u for u in slack.updates if u["channel"] == DM][-1]
    assert ANSWER.split(".")[0] in final["text"]


def test_a_thread_link_to_a_private_channel_is_refused(dbot, slack, model):
    slack.add_channel("CPRIV", "secret-plans", is_private=True, members={"U2"})
    parent = slack.add_thread("CPRIV", 2)
    link = f"https://acme.slack.com/archives/CPRIV/p{parent.replace('.', '')}"
    dbot.deliver(slack.dm_event("U1", f"summarize <{link}>"))
    assert model.requests == []
    assert "secret" not in texts(slack)


def test_hints_and_usage_need_no_model(dbot, slack, model):
    hint = slack.dm_event("U1", PROMPTS[0]["message"])
    dbot.deliver(hint)
    assert [p["text"] for p in dm_posts(slack, hint["ts"])] == [DM_HINT_RECAP]
    usage = slack.dm_event("U1", "My usage this week")
    dbot.deliver(usage)
    assert model.requests == []
    (post,) = dm_posts(slack, usage["ts"])
    assert "Usage" in post["text"] or "usage" in post["text"]


def test_uninstalling_forgets_the_dm_bookkeeping(dbot, slack, engine):
    dbot.deliver(slack.app_home_opened_event("U1"))
    dbot.deliver(slack.dm_event("U1", "What is a canary release?"))
    assert dbot.event({"type": "app_uninstalled"}).status_code == 200
    with sessionmaker(engine)() as s:
        assert s.scalars(select(DmGreeting)).all() == []
        assert s.scalars(select(DmConversation)).all() == []


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "action", "seconds"),
    [
        ("summarize <#C123|general>", "recap", 86_400),
        ("catch me up on <#C123|general>", "recap", 86_400),
        ("what did I miss in <#C123> since yesterday?", "recap", 86_400),
        ("Recap <#G123|ops> for the last 3d", "recap", 3 * 86_400),
        ("tl;dr of <#C123|general> this week", "recap", 7 * 86_400),
        ("who is in <#C123|general>?", "turn", 86_400),
        ("summarize what we said so far", "turn", 86_400),
        ("How do I catch up on a channel?", "hint", 86_400),
        ("my usage", "usage", 86_400),
    ],
)
def test_parse_dm(text, action, seconds):
    intent = parse_dm(text)
    assert intent.action == action
    if action == "recap":
        assert intent.seconds == seconds and intent.channel.startswith(("C123", "G123"))


def test_parse_dm_links_and_usage_periods():
    link = "https://acme.slack.com/archives/C1/p1700000000000100"
    intent = parse_dm(f"<{link}|thread> what was decided?")
    assert intent.action == "thread" and intent.link is not None
    assert intent.link.thread_ts == "1700000000.000100" and intent.extra == "what was decided?"
    assert parse_dm(f"{link}").action == "thread"
    assert parse_dm("https://example.com/a-page what is this?").action == "turn"
    assert parse_dm("My usage this week").period == "7d"
    assert parse_dm("what's my usage this month").period == "30d"


def test_titles():
    assert title_of(Intent("recap", channel="CPRIV"), "catch me up on <#CPRIV|secret>", {}) == (
        "Channel catch-up"
    )
    assert title_of(Intent("turn"), "ask <@U2> about <https://x.io|this>", {"U2": "Bob"}) == (
        "ask @Bob about this (https://x.io)"
    )


def test_workspaces_keep_their_conversations_apart(oauth_bot, slack, model, engine):
    from bot.store.models import ThreadMessage
    from tests.test_workspaces import install

    model.reply = lambda body: ANSWER
    for team, user in (("T0002", "U1"), ("T0003", "U2")):
        install(oauth_bot, slack, team, f"xoxb-{team.lower()}")
        slack.channel_teams[slack.open_dm(user)] = team
        oauth_bot.deliver(slack.app_home_opened_event(user), team_id=team)
        first = slack.dm_event(user, f"{team}-SECRET: what is our plan?")
        oauth_bot.deliver(first)
        oauth_bot.deliver(slack.dm_event(user, "and then?", thread_ts=first["ts"]))
    prompts = [str(r["body"]["messages"]) for r in model.requests]
    assert len(prompts) == 4
    assert all("T0003" not in p for p in prompts[:2]) and all("T0002" not in p for p in prompts[2:])
    posted = {p["_team"] for p in slack.posts if p["channel"] in ("DU1", "DU2")}
    assert posted == {"T0002", "T0003"}

    assert oauth_bot.event({"type": "app_uninstalled"}, team_id="T0002").status_code == 200
    with sessionmaker(engine)() as s:
        for model_ in (DmGreeting, DmConversation, ThreadMessage):
            assert {r.team_id for r in s.scalars(select(model_))} == {"T0003"}, model_


def test_dm_answers_and_catch_ups_carry_the_feedback_control(dbot, slack, model, engine):
    slack.advance(60)
    first = slack.dm_event("U1", "Which risks should I raise with the payments team?")
    dbot.deliver(first)
    answer = [s for s in slack.streams.values() if s.get("channel") == DM] or dm_posts(slack)
    assert answer and "answer_feedback" in str(answer[-1]), (slack.streams, dm_posts(slack))
    slack.add_message("C1", "general chatter: the launch moves to Thursday", user="U2")
    catch_up = slack.dm_event("U1", "what did I miss in <#C1|general> since yesterday?")
    dbot.deliver(catch_up)
    shown = [u for u in slack.updates if u["channel"] == DM] + dm_posts(slack, catch_up["ts"])
    assert any("answer_feedback" in str(m.get("blocks")) for m in shown), shown
