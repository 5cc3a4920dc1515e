"""Request and response schemas of the /api/v1 surface (they validate and document it)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from gateway.audit.chain import AuditAction
from gateway.audit.facets import REASON_CODES
from gateway.auth.tokens import Scope
from policies.iso3166 import is_country_code

Strict = ConfigDict(extra="forbid", strict=True)
RepoId = Annotated[
    str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
SafeInt = Annotated[int, Field(ge=-(2**53), le=2**53)]  # exact in every JSON parser
FormValue = Annotated[str, StringConstraints(max_length=10_000)] | bool | SafeInt | None
# Built from the enum so the document lists exactly the scopes the server accepts.
ScopeName: TypeAlias = Literal[tuple(str(scope) for scope in Scope)]  # type: ignore[valid-type]


class Reason(BaseModel):
    """One reason of a decision: stable code, sentence, the rule it came from, its effect."""

    code: str
    message: str
    rule: str
    effect: str


class CreateModel(BaseModel):
    """Create an empty model."""

    model_config = Strict
    repo_id: RepoId
    description: str = Field(default="", max_length=10_000)


class ModelOut(BaseModel):
    """A model as its publisher sees it."""

    repo_id: str
    description: str
    head: str | None
    stage: str | None
    policy_version: int | None
    frozen: bool
    frozen_reason: str | None
    created_at: datetime


class ManifestFile(BaseModel):
    """One file of a commit; its bytes were uploaded to /blobs/{sha256} first."""

    model_config = Strict
    path: str = Field(min_length=1, max_length=1024)
    size: int = Field(ge=0, le=2**50)
    sha256: Sha256


class CommitIn(BaseModel):
    """Commit uploaded blobs as a new revision."""

    model_config = Strict
    files: list[ManifestFile] = Field(min_length=1, max_length=10_000)
    message: str = Field(default="", max_length=10_000)


class FileOut(BaseModel):
    """A file of a revision."""

    path: str
    size: int
    sha256: str


class RevisionOut(BaseModel):
    """A committed revision and its vetting state."""

    commit: str
    parent: str | None
    message: str
    created_at: datetime
    vetting_status: str
    vetting_report: dict[str, Any]
    vetting_overridden_at: datetime | None = None
    vetting_override_reason: str | None = None
    files: list[FileOut]


class VettingOverrideIn(BaseModel):
    """Serve a revision not vetted clean (allow), or stop serving it; the reason is audited."""

    model_config = Strict
    allow: bool
    reason: str = Field(min_length=1, max_length=2000)


class BlobOut(BaseModel):
    """Result of an upload."""

    sha256: str
    stored: bool
    size: int | None = None


class TraceQuery(BaseModel):
    """Which revision's delivered copies to trace against (default: every revision)."""

    revision: str | None = Field(default=None, min_length=1, max_length=200)


class TraceMatchOut(BaseModel):
    """A delivered copy whose exact sha256 the suspect has."""

    grant_id: int
    username: str
    tier: str
    path: str
    sha256: str


class TraceFindingOut(BaseModel):
    """One grant's evidence: the z-score of the suspect's differences against its mark."""

    grant_id: int
    username: str
    tier: str
    z: float
    compared: int
    positions: int
    tensors: int


class TraceOut(BaseModel):
    """The outcome of tracing a suspect: exact matches, every candidate ranked, the verdict."""

    model: str
    verdict: Literal["attributed", "inconclusive"]
    attributed: list[int]
    threshold: float
    exact: list[TraceMatchOut]
    ranked: list[TraceFindingOut]


class UploadIn(BaseModel):
    """Ask how to send one file's bytes (starts or resumes a multipart upload on S3)."""

    model_config = Strict
    sha256: Sha256
    size: int = Field(ge=0, le=2**50)


class UploadedPartOut(BaseModel):
    """A part the object store already holds."""

    number: int
    size: int


class UploadOut(BaseModel):
    """How to send the bytes: `stored` (nothing to send), `stream` (PUT .../blobs/{sha256}),
    or `multipart` (PUT each missing part to a presigned URL, then complete)."""

    sha256: str
    size: int
    method: Literal["stored", "stream", "multipart"]
    upload_id: int | None = None
    part_size: int | None = None
    part_count: int = 0
    uploaded: list[UploadedPartOut] = []


class PartUrlsIn(BaseModel):
    """The parts to presign, at most 100 at a time."""

    model_config = Strict
    numbers: list[Annotated[int, Field(ge=1, le=10_000)]] = Field(min_length=1, max_length=100)


class PartUrlOut(BaseModel):
    """A presigned PUT URL for one part, and the exact size of that part."""

    number: int
    size: int
    url: str


class PartUrlsOut(BaseModel):
    """Presigned part URLs; send no Airlock token to them."""

    upload_id: int
    expires_at: datetime
    parts: list[PartUrlOut]


class PolicyIn(BaseModel):
    """A release policy document (YAML text)."""

    model_config = Strict
    source: str = Field(min_length=1, max_length=262_144)
    comment: str = Field(default="", max_length=2000)


class PolicyVersionOut(BaseModel):
    """One applied version of a release policy."""

    repo_id: str
    version: int
    sha256: str
    applied_at: datetime
    applied_by: int
    comment: str
    created: bool = True
    document: dict[str, Any]


class PolicyHistoryOut(BaseModel):
    """Every version of a model's policy, newest first."""

    versions: list[PolicyVersionOut]


class PolicyCheckIn(BaseModel):
    """A release policy to dry-run against a model's live grants (its own model by default)."""

    model_config = Strict
    source: str = Field(min_length=1, max_length=262_144)
    repo_id: RepoId | None = None


class GrantVerdictOut(BaseModel):
    """What a policy does to one live grant: keep, suspend, revoke or reinstate, and why."""

    grant_id: int
    user_id: int
    user: str
    tier: str
    status: str
    action: str
    effect: str
    reasons: list[Reason]


class RequestVerdictOut(BaseModel):
    """What a policy does to one pending request: keep it pending, or deny it, and why."""

    request_id: int
    user_id: int
    user: str
    tier: str
    status: str
    action: str
    effect: str
    reasons: list[Reason]


class PolicyCheckOut(BaseModel):
    """The dry run of a policy: every live grant and pending request with its verdict."""

    repo_id: str
    current_version: int | None
    sha256: str
    checked_at: datetime
    summary: dict[str, int]
    grants: list[GrantVerdictOut]
    requests: list[RequestVerdictOut]


class PolicyExplainIn(BaseModel):
    """A policy, a tier and a subject's facts (as `airlock policy explain` reads them)."""

    model_config = Strict
    source: str = Field(min_length=1, max_length=262_144)
    tier: str = Field(min_length=1, max_length=64)
    subject: dict[Annotated[str, StringConstraints(max_length=64)], Any] = Field(max_length=50)
    at: Annotated[datetime | None, Field(strict=False)] = None


class PackUsedOut(BaseModel):
    """A jurisdiction pack a decision consulted: id, version and content hash."""

    id: str
    version: str
    content_hash: str


class DecisionOut(BaseModel):
    """A decision with every reason and the packs it used."""

    model: str
    effect: str
    allowed: bool
    tier: str
    reasons: list[Reason]
    approval: dict[str, Any] | None
    packs_used: list[PackUsedOut]


class FreezeIn(BaseModel):
    """Freeze or unfreeze a model, with the reason recorded in the audit log."""

    model_config = Strict
    frozen: bool
    reason: str = Field(min_length=1, max_length=2000)


class UpstreamIn(BaseModel):
    """A model's OpenAI-compatible upstream and the variable holding its credential."""

    model_config = Strict
    url: str | None = Field(default=None, max_length=2000)
    key_ref: str | None = Field(default=None, max_length=128)
    model: str | None = Field(default=None, max_length=200)  # the name the upstream serves
    prompt_digests: bool = False  # audit SHA-256 digests of prompts and completions


class UpstreamOut(BaseModel):
    """A model's inference upstream (the credential's variable name, never its value)."""

    repo_id: str
    url: str | None
    key_ref: str | None
    model: str | None
    prompt_digests: bool


class AccessRequestIn(BaseModel):
    """Ask for one tier of a model."""

    model_config = Strict
    tier: str = Field(min_length=1, max_length=64)
    form: dict[Annotated[str, StringConstraints(max_length=64)], FormValue] = Field(
        default_factory=dict, max_length=50
    )
    agreement: str | None = Field(default=None, max_length=120, description="e.g. acme-aup@2")


class GrantOut(BaseModel):
    """A grant: what a user may do with a model, until when."""

    id: int
    user: str
    repo_id: str
    tier: str
    status: str
    policy_version: int
    granted_at: datetime
    expires_at: datetime | None
    ended_at: datetime | None
    end_reason: str | None
    renewable_from: datetime | None = Field(
        default=None, description="when its renewal window opens (POST /grants/<id>/renew)"
    )
    renewal_request_id: int | None = Field(
        default=None, description="the renewal request pending for this grant, if any"
    )


class RenewIn(BaseModel):
    """Renew a grant; form and agreement default to the previous request's."""

    model_config = Strict
    form: dict[Annotated[str, StringConstraints(max_length=64)], FormValue] | None = Field(
        default=None, max_length=50
    )
    agreement: str | None = Field(default=None, max_length=120, description="e.g. acme-aup@2")


class ReviewOut(BaseModel):
    """One reviewer's verdict."""

    reviewer_id: int
    verdict: str
    note: str
    created_at: datetime


class AccessRequestOut(BaseModel):
    """An access request, its decision and every reason."""

    id: int
    user: str
    repo_id: str
    tier: str
    status: str
    effect: str
    reasons: list[Reason]
    form: dict[str, Any]
    agreement: str | None
    reviewers_required: int
    reviews: list[ReviewOut]
    created_at: datetime
    decided_at: datetime | None
    decision_note: str | None
    grant: GrantOut | None = None


class AccessRequestList(BaseModel):
    """A list of access requests."""

    requests: list[AccessRequestOut]


class RequestListQuery(BaseModel):
    """Filters for listing requests."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["pending", "approved", "denied", "rejected", "cancelled"] | None = None
    repo_id: RepoId | None = None


class ReviewIn(BaseModel):
    """A reviewer's verdict; rejections need a reason the requester reads."""

    model_config = Strict
    verdict: Literal["approve", "reject"]
    note: str = Field(default="", max_length=2000)


class GrantList(BaseModel):
    """A list of grants."""

    grants: list[GrantOut]


class GrantListQuery(BaseModel):
    """Filters for listing grants."""

    model_config = ConfigDict(extra="forbid")
    repo_id: RepoId | None = None


class RevokeIn(BaseModel):
    """Revoke a grant, with the reason recorded."""

    model_config = Strict
    reason: str = Field(min_length=1, max_length=2000)


class ResetIn(BaseModel):
    """Send a reviewed request back to pending, with the reason recorded."""

    model_config = Strict
    reason: str = Field(min_length=1, max_length=2000)


class TierOut(BaseModel):
    """One tier as a requester sees it."""

    name: str
    grants: list[str]
    files: list[str]
    requires: dict[str, Any]
    limits: dict[str, Any]
    grant_ttl: str | None
    open: bool


class ModelAccessOut(BaseModel):
    """A model's tiers, agreements and forms: what one may request and how."""

    repo_id: str
    stage: str
    frozen: bool
    tiers: list[TierOut]
    agreements: dict[str, Any]
    forms: dict[str, Any]
    how_to_request: str


class TokenIn(BaseModel):
    """Create an API token for yourself."""

    model_config = Strict
    name: str = Field(min_length=1, max_length=100)
    scopes: list[ScopeName] = Field(min_length=1, max_length=20)
    expires_in_days: int = Field(default=90, ge=1, le=366)


class TokenOut(BaseModel):
    """A token's metadata; `token` is present only in the response that created it."""

    id: int
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    token: str | None = None


class TokenList(BaseModel):
    """The caller's tokens."""

    tokens: list[TokenOut]


class KycRecordIn(BaseModel):
    """A reviewer's manual identity verification of a user."""

    model_config = Strict
    username: str = Field(min_length=1, max_length=64)
    org: str = Field(min_length=1, max_length=64)
    level: Literal["none", "email", "identity", "institution"]
    nationality: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    residence_country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    residence_subdivision: (
        Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}-[A-Z0-9]{1,3}$")] | None
    ) = None
    document_country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = None
    sanctions_hit: bool | None = None
    expires_in_days: int = Field(default=365, ge=1, le=3650)
    notes: str = Field(default="", max_length=4000)


class KycOut(BaseModel):
    """A recorded verification (normalized facts only)."""

    id: int
    username: str
    provider: str
    level: str
    status: str
    nationality: str | None
    residence_country: str | None
    document_country: str | None
    expires_at: datetime | None


class KycStartIn(BaseModel):
    """Begin an identity verification at a provider's hosted flow."""

    model_config = Strict
    provider: Literal["onfido", "persona", "stripe_identity"]
    level: Literal["email", "identity"] = "identity"
    return_url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2000)]


class KycStartOut(BaseModel):
    """Where to send the user: the provider's hosted flow for this verification."""

    verification_id: int
    provider: str
    status: str
    url: str


class KycList(BaseModel):
    """Your verifications, newest first (normalized facts only)."""

    verifications: list[KycOut]


AuditActionName: TypeAlias = Literal[tuple(str(a) for a in AuditAction)]  # type: ignore[valid-type]
ReasonCodeName: TypeAlias = Literal[tuple(sorted(REASON_CODES))]  # type: ignore[valid-type]
TierName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Username = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Cursor = Annotated[int, Field(ge=0, le=2**63 - 1, description="next_cursor of the previous page")]
PageSize = Annotated[int, Field(ge=1, le=1000)]


def _assigned_country(code: str) -> str:
    if not is_country_code(code):
        raise ValueError(f"'{code}' is not an assigned ISO 3166-1 alpha-2 code")
    return code


CountryCode = Annotated[
    str, StringConstraints(pattern=r"^[A-Z]{2}$"), AfterValidator(_assigned_country)
]


class Period(BaseModel):
    """A time range: since inclusive, until exclusive, both with a time zone."""

    model_config = ConfigDict(extra="forbid")
    since: AwareDatetime | None = Field(default=None, description="inclusive, with a time zone")
    until: AwareDatetime | None = Field(default=None, description="exclusive, with a time zone")

    @field_validator("until")
    @classmethod
    def _after_since(cls, until: datetime | None, info: ValidationInfo) -> datetime | None:
        since = info.data.get("since")
        if until is not None and since is not None and until <= since:
            raise ValueError("must be later than since")
        return until


class AuditFilters(Period):
    """Filters over the audit log, combined with AND; tier, reason and country are the values
    the event's payload recorded (a reason code of its decision, a request or KYC country)."""

    action: AuditActionName | None = None
    effect: Literal["allow", "deny", "review"] | None = None
    actor: Username | None = Field(default=None, description="username of who acted")
    subject: Username | None = Field(default=None, description="username the event is about")
    repo_id: RepoId | None = None
    tier: TierName | None = None
    reason: ReasonCodeName | None = None
    country: CountryCode | None = None


class AuditQuery(AuditFilters):
    """Filters and cursor for the audit log."""

    cursor: Cursor | None = None
    limit: PageSize = 100


class AuditExportQuery(AuditFilters):
    """Filters of an export, and its format: JSON lines or CSV of the hashed fields and links."""

    format: Literal["jsonl", "csv"] = "jsonl"


class TimelineQuery(Period):
    """Whose or which model's events: exactly one of user (a username) and model (org/name)."""

    user: Username | None = None
    model: RepoId | None = None
    cursor: Cursor | None = None
    limit: PageSize = 100


class AccessReportQuery(BaseModel):
    """The access report's format."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["json", "csv"] = "json"


class AccessGrantOut(BaseModel):
    """A grant in force: who holds it, on what, since when, under which policy, and why."""

    grant_id: int
    user_id: int
    username: str
    email: str
    affiliation: str | None
    organization: str
    repo_id: str
    tier: str
    granted_at: datetime
    expires_at: datetime | None
    policy_version: int
    kyc_level: str | None
    nationality: str | None
    residence_country: str | None
    document_country: str | None
    decision_effect: str | None
    reasons: list[Reason]


class AccessReportOut(BaseModel):
    """Every grant in force on your organizations' models."""

    generated_at: datetime
    grants: list[AccessGrantOut]


class DenialsQuery(Period):
    """The period (default: the last 30 days) and the series' bucket."""

    bucket: Literal["day", "week"] = "day"


class DenialCounts(BaseModel):
    """Deny and review decisions."""

    deny: int
    review: int


class ReasonDenials(DenialCounts):
    """Decisions a reason code stood against."""

    code: str


class CountryDenials(DenialCounts):
    """Decisions of events recording a country (null: none recorded)."""

    country: str | None


class BucketDenials(DenialCounts):
    """Decisions in the bucket starting on `start` (UTC)."""

    start: date


class DenialStatsOut(BaseModel):
    """Deny and review decisions of a period by reason code, by country and over time."""

    since: datetime
    until: datetime
    bucket: str
    totals: DenialCounts
    by_reason: list[ReasonDenials]
    by_country: list[CountryDenials]
    series: list[BucketDenials]


class AuditEventOut(BaseModel):
    """One audit event with its chain links."""

    seq: int
    occurred_at: datetime
    action: str
    actor_id: int | None
    org_id: int | None
    subject_user_id: int | None
    model_id: int | None
    effect: str | None
    payload: dict[str, Any]
    prev_hash: str
    entry_hash: str


class AuditPage(BaseModel):
    """A page of audit events and the cursor for the next one."""

    events: list[AuditEventOut]
    next_cursor: int | None


class WhoamiOut(BaseModel):
    """The caller as Airlock knows them."""

    username: str
    scopes: list[str]
    roles: dict[str, list[str]]


class LegalHoldIn(BaseModel):
    """Place a legal hold on a user's or a model's audit events in one of your organizations."""

    model_config = Strict
    org: str = Field(min_length=1, max_length=64)
    kind: Literal["model", "user"]
    subject: str = Field(min_length=1, max_length=200, description="username, or org/name")
    reason: str = Field(min_length=1, max_length=2000)


class LegalHoldOut(BaseModel):
    """A legal hold: its events are kept past retention until it is released."""

    id: int
    org_id: int
    kind: str
    subject_id: int
    reason: str
    created_by: int | None
    created_at: datetime
    released_at: datetime | None
    released_by: int | None


class LegalHoldQuery(BaseModel):
    """Which holds to list."""

    model_config = ConfigDict(extra="forbid")
    active: bool = False


class LegalHoldList(BaseModel):
    """Legal holds of your organizations."""

    holds: list[LegalHoldOut]
