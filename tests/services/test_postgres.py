"""The schema on both engines: migrations match the models, and the test harness's isolation.

`make test` runs this file: on a fresh PostgreSQL database, `airlock db upgrade` then
`airlock db check` must agree with the models (skipped outside CI when PostgreSQL is down).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text

from gateway.cli import main
from gateway.db.migrate import alembic_config, schema_drift, upgrade
from gateway.db.models import AuditEvent, AuditHead, Role
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock
from tests.factories import World
from tests.pg import on_both_engines, throwaway_database


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """An empty PostgreSQL database: no schema at all."""
    with throwaway_database() as url:
        yield url


def airlock_cli(database_url: str, *args: str) -> tuple[int, str]:
    """Run `airlock ARGS` against the database; exit code and output."""
    result = CliRunner().invoke(main, list(args), env={"AIRLOCK_DATABASE_URL": database_url})
    return result.exit_code, result.output


@pytest.mark.postgres
def test_airlock_db_upgrade_then_check_agree_on_a_fresh_postgres(fresh_postgres: str) -> None:
    assert airlock_cli(fresh_postgres, "db", "upgrade") == (0, "database is at the newest schema\n")
    assert airlock_cli(fresh_postgres, "db", "check") == (0, "models and migrations agree\n")


@pytest.mark.postgres
def test_airlock_db_check_fails_when_the_database_differs_from_the_models(
    fresh_postgres: str,
) -> None:
    upgrade(fresh_postgres)
    engine = create_engine(fresh_postgres)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE organizations ADD COLUMN stray integer"))
    engine.dispose()
    code, output = airlock_cli(fresh_postgres, "db", "check")
    assert code == 1
    assert "models and migrations disagree" in output and "stray" in output


@pytest.mark.postgres
def test_migrations_downgrade_to_base_and_upgrade_again_on_postgres(fresh_postgres: str) -> None:
    upgrade(fresh_postgres)
    command.downgrade(alembic_config(fresh_postgres), "base")
    upgrade(fresh_postgres)
    engine = create_engine(fresh_postgres)
    try:
        assert schema_drift(engine) == []
    finally:
        engine.dispose()


@pytest.mark.sqlite
def test_sqlite_models_and_migrations_agree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    engine = create_engine(url)
    try:
        assert schema_drift(engine) == []
    finally:
        engine.dispose()


@on_both_engines
@pytest.mark.parametrize("attempt", range(2))
def test_each_test_starts_from_the_freshly_migrated_state(airlock: Airlock, attempt: int) -> None:
    """The second attempt sees nothing of the first: no rows, the seeded head, ids from 1."""
    world = World(airlock)
    org = world.org("fresh")
    assert org.id == 1
    with airlock.db.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 1
        head = session.get_one(AuditHead, 1)
        assert (head.seq, AuditLogService().verify(session).ok) == (1, True)


@on_both_engines
def test_request_and_download_flow(airlock: Airlock) -> None:
    world = World(airlock)
    world.org("pgorg")
    publisher = world.actor("pgpub", org="pgorg", role=Role.PUBLISHER)
    reviewer = world.actor("pgrev", org="pgorg", role=Role.REVIEWER)
    researcher = world.actor("pgres")
    model = world.model(publisher, repo="pgorg/tiny")
    world.kyc(reviewer, researcher, org="pgorg")
    grant = world.grant(researcher, model)
    assert grant.status == "active"
    with airlock.db.session() as session:
        assert AuditLogService().verify(session).ok
