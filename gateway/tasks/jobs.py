"""The task functions: one module both runners call (in-process, or a Celery worker).

Each takes the process's Airlock and ids, re-reads the state, and is safe to run twice. Long
work (hashing, copying) runs between short transactions, never inside one: on SQLite an open
write transaction would hold the database lock for the whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.audit.forward import open_sink
from gateway.db.engine import begin_read_only
from gateway.db.models import Revision, utcnow
from gateway.services.checkpoints import load_keys
from gateway.services.forwarding import ForwardingService
from gateway.services.retention import PruneResult
from gateway.services.sweeps import notice_pack_changes
from gateway.services.vetting import vetting_report
from gateway.tasks.catalog import (
    CHECKPOINT_TASK,
    FORWARD_TASK,
    KYC_TASK,
    PROVISION_TASK,
    PRUNE_TASK,
    REEVALUATE_MODEL_TASK,
    REEVALUATE_USER_TASK,
    RESCREEN_TASK,
    SWEEP_TASK,
    VET_TASK,
)

if TYPE_CHECKING:
    from gateway.services.container import Airlock


def vet_revision(airlock: Airlock, *, revision_id: int) -> None:
    """Vet every file of a revision and record the outcome (audited once per outcome)."""
    with airlock.db.session() as session:
        begin_read_only(session)
        revision = session.get(Revision, revision_id)
        files = list(revision.files) if revision is not None else []
        session.commit()  # rows stay loaded: the sessionmaker does not expire on commit
    if revision is None:
        return
    report = vetting_report(airlock.storage, files)  # reads every byte: no transaction open
    with airlock.db.session() as session:
        locked = session.scalar(
            select(Revision).where(Revision.id == revision_id).with_for_update()
        )
        if locked is not None:
            airlock.publishing.mark_vetted(
                session,
                revision=locked,
                passed=not report["problems"],
                report=report,
            )
        session.commit()


def provision_download(airlock: Airlock, *, grant_id: int, revision_id: int | None = None) -> None:
    """Stage the grant's copies of the files it covers, then mark it provisioned."""
    service = airlock.provisioning
    with airlock.db.session() as session:
        begin_read_only(session)
        plan = service.plan(session, grant_id=grant_id, revision_id=revision_id)
        session.commit()
    if plan is None:
        return
    for item in plan.pending:
        stored = service.stage(item)
        with airlock.db.session() as session:
            service.record(session, grant_id=grant_id, item=item, stored=stored)
    with airlock.db.session() as session:
        service.finish(session, plan=plan)


def sweep_grants(airlock: Airlock) -> None:
    """Expire grants, delete copies of ended grants and frozen models, resend lost tasks,
    abort multipart uploads abandoned for longer than the upload expiry, delete processed KYC
    webhook events older than their de-duplication window, and notice deployed pack changes."""
    sweeps, now = airlock.sweeps, utcnow()
    with airlock.db.session() as session:
        sweeps.expire_grants(session, now=now)
    with airlock.db.session() as session:
        begin_read_only(session)
        targets = sweeps.copies_to_remove(session)
    for target in targets:
        sweeps.delete_copies(target)
        with airlock.db.session() as session:
            sweeps.forget(session, target)
    with airlock.db.session() as session:
        begin_read_only(session)
        sweeps.resend_lost_work(session, now=now)
    abandoned = now - timedelta(hours=airlock.settings.upload_expiry_hours)
    with airlock.db.session() as session:
        airlock.publishing.expire_uploads(session, older_than=abandoned)
    with airlock.db.session() as session:
        sweeps.purge_kyc_events(session, now=now)
    with airlock.db.session() as session:
        notice_pack_changes(
            session, packs=airlock.packs, audit=airlock.audit, runner=airlock.runner
        )


def apply_kyc_event(airlock: Airlock, *, event_id: int) -> None:
    """Re-fetch the authoritative result of a webhook's verification and apply it."""
    kyc = airlock.kyc
    with airlock.db.session() as session:
        event = kyc.pending_event(session, event_id)
        target = (event.provider, event.provider_ref) if event is not None else None
        session.commit()
    if target is None:
        return
    facts = kyc.provider(target[0]).fetch_result(target[1])  # HTTP: no transaction open
    with airlock.db.session() as session:
        kyc.apply_event(session, event_id=event_id, facts=facts)


def reevaluate_model(
    airlock: Airlock, *, model_id: int, policy_version_id: int | None = None
) -> None:
    """Judge a model's live grants and pending requests under its policy in force, and apply."""
    cause = {"kind": "policy_apply" if policy_version_id else "reevaluate"}
    with airlock.db.session() as session:
        airlock.reevaluation.reevaluate_model(
            session, model_id=model_id, cause={**cause, "policy_version_id": policy_version_id}
        )


def reevaluate_user(airlock: Airlock, *, user_id: int) -> None:
    """Judge one user's live grants and pending requests anew (their KYC changed)."""
    with airlock.db.session() as session:
        airlock.reevaluation.reevaluate_user(session, user_id=user_id, cause={"kind": "kyc_change"})


def rescreen_grants(airlock: Airlock, *, pack_id: str | None = None, at: str | None = None) -> None:
    """Daily: judge every live grant again (lapsed or too old KYC, pack entries coming into
    effect); with `pack_id`, only models whose policy references that pack (a changed pack was
    deployed). `at` (ISO 8601 with a zone) judges as of that instant instead of now."""
    instant = _instant(at) if at is not None else None
    with airlock.db.session() as session:
        begin_read_only(session)
        model_ids = airlock.reevaluation.models_to_rescreen(session, pack_id=pack_id)
        session.commit()
    pack = airlock.packs.get(pack_id) if pack_id else None
    cause: dict[str, Any] = {"kind": "daily_rescreen"}
    if pack is not None:
        cause = {"kind": "pack_change", "pack": pack.id, "version": pack.version}
    for model_id in model_ids:
        with airlock.db.session() as session:
            airlock.reevaluation.reevaluate_model(
                session, model_id=model_id, cause=cause, at=instant
            )


def checkpoint_audit(airlock: Airlock, *, force: bool = False) -> None:
    """Sign a checkpoint of the audit chain when one is due (or `force`); nothing new, none."""
    service, settings = airlock.checkpoints, airlock.settings
    if not force:
        with airlock.db.session() as session:
            begin_read_only(session)
            due = service.due(
                session,
                now=utcnow(),
                every=timedelta(seconds=settings.audit_checkpoint_seconds),
                events=settings.audit_checkpoint_events,
            )
            session.commit()
        if not due:
            return
    keys = load_keys(settings)  # no key in production: raises, and the task fails loudly
    with airlock.db.session() as session:
        service.create(
            session, signer=keys.signer, storage=airlock.storage, origin=settings.checkpoint_origin
        )


def forward_audit(airlock: Airlock) -> None:
    """Deliver the audit events after the SIEM cursor to AIRLOCK_AUDIT_FORWARD (unset: none)."""
    spec = airlock.settings.audit_forward
    if not spec:
        return
    sink = open_sink(spec)
    try:
        ForwardingService().forward(airlock.db, sink)
    finally:
        sink.close()


def prune_audit(airlock: Airlock, *, at: str | None = None) -> PruneResult:
    """Daily: delete the audit events past retention (AIRLOCK_AUDIT_RETENTION_YEARS) that no
    legal hold keeps, leaving a signed checkpoint at each cut. `at` prunes as of that instant."""
    settings = airlock.settings
    keys = load_keys(settings)  # no signing key: no checkpoint, so nothing is pruned
    return airlock.retention.prune(
        airlock.db.session,
        now=_instant(at) if at is not None else utcnow(),
        years=settings.audit_retention_years,
        signer=keys.signer,
        storage=airlock.storage,
        origin=settings.checkpoint_origin,
    )


def _instant(text: str) -> datetime:
    found = datetime.fromisoformat(text)
    if found.tzinfo is None:
        raise ValueError(f"'{text}' names no time zone; write it as 2026-01-01T00:00:00Z")
    return found


JOBS: dict[str, Callable[..., Any]] = {
    VET_TASK: vet_revision,
    PROVISION_TASK: provision_download,
    SWEEP_TASK: sweep_grants,
    REEVALUATE_MODEL_TASK: reevaluate_model,
    REEVALUATE_USER_TASK: reevaluate_user,
    RESCREEN_TASK: rescreen_grants,
    KYC_TASK: apply_kyc_event,
    CHECKPOINT_TASK: checkpoint_audit,
    FORWARD_TASK: forward_audit,
    PRUNE_TASK: prune_audit,
}
