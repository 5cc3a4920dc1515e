"""Compliance pages: audit search and export, an event's chain position and proof, the chain's
state and verification, the access report, denial charts, timelines and legal holds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from itertools import chain
from typing import Any

from flask import Response, redirect, request, url_for
from pydantic import ValidationError
from sqlalchemy import select

from gateway.api import schemas as s
from gateway.api.compliance import EXPORT_TYPES, export_chunks, grant_out, report_csv
from gateway.api.context import airlock, db
from gateway.api.spec import ID
from gateway.audit import AuditAction
from gateway.audit.facets import REASON_CODES
from gateway.db.models import AuditEvent, LegalHoldKind, Organization, Role, utcnow
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.services.audit_log import AuditFilter, AuditLogService, event_names, readable_orgs
from gateway.services.chain_status import ChainStatusService
from gateway.services.checkpoints import retired_keys, verifier_keys
from gateway.services.compliance import Bucket, ComplianceService, DenialStats
from gateway.web.charts import bar_chart
from gateway.web.pages import NAV, PAGE_SIZE, NavItem, audience_blueprint, flash, page, require_role

bp = audience_blueprint("web_compliance", template_folder="templates")
ROLE = frozenset({Role.COMPLIANCE})
NAV.extend(
    [
        NavItem("Audit", "web_compliance.audit", ROLE),
        NavItem("Chain", "web_compliance.chain_state", ROLE),
        NavItem("Access report", "web_compliance.access_report", ROLE),
        NavItem("Denials", "web_compliance.denials", ROLE),
        NavItem("Timelines", "web_compliance.timeline", ROLE),
        NavItem("Legal holds", "web_compliance.legal_holds", ROLE),
    ]
)
FILTERS = ("action", "effect", "actor", "subject", "repo_id", "tier", "reason", "country")
DATES = ("since", "until")
EFFECTS = ("allow", "deny", "review")
MAX_BACK = 100  # previous-page cursors carried in the query string
log_service = AuditLogService()
reports = ComplianceService()


def _chain_service() -> ChainStatusService:
    settings = airlock().settings
    verifiers = verifier_keys(settings)
    current = verifiers[0] if len(verifiers) > len(retired_keys(settings)) else None
    return ChainStatusService(verifiers=verifiers, current=current, storage=airlock().storage)


# -- audit search ---------------------------------------------------------------------------


@bp.get("/compliance/audit")
def audit() -> Any:
    """Search the audit log of the officer's organizations, a page at a time."""
    principal = require_role(Role.COMPLIANCE)
    filters, errors = _parse_filters(request.args)
    if errors:
        return _audit_page([], {}, errors, None, 400)
    cursor = _int_arg("cursor")
    events, next_cursor = log_service.query(
        db(), principal=principal, filters=filters, cursor=cursor, limit=PAGE_SIZE
    )
    return _audit_page(events, _paging(cursor, next_cursor), {}, filters)


def _audit_page(
    events: list[AuditEvent],
    paging: Mapping[str, Any],
    errors: Mapping[str, list[str]],
    filters: AuditFilter | None,
    status: int = 200,
) -> Any:
    query: dict[str, Any] = {k: v for k, v in request.args.items() if k in (*FILTERS, *DATES) and v}
    return page(
        "compliance_audit.html",
        status,
        events=events,
        names=event_names(db(), events),
        values=request.args,
        errors=errors,
        actions=sorted(str(a) for a in AuditAction),
        effects=EFFECTS,
        reasons=sorted(REASON_CODES),
        exports={kind: url_for(".export", format=kind, **query) for kind in EXPORT_TYPES}
        if filters is not None
        else {},
        **paging,
    )


def _parse_filters(args: Mapping[str, str]) -> tuple[AuditFilter, dict[str, list[str]]]:
    """The filters through the API's own schema, so the same values are valid everywhere."""
    errors: dict[str, list[str]] = {}
    period = {name: _date_arg(args, name, errors) for name in DATES}
    given: dict[str, Any] = {k: args[k].strip() for k in FILTERS if args.get(k, "").strip()}
    given |= {k: v for k, v in period.items() if v}
    if "country" in given:
        given["country"] = given["country"].upper()
    try:
        parsed = s.AuditFilters.model_validate(given)
    except ValidationError as exc:
        for problem in exc.errors():
            name = str(problem["loc"][0]) if problem["loc"] else "_form"
            errors.setdefault(name, []).append(str(problem["msg"]))
        return AuditFilter(), errors
    if errors:
        return AuditFilter(), errors
    values = parsed.model_dump()
    return AuditFilter(**values), errors


def _date_arg(args: Mapping[str, str], name: str, errors: dict[str, list[str]]) -> datetime | None:
    """A YYYY-MM-DD day as UTC midnight; `until` names the last day included."""
    raw = args.get(name, "").strip()
    if not raw:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        errors[name] = ["Give a date as YYYY-MM-DD."]
        return None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if name == "until" and day == date.max:
        return None  # the end of time: no upper bound
    return start + timedelta(days=1) if name == "until" else start


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else None


def _paging(cursor: int | None, next_cursor: int | None) -> dict[str, Any]:
    """Next and previous links: the cursors of earlier pages ride along in `back`."""
    args: dict[str, Any] = {k: v for k, v in request.args.items() if k not in ("cursor", "back")}
    back = [int(b) for b in request.args.get("back", "").split(",") if b.isdigit()][-MAX_BACK:]
    next_url = prev_url = None
    if next_cursor is not None:
        trail = ",".join(str(b) for b in [*back, cursor or 0][-MAX_BACK:])
        next_url = url_for(request.endpoint or "", **args, cursor=next_cursor, back=trail)
    if cursor:
        earlier = back[-1] if back else 0
        extra: dict[str, Any] = {"cursor": earlier} if earlier else {}
        if back[:-1]:
            extra["back"] = ",".join(str(b) for b in back[:-1])
        prev_url = url_for(request.endpoint or "", **args, **extra)
    return {"next_url": next_url, "prev_url": prev_url}


@bp.get("/compliance/audit/export")
def export() -> Any:
    """Stream the filtered events as JSON lines or CSV, as the API's export does."""
    principal = require_role(Role.COMPLIANCE)
    kind = request.args.get("format", "jsonl")
    filters, errors = _parse_filters(request.args)
    if kind not in EXPORT_TYPES or errors:
        raise InvalidInput("choose the format jsonl or csv, and valid filters")
    rows = log_service.export(airlock().db.sessionmaker, principal=principal, filters=filters)
    first = next(rows, None)
    chunks = export_chunks(chain([first], rows) if first else [], kind)
    name = f"audit-{utcnow():%Y%m%dT%H%M%SZ}.{kind}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(chunks, mimetype=EXPORT_TYPES[kind], headers=headers)


# -- one event ------------------------------------------------------------------------------


@bp.get(f"/compliance/audit/<{ID}:seq>")
def event(seq: int) -> Any:
    """One event: every field, its reasons, its chain links and its inclusion proof."""
    principal = require_role(Role.COMPLIANCE)
    found = log_service.get(db(), principal=principal, seq=seq)
    proof = _chain_service().prove(db(), principal=principal, seq=seq)
    return page(
        "compliance_event.html",
        event=found,
        names=event_names(db(), [found]),
        reasons=_reasons(found.payload),
        payload=json.dumps(found.payload, indent=2, sort_keys=True, default=str),
        proof=proof,
    )


def _reasons(payload: Any) -> list[dict[str, Any]]:
    """The decision's reasons an event recorded (at the top or under `decision`)."""
    if not isinstance(payload, dict):
        return []
    decision = payload.get("decision")
    found = decision.get("reasons") if isinstance(decision, dict) else payload.get("reasons")
    return [r for r in found or [] if isinstance(r, dict)]


# -- the chain ------------------------------------------------------------------------------


@bp.get("/compliance/chain")
def chain_state() -> Any:
    """The last checkpoint, its signature checked now, and events since."""
    principal = require_role(Role.COMPLIANCE)
    state = _chain_service().state(db(), principal=principal)
    return page("compliance_chain.html", state=state, verification=None)


@bp.post("/compliance/chain/verify")
def verify_chain() -> Any:
    """Run the bounded online verification and show what it checked."""
    principal = require_role(Role.COMPLIANCE)
    service = _chain_service()
    verification = service.verify(db(), principal=principal)
    state = service.state(db(), principal=principal)
    return page("compliance_chain.html", state=state, verification=verification)


# -- reports --------------------------------------------------------------------------------


@bp.get("/compliance/access-report")
def access_report() -> Any:
    """Every grant in force on the officer's organizations' models, and why."""
    principal = require_role(Role.COMPLIANCE)
    rows = reports.access_report(db(), principal=principal)
    if request.args.get("format") == "csv":
        report = s.AccessReportOut(generated_at=utcnow(), grants=[grant_out(r) for r in rows])
        headers = {"Content-Disposition": 'attachment; filename="access-report.csv"'}
        return Response(report_csv(report), mimetype="text/csv", headers=headers)
    return page("compliance_report.html", rows=rows, generated_at=utcnow())


@bp.get("/compliance/denials")
def denials() -> Any:
    """Deny and review decisions by reason, by country and over time, as charts and tables."""
    principal = require_role(Role.COMPLIANCE)
    errors: dict[str, list[str]] = {}
    since, until = (_date_arg(request.args, name, errors) for name in DATES)
    bucket = request.args.get("bucket", "day")
    if bucket not in set(Bucket):
        errors["bucket"] = ["Choose day or week."]
    if not errors:
        try:
            stats = reports.denials(
                db(), principal=principal, since=since, until=until, bucket=Bucket(bucket)
            )
        except InvalidInput as exc:
            errors["_form"] = [exc.detail]
    if errors:
        return page("compliance_denials.html", 400, stats=None, charts=[], errors=errors)
    return page("compliance_denials.html", stats=stats, charts=_charts(stats), errors={})


def _charts(stats: DenialStats) -> list[Any]:
    def ranked(items: Any) -> list[tuple[str, int, int]]:
        rows = [(str(k or "unknown"), c.deny, c.review) for k, c in items]
        return sorted(rows, key=lambda r: (-(r[1] + r[2]), r[0]))

    series = [(f"{day:%Y-%m-%d}", c.deny, c.review) for day, c in sorted(stats.series.items())]
    return [
        bar_chart("By reason code", ranked(stats.by_reason.items())),
        bar_chart("By country", ranked(stats.by_country.items())),
        bar_chart(f"Per {stats.bucket}", series),
    ]


@bp.get("/compliance/timeline")
def timeline() -> Any:
    """One user's or one model's events in order."""
    principal = require_role(Role.COMPLIANCE)
    user = request.args.get("user", "").strip() or None
    model = request.args.get("model", "").strip() or None
    if user is None and model is None:
        return page("compliance_timeline.html", events=None, names=None, values=request.args)
    cursor = _int_arg("cursor")
    events, next_cursor = log_service.timeline(
        db(),
        principal=principal,
        filters=AuditFilter(party=user, repo_id=model),
        cursor=cursor,
        limit=PAGE_SIZE,
    )
    return page(
        "compliance_timeline.html",
        events=events,
        names=event_names(db(), events),
        values=request.args,
        **_paging(cursor, next_cursor),
    )


# -- legal holds ----------------------------------------------------------------------------


@bp.get("/compliance/legal-holds")
def legal_holds() -> Any:
    """The legal holds of the officer's organizations, and a form to place one."""
    require_role(Role.COMPLIANCE)
    return _holds_page()


def _holds_page(status: int = 200, errors: Mapping[str, list[str]] | None = None) -> Any:
    principal = require_role(Role.COMPLIANCE)
    holds = airlock().legal_holds.list(db(), principal=principal)
    orgs = db().scalars(
        select(Organization.slug)
        .where(Organization.id.in_(readable_orgs(principal)))
        .order_by(Organization.slug)
    )
    return page(
        "compliance_holds.html",
        status,
        holds=list(reversed(holds)),
        orgs=list(orgs),
        kinds=sorted(str(k) for k in LegalHoldKind),
        values=request.form if request.method == "POST" else {},
        errors=errors or {},
    )


@bp.post("/compliance/legal-holds")
def place_hold() -> Any:
    """Place a legal hold with its reason (through the same service as the API)."""
    principal = require_role(Role.COMPLIANCE)
    form = request.form
    try:
        hold = airlock().legal_holds.place(
            db(),
            principal=principal,
            org=form.get("org", ""),
            kind=form.get("kind", ""),
            subject=form.get("subject", "").strip(),
            reason=form.get("reason", ""),
        )
    except (InvalidInput, NotFound) as exc:
        return _holds_page(400, {"_form": [exc.detail]})
    flash(f"Legal hold {hold.id} is placed.", "success")
    return redirect(url_for(".legal_holds"))


@bp.post(f"/compliance/legal-holds/<{ID}:hold_id>/release")
def release_hold(hold_id: int) -> Any:
    """Release a legal hold."""
    principal = require_role(Role.COMPLIANCE)
    try:
        airlock().legal_holds.release(db(), principal=principal, hold_id=hold_id)
    except Conflict as exc:
        return _holds_page(409, {"_form": [exc.detail]})
    flash(f"Legal hold {hold_id} is released.", "success")
    return redirect(url_for(".legal_holds"))
