"""`python -m bot doctor` and `python -m bot inspect` against the Slack and Messages API fakes."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy.orm import sessionmaker

from bot.__main__ import main
from bot.config import Settings
from bot.doctor import FAIL, OK, doctor_main, manifest_scopes, run_doctor
from bot.inspect_thread import run_inspect
from bot.llm import parse_usage
from bot.pricing import cost, price_for
from bot.store.db import alembic_config, head_revision, make_engine
from bot.store.models import WorkspaceSettings
from bot.workspace import Choice
from tests.fakes.slack_api import FakeSlack
from tests.harness import SIGNING_SECRET, bot_env, make_settings

WRONG_KEY = "sk-wrong-key-0123456789"


class ScopedSlack(FakeSlack):
    """The Slack fake, plus the `x-oauth-scopes` header Slack sends with auth.test."""

    def __init__(self, scopes: list[str]) -> None:
        super().__init__()
        self.scopes = scopes

    def _handle_api(self, method: str, params: dict[str, Any], auth_header: str | None):
        status, headers, data = super()._handle_api(method, params, auth_header)
        if method == "auth.test" and data.get("ok"):
            headers = {**headers, "x-oauth-scopes": ",".join(self.scopes)}
        return status, headers, data


@pytest.fixture
def scoped_slack():
    with ScopedSlack(manifest_scopes()) as fake:
        fake.add_user("U1", "Alice Archer", "alice")
        fake.add_channel("C1", "general", members={"U1"})
        yield fake


def secrets_of(settings: Settings) -> list[str]:
    values = [SIGNING_SECRET, WRONG_KEY, settings.anthropic_api_key.get_secret_value()]
    if settings.slack_bot_token is not None:
        values.append(settings.slack_bot_token.get_secret_value())
    return values


def doctor(settings: Settings, *channels: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run_doctor(settings, channels=list(channels), out=out)
    text = out.getvalue()
    for secret in secrets_of(settings):
        assert secret not in text
    return code, text


def inspect(settings: Settings, link: str, *, send: bool = False, **kw: Any) -> tuple[int, str]:
    out = io.StringIO()
    code = run_inspect(settings, link, send=send, out=out, **kw)
    text = out.getvalue()
    for secret in secrets_of(settings):
        assert secret not in text
    return code, text


def link_to(channel: str, ts: str, thread_ts: str | None = None) -> str:
    url = f"https://acme.slack.com/archives/{channel}/p{ts.replace('.', '')}"
    return f"{url}?thread_ts={thread_ts}&cid={channel}" if thread_ts else url


def long_text(i: int) -> str:
    return (
        f"Message {i}: we looked at the rollout plan again, the canary in eu-west looked "
        f"healthy, latency p99 stayed under 180 ms and nobody saw errors in batch {i}."
    )


# -- doctor -----------------------------------------------------------------------------------


def test_everything_works_on_the_fakes(scoped_slack, model, database_url, engine):
    settings = make_settings(scoped_slack, model, database_url)
    code, text = doctor(settings, "C1")
    assert code == 0, text
    assert FAIL not in text
    for check in (
        "settings parse",
        "database:",
        "Slack token valid",
        "Slack scopes: all 14",
        "channel #general (C1)",
        "Messages endpoint:",
        "prompt caching works",
    ):
        assert re.search(rf"^{OK} {re.escape(check)}", text, re.M), (check, text)
    assert f"at the latest migration ({head_revision(engine)})" in text
    # one tiny call, then two identical calls over the cache floor; each with max_tokens 1
    bodies = [r["body"] for r in model.requests]
    assert len(bodies) == 3 and all(b["max_tokens"] == 1 for b in bodies)
    assert bodies[1] == bodies[2]
    assert model.usages[1]["cache_creation_input_tokens"] > 1024
    assert (
        model.usages[2]["cache_read_input_tokens"] == model.usages[1]["cache_creation_input_tokens"]
    )
    price = price_for("claude-sonnet-4-5")
    spent = sum(cost(parse_usage(u), price) for u in model.usages)
    assert f"spent: ${spent:,.4f} on 3 model calls" in text
    assert spent < 0.05


def test_scopes_unreadable_from_the_plain_fake_do_not_fail(slack, model, database_url, engine):
    code, text = doctor(make_settings(slack, model, database_url))
    assert code == 0, text
    assert "could not read granted scopes" in text
    assert FAIL not in text


def test_a_missing_scope_fails_with_the_fix(model, database_url, engine):
    with ScopedSlack([s for s in manifest_scopes() if s != "users:read"]) as fake:
        code, text = doctor(make_settings(fake, model, database_url))
    assert code == 1
    assert f"{FAIL} Slack scopes: missing users:read" in text
    assert "reinstall" in text


def test_endpoint_that_does_not_cache(slack, model, database_url, engine):
    model.caching = False
    code, text = doctor(make_settings(slack, model, database_url))
    assert code == 1
    assert f"{FAIL} prompt caching: the endpoint does not cache" in text
    assert "10× more than with caching: $0.3000 per 100k-token thread turn" in text
    assert "fix: use an endpoint" in text
    assert "spent: $" in text and "1 check(s) failed" in text


def test_bad_api_key(slack, model, database_url, engine):
    settings = make_settings(slack, model, database_url, anthropic_api_key=WRONG_KEY)
    code, text = doctor(settings)
    assert code == 1
    assert f"{FAIL} Messages endpoint: the endpoint rejected ANTHROPIC_API_KEY" in text
    assert "fix: set ANTHROPIC_API_KEY" in text
    assert "prompt caching: not tested" in text
    assert len(model.requests) == 1  # no caching probe after a failed check
    assert "spent: $0 (no model calls)" in text


def test_unknown_model(slack, model, database_url, engine):
    model.reject_models = {"claude-sonnet-4-5"}
    code, text = doctor(make_settings(slack, model, database_url))
    assert code == 1
    assert "does not know model claude-sonnet-4-5" in text
    assert "fix: set ANTHROPIC_MODEL" in text


def test_database_at_an_old_revision(slack, model, database_url):
    eng = make_engine(database_url)
    command.upgrade(alembic_config(eng), "0003")
    eng.dispose()
    code, text = doctor(make_settings(slack, model, database_url))
    assert code == 1
    assert f"is at migration 0003, the code needs {head_revision(eng)}" in text
    assert "fix: run `python -m bot migrate`" in text


def test_database_without_schema(slack, model, database_url):
    code, text = doctor(make_settings(slack, model, database_url))
    assert code == 1
    assert "has no schema yet" in text


@pytest.mark.parametrize(
    "url",
    ["sqlite:///{tmp}/no/such/dir/bot.db", "postgresql://bot:pw-s3cret-value@127.0.0.1:1/bot"],
)
def test_database_unreachable(slack, model, tmp_path, url):
    settings = make_settings(slack, model, url.format(tmp=tmp_path))
    code, text = doctor(settings)
    assert code == 1
    assert f"{FAIL} database: cannot connect to" in text
    assert "fix: check DATABASE_URL" in text
    assert "pw-s3cret-value" not in text


def test_heroku_style_postgres_scheme_is_read_as_postgresql(slack, model):
    settings = make_settings(slack, model, "postgres://u:hunter2-secret@127.0.0.1:1/d1")
    code, text = doctor(settings)
    assert code == 1
    assert f"{FAIL} database: cannot connect to postgresql://u:***@127.0.0.1:1/d1" in text
    assert "hunter2-secret" not in text


def test_doctor_and_migrate_agree_on_a_postgres_scheme_url(slack, model, database_url, tmp_path):
    """The URL Heroku sets: `bot migrate` migrates it and the doctor then finds it current."""
    if not database_url.startswith("postgresql://"):
        pytest.skip("PostgreSQL only: the scheme names PostgreSQL")
    heroku_url = "postgres://" + database_url.removeprefix("postgresql://")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "ANTHROPIC_"))}
    env.update(
        SLACK_BOT_TOKEN="xoxb-migrate", ANTHROPIC_API_KEY="sk-migrate", DATABASE_URL=heroku_url
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bot", "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    code, text = doctor(make_settings(slack, model, heroku_url))
    assert f"{OK} database: postgresql://" in text and "at the latest migration" in text
    assert code == 0, text


def test_channel_membership(slack, model, database_url, engine):
    slack.add_channel("C2", "random", members={"U1"}, bot_member=False)
    code, text = doctor(make_settings(slack, model, database_url), "C1", "C2", "C404")
    assert code == 1
    assert f"{OK} channel #general (C1): the bot is a member" in text
    assert f"{FAIL} channel #random (C2): the bot is not a member" in text
    assert "fix: /invite @bot in #random" in text
    assert f"{FAIL} channel C404: the bot cannot see it" in text


def test_rejected_slack_token(slack, model, database_url, engine):
    settings = make_settings(slack, model, database_url, slack_bot_token="xoxb-not-the-token")
    code, text = doctor(settings, "C1")
    assert code == 1
    assert f"{FAIL} Slack token: auth.test answered `invalid_auth`" in text
    assert "fix: copy the Bot User OAuth Token" in text
    assert "xoxb-not-the-token" not in text
    assert "#general" not in text  # channel checks need a working token


def test_http_mode_needs_a_signing_secret(slack, model, database_url, engine):
    settings = make_settings(slack, model, database_url, slack_signing_secret="")
    code, text = doctor(settings)
    assert code == 1
    assert f"{FAIL} settings: SLACK_SIGNING_SECRET is required in HTTP mode" in text


def test_settings_that_do_not_parse():
    out = io.StringIO()
    code = doctor_main([], out, env={"SLACK_BOT_TOKEN": "xoxb-abc"}, env_file=None)
    assert code == 2
    assert out.getvalue().startswith(f"{FAIL} settings: ANTHROPIC_API_KEY is required")


def test_cache_ttl_off_skips_the_probe(slack, model, database_url, engine):
    code, text = doctor(make_settings(slack, model, database_url, cache_ttl="off"))
    assert code == 0, text
    assert "CACHE_TTL=off" in text
    assert len(model.requests) == 1


def test_cli_doctor_reads_the_environment(
    slack, model, database_url, engine, monkeypatch, capsys, tmp_path
):
    monkeypatch.chdir(tmp_path)  # no .env here
    for key, value in bot_env(slack, model, database_url).items():
        monkeypatch.setenv(key, value)
    assert main(["doctor", "--channel", "C1"]) == 0
    text = capsys.readouterr().out
    assert "channel #general (C1)" in text and "all 6 checks passed" in text
    assert model.api_key not in text and slack.bot_token not in text


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_is_a_dry_run_with_breakpoints_and_costs(slack, model, database_url, engine):
    parent = slack.add_thread("C1", 30, text_fn=long_text)
    code, text = inspect(make_settings(slack, model, database_url), link_to("C1", parent))
    assert code == 0, text
    assert model.requests == []  # no model call
    assert "Transcript (31 blocks" in text
    assert "[2023-11-14 22:13 UTC] alice: Message 0: we looked at the rollout" in text
    assert re.search(r"^  #30 +◆ 5m ", text, re.M)  # the breakpoint, in place
    assert "block 30: end of transcript (write, ttl 5m)" in text
    assert "TTL: 5m (CACHE_TTL=auto chooses per thread" in text
    assert re.search(r"cold \(prefix written at 1\.25×\): +\$0\.\d{4}", text)
    assert re.search(r"warm \(prefix read at 0\.1×\): +\$0\.\d{4}", text)
    assert "Request: summarize   ← not cached" in text
    assert "Dry run" in text


def test_inspect_truncates_each_block(slack, model, database_url, engine):
    parent = slack.add_thread("C1", 3, text_fn=lambda i: f"line {i} " + "x" * 500)
    _, text = inspect(make_settings(slack, model, database_url), link_to("C1", parent), preview=60)
    assert "… (+" in text
    assert "x" * 100 not in text


def test_inspect_send_makes_exactly_one_call(slack, model, database_url, engine):
    parent = slack.add_thread("C1", 30, text_fn=long_text)
    settings = make_settings(slack, model, database_url)
    code, text = inspect(settings, link_to("C1", parent), send=True)
    assert code == 0, text
    assert len(model.requests) == 1
    usage = model.usages[0]
    assert f"{usage['cache_creation_input_tokens']:,} written" in text
    assert "cached for follow-ups" in text  # the footer the bot would post
    assert slack.posts == []  # nothing posted to Slack


def test_inspect_rebuilds_a_mention_exactly_as_the_bot_sent_it(bot, slack, model, database_url):
    parent = slack.add_thread("C1", 30, text_fn=long_text)
    ts, _ = bot.mention("C1", "what did we decide?", thread_ts=parent)
    assert len(model.requests) == 1
    settings = make_settings(slack, model, database_url)
    code, text = inspect(settings, link_to("C1", ts, parent), send=True)
    assert code == 0, text
    assert "the mention at" in text and "“what did we decide?”" in text
    sent = {k: v for k, v in model.requests[0]["body"].items() if k != "stream"}
    assert model.requests[1]["body"] == sent  # the same request; the bot streams its answer

    # the whole thread now: the bot's cache write is read back, then a new one is written
    code, text = inspect(settings, link_to("C1", parent))
    assert code == 0, text
    assert "alive" in text
    # (a quick second request on a thread whose prefix dwarfs its new messages: the
    # arithmetic may write them for an hour, which keeps the whole prefix an hour)
    assert re.search(r"previous cache write \(read, ttl (5m|1h)\)", text)
    assert re.search(r"end of transcript \(write, ttl (5m|1h)\)", text)
    assert "You (assistant): Fake reply" in text
    assert len(model.requests) == 2


def test_inspect_applies_the_workspace_settings_like_the_bot(make_bot, slack, model, database_url):
    bot = make_bot(workspace_models="claude-haiku-4-5")
    bot.app.service.workspaces.save(
        "T0001", None, Choice(model="claude-haiku-4-5", language="Español"), "UADM",
        datetime.now(UTC),
    )
    parent = slack.add_thread("C1", 30, text_fn=long_text)
    ts, _ = bot.mention("C1", "what did we decide?", thread_ts=parent)
    settings = make_settings(slack, model, database_url, workspace_models="claude-haiku-4-5")
    code, text = inspect(settings, link_to("C1", ts, parent), send=True)
    assert code == 0, text
    sent = {k: v for k, v in model.requests[0]["body"].items() if k != "stream"}
    assert sent["model"] == "claude-haiku-4-5" and "(Answer in Español.)" in str(sent)
    assert model.requests[1]["body"] == sent


@pytest.mark.parametrize(
    ("gap", "ttl", "requests"), [(25 * 60, "1h", 4), (86_400, "5m", 6)], ids=["1h", "idle"]
)
def test_inspect_shows_the_ttl_the_bot_chooses_and_then_sends(
    make_bot, slack, model, database_url, engine, gap, ttl, requests
):
    # CACHE_TTL=auto: the bot's clock runs `requests` gaps behind the wall clock that inspect
    # reads, so inspect comes one more gap after the bot's last answer
    clock = {"now": time.time() - requests * gap}
    model.now = clock["now"]
    # no kept transcripts: no keep-alive (whose jobs this clock never runs) to count on, so
    # the policy writes for an hour itself where that pays
    with sessionmaker(engine).begin() as s:
        s.add(WorkspaceSettings(team_id=slack.team_id, keep_transcripts=False))
    bot = make_bot(clock=lambda: clock["now"])
    parent = slack.add_thread("C1", 60, text_fn=long_text)
    for turn in range(requests):
        bot.mention("C1", f"status {turn}?", thread_ts=parent)
        clock["now"] += gap
        model.now = clock["now"]
    last = str(model.requests[-1]["body"])  # the rhythm is established
    assert "cache_control" in last and (ttl == "5m" or ttl in last)  # 5m: Anthropic's default
    settings = make_settings(slack, model, database_url)
    code, text = inspect(settings, link_to("C1", parent), send=True)
    assert code == 0, text
    assert f"TTL: {ttl or 'none'} (CACHE_TTL=auto chooses per thread from its rhythm" in text
    # why: the next request expected (the workspace's habit, the thread's gaps), what stays
    # readable, and the expected costs compared, the chosen one the lowest
    why = re.search(
        r"expected within 5 min (\d+)%, within 1 h (\d+)%.*in base-price tokens: "
        r"none ([\d,]+), 5m ([\d,]+), 1h ([\d,]+)[;)]",
        text,
    )
    assert why, text
    q5, q1 = int(why[1]), int(why[2])
    costs = {k: int(why[i].replace(",", "")) for i, k in ((3, "none"), (4, "5m"), (5, "1h"))}
    if ttl == "1h":
        assert min(costs, key=lambda k: costs[k]) == "1h" and q1 > 60
    else:  # an idle thread: not writing costs least, but the quick-follow-up promise writes 5m
        assert min(costs, key=lambda k: costs[k]) == "none" and q5 < 10
        assert "a follow-up within 5 minutes must read its prefix from cache" in text
    assert f"of {requests} earlier gaps" in text  # the one before this request too
    # a thread counts once an hour has passed since its last request: then every request
    # but its last was followed
    counted = f"{requests - 1} of {requests}" if gap > 3600 else "0 of 0"
    assert f"({counted} of the workspace's requests were)" in text
    assert (f"end of transcript (write, ttl {ttl})" in text) == (ttl is not None)
    shown = model.requests[-1]["body"]["messages"][0]["content"]

    clock["now"] = time.time()
    model.now = clock["now"]
    bot.mention("C1", "summarize", thread_ts=parent)
    sent = model.requests[-1]["body"]["messages"][0]["content"]
    assert sent[:-1] == shown[:-1]  # the same transcript with the same breakpoints and TTLs
    assert ("cache_control" in sent[-2]) == (ttl is not None)
    assert sent[-2].get("cache_control", {}).get("ttl", "5m" if ttl else None) == ttl


def test_inspect_reuses_the_compaction_the_bot_stored(make_bot, slack, model, database_url):
    parent = slack.add_thread("C1", 600, text_fn=long_text)
    settings = make_settings(slack, model, database_url, context_budget_tokens=10000)
    code, text = inspect(settings, link_to("C1", parent))
    assert code == 0, text
    assert "the bot would first fold messages 1..499 into a summary" in text
    bot = make_bot(context_budget_tokens=10000)
    ts, _ = bot.mention("C1", "what did we decide?", thread_ts=parent)
    sent = model.requests[-1]["body"]["messages"][0]["content"]
    assert sent[1]["text"].startswith("[Summary of the 499 messages")
    code, text = inspect(settings, link_to("C1", ts, parent), send=True)
    assert code == 0, text
    assert "Compaction: messages 1..499 are replaced by the stored summary" in text
    assert model.requests[-1]["body"]["messages"][0]["content"][:2] == sent[:2]


def test_inspect_refuses_what_it_cannot_read(slack, model, database_url, engine):
    settings = make_settings(slack, model, database_url)
    assert inspect(settings, "https://example.com/not-a-link")[0] == 2
    slack.add_channel("C2", "random", members={"U1"}, bot_member=False)
    parent = slack.add_message("C2", "hello")
    code, text = inspect(settings, link_to("C2", parent))
    assert code == 1
    assert "not_in_channel" in text and "/invite" in text
    assert model.requests == []


def test_inspect_takes_a_transcript_kept_from_events_without_reading_slack(
    make_bot, slack, model, database_url, engine
):
    import time

    bot = make_bot()  # the real clock: inspect runs on it too
    bot.app.start_receiving()
    slack.now = time.time() + 10  # the messages come after the bot began receiving
    first = slack.post_event("C1", "Parent: ship the exporter", user="U1")
    bot.deliver(first)
    for i in range(1, 6):
        bot.deliver(slack.post_event("C1", f"Reply {i}: agreed", user="U2", thread_ts=first["ts"]))
    before = len(slack.calls_to("conversations.replies"))
    code, text = inspect(make_settings(slack, model, database_url), link_to("C1", first["ts"]))
    assert code == 0, text
    assert "Kept transcript: complete from events (6 messages, no Slack read)" in text
    assert len(slack.calls_to("conversations.replies")) == before
    assert "Reply 5: agreed" in text


def test_inspect_says_what_a_kept_transcript_may_miss(make_bot, slack, model, database_url):
    parent = slack.add_thread("C1", 3)  # before the bot: nothing kept
    code, text = inspect(make_settings(slack, model, database_url), link_to("C1", parent))
    assert code == 0, text
    assert "Kept transcript: none for this conversation" in text
