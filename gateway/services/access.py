"""Access requests, reviews, grants, KYC facts, revocation and freezes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import (
    AccessRequest,
    Grant,
    GrantStatus,
    KycVerification,
    Model,
    Organization,
    RequestReview,
    RequestStatus,
    User,
    utcnow,
)
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound, RepoNotFound
from gateway.kyc import KycFacts
from gateway.services.policy import PolicyService
from gateway.services.principal import Principal
from gateway.services.rows import CURRENT_KYC_ID, CURRENT_KYC_IDS, KycRow, UserFacts
from gateway.services.supersession import renewed_grants, supersede
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import PROVISION_TASK, REEVALUATE_USER_TASK
from policies import (
    AgreementRef,
    Decision,
    Effect,
    KycLevel,
    PackRegistry,
    ReleasePolicy,
    Stage,
    Subject,
    evaluate,
    kyc_too_old,
)


def reasons_json(decision: Decision) -> list[dict[str, Any]]:
    """The decision's reasons as JSON-ready dicts (code, message, rule, effect)."""
    return [
        {"code": str(r.code), "message": r.message, "rule": r.rule, "effect": str(r.effect)}
        for r in decision.reasons
    ]


# -- memoized decisions --------------------------------------------------------------------------
# `evaluate` is a pure function of (policy, tier, subject, now, packs, model_frozen). Of `now` it
# uses only the UTC date (jurisdiction packs' effective dates), whether the KYC expiry has passed
# and whether the verification is older than the tier's kyc_max_age. The packs never change in a
# process (a policy's own packs are part of the policy object). So a decision is reused only for
# the same parsed policy object, tier, every subject field, freeze state, UTC date and the
# KYC-expired and KYC-too-old flags: the authorization state itself (token, grants, policy
# version, KYC, freeze, vetting) is still read from the database on every request by the caller;
# only the pure computation on it is reused.
SUBJECT_FIELDS = tuple(f.name for f in dataclass_fields(Subject))
_KEYED = tuple(name for name in SUBJECT_FIELDS if name != "form")
if set(_KEYED) | {"form"} != set(SUBJECT_FIELDS):  # pragma: no cover - a new field not keyed
    raise RuntimeError("decision_key does not cover every Subject field")
_PLAIN = (str, int, float, bool, type(None))


def decision_key(
    policy: ReleasePolicy, tier: str, subject: Subject, frozen: bool, now: datetime
) -> tuple[object, ...] | None:
    """Everything `evaluate` reads, as a hashable key; None when the form is not plain JSON."""
    form = subject.form
    if form is not None and not _plain_json(form):
        return None
    expires = subject.kyc_expires_at
    expired = expires is not None and expires <= now
    found = policy.tier(tier)
    limit = found.requires.kyc_max_age if found is not None else None
    too_old = kyc_too_old(subject.kyc_verified_at, limit, now)
    facts = tuple(getattr(subject, name) for name in _KEYED)
    day = now.astimezone(UTC).date()
    return (id(policy), tier, facts, repr(form), frozen, day, expired, too_old)


def _plain_json(value: object, depth: int = 0) -> bool:
    """Only JSON's own types (whose repr tells every value apart), nested at most 32 deep."""
    if depth > 32:
        return False
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind is dict:
        return all(
            type(k) is str and _plain_json(v, depth + 1)
            for k, v in value.items()  # type: ignore[attr-defined]
        )
    if kind is list:
        return all(_plain_json(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    return False


class DecisionCache:
    """A bounded LRU of decisions by `decision_key`; an entry keeps its policy object alive so
    the policy's id in the key cannot be reused by another object while the entry exists."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[object, ...], tuple[ReleasePolicy, Decision]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(self, key: tuple[object, ...], policy: ReleasePolicy) -> Decision | None:
        """The decision stored under `key` for this very policy object, or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not policy:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: tuple[object, ...], policy: ReleasePolicy, decision: Decision) -> None:
        """Store a decision; the least recently used entry goes when full."""
        with self._lock:
            self._entries[key] = (policy, decision)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


class Freezable(Protocol):
    """Anything carrying a model's freeze state (the entity or a row read on the hot path)."""

    @property
    def frozen_at(self) -> datetime | None: ...


def kyc_row(kyc: KycVerification) -> KycRow:
    """The facts of a verification entity that decisions use."""
    return KycRow(
        kyc.level,
        kyc.expires_at,
        kyc.sanctions_hit,
        kyc.nationality,
        kyc.residence_country,
        kyc.residence_subdivision,
        kyc.document_country,
        kyc.verified_at,
    )


def user_subject(
    user: User,
    kyc: KycVerification | None,
    *,
    request_country: str | None,
    form: Mapping[str, object] | None = None,
    agreement: tuple[str, int] | None = None,
) -> Subject:
    """The facts the engine sees about `user` whose current verification is `kyc`."""
    org = user.affiliation
    facts = UserFacts(
        user.id,
        user.email,
        org.slug if org else None,
        org.hq_country if org else None,
        kyc_row(kyc) if kyc else None,
    )
    return subject_of(facts, request_country=request_country, form=form, agreement=agreement)


def visible_to(principal: Principal, org_id: int, policy: ReleasePolicy | None) -> bool:
    """Members always see their models; others only once a policy opens it beyond internal."""
    if principal.is_member(org_id):
        return True
    return policy is not None and policy.stage != Stage.INTERNAL


def subject_of(
    facts: UserFacts,
    *,
    request_country: str | None,
    form: Mapping[str, object] | None = None,
    agreement: tuple[str, int] | None = None,
) -> Subject:
    """The facts the engine sees about a user: KYC, affiliation, email, request and agreement."""
    kyc = facts.kyc
    return Subject(
        user_id=str(facts.user_id),
        kyc_level=KycLevel(kyc.level) if kyc else KycLevel.NONE,
        kyc_expires_at=kyc.expires_at if kyc else None,
        kyc_verified_at=kyc.verified_at if kyc else None,
        sanctions_hit=kyc.sanctions_hit if kyc else None,
        nationality=kyc.nationality if kyc else None,
        residence_country=kyc.residence_country if kyc else None,
        residence_subdivision=kyc.residence_subdivision if kyc else None,
        document_country=kyc.document_country if kyc else None,
        org_hq_country=facts.affiliation_hq_country,
        request_country=request_country,
        affiliation_org=facts.affiliation_slug,
        email=facts.email,
        accepted_agreements=frozenset({agreement}) if agreement else frozenset(),
        form=form,
    )


@dataclass(frozen=True)
class RequestOutcome:
    """A stored request, and the grant it produced when the tier is automatic."""

    request: AccessRequest
    grant: Grant | None
    decision: Decision


class AccessService:
    """Turns requests into decisions and grants, and keeps grants honest."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        policies: PolicyService,
        packs: PackRegistry,
        runner: TaskRunner,
    ) -> None:
        self.audit = audit
        self.policies = policies
        self.packs = packs  # loaded once per process; they never change (PackRegistry)
        self.runner = runner
        self.decisions = DecisionCache()

    # -- visibility ----------------------------------------------------------------------------
    def visible(self, principal: Principal, model: Model) -> bool:
        """Members always see their models; others only once a policy opens it beyond internal."""
        return visible_to(principal, model.org_id, self.policies.current(model))

    def require_visible(self, principal: Principal, model: Model) -> None:
        """RepoNotFound unless the caller may know the model exists."""
        if not self.visible(principal, model):
            raise RepoNotFound(f"model '{model.repo_id}' not found")

    # -- facts and decisions -------------------------------------------------------------------
    def subject(
        self,
        session: Session,
        *,
        user: User,
        model: Model,
        request_country: str | None,
        form: Mapping[str, object] | None = None,
        agreement: tuple[str, int] | None = None,
    ) -> Subject:
        """The facts the engine sees about `user` asking for `model`."""
        kyc = self.current_kyc(session, user_id=user.id, org_id=model.org_id)
        return user_subject(
            user, kyc, request_country=request_country, form=form, agreement=agreement
        )

    def current_kyc(self, session: Session, *, user_id: int, org_id: int) -> KycVerification | None:
        """The newest approved verification valid for decisions of `org_id`."""
        return session.scalar(
            select(KycVerification).where(KycVerification.id == CURRENT_KYC_ID),
            {"user_id": user_id, "org_id": org_id},
        )

    def current_kycs(
        self, session: Session, *, user_ids: Collection[int], org_id: int
    ) -> dict[int, KycVerification]:
        """What `current_kyc` reads, for many users in one statement: by user id (a user with
        no current verification is absent)."""
        if not user_ids:
            return {}
        query = select(KycVerification).where(KycVerification.id.in_(CURRENT_KYC_IDS))
        found = session.scalars(query, {"org_id": org_id, "user_ids": list(user_ids)})
        return {kyc.user_id: kyc for kyc in found}

    def decide(
        self, policy: ReleasePolicy, tier: str, subject: Subject, model: Freezable, now: datetime
    ) -> Decision:
        """Run the engine for one tier with the model's freeze state (memoized: see
        DecisionCache; every input is read fresh by the caller and is part of the key)."""
        frozen = model.frozen_at is not None
        key = decision_key(policy, tier, subject, frozen, now)
        if key is not None:
            found = self.decisions.get(key, policy)
            if found is not None:
                return found
        # Every argument passed here is in the key; a new one must be added to decision_key.
        decision = evaluate(policy, tier, subject, now=now, packs=self.packs, model_frozen=frozen)
        if key is not None:
            self.decisions.put(key, policy, decision)
        return decision

    # -- requests ------------------------------------------------------------------------------
    def request_access(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        tier: str,
        form: Mapping[str, object],
        agreement: str | None,
        request_country: str | None,
    ) -> RequestOutcome:
        """Decide a request now: auto tiers grant at once, manual ones wait for reviewers."""
        user_id = principal.require_scope(Scope.ACCESS_REQUEST)
        self.require_visible(principal, model)
        _, policy = self.policies.require_current(model)
        if policy.tier(tier) is None:
            names = [t.name for t in policy.tiers]
            raise InvalidInput(f"unknown tier '{tier[:64]}'; this model offers {names}")
        self._refuse_duplicate(session, user_id=user_id, model=model, tier=tier)
        return self._file(
            session,
            user_id=user_id,
            model=model,
            tier=tier,
            form=form,
            agreement=agreement,
            request_country=request_country,
        )

    def _file(
        self,
        session: Session,
        *,
        user_id: int,
        model: Model,
        tier: str,
        form: Mapping[str, object],
        agreement: str | None,
        request_country: str | None,
        renews: Grant | None = None,
    ) -> RequestOutcome:
        """Evaluate, store and audit one request; an automatic tier's grant is created at once."""
        version, policy = self.policies.require_current(model)
        user = session.get_one(User, user_id)
        accepted = _parse_agreement(agreement)
        now = utcnow()
        subject = self.subject(
            session,
            user=user,
            model=model,
            request_country=request_country,
            form=form,
            agreement=accepted,
        )
        decision = self.decide(policy, tier, subject, model, now)
        request = AccessRequest(
            user_id=user_id,
            model_id=model.id,
            tier=tier,
            policy_version_id=version.id,
            form=dict(form),
            agreement_id=accepted[0] if accepted else None,
            agreement_version=accepted[1] if accepted else None,
            effect=str(decision.effect),
            reasons=reasons_json(decision),
            created_at=now,
            reviewers_required=decision.approval.reviewers if decision.approval else 0,
            status=str(_initial_status(decision)),
        )
        session.add(request)
        session.flush()
        self.audit.record(
            session,
            AuditAction.REQUEST_CREATE,
            actor_id=user_id,
            org_id=model.org_id,
            subject_user_id=user_id,
            model_id=model.id,
            effect=str(decision.effect),
            payload={
                "request_id": request.id,
                "tier": tier,
                "policy_version": version.version,
                "decision": decision.to_dict(),
                "request_country": request_country,
                **({"renews_grant_id": renews.id} if renews else {}),
            },
        )
        grant = None
        if decision.effect == Effect.ALLOW:
            request.decided_at = now
            grant = self._create_grant(session, request=request, policy=policy, actor_id=user_id)
        session.commit()
        return RequestOutcome(request, grant, decision)

    def _refuse_duplicate(self, session: Session, *, user_id: int, model: Model, tier: str) -> None:
        self._refuse_pending(session, user_id=user_id, model=model, tier=tier)
        now = utcnow()
        active = session.scalar(
            select(Grant).where(
                Grant.user_id == user_id,
                Grant.model_id == model.id,
                Grant.tier == tier,
                Grant.status == GrantStatus.ACTIVE,
                or_(Grant.expires_at.is_(None), Grant.expires_at > now),
            )
        )
        if active:
            opens = renewable_from(active)
            renew = f"; renew it from {opens:%Y-%m-%d %H:%M} UTC" if opens else ""
            raise Conflict(
                f"grant {active.id} for this tier is already active{renew}",
                extra={"grant_id": active.id},
            )

    def _refuse_pending(self, session: Session, *, user_id: int, model: Model, tier: str) -> None:
        pending = session.scalar(
            select(AccessRequest.id).where(
                AccessRequest.user_id == user_id,
                AccessRequest.model_id == model.id,
                AccessRequest.tier == tier,
                AccessRequest.status == RequestStatus.PENDING,
            )
        )
        if pending:
            raise Conflict(
                f"request {pending} for this tier is already pending", extra={"request_id": pending}
            )

    # -- renewal -------------------------------------------------------------------------------
    def renew_grant(
        self,
        session: Session,
        *,
        principal: Principal,
        grant_id: int,
        form: Mapping[str, object] | None,
        agreement: str | None,
        request_country: str | None,
    ) -> RequestOutcome:
        """Ask again for an expiring grant's tier, in its renewal window: an ordinary request
        (current policy, same review), prefilled with the previous answers; once granted, the
        new grant supersedes the old one."""
        grant, previous = self.renewable(session, principal=principal, grant_id=grant_id)
        user_id, model = grant.user_id, grant.model
        _, policy = self.policies.require_current(model)
        tier = policy.tier(grant.tier)
        if tier is None:
            raise Conflict(f"this model no longer offers tier '{grant.tier}'; nothing to renew")
        return self._file(
            session,
            user_id=user_id,
            model=model,
            tier=grant.tier,
            form=previous.form if form is None and previous else (form or {}),
            agreement=agreement or _previous_agreement(previous, tier.requires.agreement),
            request_country=request_country,
            renews=grant,
        )

    def renewable(
        self, session: Session, *, principal: Principal, grant_id: int
    ) -> tuple[Grant, AccessRequest | None]:
        """The caller's grant, in its renewal window with no renewal pending, and the request
        that produced it (whose answers prefill the renewal)."""
        user_id = principal.require_scope(Scope.ACCESS_REQUEST)
        grant = session.get(Grant, grant_id)
        if grant is None or grant.user_id != user_id:
            raise NotFound("no such grant")
        self.require_visible(principal, grant.model)
        _require_renewable(grant, utcnow())
        self._refuse_pending(session, user_id=user_id, model=grant.model, tier=grant.tier)
        previous = session.get(AccessRequest, grant.request_id) if grant.request_id else None
        return grant, previous

    def pending_renewals(self, session: Session, grants: Collection[Grant]) -> dict[int, int]:
        """For each live grant with a request pending for its tier (its renewal): that request's
        id, by grant id."""
        live = [g for g in grants if g.status == GrantStatus.ACTIVE and g.expires_at]
        if not live:
            return {}
        rows = session.execute(
            select(
                AccessRequest.id, AccessRequest.user_id, AccessRequest.model_id, AccessRequest.tier
            ).where(
                AccessRequest.user_id.in_({g.user_id for g in live}),
                AccessRequest.status == RequestStatus.PENDING,
            )
        ).all()
        pending = {(u, m, t): i for i, u, m, t in rows}
        found = {g.id: pending.get((g.user_id, g.model_id, g.tier)) for g in live}
        return {g: r for g, r in found.items() if r is not None}

    def review(
        self,
        session: Session,
        *,
        principal: Principal,
        request_id: int,
        approve: bool,
        note: str,
    ) -> RequestOutcome:
        """Record one reviewer's verdict; the last required approval creates the grant."""
        request = session.get(AccessRequest, request_id)
        if request is None:
            raise NotFound("no such access request")
        model = request.model
        reviewer = principal.require_org_scope(model.org_id, Scope.REQUESTS_REVIEW)
        if request.user_id == reviewer:
            raise Forbidden("reviewers may not decide their own requests")
        if request.status != RequestStatus.PENDING:
            raise Conflict(f"request {request.id} is {request.status}, not pending")
        if any(r.reviewer_id == reviewer for r in request.reviews):
            raise Conflict("you have already reviewed this request")
        if not approve and not note.strip():
            raise InvalidInput("a rejection needs a reason the requester will read")
        _, policy = self.policies.require_current(model)
        decision = self._recheck(session, request, policy, model)
        if approve and _blocking(decision):
            raise Conflict(
                "the request no longer meets the policy; it cannot be approved",
                extra={"reasons": reasons_json(decision)},
            )
        request.reviews.append(
            RequestReview(
                reviewer_id=reviewer, verdict="approve" if approve else "reject", note=note[:2000]
            )
        )
        self.audit.record(
            session,
            AuditAction.REQUEST_REVIEW,
            actor_id=reviewer,
            org_id=model.org_id,
            subject_user_id=request.user_id,
            model_id=model.id,
            effect="allow" if approve else "deny",
            payload={"request_id": request.id, "note": note[:2000], "decision": decision.to_dict()},
        )
        outcome = self._settle(session, request, policy, decision, reviewer, approve, note)
        session.commit()
        return outcome

    def _recheck(
        self, session: Session, request: AccessRequest, policy: ReleasePolicy, model: Model
    ) -> Decision:
        agreement = (
            (request.agreement_id, request.agreement_version)
            if request.agreement_id and request.agreement_version
            else None
        )
        subject = self.subject(
            session,
            user=request.user,
            model=model,
            request_country=None,
            form=request.form,
            agreement=agreement,
        )
        return self.decide(policy, request.tier, subject, model, utcnow())

    def _settle(
        self,
        session: Session,
        request: AccessRequest,
        policy: ReleasePolicy,
        decision: Decision,
        reviewer: int,
        approve: bool,
        note: str,
    ) -> RequestOutcome:
        now = utcnow()
        if not approve:
            request.status, request.decided_at, request.decision_note = (
                str(RequestStatus.REJECTED),
                now,
                note[:2000],
            )
            self.audit.record(
                session,
                AuditAction.REQUEST_REJECT,
                actor_id=reviewer,
                org_id=request.model.org_id,
                subject_user_id=request.user_id,
                model_id=request.model_id,
                effect="deny",
                payload={"request_id": request.id, "reason": note[:2000]},
            )
            return RequestOutcome(request, None, decision)
        approvals = sum(1 for r in request.reviews if r.verdict == "approve")
        if approvals < max(1, request.reviewers_required):
            return RequestOutcome(request, None, decision)
        request.status, request.decided_at, request.decision_note = (
            str(RequestStatus.APPROVED),
            now,
            note[:2000] or None,
        )
        self.audit.record(
            session,
            AuditAction.REQUEST_APPROVE,
            actor_id=reviewer,
            org_id=request.model.org_id,
            subject_user_id=request.user_id,
            model_id=request.model_id,
            effect="allow",
            payload={"request_id": request.id, "approvals": approvals},
        )
        grant = self._create_grant(session, request=request, policy=policy, actor_id=reviewer)
        return RequestOutcome(request, grant, decision)

    def _create_grant(
        self, session: Session, *, request: AccessRequest, policy: ReleasePolicy, actor_id: int
    ) -> Grant:
        tier = policy.tier(request.tier)
        assert tier is not None
        now = utcnow()
        grant = Grant(
            user_id=request.user_id,
            model_id=request.model_id,
            tier=request.tier,
            request_id=request.id,
            policy_version_id=request.policy_version_id,
            status=str(GrantStatus.ACTIVE),
            granted_at=now,
            expires_at=now + tier.grant_ttl if tier.grant_ttl else None,
            # A fingerprinting tier's grant is ready once a worker has staged its copies.
            provisioned_at=None if tier.fingerprint else now,
        )
        session.add(grant)
        session.flush()
        if tier.fingerprint:  # the old grant runs on until the new one's copies are staged
            superseded = [g.id for g in renewed_grants(session, grant, now)]
            enqueue_after_commit(session, self.runner, PROVISION_TASK, {"grant_id": grant.id})
        else:
            superseded = supersede(session, self.audit, grant, actor_id=actor_id, at=now)
        self.audit.record(
            session,
            AuditAction.GRANT_CREATE,
            actor_id=actor_id,
            org_id=request.model.org_id,
            subject_user_id=request.user_id,
            model_id=request.model_id,
            effect="allow",
            payload={
                "grant_id": grant.id,
                "request_id": request.id,
                "tier": request.tier,
                "grants": sorted(str(g) for g in tier.grants),
                "expires_at": grant.expires_at,
                **({"supersedes": superseded} if superseded else {}),
            },
        )
        return grant

    def list_requests(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model | None = None,
        status: RequestStatus | None = None,
        mine: bool = False,
    ) -> list[AccessRequest]:
        """Own requests, or (for reviewers) the requests for their organizations' models."""
        query = select(AccessRequest).order_by(AccessRequest.id)
        if mine:
            query = query.where(
                AccessRequest.user_id == principal.require_scope(Scope.ACCESS_REQUEST)
            )
        else:
            orgs = principal.orgs_with_scope(Scope.REQUESTS_REVIEW)
            if not orgs:
                principal.require_scope(Scope.REQUESTS_REVIEW)
                raise Forbidden("no role in any organization permits 'requests:review'")
            query = query.join(Model).where(Model.org_id.in_(orgs))
        if model is not None:
            query = query.where(AccessRequest.model_id == model.id)
        if status is not None:
            query = query.where(AccessRequest.status == status)
        return list(session.scalars(query.limit(1000)))

    def get_request(
        self, session: Session, *, principal: Principal, request_id: int
    ) -> AccessRequest:
        """One request, to its requester or a reviewer of its model's organization."""
        request = session.get(AccessRequest, request_id)
        user_id = principal.require_user()
        if request is None or not (
            request.user_id == user_id
            or request.model.org_id in principal.orgs_with_scope(Scope.REQUESTS_REVIEW)
        ):
            raise NotFound("no such access request")
        return request

    # -- grants --------------------------------------------------------------------------------
    def list_grants(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model | None = None,
        mine: bool = True,
    ) -> list[Grant]:
        """The caller's grants, or a managed model's grants."""
        query = select(Grant).order_by(Grant.id)
        if mine:
            query = query.where(Grant.user_id == principal.require_scope(Scope.ACCESS_REQUEST))
        else:
            if model is None:
                raise InvalidInput("name a model to list its grants")
            principal.require_org_scope(model.org_id, Scope.GRANTS_MANAGE)
        if model is not None:
            query = query.where(Grant.model_id == model.id)
        return list(session.scalars(query.limit(5000)))

    def revoke_grant(
        self, session: Session, *, principal: Principal, grant_id: int, reason: str
    ) -> Grant:
        """End a grant now; the very next request under it is refused."""
        grant = session.get(Grant, grant_id)
        if grant is None:
            raise NotFound("no such grant")
        actor = principal.require_org_scope(grant.model.org_id, Scope.GRANTS_MANAGE)
        if not reason.strip():
            raise InvalidInput("revoking a grant needs a reason")
        if grant.status in (GrantStatus.REVOKED, GrantStatus.EXPIRED):
            raise Conflict(f"grant {grant.id} is already {grant.status}")
        self._end_grant(session, grant, actor, reason)
        session.commit()
        return grant

    def _end_grant(self, session: Session, grant: Grant, actor: int, reason: str) -> None:
        grant.status, grant.ended_at, grant.ended_by_id, grant.end_reason = (
            str(GrantStatus.REVOKED),
            utcnow(),
            actor,
            reason[:2000],
        )
        self.audit.record(
            session,
            AuditAction.GRANT_REVOKE,
            actor_id=actor,
            org_id=grant.model.org_id,
            subject_user_id=grant.user_id,
            model_id=grant.model_id,
            effect="deny",
            payload={"grant_id": grant.id, "tier": grant.tier, "reason": reason[:2000]},
        )

    # -- reset ---------------------------------------------------------------------------------
    def reset_request(
        self, session: Session, *, principal: Principal, request_id: int, reason: str
    ) -> AccessRequest:
        """Send a reviewed request back to pending: its verdicts are cleared (the audit log keeps
        them) and a grant it produced is revoked; reviewers decide it again."""
        request = session.get(AccessRequest, request_id)
        if request is None:
            raise NotFound("no such access request")
        reviewer = principal.require_org_scope(request.model.org_id, Scope.REQUESTS_REVIEW)
        if request.user_id == reviewer:
            raise Forbidden("reviewers may not decide their own requests")
        if not reason.strip():
            raise InvalidInput("resetting a request needs a reason")
        if request.status not in RESETTABLE or not (request.reviews or request.decided_at):
            raise Conflict(f"request {request.id} is {request.status} with no verdict to reset")
        cleared = [{"reviewer_id": r.reviewer_id, "verdict": r.verdict} for r in request.reviews]
        for grant in self._live_grants_of(session, request):
            self._end_grant(session, grant, reviewer, reason)
        for review in list(request.reviews):
            session.delete(review)
        previous = request.status
        request.status, request.decided_at, request.decision_note = (
            str(RequestStatus.PENDING),
            None,
            None,
        )
        self.audit.record(
            session,
            AuditAction.REQUEST_RESET,
            actor_id=reviewer,
            org_id=request.model.org_id,
            subject_user_id=request.user_id,
            model_id=request.model_id,
            payload={
                "request_id": request.id,
                "previous": previous,
                "reviews": cleared,
                "reason": reason[:2000],
            },
        )
        session.commit()
        session.expire(request, ["reviews"])
        return request

    def _live_grants_of(self, session: Session, request: AccessRequest) -> list[Grant]:
        live = (GrantStatus.ACTIVE, GrantStatus.SUSPENDED)
        query = select(Grant).where(Grant.request_id == request.id, Grant.status.in_(live))
        return list(session.scalars(query))

    # -- freeze --------------------------------------------------------------------------------
    def set_frozen(
        self, session: Session, *, principal: Principal, model: Model, frozen: bool, reason: str
    ) -> Model:
        """Emergency freeze (or thaw): weights and inference are refused while frozen."""
        actor = principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        if not reason.strip():
            raise InvalidInput("a freeze or unfreeze needs a reason")
        if (model.frozen_at is not None) == frozen:
            return model
        model.frozen_at, model.frozen_reason = (utcnow(), reason[:2000]) if frozen else (None, None)
        self.audit.record(
            session,
            AuditAction.MODEL_FREEZE if frozen else AuditAction.MODEL_UNFREEZE,
            actor_id=actor,
            org_id=model.org_id,
            model_id=model.id,
            effect="deny" if frozen else None,
            payload={"reason": reason[:2000]},
        )
        session.commit()
        return model

    # -- KYC -----------------------------------------------------------------------------------
    def record_kyc(
        self,
        session: Session,
        *,
        principal: Principal,
        org: Organization,
        user: User,
        facts: KycFacts,
        notes: str,
    ) -> KycVerification:
        """A reviewer's manual verification, valid for decisions of the reviewer's organization."""
        actor = principal.require_org_scope(org.id, Scope.KYC_RECORD)
        if actor == user.id:
            raise Forbidden("reviewers may not verify themselves")
        row = KycVerification(
            user_id=user.id,
            provider=facts.provider,
            provider_ref=facts.provider_ref,
            issuer_org_id=org.id,
            status=facts.status,
            level=str(facts.level),
            nationality=facts.nationality,
            residence_country=facts.residence_country,
            residence_subdivision=facts.residence_subdivision,
            document_country=facts.document_country,
            sanctions_hit=facts.sanctions_hit,
            screened_at=facts.screened_at,
            expires_at=facts.expires_at,
            recorded_by_id=actor,
            notes=notes[:4000],
        )
        session.add(row)
        session.flush()
        self.audit.record(
            session,
            AuditAction.KYC_VERIFY,
            actor_id=actor,
            org_id=org.id,
            subject_user_id=user.id,
            effect="allow" if facts.status == "approved" else "deny",
            payload={
                "verification_id": row.id,
                "provider": facts.provider,
                "level": str(facts.level),
                "status": facts.status,
                "nationality": facts.nationality,
                "residence_country": facts.residence_country,
                "document_country": facts.document_country,
                "sanctions_hit": facts.sanctions_hit,
                "expires_at": facts.expires_at,
            },
        )
        # The user's grants and pending requests are judged anew with the new facts.
        enqueue_after_commit(session, self.runner, REEVALUATE_USER_TASK, {"user_id": user.id})
        session.commit()
        return row


# A grant may be renewed in the last RENEWAL_WINDOW before its expiry, or in the last third of
# its lifetime when that is shorter (a 30-day grant from its 20th day).
RENEWAL_WINDOW = timedelta(days=30)


def renewable_from(grant: Grant) -> datetime | None:
    """When the grant's renewal window opens; None for a grant that never expires."""
    if grant.expires_at is None:
        return None
    return grant.expires_at - min(RENEWAL_WINDOW, (grant.expires_at - grant.granted_at) / 3)


def _require_renewable(grant: Grant, now: datetime) -> None:
    """Conflict unless the grant is active, expiring, unexpired and in its renewal window."""
    expired = grant.expires_at is not None and grant.expires_at <= now
    if grant.status != GrantStatus.ACTIVE or expired:
        status = GrantStatus.EXPIRED if expired else grant.status
        raise Conflict(f"grant {grant.id} is {status}: request its tier again instead")
    opens = renewable_from(grant)
    if opens is None:
        raise Conflict(f"grant {grant.id} does not expire: there is nothing to renew")
    if now < opens:
        raise Conflict(
            f"grant {grant.id} can be renewed from {opens:%Y-%m-%d %H:%M} UTC",
            extra={"renewable_from": opens.isoformat()},
        )


def _previous_agreement(previous: AccessRequest | None, current: AgreementRef | None) -> str | None:
    """The previous request's acceptance, if it is of the version the tier now requires."""
    if current is None:
        return None
    if previous is None or (previous.agreement_id, previous.agreement_version) != (
        current.id,
        current.version,
    ):
        raise InvalidInput(
            f"agreement '{current.id}' is now version {current.version}: read it and accept it "
            f"again (agreement: '{current.id}@{current.version}')"
        )
    return f"{current.id}@{current.version}"


# Requests a reviewer may send back to pending (a denial is the engine's, not a reviewer's).
RESETTABLE = (RequestStatus.APPROVED, RequestStatus.PENDING, RequestStatus.REJECTED)


def _initial_status(decision: Decision) -> RequestStatus:
    if decision.effect == Effect.ALLOW:
        return RequestStatus.APPROVED
    if decision.effect == Effect.REVIEW:
        return RequestStatus.PENDING
    return RequestStatus.DENIED


def _blocking(decision: Decision) -> bool:
    """Whether anything other than a reviewer's judgement stands in the way."""
    return decision.effect == Effect.DENY


def _parse_agreement(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    ident, sep, version = value.partition("@")
    if not sep or not ident or not version.isdigit() or len(ident) > 100:
        raise InvalidInput("an agreement is accepted as 'id@version', e.g. 'acme-aup@2'")
    return ident, int(version)
