"""`airlock worker`, `airlock beat` and `airlock sweep`: refusals and the one-off sweep."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from gateway.cli import main
from gateway.db.migrate import upgrade
from gateway.db.models import Grant, utcnow
from gateway.services.container import build_airlock
from gateway.settings import load_settings
from tests.workers.conftest import Scene


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    values = {
        "AIRLOCK_DATA_DIR": str(tmp_path),
        "AIRLOCK_DATABASE_URL": "",
        "AIRLOCK_BROKER_URL": "",
    }
    upgrade(load_settings(values).database_url)
    return values


@pytest.mark.parametrize("command", [["worker"], ["beat"]])
def test_worker_and_beat_need_a_broker(env: dict[str, str], command: list[str]) -> None:
    result = CliRunner().invoke(main, command, env=env)
    assert result.exit_code == 1
    assert "AIRLOCK_BROKER_URL is not set" in result.output


def test_worker_refuses_unknown_queues(env: dict[str, str]) -> None:
    env = env | {"AIRLOCK_BROKER_URL": "redis://127.0.0.1:6379/14"}
    result = CliRunner().invoke(main, ["worker", "--queues", "vetting,bogus"], env=env)
    assert result.exit_code == 2
    assert "queues are vetting, provisioning, kyc, audit, default" in result.output


def test_sweep_runs_once_in_process(env: dict[str, str]) -> None:
    airlock = build_airlock(load_settings(env))
    try:
        scene = Scene(airlock)
        grant = scene.grant()  # provisioned in-process (no broker)
        assert len(scene.staged(grant.id)) == 2
        with airlock.db.session() as s:
            s.execute(
                update(Grant)
                .where(Grant.id == grant.id)
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            s.commit()
        result = CliRunner().invoke(main, ["sweep"], env=env)
        assert result.exit_code == 0, result.output
        assert scene.get_grant(grant.id).status == "expired"
        assert scene.staged(grant.id) == []
    finally:
        airlock.close()
