"""The commit-time append on PostgreSQL (migration 0012's deferred trigger) hashes exactly as
the Python chain does, for any payload, and chains each transaction's events when it commits."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, canonical_json
from gateway.audit.canonical import format_timestamp
from gateway.audit.chain import canonical_pieces
from gateway.db.models import AuditEvent, AuditHead, AuditPending
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock
from tests.pg import on_both_engines

TRAPS: list[dict[str, Any]] = [
    {},
    {"seq": 0, "subject_user_id": 5, "occurred_at": "2000-01-01T00:00:00.000000Z"},
    {"note": ',"seq":0,"subject_user_id":1} "occurred_at":"x'},
    {"nested": {"payload": {"seq": 0, "subject_user_id": None}}, "é": "ß\u212b", "n": -0},
    {"emoji": "\U0001f512", "quote": '"', "backslash": "\\", "newline": "\n", "big": 2**62},
]


@pytest.mark.parametrize("payload", TRAPS)
def test_the_pieces_around_time_and_seq_reassemble_the_canonical_json(
    payload: dict[str, Any],
) -> None:
    fields = {
        "action": "user:create",
        "actor_id": None,
        "org_id": 3,
        "subject_user_id": None,
        "model_id": 12,
        "effect": "allow",
        "payload": payload,
    }
    head, middle, tail = canonical_pieces(fields)
    moment = datetime(2031, 2, 3, 4, 5, 6, 7, tzinfo=UTC)
    whole = canonical_json({**fields, "seq": 987654321, "occurred_at": moment}).decode()
    assert head + format_timestamp(moment) + middle + "987654321" + tail == whole


@on_both_engines
def test_appends_with_trap_payloads_verify_on_each_engine(airlock: Airlock) -> None:
    with airlock.db.session() as session:
        for n, payload in enumerate(TRAPS):
            airlock.audit.record(
                session, AuditAction.USER_CREATE, actor_id=None, model_id=n, payload=payload
            )
        session.commit()
    with airlock.db.session() as session:
        report = AuditLogService().verify(session)
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        head = session.get_one(AuditHead, 1)
        pending = session.scalar(select(func.count()).select_from(AuditPending))
    assert report.ok and report.checked == len(TRAPS), report
    assert [e.model_id for e in events] == list(range(len(TRAPS)))  # in the order recorded
    assert (head.seq, head.entry_hash) == (events[-1].seq, events[-1].entry_hash)
    assert [e.payload for e in events] == TRAPS
    assert all(a.occurred_at <= b.occurred_at for a, b in pairwise(events))
    assert pending == 0


def _record(session: Session, airlock: Airlock, writer: str) -> None:
    airlock.audit.record(session, AuditAction.USER_CREATE, actor_id=None, payload={"w": writer})


@pytest.mark.postgres
def test_events_are_chained_in_commit_order_with_the_head_free_until_then(
    airlock: Airlock,
) -> None:
    with airlock.db.session() as first, airlock.db.session() as second:
        _record(first, airlock, "first")
        second.execute(text("SET LOCAL lock_timeout = '2s'"))
        _record(second, airlock, "second")
        second.commit()  # would time out waiting for the head if `first` held it
        assert first.scalar(select(func.count()).select_from(AuditEvent)) == 1
        first.commit()
    with airlock.db.session() as session:
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        assert AuditLogService().verify(session).ok
    assert [(e.seq, e.payload["w"]) for e in events] == [(1, "second"), (2, "first")]


@pytest.mark.postgres
def test_a_rolled_back_transaction_leaves_no_pending_row_no_event_and_no_gap(
    airlock: Airlock,
) -> None:
    with airlock.db.session() as session:
        _record(session, airlock, "gone")
        assert session.scalar(select(func.count()).select_from(AuditPending)) == 1
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 0
        session.rollback()
        _record(session, airlock, "kept")
        session.commit()
    with airlock.db.session() as session:
        events = list(session.scalars(select(AuditEvent)))
        assert session.scalar(select(func.count()).select_from(AuditPending)) == 0
    assert [(e.seq, e.payload["w"]) for e in events] == [(1, "kept")]
