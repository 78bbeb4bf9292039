"""Shared fixtures: real databases (SQLite file or PostgreSQL), fake Slack and Messages API
servers on loopback, and the bot itself served over HTTP by waitress."""

from __future__ import annotations

import contextlib
import graphlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot.app import create_app
from bot.config import Settings
from bot.store.db import make_engine, migrate
from tests import harness
from tests.fakes.messages_api import FakeMessagesAPI
from tests.fakes.slack_api import FakeSlack
from tests.harness import ENCRYPTION_KEY, Bot, BotProcess, make_settings

PG_URL_ENV = "TEST_DATABASE_URL"


@contextlib.contextmanager
def fresh_database(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: an SQLite file, or a schema of its own in the PostgreSQL database
    named by TEST_DATABASE_URL, created here and dropped on exit. Nothing the suite did not
    create is touched."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        yield f"sqlite:///{tmp_path / 'bot.db'}"
        return
    schema = f"bot_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        # Every connection of the test (the bot's, Alembic's, subprocesses') sees only its schema.
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        try:
            yield scoped.render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        admin.dispose()


@pytest.fixture
def database_url(tmp_path) -> Iterator[str]:
    with fresh_database(tmp_path) as url:
        yield url


class MigratedDatabases:
    """Databases at the latest migration for the `engine` fixture, with Alembic run once per
    session instead of once per test (0.10 s a test on SQLite, 0.17 s on PostgreSQL).

    SQLite: a file migrated once by `migrate`, copied to the test's path.
    PostgreSQL: schemas migrated by `migrate` (the first test that needs one runs it), handed to
    a test by renaming one to the test's fresh schema, and taken back afterwards by renaming it
    again and deleting its rows (alembic_version restored, sequences restarted), so the next
    test finds it as `migrate` left it. A schema whose tables, columns, indexes, constraints or
    sequences a test changed is not taken back: the test's own teardown drops it.

    Tests of migrating itself take `database_url` (an empty database) and run Alembic there."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._sqlite_template: Path | None = None
        self._pg_pool: list[str] = []  # emptied schemas at head, ready for the next test
        self._pg_admin: Engine | None = None  # on the database itself, no search_path
        self._pg_as_migrated: _SchemaSnapshot | None = None

    def provide(self, database_url: str) -> None:
        """Bring the fresh, empty database at `database_url` to the latest migration."""
        url = make_url(database_url)
        if url.get_backend_name() == "sqlite":
            path = Path(str(url.database))
            assert not path.exists(), path
            shutil.copyfile(self._template(), path)
            return
        schema = _search_path(url)
        if not self._pg_pool:
            eng = make_engine(database_url)
            try:
                migrate(eng)
            finally:
                eng.dispose()
            if self._pg_as_migrated is None:
                self._pg_admin = make_engine(_admin_url(url), pool_size=1)
                with self._pg_admin.connect() as conn:
                    self._pg_as_migrated = _SchemaSnapshot.take(conn, schema)
            return
        pooled = self._pg_pool.pop()
        assert self._pg_admin is not None
        with self._pg_admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}"'))  # empty: nothing cascades
            conn.execute(text(f'ALTER SCHEMA "{pooled}" RENAME TO "{schema}"'))

    def take_back(self, database_url: str) -> None:
        """After the test (its engines closed): keep its schema for the next test when the test
        left the schema's definition as `migrate` made it; else leave it to be dropped."""
        url = make_url(database_url)
        snapshot, admin = self._pg_as_migrated, self._pg_admin
        if url.get_backend_name() != "postgresql" or snapshot is None or not snapshot.poolable:
            return
        assert admin is not None
        schema = _search_path(url)
        pooled = f"bot_pool_{os.getpid()}_{uuid.uuid4().hex[:12]}"
        try:
            with admin.connect() as conn, conn.begin() as transaction:
                # Wait for (and then keep out) anything still using the tables; past the
                # timeout the schema is not reused and the teardown's DROP waits as before.
                conn.execute(text("SET LOCAL lock_timeout = '10s'"))
                tables = ", ".join(f'"{schema}"."{t}"' for t in snapshot.tables)
                conn.execute(text(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE"))
                if _SchemaSnapshot.definition_of(conn, schema) != snapshot.definition:
                    transaction.rollback()
                    return
                conn.execute(text(f'ALTER SCHEMA "{schema}" RENAME TO "{pooled}"'))
                for statement in snapshot.reset_statements(pooled):
                    conn.execute(text(statement))
        except DBAPIError:
            # lock_timeout (a connection of the test still in use), a table the test dropped:
            # the schema is not reused
            return
        self._pg_pool.append(pooled)

    def close(self) -> None:
        if self._pg_admin is None:
            return
        with self._pg_admin.begin() as conn:
            for schema in self._pg_pool:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self._pg_pool.clear()
        self._pg_admin.dispose()

    def _template(self) -> Path:
        if self._sqlite_template is None:
            path = self._tmp / "migrated.db"
            eng = make_engine(f"sqlite:///{path}")
            try:
                migrate(eng)
                raw = eng.raw_connection()  # the WAL's pages into the file: the copy is whole
                try:
                    busy = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    raw.close()
                assert busy == 0
            finally:
                eng.dispose()
            wal = Path(f"{path}-wal")
            assert not wal.exists() or wal.stat().st_size == 0
            self._sqlite_template = path
        return self._sqlite_template


def _search_path(url: Any) -> str:
    options = str(url.query["options"])
    assert options.startswith("-csearch_path="), options
    return options.removeprefix("-csearch_path=")


def _admin_url(url: Any) -> str:
    return url.difference_update_query(["options"]).render_as_string(hide_password=False)


class _SchemaSnapshot:
    """What `migrate` left in a PostgreSQL schema: its definition (compared after each test),
    its tables in an order rows can be deleted in, its sequences and its Alembic revision."""

    def __init__(
        self,
        definition: list[tuple[str, ...]],
        tables: list[str],
        sequences: list[tuple[str, int]],
        revision: str | None,
        rows: int,
    ) -> None:
        self.definition = definition
        self.tables = tables
        self.sequences = sequences
        self.revision = revision
        # Schemas are reused only when `migrate` leaves no rows but its revision, which the
        # reset restores; otherwise every test migrates its own schema.
        self.poolable = rows == 0 and revision is not None

    @staticmethod
    def definition_of(conn: Any, schema: str) -> list[tuple[str, ...]]:
        rows = conn.execute(text(_DEFINITION_SQL), {"s": schema}).all()
        return [tuple(str(v) for v in row) for row in rows]

    @classmethod
    def take(cls, conn: Any, schema: str) -> _SchemaSnapshot:
        s = {"s": schema}
        definition = cls.definition_of(conn, schema)
        tables = [r[0] for r in conn.execute(text(_TABLES_SQL), s).all()]
        edges = conn.execute(text(_FOREIGN_KEYS_SQL), s).all()
        order = graphlib.TopologicalSorter({t: set() for t in tables})
        for child, parent in edges:
            if child != parent:
                order.add(parent, child)  # a referencing table's rows go first
        seqs = [(r[0], int(r[1])) for r in conn.execute(text(_SEQUENCES_SQL), s).all()]
        revision = None
        rows = 0
        for table in tables:
            q = f'SELECT count(*) FROM "{schema}"."{table}"'
            n = conn.execute(text(q)).scalar_one()
            if table == "alembic_version":
                revision = conn.execute(
                    text(f'SELECT version_num FROM "{schema}"."alembic_version"')
                ).scalar_one_or_none()
                rows += max(0, n - 1)
            else:
                rows += n
        return cls(definition, list(order.static_order()), seqs, revision, rows)

    def reset_statements(self, schema: str) -> list[str]:
        out = [f'DELETE FROM "{schema}"."{t}"' for t in self.tables]
        out.append(
            f"INSERT INTO \"{schema}\".alembic_version (version_num) VALUES ('{self.revision}')"
        )
        out += [f"SELECT setval('\"{schema}\".\"{n}\"', {v}, false)" for n, v in self.sequences]
        return out


# Everything about a schema's definition a test could change: relations, columns, indexes,
# constraints, triggers, functions and types (names only: the schema's own name is left out).
_DEFINITION_SQL = """
SELECT 'class', c.relname, c.relkind::text, '' FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s
UNION ALL
SELECT 'column', c.relname, a.attname,
       format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text || ' '
       || replace(coalesce(pg_get_expr(d.adbin, d.adrelid), ''), quote_ident(:s) || '.', '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE n.nspname = :s AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'index', ic.relname, '', replace(pg_get_indexdef(i.indexrelid), quote_ident(:s) || '.', '')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_class ic ON ic.oid = i.indexrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s
UNION ALL
SELECT 'constraint', co.conname, c.relname,
       replace(pg_get_constraintdef(co.oid), quote_ident(:s) || '.', '')
  FROM pg_constraint co LEFT JOIN pg_class c ON c.oid = co.conrelid
  JOIN pg_namespace n ON n.oid = co.connamespace WHERE n.nspname = :s
UNION ALL
SELECT 'trigger', t.tgname, c.relname, '' FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND NOT t.tgisinternal
UNION ALL
SELECT 'function', p.proname, '', '' FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = :s
UNION ALL
SELECT 'type', t.typname, t.typtype::text, '' FROM pg_type t
  JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = :s
ORDER BY 1, 2, 3, 4
"""
_TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = :s ORDER BY tablename"
_FOREIGN_KEYS_SQL = """
SELECT c.relname, p.relname FROM pg_constraint co
  JOIN pg_class c ON c.oid = co.conrelid JOIN pg_class p ON p.oid = co.confrelid
  JOIN pg_namespace n ON n.oid = co.connamespace WHERE n.nspname = :s AND co.contype = 'f'
"""
_SEQUENCES_SQL = (
    "SELECT sequencename, start_value FROM pg_sequences WHERE schemaname = :s ORDER BY 1"
)


@pytest.fixture(scope="session")
def migrated_databases(tmp_path_factory) -> Iterator[MigratedDatabases]:
    databases = MigratedDatabases(tmp_path_factory.mktemp("migrated"))
    yield databases
    databases.close()


@pytest.fixture
def engine(database_url, migrated_databases):
    """An engine on the test's database, at the latest migration."""
    migrated_databases.provide(database_url)
    eng = make_engine(database_url)
    yield eng
    eng.dispose()
    migrated_databases.take_back(database_url)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_user("U1", "Alice Archer", "alice")
        fake.add_user("U2", "Bob Baker", "bob")
        fake.add_user("U3", "Carol Chen", "carol")
        fake.add_user("UBOT", "Thread Bot", "threadbot", is_bot=True)
        fake.add_channel("C1", "general", members={"U1", "U2", "U3"})
        yield fake


@pytest.fixture
def model() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI() as fake:
        yield fake


@pytest.fixture
def make_bot(slack, model, database_url, engine) -> Iterator[Any]:
    bots: list[Bot] = []

    def factory(**settings_extra: Any) -> Bot:
        url = settings_extra.pop("database_url", database_url)
        clock = settings_extra.pop("clock", time.time)
        # The bot waits (for Slack's read budget) on its own clock: a test clock moves on.
        sleep = settings_extra.pop("sleep", getattr(clock, "advance", time.sleep))
        settings: Settings = make_settings(slack, model, url, **settings_extra)
        app = create_app(settings, engine=make_engine(url), clock=clock, sleep=sleep)
        bot = Bot(app, slack, model)
        bots.append(bot)
        return bot

    yield factory
    for b in bots:
        b.close()


@pytest.fixture
def bot(make_bot) -> Bot:
    return make_bot()


@pytest.fixture
def oauth_bot(make_bot, slack) -> Bot:
    """The bot in OAuth mode (many workspaces), tokens encrypted with ENCRYPTION_KEY."""
    return make_bot(
        slack_bot_token="",
        slack_client_id=slack.client_id,
        slack_client_secret=slack.client_secret,
        encryption_key=ENCRYPTION_KEY,
    )


@pytest.fixture
def process_env(slack, model, database_url, engine) -> dict[str, str]:
    """The environment of a `python -m bot …` child process on the fakes and the test's
    (migrated) database, with short leases so tests of killed processes end quickly."""
    return harness.process_env(
        slack, model, database_url, JOB_LEASE_SECONDS="3", SHUTDOWN_TIMEOUT_SECONDS="1"
    )


@pytest.fixture
def spawn(process_env, tmp_path) -> Iterator[Any]:
    """Start `python -m bot <role>` children (killed at the end); keyword arguments are extra
    settings, e.g. `spawn("worker", metrics_port=0)`."""
    procs: list[BotProcess] = []

    def start(role: str = "serve", **settings: Any) -> BotProcess:
        env = {**process_env, **{k.upper(): str(v) for k, v in settings.items()}}
        p = BotProcess(env, tmp_path, role)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop(signal.SIGKILL)
