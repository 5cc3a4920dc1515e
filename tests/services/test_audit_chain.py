"""The audit chain: canonical encoding, gap-free appends under concurrency, verification."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from gateway.audit import GENESIS_HASH, AuditAction, canonical_json, entry_hash
from gateway.db.models import AuditEvent
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock
from tests.pg import on_both_engines


def _record(airlock: Airlock, n: int) -> None:
    with airlock.db.session() as session:
        for i in range(n):
            airlock.audit.record(
                session, AuditAction.ORG_CREATE, actor_id=None, payload={"i": i, "name": "Zoë"}
            )
            session.commit()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": 2}, b'{"a":2,"b":1}'),
        ({"s": "Zoë"}, '{"s":"Zoë"}'.encode()),
        (
            {"t": datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)},
            b'{"t":"2026-01-02T03:04:05.000006Z"}',
        ),
        (
            {"t": datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2)))},
            b'{"t":"2026-01-02T03:04:05.000000Z"}',
        ),
        ({"n": [1, True, None]}, b'{"n":[1,true,null]}'),
    ],
)
def test_canonical_json_is_stable(value: object, expected: bytes) -> None:
    assert canonical_json(value) == expected


def test_canonical_json_refuses_floats_and_naive_times() -> None:
    with pytest.raises(TypeError):
        canonical_json({"x": 1.5})
    with pytest.raises(ValueError, match="timezone-aware"):
        canonical_json({"t": datetime(2026, 1, 1)})


def test_hash_is_domain_separated_and_linked() -> None:
    body = {"seq": 1}
    first = entry_hash(GENESIS_HASH, body)
    assert first != entry_hash("1" * 64, body)
    assert first != entry_hash(GENESIS_HASH, {"seq": 2})
    assert len(first) == 64


@on_both_engines
def test_appends_form_one_gap_free_chain_under_concurrent_threads(airlock: Airlock) -> None:
    threads = [threading.Thread(target=_record, args=(airlock, 15)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with airlock.db.session() as session:
        seqs = list(session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
        report = AuditLogService().verify(session)
    assert seqs == list(range(1, 121))
    assert report.ok, report


@on_both_engines
def test_database_refuses_update_and_delete(airlock: Airlock) -> None:
    _record(airlock, 2)
    statements = ["UPDATE audit_events SET action = 'x'", "DELETE FROM audit_events"]
    if not airlock.db.is_sqlite:  # SQLite has no TRUNCATE; CASCADE gets past the facets' key
        statements.append("TRUNCATE audit_events CASCADE")
    with airlock.db.session() as session:
        for statement in statements:
            with pytest.raises(Exception, match="append-only"):
                session.execute(text(statement))
            session.rollback()
        assert len(list(session.scalars(select(AuditEvent.seq)))) == 2


@on_both_engines
def test_rolled_back_change_leaves_no_event(airlock: Airlock) -> None:
    with airlock.db.session() as session:
        airlock.audit.record(session, AuditAction.ORG_CREATE, actor_id=None, payload={})
        session.rollback()
    _record(airlock, 1)
    with airlock.db.session() as session:
        assert list(session.scalars(select(AuditEvent.seq))) == [1]
        assert AuditLogService().verify(session).ok
