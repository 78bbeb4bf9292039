"""The models and the migrations agree; migrations are safe to run again and concurrently."""

from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from bot.store.db import current_revision, head_revision, make_engine, migrate
from bot.store.models import Base


def test_models_match_migrations(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == []
    assert current_revision(engine) == head_revision(engine)


def test_migrating_from_several_processes_at_once(database_url):
    engines = [make_engine(database_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(e) -> None:
        try:
            migrate(e)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert current_revision(engines[0]) == head_revision(engines[0])
    for e in engines:
        e.dispose()


def test_a_job_is_stored_once_per_dedupe_key_across_engines(engine, database_url):
    from bot.jobs import JobQueue
    from bot.store.db import make_session_factory

    other = make_engine(database_url)
    a = JobQueue(engine, make_session_factory(engine))
    b = JobQueue(other, make_session_factory(other))
    assert a.enqueue("mention", {}, lane="T:C:1", dedupe_key="event:Ev1")
    assert not b.enqueue("mention", {}, lane="T:C:1", dedupe_key="event:Ev1")
    assert b.enqueue("mention", {}, lane="T:C:1", dedupe_key="event:Ev2")
    assert a.pending() == 2
    other.dispose()


def test_the_suite_leaves_what_it_did_not_create(tmp_path):
    """A table that was in the named database before a test is still there after it; the test's
    own tables are gone."""
    import os
    import uuid

    import pytest
    from sqlalchemy import inspect, text

    from tests.conftest import PG_URL_ENV, fresh_database

    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip("PostgreSQL only: on SQLite each test has its own file")
    outside = f"kept_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE TABLE public.{outside} (x integer)"))
        conn.execute(text(f"INSERT INTO public.{outside} VALUES (42)"))
    try:
        with fresh_database(tmp_path) as scoped:
            eng = make_engine(scoped)
            migrate(eng)
            with eng.connect() as conn:
                schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            assert schema != "public"
            assert "thread_state" in inspect(eng).get_table_names()
            eng.dispose()
        with admin.connect() as conn:
            assert conn.execute(text(f"SELECT x FROM public.{outside}")).scalar_one() == 42
            left = conn.execute(
                text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": schema},
            ).scalar_one()
        assert left == 0
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS public.{outside}"))
        admin.dispose()
