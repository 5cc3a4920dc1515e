"""The one-call append on PostgreSQL hashes exactly as the Python chain does, for any payload."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import select

from gateway.audit import AuditAction, canonical_json
from gateway.audit.canonical import format_timestamp
from gateway.audit.chain import canonical_pieces
from gateway.db.models import AuditEvent, AuditHead
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
        appended = [
            airlock.audit.record(
                session, AuditAction.USER_CREATE, actor_id=None, model_id=n, payload=payload
            )
            for n, payload in enumerate(TRAPS)
        ]
        session.commit()
    with airlock.db.session() as session:
        report = AuditLogService().verify(session)
        events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
        head = session.get_one(AuditHead, 1)
    assert report.ok and report.checked == len(TRAPS), report
    assert [(e.seq, e.entry_hash) for e in events] == [(a.seq, a.entry_hash) for a in appended]
    assert (head.seq, head.entry_hash) == (appended[-1].seq, appended[-1].entry_hash)
    assert [e.payload for e in events] == TRAPS
    assert all(a.occurred_at <= b.occurred_at for a, b in pairwise(events))
