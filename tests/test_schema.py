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
