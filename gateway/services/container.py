"""Wires settings to backends and services once per process (the app and workers share it)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.audit import AuditRecorder
from gateway.db.engine import Database
from gateway.ratelimit import Limiter, limiter_from_url
from gateway.services.access import AccessService
from gateway.services.downloads import DownloadService
from gateway.services.identity import IdentityService
from gateway.services.policy import PolicyService
from gateway.services.publishing import VET_TASK, PublishingService
from gateway.services.signing import BlobSigner
from gateway.services.vetting import vet_revision
from gateway.settings import Settings
from gateway.storage import Storage, storage_from_url
from gateway.tasks import InProcessRunner, TaskRunner
from policies import PackRegistry, load_packs


@dataclass
class Airlock:
    """Every backend and service of one process, built from one Settings."""

    settings: Settings
    db: Database
    storage: Storage
    limiter: Limiter
    runner: TaskRunner
    packs: PackRegistry
    audit: AuditRecorder
    signer: BlobSigner
    identity: IdentityService
    publishing: PublishingService
    policies: PolicyService
    access: AccessService
    downloads: DownloadService

    def close(self) -> None:
        """Release pooled connections."""
        self.db.dispose()
        self.limiter.close()


def build_airlock(settings: Settings, *, runner: TaskRunner | None = None) -> Airlock:
    """Construct backends named by the settings and the services over them."""
    db = Database(settings.database_url)
    storage = storage_from_url(settings.storage_url)
    packs = load_packs()
    audit = AuditRecorder()
    limiter = limiter_from_url(settings.redis_url, timeout=settings.ratelimit_timeout)
    signer = BlobSigner(settings.secret_key)
    in_process = InProcessRunner() if runner is None else None
    task_runner: TaskRunner = runner or in_process  # type: ignore[assignment]
    publishing = PublishingService(audit=audit, storage=storage, runner=task_runner)
    policies = PolicyService(audit=audit, packs=packs, publishing=publishing)
    access = AccessService(audit=audit, policies=policies, packs=packs)
    downloads = DownloadService(
        audit=audit,
        access=access,
        policies=policies,
        publishing=publishing,
        limiter=limiter,
        signer=signer,
        storage=storage,
    )
    airlock = Airlock(
        settings,
        db,
        storage,
        limiter,
        task_runner,
        packs,
        audit,
        signer,
        IdentityService(audit=audit),
        publishing,
        policies,
        access,
        downloads,
    )
    if in_process is not None:
        _register_tasks(in_process, airlock)
    return airlock


def _register_tasks(runner: InProcessRunner, airlock: Airlock) -> None:
    def vet(revision_id: int) -> None:
        with airlock.db.session() as session:
            vet_revision(
                session,
                revision_id=revision_id,
                storage=airlock.storage,
                publishing=airlock.publishing,
            )

    runner.register(VET_TASK, vet)
