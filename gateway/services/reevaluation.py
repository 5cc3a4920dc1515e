"""Re-evaluation: what a policy would do to current grants (`policy check`), and doing it when a
policy version, a jurisdiction pack or a user's KYC changes.

One function, `assess`, decides for both: a dry run reports its verdicts, a re-evaluation
applies them. A grant that no longer holds is suspended (a reviewer's judgement or a renewed
verification can restore it) or revoked (the policy now denies it), each with an audit event
carrying the reasons.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import (
    AccessRequest,
    Grant,
    GrantStatus,
    KycVerification,
    Model,
    RequestStatus,
    User,
    utcnow,
)
from gateway.errors import InvalidInput
from gateway.services.access import AccessService, user_subject
from gateway.services.policy import PolicyService
from gateway.services.principal import Principal
from gateway.services.publishing import PublishingService
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import REEVALUATE_USER_TASK
from policies import (
    Decision,
    Effect,
    PolicyError,
    Reason,
    ReasonCode,
    ReleasePolicy,
    Signal,
    evaluate,
    parse_subject,
)

# Between requests nobody's location is observed; downloads check it on every request.
UNOBSERVED = frozenset({Signal.REQUEST_COUNTRY})
# Deny reasons that can pass by themselves: a verification lapsed (renewing it restores the
# grant), the tier closed in the model's current stage (reopening it does). The grant waits,
# suspended; any other deny revokes it.
PASSING = frozenset({ReasonCode.KYC_EXPIRED, ReasonCode.STAGE_CLOSED})
LIVE = (GrantStatus.ACTIVE, GrantStatus.SUSPENDED)


class Action(StrEnum):
    """What re-evaluation does to a grant or a pending request."""

    DENY = "deny"
    KEEP = "keep"
    REINSTATE = "reinstate"
    REVOKE = "revoke"
    SUSPEND = "suspend"


@dataclass(frozen=True)
class Verdict:
    """The outcome for one grant or pending request, with the reasons behind it."""

    kind: str  # "grant" or "request"
    id: int
    user_id: int
    username: str
    tier: str
    status: str
    action: Action
    effect: Effect
    reasons: tuple[dict[str, Any], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            f"{self.kind}_id": self.id,
            "user_id": self.user_id,
            "user": self.username,
            "tier": self.tier,
            "status": self.status,
            "action": str(self.action),
            "effect": str(self.effect),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Assessment:
    """Every live grant and pending request of one model judged under one policy."""

    grants: tuple[Verdict, ...]
    requests: tuple[Verdict, ...]

    def summary(self) -> dict[str, int]:
        """How many grants each action applies to."""
        return {str(action): sum(v.action is action for v in self.grants) for action in Action}


@dataclass(frozen=True)
class PolicyCheck:
    """A dry run: what applying a policy document would do to a model's grants and requests."""

    repo_id: str
    current_version: int | None
    sha256: str
    assessment: Assessment
    checked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        a = self.assessment
        return {
            "repo_id": self.repo_id,
            "current_version": self.current_version,
            "sha256": self.sha256,
            "checked_at": self.checked_at.isoformat(),
            "summary": a.summary(),
            "grants": [v.to_dict() for v in a.grants],
            "requests": [v.to_dict() for v in a.requests],
        }


@dataclass(frozen=True)
class _Judge:
    """What judging one model's grants and requests reads: the holders' current verifications
    are read once, together (AccessService.current_kycs)."""

    session: Session
    policy: ReleasePolicy
    kycs: Mapping[int, KycVerification]
    now: datetime


class ReevaluationService:
    """Judges live grants and pending requests against a policy; dry-runs or applies that."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        access: AccessService,
        policies: PolicyService,
        publishing: PublishingService,
        runner: TaskRunner,
    ) -> None:
        self.audit = audit
        self.access = access
        self.policies = policies
        self.publishing = publishing
        self.runner = runner

    def after_kyc_change(self, session: Session, *, user_id: int) -> None:
        """Re-evaluate the user's grants and requests once `session` commits (call it in the
        transaction that records the user's new or changed verification)."""
        enqueue_after_commit(session, self.runner, REEVALUATE_USER_TASK, {"user_id": user_id})

    # -- the shared judgement ------------------------------------------------------------------
    def assess(
        self,
        session: Session,
        *,
        model: Model,
        policy: ReleasePolicy,
        now: datetime,
        user_ids: Sequence[int] | None = None,
        lock: bool = False,
    ) -> Assessment:
        """Judge the model's live grants and pending requests (of `user_ids`, if given)."""
        grants = self._live_grants(session, model, now, user_ids, lock)
        requests = self._pending_requests(session, model, user_ids, lock)
        _held = _prefetch(session, grants, requests)  # kept alive: the session maps rows weakly
        holders = {g.user_id for g in grants} | {r.user_id for r in requests}
        kycs = self.access.current_kycs(session, user_ids=holders, org_id=model.org_id)
        judge = _Judge(session, policy, kycs, now)
        verdicts = [self._grant_verdict(judge, grant) for grant in grants]
        # A suspended grant whose holder has since been granted the tier anew stays suspended.
        active = {(g.user_id, g.tier) for g in grants if g.status == GrantStatus.ACTIVE}
        return Assessment(
            tuple(
                replace(v, action=Action.KEEP)
                if v.action is Action.REINSTATE and (v.user_id, v.tier) in active
                else v
                for v in verdicts
            ),
            tuple(self._request_verdict(judge, req) for req in requests),
        )

    def _live_grants(
        self,
        session: Session,
        model: Model,
        now: datetime,
        user_ids: Sequence[int] | None,
        lock: bool,
    ) -> list[Grant]:
        query = select(Grant).where(
            Grant.model_id == model.id,
            Grant.status.in_([str(s) for s in LIVE]),
            or_(Grant.expires_at.is_(None), Grant.expires_at > now),
        )
        if user_ids is not None:
            query = query.where(Grant.user_id.in_(user_ids))
        query = query.order_by(Grant.id)
        return list(session.scalars(query.with_for_update() if lock else query))

    def _pending_requests(
        self, session: Session, model: Model, user_ids: Sequence[int] | None, lock: bool
    ) -> list[AccessRequest]:
        query = select(AccessRequest).where(
            AccessRequest.model_id == model.id,
            AccessRequest.status == str(RequestStatus.PENDING),
        )
        if user_ids is not None:
            query = query.where(AccessRequest.user_id.in_(user_ids))
        query = query.order_by(AccessRequest.id)
        return list(session.scalars(query.with_for_update() if lock else query))

    def _decide(
        self, judge: _Judge, request: AccessRequest | None, user_id: int, tier: str
    ) -> Decision:
        agreement = None
        if request is not None and request.agreement_id and request.agreement_version:
            agreement = (request.agreement_id, request.agreement_version)
        subject = user_subject(
            judge.session.get_one(User, user_id),
            judge.kycs.get(user_id),
            request_country=None,
            form=request.form if request is not None else None,
            agreement=agreement,
        )
        # A freeze is lifted as it came; it never ends grants (downloads refuse while frozen).
        return evaluate(
            judge.policy,
            tier,
            subject,
            now=judge.now,
            packs=self.access.packs,
            unobserved=UNOBSERVED,
        )

    def _grant_verdict(self, judge: _Judge, grant: Grant) -> Verdict:
        request = judge.session.get(AccessRequest, grant.request_id) if grant.request_id else None
        decision = self._decide(judge, request, grant.user_id, grant.tier)
        objections = _objections(decision, _settled(request))
        action = _grant_action(objections, GrantStatus(grant.status))
        return Verdict(
            "grant",
            grant.id,
            grant.user_id,
            grant.user.username,
            grant.tier,
            grant.status,
            action,
            decision.effect,
            tuple(_reason_dicts(objections or list(decision.reasons))),
        )

    def _request_verdict(self, judge: _Judge, request: AccessRequest) -> Verdict:
        decision = self._decide(judge, request, request.user_id, request.tier)
        denies = [r for r in decision.reasons if r.effect is Effect.DENY]
        return Verdict(
            "request",
            request.id,
            request.user_id,
            request.user.username,
            request.tier,
            request.status,
            Action.DENY if denies else Action.KEEP,
            decision.effect,
            tuple(_reason_dicts(denies or list(decision.reasons))),
        )

    # -- dry run -------------------------------------------------------------------------------
    def check(
        self, session: Session, *, principal: Principal, source: str, repo_id: str | None = None
    ) -> PolicyCheck:
        """What applying `source` (to its model, or to `repo_id`) would do; changes nothing."""
        policy = self.policies.validate(source)
        model = self.publishing.get_model(session, repo_id or policy.model)
        principal.require_org_scope(model.org_id, Scope.POLICIES_WRITE)
        now = utcnow()
        assessment = self.assess(session, model=model, policy=policy, now=now)
        current = model.policy_version
        session.rollback()  # nothing was written; end the read
        return PolicyCheck(
            model.repo_id,
            current.version if current is not None else None,
            hashlib.sha256(source.encode("utf-8")).hexdigest(),
            assessment,
            now,
        )

    def explain(
        self,
        session: Session,
        *,
        principal: Principal,
        source: str,
        tier: str,
        subject: object,
        at: datetime | None = None,
    ) -> tuple[ReleasePolicy, Decision]:
        """Decide `tier` of a policy document for a subject written as JSON (a what-if)."""
        policy, _, _ = self.policies.authorize_document(session, principal=principal, source=source)
        session.rollback()
        try:
            facts = parse_subject(subject)
        except PolicyError as exc:
            raise InvalidInput(
                f"the subject has {len(exc.issues)} problem(s)",
                errors=[{"path": i.path, "message": i.message} for i in exc.issues],
            ) from exc
        now = utcnow() if at is None else at if at.tzinfo else at.replace(tzinfo=UTC)
        decision = evaluate(policy, tier, facts, now=now, packs=self.access.packs)
        return policy, decision

    # -- applying ------------------------------------------------------------------------------
    def reevaluate_model(
        self,
        session: Session,
        *,
        model_id: int,
        cause: dict[str, Any],
        user_ids: Sequence[int] | None = None,
        at: datetime | None = None,
    ) -> Assessment | None:
        """Re-judge a model's live grants and pending requests under its policy in force (as of
        `at`, default now) and apply the verdicts (audited, one transaction). Safe to run twice."""
        model = session.get(Model, model_id)
        policy = self.policies.current(model) if model is not None else None
        if model is None or policy is None or model.policy_version is None:
            session.rollback()
            return None
        now = at or utcnow()
        found = self.assess(
            session, model=model, policy=policy, now=now, user_ids=user_ids, lock=True
        )
        context = {**cause, "policy_version": model.policy_version.version}
        for verdict in found.grants:
            self._apply_grant(session, model, verdict, context, now)
        for verdict in found.requests:
            self._apply_request(session, model, verdict, context, now)
        session.commit()
        return found

    def reevaluate_user(
        self, session: Session, *, user_id: int, cause: dict[str, Any]
    ) -> list[Assessment]:
        """Re-judge every live grant and pending request of one user (their KYC changed)."""
        model_ids = self._models_of(session, [user_id])
        session.rollback()
        done = []
        for model_id in model_ids:
            found = self.reevaluate_model(
                session, model_id=model_id, cause=cause, user_ids=[user_id]
            )
            if found is not None:
                done.append(found)
        return done

    def models_to_rescreen(self, session: Session, *, pack_id: str | None = None) -> list[int]:
        """Every model with a live grant or a pending request (whose policy in force references
        the jurisdiction pack `pack_id`, if given)."""
        found = self._models_of(session, None)
        if pack_id is None:
            return found
        models = session.scalars(select(Model).where(Model.id.in_(found)))
        return sorted(m.id for m in models if _references(self.policies.current(m), pack_id))

    def _models_of(self, session: Session, user_ids: Sequence[int] | None) -> list[int]:
        grants = select(Grant.model_id).where(Grant.status.in_([str(s) for s in LIVE]))
        requests = select(AccessRequest.model_id).where(
            AccessRequest.status == str(RequestStatus.PENDING)
        )
        if user_ids is not None:
            grants = grants.where(Grant.user_id.in_(user_ids))
            requests = requests.where(AccessRequest.user_id.in_(user_ids))
        found = set(session.scalars(grants)) | set(session.scalars(requests))
        return sorted(found)

    def _apply_grant(
        self, session: Session, model: Model, verdict: Verdict, cause: dict[str, Any], now: datetime
    ) -> None:
        if verdict.action is Action.KEEP:
            return
        grant = session.get_one(Grant, verdict.id)
        status, action = _GRANT_CHANGES[verdict.action]
        grant.status = str(status)
        if verdict.action is Action.REINSTATE:
            grant.ended_at, grant.end_reason, grant.ended_by_id = None, None, None
        else:
            grant.ended_at, grant.ended_by_id = now, None
            grant.end_reason = _sentence(verdict.reasons)[:2000]
        self.audit.record(
            session,
            action,
            actor_id=None,
            org_id=model.org_id,
            subject_user_id=verdict.user_id,
            model_id=model.id,
            effect="allow" if verdict.action is Action.REINSTATE else "deny",
            payload={
                "grant_id": grant.id,
                "tier": grant.tier,
                "previous_status": verdict.status,
                "cause": cause,
                "reasons": list(verdict.reasons),
            },
        )

    def _apply_request(
        self, session: Session, model: Model, verdict: Verdict, cause: dict[str, Any], now: datetime
    ) -> None:
        if verdict.action is not Action.DENY:
            return
        request = session.get_one(AccessRequest, verdict.id)
        request.status, request.decided_at = str(RequestStatus.DENIED), now
        request.effect, request.reasons = str(verdict.effect), list(verdict.reasons)
        request.decision_note = _sentence(verdict.reasons)[:2000]
        self.audit.record(
            session,
            AuditAction.REQUEST_DENY,
            actor_id=None,
            org_id=model.org_id,
            subject_user_id=verdict.user_id,
            model_id=model.id,
            effect="deny",
            payload={"request_id": request.id, "cause": cause, "reasons": list(verdict.reasons)},
        )


def _prefetch(
    session: Session, grants: Sequence[Grant], requests: Sequence[AccessRequest]
) -> list[object]:
    """Load the holders (with affiliations) and the grants' requests (with reviews) up front, so
    judging each grant finds them in the session instead of querying one at a time."""
    loaded: list[object] = []
    user_ids = {g.user_id for g in grants} | {r.user_id for r in requests}
    if user_ids:
        query = select(User).where(User.id.in_(user_ids)).options(selectinload(User.affiliation))
        loaded += session.scalars(query).all()
    request_ids = {g.request_id for g in grants if g.request_id} - {r.id for r in requests}
    if request_ids:
        by_id = select(AccessRequest).where(AccessRequest.id.in_(request_ids))
        loaded += session.scalars(by_id.options(selectinload(AccessRequest.reviews)))
    return loaded


def _references(policy: ReleasePolicy | None, pack_id: str) -> bool:
    if policy is None:
        return False
    rules = [tier.requires.jurisdiction for tier in policy.tiers]
    refs = [ref for rule in rules if rule is not None for ref in rule.references()]
    return any(ref == f"pack:{pack_id}" or ref.startswith(f"pack:{pack_id}#") for ref in refs)


_GRANT_CHANGES = {
    Action.REINSTATE: (GrantStatus.ACTIVE, AuditAction.GRANT_REINSTATE),
    Action.REVOKE: (GrantStatus.REVOKED, AuditAction.GRANT_REVOKE),
    Action.SUSPEND: (GrantStatus.SUSPENDED, AuditAction.GRANT_SUSPEND),
}


# Review reasons no approval settles: a verification only ages, and renewing it is the remedy.
UNSETTLED = frozenset({ReasonCode.KYC_TOO_OLD})


def _settled(request: AccessRequest | None) -> frozenset[tuple[str, str]]:
    """Review reasons a reviewer already weighed when approving the request behind a grant."""
    if request is None or not request.reviews:
        return frozenset()
    return frozenset(
        (str(r.get("code")), str(r.get("rule")))
        for r in request.reasons
        if isinstance(r, dict)
        and r.get("effect") == Effect.REVIEW
        and r.get("code") not in UNSETTLED
    )


def _objections(decision: Decision, settled: frozenset[tuple[str, str]]) -> list[Reason]:
    """The reasons that stand against a grant already given: every deny, and review reasons no
    reviewer has weighed yet (a grant already passed its approval step)."""
    return [
        r
        for r in decision.reasons
        if r.effect is Effect.DENY
        or (
            r.effect is Effect.REVIEW
            and r.code is not ReasonCode.APPROVAL_REQUIRED
            and (str(r.code), r.rule) not in settled
        )
    ]


def _grant_action(objections: Iterable[Reason], status: GrantStatus) -> Action:
    found = list(objections)
    denies = {r.code for r in found if r.effect is Effect.DENY}
    if ReasonCode.KYC_EXPIRED in denies:  # the level falls short only because it lapsed
        denies.discard(ReasonCode.KYC_LEVEL_INSUFFICIENT)
    if denies - PASSING:
        return Action.REVOKE
    if found:
        return Action.KEEP if status is GrantStatus.SUSPENDED else Action.SUSPEND
    return Action.REINSTATE if status is GrantStatus.SUSPENDED else Action.KEEP


def _reason_dicts(reasons: Iterable[Reason]) -> list[dict[str, str]]:
    return [reason.to_dict() for reason in reasons]


def _sentence(reasons: Iterable[dict[str, Any]]) -> str:
    return " ".join(str(r["message"]) for r in reasons)
