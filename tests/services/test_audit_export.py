"""Audit exports and inclusion proofs read from the database, verified offline, on both engines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.audit import AuditAction
from gateway.audit.notes import SigningKey
from gateway.audit.offline import verify_files, verify_proof
from gateway.db.models import utcnow
from gateway.services.audit_export import ExportError, export_audit, prove_event
from gateway.services.container import Airlock
from tests.pg import on_both_engines

KEY = SigningKey.generate("export-test")


def record(airlock: Airlock, count: int) -> None:
    with airlock.db.session() as session:
        for n in range(count):
            airlock.audit.record(
                session,
                AuditAction.KYC_VERIFY,
                actor_id=n,
                org_id=1,
                effect="allow",
                payload={"name": "Zoë", "level": n, "ok": True, "nested": {"b": [1, None]}},
            )
        session.commit()


def checkpoint(airlock: Airlock) -> None:
    with airlock.db.session() as session:
        airlock.checkpoints.create(
            session, signer=KEY, storage=airlock.storage, origin="test/audit"
        )


@on_both_engines
def test_full_and_sub_range_exports_and_proofs_verify(airlock: Airlock, tmp_path: Path) -> None:
    record(airlock, 6)
    checkpoint(airlock)
    record(airlock, 5)
    checkpoint(airlock)
    record(airlock, 3)
    with airlock.db.session() as session:
        full = export_audit(session, out=tmp_path / "full", fmt="jsonl")
        lines = (tmp_path / "full" / "events.jsonl").read_text().splitlines()
        since, until = (moment(lines[n]) for n in (3, 8))
        part = export_audit(session, out=tmp_path / "part", fmt="csv", since=since, until=until)
        proof = prove_event(session, 9)
    assert (full["events"]["rows"], full["checkpoints"]["count"]) == (14, 2)
    report = verify_files(
        tmp_path / "full" / "events.jsonl",
        [tmp_path / "full" / "checkpoints.notes"],
        [KEY.verifier()],
        manifest=tmp_path / "full" / "manifest.json",
    )
    assert (report.ok, report.events, report.anchored_to) == (True, 14, 11), report.problem
    assert (part["events"]["first_seq"], part["events"]["last_seq"]) == (4, 8)
    assert part["checkpoints"]["covering"]["size"] == 11
    assert len(part["anchor"]["suffix"]) == 3 and part["anchor"]["prefix"]["size"] == 3
    report = verify_files(
        tmp_path / "part" / "events.csv",
        [tmp_path / "part" / "checkpoints.notes"],
        [KEY.verifier()],
        manifest=tmp_path / "part" / "manifest.json",
    )
    assert (report.ok, report.events, report.anchored_to) == (True, 5, 11), report.problem
    assert proof["tree_size"] == 11
    assert verify_proof(proof, [KEY.verifier()]).ok


def moment(line: str) -> datetime:
    return datetime.fromisoformat(json.loads(line)["occurred_at"].replace("Z", "+00:00"))


@on_both_engines
def test_an_empty_log_exports_nothing_and_proves_nothing(airlock: Airlock, tmp_path: Path) -> None:
    with airlock.db.session() as session:
        manifest = export_audit(session, out=tmp_path, fmt="jsonl")
        with pytest.raises(ExportError, match="no event with sequence number 1"):
            prove_event(session, 1)
    assert manifest["events"]["rows"] == 0 and manifest["checkpoints"]["covering"] is None
    report = verify_files(tmp_path / "events.jsonl", [], [], manifest=tmp_path / "manifest.json")
    assert report.ok and report.events == 0


def test_without_checkpoints_the_export_verifies_as_an_unanchored_chain(
    airlock: Airlock, tmp_path: Path
) -> None:
    record(airlock, 4)
    with airlock.db.session() as session:
        manifest = export_audit(session, out=tmp_path, fmt="jsonl")
        with pytest.raises(ExportError, match="no checkpoint covers event 2 yet"):
            prove_event(session, 2)
    assert manifest["checkpoints"] == {**manifest["checkpoints"], "count": 0, "covering": None}
    report = verify_files(tmp_path / "events.jsonl", [tmp_path / "checkpoints.notes"], [])
    assert (report.ok, report.events, report.anchored_to) == (True, 4, 0)
    assert report.notes == ["no checkpoint: the chain is unanchored (hashes and links only)"]


@on_both_engines
def test_after_a_prune_exports_and_proofs_start_from_the_cut(
    airlock: Airlock, tmp_path: Path
) -> None:
    record(airlock, 6)
    result = airlock.retention.prune(
        airlock.db.session,
        now=utcnow() + timedelta(days=366 * 11),
        years=10,
        signer=KEY,
        storage=airlock.storage,
        origin="test/audit",
    )
    assert result.deleted == 6
    record(airlock, 5)
    checkpoint(airlock)
    with airlock.db.session() as session:
        manifest = export_audit(session, out=tmp_path, fmt="jsonl")
        head = manifest["events"]["last_seq"]
        proof = prove_event(session, 9)
    assert manifest["events"]["first_seq"] == 7 and manifest["anchor"]["prefix"]["size"] == 6
    report = verify_files(
        tmp_path / "events.jsonl",
        [tmp_path / "checkpoints.notes"],
        [KEY.verifier()],
        manifest=tmp_path / "manifest.json",
    )
    assert (report.ok, report.first_seq, report.anchored_to) == (True, 7, head), report.problem
    assert verify_proof(proof, [KEY.verifier()]).ok
