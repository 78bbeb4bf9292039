"""Command line: `python -m bot [serve|migrate|housekeeping|doctor|inspect|config-docs]`.

The only module that configures logging.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from bot.config import Settings, SettingsError, load_settings

log = logging.getLogger("bot")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request URL at INFO; keep that at WARNING.
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
    from bot.store.db import make_engine, make_session_factory

    engine = make_engine(settings.database_url)
    try:
        run_housekeeping(make_session_factory(engine), settings, datetime.now(UTC))
    finally:
        engine.dispose()


def _digest(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bot.app import create_app
    from bot.digest import period_label, render_text

    try:
        now = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
    except ValueError:
        print(
            f"digest: --at wants an ISO 8601 time like 2025-03-15T09:00Z, not {args.at!r}",
            file=sys.stderr,
        )
        return 2
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    _migrate(settings)
    app = create_app(settings)
    try:
        try:
            period = app.usage.posting_period(args.period, now)
        except ValueError as exc:
            print(f"digest: {exc}", file=sys.stderr)
            return 2
        teams = [args.team] if args.team else app.team_ids()
        channel = args.channel or settings.digest_channel
        if args.post and not args.dry_run and not channel:
            print("digest: --post needs --channel or DIGEST_CHANNEL", file=sys.stderr)
            return 2
        for team_id in teams:
            if args.post and not args.dry_run:
                assert channel is not None
                result = app.usage.post_digest(team_id, channel, period)
                print(f"{team_id}: {result} ({period_label(period)}, {period.zone})")
            else:
                print(render_text(app.usage.build(team_id, period, viewer=None)))
        return 0
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


def _serve(settings: Settings) -> None:
    from slack_bolt.error import BoltError
    from slack_sdk.errors import SlackClientError

    from bot.app import create_app
    from bot.housekeeping import Housekeeper
    from bot.installations import check_token_encryption

    settings.require_http()
    check_token_encryption(settings)
    _migrate(settings)
    try:
        app = create_app(settings)  # checks the bot token with auth.test
    except (BoltError, SlackClientError, OSError) as exc:  # OSError: Slack unreachable
        cause = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SettingsError(
            f"Slack rejected SLACK_BOT_TOKEN or could not be reached at SLACK_API_URL "
            f"({settings.slack_api_url}): {cause}"
        ) from None
    housekeeper = Housekeeper(app.sessions, settings)
    housekeeper.start()
    scheduler = None
    if settings.digest_schedule and settings.digest_channel:
        from bot.usage import DigestScheduler

        scheduler = DigestScheduler(app.usage, app.team_ids, settings.digest_channel)
        scheduler.start()
    app.start()
    stop: list[Callable[[], None]] = []

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: no new work; finishing what is in hand", signal.Signals(signum).name)
        for fn in stop:
            fn()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if settings.socket_mode:
            from slack_bolt.adapter.socket_mode import SocketModeHandler

            assert settings.slack_app_token is not None
            handler = SocketModeHandler(app.bolt, settings.slack_app_token.get_secret_value())
            stop.append(handler.close)
            log.info("starting in Socket Mode")
            handler.connect()
            closed = threading.Event()
            stop.append(closed.set)
            closed.wait()
        else:
            import waitress

            server = waitress.create_server(
                app.wsgi(),
                host="0.0.0.0",
                port=settings.port,
                threads=settings.http_threads,
                ident="bot",
            )
            stop.append(server.close)
            log.info(
                "serving HTTP on port %s (POST /slack/events, GET /healthz, GET /metrics)",
                server.effective_port,
            )
            try:
                server.run()
            except OSError:
                pass  # the listening socket was closed by the signal handler
    finally:
        housekeeper.stop()
        if scheduler is not None:
            scheduler.stop()
        app.close(timeout=settings.shutdown_timeout_seconds)
        log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bot` console script and `python -m bot`."""
    parser = argparse.ArgumentParser(prog="bot", description="Slack thread bot with prompt caching")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="migrate the database, then serve (default)")
    sub.add_parser("migrate", help="upgrade the database to the latest schema and exit")
    sub.add_parser("rotate-key", help="re-encrypt stored tokens with the first ENCRYPTION_KEY")
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
    sub.add_parser(
        "housekeeping",
        help="delete finished jobs older than 2 days, stored thread text and summaries past "
        "MESSAGE_RETENTION_DAYS and usage ledger rows past USAGE_RETENTION_DAYS, then exit "
        "(serve does this hourly)",
    )
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
    sub.add_parser("config-docs", help="print docs/CONFIG.md (every setting) to stdout")
    args = parser.parse_args(argv)
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
    _configure_logging(settings.log_level)
    try:
        if args.command == "migrate":
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
        else:
            _serve(settings)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"database error: {type(exc).__name__}: {cause}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
