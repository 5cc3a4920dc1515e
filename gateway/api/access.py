"""Access API for researchers and reviewers: tiers, requests, reviews, grants, tokens, KYC."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint
from sqlalchemy import select

from gateway.api import schemas as s
from gateway.api.context import airlock, base_url, db, principal, request_country, visible_model
from gateway.api.serialize import grant_out, request_out, token_out
from gateway.api.spec import ID, endpoint
from gateway.auth.tokens import Scope
from gateway.db.models import KycVerification, Organization, RequestStatus, User, utcnow
from gateway.errors import NotFound
from gateway.kyc import KycFacts
from policies import KycLevel

bp = Blueprint("access", __name__, url_prefix="/api/v1")
MODEL = "/models/<org>/<name>"


@endpoint(
    bp,
    MODEL + "/access",
    "GET",
    summary="A model's tiers and how to request them",
    response=s.ModelAccessOut,
)
def model_access(org: str, name: str) -> s.ModelAccessOut:
    model = visible_model(org, name)
    _, policy = airlock().policies.require_current(model)
    doc: dict[str, Any] = policy.to_dict()
    tiers = [
        s.TierOut(
            name=t["name"],
            grants=t["grants"],
            files=t.get("files", []),
            requires=t["requires"],
            limits=t.get("limits", {}),
            grant_ttl=t.get("grant_ttl"),
            open=str(policy.stage) in t["opens_in"],
        )
        for t in doc["tiers"]
    ]
    url = f"{base_url()}/api/v1/models/{model.repo_id}/access"
    return s.ModelAccessOut(
        repo_id=model.repo_id,
        stage=str(policy.stage),
        frozen=model.frozen_at is not None,
        tiers=tiers,
        agreements=doc.get("agreements", {}),
        forms=doc.get("forms", {}),
        how_to_request=f'POST {url} with {{"tier": ..., "form": {{...}}, '
        '"agreement": "id@version"}',
    )


@endpoint(
    bp,
    MODEL + "/access",
    "POST",
    summary="Request a tier of a model",
    body=s.AccessRequestIn,
    response=s.AccessRequestOut,
    status=201,
    scopes=("access:request",),
)
def request_access(org: str, name: str, body: s.AccessRequestIn) -> s.AccessRequestOut:
    outcome = airlock().access.request_access(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        tier=body.tier,
        form=body.form,
        agreement=body.agreement,
        request_country=request_country(),
    )
    return request_out(outcome.request, outcome.grant)


@endpoint(
    bp,
    "/me/requests",
    "GET",
    summary="Your access requests",
    response=s.AccessRequestList,
    scopes=("access:request",),
)
def my_requests() -> s.AccessRequestList:
    found = airlock().access.list_requests(db(), principal=principal(), mine=True)
    return s.AccessRequestList(requests=[request_out(r) for r in found])


@endpoint(
    bp,
    "/requests",
    "GET",
    summary="Requests for your organizations' models (reviewers)",
    query=s.RequestListQuery,
    response=s.AccessRequestList,
    scopes=("requests:review",),
)
def review_queue(query: s.RequestListQuery) -> s.AccessRequestList:
    model = None
    if query.repo_id:
        org, _, name = query.repo_id.partition("/")
        model = visible_model(org, name)
    status = RequestStatus(query.status) if query.status else None
    found = airlock().access.list_requests(db(), principal=principal(), model=model, status=status)
    return s.AccessRequestList(requests=[request_out(r) for r in found])


@endpoint(
    bp,
    f"/requests/<{ID}:request_id>",
    "GET",
    summary="One access request (its requester, or a reviewer of the model's organization)",
    response=s.AccessRequestOut,
    scopes=("access:request", "requests:review"),
)
def show_request(request_id: int) -> s.AccessRequestOut:
    found = airlock().access.get_request(db(), principal=principal(), request_id=request_id)
    return request_out(found)


@endpoint(
    bp,
    f"/requests/<{ID}:request_id>/review",
    "POST",
    summary="Approve or reject a request",
    body=s.ReviewIn,
    response=s.AccessRequestOut,
    scopes=("requests:review",),
)
def review(request_id: int, body: s.ReviewIn) -> s.AccessRequestOut:
    outcome = airlock().access.review(
        db(),
        principal=principal(),
        request_id=request_id,
        approve=body.verdict == "approve",
        note=body.note,
    )
    return request_out(outcome.request, outcome.grant)


@endpoint(
    bp,
    f"/requests/<{ID}:request_id>/reset",
    "POST",
    summary="Send a reviewed request back to pending (verdicts cleared, its grant revoked)",
    body=s.ResetIn,
    response=s.AccessRequestOut,
    scopes=("requests:review",),
)
def reset_request(request_id: int, body: s.ResetIn) -> s.AccessRequestOut:
    found = airlock().access.reset_request(
        db(), principal=principal(), request_id=request_id, reason=body.reason
    )
    return request_out(found)


@endpoint(
    bp, "/me/grants", "GET", summary="Your grants", response=s.GrantList, scopes=("access:request",)
)
def my_grants() -> s.GrantList:
    access = airlock().access
    grants = access.list_grants(db(), principal=principal(), mine=True)
    renewals = access.pending_renewals(db(), grants)
    return s.GrantList(grants=[grant_out(g, renewals.get(g.id)) for g in grants])


@endpoint(
    bp,
    f"/grants/<{ID}:grant_id>/renew",
    "POST",
    summary="Renew your grant in its renewal window (a new request for its tier, prefilled)",
    body=s.RenewIn,
    response=s.AccessRequestOut,
    status=201,
    scopes=("access:request",),
)
def renew_grant(grant_id: int, body: s.RenewIn) -> s.AccessRequestOut:
    outcome = airlock().access.renew_grant(
        db(),
        principal=principal(),
        grant_id=grant_id,
        form=body.form,
        agreement=body.agreement,
        request_country=request_country(),
    )
    return request_out(outcome.request, outcome.grant)


@endpoint(bp, "/me", "GET", summary="Who you are", response=s.WhoamiOut)
def whoami() -> s.WhoamiOut:
    caller = principal()
    caller.require_user()
    slugs = dict(db().execute(select(Organization.id, Organization.slug)).all())
    return s.WhoamiOut(
        username=caller.username or "",
        scopes=sorted(caller.scopes),
        roles={slugs[o]: sorted(rs) for o, rs in caller.roles.items() if o in slugs},
    )


@endpoint(
    bp,
    "/me/tokens",
    "GET",
    summary="Your API tokens",
    response=s.TokenList,
    scopes=("tokens:manage",),
)
def list_tokens() -> s.TokenList:
    tokens = airlock().identity.list_tokens(db(), principal=principal())
    return s.TokenList(tokens=[token_out(t) for t in tokens])


@endpoint(
    bp,
    "/me/tokens",
    "POST",
    summary="Create an API token (shown once)",
    body=s.TokenIn,
    response=s.TokenOut,
    status=201,
    scopes=("tokens:manage",),
)
def create_token(body: s.TokenIn) -> s.TokenOut:
    issued = airlock().identity.create_token(
        db(),
        principal=principal(),
        name=body.name,
        scopes=[Scope(x) for x in body.scopes],
        ttl=timedelta(days=body.expires_in_days),
    )
    return token_out(issued.token, issued.plaintext)


@endpoint(
    bp,
    f"/me/tokens/<{ID}:token_id>",
    "DELETE",
    summary="Revoke one of your tokens",
    response=s.TokenOut,
    scopes=("tokens:manage",),
)
def revoke_token(token_id: int) -> s.TokenOut:
    token = airlock().identity.revoke_token(db(), principal=principal(), token_id=token_id)
    return token_out(token)


@endpoint(
    bp,
    "/kyc/manual",
    "POST",
    summary="Record a manual identity verification (reviewers)",
    body=s.KycRecordIn,
    response=s.KycOut,
    status=201,
    scopes=("kyc:record",),
)
def record_kyc(body: s.KycRecordIn) -> s.KycOut:
    session = db()
    org = session.scalar(select(Organization).where(Organization.slug == body.org))
    if org is None:
        raise NotFound(f"no organization '{body.org}'")
    principal().require_org_scope(org.id, Scope.KYC_RECORD)
    user = session.scalar(select(User).where(User.username == body.username))
    if user is None:
        raise NotFound(f"no user '{body.username}'")
    facts = KycFacts(
        provider="manual",
        provider_ref=f"manual:{user.id}:{int(utcnow().timestamp())}",
        status="approved",
        level=KycLevel(body.level),
        nationality=body.nationality,
        residence_country=body.residence_country,
        residence_subdivision=body.residence_subdivision,
        document_country=body.document_country,
        sanctions_hit=body.sanctions_hit,
        screened_at=utcnow() if body.sanctions_hit is not None else None,
        expires_at=utcnow() + timedelta(days=body.expires_in_days),
    )
    row = airlock().access.record_kyc(
        session, principal=principal(), org=org, user=user, facts=facts, notes=body.notes
    )
    return _kyc_out(row, user.username)


def _kyc_out(row: KycVerification, username: str) -> s.KycOut:
    return s.KycOut(
        id=row.id,
        username=username,
        provider=row.provider,
        level=row.level,
        status=row.status,
        nationality=row.nationality,
        residence_country=row.residence_country,
        document_country=row.document_country,
        expires_at=row.expires_at,
    )


@endpoint(
    bp,
    "/kyc/start",
    "POST",
    summary="Begin an identity verification at a KYC provider (returns its hosted-flow URL)",
    body=s.KycStartIn,
    response=s.KycStartOut,
    status=201,
    scopes=("access:request",),
)
def start_kyc(body: s.KycStartIn) -> s.KycStartOut:
    started = airlock().kyc.start(
        db(),
        principal=principal(),
        provider=body.provider,
        level=KycLevel(body.level),
        return_url=body.return_url,
    )
    row = started.verification
    return s.KycStartOut(
        verification_id=row.id, provider=row.provider, status=row.status, url=started.url
    )


@endpoint(
    bp,
    "/me/kyc",
    "GET",
    summary="Your identity verifications and where each stands",
    response=s.KycList,
    scopes=("access:request",),
)
def my_kyc() -> s.KycList:
    caller = principal()
    rows = airlock().kyc.list_mine(db(), principal=caller)
    return s.KycList(verifications=[_kyc_out(row, caller.username or "") for row in rows])
