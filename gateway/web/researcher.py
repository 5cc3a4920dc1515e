"""Researcher pages: catalog, tiers and what is missing, requests, grants, tokens, KYC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from flask import redirect, request, url_for
from sqlalchemy import select

from gateway.api.context import airlock, base_url, db, request_country, visible_model
from gateway.auth.tokens import Scope
from gateway.db.models import Grant, GrantStatus, Model, RequestStatus, User, utcnow
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.services.access import renewable_from
from gateway.web.pages import NAV, NavItem, audience_blueprint, current_principal, flash, page
from gateway.web.words import duration, grants_in_words, requirements_in_words
from policies import FormField, KycLevel, ReleasePolicy, validate_form
from policies.schema import Tier
from policies.vocab import Effect, FieldType, ReasonCode

bp = audience_blueprint(
    "web_researcher", template_folder="templates", static_folder="static", static_url_path="/static"
)
NAV.extend(
    [
        NavItem("Models", "web_researcher.catalog"),
        NavItem("My requests", "web_researcher.requests"),
        NavItem("My grants", "web_researcher.grants"),
        NavItem("API tokens", "web_researcher.tokens"),
        NavItem("Identity", "web_researcher.kyc"),
    ]
)
# Supplied with the request itself, so not "missing" before it is made.
SUPPLIED_WITH_REQUEST = {
    ReasonCode.AGREEMENT_NOT_ACCEPTED,
    ReasonCode.FORM_INCOMPLETE,
    ReasonCode.APPROVAL_REQUIRED,
}
TOKEN_DAYS = (7, 30, 90, 365)
AGREEMENT_FIELD = "agreement"


@bp.get("/")
def home() -> Any:
    """The signed-in start page."""
    principal = current_principal()
    session = db()
    mine = airlock().access.list_requests(session, principal=principal, mine=True)
    grants = airlock().access.list_grants(session, principal=principal, mine=True)
    pending = [r for r in mine if r.status == RequestStatus.PENDING]
    now = utcnow()
    active = [
        g
        for g in grants
        if g.status == GrantStatus.ACTIVE and (g.expires_at is None or g.expires_at > now)
    ]
    return page("home.html", pending=pending, grants=active, requests=mine)


@bp.get("/models")
def catalog() -> Any:
    """Every model the user may know of, with its stage and tiers."""
    principal = current_principal()
    models = db().scalars(select(Model).order_by(Model.org_id, Model.name))
    rows = []
    for model in models:
        policy = airlock().policies.current(model)
        if policy is not None and airlock().access.visible(principal, model):
            rows.append((model, policy))
    return page("catalog.html", rows=rows)


@bp.get("/models/<org>/<name>")
def model(org: str, name: str) -> Any:
    """A model's tiers: what each grants, requires, and what the user still lacks."""
    return _model_page(visible_model(org, name))


def _model_page(
    found: Model,
    *,
    status: int = 200,
    chosen: str | None = None,
    values: Mapping[str, object] | None = None,
    errors: Mapping[str, list[str]] | None = None,
) -> Any:
    _, policy = airlock().policies.require_current(found)
    user = db().get_one(User, current_principal().require_user())
    tiers = [_tier_view(found, policy, tier, user) for tier in policy.tiers]
    return page(
        "model.html",
        status,
        model=found,
        policy=policy,
        tiers=tiers,
        chosen=chosen,
        values=values or {},
        errors=errors or {},
        agreement_field=AGREEMENT_FIELD,
        frozen=found.frozen_at is not None,
    )


def _tier_view(found: Model, policy: ReleasePolicy, tier: Tier, user: User) -> dict[str, Any]:
    ref = tier.requires.agreement
    subject = airlock().access.subject(
        db(),
        user=user,
        model=found,
        request_country=request_country(),
        agreement=(ref.id, ref.version) if ref else None,
    )
    decision = airlock().access.decide(policy, tier.name, subject, found, utcnow())
    shown = [r for r in decision.reasons if r.code not in SUPPLIED_WITH_REQUEST]
    agreement = policy.agreements.get(ref.id) if ref else None
    return {
        "tier": tier,
        "open": policy.stage in tier.opens_in,
        "grants": grants_in_words(tier),
        "requires": requirements_in_words(tier),
        "duration": duration(tier),
        "missing": [r for r in shown if r.effect is Effect.DENY],
        "review": [r for r in shown if r.effect is Effect.REVIEW],
        "fields": policy.forms.get(tier.requires.form or "", ()),
        "agreement": agreement,
    }


@bp.post("/models/<org>/<name>/request")
def request_tier(org: str, name: str) -> Any:
    """Submit the request form for one tier (through the same service as the API)."""
    found = visible_model(org, name)
    _, policy = airlock().policies.require_current(found)
    tier = policy.tier(request.form.get("tier", ""))
    if tier is None:
        raise InvalidInput("choose one of this model's tiers")
    fields = policy.forms.get(tier.requires.form or "", ())
    values = _form_values(fields, request.form)
    errors = _field_errors(fields, values)
    ref = tier.requires.agreement
    accepted = request.form.get(AGREEMENT_FIELD) == str(ref) if ref else False
    if ref and not accepted:
        errors[AGREEMENT_FIELD] = ["Accept the agreement to request this tier."]
    if errors:
        return _model_page(found, status=400, chosen=tier.name, values=values, errors=errors)
    try:
        outcome = airlock().access.request_access(
            db(),
            principal=current_principal(),
            model=found,
            tier=tier.name,
            form=values,
            agreement=str(ref) if ref and accepted else None,
            request_country=request_country(),
        )
    except (Conflict, InvalidInput) as exc:
        errors = {"_form": [exc.detail]}
        return _model_page(found, status=409, chosen=tier.name, values=values, errors=errors)
    made = outcome.request
    flash(f"Request {made.id} for the tier '{tier.name}' is {made.status}.", "success")
    return redirect(url_for("web_researcher.request_detail", request_id=made.id))


def _form_values(fields: Sequence[FormField], form: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for field in fields:
        raw = form.get(field.name, "")
        if field.type is FieldType.CHECKBOX:
            values[field.name] = raw == "true"
        elif raw.strip():
            text = raw.strip()
            values[field.name] = text.upper() if field.type is FieldType.COUNTRY else text
    return values


def _field_errors(
    fields: Sequence[FormField], values: Mapping[str, object]
) -> dict[str, list[str]]:
    found = {}
    for field in fields:
        problems = validate_form([field], {k: v for k, v in values.items() if k == field.name})
        if problems:
            found[field.name] = problems
    return found


@bp.get("/requests")
def requests() -> Any:
    """The user's requests and where each stands."""
    found = airlock().access.list_requests(db(), principal=current_principal(), mine=True)
    return page("requests.html", requests=list(reversed(found)))


@bp.get("/requests/<int:request_id>")
def request_detail(request_id: int) -> Any:
    """One request: status, every reason, reviewers' notes."""
    principal = current_principal()
    found = airlock().access.get_request(db(), principal=principal, request_id=request_id)
    if found.user_id != principal.user_id:  # reviewers read requests on their own pages
        raise NotFound("no such access request")
    return page("request.html", req=found)


@bp.get("/grants")
def grants() -> Any:
    """The user's grants with expiry, when each may be renewed, and pending renewals."""
    access = airlock().access
    found = access.list_grants(db(), principal=current_principal(), mine=True)
    pending = access.pending_renewals(db(), found)
    rows = [(g, renewable_from(g), pending.get(g.id)) for g in reversed(found)]
    return page("grants.html", rows=rows, now=utcnow())


@bp.get("/grants/<int:grant_id>/renew")
def renew_form(grant_id: int) -> Any:
    """The renewal form, prefilled with the answers of the request behind the grant."""
    grant, previous = airlock().access.renewable(
        db(), principal=current_principal(), grant_id=grant_id
    )
    values = dict(previous.form) if previous else {}
    accepted = (previous.agreement_id, previous.agreement_version) if previous else None
    return _renew_page(grant, values=values, accepted=accepted)


@bp.post("/grants/<int:grant_id>/renew")
def renew(grant_id: int) -> Any:
    """Submit a renewal (through the same service as the API)."""
    grant, _ = airlock().access.renewable(db(), principal=current_principal(), grant_id=grant_id)
    tier, fields = _renewed_tier(grant)
    values = _form_values(fields, request.form)
    errors = _field_errors(fields, values)
    ref = tier.requires.agreement
    if ref and request.form.get(AGREEMENT_FIELD) != str(ref):
        errors[AGREEMENT_FIELD] = ["Accept the agreement to renew this grant."]
    if errors:
        return _renew_page(grant, status=400, values=values, errors=errors)
    try:
        outcome = airlock().access.renew_grant(
            db(),
            principal=current_principal(),
            grant_id=grant.id,
            form=values,
            agreement=str(ref) if ref else None,
            request_country=request_country(),
        )
    except (Conflict, InvalidInput) as exc:
        return _renew_page(grant, status=409, values=values, errors={"_form": [exc.detail]})
    made = outcome.request
    flash(f"Renewal request {made.id} for grant #{grant.id} is {made.status}.", "success")
    return redirect(url_for("web_researcher.request_detail", request_id=made.id))


def _renewed_tier(grant: Grant) -> tuple[Tier, Sequence[FormField]]:
    _, policy = airlock().policies.require_current(grant.model)
    tier = policy.tier(grant.tier)
    if tier is None:
        raise Conflict(f"this model no longer offers tier '{grant.tier}'; nothing to renew")
    return tier, policy.forms.get(tier.requires.form or "", ())


def _renew_page(
    grant: Grant,
    *,
    status: int = 200,
    values: Mapping[str, object],
    errors: Mapping[str, list[str]] | None = None,
    accepted: tuple[str | None, int | None] | None = None,
) -> Any:
    tier, fields = _renewed_tier(grant)
    ref = tier.requires.agreement
    _, policy = airlock().policies.require_current(grant.model)
    return page(
        "renew.html",
        status,
        grant=grant,
        fields=fields,
        values=values,
        errors=errors or {},
        agreement=policy.agreements.get(ref.id) if ref else None,
        accepted=ref is not None and accepted == (ref.id, ref.version),
        changed=ref is not None and accepted is not None and accepted != (ref.id, ref.version),
        agreement_field=AGREEMENT_FIELD,
    )


@bp.get("/tokens")
def tokens() -> Any:
    """The user's API tokens (never their secrets) and a form for a new one."""
    return _tokens_page()


def _tokens_page(
    *, status: int = 200, created: str | None = None, errors: Mapping[str, list[str]] | None = None
) -> Any:
    principal = current_principal()
    found = airlock().identity.list_tokens(db(), principal=principal)
    return page(
        "tokens.html",
        status,
        tokens=list(reversed(found)),
        scopes=sorted(principal.scopes),
        days=TOKEN_DAYS,
        created=created,
        errors=errors or {},
        now=utcnow(),
    )


@bp.post("/tokens")
def create_token() -> Any:
    """Create a token; its secret is shown on this one response only."""
    name = request.form.get("name", "").strip()
    scopes = request.form.getlist("scopes")
    errors: dict[str, list[str]] = {}
    if not name or len(name) > 100:
        errors["name"] = ["Give the token a name of 1 to 100 characters."]
    if not scopes:
        errors["scopes"] = ["Choose at least one scope."]
    days = request.form.get("days", "")
    if not days.isdigit() or int(days) not in TOKEN_DAYS:
        errors["days"] = ["Choose one of the offered lifetimes."]
    if errors:
        return _tokens_page(status=400, errors=errors)
    try:
        issued = airlock().identity.create_token(
            db(),
            principal=current_principal(),
            name=name,
            scopes=[Scope(s) for s in scopes if s in set(Scope)],
            ttl=timedelta(days=int(days)),
        )
    except (InvalidInput, Forbidden) as exc:
        return _tokens_page(status=400, errors={"scopes": [exc.detail]})
    return _tokens_page(status=201, created=issued.plaintext)


@bp.post("/tokens/<int:token_id>/revoke")
def revoke_token(token_id: int) -> Any:
    """Revoke one of the user's tokens."""
    token = airlock().identity.revoke_token(db(), principal=current_principal(), token_id=token_id)
    flash(f"Token '{token.name}' is revoked.", "success")
    return redirect(url_for("web_researcher.tokens"))


@bp.get("/kyc")
def kyc() -> Any:
    """The user's identity verifications, and starting one at a configured provider."""
    rows = airlock().kyc.list_mine(db(), principal=current_principal())
    providers = [p.name for p in airlock().settings.kyc_providers]
    return page("kyc.html", rows=rows, providers=providers, started=None, errors={})


@bp.post("/kyc/start")
def kyc_start() -> Any:
    """Begin a verification; the provider's hosted flow is linked (not redirected to)."""
    providers = [p.name for p in airlock().settings.kyc_providers]
    provider = request.form.get("provider", "")
    if provider not in providers:
        rows = airlock().kyc.list_mine(db(), principal=current_principal())
        errors = {"provider": ["Choose one of the offered providers."]}
        return page("kyc.html", 400, rows=rows, providers=providers, started=None, errors=errors)
    started = airlock().kyc.start(
        db(),
        principal=current_principal(),
        provider=provider,
        level=KycLevel.IDENTITY,
        return_url=base_url() + url_for("web_researcher.kyc"),
    )
    rows = airlock().kyc.list_mine(db(), principal=current_principal())
    return page("kyc.html", 201, rows=rows, providers=providers, started=started, errors={})
