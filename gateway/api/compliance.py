"""Compliance API: the audit log of the caller's own organizations."""

from __future__ import annotations

from flask import Blueprint

from gateway.api import schemas as s
from gateway.api.context import airlock, db, principal
from gateway.api.serialize import audit_out
from gateway.api.spec import ID, endpoint
from gateway.services.audit_log import AuditFilter, AuditLogService

bp = Blueprint("compliance", __name__, url_prefix="/api/v1")
service = AuditLogService()


@endpoint(
    bp,
    "/audit",
    "GET",
    summary="Query your organizations' audit events",
    query=s.AuditQuery,
    response=s.AuditPage,
    scopes=("audit:read",),
)
def audit(query: s.AuditQuery) -> s.AuditPage:
    filters = AuditFilter(
        action=query.action,
        effect=query.effect,
        actor=query.actor,
        subject=query.subject,
        repo_id=query.repo_id,
        since=query.since,
        until=query.until,
    )
    events, cursor = service.query(
        db(), principal=principal(), filters=filters, cursor=query.cursor, limit=query.limit
    )
    return s.AuditPage(events=[audit_out(e) for e in events], next_cursor=cursor)


@endpoint(
    bp,
    "/compliance/legal-holds",
    "POST",
    summary="Place a legal hold: a user's or a model's events are not pruned until released",
    body=s.LegalHoldIn,
    response=s.LegalHoldOut,
    status=201,
    scopes=("audit:read",),
)
def place_legal_hold(body: s.LegalHoldIn) -> s.LegalHoldOut:
    hold = airlock().legal_holds.place(
        db(),
        principal=principal(),
        org=body.org,
        kind=body.kind,
        subject=body.subject,
        reason=body.reason,
    )
    return s.LegalHoldOut.model_validate(hold, from_attributes=True)


@endpoint(
    bp,
    "/compliance/legal-holds",
    "GET",
    summary="The legal holds of your organizations",
    query=s.LegalHoldQuery,
    response=s.LegalHoldList,
    scopes=("audit:read",),
)
def legal_holds(query: s.LegalHoldQuery) -> s.LegalHoldList:
    holds = airlock().legal_holds.list(db(), principal=principal(), active_only=query.active)
    return s.LegalHoldList(
        holds=[s.LegalHoldOut.model_validate(h, from_attributes=True) for h in holds]
    )


@endpoint(
    bp,
    f"/compliance/legal-holds/<{ID}:hold_id>",
    "DELETE",
    summary="Release a legal hold",
    response=s.LegalHoldOut,
    scopes=("audit:read",),
)
def release_legal_hold(hold_id: int) -> s.LegalHoldOut:
    hold = airlock().legal_holds.release(db(), principal=principal(), hold_id=hold_id)
    return s.LegalHoldOut.model_validate(hold, from_attributes=True)
