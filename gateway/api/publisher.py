"""Publisher API: models, uploads, commits, release policies, grants, freezes."""

from __future__ import annotations

from datetime import timedelta
from typing import BinaryIO, cast

from flask import Blueprint, request

from gateway.api import schemas as s
from gateway.api.context import airlock, db, principal, visible_model
from gateway.api.serialize import grant_out, model_out, revision_out
from gateway.api.spec import ID, endpoint
from gateway.services.publishing import ManifestEntry

bp = Blueprint("publisher", __name__, url_prefix="/api/v1")
MODEL = "/models/<org>/<name>"


def _stage(model) -> str | None:  # type: ignore[no-untyped-def]
    policy = airlock().policies.current(model)
    return str(policy.stage) if policy else None


@endpoint(
    bp,
    "/models",
    "POST",
    summary="Create a model",
    body=s.CreateModel,
    response=s.ModelOut,
    status=201,
    scopes=("models:write",),
)
def create_model(body: s.CreateModel) -> s.ModelOut:
    model = airlock().publishing.create_model(
        db(), principal=principal(), repo_id=body.repo_id, description=body.description
    )
    return model_out(model, None)


@endpoint(bp, MODEL, "GET", summary="Show a model", response=s.ModelOut)
def show_model(org: str, name: str) -> s.ModelOut:
    model = visible_model(org, name)
    return model_out(model, _stage(model))


@endpoint(
    bp,
    MODEL + "/blobs/<sha256>",
    "PUT",
    summary="Upload one file's bytes (streamed)",
    response=s.BlobOut,
    scopes=("models:write",),
    raw_body="application/octet-stream",
)
def upload_blob(org: str, name: str, sha256: str) -> s.BlobOut:
    settings = airlock().settings
    request.max_content_length = settings.max_upload_bytes
    result = airlock().publishing.upload_blob(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        sha256=sha256,
        stream=cast(BinaryIO, request.stream),
        max_bytes=settings.max_upload_bytes,
    )
    return s.BlobOut(**result)


@endpoint(
    bp,
    MODEL + "/uploads",
    "POST",
    summary="Say how to send one file's bytes; on S3, start or resume its multipart upload",
    body=s.UploadIn,
    response=s.UploadOut,
    scopes=("models:write",),
)
def start_upload(org: str, name: str, body: s.UploadIn) -> s.UploadOut:
    plan = airlock().publishing.start_upload(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        sha256=body.sha256,
        size=body.size,
        max_bytes=airlock().settings.max_upload_bytes,
    )
    return s.UploadOut(
        sha256=plan.sha256,
        size=plan.size,
        method=plan.method,
        upload_id=plan.upload_id,
        part_size=plan.part_size,
        part_count=plan.part_count,
        uploaded=[s.UploadedPartOut(number=p.number, size=p.size) for p in plan.uploaded],
    )


@endpoint(
    bp,
    MODEL + f"/uploads/<{ID}:upload_id>/parts",
    "POST",
    summary="Presigned PUT URLs for parts of a multipart upload",
    body=s.PartUrlsIn,
    response=s.PartUrlsOut,
    scopes=("models:write",),
)
def upload_part_urls(org: str, name: str, upload_id: int, body: s.PartUrlsIn) -> s.PartUrlsOut:
    urls, expires_at = airlock().publishing.part_urls(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        upload_id=upload_id,
        numbers=body.numbers,
        ttl=timedelta(seconds=airlock().settings.upload_url_ttl_seconds),
    )
    parts = [s.PartUrlOut(number=u.number, size=u.size, url=u.url) for u in urls]
    return s.PartUrlsOut(upload_id=upload_id, expires_at=expires_at, parts=parts)


@endpoint(
    bp,
    MODEL + f"/uploads/<{ID}:upload_id>/complete",
    "POST",
    summary="Assemble a multipart upload once every part is in storage",
    response=s.BlobOut,
    scopes=("models:write",),
)
def complete_upload(org: str, name: str, upload_id: int) -> s.BlobOut:
    result = airlock().publishing.complete_upload(
        db(), principal=principal(), model=visible_model(org, name), upload_id=upload_id
    )
    return s.BlobOut(**result)


@endpoint(
    bp,
    MODEL + "/commits",
    "POST",
    summary="Commit uploaded files as a revision",
    body=s.CommitIn,
    response=s.RevisionOut,
    status=201,
    scopes=("models:write",),
)
def commit(org: str, name: str, body: s.CommitIn) -> s.RevisionOut:
    manifest = [ManifestEntry(f.path, f.size, f.sha256) for f in body.files]
    revision = airlock().publishing.commit(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        manifest=manifest,
        message=body.message,
    )
    return revision_out(revision)


@endpoint(
    bp,
    MODEL + "/revisions/<rev>",
    "GET",
    summary="Show a revision and its vetting report",
    response=s.RevisionOut,
    scopes=("models:write",),
)
def show_revision(org: str, name: str, rev: str) -> s.RevisionOut:
    model = visible_model(org, name)
    airlock().publishing.require_publisher(principal(), model)
    return revision_out(airlock().publishing.resolve_revision(db(), model, rev))


@endpoint(
    bp,
    MODEL + "/revisions/<rev>/vetting-override",
    "POST",
    summary="Serve a revision that is not vetted clean, or stop serving it (audited)",
    body=s.VettingOverrideIn,
    response=s.RevisionOut,
    scopes=("models:write",),
)
def override_vetting(org: str, name: str, rev: str, body: s.VettingOverrideIn) -> s.RevisionOut:
    revision = airlock().publishing.override_vetting(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        rev=rev,
        allow=body.allow,
        reason=body.reason,
    )
    return revision_out(revision)


@endpoint(
    bp,
    "/policies",
    "POST",
    summary="Validate and apply a release policy (new version)",
    body=s.PolicyIn,
    response=s.PolicyVersionOut,
    status=201,
    scopes=("policies:write",),
)
def apply_policy(body: s.PolicyIn) -> tuple[s.PolicyVersionOut, int]:
    version, created = airlock().policies.apply(
        db(), principal=principal(), source=body.source, comment=body.comment
    )
    return _version_out(version, created), 201 if created else 200


@endpoint(
    bp,
    "/policies/validate",
    "POST",
    summary="Validate a release policy without applying",
    body=s.PolicyIn,
)
def validate_policy(body: s.PolicyIn) -> dict[str, object]:
    policy = airlock().policies.validate(body.source)
    return {"valid": True, "document": policy.to_dict()}


@endpoint(
    bp,
    "/policies/check",
    "POST",
    summary="Dry-run a release policy: which live grants it would keep, suspend or revoke",
    body=s.PolicyCheckIn,
    response=s.PolicyCheckOut,
    scopes=("policies:write",),
)
def check_policy(body: s.PolicyCheckIn) -> s.PolicyCheckOut:
    found = airlock().reevaluation.check(
        db(), principal=principal(), source=body.source, repo_id=body.repo_id
    )
    return s.PolicyCheckOut.model_validate(found.to_dict())


@endpoint(
    bp,
    "/policies/explain",
    "POST",
    summary="Decide one tier of a release policy for a subject's facts (what-if)",
    body=s.PolicyExplainIn,
    response=s.DecisionOut,
    scopes=("policies:write",),
)
def explain_policy(body: s.PolicyExplainIn) -> s.DecisionOut:
    policy, decision = airlock().reevaluation.explain(
        db(),
        principal=principal(),
        source=body.source,
        tier=body.tier,
        subject=body.subject,
        at=body.at,
    )
    return s.DecisionOut.model_validate({"model": policy.model, **decision.to_dict()})


@endpoint(
    bp,
    MODEL + "/policy/versions",
    "GET",
    summary="Every version of a model's policy",
    response=s.PolicyHistoryOut,
    scopes=("policies:write",),
)
def policy_history(org: str, name: str) -> s.PolicyHistoryOut:
    model = visible_model(org, name)
    versions = airlock().policies.history(db(), principal=principal(), model=model)
    return s.PolicyHistoryOut(versions=[_version_out(v, True, model.repo_id) for v in versions])


@endpoint(
    bp,
    MODEL + "/freeze",
    "POST",
    summary="Emergency freeze or unfreeze a model",
    body=s.FreezeIn,
    response=s.ModelOut,
    scopes=("models:write",),
)
def freeze(org: str, name: str, body: s.FreezeIn) -> s.ModelOut:
    model = airlock().access.set_frozen(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        frozen=body.frozen,
        reason=body.reason,
    )
    return model_out(model, _stage(model))


@endpoint(
    bp,
    MODEL + "/upstream",
    "PUT",
    summary="Set the model's OpenAI-compatible inference upstream and credential reference",
    body=s.UpstreamIn,
    response=s.UpstreamOut,
    scopes=("models:write",),
)
def set_upstream(org: str, name: str, body: s.UpstreamIn) -> s.UpstreamOut:
    model = airlock().inference.set_upstream(
        db(),
        principal=principal(),
        model=visible_model(org, name),
        url=body.url,
        key_ref=body.key_ref,
        upstream_model=body.model,
        prompt_digests=body.prompt_digests,
    )
    return s.UpstreamOut(
        repo_id=model.repo_id,
        url=model.upstream_url,
        key_ref=model.upstream_key_ref,
        model=model.upstream_model,
        prompt_digests=model.prompt_digests,
    )


@endpoint(
    bp,
    MODEL + "/grants",
    "GET",
    summary="Grants of a model",
    response=s.GrantList,
    scopes=("grants:manage",),
)
def model_grants(org: str, name: str) -> s.GrantList:
    grants = airlock().access.list_grants(
        db(), principal=principal(), model=visible_model(org, name), mine=False
    )
    return s.GrantList(grants=[grant_out(g) for g in grants])


@endpoint(
    bp,
    f"/grants/<{ID}:grant_id>/revoke",
    "POST",
    summary="Revoke a grant",
    body=s.RevokeIn,
    response=s.GrantOut,
    scopes=("grants:manage",),
)
def revoke_grant(grant_id: int, body: s.RevokeIn) -> s.GrantOut:
    grant = airlock().access.revoke_grant(
        db(), principal=principal(), grant_id=grant_id, reason=body.reason
    )
    return grant_out(grant)


@endpoint(
    bp,
    MODEL + "/trace",
    "POST",
    summary="Trace a leaked safetensors file to the grant whose marked copy it is",
    query=s.TraceQuery,
    response=s.TraceOut,
    scopes=("models:write", "audit:read"),
    raw_body="application/octet-stream",
)
def trace_copy(org: str, name: str, query: s.TraceQuery) -> s.TraceOut:
    limit = airlock().settings.max_upload_bytes
    request.max_content_length = limit
    report = airlock().tracing.trace_upload(
        db(),
        principal=principal(),
        repo_id=f"{org}/{name}",
        stream=cast(BinaryIO, request.stream),
        max_bytes=limit,
        revision=query.revision,
    )
    return s.TraceOut.model_validate(report.to_dict())


def _version_out(version, created: bool, repo_id: str | None = None) -> s.PolicyVersionOut:  # type: ignore[no-untyped-def]
    return s.PolicyVersionOut(
        repo_id=repo_id or version.document.get("model", ""),
        version=version.version,
        sha256=version.content_sha256,
        applied_at=version.applied_at,
        applied_by=version.applied_by_id,
        comment=version.comment,
        created=created,
        document=version.document,
    )
