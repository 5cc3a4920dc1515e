"""Models, uploads, revisions and vetting."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Literal, NoReturn

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import (
    Model,
    MultipartUpload,
    Organization,
    Revision,
    RevisionFile,
    VettingStatus,
    utcnow,
)
from gateway.errors import (
    AirlockError,
    ArtifactMissing,
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RevisionNotFound,
    UploadMissing,
)
from gateway.services.principal import Principal
from gateway.storage import DirectUploads, Storage, UploadedPart
from gateway.tasks import TaskRunner, enqueue_after_commit
from gateway.tasks.catalog import VET_TASK

log = logging.getLogger(__name__)

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
COMMIT_HEX = re.compile(r"^[0-9a-f]{40}$")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MAX_PATH = 1024
MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload
MIB = 1024 * 1024
MIN_PART = 5 * MIB  # S3 refuses smaller parts (except the last)
DIGEST_MISMATCH = "sha256 of the stored bytes does not match the manifest"  # vetting's words


@dataclass(frozen=True, slots=True)
class VettingState:
    """A revision's vetting outcome and whether a publisher overrode it."""

    status: str
    overridden: bool

    @property
    def servable(self) -> bool:
        """Weights tiers serve only revisions vetted clean, or overridden by a publisher."""
        return self.status == VettingStatus.PASSED or self.overridden


_revisions = Revision.__table__.c
VETTING_STATE = select(_revisions.vetting_status, _revisions.vetting_override_at).where(
    _revisions.id == bindparam("revision_id")
)


def load_vetting(conn: Connection, revision_id: int) -> VettingState | None:
    """The vetting state of one revision (one primary-key read; it changes, so never cached)."""
    row = conn.execute(VETTING_STATE, {"revision_id": revision_id}).first()
    return None if row is None else VettingState(row[0], row[1] is not None)


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a commit: its path, size and SHA-256 (the bytes uploaded beforehand)."""

    path: str
    size: int
    sha256: str


def blob_key(org_id: int, sha256: str) -> str:
    """Content-addressed storage key of a blob, per organization.

    A shared namespace would let a publisher of one organization commit (and so download)
    another organization's gated bytes knowing only their sha256, which metadata reveals.
    """
    return f"orgs/{org_id}/sha256/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def safe_repo_path(path: str) -> str:
    """Validate a file path inside a repository: relative, normalized, no NUL or `..`."""
    problem = _path_problem(path)
    if problem:
        raise InvalidInput(f"invalid file path {path[:200]!r}: {problem}")
    return path


def _path_problem(path: str) -> str | None:
    if not path or len(path) > MAX_PATH:
        return f"must be 1 to {MAX_PATH} characters"
    if "\x00" in path or any(ord(c) < 32 for c in path):
        return "control characters are not allowed"
    if path.startswith("/") or "\\" in path or re.match(r"^[A-Za-z]:", path):
        return "must be a relative POSIX path"
    if posixpath.normpath(path) != path or any(p in ("", ".", "..") for p in path.split("/")):
        return "must be normalized (no '.', '..' or empty segments)"
    return None


def git_blob_oid(size: int, sha256: str) -> str:
    """The git object id of the LFS pointer file standing for this blob (what the Hub lists)."""
    pointer = (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    ).encode()
    return hashlib.sha1(b"blob %d\x00" % len(pointer) + pointer, usedforsecurity=False).hexdigest()


def commit_id_for(manifest: Sequence[ManifestEntry], parent: str | None, message: str) -> str:
    """40 lowercase hex over the canonical manifest, parent and message."""
    body = json.dumps(
        {
            "files": [[e.path, e.size, e.sha256] for e in sorted(manifest, key=lambda e: e.path)],
            "parent": parent,
            "message": message,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha1(b"airlock-commit-v1\x00" + body.encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class UploadPlan:
    """How the client sends one blob: not at all, streamed through us, or in parts to S3."""

    sha256: str
    size: int
    method: Literal["stored", "stream", "multipart"]
    upload_id: int | None = None
    part_size: int | None = None
    part_count: int = 0
    uploaded: tuple[UploadedPart, ...] = ()


@dataclass(frozen=True)
class PartUrl:
    """A presigned URL for one part, and the exact size that part must have."""

    number: int
    size: int
    url: str


def part_size_for(size: int, minimum: int) -> int:
    """The part size of an upload: `minimum`, grown in whole MiB to stay within MAX_PARTS."""
    needed = math.ceil(size / MAX_PARTS)
    return max(minimum, MIN_PART, math.ceil(needed / MIB) * MIB)


def part_count(upload: MultipartUpload) -> int:
    """How many parts the upload has (one, possibly empty, for an empty file)."""
    return max(1, math.ceil(upload.size / upload.part_size))


def expected_part_size(upload: MultipartUpload, number: int) -> int:
    """The size part `number` must have: the part size, the remainder for the last."""
    return min(upload.part_size, upload.size - (number - 1) * upload.part_size)


class PublishingService:
    """Creates models, stores uploaded blobs, commits revisions and schedules vetting."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        storage: Storage,
        runner: TaskRunner,
        part_size: int = 64 * MIB,
    ) -> None:
        self.audit = audit
        self.storage = storage
        self.runner = runner
        self.part_size = part_size

    def get_model(self, session: Session, repo_id: str) -> Model:
        """The model `org/name`, or NotFound."""
        org_slug, _, name = repo_id.partition("/")
        model = session.scalar(
            select(Model)
            .join(Organization)
            .where(Organization.slug == org_slug, Model.name == name)
        )
        if model is None:
            raise NotFound(f"model '{repo_id[:200]}' not found")
        return model

    def require_publisher(self, principal: Principal, model: Model) -> int:
        """The caller's user id if they publish in the model's organization."""
        return principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)

    def create_model(
        self, session: Session, *, principal: Principal, repo_id: str, description: str = ""
    ) -> Model:
        """A new, empty model in an organization where the caller publishes."""
        org_slug, _, name = repo_id.partition("/")
        org = session.scalar(select(Organization).where(Organization.slug == org_slug))
        if org is None or not MODEL_NAME.match(name):
            raise InvalidInput(
                f"'{repo_id[:200]}' is not a valid 'org/name' of a known organization"
            )
        actor = principal.require_org_scope(org.id, Scope.MODELS_WRITE)
        if session.scalar(select(Model.id).where(Model.org_id == org.id, Model.name == name)):
            raise Conflict(f"model '{repo_id}' already exists")
        model = Model(org_id=org.id, name=name, description=description, org=org)
        session.add(model)
        session.flush()
        self.audit.record(
            session,
            AuditAction.MODEL_CREATE,
            actor_id=actor,
            org_id=org.id,
            model_id=model.id,
            payload={"repo_id": repo_id},
        )
        session.commit()
        return model

    def upload_blob(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        sha256: str,
        stream: BinaryIO,
        max_bytes: int,
    ) -> dict[str, Any]:
        """Store the bytes of one file, verifying they hash to `sha256`; idempotent."""
        principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        if not SHA256_HEX.match(sha256):
            raise InvalidInput("the blob name must be the file's lowercase hex sha256")
        key = blob_key(model.org_id, sha256)
        if self.storage.exists(key):
            return {"sha256": sha256, "stored": False}
        if self.storage.direct_uploads() is not None:
            raise Conflict(
                "this deployment stores blobs in object storage: start a direct upload with "
                "POST .../uploads and PUT the parts to the URLs it returns"
            )
        stored = self.storage.put_stream(key, stream, max_bytes=max_bytes, expected_sha256=sha256)
        return {"sha256": sha256, "size": stored.size, "stored": True}

    # -- direct (multipart) uploads ------------------------------------------------------------
    def start_upload(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        sha256: str,
        size: int,
        max_bytes: int,
    ) -> UploadPlan:
        """Say how to send one blob; for S3, start or resume its multipart upload."""
        actor = principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        if not SHA256_HEX.match(sha256):
            raise InvalidInput("sha256 must be the file's lowercase hex sha256")
        key = blob_key(model.org_id, sha256)
        direct = self.storage.direct_uploads()
        if self.storage.exists(key):
            if direct is None or not self._failed_digest(session, key):
                return UploadPlan(sha256, size, "stored")
            self.storage.delete(key)  # vetting found other bytes under this name: replace them
        if direct is None:
            return UploadPlan(sha256, size, "stream")
        if size > max_bytes:
            raise PayloadTooLarge(f"upload exceeds {max_bytes} bytes")
        upload, parts = self._resume(session, direct, model, sha256, size)
        if upload is None:
            upload, parts = self._begin(session, direct, model, sha256, size, actor), []
        wanted = {n: expected_part_size(upload, n) for n in range(1, part_count(upload) + 1)}
        done = tuple(p for p in parts if wanted.get(p.number) == p.size)
        return UploadPlan(
            sha256, size, "multipart", upload.id, upload.part_size, part_count(upload), done
        )

    def _failed_digest(self, session: Session, key: str) -> bool:
        """Whether the newest revision using `key` found its object not hashing to its name.

        Direct uploads are hashed only by vetting; without this, bytes that once arrived wrong
        (a file edited mid-push, say) would keep the name and every later push would skip them.
        Once a newer revision uses the key (pending, or vetted clean), the object stays.
        """
        newest = session.execute(
            select(RevisionFile.path, Revision.vetting_status, Revision.vetting_report)
            .join(Revision, Revision.id == RevisionFile.revision_id)
            .where(RevisionFile.storage_key == key)
            .order_by(Revision.id.desc())
            .limit(1)
        ).first()
        if newest is None or newest.vetting_status != VettingStatus.FAILED:
            return False
        problems = (newest.vetting_report or {}).get("problems", [])
        return {"path": newest.path, "problem": DIGEST_MISMATCH} in problems

    def _resume(
        self, session: Session, direct: DirectUploads, model: Model, sha256: str, size: int
    ) -> tuple[MultipartUpload | None, list[UploadedPart]]:
        """The upload of this blob already under way, and its parts; drops a stale one."""
        upload = session.scalar(
            select(MultipartUpload).where(
                MultipartUpload.org_id == model.org_id, MultipartUpload.sha256 == sha256
            )
        )
        if upload is None:
            return None, []
        if upload.size == size:
            try:
                return upload, direct.parts(upload.storage_key, upload.storage_upload_id)
            except UploadMissing:
                pass  # aborted by a lifecycle rule, say: start over
        direct.abort(upload.storage_key, upload.storage_upload_id)
        session.delete(upload)
        session.commit()
        return None, []

    def _begin(
        self,
        session: Session,
        direct: DirectUploads,
        model: Model,
        sha256: str,
        size: int,
        actor: int,
    ) -> MultipartUpload:
        key = blob_key(model.org_id, sha256)
        storage_upload_id = direct.create(key)
        upload = MultipartUpload(
            org_id=model.org_id,
            model_id=model.id,
            sha256=sha256,
            size=size,
            part_size=part_size_for(size, self.part_size),
            storage_key=key,
            storage_upload_id=storage_upload_id,
            created_by_id=actor,
            created_at=utcnow(),
        )
        session.add(upload)
        try:
            session.commit()
        except Exception as exc:  # unrecorded, nothing would ever abort it: do it now
            session.rollback()
            _try_abort(direct, key, storage_upload_id)
            if isinstance(exc, IntegrityError):  # a concurrent push of the same blob started first
                raise Conflict(f"an upload of {sha256} started meanwhile: push again") from None
            raise
        return upload

    def part_urls(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        upload_id: int,
        numbers: Sequence[int],
        ttl: timedelta,
    ) -> tuple[list[PartUrl], datetime]:
        """Presigned PUT URLs for some parts of an upload, and when they expire."""
        upload, direct = self._upload(session, principal, model, upload_id)
        total = part_count(upload)
        bad = sorted({n for n in numbers if not 1 <= n <= total})
        if bad:
            raise InvalidInput(
                f"this upload has parts 1 to {total}; there is no part {bad[0]}",
                errors=[{"path": "numbers", "message": f"no part {n}"} for n in bad[:20]],
            )
        expires_at = utcnow() + ttl
        urls = [
            PartUrl(
                n,
                expected_part_size(upload, n),
                direct.part_url(
                    upload.storage_key, upload.storage_upload_id, n, expires_at=expires_at
                ),
            )
            for n in sorted(set(numbers))
        ]
        return urls, expires_at

    def complete_upload(
        self, session: Session, *, principal: Principal, model: Model, upload_id: int
    ) -> dict[str, Any]:
        """Assemble the uploaded parts once every part is there at its exact size.

        The sha256 is not known here (the bytes never pass through us): the vetting task
        re-hashes every file of a revision, and a mismatch keeps the revision unservable.
        """
        upload, direct = self._upload(session, principal, model, upload_id)
        key, sha256 = upload.storage_key, upload.sha256
        try:
            parts = direct.parts(key, upload.storage_upload_id)
            self._check_parts(upload, parts)
            size = direct.complete(key, upload.storage_upload_id, sorted(parts, key=_number))
        except UploadMissing:  # completed or aborted meanwhile, before or after listing
            return self._upload_gone(session, direct, upload)
        if size != upload.size:  # the parts said otherwise: never keep such an object
            self._refuse_size(session, upload, size)
        session.delete(upload)
        session.commit()
        return {"sha256": sha256, "size": size, "stored": True}

    def _upload_gone(
        self, session: Session, direct: DirectUploads, upload: MultipartUpload
    ) -> dict[str, Any]:
        """Completed (by a concurrent request, or by an earlier try of this one whose clean-up
        failed) or aborted: which one, the object tells."""
        try:
            size = direct.size(upload.storage_key)
        except ArtifactMissing:
            session.delete(upload)
            session.commit()
            raise Conflict("the upload expired or was aborted: push the file again") from None
        if size != upload.size:
            self._refuse_size(session, upload, size)
        session.delete(upload)
        session.commit()
        return {"sha256": upload.sha256, "size": size, "stored": False}

    def _refuse_size(self, session: Session, upload: MultipartUpload, size: int) -> NoReturn:
        """Delete an assembled object of the wrong size, then forget its upload; if the delete
        fails, the upload stays recorded and a retry of the completion comes back here."""
        self.storage.delete(upload.storage_key)
        session.delete(upload)
        session.commit()
        raise InvalidInput(f"the assembled object has {size} bytes, not {upload.size}")

    def _check_parts(self, upload: MultipartUpload, parts: Sequence[UploadedPart]) -> None:
        have = {p.number: p.size for p in parts}
        errors = [
            {"path": f"parts.{n}", "message": _part_problem(have.get(n), want)}
            for n in range(1, part_count(upload) + 1)
            if have.get(n) != (want := expected_part_size(upload, n))
        ]
        if errors:
            raise InvalidInput(
                f"{len(errors)} of {part_count(upload)} parts are missing or of the wrong size",
                errors=errors[:50],
            )

    def _upload(
        self, session: Session, principal: Principal, model: Model, upload_id: int
    ) -> tuple[MultipartUpload, DirectUploads]:
        """An upload of the model's organization, for one of its publishers; else NotFound."""
        principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        upload = session.get(MultipartUpload, upload_id)
        direct = self.storage.direct_uploads()
        if upload is None or upload.org_id != model.org_id or direct is None:
            raise NotFound(f"upload {upload_id} not found")
        return upload, direct

    def expire_uploads(self, session: Session, *, older_than: datetime) -> int:
        """Abort multipart uploads started before `older_than` (abandoned pushes); how many.

        One the store fails to abort is logged and kept for the next sweep; the rest proceed.
        """
        stale = session.scalars(
            select(MultipartUpload)
            .where(MultipartUpload.created_at < older_than)
            .order_by(MultipartUpload.id)
            .limit(200)
        ).all()
        direct = self.storage.direct_uploads()
        done = [
            upload
            for upload in stale
            if direct is None or _try_abort(direct, upload.storage_key, upload.storage_upload_id)
        ]
        for upload in done:
            session.delete(upload)
        session.commit()
        return len(done)

    def commit(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        manifest: Sequence[ManifestEntry],
        message: str = "",
    ) -> Revision:
        """Create a revision from uploaded blobs and make it the model's head."""
        actor = principal.require_org_scope(model.org_id, Scope.MODELS_WRITE)
        self._check_manifest(model, manifest)
        parent = model.head_revision.commit_id if model.head_revision else None
        commit_id = commit_id_for(manifest, parent, message)
        existing = session.scalar(
            select(Revision).where(Revision.model_id == model.id, Revision.commit_id == commit_id)
        )
        if existing is not None:
            return existing
        revision = Revision(
            model_id=model.id,
            commit_id=commit_id,
            parent_commit_id=parent,
            message=message,
            created_by_id=actor,
            created_at=utcnow(),
            files=[
                RevisionFile(
                    path=e.path,
                    size=e.size,
                    sha256=e.sha256,
                    git_oid=git_blob_oid(e.size, e.sha256),
                    storage_key=blob_key(model.org_id, e.sha256),
                )
                for e in manifest
            ],
        )
        session.add(revision)
        session.flush()
        # Set the relationship, not only the key: a stale `head_revision` of None left on the
        # instance would be written back by a later merge and drop the head.
        model.head_revision = revision
        self.audit.record(
            session,
            AuditAction.REVISION_COMMIT,
            actor_id=actor,
            org_id=model.org_id,
            model_id=model.id,
            payload={
                "commit": commit_id,
                "parent": parent,
                "files": len(manifest),
                "bytes": sum(e.size for e in manifest),
            },
        )
        enqueue_after_commit(session, self.runner, VET_TASK, {"revision_id": revision.id})
        session.commit()
        return revision

    def _check_manifest(self, model: Model, manifest: Sequence[ManifestEntry]) -> None:
        if not manifest:
            raise InvalidInput("a commit needs at least one file")
        seen: set[str] = set()
        for entry in manifest:
            safe_repo_path(entry.path)
            if entry.path in seen:
                raise InvalidInput(f"duplicate path {entry.path!r} in manifest")
            seen.add(entry.path)
            if not SHA256_HEX.match(entry.sha256) or entry.size < 0:
                raise InvalidInput(f"invalid sha256 or size for {entry.path!r}")
            if not self.storage.exists(blob_key(model.org_id, entry.sha256)):
                raise InvalidInput(
                    f"the bytes of {entry.path!r} (sha256 {entry.sha256}) were not uploaded"
                )

    def resolve_revision(self, session: Session, model: Model, rev: str) -> Revision:
        """`main` (the head) or a 40-hex commit id of this model."""
        if rev == "main":
            if model.head_revision is None:
                raise RevisionNotFound(f"model '{model.repo_id}' has no revision yet")
            return model.head_revision
        if not COMMIT_HEX.match(rev):
            raise RevisionNotFound(f"revision '{rev[:80]}' not found: use 'main' or a commit id")
        revision = session.scalar(
            select(Revision).where(Revision.model_id == model.id, Revision.commit_id == rev)
        )
        if revision is None:
            raise RevisionNotFound(f"revision '{rev}' not found")
        return revision

    def mark_vetted(
        self, session: Session, *, revision: Revision, passed: bool, report: dict[str, Any]
    ) -> None:
        """Record the vetting outcome of a revision (called by the vetting task)."""
        status = VettingStatus.PASSED if passed else VettingStatus.FAILED
        if revision.vetting_status == status and revision.vetting_report == report:
            return
        revision.vetting_status = str(status)
        revision.vetting_report = report
        model = session.get(Model, revision.model_id)
        self.audit.record(
            session,
            AuditAction.REVISION_VET,
            actor_id=None,
            org_id=model.org_id if model else None,
            model_id=revision.model_id,
            effect="allow" if passed else "deny",
            payload={
                "commit": revision.commit_id,
                "status": str(status),
                "problems": report.get("problems", []),
            },
        )

    def override_vetting(
        self,
        session: Session,
        *,
        principal: Principal,
        model: Model,
        rev: str,
        allow: bool,
        reason: str,
    ) -> Revision:
        """Let weights tiers serve a revision that is not vetted clean, or take that back."""
        actor = self.require_publisher(principal, model)
        if not reason.strip():
            raise InvalidInput("a vetting override needs a reason")
        revision = self.resolve_revision(session, model, rev)
        if (revision.vetting_override_at is not None) == allow:
            return revision
        if allow and revision.vetting_status == VettingStatus.PASSED:
            raise Conflict(
                f"revision {revision.commit_id} passed vetting; there is nothing to override"
            )
        revision.vetting_override_at = utcnow() if allow else None
        revision.vetting_override_by_id = actor if allow else None
        revision.vetting_override_reason = reason[:2000] if allow else None
        self.audit.record(
            session,
            AuditAction.REVISION_OVERRIDE,
            actor_id=actor,
            org_id=model.org_id,
            model_id=model.id,
            effect="allow" if allow else "deny",
            payload={
                "commit": revision.commit_id,
                "allow": allow,
                "reason": reason[:2000],
                "vetting_status": revision.vetting_status,
                "problems": revision.vetting_report.get("problems", []),
            },
        )
        session.commit()
        return revision


def _number(part: UploadedPart) -> int:
    return part.number


def _part_problem(have: int | None, want: int) -> str:
    return "not uploaded" if have is None else f"has {have} bytes, expected {want}"


def _try_abort(direct: DirectUploads, key: str, upload_id: str) -> bool:
    """Abort a multipart upload; a failure is logged (the bucket's lifecycle rule remains)."""
    try:
        direct.abort(key, upload_id)
    except AirlockError as exc:
        log.warning("could not abort the multipart upload %s of %s: %s", upload_id, key, exc)
        return False
    return True
