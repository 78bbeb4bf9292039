"""Command line: `python -m bot [serve|web|worker|migrate|housekeeping|doctor|inspect|…]`.

The only module that configures logging.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator

from sqlalchemy.exc import SQLAlchemyError

from bot.config import Settings, SettingsError, load_settings
from bot.server import ROLES, open_app, prepare, run
from bot.store.db import SchemaError

log = logging.getLogger("bot")


def _configure_logging(level: str) -> None:
    from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped

    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO; keep that at WARNING.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic announces its plugins and dialect at INFO on every start; bot.store.db says in one
    # line when a migration ran.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Bolt reads SLACK_BOT_TOKEN from the environment itself and warns that the client create_app
    # hands it wins over that token: the client holds the same token, so nothing is unused.
    unused = warning_client_prioritized_and_token_skipped()
    logging.getLogger("bot.bolt").addFilter(lambda record: record.getMessage() != unused)


@contextlib.contextmanager
def _silent() -> Iterator[None]:
    """Drop log records until logging is configured (Python would print warnings bare)."""
    root = logging.getLogger()
    null = logging.NullHandler()
    root.addHandler(null)
    try:
        yield
    finally:
        root.removeHandler(null)


def _migrate(settings: Settings) -> None:
    from bot.store.db import make_engine, migrate

    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def _housekeeping(settings: Settings) -> None:
    from datetime import UTC, datetime

    from bot.housekeeping import run_housekeeping
    from bot.store.db import make_engine, make_session_factory, require_schema

    engine = make_engine(settings.database_url)
    try:
        require_schema(engine)
        run_housekeeping(make_session_factory(engine), settings, datetime.now(UTC))
    finally:
        engine.dispose()


def _digest(settings: Settings, args: argparse.Namespace) -> int:
    """Print the digest, or post it once per period to every workspace (or --team): one line
    per workspace; exit 1 when any was not posted. Slack is checked before the database."""
    from datetime import UTC, datetime

    from bot.digest import period_label, render_text
    from bot.store.db import migrate
    from bot.usage import DigestNotPosted

    try:
        at = datetime.fromisoformat(args.at) if args.at else None
    except ValueError:
        print(
            f"digest: --at wants an ISO 8601 time like 2025-03-15T09:00Z, not {args.at!r}",
            file=sys.stderr,
        )
        return 2
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    post = args.post and not args.dry_run
    channel = args.channel or settings.digest_channel
    if post and not channel:
        print("digest: --post needs --channel or DIGEST_CHANNEL", file=sys.stderr)
        return 2
    app = open_app(settings)  # SettingsError when Slack refuses the token or is unreachable
    try:
        now = app.usage.now()
        if at is not None and at > now:
            print(f"digest: --at {args.at} is after now: that period is not over", file=sys.stderr)
            return 2
        try:
            period = app.usage.posting_period(args.period, at or now)
        except ValueError as exc:
            print(f"digest: {exc}", file=sys.stderr)
            return 2
        migrate(app.engine)
        label = f"{period_label(period)}, {period.zone}"
        failed = 0
        for team_id in [args.team] if args.team else app.team_ids():
            if not post:
                print(render_text(app.usage.build(team_id, period, viewer=None)))
                continue
            assert channel is not None
            try:
                result = app.usage.post_digest(team_id, channel, period)
            except DigestNotPosted as exc:
                failed += 1
                result = f"not posted: {exc}"
            print(f"{team_id}: {result} ({label})")
        return 1 if failed else 0
    finally:
        app.close()


def _rotate_key(settings: Settings) -> int:
    from bot.installations import EncryptedInstallationStore, TokenCipher
    from bot.store.db import make_engine

    if settings.encryption_key is None or not settings.slack_client_id:
        print("rotate-key needs ENCRYPTION_KEY and SLACK_CLIENT_ID (OAuth)", file=sys.stderr)
        return 2
    engine = make_engine(settings.database_url)
    try:
        cipher = TokenCipher(settings.encryption_key.get_secret_value())
        changed = EncryptedInstallationStore(settings.slack_client_id, engine, cipher).rotate_keys()
    finally:
        engine.dispose()
    log.info("re-encrypted the tokens of %d rows with the newest key", changed)
    return 0


def _add_digest(sub: argparse._SubParsersAction) -> None:
    digest = sub.add_parser("digest", help="the usage digest: print it, or post it once per period")
    digest.add_argument("--post", action="store_true", help="post to --channel or DIGEST_CHANNEL")
    digest.add_argument("--dry-run", action="store_true", help="print instead of posting")
    digest.add_argument("--channel", help="channel id (default DIGEST_CHANNEL)")
    digest.add_argument(
        "--period",
        help="e.g. 7d, 30d, 24h: whole days (hours) ending at the last midnight (full hour) of "
        "the digest's time zone (default: the last DIGEST_SCHEDULE week, else 7d)",
    )
    digest.add_argument(
        "--at",
        help="count the period back from this moment instead of now (ISO 8601, UTC unless it "
        "has an offset, e.g. 2025-03-15T09:00), to post a period that was missed",
    )
    digest.add_argument("--team", help="workspace id (default: every workspace served)")


def _add_checks(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check settings, database, Slack, the Messages endpoint and prompt caching "
        "(spends a few cents)",
    )
    doctor.add_argument(
        "--channel",
        action="append",
        default=[],
        metavar="C123",
        help="also check that the bot is a member of this channel (repeatable)",
    )
    inspect = sub.add_parser(
        "inspect", help="dry run: show the request the bot would send for a thread, and its cost"
    )
    inspect.add_argument("link", help="a Slack message link (Copy link) of the thread")
    inspect.add_argument("--send", action="store_true", help="call the model once; show usage")
    inspect.add_argument(
        "--request",
        default="summarize",
        help="what is asked after the thread (default: %(default)s)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bot", description="Slack thread bot with prompt caching")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="migrate the database, then serve and run jobs (default)")
    sub.add_parser("web", help="serve Slack: ack and queue jobs, run none (PostgreSQL)")
    sub.add_parser("worker", help="run queued jobs; no Slack-facing HTTP (PostgreSQL)")
    sub.add_parser("migrate", help="upgrade the database to the latest schema and exit")
    sub.add_parser("rotate-key", help="re-encrypt stored tokens with the first ENCRYPTION_KEY")
    _add_digest(sub)
    sub.add_parser(
        "housekeeping",
        help="delete finished jobs older than 2 days, stored thread text and summaries past "
        "MESSAGE_RETENTION_DAYS and usage ledger rows past USAGE_RETENTION_DAYS, then exit "
        "(serve does this hourly)",
    )
    _add_checks(sub)
    sub.add_parser("config-docs", help="print docs/CONFIG.md (every setting) to stdout")
    return parser


def _run(args: argparse.Namespace, settings: Settings) -> int:
    """Run a command that needs settings (logging is configured here, after the checks)."""
    role = args.command or "serve"
    prepared = None
    if role in ROLES:
        with _silent():  # a failed check is one line, not the log records leading to it
            prepared = prepare(settings, role)
    _configure_logging(settings.log_level)
    if prepared is not None:
        run(prepared, settings)
    elif args.command == "migrate":
        _migrate(settings)
        log.info("database is at the latest schema")
    elif args.command == "housekeeping":
        _housekeeping(settings)
    elif args.command == "rotate-key":
        return _rotate_key(settings)
    elif args.command == "digest":
        return _digest(settings, args)
    elif args.command == "inspect":
        from bot.inspect_thread import run_inspect

        return run_inspect(
            settings, args.link, send=args.send, out=sys.stdout, request=args.request
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bot` console script and `python -m bot`."""
    args = _parser().parse_args(argv)
    if args.command == "config-docs":
        from bot.doctor import config_markdown

        sys.stdout.write(config_markdown())
        return 0
    if args.command == "doctor":
        from bot.doctor import doctor_main

        _configure_logging("WARNING")
        return doctor_main(args.channel, sys.stdout)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except SchemaError as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return 3
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"database error: {type(exc).__name__}: {cause}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
