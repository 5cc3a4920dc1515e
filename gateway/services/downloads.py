"""Hub-compatible reads: who may list and fetch which files, and download tickets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import Grant, GrantStatus, VettingStatus, utcnow
from gateway.errors import (
    AccessDenied,
    EntryNotFound,
    Forbidden,
    RateLimited,
    RepoNotFound,
    RevisionNotFound,
    ServiceUnavailable,
)
from gateway.ratelimit import Dimension, Limiter, LimitResult
from gateway.services.access import AccessService, reasons_json, subject_of, visible_to
from gateway.services.policy import PolicyService
from gateway.services.principal import Principal
from gateway.services.publishing import COMMIT_HEX, PublishingService, load_vetting
from gateway.services.rows import (
    INSERT_TICKET,
    FileIndex,
    FileRow,
    GrantRow,
    ModelAccess,
    ModelRow,
    RevisionRow,
    UserFacts,
    load_access,
    load_file_with_commit,
    load_revision,
)
from gateway.services.signing import BlobClaim, BlobSigner
from gateway.storage import Storage
from policies import GrantKind, ReleasePolicy, Subject, Tier

DAY = 86400
APPLY_PATH = "/api/v1/models/{repo}/access"


@dataclass(frozen=True)
class WeightsAccess:
    """The caller's usable weights grants for a model, with the tiers that define them."""

    model: ModelRow
    policy: ReleasePolicy
    grants: tuple[tuple[GrantRow, Tier], ...]

    def allows(self, path: str) -> bool:
        """Whether any grant's file globs cover `path`."""
        return any(tier.allows_file(path) for _, tier in self.grants)

    def grant_for(self, path: str) -> tuple[GrantRow, Tier]:
        """The grant that covers `path` (the first, in grant order)."""
        return next((g, t) for g, t in self.grants if t.allows_file(path))


@dataclass(frozen=True)
class Blob:
    """A verified blob request: the file row, its commit, and where its bytes are on disk."""

    file: FileRow
    commit: str
    path: Path | None


@dataclass(frozen=True)
class Ticket:
    """A signed URL for one file, and the headers a Hub client needs on the redirect."""

    url: str
    file: FileRow
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
        limiter: Limiter,
        signer: BlobSigner,
        storage: Storage,
    ) -> None:
        self.audit = audit
        self.access = access
        self.policies = policies
        self.publishing = publishing
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
        self._require_vetted(session, principal, found.model, revision, base_url)
        return access, revision

    def _require_vetted(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        revision: RevisionRow,
        base_url: str,
    ) -> None:
        """Weights tiers serve only revisions vetted clean, or overridden by a publisher."""
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
        usable = _usable_grants(found.grants, policy)
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
            )
        if not usable or policy is None:
            reasons = self._no_grant_reasons(session, user_id, model)
            self._deny(session, principal, model, apply_url, reasons)
        assert policy is not None
        if found.facts is None:  # the user was deleted after the token was read
            raise AccessDenied(f"Access to model {model.repo_id} is restricted.")
        checked = self._recheck(
            session, principal, model, policy, usable, found.facts, request_country, apply_url
        )
        return WeightsAccess(model, policy, checked)

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
        subject = subject_of(facts, request_country=request_country)
        kept, reasons = [], []
        now = utcnow()
        for grant, tier in usable:
            decision = self.access.decide(
                policy, tier.name, with_request_facts(subject, grant), model, now
            )
            denying = [r for r in reasons_json(decision) if r["effect"] == "deny"]
            if denying:
                reasons += denying
            else:
                kept.append((grant, tier))
        if not kept:
            self._deny(session, principal, model, apply_url, reasons)
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
    ) -> None:
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
            payload={"reasons": reasons},
        )
        session.commit()
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
        """The files of `revision` the caller's grants cover (others are invisible)."""
        files = self.files.get(session.connection(), revision)
        return [f for f in files.files if access.allows(f.path)]

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
        read the token, grants and policy the decision used.
        """
        grant, tier = access.grant_for(file.path)
        limit = self._charge(session, principal, access.model, grant, tier, file, method)
        now = utcnow()
        ttl = min(tier.signed_url_ttl, timedelta(hours=12))
        expires_at = now + ttl
        claim = BlobClaim(
            file.id,
            file.sha256,
            revision.commit_id,
            grant.user_id,
            grant.id,
            method,
            int(expires_at.timestamp()),
        )
        url = self.storage.presign(file.storage_key, method=method, expires_at=expires_at)
        url = url or self.signer.url(base_url, claim, file.path)
        ticket_id = (
            session.connection()
            .execute(
                INSERT_TICKET,
                {
                    "grant_id": grant.id,
                    "file_id": file.id,
                    "method": method,
                    "issued_at": now,
                    "expires_at": expires_at,
                    "size": file.size,
                },
            )
            .scalar_one()
        )
        self.audit.record(
            session,
            AuditAction.DOWNLOAD_ISSUE,
            actor_id=grant.user_id,
            org_id=access.model.org_id,
            subject_user_id=grant.user_id,
            model_id=access.model.id,
            effect="allow",
            payload={
                "ticket_id": ticket_id,
                "grant_id": grant.id,
                "tier": grant.tier,
                "commit": revision.commit_id,
                "path": file.path,
                "sha256": file.sha256,
                "size": file.size,
                "method": method,
                "expires_at": expires_at,
            },
        )
        session.commit()
        return Ticket(url, file, revision.commit_id, limit)

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
        """Check a signed blob URL (signature, expiry, method) and find its file: one DB read.

        No grant is consulted: a signed URL carries its own authority until it expires.
        """
        if claim is None or not signature:
            raise Forbidden(
                "This blob URL is incomplete or malformed; fetch the file via /resolve."
            )
        if not self.signer.verify(claim, signature):
            raise Forbidden("This blob URL's signature is invalid; fetch the file via /resolve.")
        if claim.expires <= now.timestamp():
            raise Forbidden("This blob URL has expired; fetch the file again via /resolve.")
        if not claim.permits(method):
            raise Forbidden(f"This blob URL was signed for {claim.method}, not {method}.")
        row = load_file_with_commit(session.connection(), claim.file_id)
        if row is None or row[0].sha256 != claim.sha256 or row[1] != claim.commit:
            raise Forbidden("This blob URL no longer matches a stored file.")
        file, commit = row
        if filename != file.path.rsplit("/", 1)[-1]:
            raise Forbidden("This blob URL's file name does not match its signature.")
        return Blob(file, commit, self.storage.local_path(file.storage_key))

    def _charge(
        self,
        session: Session,
        principal: Principal,
        model: ModelRow,
        grant: GrantRow,
        tier: Tier,
        file: FileRow,
        method: str,
    ) -> LimitResult | None:
        dims = _dimensions(grant, tier, file, method)
        if not dims:
            return None
        result = self.limiter.acquire(dims)
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
    ) -> None:
        never = result.retry_after == float("inf")
        message = (
            f"The file is larger than the tier's whole {refused.name} limit."
            if never
            else f"The tier's {refused.name} limit ({refused.quota}) is used up; "
            f"more becomes available in {_human_wait(result.retry_after)}."
        )
        session.rollback()  # nothing was written yet; the refusal is audited on its own
        self.audit.record(
            session,
            AuditAction.DOWNLOAD_DENY,
            actor_id=principal.user_id,
            org_id=model.org_id,
            subject_user_id=principal.user_id,
            model_id=model.id,
            effect="deny",
            payload={
                "grant_id": grant.id,
                "reasons": [
                    {
                        "code": "rate_limited",
                        "effect": "deny",
                        "rule": f"tiers[{grant.tier}].limits",
                        "message": message,
                    }
                ],
            },
        )
        session.commit()
        retry = DAY if never else max(1, int(result.retry_after + 0.999))
        raise RateLimited(message, retry_after=retry, headers=ratelimit_headers(result))


def _usable_grants(
    grants: Sequence[GrantRow], policy: ReleasePolicy | None
) -> list[tuple[GrantRow, Tier]]:
    """Active grants not yet past their expiry whose tier in the live policy gives weights."""
    if policy is None:
        return []
    now = utcnow()
    usable = []
    for grant in grants:
        tier = policy.tier(grant.tier)
        if (
            tier is not None
            and GrantKind.WEIGHTS in tier.grants
            and (grant.expires_at is None or grant.expires_at > now)
        ):
            usable.append((grant, tier))
    return usable


def _dimensions(grant: GrantRow, tier: Tier, file: FileRow, method: str) -> list[Dimension]:
    """Downloads and bytes per day are charged on GET only (HEAD carries no bytes)."""
    if method != "GET":
        return []
    dims = []
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
                cost=max(1, file.size),
                unit="content-bytes",
            )
        )
    return dims


def apply_url_for(base_url: str, model: ModelRow) -> str:
    """Where a researcher sees a model's tiers (GET) and requests one (POST)."""
    return base_url.rstrip("/") + APPLY_PATH.format(repo=model.repo_id)


def ratelimit_headers(result: LimitResult | None) -> dict[str, str]:
    """IETF draft `RateLimit-Policy` and `RateLimit` structured-field headers."""
    if result is None or not result.states:
        return {}
    policy = ", ".join(
        f'"{s.dimension.name}";q={s.dimension.quota};w={s.dimension.window}'
        + (f';qu="{s.dimension.unit}"' if s.dimension.unit != "requests" else "")
        for s in result.states
    )
    current = ", ".join(
        f'"{s.dimension.name}";r={s.remaining};t={max(0, int(s.reset_after))}'
        for s in result.states
    )
    headers = {"RateLimit-Policy": policy, "RateLimit": current}
    if not result.allowed:
        headers["Retry-After"] = str(max(1, int(min(result.retry_after, DAY) + 0.999)))
    return headers


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
