"""Provisioning: the per-grant staged copies a fingerprinting tier serves instead of originals.

A run is split into short transactions around the copying (which may take minutes): `plan`
reads what is missing, `stage` copies one file outside any transaction, `record` notes the
copy, `finish` marks the grant provisioned. Every step is safe to repeat: keys are
deterministic, so a rerun after a crash overwrites instead of duplicating, and the temporary
object a crash may leave behind is removed by the next run before it writes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from sqlalchemy import Connection, CursorResult, and_, bindparam, select, update
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.db.models import Grant, GrantStatus, Revision, RevisionFile, StagedFile, utcnow
from gateway.errors import ArtifactMissing, ServiceUnavailable
from gateway.services.policy import PolicyService
from gateway.storage import Storage, StoredObject
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import PROVISION_TASK
from policies import Tier

TEMP_SUFFIX = ".partial"


def staged_key(org_id: int, grant_id: int, file_id: int) -> str:
    """Where a grant's copy of one file lives: deterministic, so reruns never duplicate it."""
    return f"orgs/{org_id}/grants/{grant_id}/files/{file_id}"


def temp_key(key: str) -> str:
    """The temporary object a copy is written to before it is published under `key`."""
    return key + TEMP_SUFFIX


class ProvisioningPending(ServiceUnavailable):
    """A fingerprinting grant's copies are still being prepared; the download waits (503)."""

    code = "provisioning_pending"
    title = "Provisioning under way"


class StagingRace(Exception):
    """A concurrent run for the same grant removed the temporary copy; a retry is safe."""


@dataclass(frozen=True)
class FileToStage:
    """One file a grant still lacks a copy of, and where the copy goes."""

    file_id: int
    path: str
    size: int
    sha256: str
    source_key: str
    key: str


@dataclass(frozen=True)
class Plan:
    """What one provisioning run of a grant must copy: the covered files without a copy."""

    grant_id: int
    commit: str | None
    covered: tuple[int, ...]
    pending: tuple[FileToStage, ...]


@dataclass(frozen=True, slots=True)
class Staging:
    """A grant's provisioning state and its copy of one file, as downloads read them."""

    provisioned: bool
    key: str | None
    sha256: str | None
    size: int | None


_grants = Grant.__table__.c
_staged = StagedFile.__table__.c
STAGING = (
    select(_grants.provisioned_at, _staged.storage_key, _staged.sha256, _staged.size)
    .select_from(
        Grant.__table__.outerjoin(
            StagedFile.__table__,
            and_(_staged.grant_id == _grants.id, _staged.file_id == bindparam("file_id")),
        )
    )
    .where(_grants.id == bindparam("grant_id"))
)


def load_staging(conn: Connection, grant_id: int, file_id: int) -> Staging | None:
    """The grant's provisioning state and its copy of `file_id` (one indexed read)."""
    row = conn.execute(STAGING, {"grant_id": grant_id, "file_id": file_id}).first()
    return None if row is None else Staging(row[0] is not None, row[1], row[2], row[3])


def fingerprinted_copy(source: BinaryIO) -> BinaryIO:
    """The bytes of a grant's copy. Identity for now: marking comes with the fingerprint key."""
    return source


class ProvisioningService:
    """Prepares what an approved weights grant needs before its first download."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        storage: Storage,
        policies: PolicyService,
        runner: TaskRunner,
    ) -> None:
        self.audit = audit
        self.storage = storage
        self.policies = policies
        self.runner = runner

    def plan(
        self, session: Session, *, grant_id: int, revision_id: int | None = None
    ) -> Plan | None:
        """The copies a live grant still lacks, of the head or of `revision_id`; None: none due."""
        grant = session.get(Grant, grant_id)
        if grant is None or not _live(grant) or grant.model.frozen_at is not None:
            return None
        tier = self._tier(grant)
        revision = self._revision(session, grant, revision_id)
        if tier is None or not tier.fingerprint or revision is None:
            return Plan(grant.id, revision.commit_id if revision else None, (), ())
        covered = [f for f in revision.files if tier.allows_file(f.path)]
        staged = set(
            session.scalars(
                select(StagedFile.file_id).where(
                    StagedFile.grant_id == grant.id,
                    StagedFile.file_id.in_([f.id for f in covered]),
                )
            )
        )
        org_id = grant.model.org_id
        pending = tuple(
            FileToStage(
                f.id, f.path, f.size, f.sha256, f.storage_key, staged_key(org_id, grant.id, f.id)
            )
            for f in covered
            if f.id not in staged
        )
        return Plan(grant.id, revision.commit_id, tuple(f.id for f in covered), pending)

    def stage(self, item: FileToStage) -> StoredObject:
        """Copy one file to its staged key through a temporary object; no transaction held."""
        temp = temp_key(item.key)
        self.storage.delete(temp)  # left by a run that crashed before publishing it
        with self.storage.open_read(item.source_key) as source:
            self.storage.put_stream(
                temp, fingerprinted_copy(source), max_bytes=item.size, expected_sha256=item.sha256
            )
        try:
            with self.storage.open_read(temp) as copy:
                stored = self.storage.put_stream(
                    item.key, copy, max_bytes=item.size, expected_sha256=item.sha256
                )
        except ArtifactMissing as exc:
            raise StagingRace(f"temporary copy {temp} vanished during staging") from exc
        self.storage.delete(temp)
        return stored

    def record(
        self, session: Session, *, grant_id: int, item: FileToStage, stored: StoredObject
    ) -> None:
        """Note one staged copy (once per grant and file), even if the grant ended meanwhile:
        the sweep finds ended grants' copies through these rows."""
        if lock_grant(session, grant_id) is None:
            self.storage.delete(item.key)
            session.commit()
            return
        exists = session.scalar(
            select(StagedFile.id).where(
                StagedFile.grant_id == grant_id, StagedFile.file_id == item.file_id
            )
        )
        if exists is None:
            session.add(
                StagedFile(
                    grant_id=grant_id,
                    file_id=item.file_id,
                    storage_key=stored.key,
                    sha256=stored.sha256,
                    size=stored.size,
                    created_at=utcnow(),
                )
            )
        session.commit()

    def finish(self, session: Session, *, plan: Plan) -> bool:
        """Mark the grant provisioned and audit its copies; False if nothing changed."""
        grant = lock_grant(session, plan.grant_id)
        if grant is None or grant.provisioned_at is not None or not _live(grant):
            session.commit()
            return False
        copies = session.execute(
            select(RevisionFile.path, StagedFile.sha256, StagedFile.storage_key)
            .join(RevisionFile, RevisionFile.id == StagedFile.file_id)
            .where(StagedFile.grant_id == grant.id, StagedFile.file_id.in_(plan.covered))
            .order_by(RevisionFile.path)
        ).all()
        if len(copies) != len(plan.covered):  # a copy was removed meanwhile: a rerun adds it
            session.commit()
            return False
        grant.provisioned_at = utcnow()
        self.audit.record(
            session,
            AuditAction.GRANT_PROVISION,
            actor_id=None,
            org_id=grant.model.org_id,
            subject_user_id=grant.user_id,
            model_id=grant.model_id,
            effect="allow",
            payload={
                "grant_id": grant.id,
                "tier": grant.tier,
                "commit": plan.commit,
                "files": [{"path": p, "sha256": d, "key": k} for p, d, k in copies],
            },
        )
        session.commit()
        return True

    def request_provisioning(
        self, session: Session, *, grant_id: int, revision_id: int | None = None
    ) -> bool:
        """Ask for a provisioned grant's missing copies again (a download found none).

        Only the request that moves the grant back to "under way" enqueues a task, so a burst
        of downloads sends one. Commits; call it outside a read-only transaction.
        """
        result = cast(
            CursorResult[Any],
            session.execute(
                update(Grant)
                .where(Grant.id == grant_id, Grant.provisioned_at.is_not(None))
                .values(provisioned_at=None)
            ),
        )
        moved = result.rowcount
        if moved:
            enqueue_after_commit(
                session,
                self.runner,
                PROVISION_TASK,
                {"grant_id": grant_id, "revision_id": revision_id},
            )
        session.commit()
        return bool(moved)

    def _tier(self, grant: Grant) -> Tier | None:
        policy = self.policies.current(grant.model)
        return policy.tier(grant.tier) if policy else None

    def _revision(self, session: Session, grant: Grant, revision_id: int | None) -> Revision | None:
        if revision_id is None:
            return grant.model.head_revision
        revision = session.get(Revision, revision_id)
        return revision if revision is not None and revision.model_id == grant.model_id else None


def _live(grant: Grant) -> bool:
    return grant.status == GrantStatus.ACTIVE and (
        grant.expires_at is None or grant.expires_at > utcnow()
    )


def lock_grant(session: Session, grant_id: int) -> Grant | None:
    """The grant, re-read and locked for this transaction (FOR UPDATE; SQLite locks anyway)."""
    return session.scalar(
        select(Grant)
        .where(Grant.id == grant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
