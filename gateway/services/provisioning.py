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
from gateway.db.models import (
    DownloadFingerprint,
    Grant,
    GrantStatus,
    Revision,
    RevisionFile,
    StagedFile,
    utcnow,
)
from gateway.errors import ArtifactMissing, ServiceUnavailable
from gateway.fingerprint import Keyring, MarkedTensor, NotSafetensors, mark
from gateway.services.policy import PolicyService
from gateway.services.supersession import supersede
from gateway.storage import Storage
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import PROVISION_TASK
from policies import Fingerprint, Tier

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


class UnmarkableFile(Exception):
    """A file a fingerprinting tier must mark is not a readable safetensors file."""


@dataclass(frozen=True)
class FileToStage:
    """One file a grant still lacks a copy of, and where the copy goes."""

    file_id: int
    path: str
    size: int
    sha256: str
    source_key: str
    key: str
    grant_id: int = 0
    fingerprint: Fingerprint | None = None  # None: an exact copy


@dataclass(frozen=True)
class StoredCopy:
    """A staged copy as written, and the tensors its mark touches (None: not marked)."""

    key: str
    size: int
    sha256: str
    marks: tuple[MarkedTensor, ...] | None = None
    key_version: int | None = None


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


class ProvisioningService:
    """Prepares what an approved weights grant needs before its first download."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        storage: Storage,
        policies: PolicyService,
        runner: TaskRunner,
        keys: Keyring,
    ) -> None:
        self.audit = audit
        self.storage = storage
        self.policies = policies
        self.runner = runner
        self.keys = keys

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
        marks = tier.fingerprint
        covered = [
            f for f in revision.files if tier.allows_file(f.path) and marks.stages_file(f.path)
        ]
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
                f.id,
                f.path,
                f.size,
                f.sha256,
                f.storage_key,
                staged_key(org_id, grant.id, f.id),
                grant.id,
                marks if f.path.endswith(".safetensors") else None,
            )
            for f in covered
            if f.id not in staged
        )
        return Plan(grant.id, revision.commit_id, tuple(f.id for f in covered), pending)

    def stage(self, item: FileToStage) -> StoredCopy:
        """Copy (and mark) one file to its staged key through a temporary object; no
        transaction held. Marking streams: memory stays bounded whatever the file size."""
        temp = temp_key(item.key)
        self.storage.delete(temp)  # left by a run that crashed before publishing it
        with self.storage.open_read(item.source_key) as source:
            written = self._write_copy(item, source, temp)
        try:
            with self.storage.open_read(temp) as copy:
                stored = self.storage.put_stream(
                    item.key, copy, max_bytes=item.size, expected_sha256=written.sha256
                )
        except ArtifactMissing as exc:
            raise StagingRace(f"temporary copy {temp} vanished during staging") from exc
        self.storage.delete(temp)
        return StoredCopy(
            stored.key, stored.size, stored.sha256, written.marks, written.key_version
        )

    def _write_copy(self, item: FileToStage, source: BinaryIO, temp: str) -> StoredCopy:
        if item.fingerprint is None:
            stored = self.storage.put_stream(
                temp, source, max_bytes=item.size, expected_sha256=item.sha256
            )
            return StoredCopy(stored.key, stored.size, stored.sha256)
        key = self.keys.current
        try:
            marked, marks = mark(source, key=key, grant_id=item.grant_id, settings=item.fingerprint)
        except NotSafetensors as exc:
            raise UnmarkableFile(f"{item.path} cannot be marked: {exc}") from exc
        stored = self.storage.put_stream(temp, marked, max_bytes=item.size)
        if not marks:  # no tensor qualifies: an exact copy, which must not name the grant
            return StoredCopy(stored.key, stored.size, stored.sha256)
        return StoredCopy(stored.key, stored.size, stored.sha256, tuple(marks), key.version)

    def record(
        self, session: Session, *, grant_id: int, item: FileToStage, stored: StoredCopy
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
        if stored.marks is not None:
            self._record_fingerprint(session, grant_id, item, stored)
        session.commit()

    def _record_fingerprint(
        self, session: Session, grant_id: int, item: FileToStage, stored: StoredCopy
    ) -> None:
        """Keep the delivered copy's digest and mark parameters (once per key version)."""
        exists = session.scalar(
            select(DownloadFingerprint.id).where(
                DownloadFingerprint.grant_id == grant_id,
                DownloadFingerprint.file_id == item.file_id,
                DownloadFingerprint.key_version == stored.key_version,
            )
        )
        if exists is not None or item.fingerprint is None or stored.marks is None:
            return
        grant = session.get_one(Grant, grant_id)
        session.add(
            DownloadFingerprint(
                grant_id=grant_id,
                model_id=grant.model_id,
                file_id=item.file_id,
                key_version=stored.key_version,
                params=fingerprint_params(item.fingerprint, stored.marks),
                sha256=stored.sha256,
                size=stored.size,
                created_at=utcnow(),
            )
        )

    def finish(self, session: Session, *, plan: Plan) -> bool:
        """Mark the grant provisioned and audit its copies; False if nothing changed."""
        grant = lock_grant(session, plan.grant_id)
        if grant is None or grant.provisioned_at is not None or not _live(grant):
            session.commit()
            return False
        copies = session.execute(
            select(
                RevisionFile.path,
                StagedFile.sha256,
                StagedFile.storage_key,
                StagedFile.size,
                DownloadFingerprint.key_version,
                DownloadFingerprint.params,
            )
            .join(RevisionFile, RevisionFile.id == StagedFile.file_id)
            .outerjoin(
                DownloadFingerprint,
                and_(
                    DownloadFingerprint.grant_id == StagedFile.grant_id,
                    DownloadFingerprint.file_id == StagedFile.file_id,
                    DownloadFingerprint.sha256 == StagedFile.sha256,
                ),
            )
            .where(StagedFile.grant_id == grant.id, StagedFile.file_id.in_(plan.covered))
            .order_by(RevisionFile.path)
        ).all()
        if len(copies) != len(plan.covered):  # a copy was removed meanwhile: a rerun adds it
            session.commit()
            return False
        grant.provisioned_at = utcnow()
        # A renewal's old grant served the researcher while this one was staged: it ends now.
        supersede(session, self.audit, grant, actor_id=None, at=grant.provisioned_at)
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
                "files": [_copy_entry(*copy) for copy in copies],
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


def fingerprint_params(settings: Fingerprint, marks: tuple[MarkedTensor, ...]) -> dict[str, Any]:
    """What a marked copy's record keeps: the tier's settings and each marked tensor's K."""
    return {
        "settings": {
            "files": list(settings.files),
            "tensors": list(settings.tensors),
            "positions": settings.positions,
            "min_numel": settings.min_numel,
        },
        "tensors": {m.name: m.positions for m in marks},
    }


def _copy_entry(
    path: str,
    sha256: str,
    key: str,
    size: int,
    key_version: int | None,
    params: dict[str, Any] | None,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path, "sha256": sha256, "key": key, "size": size}
    if key_version is not None and params is not None:
        marked = params["tensors"]
        entry["fingerprint"] = {
            "key_version": key_version,
            "tensors": len(marked),
            "positions": sum(marked.values()),
        }
    return entry


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
