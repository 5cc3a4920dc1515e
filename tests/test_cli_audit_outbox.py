"""`airlock audit outbox`: what this host's outbox holds, and writing it on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import create_engine, text

from gateway.audit.outbox import AuditOutbox
from gateway.cli import main
from gateway.db.migrate import upgrade


def outbox_cli(data_dir: Path, *args: str) -> tuple[int, str]:
    env = {"AIRLOCK_DATA_DIR": str(data_dir), "AIRLOCK_DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["audit", "outbox", *args], env=env)
    return result.exit_code, result.output


def served(tokens: int) -> dict[str, Any]:
    return {
        "action": "inference:serve",
        "actor_id": None,
        "org_id": None,
        "subject_user_id": None,
        "model_id": None,
        "effect": "allow",
        "payload": {"tokens_used": tokens, "spooled_at": "2026-11-27T00:00:00"},
    }


def serve_events(data_dir: Path) -> list[str]:
    engine = create_engine(f"sqlite:///{data_dir / 'airlock.db'}")
    with engine.connect() as conn:
        query = "SELECT payload FROM audit_events WHERE action = 'inference:serve' ORDER BY seq"
        found = [str(row[0]) for row in conn.execute(text(query))]
    engine.dispose()
    return found


def test_outbox_reports_then_drains_what_waits(tmp_path: Path) -> None:
    upgrade(f"sqlite:///{tmp_path / 'airlock.db'}")
    assert outbox_cli(tmp_path) == (0, f"audit outbox {tmp_path / 'audit-outbox'}: empty\n")
    spool = AuditOutbox(tmp_path / "audit-outbox")
    spool.put(served(3))
    spool.put(served(4))
    code, output = outbox_cli(tmp_path)
    assert code == 1 and "2 event(s) waiting" in output and "--drain" in output
    assert serve_events(tmp_path) == []
    code, output = outbox_cli(tmp_path, "--drain")
    assert code == 0, output
    assert "wrote 2 spooled event(s)" in output and output.endswith(": empty\n")
    assert ['"tokens_used": 3' in e for e in serve_events(tmp_path)] == [True, False]
    env = {"AIRLOCK_DATA_DIR": str(tmp_path), "AIRLOCK_DATABASE_URL": ""}
    verified = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert verified.exit_code == 0 and "audit chain OK" in verified.output


def test_an_event_the_database_still_refuses_stays_spooled(tmp_path: Path) -> None:
    upgrade(f"sqlite:///{tmp_path / 'airlock.db'}")
    AuditOutbox(tmp_path / "audit-outbox").put({**served(1), "action": "no:such-action"})
    code, output = outbox_cli(tmp_path, "--drain")
    assert code == 1 and "wrote 0 spooled event(s)" in output and "1 event(s) waiting" in output
    assert serve_events(tmp_path) == []
