"""The HTTP surface: health, body limits, malformed requests."""

from __future__ import annotations

import json

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
