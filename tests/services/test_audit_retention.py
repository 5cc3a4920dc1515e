"""Retention: pruning a prefix of the chain past the horizon, legal holds stopping it, the narrow
delete path through the append-only triggers, and verification from the pruned horizon."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import DBAPIError

from gateway.audit.notes import SigningKey
from gateway.audit.offline import ProofReport, verify_files, verify_proof
from gateway.db.models import (
    AuditEvent,
    AuditPrune,
    AuditPrunePermit,
    utcnow,
)
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.services.audit_export import export_audit, prove_event
from gateway.services.audit_log import AuditLogService
from gateway.services.checkpoints import CheckpointService
from gateway.services.container import Airlock
from gateway.services.retention import PruneResult, retention_horizon
from tests.factories import World, record_events
from tests.pg import on_both_engines

KEY = SigningKey.generate("airlock.test-audit")
ORIGIN = "airlock.test/audit"
DECADE_ON = timedelta(days=366 * 11)


def prune(airlock: Airlock, now: datetime, years: int = 10) -> PruneResult:
    return airlock.retention.prune(
        airlock.db.session,
        now=now,
        years=years,
        signer=KEY,
        storage=airlock.storage,
        origin=ORIGIN,
    )


def seqs(airlock: Airlock) -> list[int]:
    with airlock.db.session() as session:
        return list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))


def assert_verifies(airlock: Airlock) -> None:
    with airlock.db.session() as session:
        chain = AuditLogService().verify(session)
        signed = CheckpointService().verify(
            session, verifiers=(KEY.verifier(),), storage=airlock.storage
        )
    assert chain.ok, chain
    assert signed.ok, signed.problems


@on_both_engines
def test_prune_removes_the_prefix_past_retention_and_the_chain_still_verifies(
    airlock: Airlock,
) -> None:
    record_events(airlock, 12)
    result = prune(airlock, utcnow() + DECADE_ON)
    assert result.cuts == ((12, 12),)
    assert seqs(airlock) == [13]  # only the audit:prune event itself
    with airlock.db.session() as session:
        event = session.get_one(AuditEvent, 13)
        anchor = session.get_one(AuditPrune, 12)
    assert event.action == "audit:prune"
    assert event.payload["cut"] == 12 and event.payload["deleted"] == 12
    assert event.payload["checkpoint"]["size"] == 12
    assert event.prev_hash == anchor.cut_hash
    assert_verifies(airlock)
    record_events(airlock, 2)  # the chain continues; a second prune has nothing new past retention
    assert prune(airlock, utcnow()).deleted == 0
    assert_verifies(airlock)


@on_both_engines
def test_prune_never_removes_events_newer_than_the_horizon(airlock: Airlock) -> None:
    record_events(airlock, 5)
    middle = utcnow()
    record_events(airlock, 4)
    result = prune(airlock, retention_horizon(middle, -10))  # ten years on: horizon == middle
    assert result.plan.horizon == middle
    assert result.cuts == ((5, 5),)
    assert seqs(airlock) == [6, 7, 8, 9, 10]
    assert_verifies(airlock)


@on_both_engines
def test_a_legal_hold_stops_the_cut_before_the_first_held_event(
    airlock: Airlock, world: World
) -> None:
    world.org("acme")
    alice = world.actor("alice", affiliation="acme")
    record_events(airlock, 3)
    record_events(airlock, 2, subject_user_id=alice.user.id)
    record_events(airlock, 3)
    with airlock.db.session() as session:
        hold = airlock.legal_holds.place(
            session, principal=None, org="acme", kind="user", subject="alice", reason="case 42"
        )
    with airlock.db.session() as session:
        first_held = session.scalar(
            select(func.min(AuditEvent.seq)).where(
                (AuditEvent.subject_user_id == alice.user.id)
                | (AuditEvent.actor_id == alice.user.id)
            )
        )
    assert first_held is not None and first_held > 1  # acme's creation comes before alice's
    result = prune(airlock, utcnow() + DECADE_ON)
    assert result.plan.held_from == first_held
    assert result.cuts == ((first_held - 1, first_held - 1),)
    assert seqs(airlock)[0] == first_held
    assert_verifies(airlock)
    with airlock.db.session() as session:
        airlock.legal_holds.release(session, principal=None, hold_id=hold.id)
    assert prune(airlock, utcnow() + DECADE_ON).deleted > 0
    assert len(seqs(airlock)) == 1  # released: all but the newest prune event went
    assert_verifies(airlock)


@on_both_engines
def test_a_plain_delete_is_still_refused(airlock: Airlock) -> None:
    record_events(airlock, 3)
    with airlock.db.session() as session, pytest.raises(DBAPIError, match="append-only"):
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 1))
    with airlock.db.session() as session, pytest.raises(DBAPIError, match="append-only"):
        session.execute(insert(AuditPrunePermit).values(cut=1))  # a permit covers seq <= 1 only
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    assert seqs(airlock) == [1, 2, 3]


def test_nothing_is_pruned_without_a_signing_key(airlock: Airlock) -> None:
    from gateway.services.checkpoints import SigningKeyMissing
    from gateway.tasks import jobs

    record_events(airlock, 2)
    postgres_like = airlock.settings.with_overrides(database_url="postgresql://nowhere/x")
    airlock.settings = postgres_like
    with pytest.raises(SigningKeyMissing):
        jobs.prune_audit(airlock, at=(utcnow() + DECADE_ON).isoformat())
    assert seqs(airlock) == [1, 2]


def test_a_tampered_prune_anchor_fails_verification(airlock: Airlock) -> None:
    record_events(airlock, 4)
    prune(airlock, utcnow() + DECADE_ON)
    with airlock.db.session() as session:
        session.execute(
            AuditPrune.__table__.update().values(cut_hash="0" * 64)  # type: ignore[attr-defined]
        )
        session.commit()
        report = AuditLogService().verify(session)
    assert not report.ok and "not anchored" in (report.problem or "")


def test_legal_hold_input_is_checked(airlock: Airlock, world: World) -> None:
    world.org("acme")
    world.org("globex")
    world.actor("gus", affiliation="globex")
    hold = {"principal": None, "org": "acme", "reason": "r"}
    with airlock.db.session() as session:
        with pytest.raises(InvalidInput):
            airlock.legal_holds.place(session, kind="org", subject="acme", **hold)  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            airlock.legal_holds.place(session, kind="user", subject="gus", **hold)  # type: ignore[arg-type]
        with pytest.raises(NotFound):
            airlock.legal_holds.place(session, kind="model", subject="globex/x", **hold)  # type: ignore[arg-type]
        with pytest.raises(InvalidInput):
            airlock.legal_holds.place(
                session, principal=None, org="acme", kind="user", subject="gus", reason=" "
            )


def test_releasing_twice_is_a_conflict(airlock: Airlock, world: World) -> None:
    world.org("acme")
    world.actor("alice", affiliation="acme")
    with airlock.db.session() as session:
        hold = airlock.legal_holds.place(
            session, principal=None, org="acme", kind="user", subject="alice", reason="case"
        )
        airlock.legal_holds.release(session, principal=None, hold_id=hold.id)
        with pytest.raises(Conflict):
            airlock.legal_holds.release(session, principal=None, hold_id=hold.id)


def test_a_researcher_cannot_place_a_hold(airlock: Airlock, world: World) -> None:
    world.org("acme")
    rob = world.actor("rob", affiliation="acme")
    with airlock.db.session() as session, pytest.raises(Forbidden):
        airlock.legal_holds.place(
            session, principal=rob.principal, org="acme", kind="user", subject="rob", reason="x"
        )


@on_both_engines
def test_an_export_after_a_prune_verifies_offline_from_the_cut(
    airlock: Airlock, tmp_path: Path
) -> None:
    record_events(airlock, 6)
    prune(airlock, utcnow() + DECADE_ON)
    record_events(airlock, 3)
    with airlock.db.session() as session:
        CheckpointService().create(session, signer=KEY, storage=airlock.storage, origin=ORIGIN)
        manifest = export_audit(session, out=tmp_path / "export", fmt="jsonl")
    assert manifest["events"]["first_seq"] == 7  # 1..6 pruned; 7 is audit:prune
    files = tmp_path / "export"
    report = verify_files(
        files / "events.jsonl",
        [files / "checkpoints.notes"],
        [KEY.verifier()],
        manifest=files / "manifest.json",
    )
    assert report.ok, report
    assert (report.first_seq, report.last_seq, report.anchored_to) == (7, 10, 10)
    with airlock.db.session() as session:
        proof = prove_event(session, 8)  # from the frontier of the checkpoint at the cut
    assert verify_proof(proof, [KEY.verifier()]) == ProofReport(True, 8, 10)
