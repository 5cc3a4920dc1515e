"""Publisher and reviewer pages: models, revisions, the policy editor, the review queue, grants,
stage promotion and emergency freeze, through the same services as /api/v1."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from flask import redirect, request, url_for
from sqlalchemy import select

from gateway.api.context import airlock, db
from gateway.auth.tokens import Scope
from gateway.db.models import AccessRequest, Grant, Model, RequestStatus, Revision, Role, utcnow
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound, PolicyInvalid
from gateway.services.principal import Principal
from gateway.web.pages import NAV, NavItem, audience_blueprint, current_principal, flash, page
from policies.vocab import Stage

MANAGERS = frozenset({Role.PUBLISHER, Role.REVIEWER})  # owners hold every role
bp = audience_blueprint("web_publisher", template_folder="templates")
NAV.extend(
    [
        NavItem("Manage models", "web_publisher.models", MANAGERS),
        NavItem("Review queue", "web_publisher.queue", frozenset({Role.REVIEWER})),
    ]
)
MANAGING = frozenset({Role.OWNER, Role.PUBLISHER, Role.REVIEWER})
MODEL = "/manage/models/<org>/<name>"
POLICY_ACTIONS = ("apply", "preview", "validate")
STAGE_LINE = re.compile(r"^stage:[^\n]*$", re.MULTILINE)
REVISIONS_SHOWN = 20
DECIDED_SHOWN = 20
REASON_NEEDED = "Give a reason: it is recorded in the audit log."


def _managing_orgs(principal: Principal) -> set[int]:
    return {org for org, roles in principal.roles.items() if roles & MANAGING}


def _can(principal: Principal, model: Model, scope: Scope) -> bool:
    return model.org_id in principal.orgs_with_scope(scope)


def managed_model(org: str, name: str) -> Model:
    """The model `org/name` if the user publishes or reviews in its organization, else 404."""
    principal = _require_manager()
    model = airlock().publishing.get_model(db(), f"{org}/{name}")
    if model.org_id not in _managing_orgs(principal):
        raise NotFound(f"model '{org}/{name}' not found")
    return model


def _require_manager() -> Principal:
    principal = current_principal()
    principal.require_user()
    if not _managing_orgs(principal):
        raise Forbidden("this page is for the publisher or reviewer role")
    return principal


@bp.get("/manage/models")
def models() -> Any:
    """The models of every organization where the user publishes or reviews."""
    orgs = _managing_orgs(_require_manager())
    found = db().scalars(select(Model).where(Model.org_id.in_(orgs)).order_by(Model.id))
    rows = [(m, airlock().policies.current(m)) for m in found]
    return page("pub_models.html", rows=rows)


@bp.get(MODEL)
def model(org: str, name: str) -> Any:
    """A model: stage, freeze, upstream, revisions and their vetting reports."""
    return _model_page(managed_model(org, name))


def _model_page(
    found: Model, *, status: int = 200, errors: Mapping[str, list[str]] | None = None
) -> Any:
    principal = current_principal()
    revisions = db().scalars(
        select(Revision)
        .where(Revision.model_id == found.id)
        .order_by(Revision.id.desc())
        .limit(REVISIONS_SHOWN)
    )
    return page(
        "pub_model.html",
        status,
        model=found,
        policy=airlock().policies.current(found),
        revisions=list(revisions),
        stages=list(Stage),
        may_publish=_can(principal, found, Scope.MODELS_WRITE),
        may_policy=_can(principal, found, Scope.POLICIES_WRITE),
        may_grants=_can(principal, found, Scope.GRANTS_MANAGE),
        may_review=_can(principal, found, Scope.REQUESTS_REVIEW),
        errors=errors or {},
    )


# -- emergency freeze and stage promotion (a reason, then a confirmation step) --------------------
@bp.post(MODEL + "/freeze")
def freeze(org: str, name: str) -> Any:
    """Freeze or unfreeze the model after confirmation; a reason is required."""
    found = managed_model(org, name)
    airlock().publishing.require_publisher(current_principal(), found)
    frozen = request.form.get("frozen") == "true"
    reason = request.form.get("reason", "").strip()
    if not reason:
        return _model_page(found, status=400, errors={"freeze_reason": [REASON_NEEDED]})
    if request.form.get("confirm") != "yes":
        action = "Freeze" if frozen else "Unfreeze"
        return page("pub_confirm.html", model=found, action=action, kind="freeze", reason=reason)
    airlock().access.set_frozen(
        db(), principal=current_principal(), model=found, frozen=frozen, reason=reason
    )
    flash(f"{found.repo_id} is {'frozen' if frozen else 'no longer frozen'}.", "success")
    return redirect(url_for("web_publisher.model", org=org, name=name))


@bp.post(MODEL + "/stage")
def stage(org: str, name: str) -> Any:
    """Move the model to another release stage (a new policy version) after confirmation."""
    found = managed_model(org, name)
    principal = current_principal()
    principal.require_org_scope(found.org_id, Scope.POLICIES_WRITE)
    wanted, reason = request.form.get("stage", ""), request.form.get("reason", "").strip()
    errors = _stage_errors(found, wanted, reason)
    if errors:
        return _model_page(found, status=400, errors=errors)
    assert found.policy_version is not None
    source = with_stage(found.policy_version.source, Stage(wanted))
    if request.form.get("confirm") != "yes":
        check = airlock().reevaluation.check(db(), principal=principal, source=source)
        action = f"Move to stage {wanted}"
        context: dict[str, Any] = {"reason": reason, "stage": wanted, "check": check}
        return page("pub_confirm.html", model=found, action=action, kind="stage", **context)
    version, _ = airlock().policies.apply(db(), principal=principal, source=source, comment=reason)
    flash(f"{found.repo_id} is in stage {wanted} (policy version {version.version}).", "success")
    return redirect(url_for("web_publisher.model", org=org, name=name))


def _stage_errors(found: Model, wanted: str, reason: str) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    problem = _stage_problem(found, wanted)
    if problem:
        errors["stage"] = [problem]
    if not reason:
        errors["stage_reason"] = [REASON_NEEDED]
    return errors


def _stage_problem(found: Model, wanted: str) -> str | None:
    current = airlock().policies.current(found)
    if current is None or found.policy_version is None:
        return "Apply a release policy first."
    if wanted not in set(Stage):
        return "Choose one of the stages."
    if wanted == current.stage:
        return f"The model is already in stage {wanted}."
    if not STAGE_LINE.search(found.policy_version.source):
        return "The policy has no top-level 'stage:' line; change it in the policy editor."
    return None


def with_stage(source: str, stage: Stage) -> str:
    """The policy source with its top-level `stage:` line set to `stage`."""
    return STAGE_LINE.sub(f"stage: {stage}", source, count=1)


# -- the policy editor ----------------------------------------------------------------------------
@bp.get(MODEL + "/policy")
def policy(org: str, name: str) -> Any:
    """The policy editor with the current YAML and every applied version."""
    found = managed_model(org, name)
    current = found.policy_version
    return _policy_page(found, source=current.source if current else "")


def _policy_page(
    found: Model,
    *,
    source: str,
    status: int = 200,
    problems: Sequence[Mapping[str, Any]] = (),
    **context: Any,
) -> Any:
    history = airlock().policies.history(db(), principal=current_principal(), model=found)
    by_line: dict[int, list[Mapping[str, Any]]] = {}
    for problem in problems:
        by_line.setdefault(problem.get("line") or 0, []).append(problem)
    return page(
        "pub_policy.html",
        status,
        model=found,
        source=source,
        lines=source.splitlines(),
        problems=problems,
        by_line=by_line,
        history=history,
        comment=request.form.get("comment", ""),
        **context,
    )


@bp.post(MODEL + "/policy")
def policy_action(org: str, name: str) -> Any:
    """Validate, preview (which grants the change would suspend or revoke) or apply."""
    found = managed_model(org, name)
    principal = current_principal()
    principal.require_org_scope(found.org_id, Scope.POLICIES_WRITE)
    source = request.form.get("source", "").replace("\r\n", "\n")
    action = request.form.get("action")
    if action not in POLICY_ACTIONS:
        raise InvalidInput("choose validate, preview or apply")
    try:
        problems = _other_model(found, airlock().policies.validate(source).model, source)
        if problems:
            return _policy_page(found, source=source, status=422, problems=problems)
        if action == "validate":
            return _policy_page(found, source=source, valid=True)
        if action == "preview":
            check = airlock().reevaluation.check(db(), principal=principal, source=source)
            return _policy_page(found, source=source, check=check)
        comment = request.form.get("comment", "").strip()
        version, created = airlock().policies.apply(
            db(), principal=principal, source=source, comment=comment
        )
    except PolicyInvalid as exc:
        return _policy_page(found, source=source, status=422, problems=exc.extra["errors"])
    except InvalidInput as exc:
        problems = [{"path": "", "line": None, "message": exc.detail}]
        return _policy_page(found, source=source, status=422, problems=problems)
    done = f"applied as version {version.version}" if created else "unchanged (same content)"
    flash(f"The policy of {found.repo_id} is {done}.", "success")
    return redirect(url_for("web_publisher.policy", org=org, name=name))


def _other_model(found: Model, named: str, source: str) -> list[dict[str, Any]]:
    if named == found.repo_id:
        return []
    line = next((i for i, t in enumerate(source.splitlines(), 1) if t.startswith("model:")), None)
    message = f"This editor is for {found.repo_id}; the document names '{named}'."
    return [{"path": "model", "line": line, "message": message}]


# -- grants ---------------------------------------------------------------------------------------
@bp.get(MODEL + "/grants")
def grants(org: str, name: str) -> Any:
    """A model's grants with expiry, each revocable with a reason."""
    return _grants_page(managed_model(org, name))


def _grants_page(
    found: Model, *, status: int = 200, errors: Mapping[int, list[str]] | None = None
) -> Any:
    rows = airlock().access.list_grants(
        db(), principal=current_principal(), model=found, mine=False
    )
    return page(
        "pub_grants.html",
        status,
        model=found,
        grants=list(reversed(rows)),
        now=utcnow(),
        errors=errors or {},
    )


@bp.post("/manage/grants/<int:grant_id>/revoke")
def revoke_grant(grant_id: int) -> Any:
    """Revoke a grant; a reason is required."""
    principal = _require_manager()
    grant = db().get(Grant, grant_id)
    if grant is None or grant.model.org_id not in _managing_orgs(principal):
        raise NotFound("no such grant")
    found = grant.model
    reason = request.form.get("reason", "").strip()
    if not reason:
        return _grants_page(found, status=400, errors={grant_id: [REASON_NEEDED]})
    try:
        airlock().access.revoke_grant(db(), principal=principal, grant_id=grant_id, reason=reason)
    except Conflict as exc:
        return _grants_page(found, status=409, errors={grant_id: [exc.detail]})
    flash(f"Grant #{grant_id} is revoked.", "success")
    org, _, name = found.repo_id.partition("/")
    return redirect(url_for("web_publisher.grants", org=org, name=name))


# -- the review queue -----------------------------------------------------------------------------
@bp.get("/review")
def queue() -> Any:
    """Pending requests for the reviewer's organizations' models, oldest first."""
    principal = _require_manager()
    found = airlock().access.list_requests(db(), principal=principal, status=RequestStatus.PENDING)
    decided = [
        r
        for status in (RequestStatus.APPROVED, RequestStatus.REJECTED)
        for r in airlock().access.list_requests(db(), principal=principal, status=status)
    ]
    decided.sort(key=lambda r: r.decided_at or r.created_at, reverse=True)
    now = utcnow()
    rows = [(r, waited(r.created_at, now)) for r in found]
    return page("pub_queue.html", rows=rows, decided=decided[:DECIDED_SHOWN])


@bp.get("/review/<int:request_id>")
def review(request_id: int) -> Any:
    """One pending request with its facts, the engine's reasons and the verdict form."""
    return _review_page(_reviewable(request_id))


def _reviewable(request_id: int) -> AccessRequest:
    principal = _require_manager()
    found = airlock().access.get_request(db(), principal=principal, request_id=request_id)
    if found.model.org_id not in principal.orgs_with_scope(Scope.REQUESTS_REVIEW):
        raise NotFound("no such access request")  # the requester reads it on their own pages
    return found


def _review_page(
    found: AccessRequest,
    *,
    status: int = 200,
    errors: Mapping[str, list[str]] | None = None,
    values: Mapping[str, str] | None = None,
) -> Any:
    kyc = airlock().access.current_kyc(db(), user_id=found.user_id, org_id=found.model.org_id)
    return page(
        "pub_review.html",
        status,
        req=found,
        kyc=kyc,
        waited=waited(found.created_at, utcnow()),
        approvals=sum(1 for r in found.reviews if r.verdict == "approve"),
        errors=errors or {},
        values=values or {},
    )


@bp.post("/review/<int:request_id>")
def decide(request_id: int) -> Any:
    """Approve, or reject with a reason; the service holds the n-reviewer and self-review rules."""
    found = _reviewable(request_id)
    verdict, note = request.form.get("verdict", ""), request.form.get("note", "").strip()
    values = {"verdict": verdict, "note": note}
    if verdict not in ("approve", "reject"):
        errors = {"verdict": ["Choose approve or reject."]}
        return _review_page(found, status=400, errors=errors, values=values)
    if verdict == "reject" and not note:
        errors = {"note": ["A rejection needs a reason the requester will read."]}
        return _review_page(found, status=400, errors=errors, values=values)
    try:
        outcome = airlock().access.review(
            db(),
            principal=current_principal(),
            request_id=request_id,
            approve=verdict == "approve",
            note=note,
        )
    except (Conflict, Forbidden, InvalidInput) as exc:
        db().rollback()
        code = 403 if isinstance(exc, Forbidden) else 409
        return _review_page(found, status=code, errors={"_form": [exc.detail]}, values=values)
    made = outcome.request
    flash(f"Request #{made.id} by {made.user.username}: your verdict is recorded ({made.status}).")
    return redirect(url_for("web_publisher.queue"))


@bp.post("/review/<int:request_id>/reset")
def reset(request_id: int) -> Any:
    """Send a reviewed request back to pending (its grant revoked); a reason is required."""
    found = _reviewable(request_id)
    reason = request.form.get("reason", "").strip()
    if not reason:
        errors = {"reset_reason": [REASON_NEEDED]}
        return _review_page(found, status=400, errors=errors)
    try:
        airlock().access.reset_request(
            db(), principal=current_principal(), request_id=request_id, reason=reason
        )
    except (Conflict, Forbidden) as exc:
        db().rollback()
        code = 403 if isinstance(exc, Forbidden) else 409
        return _review_page(found, status=code, errors={"_form": [exc.detail]})
    flash(f"Request #{request_id} is pending again; its verdicts were cleared.", "success")
    return redirect(url_for("web_publisher.review", request_id=request_id))


def waited(since: datetime, now: datetime) -> str:
    """How long something has waited, in the largest sensible units."""
    minutes = max(int((now - since).total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days"
