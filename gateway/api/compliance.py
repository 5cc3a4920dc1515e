"""Compliance API: the audit log of the caller's own organizations."""

from __future__ import annotations

from flask import Blueprint

from gateway.api import schemas as s
from gateway.api.context import db, principal
from gateway.api.serialize import audit_out
from gateway.api.spec import endpoint
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
