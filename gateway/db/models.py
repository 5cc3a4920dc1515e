"""SQLAlchemy 2 typed models for every persisted Airlock entity."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention Alembic relies on."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Role(StrEnum):
    """Roles a user holds within an organization."""

    COMPLIANCE = "compliance"
    OWNER = "owner"
    PUBLISHER = "publisher"
    REVIEWER = "reviewer"


class RequestStatus(StrEnum):
    """Where an access request stands."""

    APPROVED = "approved"
    CANCELLED = "cancelled"
    DENIED = "denied"
    PENDING = "pending"
    REJECTED = "rejected"


class GrantStatus(StrEnum):
    """The state of a grant; only `active` grants authorize anything."""

    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"
    SUSPENDED = "suspended"


class VettingStatus(StrEnum):
    """Result of vetting an uploaded revision."""

    FAILED = "failed"
    PASSED = "passed"
    PENDING = "pending"


class Organization(Base):
    """A publisher or research institution."""

    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    hq_country: Mapped[str | None] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A person known to Airlock."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    affiliation_org_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    affiliation: Mapped[Organization | None] = relationship()


class Membership(Base):
    """A role a user holds in an organization."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("org_id", "user_id", "role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """An API token; only its SHA-256 digest is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class WebSession(Base):
    """A browser session, stored server-side; the cookie holds only a random id, kept hashed.

    `user_id` is empty while a sign-in is under way (the pending OIDC state lives in `data`).
    """

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    method: Mapped[str | None] = mapped_column(String(16))  # oidc | link
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class LoginLink(Base):
    """A one-time sign-in link; only its SHA-256 digest is stored."""

    __tablename__ = "login_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class OidcIdentity(Base):
    """A user's account at an OpenID provider: (issuer, subject) signs that user in."""

    __tablename__ = "oidc_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(500))
    subject: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class Model(Base):
    """A model `org/name` published through Airlock."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("org_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(96))
    description: Mapped[str] = mapped_column(Text, default="")
    head_revision_id: Mapped[int | None] = mapped_column(
        ForeignKey("revisions.id", use_alter=True, name="fk_models_head_revision_id_revisions")
    )
    policy_version_id: Mapped[int | None] = mapped_column(
        ForeignKey(
            "policy_versions.id", use_alter=True, name="fk_models_policy_version_id_policy_versions"
        )
    )
    frozen_at: Mapped[datetime | None]
    frozen_reason: Mapped[str | None] = mapped_column(Text)
    upstream_url: Mapped[str | None] = mapped_column(String(2000))
    upstream_key_ref: Mapped[str | None] = mapped_column(String(128))
    upstream_model: Mapped[str | None] = mapped_column(String(200))  # the upstream's own name
    prompt_digests: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    org: Mapped[Organization] = relationship()
    head_revision: Mapped[Revision | None] = relationship(foreign_keys=[head_revision_id])
    policy_version: Mapped[PolicyVersion | None] = relationship(foreign_keys=[policy_version_id])

    @property
    def repo_id(self) -> str:
        """The `org/name` identifier clients use."""
        return f"{self.org.slug}/{self.name}"


class Revision(Base):
    """An immutable set of files, named by a 40-hex commit id over its manifest."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("model_id", "commit_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    commit_id: Mapped[str] = mapped_column(String(40))
    parent_commit_id: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text, default="")
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    vetting_status: Mapped[str] = mapped_column(String(16), default=VettingStatus.PENDING)
    vetting_report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A publisher may serve a revision that did not pass vetting; who, when and why is kept.
    vetting_override_at: Mapped[datetime | None]
    vetting_override_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    vetting_override_reason: Mapped[str | None] = mapped_column(Text)

    files: Mapped[list[RevisionFile]] = relationship(
        order_by="RevisionFile.path", cascade="all, delete-orphan"
    )


class RevisionFile(Base):
    """One file of a revision: path, size, digests and where its bytes live."""

    __tablename__ = "revision_files"
    __table_args__ = (UniqueConstraint("revision_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    git_oid: Mapped[str] = mapped_column(String(40))
    storage_key: Mapped[str] = mapped_column(String(1024))


class PolicyVersion(Base):
    """One applied version of a model's release policy; every version is kept."""

    __tablename__ = "policy_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    content_sha256: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict[str, Any]] = mapped_column()
    applied_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    applied_at: Mapped[datetime] = mapped_column(default=utcnow)
    comment: Mapped[str] = mapped_column(Text, default="")


class KycVerification(Base):
    """Normalized facts of one identity verification (never raw documents)."""

    __tablename__ = "kyc_verifications"
    __table_args__ = (Index("ix_kyc_verifications_provider_ref", "provider", "provider_ref"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[str] = mapped_column(String(200))
    issuer_org_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    status: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))
    nationality: Mapped[str | None] = mapped_column(String(2))
    residence_country: Mapped[str | None] = mapped_column(String(2))
    residence_subdivision: Mapped[str | None] = mapped_column(String(6))
    document_country: Mapped[str | None] = mapped_column(String(2))
    sanctions_hit: Mapped[bool | None]
    screened_at: Mapped[datetime | None]
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    recorded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    notes: Mapped[str] = mapped_column(Text, default="")
    requested_level: Mapped[str | None] = mapped_column(String(16))
    document_type: Mapped[str | None] = mapped_column(String(32))
    event_at: Mapped[datetime | None]  # the provider's time of the newest event applied
    updated_at: Mapped[datetime | None]


class KycWebhookEvent(Base):
    """A verified provider callback, kept once per (provider, event id) to drop redeliveries."""

    __tablename__ = "kyc_webhook_events"
    __table_args__ = (UniqueConstraint("provider", "event_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(200))
    event_type: Mapped[str] = mapped_column(String(100))
    provider_ref: Mapped[str] = mapped_column(String(200))
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))


class AccessRequest(Base):
    """A user's request for one tier of one model, with the engine's decision."""

    __tablename__ = "access_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    tier: Mapped[str] = mapped_column(String(64))
    policy_version_id: Mapped[int] = mapped_column(ForeignKey("policy_versions.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    form: Mapped[dict[str, Any]] = mapped_column(default=dict)
    agreement_id: Mapped[str | None] = mapped_column(String(100))
    agreement_version: Mapped[int | None]
    effect: Mapped[str] = mapped_column(String(16))
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    reviewers_required: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    decision_note: Mapped[str | None] = mapped_column(Text)

    user: Mapped[User] = relationship()
    model: Mapped[Model] = relationship()
    reviews: Mapped[list[RequestReview]] = relationship(order_by="RequestReview.id")


class RequestReview(Base):
    """One reviewer's verdict on an access request."""

    __tablename__ = "request_reviews"
    __table_args__ = (UniqueConstraint("request_id", "reviewer_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id", ondelete="CASCADE"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    verdict: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Grant(Base):
    """What a user may do with a model under one tier, until it expires or is revoked."""

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    tier: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("access_requests.id"))
    policy_version_id: Mapped[int] = mapped_column(ForeignKey("policy_versions.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    ended_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    end_reason: Mapped[str | None] = mapped_column(Text)
    # When the grant's last provisioning finished (staged copies for fingerprinting tiers);
    # None while one is under way. Set at creation for tiers that need no copies.
    provisioned_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(foreign_keys=[user_id])
    model: Mapped[Model] = relationship()
    policy_version: Mapped[PolicyVersion] = relationship()


class StagedFile(Base):
    """A per-grant copy of one file, served instead of the original by fingerprinting tiers."""

    __tablename__ = "staged_files"
    __table_args__ = (UniqueConstraint("grant_id", "file_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    file_id: Mapped[int] = mapped_column(
        ForeignKey("revision_files.id", ondelete="CASCADE"), index=True
    )
    storage_key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DownloadFingerprint(Base):
    """A grant's marked copy of one file as delivered: key version, parameters, exact digest.

    Kept after the copy itself is swept (a leak surfaces long after a grant ends): `airlock
    trace` matches a suspect's sha256 here first, then tests each recorded grant's mark.
    """

    __tablename__ = "download_fingerprints"
    __table_args__ = (UniqueConstraint("grant_id", "file_id", "key_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    file_id: Mapped[int] = mapped_column(
        ForeignKey("revision_files.id", ondelete="CASCADE"), index=True
    )
    key_version: Mapped[int]
    # {"settings": the tier's fingerprint settings, "tensors": {name: K}}
    params: Mapped[dict[str, Any]]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DownloadTicket(Base):
    """One authorized file request against a grant: the signed URL handed out."""

    __tablename__ = "download_tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"), index=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("revision_files.id"))
    method: Mapped[str] = mapped_column(String(8))
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    size: Mapped[int] = mapped_column(BigInteger)


class MultipartUpload(Base):
    """A direct-to-storage upload of one blob in progress: the client PUTs its parts itself."""

    __tablename__ = "multipart_uploads"
    # ids are handles given to clients: SQLite must never hand a deleted upload's id out again
    __table_args__ = (UniqueConstraint("org_id", "sha256"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    part_size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(1024))
    storage_upload_id: Mapped[str] = mapped_column(String(1024))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AuditEvent(Base):
    """An append-only, hash-chained record of one decision or change."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime]
    action: Mapped[str] = mapped_column(String(64), index=True)
    actor_id: Mapped[int | None] = mapped_column(index=True)
    org_id: Mapped[int | None] = mapped_column(index=True)
    subject_user_id: Mapped[int | None] = mapped_column(index=True)
    model_id: Mapped[int | None] = mapped_column(index=True)
    effect: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column()
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditFacet(Base):
    """One indexed value an event's payload records (tier, reason code, country); derived data."""

    __tablename__ = "audit_event_facets"
    __table_args__ = (Index("ix_audit_event_facets_name_value", "name", "value", "seq"),)

    seq: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("audit_events.seq", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    value: Mapped[str] = mapped_column(String(64), primary_key=True)


class AuditPending(Base):
    """An event recorded in a transaction not yet committed (PostgreSQL): a deferred trigger
    chains it into audit_events while the transaction commits, and deletes it (migration 0012)."""

    __tablename__ = "audit_pending"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True
    )
    action: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[int | None]
    org_id: Mapped[int | None]
    subject_user_id: Mapped[int | None]
    model_id: Mapped[int | None]
    effect: Mapped[str | None] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column()
    head: Mapped[str] = mapped_column(Text)
    middle: Mapped[str] = mapped_column(Text)
    tail: Mapped[str] = mapped_column(Text)


class AuditHead(Base):
    """The single row that serializes audit appends (locked FOR UPDATE)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed note of the audit tree at one size: Merkle root, head hash, and its frontier."""

    __tablename__ = "audit_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root_hash: Mapped[str] = mapped_column(String(64))
    head_hash: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(255))
    key_name: Mapped[str] = mapped_column(String(255))
    key_id: Mapped[str] = mapped_column(String(8))
    note: Mapped[str] = mapped_column(Text)
    frontier: Mapped[Any] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LegalHoldKind(StrEnum):
    """What a legal hold is placed on, kept sorted."""

    MODEL = "model"
    USER = "user"


class AuditLegalHold(Base):
    """A legal hold: the events of one user or model are kept past retention until released."""

    __tablename__ = "audit_legal_holds"
    __table_args__ = (Index("ix_audit_legal_holds_kind_subject_id", "kind", "subject_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    subject_id: Mapped[int]
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    released_at: Mapped[datetime | None]
    released_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))


class AuditForwardCursor(Base):
    """How far events were delivered to a SIEM sink: everything up to `seq` was accepted."""

    __tablename__ = "audit_forward_cursors"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditPrune(Base):
    """One pruning of the chain's oldest events: the anchor verification starts from after it."""

    __tablename__ = "audit_prunes"

    cut_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    cut_hash: Mapped[str] = mapped_column(String(64))  # entry hash of the last pruned event
    frontier: Mapped[Any] = mapped_column(JSON)  # the Merkle frontier at the cut
    deleted: Mapped[int] = mapped_column(BigInteger)
    horizon: Mapped[datetime]  # events older than this were due (retention)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditPrunePermit(Base):
    """The narrow path past the append-only triggers: while a row here names a cut, inside the
    pruning transaction only, events up to that cut may be deleted. Never committed non-empty."""

    __tablename__ = "audit_prune_permits"

    cut: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
