"""The models and the migrations agree; migrations are safe to run again and concurrently."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session

from bot.store import data
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


def test_an_event_is_claimed_once_across_connections(engine, database_url):
    other = make_engine(database_url)
    now = datetime.now(UTC)
    with Session(engine) as a, Session(other) as b:
        with a.begin():
            assert data.claim_event(a, "Ev1", now)
        with b.begin():
            assert not data.claim_event(b, "Ev1", now)
            assert data.claim_event(b, "Ev2", now)
    other.dispose()
