"""Sweeps: expire grants, delete copies nobody may fetch, resend lost tasks, purge old events."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.db.models import (
    AuditEvent,
    Grant,
    GrantStatus,
    KycWebhookEvent,
    Model,
    Revision,
    StagedFile,
    VettingStatus,
)
from gateway.services.provisioning import lock_grant, temp_key
from gateway.storage import Storage
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import PROVISION_TASK, RESCREEN_TASK, SPECS, VET_TASK
from policies.packs import PackRegistry

BATCH = 200
# Work is presumed lost (its task never reached the broker) only once a run would have hit its
# time limit: resending sooner would start a second run beside a slow first one.
MARGIN = timedelta(minutes=10)
VET_LOST_AFTER = timedelta(seconds=SPECS[VET_TASK].time_limit) + MARGIN
PROVISION_LOST_AFTER = timedelta(seconds=SPECS[PROVISION_TASK].time_limit) + MARGIN
ENDED = (GrantStatus.REVOKED, GrantStatus.EXPIRED)
# A processed KYC webhook event is kept only to drop its redeliveries: keep it well past every
# provider's retry window (Stripe's is three days), then let it go.
KYC_EVENT_RETENTION = timedelta(days=14)
PURGE_BATCH = 1000


@dataclass(frozen=True)
class Unstaging:
    """A grant's staged copies to delete, and why (the grant ended, or its model is frozen)."""

    grant_id: int
    reason: str
    copies: tuple[tuple[int, str], ...]


class SweepService:
    """Periodic upkeep of grants and the work queued for them; every step is safe to repeat."""

    def __init__(self, *, audit: AuditRecorder, storage: Storage, runner: TaskRunner) -> None:
        self.audit = audit
        self.storage = storage
        self.runner = runner

    def expire_grants(self, session: Session, *, now: datetime) -> int:
        """Mark active grants past their expiry as expired, one audit event each."""
        grants = session.scalars(
            select(Grant)
            .where(Grant.status == GrantStatus.ACTIVE, Grant.expires_at <= now)
            .order_by(Grant.id)
            .limit(BATCH)
            .with_for_update(skip_locked=True)  # a concurrent sweep takes the others
        ).all()
        for grant in grants:
            grant.status, grant.ended_at = str(GrantStatus.EXPIRED), grant.expires_at
            self.audit.record(
                session,
                AuditAction.GRANT_EXPIRE,
                actor_id=None,
                org_id=grant.model.org_id,
                subject_user_id=grant.user_id,
                model_id=grant.model_id,
                effect="deny",
                payload={"grant_id": grant.id, "tier": grant.tier, "expires_at": grant.expires_at},
            )
        session.commit()
        return len(grants)

    def copies_to_remove(self, session: Session) -> list[Unstaging]:
        """Staged copies of revoked or expired grants and of frozen models' grants."""
        rows = session.execute(
            select(StagedFile.id, StagedFile.grant_id, StagedFile.storage_key, Grant.status)
            .join(Grant, Grant.id == StagedFile.grant_id)
            .join(Model, Model.id == Grant.model_id)
            .where(or_(Grant.status.in_(ENDED), Model.frozen_at.is_not(None)))
            .order_by(StagedFile.grant_id, StagedFile.id)
            .limit(BATCH * 10)
        ).all()
        session.commit()
        copies: dict[int, list[tuple[int, str]]] = defaultdict(list)
        reasons: dict[int, str] = {}
        for staged_id, grant_id, key, status in rows:
            copies[grant_id].append((staged_id, key))
            reasons[grant_id] = f"grant {status}" if status in ENDED else "model frozen"
        return [Unstaging(g, reasons[g], tuple(c)) for g, c in copies.items()]

    def delete_copies(self, target: Unstaging) -> None:
        """Delete the objects first: a crash before `forget` leaves rows that a rerun retries."""
        for _, key in target.copies:
            self.storage.delete(key)
            self.storage.delete(temp_key(key))

    def forget(self, session: Session, target: Unstaging) -> int:
        """Drop the rows of deleted copies and audit it; 0 if a concurrent sweep did first."""
        grant = lock_grant(session, target.grant_id)
        result = cast(
            CursorResult[Any],
            session.execute(
                delete(StagedFile).where(StagedFile.id.in_([i for i, _ in target.copies]))
            ),
        )
        if grant is not None and result.rowcount:
            self.audit.record(
                session,
                AuditAction.GRANT_DEPROVISION,
                actor_id=None,
                org_id=grant.model.org_id,
                subject_user_id=grant.user_id,
                model_id=grant.model_id,
                payload={
                    "grant_id": grant.id,
                    "reason": target.reason,
                    "keys": [key for _, key in target.copies],
                },
            )
        session.commit()
        return result.rowcount

    def purge_kyc_events(self, session: Session, *, now: datetime) -> int:
        """Delete processed KYC webhook events received over 14 days ago, in batches; events
        still unprocessed stay (their work is not done)."""
        purged = 0
        while True:
            batch = (
                select(KycWebhookEvent.id)
                .where(
                    KycWebhookEvent.processed_at.is_not(None),
                    KycWebhookEvent.received_at < now - KYC_EVENT_RETENTION,
                )
                .limit(PURGE_BATCH)
            )
            result = cast(
                CursorResult[Any],
                session.execute(
                    delete(KycWebhookEvent).where(KycWebhookEvent.id.in_(batch.scalar_subquery()))
                ),
            )
            session.commit()
            purged += result.rowcount
            if result.rowcount < PURGE_BATCH:
                return purged

    def resend_lost_work(self, session: Session, *, now: datetime) -> int:
        """Send again the tasks of revisions still unvetted and grants still unprovisioned."""
        grants = session.scalars(
            select(Grant.id)
            .join(Model, Model.id == Grant.model_id)
            .where(
                Grant.status == GrantStatus.ACTIVE,
                Grant.provisioned_at.is_(None),
                Grant.granted_at < now - PROVISION_LOST_AFTER,
                or_(Grant.expires_at.is_(None), Grant.expires_at > now),
                Model.frozen_at.is_(None),
            )
            .order_by(Grant.id)
            .limit(BATCH)
        ).all()
        revisions = session.scalars(
            select(Revision.id)
            .where(
                Revision.vetting_status == VettingStatus.PENDING,
                Revision.created_at < now - VET_LOST_AFTER,
            )
            .order_by(Revision.id)
            .limit(BATCH)
        ).all()
        session.commit()  # an in-process runner runs each task now, in its own transactions
        for grant_id in grants:
            self.runner.send(PROVISION_TASK, {"grant_id": grant_id})
        for revision_id in revisions:
            self.runner.send(VET_TASK, {"revision_id": revision_id})
        return len(grants) + len(revisions)


def notice_pack_changes(
    session: Session, *, packs: PackRegistry, audit: AuditRecorder, runner: TaskRunner
) -> list[str]:
    """Record each jurisdiction pack whose content differs from the last one recorded as a
    `pack:deploy` audit event, and re-screen the grants of models whose policy uses it.

    Packs ship with the code, so a new version arrives with a deployment: the first sweep that
    runs on it notices and records it (the audit log is the record of which rules were in force
    when), then the re-screen judges every affected grant and pending request again. Returns
    the ids of the packs that changed.
    """
    recorded = session.execute(
        select(AuditEvent.payload)
        .where(AuditEvent.action == str(AuditAction.PACK_DEPLOY))
        .order_by(AuditEvent.seq)
    ).scalars()
    last = {p["pack"]: p["content_hash"] for p in recorded}
    changed = [pack for pack in packs if last.get(pack.id) != pack.content_hash]
    for pack in changed:
        audit.record(
            session,
            AuditAction.PACK_DEPLOY,
            actor_id=None,
            payload={
                "pack": pack.id,
                "version": pack.version,
                "content_hash": pack.content_hash,
                "previous_hash": last.get(pack.id),
            },
        )
        if pack.id in last:  # a first sighting (a new deployment) has no grants judged under it
            enqueue_after_commit(session, runner, RESCREEN_TASK, {"pack_id": pack.id})
    session.commit()
    return [pack.id for pack in changed]
