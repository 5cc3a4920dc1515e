"""Audit facets: the trigger of migration 0008 derives tier, reason codes, objections and
countries from every inserted event's payload, the same way on SQLite and PostgreSQL, and its
backfill derives the same for the events recorded before it."""

from __future__ import annotations

import re
from importlib import import_module
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from gateway.audit import AuditAction
from gateway.audit.facets import REASON_CODES
from gateway.db.engine import Database
from gateway.db.models import AuditFacet, AuditHead
from gateway.services.container import Airlock
from tests.pg import on_both_engines

MIGRATION = import_module("gateway.db.migrations.versions.0008_audit_event_facets")
DENY = {"code": "jurisdiction_denied", "effect": "deny", "rule": "r", "message": "m"}
MET = {"code": "kyc_level_met", "effect": "allow", "rule": "r", "message": "m"}
REVIEW = {"code": "approval_required", "effect": "review", "rule": "r", "message": "m"}

# payload -> the facets it must yield, as {(name, value)}
CASES: list[tuple[dict[str, Any], set[tuple[str, str]]]] = [
    (
        {
            "tier": "weights-auto",
            "request_country": "IR",
            "decision": {"tier": "weights-auto", "reasons": [DENY, MET, REVIEW]},
        },
        {
            ("tier", "weights-auto"),
            ("country", "IR"),
            ("reason", "jurisdiction_denied"),
            ("reason", "kyc_level_met"),
            ("reason", "approval_required"),
            ("objection", "jurisdiction_denied"),
            ("objection", "approval_required"),
        },
    ),
    (  # a refusal: reasons at the top, no tier
        {"grant_id": 3, "reasons": [{"code": "rate_limited", "effect": "deny"}]},
        {("reason", "rate_limited"), ("objection", "rate_limited")},
    ),
    (  # KYC facts: three countries, two of them equal
        {"nationality": "DE", "residence_country": "FR", "document_country": "DE", "level": "x"},
        {("country", "DE"), ("country", "FR")},
    ),
    (  # shapes that are not facets are skipped, never an error that would lose the event
        {
            "tier": 7,
            "request_country": "",
            "nationality": None,
            "reasons": ["jurisdiction_denied", 3, None, {"code": 5}, {"effect": "deny"}],
            "decision": "allow",
        },
        set(),
    ),
    ({"reasons": {"code": "no_grant", "effect": "deny"}, "decision": {"reasons": "x"}}, set()),
    (  # objects where strings belong are not values either
        {
            "tier": {"name": "x"},
            "request_country": ["IR"],
            "decision": {"tier": ["a"], "reasons": [{"code": {"c": 1}, "effect": "deny"}]},
        },
        set(),
    ),
    ({"decision": {"tier": "card"}, "note": 'says "reasons" and "decision"'}, {("tier", "card")}),
    ({"tier": "t" * 100}, {("tier", "t" * 64)}),
    ({}, set()),
]


def facets(database: Database, seq: int) -> set[tuple[str, str]]:
    with database.session() as session:
        rows = session.execute(
            select(AuditFacet.name, AuditFacet.value).where(AuditFacet.seq == seq)
        )
        return {(name, value) for name, value in rows}


@on_both_engines
def test_every_event_gets_the_facets_of_its_payload_when_inserted_or_backfilled(
    airlock: Airlock,
) -> None:
    recorded = []
    for payload, expected in CASES:
        with airlock.db.session() as session:
            airlock.audit.record(
                session, AuditAction.REQUEST_CREATE, actor_id=None, payload=payload
            )
            session.commit()  # chained here on PostgreSQL: the head names the event's seq
            seq = session.scalars(select(AuditHead.seq)).one()
        assert facets(airlock.db, seq) == expected, payload
        recorded.append((seq, payload, expected))
    with airlock.db.engine.begin() as conn:  # as if recorded before migration 0008
        conn.execute(delete(AuditFacet))
        MIGRATION.backfill(conn)
    for seq, payload, expected in recorded:
        assert facets(airlock.db, seq) == expected, payload


def test_every_reason_code_the_gateway_writes_is_filterable() -> None:
    """The reason filter accepts only known codes: each code literal in the services is one."""
    root = Path(__file__).resolve().parents[2] / "gateway" / "services"
    pattern = re.compile(r'(?:"code": |_reason\(\s*)"([a-z_]+)"')
    found = {code for path in root.glob("*.py") for code in pattern.findall(path.read_text())}
    found |= {f"grant_{status}" for status in ("expired", "revoked", "suspended")}
    assert found
    assert found <= REASON_CODES, found - REASON_CODES
