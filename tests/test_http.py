"""The HTTP surface: health, body limits, malformed requests."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import httpx
import pytest
import waitress

from bot.server import stop_server
from tests.harness import Bot


def test_healthz_ok(bot: Bot):
    resp = bot.http.get("/healthz")
    assert resp.status_code == 200 and resp.text == "ok"


def test_healthz_503_when_database_is_down(make_bot):
    bot = make_bot(database_url="postgresql://postgres@127.0.0.1:1/nowhere")
    resp = bot.http.get("/healthz")
    assert resp.status_code == 503


def test_oversized_body_is_rejected(bot: Bot):
    resp = bot.signed_post(b"x" * 2_000_000, "application/json")
    assert resp.status_code == 413


def test_url_verification_challenge(bot: Bot):
    body = json.dumps({"type": "url_verification", "challenge": "abc123", "token": "t"}).encode()
    resp = bot.signed_post(body, "application/json")
    assert resp.status_code == 200 and "abc123" in resp.text


def test_unknown_path_is_404(bot: Bot):
    assert bot.http.get("/nope").status_code == 404


def test_malformed_bodies_get_400_without_traceback(bot: Bot, caplog):
    cases = [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"payload=%7Bbad", "application/x-www-form-urlencoded"),
        (b"\xff\xfe", "application/json"),
        (b"", "application/json"),
    ]
    for body, ctype in cases:
        resp = bot.signed_post(body, ctype)
        assert resp.status_code == 400, (body, resp.text)
        assert "Traceback" not in resp.text
    assert "Traceback" not in caplog.text


def test_event_the_bot_subscribes_to_but_ignores_gets_200(bot: Bot):
    resp = bot.event({"type": "message", "channel": "C1", "user": "U1", "text": "hi",
                      "ts": "1700000000.000100", "channel_type": "channel"})
    assert resp.status_code == 200


def test_metrics_endpoint(bot: Bot, slack, model):
    parent = slack.add_thread("C1", 40, text_fn=lambda i: f"message {i} " * 12)
    bot.mention("C1", "summarize", thread_ts=parent)
    bot.mention("C1", "again", thread_ts=parent)
    text = bot.http.get("/metrics").text
    assert 'bot_jobs_total{kind="mention",outcome="done"} 2.0' in text
    assert 'bot_http_requests_total{status="200"} 2.0' in text
    assert "bot_queue_depth 0.0" in text
    ratio = float(text.split("\nbot_cache_hit_ratio ")[1].split()[0])
    assert 0.3 < ratio < 1
    assert 'bot_prompt_tokens_total{part="read"}' in text
    assert "bot_ack_seconds_bucket" in text


def test_a_closed_bot_leaves_no_http_threads_behind(make_bot):
    """Closing the bot's waitress server stops its worker threads too: `close()` alone leaves
    them waiting for work, each holding what it served (a test run kept a thousand)."""
    bot = make_bot()
    assert bot.signed_post(b'{"type":"url_verification","challenge":"c"}',
                           "application/json").status_code == 200
    workers = list(bot.server.task_dispatcher.threads)
    assert workers, "the request was served by waitress's worker threads"
    names = {t.name for t in threading.enumerate()}
    bot.close()
    alive = {t.name for t in threading.enumerate()}
    assert not bot.server.task_dispatcher.threads
    assert not [n for n in names if n.startswith("waitress-") and n in alive]


def test_a_request_in_hand_when_the_server_stops_gets_its_answer(caplog):
    """Stopping (SIGTERM, or a test's close) while a request is being served: the request
    finishes and its answer is sent, nothing is logged as an exception, and the server's
    poll loop ends. waitress's own `close()` shut the loop's wake-up pipe first: the request
    then logged EBADF and its answer never left."""
    started, release = threading.Event(), threading.Event()

    def app(environ: dict, start_response: Any) -> list[bytes]:
        started.set()
        assert release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    shutdown = server.task_dispatcher.shutdown

    def finish_when_stopping(**kw: Any) -> bool:  # the request ends while the server stops
        release.set()
        return shutdown(**kw)

    server.task_dispatcher.shutdown = finish_when_stopping

    def serve() -> None:
        try:
            server.run()
        except OSError:  # the sockets closed under the poll loop: it is stopping (as in serve)
            pass

    loop = threading.Thread(target=serve)
    loop.start()
    answers: list[httpx.Response] = []
    url = f"http://127.0.0.1:{server.effective_port}/"
    client = threading.Thread(target=lambda: answers.append(httpx.get(url, timeout=10)))
    client.start()
    assert started.wait(10), "the request is in hand"
    with caplog.at_level(logging.INFO):
        stop_server(server)
        client.join(15)
        loop.join(15)
    assert [(a.status_code, a.text) for a in answers] == [(200, "done")]
    assert not loop.is_alive(), "the poll loop ended"
    assert "Exception" not in caplog.text and "Bad file descriptor" not in caplog.text
    with pytest.raises(httpx.ConnectError):  # and it takes no new connection
        httpx.get(url, timeout=5)
    stop_server(server)  # twice is harmless
