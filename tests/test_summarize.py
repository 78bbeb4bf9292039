"""`/summarize`, the "Summarize thread" shortcut and the share button, at the wire."""

from __future__ import annotations

import pytest

from tests.harness import SlackUI

NOW = 1_800_000_000.0  # the bot's clock in these tests; messages are minted just before it


def text_of(i: int) -> str:
    return (
        f"Update {i}: the migration to the new billing cluster is on track; Bob will "
        f"check the invoices of batch {i} and Carol owns the rollback plan."
    )


@pytest.fixture
def ui(make_bot, slack):
    slack.now = NOW - 5 * 3600
    bot = make_bot(clock=lambda: NOW)
    return SlackUI(bot)


def final(ui: SlackUI, url: str) -> dict:
    responses = ui.responses(url)
    assert responses, "nothing came back through the response_url"
    return responses[-1]


def transcript(model, i: int = -1) -> str:
    return "\n".join(b["text"] for b in model.requests[i]["body"]["messages"][0]["content"])


def share_value(response: dict) -> str:
    actions = [b for b in response["blocks"] if b["type"] == "actions"]
    assert len(actions) == 1
    return actions[0]["elements"][0]["value"]


@pytest.mark.parametrize("arg", ["help", "what", "5y", "0", "99999"])
def test_help_and_unknown_arguments_answer_with_usage(ui, model, arg):
    resp, _ = ui.command(arg)
    assert resp.status_code == 200
    assert "/summarize <thread link>" in resp.json()["text"]
    assert model.requests == []


def test_channel_recap_includes_thread_replies(ui, slack, model):
    for i in range(8):
        slack.add_message("C1", text_of(i), user="U1")
    parent = slack.add_message("C1", "Which date do we ship?", user="U2")
    slack.add_message("C1", "Thursday, after the canary.", user="U3", thread_ts=parent)
    resp, url = ui.command("")
    assert (
        resp.json()["text"].startswith("Working on a recap of the last 1 day")
        or "last day" in resp.json()["text"]
    )
    progress, done = ui.responses(url)[-2:]
    assert "Reading 10 messages" in progress["text"]
    assert done["response_type"] == "ephemeral" and share_value(done)
    text = transcript(model)
    assert "carol (reply in the thread started" in text and "Thursday, after the canary." in text
    assert model.requests[0]["body"]["messages"][0]["content"][-1]["text"].startswith(
        "Request from alice: Recap this channel"
    )


@pytest.mark.parametrize(
    ("arg", "expect"), [("3d", "3 days"), ("12h", "12 hours"), ("200", "200 messages")]
)
def test_recap_argument_forms(ui, slack, model, arg, expect):
    slack.add_message("C1", text_of(1), user="U1")
    resp, url = ui.command(arg)
    assert expect in resp.json()["text"]
    assert share_value(final(ui, url))


def test_last_n_messages(ui, slack, model):
    for i in range(30):
        slack.add_message("C1", f"numbered message {i}", user="U1")
    ui.command("5")
    text = transcript(model)
    assert "numbered message 29" in text and "numbered message 25" in text
    assert "numbered message 24" not in text


def test_two_recaps_minutes_apart_share_a_cached_prefix(make_bot, slack, model):
    slack.now = NOW - 5 * 3600
    for i in range(40):
        slack.add_message("C1", text_of(i), user="U1" if i % 2 else "U2")
    clock = {"now": NOW}
    ui = SlackUI(make_bot(clock=lambda: clock["now"]))
    ui.command("")
    slack.add_message("C1", text_of(99), user="U3")
    clock["now"] += 240  # four minutes later: the window start has not moved
    ui.command("")
    first, second = model.usages
    assert first["cache_creation_input_tokens"] > 1024
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]


@pytest.mark.parametrize("form", ["bare", "angle", "label", "reply"])
def test_thread_by_link_in_every_form(ui, slack, model, form):
    parent = slack.add_thread("C1", 6, text_fn=text_of)
    reply = slack.thread("C1", parent)[3]["ts"]
    p = parent.replace(".", "")
    url = f"https://acme.slack.com/archives/C1/p{p}"
    arg = {
        "bare": url,
        "angle": f"<{url}>",
        "label": f"<{url}|the thread>",
        "reply": f"<https://acme.slack.com/archives/C1/p{reply.replace('.', '')}"
        f"?thread_ts={parent}&cid=C1>",
    }[form]
    resp, rurl = ui.command(arg)
    assert resp.json()["text"].startswith("Working on a summary of that thread")
    done = final(ui, rurl)
    assert share_value(done) and "Sorry" not in done["text"]
    assert "Update 6" in transcript(model) and "Update 0" in transcript(model)
    assert transcript(model).count("Update ") == 7


def test_link_to_a_reply_without_thread_ts_summarizes_the_whole_thread(ui, slack, model):
    parent = slack.add_thread("C1", 4, text_fn=text_of)
    reply = slack.thread("C1", parent)[2]["ts"]
    ui.command(f"https://acme.slack.com/archives/C1/p{reply.replace('.', '')}")
    assert transcript(model).count("Update ") == 5


def test_share_button_posts_once_and_says_who_shared(ui, slack, model):
    parent = slack.add_thread("C1", 4, text_fn=text_of)
    model.reply = "Ship on Thursday; Carol owns the rollback."
    _, url = ui.command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    value = share_value(final(ui, url))
    assert ui.bot.posts_in("C1", parent) == []  # private until shared

    _, click_url = ui.click(value, user="U2")  # someone else cannot share it
    assert ui.bot.posts_in("C1", parent) == []
    _, click_url = ui.click(value)
    posts = ui.bot.posts_in("C1", parent)
    assert len(posts) == 1 and "Ship on Thursday" in posts[0]["text"]
    assert "Shared by alice" in posts[0]["text"] and "<@U1>" not in posts[0]["text"]
    assert "Posted to the thread" in final(ui, click_url)["text"]
    _, again = ui.click(value)
    assert len(ui.bot.posts_in("C1", parent)) == 1
    assert "already posted" in final(ui, again)["text"]


def test_shared_recap_goes_to_the_channel(ui, slack, model):
    slack.add_message("C1", text_of(1), user="U1")
    _, url = ui.command("")
    ui.click(share_value(final(ui, url)))
    top_level = [p for p in slack.posts if p["channel"] == "C1" and not p.get("thread_ts")]
    assert len(top_level) == 1 and "Shared by alice" in top_level[0]["text"]


def test_shortcut_on_a_thread_reply_summarizes_its_thread(ui, slack, model):
    parent = slack.add_thread("C1", 5, text_fn=text_of)
    reply = slack.thread("C1", parent)[4]["ts"]
    resp, _ = ui.shortcut("C1", reply, parent)
    assert resp.status_code == 200
    mine = [e for e in slack.ephemerals if e.get("thread_ts") == parent and e["user"] == "U1"]
    assert len(mine) == 2  # "reading N messages", then the summary with its button
    assert "Reading 6 messages" in mine[0]["text"]
    assert any(b["type"] == "actions" for b in mine[1]["blocks"])
    assert transcript(model).count("Update ") == 6


def test_summary_after_a_mention_reads_the_threads_cache(ui, slack, model):
    parent = slack.add_thread("C1", 40, text_fn=text_of)
    ui.bot.mention("C1", "what is the plan?", thread_ts=parent)
    ui.shortcut("C1", parent)
    first, second = model.usages
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]


# -- permissions ------------------------------------------------------------------------------


def test_private_channel_link_refused_to_non_member_revealing_nothing(ui, slack, model):
    slack.add_channel("G9", "acquisition-talks", is_private=True, members={"U2"})
    parent = slack.add_thread("G9", 3, text_fn=lambda i: f"secret figure {i}", users=["U2"])
    _, url = ui.command(f"https://acme.slack.com/archives/G9/p{parent.replace('.', '')}")
    answer = final(ui, url)
    blob = str(answer)
    assert "can't summarize that link" in answer["text"]
    assert "acquisition" not in blob and "secret figure" not in blob and "G9" not in blob
    assert model.requests == []
    # same words as for a link to nothing at all
    _, url2 = ui.command("https://acme.slack.com/archives/G404/p1700000000000100")
    assert final(ui, url2)["text"] == answer["text"]


def test_private_channel_link_works_for_a_member(ui, slack, model):
    slack.add_channel("G9", "team-private", is_private=True, members={"U1", "U2"})
    parent = slack.add_thread("G9", 3, text_fn=text_of, users=["U2"])
    _, url = ui.command(f"<https://acme.slack.com/archives/G9/p{parent.replace('.', '')}>")
    assert share_value(final(ui, url))


def test_dm_link_of_other_people_is_refused(ui, slack, model):
    slack.add_channel("D77", "", is_im=True, members={"U2", "U3"})
    parent = slack.add_thread("D77", 2, users=["U2", "U3"])
    _, url = ui.command(f"https://acme.slack.com/archives/D77/p{parent.replace('.', '')}")
    assert "can't summarize that link" in final(ui, url)["text"]
    assert model.requests == []


def test_public_channel_without_the_bot_says_how_to_fix(ui, slack, model):
    slack.add_channel("C5", "random", members={"U1", "U2"}, bot_member=False)
    _, url = ui.command("https://acme.slack.com/archives/C5/p1700000000000100")
    text = final(ui, url)["text"]
    assert "I'm not in <#C5>" in text and "/invite" in text
    assert model.requests == []


def test_recap_where_the_bot_is_not_a_member(ui, slack, model):
    slack.add_channel("C6", "offtopic", members={"U1"}, bot_member=False)
    _, url = ui.command("", channel="C6")
    assert "/invite" in final(ui, url)["text"]


def test_link_to_another_workspace(ui, model):
    _, url = ui.command("https://othercorp.slack.com/archives/C1/p1700000000000100")
    assert "another workspace" in final(ui, url)["text"]
    assert model.requests == []


@pytest.mark.parametrize(
    "bad",
    [
        "https://acme.slack.com/archives/C1/",
        "<https://acme.slack.com/archives/C1/p123>",
        "https://example.com/archives/C1/p1700000000000100",
    ],
)
def test_malformed_link(ui, model, bad):
    resp, _ = ui.command(bad)
    assert "Slack message link" in resp.json()["text"] or "didn't understand" in resp.json()["text"]
    assert model.requests == []


def test_message_that_no_longer_exists(ui, slack, model):
    parent = slack.add_thread("C1", 0)
    slack.delete_message("C1", parent)
    _, url = ui.command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    assert "no longer exists" in final(ui, url)["text"]


def test_model_failure_reaches_the_requester(ui, slack, model):
    parent = slack.add_thread("C1", 3)
    model.enqueue(401)
    _, url = ui.command(f"https://acme.slack.com/archives/C1/p{parent.replace('.', '')}")
    assert "ANTHROPIC_API_KEY" in final(ui, url)["text"]
