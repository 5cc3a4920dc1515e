"""Compliance API: the audit log of the caller's own organizations, its export and reports."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

from flask import Blueprint, Response

from gateway.api import schemas as s
from gateway.api.context import airlock, db, principal
from gateway.api.serialize import audit_out
from gateway.api.spec import ID, endpoint
from gateway.audit.canonical import canonical_json, format_timestamp
from gateway.audit.exports import EVENT_COLUMNS, canonical_line
from gateway.db.models import utcnow
from gateway.services.audit_log import AuditFilter, AuditLogService
from gateway.services.compliance import AccessRow, Bucket, ComplianceService, DenialStats

bp = Blueprint("compliance", __name__, url_prefix="/api/v1")
service = AuditLogService()
reports = ComplianceService()
ROWS_PER_CHUNK = 200
EXPORT_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


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
    events, cursor = service.query(
        db(), principal=principal(), filters=_filters(query), cursor=query.cursor, limit=query.limit
    )
    return s.AuditPage(events=[audit_out(e) for e in events], next_cursor=cursor)


@endpoint(
    bp,
    "/audit/export",
    "GET",
    summary="Stream your organizations' audit events (JSON lines or CSV) with their chain links",
    query=s.AuditExportQuery,
    scopes=("audit:read",),
    media=tuple(EXPORT_TYPES.values()),
)
def audit_export(query: s.AuditExportQuery) -> Response:
    rows = service.export(airlock().db.sessionmaker, principal=principal(), filters=_filters(query))
    first = next(rows, None)  # the first batch is read now: a database error is still a 503
    chunks = export_chunks(chain([first], rows) if first else [], query.format)
    name = f"audit-{utcnow():%Y%m%dT%H%M%SZ}.{query.format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(chunks, mimetype=EXPORT_TYPES[query.format], headers=headers)


@endpoint(
    bp,
    "/compliance/access-report",
    "GET",
    summary="Every grant in force on your organizations' models: who, what, since, why",
    query=s.AccessReportQuery,
    response=s.AccessReportOut,
    scopes=("audit:read",),
    media=("text/csv",),
)
def access_report(query: s.AccessReportQuery) -> s.AccessReportOut | Response:
    rows = reports.access_report(db(), principal=principal())
    report = s.AccessReportOut(generated_at=utcnow(), grants=[grant_out(r) for r in rows])
    if query.format == "csv":
        return Response(report_csv(report), mimetype="text/csv")
    return report


@endpoint(
    bp,
    "/compliance/denials",
    "GET",
    summary="Deny and review decisions of a period by reason code, by country and over time",
    query=s.DenialsQuery,
    response=s.DenialStatsOut,
    scopes=("audit:read",),
)
def denials(query: s.DenialsQuery) -> s.DenialStatsOut:
    stats = reports.denials(
        db(),
        principal=principal(),
        since=query.since,
        until=query.until,
        bucket=Bucket(query.bucket),
    )
    return _stats_out(stats)


@endpoint(
    bp,
    "/compliance/timeline",
    "GET",
    summary="One user's or one model's audit events in order",
    query=s.TimelineQuery,
    response=s.AuditPage,
    scopes=("audit:read",),
)
def timeline(query: s.TimelineQuery) -> s.AuditPage:
    events, cursor = service.timeline(
        db(),
        principal=principal(),
        filters=AuditFilter(
            party=query.user, repo_id=query.model, since=query.since, until=query.until
        ),
        cursor=query.cursor,
        limit=query.limit,
    )
    return s.AuditPage(events=[audit_out(e) for e in events], next_cursor=cursor)


def _filters(query: s.AuditFilters) -> AuditFilter:
    return AuditFilter(
        action=query.action,
        effect=query.effect,
        actor=query.actor,
        subject=query.subject,
        repo_id=query.repo_id,
        since=query.since,
        until=query.until,
        tier=query.tier,
        reason=query.reason,
        country=query.country,
    )


def export_chunks(rows: Iterable[dict[str, Any]], kind: str) -> Iterator[bytes]:
    """The rows as gateway.audit.exports writes them (canonical JSON lines, or CSV with the
    payload as canonical JSON), in chunks; `airlock audit verify`'s reader parses either."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n") if kind == "csv" else None
    if writer is not None:
        writer.writerow(EVENT_COLUMNS)
    lines: list[bytes] = []
    for count, row in enumerate(rows, 1):
        row["occurred_at"] = format_timestamp(row["occurred_at"])
        if writer is None:
            lines.append(canonical_line(row).encode("utf-8") + b"\n")
        else:
            writer.writerow(_csv_values(row))
        if count % ROWS_PER_CHUNK == 0:
            yield _drain(lines, buffer)
    yield _drain(lines, buffer)


def _csv_values(row: dict[str, Any]) -> list[Any]:
    payload = canonical_json(row["payload"]).decode("utf-8")
    return ["" if row[f] is None else payload if f == "payload" else row[f] for f in EVENT_COLUMNS]


def _drain(lines: list[bytes], buffer: io.StringIO) -> bytes:
    chunk = b"".join(lines) + buffer.getvalue().encode("utf-8")
    lines.clear()
    buffer.seek(0)
    buffer.truncate()
    return chunk


def grant_out(row: AccessRow) -> s.AccessGrantOut:
    return s.AccessGrantOut(**{**vars(row), "reasons": [_reason(r) for r in row.reasons]})


def _reason(reason: Any) -> s.Reason:
    get = reason.get if isinstance(reason, dict) else (lambda _key: None)
    return s.Reason(
        code=str(get("code") or ""),
        message=str(get("message") or ""),
        rule=str(get("rule") or ""),
        effect=str(get("effect") or ""),
    )


def report_csv(report: s.AccessReportOut) -> str:
    fields = [f for f in s.AccessGrantOut.model_fields if f != "reasons"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*fields, "reason_codes", "reasons"])
    for grant in report.grants:
        data = grant.model_dump(mode="json")
        codes = ";".join(r.code for r in grant.reasons)
        text = " ".join(r.message for r in grant.reasons)
        writer.writerow([*("" if data[f] is None else data[f] for f in fields), codes, text])
    return buffer.getvalue()


def _stats_out(stats: DenialStats) -> s.DenialStatsOut:
    def rank(item: tuple[Any, Any]) -> tuple[int, str]:
        return -(item[1].deny + item[1].review), str(item[0] or "")

    return s.DenialStatsOut(
        since=stats.since,
        until=stats.until,
        bucket=str(stats.bucket),
        totals=s.DenialCounts(**vars(stats.totals)),
        by_reason=[
            s.ReasonDenials(code=code, **vars(c))
            for code, c in sorted(stats.by_reason.items(), key=rank)
        ],
        by_country=[
            s.CountryDenials(country=country, **vars(c))
            for country, c in sorted(stats.by_country.items(), key=rank)
        ],
        series=[s.BucketDenials(start=day, **vars(c)) for day, c in sorted(stats.series.items())],
    )


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
