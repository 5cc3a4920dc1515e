"""Signed audit checkpoints: created incrementally, one per size under concurrency, and verified
against the events, the keys (current and retired) and the copies in object storage."""

from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from gateway.audit import entry_hash, event_body
from gateway.audit.merkle import leaf_hash, root
from gateway.audit.notes import Checkpoint, SigningKey, open_checkpoint, sign_checkpoint
from gateway.db.models import AuditCheckpoint, AuditEvent, utcnow
from gateway.services.audit_log import AuditLogService
from gateway.services.checkpoints import (
    PREFIX,
    ChainBroken,
    CheckpointReport,
    CheckpointService,
    storage_key,
)
from gateway.services.container import Airlock
from tests.factories import record_events
from tests.pg import on_both_engines

ORIGIN = "airlock.test/audit"
KEY = SigningKey.generate("airlock.test-audit")


def create(airlock: Airlock, key: SigningKey = KEY, size: int | None = None) -> int | None:
    with airlock.db.session() as session:
        row = CheckpointService().create(
            session, signer=key, storage=airlock.storage, origin=ORIGIN, size=size
        )
        return None if row is None else row.tree_size


def verify(airlock: Airlock, *keys: SigningKey) -> CheckpointReport:
    verifiers = tuple(k.verifier() for k in keys or (KEY,))
    with airlock.db.session() as session:
        return CheckpointService().verify(session, verifiers=verifiers, storage=airlock.storage)


def all_leaves(airlock: Airlock) -> list[bytes]:
    with airlock.db.session() as session:
        hashes = session.scalars(select(AuditEvent.entry_hash).order_by(AuditEvent.seq))
        return [leaf_hash(bytes.fromhex(h)) for h in hashes]


def rows(airlock: Airlock) -> list[AuditCheckpoint]:
    with airlock.db.session() as session:
        return list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)))


def untriggered(airlock: Airlock, statement: str) -> None:
    """Run a statement the append-only triggers would refuse, as a database owner could."""
    with airlock.db.engine.begin() as conn:
        if airlock.db.is_sqlite:
            conn.execute(text("DROP TRIGGER IF EXISTS audit_checkpoints_no_delete"))
            conn.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
        else:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(statement))


def is_due(airlock: Airlock, *, events: int, every: timedelta = timedelta(hours=1)) -> bool:
    with airlock.db.session() as session:
        return CheckpointService().due(session, now=utcnow(), every=every, events=events)


@on_both_engines
def test_a_checkpoint_signs_the_merkle_root_and_head_of_every_event(airlock: Airlock) -> None:
    record_events(airlock, 7)
    assert create(airlock) == 7
    (row,) = rows(airlock)
    cp = open_checkpoint(row.note, [KEY.verifier()])
    assert (cp.origin, cp.size, cp.root) == (ORIGIN, 7, root(all_leaves(airlock)))
    with airlock.db.session() as session:
        assert cp.head_hash == session.scalar(
            select(AuditEvent.entry_hash).where(AuditEvent.seq == 7)
        )
    assert row.key_id == KEY.verifier().key_id.hex()
    assert row.storage_key == f"{PREFIX}{7:020d}.note" == storage_key(7)
    with airlock.storage.open_read(row.storage_key) as stored:
        assert stored.read().decode() == row.note


def test_due_after_n_events_or_after_the_interval(airlock: Airlock) -> None:
    assert not is_due(airlock, events=3)  # an empty chain
    record_events(airlock, 2)
    assert is_due(airlock, events=3)  # the first checkpoint: any event
    create(airlock)
    record_events(airlock, 2)
    assert not is_due(airlock, events=3)
    assert is_due(airlock, events=3, every=timedelta(0))  # the interval passed
    record_events(airlock, 1)
    assert is_due(airlock, events=3)


def test_nothing_new_makes_no_checkpoint(airlock: Airlock) -> None:
    assert create(airlock) is None  # empty chain
    record_events(airlock, 3)
    assert create(airlock) == 3
    assert create(airlock) is None
    assert not is_due(airlock, events=1, every=timedelta(0))
    assert [r.tree_size for r in rows(airlock)] == [3]


def test_the_frontier_continues_to_the_from_scratch_root(airlock: Airlock) -> None:
    sizes = []
    for n in (1, 2, 5, 8, 13):
        record_events(airlock, n)
        sizes.append(create(airlock))
    assert sizes == [1, 3, 8, 16, 29]
    leaves = all_leaves(airlock)
    for row in rows(airlock):
        assert bytes.fromhex(row.root_hash) == root(leaves[: row.tree_size])
    assert verify(airlock).ok


def test_a_checkpoint_at_a_given_size_extends_the_one_before_it(airlock: Airlock) -> None:
    record_events(airlock, 10)
    assert create(airlock, size=4) == 4
    assert create(airlock, size=4) is None  # one already there
    assert create(airlock) == 10
    leaves = all_leaves(airlock)
    assert [bytes.fromhex(r.root_hash) for r in rows(airlock)] == [root(leaves[:4]), root(leaves)]
    with pytest.raises(ValueError, match="holds 10 events"):
        create(airlock, size=11)


@on_both_engines
def test_concurrent_creators_make_one_checkpoint_per_size(airlock: Airlock) -> None:
    record_events(airlock, 50)
    results: list[int | None] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def run() -> None:
        start.wait()
        try:
            results.append(create(airlock))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=lambda r: r or 0) == [None, None, None, 50]
    assert [r.tree_size for r in rows(airlock)] == [50]


@on_both_engines
def test_checkpoints_are_append_only_in_the_database(airlock: Airlock) -> None:
    record_events(airlock, 2)
    create(airlock)
    for statement in (
        "UPDATE audit_checkpoints SET root_hash = head_hash",
        "DELETE FROM audit_checkpoints",
    ):
        with airlock.db.engine.connect() as conn, pytest.raises(Exception, match="append-only"):
            conn.execute(text(statement))


def test_verify_passes_on_honest_checkpoints(airlock: Airlock) -> None:
    record_events(airlock, 5)
    create(airlock)
    record_events(airlock, 4)
    create(airlock)
    record_events(airlock, 2)  # a tail after the last checkpoint is fine
    report = verify(airlock)
    assert report.ok, report.problems
    assert (report.checked, report.stored, report.warnings) == (2, 2, [])
    assert report.latest is not None and report.latest.tree_size == 9


@on_both_engines
def test_verify_fails_when_checkpoints_were_rolled_back_in_the_database(airlock: Airlock) -> None:
    record_events(airlock, 5)
    create(airlock)
    record_events(airlock, 5)
    create(airlock)
    untriggered(airlock, "DELETE FROM audit_checkpoints WHERE tree_size = 10")
    report = verify(airlock)
    assert not report.ok
    assert report.problems == [
        f"checkpoint at size 10 is in object storage ({storage_key(10)}) but not in the "
        "database: its checkpoints were deleted or the database was rolled back"
    ]


def test_verify_fails_when_the_storage_copy_contradicts_the_database(airlock: Airlock) -> None:
    record_events(airlock, 3)
    create(airlock)
    other = sign_checkpoint(Checkpoint(ORIGIN, 3, bytes(32), "0" * 64, utcnow()), KEY)
    airlock.storage.put_stream(storage_key(3), io.BytesIO(other.encode()), max_bytes=4096)
    report = verify(airlock)
    assert report.problems == [
        f"checkpoint at size 3: the database's note and the object storage copy "
        f"({storage_key(3)}) differ"
    ]


def test_verify_fails_for_a_note_signed_by_an_unknown_key(airlock: Airlock) -> None:
    record_events(airlock, 3)
    create(airlock, key=SigningKey.generate("intruder"))
    report = verify(airlock)
    assert not report.ok
    assert report.problems[0].startswith("checkpoint at size 3: signed by no known key: intruder (")
    assert any(
        p.startswith(f"object storage copy {storage_key(3)}: signed by no known key")
        for p in report.problems
    )


def test_verify_fails_when_events_up_to_a_checkpoint_were_rewritten(airlock: Airlock) -> None:
    """The whole chain recomputed after an edit passes the chain check, not the checkpoint."""
    record_events(airlock, 4)
    create(airlock)
    with airlock.db.session() as session:
        event = session.get_one(AuditEvent, 4)
        session.expunge(event)
    event.payload = {"i": "forged"}
    forged = entry_hash(event.prev_hash, event_body(event))
    untriggered(
        airlock,
        f"UPDATE audit_events SET payload = '{{\"i\": \"forged\"}}', entry_hash = '{forged}' "
        "WHERE seq = 4",
    )
    untriggered(airlock, f"UPDATE audit_head SET entry_hash = '{forged}'")
    with airlock.db.session() as session:
        assert AuditLogService().verify(session).ok  # the chain alone holds
    report = verify(airlock)
    assert report.problems == [
        "checkpoint at size 4: the events' Merkle root or head hash differs from the signed one "
        "(events up to it were rewritten)"
    ]


def test_verify_fails_when_events_a_checkpoint_covers_are_gone(airlock: Airlock) -> None:
    record_events(airlock, 4)
    create(airlock)
    with airlock.db.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text("DELETE FROM audit_events WHERE seq > 2"))
        conn.execute(text("UPDATE audit_head SET seq = 2"))
    report = verify(airlock)
    assert report.problems == [
        "checkpoint at size 4 covers events the database no longer holds (they stop at 2): "
        "events were removed, from the tail or after it"
    ]
    with pytest.raises(ChainBroken, match="behind the checkpoint at size 4"):
        create(airlock)


def test_verify_fails_when_a_middle_event_a_checkpoint_covers_is_gone(airlock: Airlock) -> None:
    record_events(airlock, 5)
    create(airlock)
    untriggered(airlock, "DELETE FROM audit_events WHERE seq = 3")
    assert verify(airlock).problems == [
        "checkpoint at size 5 covers events the database no longer holds (they stop at 2): "
        "events were removed, from the tail or after it"
    ]


def test_old_checkpoints_verify_with_the_retired_key_after_rotation(airlock: Airlock) -> None:
    old, new = KEY, SigningKey.generate("airlock.test-audit-2027")
    record_events(airlock, 3)
    create(airlock, key=old)
    record_events(airlock, 3)
    create(airlock, key=new)
    assert verify(airlock, new, old).ok  # current + retired
    report = verify(airlock, new)  # the retired key forgotten
    assert report.problems[0].startswith("checkpoint at size 3: signed by no known key")
    assert [r.key_name for r in rows(airlock)] == [old.name, new.name]


def test_a_copy_missing_from_storage_is_a_warning_and_the_next_run_writes_it(
    airlock: Airlock,
) -> None:
    record_events(airlock, 3)
    create(airlock)
    airlock.storage.delete(storage_key(3))
    report = verify(airlock)
    assert report.ok
    assert report.warnings[0].startswith("1 checkpoint(s) not yet copied to object storage")
    assert create(airlock) is None
    assert airlock.storage.exists(storage_key(3))
    with airlock.db.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpoint)) == 1


def test_a_long_history_is_signed_in_steps_each_within_a_run(
    airlock: Airlock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.services.checkpoints.MAX_EVENTS_PER_RUN", 4)
    record_events(airlock, 10)
    assert [create(airlock) for _ in range(4)] == [4, 8, 10, None]
    assert verify(airlock).ok


def test_after_a_prune_the_checkpoint_at_the_cut_anchors_the_rest(airlock: Airlock) -> None:
    record_events(airlock, 8)
    assert (create(airlock, size=2), create(airlock, size=5), create(airlock)) == (2, 5, 8)
    untriggered(airlock, "DELETE FROM audit_events WHERE seq <= 5")
    report = verify(airlock)
    assert report.ok, report.problems  # 2 is signed, older than the cut; 8 recomputed from 5
    untriggered(airlock, "DELETE FROM audit_events WHERE seq = 6")
    assert verify(airlock).problems == [
        "events 1 to 6 are missing and no checkpoint anchors the cut at 6"
    ]
