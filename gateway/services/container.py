"""Wires settings to backends and services once per process (the app and workers share it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property, partial

from gateway.audit import AuditRecorder
from gateway.audit.forward import open_sink
from gateway.audit.outbox import AuditOutbox
from gateway.db.engine import Database
from gateway.db.group_commit import GroupCommit
from gateway.fingerprint import keyring
from gateway.geo import RequestGeo, geo_from_settings
from gateway.kyc.dedup import SeenEvents
from gateway.kyc.registry import providers_from_settings
from gateway.ratelimit import Limiter, limiter_from_url
from gateway.services.access import AccessService
from gateway.services.checkpoints import CheckpointService
from gateway.services.downloads import DownloadService
from gateway.services.identity import IdentityService
from gateway.services.inference import InferenceService
from gateway.services.kyc import KycService
from gateway.services.policy import PolicyService
from gateway.services.provisioning import ProvisioningService
from gateway.services.publishing import PublishingService
from gateway.services.reevaluation import ReevaluationService
from gateway.services.retention import LegalHoldService, RetentionService
from gateway.services.signing import BlobSigner
from gateway.services.sweeps import SweepService
from gateway.services.tracing import TraceService
from gateway.services.upstream import HttpUpstream
from gateway.settings import Settings
from gateway.storage import Storage, storage_from_settings
from gateway.tasks import InProcessRunner, TaskRunner
from gateway.tasks.broker import CeleryRunner, celery_client
from gateway.tasks.jobs import JOBS
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
    provisioning: ProvisioningService
    sweeps: SweepService
    kyc: KycService
    geo: RequestGeo = field(default_factory=RequestGeo)

    @cached_property
    def reevaluation(self) -> ReevaluationService:
        """Judges live grants against a policy: `policy check`, and re-evaluation tasks."""
        return ReevaluationService(
            audit=self.audit,
            access=self.access,
            policies=self.policies,
            publishing=self.publishing,
            runner=self.runner,
        )

    @cached_property
    def checkpoints(self) -> CheckpointService:
        """Signs audit checkpoints and verifies them (keys come from `load_keys(settings)`)."""
        return CheckpointService()

    @cached_property
    def legal_holds(self) -> LegalHoldService:
        """Places and releases legal holds on a user's or a model's audit events."""
        return LegalHoldService(audit=self.audit)

    @cached_property
    def retention(self) -> RetentionService:
        """Plans and performs prunes of the audit events past retention."""
        return RetentionService(audit=self.audit, checkpoints=self.checkpoints)

    @cached_property
    def inference(self) -> InferenceService:
        """Authorizes and relays OpenAI-style requests to each model's upstream."""
        return InferenceService(
            audit=self.audit,
            access=self.access,
            policies=self.policies,
            upstream=HttpUpstream(timeout=self.settings.upstream_timeout),
            keys=self.settings.upstream_keys,
            sessions=self.db.sessionmaker,
            limiter=self.limiter,
            output_cap=self.settings.inference_max_tokens,
            lease_ttl=self.settings.inference_lease_seconds,
            outbox=self.audit_outbox,
        )

    @cached_property
    def audit_outbox(self) -> AuditOutbox:
        """Where audit events the database refused wait (`<data dir>/audit-outbox`), each
        written later in a transaction of its own."""
        outbox = AuditOutbox(self.settings.data_dir / "audit-outbox")
        outbox.attach(partial(self.audit.record_alone, self.db.sessionmaker))
        return outbox

    @cached_property
    def tracing(self) -> TraceService:
        """Attributes leaked copies to grants (`airlock trace` and the trace API)."""
        return TraceService(
            audit=self.audit,
            storage=self.storage,
            publishing=self.publishing,
            keys=self.provisioning.keys,
        )

    def close(self) -> None:
        """Release pooled connections; stop background retries."""
        if "audit_outbox" in self.__dict__:
            self.audit_outbox.close()
        if self.downloads.group is not None:
            self.downloads.group.close()
        self.db.dispose()
        self.limiter.close()
        self.geo.close()
        self.kyc.close()


def build_airlock(settings: Settings, *, runner: TaskRunner | None = None) -> Airlock:
    """Construct backends named by the settings and the services over them.

    Tasks go to Celery when a broker is configured, else run in this process after commit.
    """
    if settings.audit_forward:
        open_sink(settings.audit_forward).close()  # a malformed sink stops the process now
    db = Database(settings.database_url)
    storage = storage_from_settings(settings)
    packs = load_packs()
    audit = AuditRecorder()
    limiter = limiter_from_url(settings.redis_url, timeout=settings.ratelimit_timeout)
    signer = BlobSigner(settings.secret_key)
    in_process = InProcessRunner() if runner is None and not settings.broker_url else None
    task_runner: TaskRunner = runner or in_process or CeleryRunner(celery_client(settings))
    publishing = PublishingService(
        audit=audit, storage=storage, runner=task_runner, part_size=settings.upload_part_bytes
    )
    policies = PolicyService(audit=audit, packs=packs, publishing=publishing, runner=task_runner)
    access = AccessService(audit=audit, policies=policies, packs=packs, runner=task_runner)
    provisioning = ProvisioningService(
        audit=audit,
        storage=storage,
        policies=policies,
        runner=task_runner,
        keys=keyring(settings.fingerprint_secrets, settings.fingerprint_key_version),
    )
    downloads = DownloadService(
        audit=audit,
        access=access,
        policies=policies,
        publishing=publishing,
        provisioning=provisioning,
        limiter=limiter,
        signer=signer,
        storage=storage,
        group=group_commit_for(db),
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
        provisioning,
        SweepService(audit=audit, storage=storage, runner=task_runner),
        KycService(
            audit=audit,
            runner=task_runner,
            providers=providers_from_settings(settings),
            seen=SeenEvents(settings.redis_url),
            validity=timedelta(days=settings.kyc_validity_days),
        ),
        geo_from_settings(settings),
    )
    if in_process is not None:
        for name, job in JOBS.items():
            in_process.register(name, partial(job, airlock))
    return airlock


def group_commit_for(db: Database) -> GroupCommit | None:
    """Group commits for a SQLite database file (one writer at a time: sharing the write lock
    pays off); none for PostgreSQL or an in-memory database (each connection its own)."""
    if db.file is not None:
        return GroupCommit(db.engine)
    return None
