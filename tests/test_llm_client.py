"""The Messages client against the fake endpoint: retries, error shapes, usage tolerance."""

from __future__ import annotations

import pytest

from bot.llm import LLMError, MessagesClient, parse_usage

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 100,
        "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def client(model):
    slept: list[float] = []
    c = MessagesClient(model.url, model.api_key, max_retries=2, sleep=slept.append)
    c.slept = slept
    yield c
    c.close()


def test_headers_and_answer(client, model):
    model.reply = "hi there"
    done = client.create(BODY)
    assert done.text == "hi there" and done.usage.output_tokens > 0
    headers = model.requests[0]["headers"]
    assert headers["x-api-key"] == model.api_key
    assert headers["anthropic-version"] == "2023-06-01"


def test_retry_after_is_honoured(client, model):
    model.enqueue(429, headers={"retry-after": "7"})
    client.create(BODY)
    assert client.slept == [7.0]


def test_backoff_without_retry_after_and_gives_up(client, model):
    model.enqueue(500, times=5)
    with pytest.raises(LLMError) as err:
        client.create(BODY)
    assert err.value.kind == "server" and len(model.requests) == 3
    assert len(client.slept) == 2 and all(0 < s <= 8 for s in client.slept)


def test_x_should_retry_false_stops_retries(client, model):
    model.enqueue(529, headers={"x-should-retry": "false"})
    with pytest.raises(LLMError) as err:
        client.create(BODY)
    assert err.value.kind == "overloaded" and len(model.requests) == 1


def test_x_should_retry_true_retries_a_400(client, model):
    model.enqueue(400, headers={"x-should-retry": "true", "retry-after": "0"})
    assert client.create(BODY).text


def test_connection_drop_is_retried(client, model):
    model.enqueue(0, shape="drop")
    assert client.create(BODY).text
    assert len(client.slept) == 1


@pytest.mark.parametrize(
    ("status", "shape", "kind"),
    [(401, "anthropic", "auth"), (401, "openai", "auth"), (404, "anthropic", "not_found"),
     (403, "html", "permission"), (400, "openai", "bad_request"), (413, "anthropic", "too_large")],
)
def test_error_shapes(client, model, status, shape, kind):
    model.enqueue(status, shape=shape)
    with pytest.raises(LLMError) as err:
        client.create(BODY)
    assert err.value.kind == kind and err.value.status == status
    assert model.api_key not in str(err.value)


def test_usage_may_be_null_or_missing(client, model):
    for style in ("null", "missing"):
        model.usage_style = style
        done = client.create(BODY)
        assert done.usage.cache_read_tokens == 0 and done.usage.input_tokens > 0
    assert parse_usage(None).prompt_tokens == 0
    assert parse_usage({"input_tokens": None, "cache_read_input_tokens": 5}).prompt_tokens == 5


def test_unknown_model_works(client, model):
    done = client.create({**BODY, "model": "claude-sonnet-7-20290101"})
    assert done.model == "claude-sonnet-7-20290101"


def test_streaming_hands_over_text_and_usage_matches(client, model):
    model.reply = "Streaming works across several pieces of text."
    pieces: list[str] = []
    done = client.create(BODY, on_text=pieces.append)
    assert "".join(pieces) == done.text == model.reply
    assert len(pieces) >= 2
    plain = client.create(BODY)
    assert done.usage.input_tokens == plain.usage.input_tokens
    assert done.usage.output_tokens == plain.usage.output_tokens


def test_stream_error_midway_carries_the_partial_text(client, model):
    model.reply = "A long answer that will break in the middle of its second sentence."
    model.enqueue_stream_error("overloaded_error", after_chars=20)
    pieces: list[str] = []
    with pytest.raises(LLMError) as err:
        client.create(BODY, on_text=pieces.append)
    assert err.value.kind == "overloaded" and err.value.partial == "".join(pieces)
    assert len(model.requests) == 1  # text was already shown: not retried


def test_stream_http_error_before_text_is_retried(client, model):
    model.enqueue(529, headers={"retry-after": "0"})
    pieces: list[str] = []
    assert client.create(BODY, on_text=pieces.append).text == "".join(pieces)
