"""Hub-compatible reads: who may list and fetch which files, and download tickets."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.audit.canonical import format_timestamp
from gateway.auth.tokens import Scope
from gateway.db.group_commit import Batch, GroupCommit
from gateway.db.models import Base, Grant, GrantStatus, VettingStatus, utcnow
from gateway.db.prepared import Prepared
from gateway.errors import (
    AccessDenied,
    AirlockError,
    ArtifactMissing,
    EntryNotFound,
    Forbidden,
    NotFound,
    RateLimited,
    RepoNotFound,
    RevisionNotFound,
    ServiceUnavailable,
)
from gateway.ratelimit import (
    Dimension,
    DimensionState,
    Lease,
    Limiter,
    LimiterUnavailable,
    LimitResult,
)
from gateway.services.access import AccessService, reasons_json, subject_of, visible_to
from gateway.services.policy import PolicyService
from gateway.services.principal import Principal
from gateway.services.provisioning import ProvisioningPending, ProvisioningService, load_staging
from gateway.services.publishing import (
    COMMIT_HEX,
    PublishingService,
    VettingState,
    git_blob_oid,
    load_vetting,
)
from gateway.services.rows import (
    INSERT_TICKET,
    FileIndex,
    FileRow,
    GrantRow,
    ModelAccess,
    ModelRow,
    RevisionRow,
    UserFacts,
    insert_ticket,
    load_access,
    load_copies,
    load_file_with_commit,
    load_revision,
    load_staged_blob,
)
from gateway.services.signing import BlobClaim, BlobSigner
from gateway.storage import Storage
from policies import GrantKind, ReleasePolicy, Subject, Tier

log = logging.getLogger(__name__)
_TICKETS = Base.metadata.tables["download_tickets"]
_HEAD = Base.metadata.tables["audit_head"].c
# SQLite's group commit: the ticket's id and the audit head in one statement (a statement less
# under the write lock; the head is current, its trigger moves it with every event).
_TICKET_AND_HEAD = Prepared(
    INSERT_TICKET.returning(
        select(_HEAD.seq).where(_HEAD.id == 1).scalar_subquery(),
        select(_HEAD.entry_hash).where(_HEAD.id == 1).scalar_subquery(),
    )
)

DAY = 86400
APPLY_PATH = "/api/v1/models/{repo}/access"
# A refused lease frees up when any download of the grant ends, usually long before the
# earliest lease expires: Hub clients sleep out Retry-After, so ask them to check back soon.
LEASE_RETRY_AFTER = 30
COPY_GONE = (
    "This grant's copy of the file no longer exists: the grant ended (revoked or expired) or "
    "its model was frozen, and the copy was deleted. Fetch the file again via /resolve."
)


@dataclass(frozen=True)
class WeightsAccess:
    """The caller's usable weights grants for a model, with the tiers that define them."""

    model: ModelRow
    policy: ReleasePolicy
    grants: tuple[tuple[GrantRow, Tier], ...]
    request_country: str | None = None  # where the request came from, as the decision saw it

    def allows(self, path: str) -> bool:
        """Whether any grant's file globs cover `path`."""
        return any(tier.allows_file(path) for _, tier in self.grants)

    def grant_for(self, path: str) -> tuple[GrantRow, Tier]:
        """The grant that covers `path` (the first, in grant order)."""
        return next((g, t) for g, t in self.grants if t.allows_file(path))

    def own_copy(self, path: str) -> bool:
        """Whether the caller receives a marked copy of `path` of their own."""
        tier = self.grant_for(path)[1] if self.allows(path) else None
        return bool(tier and tier.fingerprint and tier.fingerprint.stages_file(path))


@dataclass(frozen=True, slots=True)
class Served:
    """The object a download of a file serves: the original, or the grant's staged copy."""

    key: str
    sha256: str
    size: int
    staged: bool

    @classmethod
    def original(cls, file: FileRow) -> Served:
        """The file's own stored object."""
        return cls(file.storage_key, file.sha256, file.size, staged=False)


@dataclass(frozen=True)
class Blob:
    """A verified blob request: the file, its commit, the object served and its path on disk."""

    file: FileRow
    commit: str
    served: Served
    path: Path
    claim: BlobClaim


@dataclass(frozen=True, slots=True)
class _Order:
    """What a ticket is for, decided in the request's read transaction (group commit path)."""

    access: WeightsAccess
    revision: RevisionRow
    file: FileRow
    served: Served
    grant: GrantRow
    tier: Tier
    method: str
    now: datetime
    ttl: timedelta

    @property
    def expires(self) -> datetime:
        """When the ticket's signed URL expires."""
        return self.now + self.ttl

    def ticket_row(self) -> dict[str, Any]:
        """The download_tickets row (its id comes from the insert)."""
        return {
            "grant_id": self.grant.id,
            "file_id": self.file.id,
            "method": self.method,
            "issued_at": self.now,
            "expires_at": self.expires,
            "size": self.served.size,
        }

    def lease(self, ticket_id: int) -> Lease | None:
        """A GET's concurrency slot, named by its ticket (None when the tier sets no limit)."""
        return _lease(self.grant, self.tier, ticket_id, self.ttl) if self.method == "GET" else None

    def dimensions(self, lease: Lease | None) -> list[Dimension]:
        """What the download is charged against."""
        return _dimensions(self.grant, self.tier, self.served.size, self.method, lease)

    def claim(self, ticket_id: int, lease: Lease | None) -> BlobClaim:
        """What the ticket's signed URL authorizes."""
        return BlobClaim(
            self.file.id,
            self.served.sha256,
            self.revision.commit_id,
            self.grant.user_id,
            self.grant.id,
            self.method,
            int(self.expires.timestamp()),
            ticket_id,
            self.served.staged,
            lease is not None,
        )

    def event(self, claim: BlobClaim) -> dict[str, Any]:
        """The download:issue event of the ticket (keyword arguments of `AuditRecorder.record`)."""
        return {
            "actor_id": self.grant.user_id,
            "org_id": self.access.model.org_id,
            "subject_user_id": self.grant.user_id,
            "model_id": self.access.model.id,
            "effect": "allow",
            "payload": {
                "ticket_id": claim.ticket_id,
                "grant_id": self.grant.id,
                "tier": self.grant.tier,
                "commit": self.revision.commit_id,
                "path": self.file.path,
                "sha256": self.served.sha256,
                "size": self.served.size,
                "staged": self.served.staged,
                "method": claim.method,
                "expires_at": format_timestamp(self.expires),  # as canonical JSON writes it
                **_country(self.access.request_country),
            },
        }


@dataclass(frozen=True)
class Ticket:
    """A signed URL for one file, and the headers a Hub client needs on the redirect."""

    url: str
    file: FileRow
    served: Served
    commit: str
    limit: LimitResult | None


class DownloadService:
    """Authorizes Hub reads against grants, the live policy and limits; issues tickets."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        access: AccessService,
        policies: PolicyService,
        publishing: PublishingService,
        provisioning: ProvisioningService,
        limiter: Limiter,
        signer: BlobSigner,
        storage: Storage,
        group: GroupCommit | None = None,
    ) -> None:
        self.audit = audit
        self.group = group  # SQLite: tickets are written in group commits
        self.access = access
        self.policies = policies
        self.publishing = publishing
        self.provisioning = provisioning
        self.limiter = limiter
        self.signer = signer
        self.storage = storage
        self.files = FileIndex()

    def open_revision(
        self,
        session: Session,
        *,
        principal: Principal,
        repo_id: str,
        rev: str,
        request_country: str | None,
        base_url: str,
    ) -> tuple[WeightsAccess, RevisionRow]:
        """The caller's weights access to `repo_id` and the revision `rev` names.

        Access is decided before the revision is resolved, so callers without a grant learn
        nothing about which revisions exist.
        """
        org_slug, _, name = repo_id.partition("/")
        found = load_access(session.connection(), org_slug, name, principal.user_id)
        if found is None:
            raise RepoNotFound(f"model '{repo_id[:200]}' not found")
        access = self.weights_access(
            session,
            principal=principal,
            found=found,
            request_country=request_country,
            base_url=base_url,
        )
        revision = self._revision(session, found.model, rev)
        self._require_vetted(session, principal, found, revision, base_url)
        return access, revision

    def _require_vetted(
        self,
        session: Session,
        principal: Principal,
        found: ModelAccess,
        revision: RevisionRow,
        base_url: str,
    ) -> None:
        """Weights tiers serve only revisions vetted clean, or overridden by a publisher.

        The head's state came with the model's row (same statement, same transaction); any
        other revision's is read now. Either way it is read on every request, never cached.
        """
        model = found.model
        if found.head_vetting is not None and revision == model.head:
            state: VettingState | None = VettingState(*found.head_vetting)
        else:
            state = load_vetting(session.connection(), revision.id)
        if state is not None and state.servable:
            return
        if state is None or state.status == VettingStatus.PENDING:
            raise ServiceUnavailable(
                f"Revision {revision.commit_id} of {model.repo_id} is still being vetted; "
                "try again shortly."
            )
        reason = {
            "code": "revision_not_vetted",
            "effect": "deny",
            "rule": "vetting",
            "message": f"Revision {revision.commit_id} failed vetting and the publisher has "
            "not approved serving it.",
        }
        self._deny(session, principal, model, apply_url_for(base_url, model), [reason])

    def weights_access(
        self,
        session: Session,
        *,
        principal: Principal,
        found: ModelAccess,
        request_country: str | None,
        base_url: str,
    ) -> WeightsAccess:
        """The caller's live weights grants, or AccessDenied (audited) with every reason."""
        model = found.model
        policy = self.policies.current_for(session, model)
        if not visible_to(principal, model.org_id, policy):
            raise RepoNotFound(f"model '{model.repo_id}' not found")
        apply_url = apply_url_for(base_url, model)
        if not principal.authenticated:
            raise AccessDenied(
                f"Access to model {model.repo_id} is restricted. Authenticate with an Airlock "
                f"token and request access at {apply_url}",
                apply_url=apply_url,
                authenticated=False,
            )
        user_id = principal.require_user()
        usable = usable_grants(found.grants, policy)
        if Scope.MODELS_READ not in principal.scopes:
            self._deny(
                session,
                principal,
                model,
                apply_url,
                [
                    {
                        "code": "token_scope_missing",
                        "effect": "deny",
                        "rule": "token.scopes",
                        "message": "The API token lacks the 'models:read' scope downloads need.",
                    }
                ],
                country=request_country,
            )
        if not usable or policy is None:
            reasons = self._no_grant_reasons(session, user_id, model)
            self._deny(session, principal, model, apply_url, reasons, country=request_country)
        assert policy is not None
        if found.facts is None:  # the user was deleted after the token was read
            raise AccessDenied(f"Access to model {model.repo_id} is restricted.")
        checked = self._recheck(
            session, principal, model, policy, usable, found.facts, request_country, apply_url
        )
        return WeightsAccess(
            model, policy, provisioned_first(session, checked), request_country=request_country
        )

    def _recheck(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        policy: ReleasePolicy,
        usable: Sequence[tuple[GrantRow, Tier]],
        facts: UserFacts,
        request_country: str | None,
        apply_url: str,
    ) -> tuple[tuple[GrantRow, Tier], ...]:
        """Evaluate the live policy for each grant's tier; deny-effects refuse the download."""
        kept, reasons = held_grants(self.access, policy, model, usable, facts, request_country)
        if not kept:
            self._deny(session, principal, model, apply_url, reasons, country=request_country)
        return tuple(kept)

    def _revision(self, session: Session, model: ModelRow, rev: str) -> RevisionRow:
        """`main` (the head) or a 40-hex commit id of this model."""
        if rev == "main":
            if model.head is None:
                raise RevisionNotFound(f"model '{model.repo_id}' has no revision yet")
            return model.head
        if not COMMIT_HEX.match(rev):
            raise RevisionNotFound(f"revision '{rev[:80]}' not found: use 'main' or a commit id")
        revision = load_revision(session.connection(), model.id, rev)
        if revision is None:
            raise RevisionNotFound(f"revision '{rev}' not found")
        return revision

    def _no_grant_reasons(
        self, session: Session, user_id: int, model: ModelRow
    ) -> list[dict[str, str]]:
        latest = session.scalar(
            select(Grant)
            .where(Grant.user_id == user_id, Grant.model_id == model.id)
            .order_by(Grant.id.desc())
            .limit(1)
        )
        if latest is None:
            return [
                {
                    "code": "no_grant",
                    "effect": "deny",
                    "rule": "grants",
                    "message": "You hold no grant for a tier of this model that includes weights.",
                }
            ]
        if latest.status == GrantStatus.ACTIVE:
            return [
                {
                    "code": "grant_expired",
                    "effect": "deny",
                    "rule": f"grants[{latest.id}]",
                    "message": f"Your grant {latest.id} ({latest.tier}) expired at "
                    f"{latest.expires_at:%Y-%m-%d %H:%M} UTC.",
                }
            ]
        return [
            {
                "code": f"grant_{latest.status}",
                "effect": "deny",
                "rule": f"grants[{latest.id}]",
                "message": f"Your grant {latest.id} ({latest.tier}) was {latest.status}"
                + (f": {latest.end_reason}" if latest.end_reason else "."),
            }
        ]

    def _deny(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        apply_url: str,
        reasons: list[dict[str, str]],
        *,
        country: str | None = None,
    ) -> None:
        payload = {"reasons": reasons, **({"request_country": country} if country else {})}
        self._audit_deny(session, principal, model, payload)
        summary = " ".join(r["message"] for r in reasons)
        raise AccessDenied(
            f"Access to model {model.repo_id} is restricted. {summary} "
            f"Request access at {apply_url}",
            reasons=reasons,
            apply_url=apply_url,
        )

    def visible_files(
        self, session: Session, access: WeightsAccess, revision: RevisionRow
    ) -> list[FileRow]:
        """The files of `revision` the caller's grants cover (others are invisible), each as
        the caller would receive it: a marked file lists the grant's own copy (its size,
        sha256 and git oid) once provisioned, so listings and downloads agree."""
        files = self.files.get(session.connection(), revision)
        visible = [f for f in files.files if access.allows(f.path)]
        own = [f for f in visible if access.own_copy(f.path)]
        if not own:
            return visible
        copies = load_copies(
            session.connection(), [(access.grant_for(f.path)[0].id, f.id) for f in own]
        )
        return [_as_copy(f, copies.get(f.id)) for f in visible]

    def find_file(
        self, session: Session, access: WeightsAccess, revision: RevisionRow, path: str
    ) -> FileRow:
        """One file the caller may see, or EntryNotFound (also for files outside the grant)."""
        file = self.files.get(session.connection(), revision).get(path)
        if file is None or not access.allows(path):
            raise EntryNotFound(
                f"{path[:200]} does not exist in {access.model.repo_id}@{revision.commit_id}"
            )
        return file

    def served(
        self, session: Session, *, access: WeightsAccess, revision: RevisionRow, file: FileRow
    ) -> Served:
        """What a download of `file` serves under the grant covering it (HEAD and GET alike).

        A fingerprinting tier serves the grant's staged copy, and only once the grant's
        provisioning is complete: until then ProvisioningPending (503). Other tiers serve the
        original without reading anything more.
        """
        grant, tier = access.grant_for(file.path)
        if not tier.fingerprint or not tier.fingerprint.stages_file(file.path):
            return Served.original(file)
        staging = load_staging(session.connection(), grant.id, file.id)
        if staging is not None and staging.provisioned:
            if staging.key and staging.sha256 and staging.size is not None:
                return Served(staging.key, staging.sha256, staging.size, staged=True)
            # Provisioned without this copy: a newer revision, a thawed model, a tier that began
            # fingerprinting. Ask again; only the request that notices first enqueues the task.
            session.rollback()  # a read-only transaction cannot become a writer (SQLite)
            self.provisioning.request_provisioning(
                session, grant_id=grant.id, revision_id=revision.id
            )
        raise ProvisioningPending(
            f"Your own copy of {access.model.repo_id} (grant {grant.id}, tier {tier.name}) is "
            "being prepared: provisioning is under way. Try again in a minute; Hub clients "
            "retry on their own."
        )

    def issue_ticket(
        self,
        session: Session,
        *,
        principal: Principal,
        access: WeightsAccess,
        revision: RevisionRow,
        file: FileRow,
        method: str,
        base_url: str,
    ) -> Ticket:
        """Count the download against the grant's limits, record and audit it, sign the URL.

        The ticket and its audit event are written in the request's transaction, which also
        read the token, grants and policy the decision used. A GET of a tier limiting
        concurrent downloads holds a lease named by the ticket id until the download ends.
        """
        grant, tier = access.grant_for(file.path)
        served = self.served(session, access=access, revision=revision, file=file)
        ttl = min(tier.signed_url_ttl, timedelta(hours=12))
        order = _Order(access, revision, file, served, grant, tier, method, utcnow(), ttl)
        if self.group is not None:
            return self._issue_in_group(session, principal, order, base_url)
        # The ticket row first: its id names the download's lease.
        ticket_id = insert_ticket(session.connection(), order.ticket_row())
        lease = order.lease(ticket_id)
        dims = order.dimensions(lease)
        limit = self._charge(session, principal, access.model, grant, dims)
        try:
            claim = order.claim(ticket_id, lease)
            self.audit.record(session, AuditAction.DOWNLOAD_ISSUE, **order.event(claim))
            session.commit()
        except BaseException:
            self._give_back(dims)  # nothing was issued
            raise
        return self._ticket(order, claim, limit, base_url)

    def _issue_in_group(
        self, session: Session, principal: Principal, order: _Order, base_url: str
    ) -> Ticket:
        """SQLite: write the ticket, its lease and its audit event in a group commit shared
        with the process's other writers (gateway/db/group_commit.py).

        The decision was made in the request's read transaction, just before, which stays
        open (in WAL mode a reader does not hold up the writer). The ticket is written after
        every write committed in between, as on PostgreSQL (READ COMMITTED), where a
        revocation committed after a GET's read also lets that GET's ticket through; a request
        that begins after a revocation committed always sees it.
        """
        assert self.group is not None
        try:  # the read transaction stays open: in WAL mode it does not hold up the writer
            written = self.group.run(partial(self._write_ticket, order))
        except LimiterUnavailable:
            grant = order.grant
            self._audit_refusal(session, principal, order.access.model, grant, _limiter_down(grant))
            raise
        if isinstance(written, LimitResult):  # refused: nothing was written
            refused = written.refused
            assert refused is not None
            self._deny_limited(
                session, principal, order.access.model, order.grant, refused, written
            )
        claim, limit = written
        return self._ticket(order, claim, limit, base_url)

    def _ticket(
        self, order: _Order, claim: BlobClaim, limit: LimitResult | None, base_url: str
    ) -> Ticket:
        """The signed URL of an issued ticket (a presigned one from object storage, else our
        own /blobs URL)."""
        url = self.storage.presign(order.served.key, method=order.method, expires_at=order.expires)
        url = url or self.signer.url(base_url, claim, order.file.path)
        return Ticket(url, order.file, order.served, order.revision.commit_id, limit)

    def _write_ticket(
        self, order: _Order, batch: Batch
    ) -> tuple[BlobClaim, LimitResult | None] | LimitResult:
        """A group commit job: the ticket row, the limiter's charge (its lease named by the
        ticket), the audit event; or the refusal, with nothing left written."""
        ticket_id, head_seq, head_hash = _TICKET_AND_HEAD.all(batch.conn, order.ticket_row())[0]
        self.audit.note_head(batch, head_seq, head_hash)  # no read of its own for the event
        lease = order.lease(ticket_id)
        dims = order.dimensions(lease)
        limit = self.limiter.acquire(dims) if dims else None
        if limit is not None and not limit.allowed:
            batch.conn.execute(delete(_TICKETS).where(_TICKETS.c.id == ticket_id))
            return limit
        batch.on_rollback(partial(self._give_back, dims))  # the batch may be re-run: no
        # attempt that did not commit keeps its charges
        claim = order.claim(ticket_id, lease)
        self.audit.record(batch, AuditAction.DOWNLOAD_ISSUE, **order.event(claim))
        return claim, limit

    def open_blob(
        self,
        session: Session,
        *,
        claim: BlobClaim | None,
        signature: str,
        method: str,
        filename: str,
        now: datetime,
    ) -> Blob:
        """Check a signed blob URL (signature, expiry, method) and find its object: one DB read.

        No grant is consulted: a signed URL carries its own authority until it expires, except
        that a staged copy deleted by the sweep (its grant ended) is gone for good. A GET
        refused after the signature held ends the download, and with it the ticket's lease.
        """
        if claim is None or not signature:
            raise Forbidden(
                "This blob URL is incomplete or malformed; fetch the file via /resolve."
            )
        if not self.signer.verify(claim, signature):
            raise Forbidden("This blob URL's signature is invalid; fetch the file via /resolve.")
        try:
            return self._blob(session, claim, method, filename, now)
        except AirlockError:
            if method == "GET":
                self.end_download(claim)
            raise

    def end_download(self, claim: BlobClaim) -> None:
        """A /blobs download of a leased ticket ended (completed or failed): free its slot."""
        if claim.leased:
            self._release(_ended_lease(claim.grant_id, claim.ticket_id))

    def _blob(
        self, session: Session, claim: BlobClaim, method: str, filename: str, now: datetime
    ) -> Blob:
        if claim.expires <= now.timestamp():
            raise Forbidden("This blob URL has expired; fetch the file again via /resolve.")
        if not claim.permits(method):
            raise Forbidden(f"This blob URL was signed for {claim.method}, not {method}.")
        conn = session.connection()
        if claim.staged:
            staged = load_staged_blob(conn, claim.grant_id, claim.file_id)
            if staged is None:
                raise Forbidden(COPY_GONE)
            file, commit = staged.file, staged.commit
            served = Served(staged.key, staged.sha256, staged.size, staged=True)
        else:
            row = load_file_with_commit(conn, claim.file_id)
            if row is None:
                raise Forbidden("This blob URL no longer matches a stored file.")
            file, commit = row
            served = Served.original(file)
        if served.sha256 != claim.sha256 or commit != claim.commit:
            raise Forbidden("This blob URL no longer matches a stored file.")
        if filename != file.path.rsplit("/", 1)[-1]:
            raise Forbidden("This blob URL's file name does not match its signature.")
        return Blob(file, commit, served, self._local_path(served, file), claim)

    def _local_path(self, served: Served, file: FileRow) -> Path:
        path = self.storage.local_path(served.key)
        if path is None:
            raise NotFound("this deployment serves files from its object store, not /blobs")
        if not path.is_file():
            raise bytes_gone(served, file)
        return path

    def _give_back(self, dims: Sequence[Dimension]) -> None:
        """Undo an admission whose ticket was not written: refund each charge, free the lease;
        if the limiter cannot answer, the charges lapse with their windows."""
        try:
            for dim in dims:
                if isinstance(dim, Lease):
                    self.limiter.release(dim)
                else:
                    self.limiter.adjust(dim, -dim.cost)
        except LimiterUnavailable:
            log.warning("could not give back a download's charges; they lapse with their windows")

    def _release(self, lease: Lease) -> None:
        """Give a lease back; if the limiter cannot answer, the lease expires on its own."""
        try:
            self.limiter.release(lease)
        except LimiterUnavailable:
            log.warning("could not release lease %s; it expires on its own", lease.key)

    def _charge(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        grant: GrantRow,
        dims: list[Dimension],
    ) -> LimitResult | None:
        """Admit every dimension at once, or refuse (audited); an unreachable limiter refuses."""
        if not dims:
            return None
        try:
            result = self.limiter.acquire(dims)
        except LimiterUnavailable:
            self._audit_refusal(session, principal, model, grant, _limiter_down(grant))
            raise
        if not result.allowed:
            refused = result.refused
            assert refused is not None
            self._deny_limited(session, principal, model, grant, refused, result)
        return result

    def _deny_limited(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        grant: GrantRow,
        refused: Dimension,
        result: LimitResult,
    ) -> NoReturn:
        never = result.retry_after == float("inf")
        message = _refusal_message(refused, result.retry_after)
        self._audit_refusal(
            session,
            principal,
            model,
            grant,
            {
                "code": "concurrent_downloads_exceeded"
                if isinstance(refused, Lease)
                else "rate_limited",
                "effect": "deny",
                "rule": f"tiers[{grant.tier}].limits.{refused.name}",
                "message": message,
            },
        )
        retry = DAY if never else retry_after_seconds(result)
        raise RateLimited(message, retry_after=retry, headers=ratelimit_headers(result))

    def _audit_refusal(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        grant: GrantRow,
        reason: dict[str, str],
    ) -> None:
        """Audit a limit refusal on its own: the request's ticket is rolled back first."""
        self._audit_deny(session, principal, model, {"grant_id": grant.id, "reasons": [reason]})

    def _audit_deny(
        self, session: Session, principal: Principal, model: ModelRow, payload: Mapping[str, Any]
    ) -> None:
        """Record download:deny in a transaction of its own, the request's work rolled back."""
        # A read-only request's transaction began deferred on SQLite, and a deferred read
        # cannot safely become a writer under concurrent writers: audit in a fresh one.
        session.rollback()
        self.audit.record(
            session,
            AuditAction.DOWNLOAD_DENY,
            actor_id=principal.user_id,
            org_id=model.org_id,
            subject_user_id=principal.user_id,
            model_id=model.id,
            effect="deny",
            payload=payload,
        )
        session.commit()


def _limiter_down(grant: GrantRow) -> dict[str, str]:
    """The reason of a download refused because the limiter could not be asked."""
    return {
        "code": "rate_limiter_unavailable",
        "effect": "deny",
        "rule": f"tiers[{grant.tier}].limits",
        "message": "The rate limiter could not be reached, so the download was "
        "refused rather than let through uncounted; try again shortly.",
    }


def bytes_gone(served: Served, file: FileRow) -> AirlockError:
    """Why a blob's bytes are not on disk: a swept staged copy, or an original's lost bytes."""
    if served.staged:  # the sweep deletes the object before its row
        return Forbidden(COPY_GONE)
    return ArtifactMissing(f"the bytes of {file.path} are missing from storage")


def usable_grants(
    grants: Sequence[GrantRow], policy: ReleasePolicy | None, kind: GrantKind = GrantKind.WEIGHTS
) -> list[tuple[GrantRow, Tier]]:
    """Active grants not yet past their expiry whose tier in the live policy gives `kind`."""
    if policy is None:
        return []
    now = utcnow()
    usable = []
    for grant in grants:
        tier = policy.tier(grant.tier)
        if (
            tier is not None
            and kind in tier.grants
            and (grant.expires_at is None or grant.expires_at > now)
        ):
            usable.append((grant, tier))
    return usable


def held_grants(
    access: AccessService,
    policy: ReleasePolicy,
    model: ModelRow,
    usable: Sequence[tuple[GrantRow, Tier]],
    facts: UserFacts,
    request_country: str | None,
) -> tuple[list[tuple[GrantRow, Tier]], list[dict[str, str]]]:
    """The grants of `usable` whose tier the live policy does not deny now, and every deny
    reason of the others."""
    subject = subject_of(facts, request_country=request_country)
    kept, reasons = [], []
    now = utcnow()
    for grant, tier in usable:
        decision = access.decide(policy, tier.name, with_request_facts(subject, grant), model, now)
        denying = [r for r in reasons_json(decision) if r["effect"] == "deny"]
        if denying:
            reasons += denying
        else:
            kept.append((grant, tier))
    return kept, reasons


def provisioned_first(
    session: Session, grants: tuple[tuple[GrantRow, Tier], ...]
) -> tuple[tuple[GrantRow, Tier], ...]:
    """`grants` with each tier's provisioned grants ahead of its unprovisioned ones (otherwise
    in grant order): a renewal's old grant serves until the new grant's copies are staged.
    Reads the database only when the caller holds several grants of one tier."""
    if len({grant.tier for grant, _ in grants}) == len(grants):
        return grants
    ready = set(
        session.scalars(
            select(Grant.id).where(
                Grant.id.in_([grant.id for grant, _ in grants]), Grant.provisioned_at.is_not(None)
            )
        )
    )
    by_tier: dict[str, list[tuple[GrantRow, Tier]]] = {}
    for pair in grants:
        by_tier.setdefault(pair[0].tier, []).append(pair)
    queues = {
        name: iter(sorted(pairs, key=lambda pair: pair[0].id not in ready))
        for name, pairs in by_tier.items()
    }
    return tuple(next(queues[grant.tier]) for grant, _ in grants)


def _dimensions(
    grant: GrantRow, tier: Tier, size: int, method: str, lease: Lease | None
) -> list[Dimension]:
    """Downloads and bytes per day (reserved from the served file's size) and the concurrency
    lease, all charged on GET only (HEAD carries no bytes). The lease comes last: Hub clients
    read the first `RateLimit` item."""
    if method != "GET":
        return []
    dims: list[Dimension] = []
    if tier.limits.downloads_per_day:
        dims.append(
            Dimension(
                f"grant:{grant.id}:downloads_per_day",
                "downloads_per_day",
                tier.limits.downloads_per_day,
                DAY,
            )
        )
    if tier.limits.bytes_per_day:
        dims.append(
            Dimension(
                f"grant:{grant.id}:bytes_per_day",
                "bytes_per_day",
                tier.limits.bytes_per_day,
                DAY,
                cost=max(1, size),
                unit="content-bytes",
            )
        )
    if lease is not None:
        dims.append(lease)
    return dims


def _as_copy(file: FileRow, copy: tuple[str, int] | None) -> FileRow:
    if copy is None:  # not provisioned yet: the original's figures until it is
        return file
    sha256, size = copy
    return replace(file, sha256=sha256, size=size, git_oid=git_blob_oid(size, sha256))


def _lease(grant: GrantRow, tier: Tier, ticket_id: int, ttl: timedelta) -> Lease | None:
    """The ticket's concurrency slot, held while its signed URL lives (or until released)."""
    quota = tier.limits.concurrent_downloads
    if quota is None:
        return None
    return Lease(
        _lease_key(grant.id),
        "concurrent_downloads",
        quota,
        ttl.total_seconds(),
        id=str(ticket_id),
    )


def _ended_lease(grant_id: int, ticket_id: int) -> Lease:
    """The lease of a ticket, as releasing it needs it (key and id)."""
    return Lease(_lease_key(grant_id), "concurrent_downloads", 0, 1.0, id=str(ticket_id))


def _lease_key(grant_id: int) -> str:
    return f"grant:{grant_id}:concurrent_downloads"


def _refusal_message(refused: Dimension, wait: float) -> str:
    """The sentence a researcher reads when `refused` has no room."""
    if isinstance(refused, Lease):
        plural = "download is" if refused.quota == 1 else "downloads are"
        return (
            f"{refused.quota} {plural} already in progress for this grant (the tier's "
            f"concurrent_downloads limit); wait for one to finish. A slot frees as soon as one "
            f"does, or at the latest in {_human_wait(wait)} when its download link expires."
        )
    if wait == float("inf"):
        return f"The file is larger than the tier's whole allowance of {_allowance(refused)}."
    return (
        f"The tier's allowance of {_allowance(refused)} ({refused.name}) is used up; "
        f"more becomes available in {_human_wait(wait)}."
    )


def _allowance(dim: Dimension) -> str:
    """A limit in words: '3 downloads a day', '2.0 GB a day'."""
    if dim.name == "bytes_per_day":
        if dim.quota >= 10**8:
            return f"{dim.quota / 1e9:.1f} GB a day"
        return f"{dim.quota} bytes a day"
    if dim.name == "downloads_per_day":
        return f"{dim.quota} download{'' if dim.quota == 1 else 's'} a day"
    return f"{dim.quota} {dim.unit}"


def apply_url_for(base_url: str, model: ModelRow) -> str:
    """Where a researcher sees a model's tiers (GET) and requests one (POST)."""
    return base_url.rstrip("/") + APPLY_PATH.format(repo=model.repo_id)


def ratelimit_headers(result: LimitResult | None) -> dict[str, str]:
    """IETF draft `RateLimit-Policy` and `RateLimit` structured-field headers.

    A concurrency lease has no window (`w`): its policy item is `q` with
    `qu="concurrent-requests"`, and its `t` says when to check again (a slot frees whenever a
    download ends, so no reset time is known).
    """
    if result is None or not result.states:
        return {}
    policy = ", ".join(_policy_item(s.dimension) for s in result.states)
    current = ", ".join(
        f'"{s.dimension.name}";r={s.remaining};t={_reset_seconds(s)}' for s in result.states
    )
    headers = {"RateLimit-Policy": policy, "RateLimit": current}
    if not result.allowed:
        headers["Retry-After"] = str(retry_after_seconds(result))
    return headers


def retry_after_seconds(result: LimitResult) -> int:
    """Whole seconds to wait before retrying a refusal (at most a day)."""
    wait = min(result.retry_after, DAY)
    if isinstance(result.refused, Lease):
        wait = min(wait, LEASE_RETRY_AFTER)
    return max(1, int(wait + 0.999))


def _policy_item(dim: Dimension) -> str:
    if isinstance(dim, Lease):
        return f'"{dim.name}";q={dim.quota};qu="{dim.unit}"'
    unit = f';qu="{dim.unit}"' if dim.unit != "requests" else ""
    return f'"{dim.name}";q={dim.quota};w={int(dim.window)}{unit}'


def _reset_seconds(state: DimensionState) -> int:
    if isinstance(state.dimension, Lease):
        return 0 if state.remaining else min(int(state.reset_after), LEASE_RETRY_AFTER)
    return max(0, int(state.reset_after))


def with_request_facts(subject: Subject, grant: GrantRow) -> Subject:
    """The subject with the agreement and form of the request the grant came from."""
    if grant.request_id is None:
        return subject
    accepted: frozenset[tuple[str, int]] = frozenset()
    if grant.agreement_id and grant.agreement_version:
        accepted = frozenset({(grant.agreement_id, grant.agreement_version)})
    return replace(subject, form=grant.form, accepted_agreements=accepted)


def _human_wait(seconds: float) -> str:
    """A wait as a person reads it: '45 s', '12 min', '5 h 3 min'."""
    whole = max(1, int(seconds + 0.999))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{(whole + 59) // 60} min"
    return f"{whole // 3600} h {(whole % 3600) // 60} min"


def _country(request_country: str | None) -> dict[str, str]:
    """The request's country for an allowed event's payload, when it is known."""
    return {"request_country": request_country} if request_country else {}
