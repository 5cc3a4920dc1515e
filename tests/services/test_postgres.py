"""Nothing is SQLite-only: the schema, triggers, chain and a whole flow on real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from gateway.db.migrate import schema_drift, upgrade
from gateway.db.models import AuditEvent
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock, build_airlock
from gateway.settings import load_settings
from tests.factories import World
from tests.pg import throwaway_database
from tests.services.test_audit_chain import _record


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with throwaway_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def pg_airlock(pg_url: str, tmp_path: Path) -> Iterator[Airlock]:
    settings = load_settings(
        {"AIRLOCK_DATABASE_URL": pg_url, "AIRLOCK_SECRET_KEY": "pg-test"}, data_dir=tmp_path
    )
    airlock = build_airlock(settings)
    yield airlock
    airlock.close()


def test_models_and_migrations_agree(pg_url: str) -> None:
    engine = create_engine(pg_url)
    assert schema_drift(engine) == []
    engine.dispose()


def test_sqlite_models_and_migrations_agree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    engine = create_engine(url)
    assert schema_drift(engine) == []
    engine.dispose()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events", "TRUNCATE audit_events"],
)
def test_postgres_refuses_changes_to_audit_events(pg_airlock: Airlock, statement: str) -> None:
    _record(pg_airlock, 1)
    with pg_airlock.db.session() as session:
        with pytest.raises(Exception, match="append-only"):
            session.execute(text(statement))
        session.rollback()


def test_concurrent_appends_stay_one_chain(pg_airlock: Airlock) -> None:
    with pg_airlock.db.session() as session:
        before = session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))
    threads = [threading.Thread(target=_record, args=(pg_airlock, 10)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with pg_airlock.db.session() as session:
        seqs = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
        assert seqs == list(range(1, (before or 0) + 81))
        assert AuditLogService().verify(session).ok


def test_request_and_download_flow_on_postgres(pg_airlock: Airlock) -> None:
    from gateway.db.models import Role

    world = World(pg_airlock)
    world.org("pgorg")
    publisher = world.actor("pgpub", org="pgorg", role=Role.PUBLISHER)
    reviewer = world.actor("pgrev", org="pgorg", role=Role.REVIEWER)
    researcher = world.actor("pgres")
    model = world.model(publisher, repo="pgorg/tiny")
    world.kyc(reviewer, researcher, org="pgorg")
    grant = world.grant(researcher, model)
    assert grant.status == "active"
    with pg_airlock.db.session() as session:
        assert AuditLogService().verify(session).ok
