"""Engines, sessions and migrations."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent.parent
# An installed package carries the migrations as bot/migrations (see pyproject.toml); a checkout
# has them at its top, next to bot/.
MIGRATIONS_DIR = next(
    (d for d in (_PACKAGE / "migrations", _PACKAGE.parent / "migrations") if d.is_dir()),
    _PACKAGE / "migrations",
)
# Arbitrary constant: the PostgreSQL advisory lock that serialises migrations across processes.
_MIGRATION_LOCK_ID = 74_211_903
# A pooled PostgreSQL connection idle this long is checked with a round trip before it is used.
PING_AFTER_IDLE_SECONDS = 1.0


class SchemaError(Exception):
    """The database's schema is not one this code can use (none yet, or from a newer release);
    the message is one line saying what to do."""


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine for `url` (SQLAlchemy's spelling, as Settings.database_url gives it); SQLite
    gets WAL and one writer at a time; PostgreSQL a pool sized for every thread that may hold
    a connection at once."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False, "isolation_level": None},
            pool_size=pool_size,
            max_overflow=10,
            hide_parameters=True,  # a failed statement's parameters are message text
        )
        # One writer at a time, queued on a Python lock instead of SQLite's sleeping busy
        # handler (which adds up to 100 ms per retry under contention). Transactions are short:
        # no network call happens inside one.
        lock = threading.RLock()

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # noqa: ANN001
            lock.acquire()
            conn.info["bot_write_lock"] = True
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "commit")
        @event.listens_for(engine, "rollback")
        def _end(conn) -> None:  # noqa: ANN001
            if conn.info.pop("bot_write_lock", False):
                lock.release()

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # With WAL, NORMAL still survives a killed process; only an OS crash may lose the
            # last commits. FULL would fsync on every enqueue.
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # Deleted rows are overwritten with zeros, in their page and on the free list, so a
            # purged workspace's text is not left readable in the file (docs/SECURITY.md).
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(
        parsed, pool_size=pool_size, max_overflow=10, pool_use_lifo=True, hide_parameters=True
    )
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection is alive before handing it out, as `pool_pre_ping` does, but
    only when it has been idle for PING_AFTER_IDLE_SECONDS: connections die of idleness (server,
    proxy and NAT timeouts) and of server restarts, and a round trip per checkout is a third of
    an ack's database time. A connection the server dropped within that second is found out by
    the statement that uses it: SQLAlchemy then replaces every pooled connection, and callers
    that must not fail on it retry (JobQueue.enqueue)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record) -> None:  # noqa: ANN001
        record.info["bot_idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        since = record.info.get("bot_idle_since")  # None: a new connection, alive
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_conn, None):
                # The pool replaces this and every older connection, and tries again.
                raise InvalidatePoolError() from exc
            raise


def scrub_deleted(sessions: sessionmaker[Session]) -> None:
    """After deleting text: on SQLite, checkpoint the WAL into the database file and truncate it,
    since its frames still hold the pages as they were before the delete. PostgreSQL: nothing to
    do from here (docs/SECURITY.md says what its deletion does and does not guarantee)."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, Engine) or engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()  # autocommit at the driver: a checkpoint needs no transaction
    try:
        cur = raw.cursor()
        busy = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        cur.close()
    finally:
        raw.close()
    if busy:
        log.warning("WAL not truncated after a purge (a reader held it); the next purge retries")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose objects stay usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    """An Alembic config that migrates `engine`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade the database to head; safe when several processes start at once. Logs one line
    when it changed the schema, nothing when the database was already at head. SchemaError when
    a newer release migrated it (Alembic cannot go on from a revision it does not know)."""
    with _migration_lock(engine):
        before = current_revision(engine)
        _refuse_unknown(engine, before)
        command.upgrade(alembic_config(engine), "head")
        after = current_revision(engine)
    if after != before:
        log.info("database migrated from %s to revision %s", before or "an empty schema", after)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_schema(engine: Engine) -> None:
    """SchemaError unless the database is at the latest migration (for commands that use the
    tables but leave migrating to `migrate` and `serve`)."""
    current, head = current_revision(engine), head_revision(engine)
    if current == head:
        return
    if current is None:
        raise SchemaError("the database has no schema yet: run `python -m bot migrate` first")
    _refuse_unknown(engine, current)
    raise SchemaError(
        f"the database is at migration {current}, this code needs {head}: "
        "run `python -m bot migrate` first"
    )


def known_revision(engine: Engine, revision: str) -> bool:
    """True when `revision` is one of the migrations in migrations/."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine))
    try:
        return script.get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises for an unknown revision id
        return False


def _refuse_unknown(engine: Engine, current: str | None) -> None:
    if current is not None and not known_revision(engine, current):
        raise SchemaError(
            f"the database is at revision {current}, which this code does not know (latest "
            f"here: {head_revision(engine)}): deploy the release that migrated it, or restore "
            "the database"
        )


def head_revision(engine: Engine) -> str | None:
    """The newest revision in migrations/."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def ping(engine: Engine) -> bool:
    """True when the database answers a trivial query."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        log.warning("database ping failed: %s", type(exc).__name__)
        return False


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK_ID})
                conn.commit()
    elif backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(str(engine.url.database) + ".migrate.lock")
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield
