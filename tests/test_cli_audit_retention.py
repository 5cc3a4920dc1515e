"""`airlock audit prune [--dry-run]` and `airlock audit holds`, then `airlock audit verify` still
passes from the pruned horizon (embedded SQLite, its generated signing key)."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.audit import AuditAction
from gateway.cli import main
from gateway.db.models import utcnow
from gateway.services.container import build_airlock
from gateway.settings import load_settings

LATER = (utcnow() + timedelta(days=366 * 11)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def data_dir(tmp_path: Path, migrated_sqlite: Path) -> Path:
    """An embedded deployment with an org, a user and a few events."""
    shutil.copy(migrated_sqlite, tmp_path / "airlock.db")
    settings = load_settings({"AIRLOCK_SECRET_KEY": "cli"}, data_dir=tmp_path)
    airlock = build_airlock(settings)
    try:
        with airlock.db.session() as session:
            org = airlock.identity.create_org(
                session, slug="acme", name="Acme", hq_country=None, actor_id=None
            )
            airlock.identity.create_user(
                session, username="alice", email="a@example.org", affiliation=org, actor_id=None
            )
        with airlock.db.session() as session:
            for _ in range(4):
                airlock.audit.record(session, AuditAction.USER_CREATE, actor_id=None, payload={})
            session.commit()
    finally:
        airlock.close()
    return tmp_path


def run(data_dir: Path, *args: str) -> Result:
    env = {
        "AIRLOCK_DATA_DIR": str(data_dir),
        "AIRLOCK_DATABASE_URL": "",
        "AIRLOCK_SECRET_KEY": "cli",
    }
    return CliRunner().invoke(main, ["audit", *args], env=env)


def test_prune_dry_run_then_prune_then_verify(data_dir: Path) -> None:
    dry = run(data_dir, "prune", "--dry-run", "--at", LATER)
    assert dry.exit_code == 0, dry.output
    assert "dry run: would prune seq 1 to 6 (6)" in dry.output
    assert "pruned so far up to seq 0" in dry.output
    done = run(data_dir, "prune", "--at", LATER)
    assert done.exit_code == 0, done.output
    assert "pruned 6 events; the chain now starts after seq 6" in done.output
    verified = run(data_dir, "verify")
    assert verified.exit_code == 0, verified.output
    assert "audit chain OK: 1 events, head at seq 7" in verified.output
    assert "checkpoints OK" in verified.output


def test_a_hold_placed_from_the_cli_stops_the_prune(data_dir: Path) -> None:
    placed = run(
        data_dir,
        "holds",
        "place",
        "--org",
        "acme",
        "--kind",
        "user",
        "--subject",
        "alice",
        "--reason",
        "case 9",
    )
    assert placed.exit_code == 0, placed.output
    hold = json.loads(placed.output)
    assert (hold["kind"], hold["reason"], hold["released_at"]) == ("user", "case 9", None)
    dry = run(data_dir, "prune", "--dry-run", "--at", LATER)
    assert "a legal hold stops it before seq 2" in dry.output  # alice's creation
    assert "would prune seq 1 to 1 (1)" in dry.output
    listed = json.loads(run(data_dir, "holds", "list", "--active").output)
    assert [h["id"] for h in listed] == [hold["id"]]
    released = run(data_dir, "holds", "release", str(hold["id"]))
    assert json.loads(released.output)["released_at"] is not None
    again = run(data_dir, "holds", "release", str(hold["id"]))
    assert again.exit_code == 1 and "already released" in again.output
    assert json.loads(run(data_dir, "holds", "list", "--active").output) == []


def test_bad_prune_and_hold_input_is_refused_clearly(data_dir: Path) -> None:
    naive = run(data_dir, "prune", "--dry-run", "--at", "2040-01-01T00:00:00")
    assert naive.exit_code == 1 and "names no time zone" in naive.output
    unknown = run(
        data_dir,
        "holds",
        "place",
        "--org",
        "acme",
        "--kind",
        "user",
        "--subject",
        "nobody",
        "--reason",
        "x",
    )
    assert unknown.exit_code == 1 and "no user 'nobody'" in unknown.output
