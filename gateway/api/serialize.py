"""Rows to response schemas, shared by the /api/v1 blueprints."""

from __future__ import annotations

from gateway.api import schemas as s
from gateway.db.models import (
    AccessRequest,
    ApiToken,
    AuditEvent,
    Grant,
    GrantStatus,
    Model,
    Revision,
    utcnow,
)
from gateway.services.access import renewable_from


def model_out(model: Model, stage: str | None) -> s.ModelOut:
    """A model for its publisher."""
    return s.ModelOut(
        repo_id=model.repo_id,
        description=model.description,
        head=model.head_revision.commit_id if model.head_revision else None,
        stage=stage,
        policy_version=model.policy_version.version if model.policy_version else None,
        frozen=model.frozen_at is not None,
        frozen_reason=model.frozen_reason,
        created_at=model.created_at,
    )


def revision_out(revision: Revision) -> s.RevisionOut:
    """A revision with its files."""
    return s.RevisionOut(
        commit=revision.commit_id,
        parent=revision.parent_commit_id,
        message=revision.message,
        created_at=revision.created_at,
        vetting_status=revision.vetting_status,
        vetting_report=revision.vetting_report,
        vetting_overridden_at=revision.vetting_override_at,
        vetting_override_reason=revision.vetting_override_reason,
        files=[s.FileOut(path=f.path, size=f.size, sha256=f.sha256) for f in revision.files],
    )


def grant_out(grant: Grant, renewal_request_id: int | None = None) -> s.GrantOut:
    """A grant, `expired` once past its expiry even before a sweep has marked it so."""
    status = _effective_status(grant)
    return s.GrantOut(
        id=grant.id,
        user=grant.user.username,
        repo_id=grant.model.repo_id,
        tier=grant.tier,
        status=status,
        policy_version=grant.policy_version.version,
        granted_at=grant.granted_at,
        expires_at=grant.expires_at,
        ended_at=grant.ended_at,
        end_reason=grant.end_reason,
        renewable_from=renewable_from(grant) if status == GrantStatus.ACTIVE else None,
        renewal_request_id=renewal_request_id,
    )


def _effective_status(grant: Grant) -> str:
    lapsed = grant.expires_at is not None and grant.expires_at <= utcnow()
    if grant.status == GrantStatus.ACTIVE and lapsed:
        return str(GrantStatus.EXPIRED)
    return grant.status


def request_out(request: AccessRequest, grant: Grant | None = None) -> s.AccessRequestOut:
    """An access request with its decision, reasons and reviews."""
    agreement = (
        f"{request.agreement_id}@{request.agreement_version}" if request.agreement_id else None
    )
    return s.AccessRequestOut(
        id=request.id,
        user=request.user.username,
        repo_id=request.model.repo_id,
        tier=request.tier,
        status=request.status,
        effect=request.effect,
        reasons=[s.Reason(**r) for r in request.reasons],
        form=request.form,
        agreement=agreement,
        reviewers_required=request.reviewers_required,
        reviews=[
            s.ReviewOut(
                reviewer_id=r.reviewer_id, verdict=r.verdict, note=r.note, created_at=r.created_at
            )
            for r in request.reviews
        ],
        created_at=request.created_at,
        decided_at=request.decided_at,
        decision_note=request.decision_note,
        grant=grant_out(grant) if grant else None,
    )


def token_out(token: ApiToken, plaintext: str | None = None) -> s.TokenOut:
    """A token's metadata (and its secret, once)."""
    return s.TokenOut(
        id=token.id,
        name=token.name,
        prefix=token.display_prefix,
        scopes=list(token.scopes),
        created_at=token.created_at,
        expires_at=token.expires_at,
        revoked_at=token.revoked_at,
        token=plaintext,
    )


def audit_out(event: AuditEvent) -> s.AuditEventOut:
    """An audit event with its chain links."""
    return s.AuditEventOut(
        seq=event.seq,
        occurred_at=event.occurred_at,
        action=event.action,
        actor_id=event.actor_id,
        org_id=event.org_id,
        subject_user_id=event.subject_user_id,
        model_id=event.model_id,
        effect=event.effect,
        payload=event.payload,
        prev_hash=event.prev_hash,
        entry_hash=event.entry_hash,
    )
