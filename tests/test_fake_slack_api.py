"""The fake Slack Web API, exercised with a real slack_sdk WebClient over loopback."""

from __future__ import annotations

import json
import types
import urllib.request
from collections.abc import Iterator

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import builtin_handlers
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from tests.fakes.slack_api import FakeSlack


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as f:
        f.add_user("U1", "Alice Archer", "alice")
        f.add_user("U2", "Bob Baker", "bob")
        f.add_user("U3", "Carol Chen")
        f.add_channel("C1", "general", members={"U1", "U2"})
        yield f


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return WebClient(token="xoxb-test", base_url=fake.url, timeout=5)


def error_of(call) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        call()
    return info.value


def read_thread(client: WebClient, channel: str, ts: str, limit: int) -> tuple[list[dict], int]:
    messages: list[dict] = []
    cursor = None
    pages = 0
    while True:
        resp = client.conversations_replies(channel=channel, ts=ts, limit=limit, cursor=cursor)
        pages += 1
        messages.extend(resp["messages"])
        cursor = resp["response_metadata"]["next_cursor"]
        assert resp["has_more"] == bool(cursor)
        if not cursor:
            return messages, pages


def test_auth_test(fake, client):
    resp = client.auth_test()
    assert resp["ok"] is True
    assert resp["url"] == "https://acme.slack.com/"
    assert resp["team_id"] == "T0001"
    assert resp["user_id"] == "UBOT"
    assert resp["bot_id"] == "BBOT"
    assert resp["is_enterprise_install"] is False
    assert fake.calls[-1][0] == "auth.test"


def test_invalid_token_and_unknown_method(fake):
    bad = WebClient(token="xoxb-wrong", base_url=fake.url)
    assert error_of(bad.auth_test).response["error"] == "invalid_auth"
    good = WebClient(token="xoxb-test", base_url=fake.url)
    assert error_of(lambda: good.api_call("nope.nothing")).response["error"] == "unknown_method"


def test_1500_reply_thread_pages_in_order(fake, client):
    parent = fake.add_thread("C1", 1500)
    messages, pages = read_thread(client, "C1", parent, 200)
    assert pages == 8
    assert len(messages) == 1501
    tss = [m["ts"] for m in messages]
    assert len(set(tss)) == 1501
    assert tss[0] == parent
    assert tss == sorted(tss, key=float)
    assert messages[0]["reply_count"] == 1500
    assert messages[0]["reply_users_count"] == 2
    assert messages[0]["latest_reply"] == tss[-1]
    assert all(m["thread_ts"] == parent for m in messages)
    assert [m["text"] for m in messages] == [m["text"] for m in fake.thread("C1", parent)]
    assert all(call["limit"] == "200" for call in fake.calls_to("conversations.replies"))


def test_page_shortfall_still_yields_every_message(fake, client):
    fake.page_shortfall = True
    parent = fake.add_thread("C1", 1500)
    first = client.conversations_replies(channel="C1", ts=parent, limit=200)
    assert len(first["messages"]) == 199 and first["has_more"] is True
    messages, pages = read_thread(client, "C1", parent, 200)
    assert pages == 8
    tss = [m["ts"] for m in messages]
    assert len(tss) == len(set(tss)) == 1501
    assert tss == sorted(tss, key=float)


def test_sdk_iterates_pages_by_cursor(fake, client):
    parent = fake.add_thread("C1", 25)
    seen = [m["ts"] for page in client.conversations_replies(
        channel="C1", ts=parent, limit=10) for m in page["messages"]]
    assert len(seen) == 26 and len(set(seen)) == 26


def test_oldest_returns_newer_replies_with_parent_first(fake, client):
    parent = fake.add_thread("C1", 5)
    thread = fake.thread("C1", parent)
    cut = thread[3]["ts"]
    resp = client.conversations_replies(channel="C1", ts=parent, oldest=cut)
    assert [m["ts"] for m in resp["messages"]] == [parent, thread[4]["ts"], thread[5]["ts"]]
    resp = client.conversations_replies(channel="C1", ts=parent, oldest=cut, inclusive=True)
    assert [m["ts"] for m in resp["messages"]] == [parent] + [m["ts"] for m in thread[3:]]
    resp = client.conversations_replies(channel="C1", ts=parent, latest=thread[2]["ts"])
    assert [m["ts"] for m in resp["messages"]] == [parent, thread[1]["ts"]]


def test_reply_ts_returns_only_that_message(fake, client):
    parent = fake.add_thread("C1", 3)
    reply = fake.thread("C1", parent)[2]
    resp = client.conversations_replies(channel="C1", ts=reply["ts"])
    assert [m["ts"] for m in resp["messages"]] == [reply["ts"]]
    assert resp["messages"][0]["thread_ts"] == parent


def test_read_errors(fake, client):
    fake.add_channel("C2", "public-not-joined", members={"U1"}, bot_member=False)
    fake.add_channel("G1", "private-not-joined", is_private=True, members={"U1"}, bot_member=False)
    fake.add_channel("D1", "dm", is_im=True, members={"U1"}, bot_member=False)
    p2 = fake.add_message("C2", "hi")
    pg = fake.add_message("G1", "secret")
    pd = fake.add_message("D1", "psst")
    assert error_of(lambda: client.conversations_replies(channel="C2", ts=p2)).response[
        "error"] == "not_in_channel"
    assert error_of(lambda: client.conversations_replies(channel="G1", ts=pg)).response[
        "error"] == "channel_not_found"
    assert error_of(lambda: client.conversations_replies(channel="D1", ts=pd)).response[
        "error"] == "channel_not_found"
    assert error_of(lambda: client.conversations_replies(channel="C9", ts=p2)).response[
        "error"] == "channel_not_found"
    assert error_of(lambda: client.conversations_history(channel="C2")).response[
        "error"] == "not_in_channel"
    assert error_of(lambda: client.conversations_info(channel="G1")).response[
        "error"] == "channel_not_found"
    assert error_of(lambda: client.conversations_replies(channel="C1", ts="1.000001")).response[
        "error"] == "thread_not_found"
    assert error_of(lambda: client.conversations_join(channel="G1")).response[
        "error"] == "method_not_supported_for_channel_type"
    joined = client.conversations_join(channel="C2")
    assert joined["channel"]["is_member"] is True
    assert client.conversations_replies(channel="C2", ts=p2)["messages"][0]["text"] == "hi"


def test_history_is_top_level_newest_first_and_paged(fake, client):
    a = fake.add_message("C1", "first")
    parent = fake.add_thread("C1", 3)
    fake.advance(10)
    b = fake.add_message("C1", "last")
    resp = client.conversations_history(channel="C1", limit=2)
    assert [m["ts"] for m in resp["messages"]] == [b, parent]
    assert resp["messages"][1]["reply_count"] == 3
    more = client.conversations_history(
        channel="C1", limit=2, cursor=resp["response_metadata"]["next_cursor"])
    assert [m["ts"] for m in more["messages"]] == [a]
    assert more["has_more"] is False


def test_info_and_members(fake, client):
    info = client.conversations_info(channel="C1")["channel"]
    assert info["id"] == "C1" and info["name"] == "general"
    assert info["is_member"] is True and info["is_private"] is False
    assert info["is_ext_shared"] is False
    first = client.conversations_members(channel="C1", limit=2)
    rest = client.conversations_members(
        channel="C1", limit=2, cursor=first["response_metadata"]["next_cursor"])
    assert sorted(first["members"] + rest["members"]) == ["U1", "U2", "UBOT"]


def test_rate_limit_raises_with_retry_after(fake, client):
    parent = fake.add_thread("C1", 2)
    fake.fail_next("conversations.replies", status=429, retry_after=7)
    err = error_of(lambda: client.conversations_replies(channel="C1", ts=parent))
    assert err.response.status_code == 429
    assert err.response["error"] == "ratelimited"
    assert err.response.headers["Retry-After"] == "7"
    assert len(client.conversations_replies(channel="C1", ts=parent)["messages"]) == 3


def test_rate_limit_retry_handler_succeeds(fake, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(builtin_handlers, "time", types.SimpleNamespace(sleep=slept.append))
    client = WebClient(token="xoxb-test", base_url=fake.url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)])
    parent = fake.add_thread("C1", 2)
    fake.fail_next("conversations.replies", status=429, retry_after=0, times=2)
    resp = client.conversations_replies(channel="C1", ts=parent)
    assert len(resp["messages"]) == 3
    assert len(fake.calls_to("conversations.replies")) == 3
    assert len(slept) == 2 and all(0 <= s < 1 for s in slept)


def test_other_injected_failures(fake, client):
    fake.fail_next("users.info", "internal_error", status=500, times=2)
    for _ in range(2):
        err = error_of(lambda: client.users_info(user="U1"))
        assert err.response.status_code == 500 and err.response["error"] == "internal_error"
    assert client.users_info(user="U1")["user"]["id"] == "U1"


def test_post_message_with_blocks_lands_in_replies(fake, client):
    parent = fake.add_thread("C1", 2)
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "*answer*"}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "footer"}]},
    ]
    resp = client.chat_postMessage(channel="C1", thread_ts=parent, text="answer", blocks=blocks)
    assert resp["channel"] == "C1"
    thread = client.conversations_replies(channel="C1", ts=parent)["messages"]
    assert thread[0]["reply_count"] == 3
    mine = thread[-1]
    assert mine["ts"] == resp["ts"] and mine["blocks"] == blocks
    assert mine["user"] == "UBOT" and mine["bot_id"] == "BBOT"
    assert fake.posts[-1]["blocks"] == blocks
    assert fake.posts[-1]["thread_ts"] == parent


def test_form_encoded_blocks_are_parsed(fake, client):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "hi"}}]
    client.api_call("chat.postMessage",
                    params={"channel": "C1", "text": "hi", "blocks": json.dumps(blocks)})
    assert fake.posts[-1]["blocks"] == blocks
    assert fake.calls_to("chat.postMessage")[-1]["blocks"] == json.dumps(blocks)


def test_get_query_params_are_accepted(fake):
    req = urllib.request.Request(
        f"{fake.url}users.info?user=U2", headers={"Authorization": "Bearer xoxb-test"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["ok"] is True and body["user"]["real_name"] == "Bob Baker"
    assert fake.calls[-1] == ("users.info", {"user": "U2"})


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_post_message_validation(fake, client):
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x"}}
    cases = [
        ({"text": "t", "blocks": [section] * 51}, "invalid_blocks"),
        ({"text": "t", "blocks": [{"type": "section",
                                   "text": {"type": "mrkdwn", "text": "x" * 3001}}]},
         "invalid_blocks"),
        ({"text": "t", "blocks": [{"type": "context",
                                   "elements": [{"type": "mrkdwn", "text": "e"}] * 11}]},
         "invalid_blocks"),
        ({"text": "x" * 40_001}, "msg_too_long"),
        ({"text": ""}, "no_text"),
    ]
    for kwargs, expected in cases:
        err = error_of(lambda kw=kwargs: client.chat_postMessage(channel="C1", **kw))
        assert err.response["error"] == expected
    assert fake.posts == []
    ok = [section] * 50
    client.chat_postMessage(channel="C1", text="x" * 40_000, blocks=ok)
    assert len(fake.posts) == 1


def _feedback(**overrides) -> dict:
    """Slack's documented context_actions example: one feedback_buttons element."""
    element = {
        "type": "feedback_buttons",
        "action_id": "feedback_buttons_1",
        "positive_button": {"text": {"type": "plain_text", "text": "👍"},
                            "value": "positive_feedback"},
        "negative_button": {"text": {"type": "plain_text", "text": "👎"},
                            "value": "negative_feedback"},
    }
    element.update(overrides)
    return {"type": "context_actions", "elements": [element]}


def test_context_actions_with_feedback_buttons_are_validated(fake, client):
    icon = {"type": "icon_button", "icon": "trash", "action_id": "delete_button_1",
            "text": {"type": "plain_text", "text": "Delete"}, "value": "delete_item"}
    client.chat_postMessage(channel="C1", text="t", blocks=[_feedback()])
    client.chat_postMessage(channel="C1", text="t",
                            blocks=[{"type": "context_actions", "elements": [icon]}])
    mrkdwn = {"text": {"type": "mrkdwn", "text": "👍"}, "value": "v"}
    thumb = {"type": "plain_text", "text": "👍"}
    bad = [
        _feedback(negative_button=None),
        _feedback(positive_button=mrkdwn),
        _feedback(positive_button={"text": {"type": "plain_text", "text": "x" * 76}, "value": "v"}),
        _feedback(positive_button={"text": thumb, "value": "v" * 2001}),
        _feedback(positive_button={"text": thumb}),
        _feedback(action_id="a" * 256),
        {"type": "context_actions", "elements": [icon] * 6},
        {"type": "context_actions", "elements": []},
        {"type": "context_actions", "elements": [{"type": "button", "value": "v",
                                                  "text": {"type": "plain_text", "text": "b"}}]},
        {"type": "actions", "elements": [
            {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "1"}},
            {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "2"}}]},
    ]
    for block in bad:
        err = error_of(lambda b=block: client.chat_postMessage(channel="C1", text="t", blocks=[b]))
        assert err.response["error"] == "invalid_blocks", block
    assert len(fake.posts) == 2
    fake.refused_blocks = frozenset({"context_actions"})  # a Slack without the element
    err = error_of(lambda: client.chat_postMessage(channel="C1", text="t", blocks=[_feedback()]))
    assert "unsupported type: context_actions" in str(err.response["errors"])
    url = fake.response_url()
    refused = httpx.post(url, json={"text": "t", "blocks": [_feedback()]})
    assert (refused.status_code, refused.text) == (400, "invalid_blocks")
    assert httpx.post(url, json={"text": "t"}).status_code == 200


def test_post_message_channel_rules(fake, client):
    fake.add_channel("C2", "outside", members={"U1"}, bot_member=False)
    fake.add_channel("C3", "old", is_archived=True)
    assert error_of(lambda: client.chat_postMessage(channel="C9", text="x")).response[
        "error"] == "channel_not_found"
    assert error_of(lambda: client.chat_postMessage(channel="C2", text="x")).response[
        "error"] == "not_in_channel"
    assert error_of(lambda: client.chat_postMessage(channel="C3", text="x")).response[
        "error"] == "is_archived"
    dm = client.chat_postMessage(channel="U1", text="psst")
    assert dm["channel"] == "DU1"
    assert fake.posts[-1]["channel"] == "U1"
    hist = client.conversations_history(channel="DU1")["messages"]
    assert [m["text"] for m in hist] == ["psst"]


def test_post_with_unknown_thread_ts_is_recorded(fake, client):
    resp = client.chat_postMessage(channel="C1", text="lost", thread_ts="1600000000.000001")
    assert fake.misthreaded and fake.misthreaded[0]["thread_ts"] == "1600000000.000001"
    top = client.conversations_history(channel="C1")["messages"]
    assert top[0]["ts"] == resp["ts"] and "thread_ts" not in top[0]


def test_post_ephemeral_rules(fake, client):
    parent = fake.add_thread("C1", 1)
    fake.add_channel("C2", "outside", members={"U1"}, bot_member=False)
    err = error_of(lambda: client.chat_postEphemeral(channel="C1", user="U3", text="x"))
    assert err.response["error"] == "user_not_in_channel"
    err = error_of(lambda: client.chat_postEphemeral(channel="C2", user="U1", text="x"))
    assert err.response["error"] == "not_in_channel"
    resp = client.chat_postEphemeral(channel="C1", user="U1", text="only you", thread_ts=parent)
    assert resp["message_ts"]
    assert fake.ephemerals == [
        {"channel": "C1", "user": "U1", "text": "only you", "thread_ts": parent}]
    assert len(client.conversations_replies(channel="C1", ts=parent)["messages"]) == 2
    err = error_of(lambda: client.chat_update(channel="C1", ts=resp["message_ts"], text="y"))
    assert err.response["error"] == "message_not_found"


def test_update_permalink_reactions_views_status(fake, client):
    parent = fake.add_thread("C1", 1)
    reply = fake.thread("C1", parent)[1]["ts"]
    posted = client.chat_postMessage(channel="C1", text="draft", thread_ts=parent)
    client.chat_update(channel="C1", ts=posted["ts"], text="final")
    assert fake.updates[-1]["text"] == "final"
    last = fake.thread("C1", parent)[-1]
    assert last["text"] == "final" and last["edited"]["user"] == "UBOT"
    err = error_of(lambda: client.chat_update(channel="C1", ts=reply, text="hijack"))
    assert err.response["error"] == "cant_update_message"

    link = client.chat_getPermalink(channel="C1", message_ts=parent)["permalink"]
    assert link == "https://acme.slack.com/archives/C1/p" + parent.replace(".", "")
    link = client.chat_getPermalink(channel="C1", message_ts=reply)["permalink"]
    assert link.endswith(f"/p{reply.replace('.', '')}?thread_ts={parent}&cid=C1")

    client.reactions_add(channel="C1", timestamp=parent, name="eyes")
    assert fake.reactions[-1]["name"] == "eyes"
    assert fake.thread("C1", parent)[0]["reactions"][0]["users"] == ["UBOT"]

    client.views_publish(user_id="U1", view={"type": "home", "blocks": []})
    assert fake.views[-1]["view"]["type"] == "home"

    client.assistant_threads_setStatus(channel_id="C1", thread_ts=parent, status="thinking")
    assert fake.statuses[-1]["status"] == "thinking"


def test_users_info(fake, client):
    user = client.users_info(user="U1")["user"]
    assert user["id"] == "U1" and user["team_id"] == "T0001"
    assert user["real_name"] == "Alice Archer"
    assert user["profile"]["display_name"] == "alice"
    assert user["deleted"] is False and user["is_bot"] is False
    assert error_of(lambda: client.users_info(user="U404")).response["error"] == "user_not_found"


def test_users_info_roles_and_grid(fake, client):
    fake.add_user("UA", "Ada", is_admin=True)
    fake.add_user("UG", "Gil", team_id="T0009", enterprise_id="E1", is_owner=True)
    assert client.users_info(user="U1")["user"]["is_admin"] is False
    assert client.users_info(user="UA")["user"]["is_admin"] is True
    grid = client.users_info(user="UG")["user"]
    assert grid["team_id"] == "T0009" and grid["is_owner"] is True
    assert grid["enterprise_user"]["enterprise_id"] == "E1"


def test_views_open_rules(fake, client):
    modal = {
        "type": "modal",
        "title": {"type": "plain_text", "text": "Settings"},
        "blocks": [{"type": "input", "block_id": "b", "label": {"type": "plain_text", "text": "x"},
                    "element": {"type": "plain_text_input", "action_id": "a"}}],
    }
    no_submit = error_of(lambda: client.views_open(trigger_id="1.2.3", view=modal))
    assert no_submit.response["error"] == "invalid_arguments"
    modal["submit"] = {"type": "plain_text", "text": "Save"}
    assert error_of(lambda: client.views_open(trigger_id="", view=modal)).response["error"] == (
        "invalid_arguments")
    opened = client.views_open(trigger_id="1.2.3", view=modal)["view"]
    assert opened["id"] == fake.modals[-1]["id"] and len(fake.modals) == 1
    again = error_of(lambda: client.views_open(trigger_id="1.2.3", view=modal))
    assert again.response["error"] == "exchanged_trigger_id"
    home = {"type": "home", "blocks": []}
    assert error_of(lambda: client.views_open(trigger_id="4.5.6", view=home)).response[
        "error"] == "invalid_arguments"


def test_response_url_records_and_allows_five_uses(fake):
    url = fake.response_url()
    assert url.startswith(f"{fake.base}/response/")
    assert fake.response_url() != url
    with httpx.Client(timeout=5) as http:
        for i in range(5):
            r = http.post(url, json={"text": f"update {i}", "response_type": "ephemeral"})
            assert r.status_code == 200
        r = http.post(url, json={"text": "one too many"})
        assert r.status_code == 404 and r.text == "used_url"
    assert [r["text"] for r in fake.responses] == [f"update {i}" for i in range(5)]
    assert all(r["_url"] == url for r in fake.responses)


def test_files_are_served_to_a_token_with_files_read_else_the_sign_in_page(fake):
    fake.add_message("C1", "look", user="U1", files=[{"name": "a.txt", "content": b"hello"}])
    (file_id,) = fake.file_contents
    url = f"{fake.base}/files-pri/T0001-{file_id}/download/a.txt"
    ok = httpx.get(url, headers={"Authorization": f"Bearer {fake.bot_token}"})
    assert ok.status_code == 200 and ok.content == b"hello"
    assert ok.headers["content-type"].startswith("text/plain")
    for headers in ({}, {"Authorization": "Bearer xoxb-wrong"}):
        page = httpx.get(url, headers=headers)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.content.startswith(b"<!DOCTYPE html>")
    fake.files_read = False
    page = httpx.get(url, headers={"Authorization": f"Bearer {fake.bot_token}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert fake.downloads == [file_id]


def test_file_change_and_file_deleted_events(fake):
    parent = fake.add_message("C1", "look", user="U1")
    reply = fake.add_message("C1", "the config", user="U2", thread_ts=parent,
                             files=[{"name": "a.txt", "content": b"v1"}])
    (file_id,) = fake.file_contents
    url = fake.thread("C1", parent)[1]["files"][0]["url_private_download"]
    auth = {"Authorization": f"Bearer {fake.bot_token}"}
    # file_change: only the id (Slack's reference: details via files.info); the URL serves anew
    event = fake.file_change_event(file_id, b"version 2", name="b.txt")
    assert event == {"type": "file_change", "file_id": file_id, "file": {"id": file_id}}
    assert httpx.get(url, headers=auth).content == b"version 2"
    changed = fake.thread("C1", parent)[1]["files"][0]
    assert changed["name"] == "b.txt" and changed["size"] == len(b"version 2")
    # file_deleted: only file_id and event_ts; messages keep a tombstone; the URL answers 404
    deleted, edits = fake.file_deleted_event(file_id)
    assert set(deleted) == {"type", "file_id", "event_ts"} and deleted["file_id"] == file_id
    assert fake.thread("C1", parent)[1]["files"] == [{"id": file_id, "mode": "tombstone"}]
    assert httpx.get(url, headers=auth).status_code == 404
    (edit,) = edits
    assert edit["subtype"] == "message_changed" and edit["message"]["ts"] == reply
    assert edit["previous_message"]["files"][0]["name"] == "b.txt"
    assert edit["message"]["files"] == [{"id": file_id, "mode": "tombstone"}]


def test_app_mention_event_carries_the_messages_files(fake):
    parent = fake.add_message("C1", "look", user="U1")
    ts = fake.add_message("C1", "<@UBOT> what is this?", user="U2", thread_ts=parent,
                          files=[{"name": "a.png", "content": b"x"}])
    event = fake.app_mention_event("C1", ts)
    assert event["type"] == "app_mention" and event["channel"] == "C1"
    assert event["ts"] == event["event_ts"] == ts and event["thread_ts"] == parent
    assert event["files"][0]["name"] == "a.png" and event["upload"] is False
    assert "subtype" not in event and "channel_type" not in event
    plain = fake.app_mention_event("C1", fake.add_message("C1", "<@UBOT> hi", user="U1"))
    assert "files" not in plain and "upload" not in plain


def test_message_shape_edits_deletes_and_isolation(fake, client):
    parent = fake.add_message("C1", "look", user="U1",
                              files=[{"id": "F1", "name": "plan.pdf"}], edited=True)
    r1 = fake.add_message("C1", "reply", user="U2", thread_ts=parent)
    bot_msg = fake.add_message("C1", "beep", user=None, bot_id="BX", subtype="bot_message")
    msgs = client.conversations_replies(channel="C1", ts=parent)["messages"]
    assert msgs[0]["files"][0] == {"id": "F1", "name": "plan.pdf", "title": "plan.pdf",
                                   "filetype": "pdf", "pretty_type": "PDF",
                                   "mimetype": "application/pdf", "size": 0,
                                   "url_private": f"{fake.base}/files-pri/T0001-F1/plan.pdf",
                                   "url_private_download":
                                       f"{fake.base}/files-pri/T0001-F1/download/plan.pdf"}
    assert msgs[0]["edited"]["user"] == "U1" and msgs[0]["team"] == "T0001"
    assert msgs[1]["thread_ts"] == parent
    top = client.conversations_history(channel="C1")["messages"]
    assert top[0]["ts"] == bot_msg and "user" not in top[0] and top[0]["bot_id"] == "BX"

    fake.edit_message("C1", r1, "reply, edited")
    assert fake.thread("C1", parent)[1]["text"] == "reply, edited"
    assert "edited" in fake.thread("C1", parent)[1]

    copy_ = fake.thread("C1", parent)
    copy_[0]["files"][0]["name"] = "mutated"
    assert fake.thread("C1", parent)[0]["files"][0]["name"] == "plan.pdf"

    fake.delete_message("C1", r1)
    assert [m["ts"] for m in fake.thread("C1", parent)] == [parent]
    assert "reply_count" not in fake.thread("C1", parent)[0]


def test_minted_ts_strictly_increase_and_follow_the_clock(fake):
    a = fake.add_message("C1", "a")
    b = fake.add_message("C1", "b")
    assert a == "1700000000.000000" and float(b) > float(a)
    fake.advance(60)
    c = fake.add_message("C1", "c")
    assert c == "1700000060.000000"


def test_streams_expire_after_their_lifetime_and_stop_when_the_user_says(fake, client):
    parent = fake.add_message("C1", "question", user="U1")
    kw = {"recipient_team_id": "T0001", "recipient_user_id": "U1"}
    ts = client.chat_startStream(channel="C1", thread_ts=parent, markdown_text="Hi", **kw)["ts"]
    fake.advance(fake.stream_lifetime - 1)
    client.chat_appendStream(channel="C1", ts=ts, markdown_text=" there")
    fake.advance(1)
    err = error_of(lambda: client.chat_appendStream(channel="C1", ts=ts, markdown_text="!"))
    assert err.response["error"] == "message_not_in_streaming_state"
    assert fake.streams[ts]["state"] == "expired" and fake.streams[ts]["text"] == "Hi there"
    client.chat_update(channel="C1", ts=ts, text="Hi there (finished)")  # can still be edited

    fake.stop_after_appends = 1
    ts2 = client.chat_startStream(channel="C1", thread_ts=parent, markdown_text="A", **kw)["ts"]
    client.chat_appendStream(channel="C1", ts=ts2, markdown_text="B")
    for call in (client.chat_appendStream, client.chat_stopStream):
        extra = {"markdown_text": "C"} if call == client.chat_appendStream else {}
        err = error_of(lambda c=call, e=extra: c(channel="C1", ts=ts2, **e))
        assert err.response["error"] == "stopped_by_user"

    fake.streaming_enabled = False
    err = error_of(lambda: client.chat_startStream(channel="C1", thread_ts=parent, **kw))
    assert err.response["error"] == "channel_type_not_supported"


def test_status_loading_messages_limits_and_two_minute_lapse(fake, client):
    parent = fake.add_message("C1", "question", user="U1")
    status = {"channel_id": "C1", "thread_ts": parent, "status": "is reading…"}
    for bad in (["x" * 51], [f"m{i}" for i in range(11)], []):
        body = {**status, "loading_messages": bad}
        err = error_of(lambda b=body: client.api_call("assistant.threads.setStatus", json=b))
        assert err.response["error"] == "invalid_arguments"
    client.assistant_threads_setStatus(**status, loading_messages=["Reading…"] * 10)
    fake.advance(119)
    client.assistant_threads_setStatus(**status)  # refreshed in time
    fake.advance(121)
    client.chat_postMessage(channel="C1", thread_ts=parent, text="answer")  # too late
    assert len(fake.status_lapses) == 1 and fake.status_lapses[0]["thread_ts"] == parent


# ---------------------------------------------------------------- read tiers (issue 16)


def test_limited_tier_allows_one_read_per_minute_with_retry_after(fake, client):
    parent = fake.add_thread("C1", 3)
    fake.set_read_tier("limited")
    assert len(client.conversations_replies(channel="C1", ts=parent)["messages"]) == 4
    fake.advance(20.5)
    err = error_of(lambda: client.conversations_replies(channel="C1", ts=parent))
    assert err.response.status_code == 429 and err.response["error"] == "ratelimited"
    assert err.response.headers["Retry-After"] == "40"  # 39.5 s left, in whole seconds
    client.conversations_history(channel="C1")  # another method has its own budget
    fake.advance(39)
    err = error_of(lambda: client.conversations_replies(channel="C1", ts=parent))
    assert err.response.headers["Retry-After"] == "1"  # never 0
    fake.advance(0.5)  # 60 s after the allowed read; the throttled ones did not count
    assert len(client.conversations_replies(channel="C1", ts=parent)["messages"]) == 4
    assert [(e["method"], e["throttled"], e["returned"]) for e in fake.read_log] == [
        ("conversations.replies", False, 4),
        ("conversations.replies", True, 0),
        ("conversations.history", False, 1),
        ("conversations.replies", True, 0),
        ("conversations.replies", False, 4),
    ]
    assert [e["at"] - fake.read_log[0]["at"] for e in fake.read_log] == [0, 20.5, 20.5, 59.5, 60]
    assert {e["team"] for e in fake.read_log} == {"T0001"}
    assert len(fake.reads) == 3  # the existing log still lists only answered reads


def test_limited_tier_caps_limit_at_15_and_pages_by_cursor(fake, client):
    parent = fake.add_thread("C1", 40)
    for i in range(20):
        fake.add_message("C1", f"top {i}")
    fake.set_read_tier("limited")
    pages: list[int] = []
    messages: list[dict] = []
    cursor = None
    while True:
        resp = client.conversations_replies(channel="C1", ts=parent, limit=200, cursor=cursor)
        pages.append(len(resp["messages"]))
        messages.extend(resp["messages"])
        cursor = resp["response_metadata"]["next_cursor"]
        if not cursor:
            break
        fake.advance(60)
    assert pages == [15, 15, 11]  # capped silently, not refused
    assert len({m["ts"] for m in messages}) == 41 and messages[0]["ts"] == parent
    page = client.conversations_history(channel="C1")  # the default is 15 as well
    assert len(page["messages"]) == 15 and page["has_more"] is True
    fake.advance(60)
    assert len(client.conversations_history(channel="C1", limit=5)["messages"]) == 5
    fake.set_read_tier("tier3")
    assert len(client.conversations_history(channel="C1", limit=200)["messages"]) == 21


def test_read_budgets_are_per_workspace(fake, client):
    fake.add_workspace("T0002", "xoxb-two")
    fake.add_channel("C2", "other-general")
    fake.channel_teams["C2"] = "T0002"
    other = WebClient(token="xoxb-two", base_url=fake.url, timeout=5)
    fake.add_message("C1", "one")
    fake.add_message("C2", "two")
    fake.set_read_tier("limited")
    client.conversations_history(channel="C1")
    other.conversations_history(channel="C2")  # T0002's first read: allowed
    assert error_of(lambda: client.conversations_history(channel="C1")).response.status_code \
        == 429
    assert error_of(lambda: other.conversations_history(channel="C2")).response.status_code \
        == 429
    fake.set_read_tier("unlimited", team_id="T0002")  # e.g. a Marketplace install elsewhere
    for _ in range(5):
        other.conversations_history(channel="C2")
    assert fake.read_tier("T0002") == "unlimited" and fake.read_tier("T0001") == "limited"
    assert fake.max_reads_per_window("T0001") == 1
    assert fake.max_reads_per_window("T0002", "conversations.history") == 6
    assert [e["team"] for e in fake.read_log if e["throttled"]] == ["T0001", "T0002"]


def test_tier3_allows_50_reads_a_minute_then_429(fake, client):
    fake.add_message("C1", "hi")
    fake.set_read_tier("tier3")
    for _ in range(50):
        client.conversations_history(channel="C1")
    err = error_of(lambda: client.conversations_history(channel="C1"))
    assert err.response.status_code == 429 and err.response.headers["Retry-After"] == "60"
    ts = fake.add_message("C1", "another")
    client.conversations_replies(channel="C1", ts=ts)  # replies has a budget of its own
    fake.advance(60)
    client.conversations_history(channel="C1")
    assert fake.max_reads_per_window("T0001") == 50
    with pytest.raises(ValueError):
        fake.set_read_tier("tier9")


def test_max_reads_per_window_counts_allowed_reads_in_any_window(fake, client):
    parent = fake.add_thread("C1", 1)
    fake.set_read_tier("tier3")
    for step in (0, 10, 20, 20, 15):  # reads at 0, 10, 30, 50, 65 s
        fake.advance(step)
        client.conversations_replies(channel="C1", ts=parent)
    client.conversations_history(channel="C1")
    assert fake.max_reads_per_window("T0001", "conversations.replies") == 4  # 10, 30, 50, 65
    assert fake.max_reads_per_window("T0001", "conversations.replies", window=20) == 2
    assert fake.max_reads_per_window("T0001", "conversations.history") == 1
    assert fake.max_reads_per_window("T0001") == 4  # the busiest method
    assert fake.max_reads_per_window("T0009") == 0
    assert all(e["returned"] == 2 for e in fake.read_log if e["method"].endswith("replies"))


def test_clock_and_sleep_are_the_fakes_time(fake, client):
    fake.add_message("C1", "hi")
    fake.set_read_tier("limited")
    assert fake.clock() == fake.now == 1_700_000_000.0
    client.conversations_history(channel="C1")
    fake.sleep(60)  # returns at once; the fake's minute has passed
    assert fake.clock() == 1_700_000_060.0
    client.conversations_history(channel="C1")
    fake.sleep(-5)  # a negative wait does not turn the clock back
    assert fake.clock() == 1_700_000_060.0


# ---------------------------------------------------------------- Events API payloads


def test_post_event_new_message_and_thread_reply(fake, client):
    fake.advance(5)
    event = fake.post_event("C1", "hello", user="U2")
    ts = event["ts"]
    assert event == {"type": "message", "ts": ts, "user": "U2", "text": "hello",
                     "team": "T0001", "channel": "C1", "event_ts": ts,
                     "channel_type": "channel", "client_msg_id": f"msg-{ts}"}
    assert ts == "1700000005.000000"
    reply = fake.post_event("C1", "a reply", user="U1", thread_ts=ts)
    assert reply["thread_ts"] == ts and reply["parent_user_id"] == "U2"
    assert reply["event_ts"] == reply["ts"] > ts and "subtype" not in reply
    read = client.conversations_replies(channel="C1", ts=ts)["messages"]
    assert [m["text"] for m in read] == ["hello", "a reply"]


def test_post_event_channel_types(fake):
    fake.add_channel("G1", "secret", is_private=True, members={"U1"})
    fake.add_channel("D1", "U1", is_im=True, members={"U1"})
    fake.add_channel("G2", "mpdm-a--b", is_mpim=True, members={"U1", "U2"})
    kinds = [fake.post_event(c, "x")["channel_type"] for c in ("C1", "G1", "D1", "G2")]
    assert kinds == ["channel", "group", "im", "mpim"]


def test_post_event_bots_files_broadcasts_and_connect(fake, client):
    integration = fake.post_event("C1", "build passed", bot=True)
    assert integration["subtype"] == "bot_message" and integration["bot_id"] == "B0OTHER"
    assert "user" not in integration and integration["username"] == "bot"
    app_bot = fake.post_event("C1", "from an app", user="U9", bot_id="BAPP")
    assert app_bot["user"] == "U9" and app_bot["bot_id"] == "BAPP" and "subtype" not in app_bot
    assert app_bot["bot_profile"]["id"] == "BAPP"

    shared = fake.post_event("C1", "see attached", files=[{"name": "plan.pdf"}])
    assert shared["subtype"] == "file_share" and shared["upload"] is True
    assert shared["files"][0]["name"] == "plan.pdf"
    assert shared["files"][0]["mimetype"] == "application/pdf"

    parent = fake.post_event("C1", "question")["ts"]
    broadcast = fake.post_event("C1", "also to the channel", thread_ts=parent,
                                subtype="thread_broadcast")
    assert broadcast["subtype"] == "thread_broadcast" and broadcast["thread_ts"] == parent
    assert broadcast["root"]["ts"] == parent and broadcast["root"]["reply_count"] == 1
    history = client.conversations_history(channel="C1")["messages"]
    assert history[0]["ts"] == broadcast["ts"]  # broadcasts show in the channel
    with pytest.raises(ValueError):
        fake.post_event("C1", "x", subtype="thread_broadcast")

    external = fake.post_event("C1", "hi from outside", user="U3", user_team="T0EXT")
    assert (external["team"], external["user_team"], external["source_team"]) == (
        "T0EXT", "T0EXT", "T0EXT")


def test_edit_and_delete_events(fake, client):
    ts = fake.post_event("C1", "first", user="U1")["ts"]
    reply = fake.post_event("C1", "a reply", user="U2", thread_ts=ts)["ts"]
    fake.advance(30)
    edit = fake.edit_event("C1", reply, "a reply, edited")
    assert {k: edit[k] for k in ("type", "subtype", "hidden", "channel", "channel_type")} == {
        "type": "message", "subtype": "message_changed", "hidden": True, "channel": "C1",
        "channel_type": "channel"}
    assert edit["ts"] == edit["event_ts"] == edit["message"]["edited"]["ts"]
    assert edit["ts"] == "1700000030.000000"
    assert edit["message"]["ts"] == reply and edit["message"]["text"] == "a reply, edited"
    assert edit["message"]["thread_ts"] == ts
    assert edit["previous_message"]["text"] == "a reply" and "edited" not in \
        edit["previous_message"]
    assert client.conversations_replies(channel="C1", ts=ts)["messages"][1]["text"] == \
        "a reply, edited"

    fake.advance(30)
    gone = fake.delete_event("C1", reply)
    assert gone["subtype"] == "message_deleted" and gone["hidden"] is True
    assert gone["deleted_ts"] == reply and gone["previous_message"]["text"] == "a reply, edited"
    assert gone["ts"] == gone["event_ts"] == "1700000060.000000"
    assert [m["ts"] for m in client.conversations_replies(channel="C1", ts=ts)["messages"]] \
        == [ts]


def test_join_and_leave_events(fake, client):
    fake.add_channel("C9", "busy", members={"U1"}, bot_member=False)
    fake.add_message("C9", "before the bot came")
    assert error_of(lambda: client.conversations_history(channel="C9")).response["error"] == \
        "not_in_channel"
    joined = fake.member_joined_event("C9", "UBOT", inviter="U1")
    assert joined == {"type": "member_joined_channel", "user": "UBOT", "channel": "C9",
                      "channel_type": "C", "team": "T0001", "inviter": "U1",
                      "event_ts": joined["event_ts"]}
    assert len(client.conversations_history(channel="C9")["messages"]) == 1
    someone = fake.member_joined_event("C9", "U2")
    assert "inviter" not in someone
    left = fake.member_left_event("C9", "U2")
    assert {k: left[k] for k in ("type", "user", "channel", "channel_type", "team")} == {
        "type": "member_left_channel", "user": "U2", "channel": "C9", "channel_type": "C",
        "team": "T0001"}
    assert "U2" not in client.conversations_members(channel="C9")["members"]

    bye = fake.bot_left_event("C9", actor="U1")
    assert bye == {"type": "channel_left", "channel": "C9", "actor_id": "U1",
                   "event_ts": bye["event_ts"]}
    assert float(bye["event_ts"]) > float(joined["event_ts"])
    assert error_of(lambda: client.conversations_history(channel="C9")).response["error"] == \
        "not_in_channel"
    fake.add_channel("G7", "private", is_private=True, members={"U1"})
    assert fake.bot_left_event("G7")["type"] == "group_left"
    assert "actor_id" not in fake.bot_left_event("G7")


def test_deliver_sends_a_built_event_to_the_bot(bot, slack):
    from bot.listeners.messages import NEW

    seen = []
    bot.app.messages.on(NEW, seen.append)
    event = slack.post_event("C1", "a plain message", user="U2")
    resp = bot.deliver(event)
    assert resp.status_code == 200
    assert [(m.channel, m.kind, m.team_id, m.event["ts"]) for m in seen] == [
        ("C1", "channel", slack.team_id, event["ts"])]


PROMPTS = [{"title": "Catch up", "message": "Catch me up"}, {"title": "Usage", "message": "Usage"}]


def test_suggested_prompts_live_at_the_top_of_an_agents_messages_tab(fake, client):
    dm = fake.open_dm("U1")
    client.assistant_threads_setSuggestedPrompts(channel_id=dm, prompts=PROMPTS, title="Try")
    assert fake.suggested_prompts[dm] == {"prompts": PROMPTS, "title": "Try"}
    # thread_ts is for the legacy assistant view: an agent app's call "silently fails".
    root = fake.add_message(dm, "hello", user="U1")
    client.assistant_threads_setSuggestedPrompts(channel_id=dm, thread_ts=root, prompts=PROMPTS[:1])
    assert fake.suggested_prompts[dm]["prompts"] == PROMPTS
    assert fake.prompt_calls[-1]["_dropped"] is True
    fake.agent_view = False  # the legacy assistant view: prompts per thread
    client.assistant_threads_setSuggestedPrompts(channel_id=dm, thread_ts=root, prompts=PROMPTS[:1])
    assert fake.suggested_prompts[f"{dm}:{root}"]["prompts"] == PROMPTS[:1]


def test_suggested_prompts_errors(fake, client):
    dm = fake.open_dm("U1")
    fake.add_channel("CPRIV", "private", is_private=True, bot_member=False)
    call = client.assistant_threads_setSuggestedPrompts
    assert error_of(lambda: call(channel_id="CNOPE", prompts=PROMPTS)).response["error"] == (
        "channel_not_found"
    )
    assert error_of(lambda: call(channel_id="CPRIV", prompts=PROMPTS)).response["error"] == (
        "channel_not_found"
    )
    assert error_of(
        lambda: call(channel_id=dm, thread_ts="1.000001", prompts=PROMPTS)
    ).response["error"] == "invalid_thread_ts"
    for bad in ([], PROMPTS * 3, [{"title": "no message"}], [{"title": "t", "message": ""}]):
        err = error_of(lambda b=bad: client.api_call(
            "assistant.threads.setSuggestedPrompts", json={"channel_id": dm, "prompts": b}))
        assert err.response["error"] == "invalid_arguments", bad
    assert fake.prompt_calls == []


def test_set_title_needs_a_thread_of_the_conversation(fake, client):
    dm = fake.open_dm("U1")
    root = fake.add_message(dm, "hello", user="U1")
    reply = fake.add_message(dm, "more", user="U1", thread_ts=root)
    client.assistant_threads_setTitle(channel_id=dm, thread_ts=root, title="Greetings")
    assert fake.titles[(dm, root)] == "Greetings"
    call = client.assistant_threads_setTitle
    for kwargs, error in (
        ({"channel_id": "CNOPE", "thread_ts": root, "title": "x"}, "channel_not_found"),
        ({"channel_id": dm, "thread_ts": "1.000001", "title": "x"}, "invalid_thread_ts"),
        ({"channel_id": dm, "thread_ts": reply, "title": "x"}, "invalid_thread_ts"),
        ({"channel_id": dm, "thread_ts": root, "title": " "}, "invalid_arguments"),
    ):
        assert error_of(lambda k=kwargs: call(**k)).response["error"] == error, kwargs
    assert len(fake.title_calls) == 1


def test_messages_tab_and_dm_events(fake):
    opened = fake.app_home_opened_event("U1")
    assert opened == {"type": "app_home_opened", "user": "U1", "channel": "DU1",
                      "tab": "messages", "event_ts": opened["event_ts"]}
    assert fake.app_home_opened_event("U1", tab="home")["tab"] == "home"
    first = fake.dm_event("U1", "hi there")
    assert first["channel"] == "DU1" and first["channel_type"] == "im"
    assert first["user"] == "U1" and "thread_ts" not in first
    reply = fake.dm_event("U1", "and more", thread_ts=first["ts"])
    assert reply["thread_ts"] == first["ts"] and reply["parent_user_id"] == "U1"
    assert [m["text"] for m in fake.thread("DU1", first["ts"])] == ["hi there", "and more"]
