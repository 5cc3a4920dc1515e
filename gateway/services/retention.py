"""Retention of the audit chain: legal holds, and pruning a prefix that leaves a verifiable chain.

The chain is one sequence, so pruning removes a prefix `1..cut` only: the events older than the
retention horizon, stopped before the first event under an active legal hold (a hold on a user
matches the events naming them as actor or subject; a hold on a model, the model's events). A
signed checkpoint must exist exactly at the cut before anything is deleted; the prune records
the cut's sequence number, entry hash and Merkle frontier (`audit_prunes`), from which online
verification starts afterwards, and is itself audited (`audit:prune`). The append-only triggers
let a DELETE through only for events at or below the cut named by a row of
`audit_prune_permits`, which exists only inside the pruning transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.orm import Session

from gateway.audit import GENESIS_HASH, AuditAction, AuditRecorder
from gateway.audit.notes import SigningKey
from gateway.auth.tokens import Scope
from gateway.db.models import (
    AuditCheckpoint,
    AuditEvent,
    AuditHead,
    AuditLegalHold,
    AuditPrune,
    AuditPrunePermit,
    LegalHoldKind,
    Membership,
    Model,
    Organization,
    User,
    utcnow,
)
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound
from gateway.services.checkpoints import CheckpointService
from gateway.services.principal import Principal
from gateway.storage import Storage

log = logging.getLogger(__name__)

PRUNE_CHUNK = 50_000  # events deleted per transaction (each cut gets its own checkpoint)
REASON_MAX = 2000


def retention_horizon(now: datetime, years: int) -> datetime:
    """The instant `years` calendar years before `now` (29 February falls back to the 28th)."""
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


def pruned_anchor(session: Session) -> AuditPrune | None:
    """The latest prune: verification starts after its cut (None: from the genesis)."""
    return session.scalar(select(AuditPrune).order_by(AuditPrune.cut_seq.desc()).limit(1))


def anchor_problem(session: Session, anchor: AuditPrune | None) -> str | None:
    """Why the pruned horizon cannot be trusted (no checkpoint at the cut states it), or None."""
    if anchor is None:
        return None
    signed = session.get(AuditCheckpoint, anchor.cut_seq)
    if signed is None or signed.head_hash != anchor.cut_hash:
        return (
            f"events 1 to {anchor.cut_seq} were pruned but no checkpoint at {anchor.cut_seq} "
            "states the recorded cut: the pruned horizon is not anchored"
        )
    return None


def anchor_of(anchor: AuditPrune | None) -> tuple[int, str]:
    """(seq, entry hash) verification continues from."""
    return (anchor.cut_seq, anchor.cut_hash) if anchor else (0, GENESIS_HASH)


# -- legal holds -------------------------------------------------------------------------------
class LegalHoldService:
    """Places, lists and releases legal holds; every change is audited."""

    def __init__(self, *, audit: AuditRecorder) -> None:
        self.audit = audit

    def place(
        self,
        session: Session,
        *,
        principal: Principal | None,
        org: str,
        kind: str,
        subject: str,
        reason: str,
    ) -> AuditLegalHold:
        """Hold one user's or model's events in `org` (principal None: the operator). Commits."""
        org_id = _org_id(session, org)
        actor = _authorize(principal, org_id)
        kind, reason = _kind(kind), reason.strip()
        if not reason or len(reason) > REASON_MAX:
            raise InvalidInput(f"a legal hold needs a reason of 1 to {REASON_MAX} characters")
        subject_id = _subject_id(session, org_id, kind, subject)
        hold = AuditLegalHold(
            org_id=org_id, kind=kind, subject_id=subject_id, reason=reason, created_by=actor
        )
        session.add(hold)
        session.flush()
        self._record(session, AuditAction.LEGAL_HOLD_PLACE, hold, actor, subject=subject)
        session.commit()
        return hold

    def list(
        self, session: Session, *, principal: Principal | None, active_only: bool = False
    ) -> list[AuditLegalHold]:
        """The holds of the caller's compliance organizations (principal None: all)."""
        query = select(AuditLegalHold).order_by(AuditLegalHold.id)
        if principal is not None:
            query = query.where(AuditLegalHold.org_id.in_(_compliance_orgs(principal)))
        if active_only:
            query = query.where(AuditLegalHold.released_at.is_(None))
        return list(session.scalars(query))

    def release(
        self, session: Session, *, principal: Principal | None, hold_id: int
    ) -> AuditLegalHold:
        """End a hold; its events become prunable again once past retention. Commits."""
        hold = session.get(AuditLegalHold, hold_id, with_for_update=True)
        orgs = None if principal is None else _compliance_orgs(principal)
        if hold is None or (orgs is not None and hold.org_id not in orgs):
            raise NotFound(f"no legal hold {hold_id}")
        actor = _authorize(principal, hold.org_id)
        if hold.released_at is not None:
            raise Conflict(f"legal hold {hold_id} was already released")
        hold.released_at, hold.released_by = utcnow(), actor
        self._record(session, AuditAction.LEGAL_HOLD_RELEASE, hold, actor)
        session.commit()
        return hold

    def _record(
        self,
        session: Session,
        action: AuditAction,
        hold: AuditLegalHold,
        actor: int | None,
        **extra: Any,
    ) -> None:
        payload = {"hold_id": hold.id, "kind": hold.kind, "subject_id": hold.subject_id, **extra}
        if action == AuditAction.LEGAL_HOLD_PLACE:
            payload["reason"] = hold.reason
        self.audit.record(
            session,
            action,
            actor_id=actor,
            org_id=hold.org_id,
            subject_user_id=hold.subject_id if hold.kind == LegalHoldKind.USER else None,
            model_id=hold.subject_id if hold.kind == LegalHoldKind.MODEL else None,
            payload=payload,
        )


def _compliance_orgs(principal: Principal) -> set[int]:
    orgs = principal.orgs_with_scope(Scope.AUDIT_READ)
    if not orgs:
        principal.require_scope(Scope.AUDIT_READ)
        raise Forbidden("no compliance role in any organization")
    return orgs


def _authorize(principal: Principal | None, org_id: int) -> int | None:
    if principal is None:
        return None
    return principal.require_org_scope(org_id, Scope.AUDIT_READ)


def _org_id(session: Session, slug: str) -> int:
    found = session.scalar(select(Organization.id).where(Organization.slug == slug))
    if found is None:
        raise NotFound(f"no organization '{slug}'")
    return found


def _kind(kind: str) -> str:
    try:
        return str(LegalHoldKind(kind))
    except ValueError:
        raise InvalidInput(f"a legal hold is on a 'user' or a 'model', not '{kind}'") from None


def _subject_id(session: Session, org_id: int, kind: str, subject: str) -> int:
    """The held user or model, which must be visible to `org_id`, else NotFound."""
    if kind == LegalHoldKind.MODEL:
        owner, _, name = subject.partition("/")
        found = session.scalar(
            select(Model.id)
            .join(Organization)
            .where(Organization.slug == owner, Model.name == name, Model.org_id == org_id)
        )
    else:
        user_id = session.scalar(select(User.id).where(User.username == subject))
        found = user_id if user_id is not None and _user_in_org(session, user_id, org_id) else None
    if found is None:
        raise NotFound(f"no {kind} '{subject}' in this organization")
    return found


def _user_in_org(session: Session, user_id: int, org_id: int) -> bool:
    """Affiliated with, a member of, or named in an event of the organization."""
    affiliated = session.scalar(select(User.affiliation_org_id).where(User.id == user_id))
    if affiliated == org_id:
        return True
    member = select(Membership.id).where(Membership.user_id == user_id, Membership.org_id == org_id)
    named = select(AuditEvent.seq).where(
        AuditEvent.org_id == org_id,
        or_(AuditEvent.subject_user_id == user_id, AuditEvent.actor_id == user_id),
    )
    return bool(session.scalar(select(member.exists() | named.exists())))


# -- pruning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrunePlan:
    """What a prune would remove: the prefix after the previous cut up to `cut`."""

    horizon: datetime
    previous: int  # the last cut (0: nothing pruned yet)
    due: int  # the last sequence number older than the horizon
    held_from: int | None  # the first event at or before `due` under an active hold
    cut: int

    @property
    def count(self) -> int:
        """Events the prune would delete."""
        return max(0, self.cut - self.previous)


@dataclass(frozen=True)
class PruneResult:
    """What a prune did: the plan, and the cuts it made with the events each removed."""

    plan: PrunePlan
    cuts: tuple[tuple[int, int], ...] = ()

    @property
    def deleted(self) -> int:
        """Events removed in all."""
        return sum(count for _, count in self.cuts)


class RetentionService:
    """Plans and performs prunes of the audit chain's oldest events."""

    def __init__(self, *, audit: AuditRecorder, checkpoints: CheckpointService) -> None:
        self.audit, self.checkpoints = audit, checkpoints

    def plan(self, session: Session, *, now: datetime, years: int) -> PrunePlan:
        """Where a prune would cut now: before the horizon, and before the first held event."""
        horizon = retention_horizon(now.astimezone(UTC), years)
        anchor = pruned_anchor(session)
        previous = anchor.cut_seq if anchor else 0
        young = session.scalar(
            select(AuditEvent.seq)
            .where(AuditEvent.seq > previous, AuditEvent.occurred_at >= horizon)
            .order_by(AuditEvent.seq)
            .limit(1)
        )
        due = young - 1 if young is not None else _head_seq(session)
        held = first_held(session, after=previous, upto=due)
        cut = max(previous, min(due, held - 1) if held is not None else due)
        return PrunePlan(horizon, previous, due, held, cut)

    def prune(
        self,
        db_session: Any,
        *,
        now: datetime,
        years: int,
        signer: SigningKey,
        storage: Storage,
        origin: str,
        actor_id: int | None = None,
    ) -> PruneResult:
        """Prune up to the plan's cut, a chunk per transaction, a checkpoint at each cut.

        `db_session` makes a fresh session per step (e.g. `Database.session`).
        """
        with db_session() as session:
            plan = self.plan(session, now=now, years=years)
            session.commit()
        cuts: list[tuple[int, int]] = []
        previous = plan.previous
        while previous < plan.cut:
            target = min(plan.cut, previous + PRUNE_CHUNK)
            with db_session() as session:
                self.checkpoints.create(
                    session, signer=signer, storage=storage, origin=origin, size=target
                )
            with db_session() as session:
                count = self._cut(session, plan, previous, target, actor_id, years)
            if count is None:
                break
            cuts.append((target, count))
            previous = target
        return PruneResult(plan, tuple(cuts))

    def _cut(
        self,
        session: Session,
        plan: PrunePlan,
        previous: int,
        cut: int,
        actor_id: int | None,
        years: int,
    ) -> int | None:
        """Delete events previous+1..cut in one transaction; None (nothing done) when a hold
        placed meanwhile or a missing checkpoint stops it. Commits."""
        session.execute(select(AuditHead.seq).where(AuditHead.id == 1).with_for_update())
        anchor = pruned_anchor(session)
        held = first_held(session, after=previous, upto=cut)
        signed = session.get(AuditCheckpoint, cut)
        last = session.get(AuditEvent, cut)
        if (anchor.cut_seq if anchor else 0) != previous or held is not None:
            session.rollback()  # another prune ran, or a hold was placed: the next run re-plans
            return None
        if signed is None or last is None or signed.head_hash != last.entry_hash:
            session.rollback()
            log.warning("audit prune: no checkpoint states the cut at %d; nothing pruned", cut)
            return None
        session.execute(insert(AuditPrunePermit).values(cut=cut))
        deleted = _delete_prefix(session, cut)
        session.execute(delete(AuditPrunePermit))
        session.add(
            AuditPrune(
                cut_seq=cut,
                cut_hash=signed.head_hash,
                frontier=signed.frontier,
                deleted=deleted,
                horizon=plan.horizon,
            )
        )
        self.audit.record(
            session,
            AuditAction.AUDIT_PRUNE,
            actor_id=actor_id,
            payload={
                "cut": cut,
                "cut_hash": signed.head_hash,
                "deleted": deleted,
                "checkpoint": {"size": cut, "root": signed.root_hash, "key_id": signed.key_id},
                "horizon": plan.horizon,
                "retention_years": years,
            },
        )
        session.commit()
        log.info("audit prune: events %d to %d deleted (%d)", previous + 1, cut, deleted)
        return deleted


def first_held(session: Session, *, after: int, upto: int) -> int | None:
    """The first sequence number in after+1..upto naming a user or model under an active hold."""
    holds = session.execute(
        select(AuditLegalHold.kind, AuditLegalHold.subject_id).where(
            AuditLegalHold.released_at.is_(None)
        )
    ).all()
    users = [s for k, s in holds if k == LegalHoldKind.USER]
    models = [s for k, s in holds if k == LegalHoldKind.MODEL]
    matches = []
    if users:
        matches += [AuditEvent.actor_id.in_(users), AuditEvent.subject_user_id.in_(users)]
    if models:
        matches.append(AuditEvent.model_id.in_(models))
    if not matches or upto <= after:
        return None
    return session.scalar(
        select(func.min(AuditEvent.seq)).where(
            AuditEvent.seq > after, AuditEvent.seq <= upto, or_(*matches)
        )
    )


def _delete_prefix(session: Session, cut: int) -> int:
    result = session.execute(
        delete(AuditEvent).where(AuditEvent.seq <= cut),
        execution_options={"synchronize_session": False},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _head_seq(session: Session) -> int:
    return int(session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)
