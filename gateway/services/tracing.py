"""Tracing a leaked copy to the grant it was delivered to: exact digests, then marks."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.auth.tokens import Scope
from gateway.db.models import DownloadFingerprint, Grant, Model, RevisionFile, User
from gateway.errors import Forbidden, InvalidInput, PayloadTooLarge
from gateway.fingerprint import Keyring, MarkedTensor, NotSafetensors, read_header
from gateway.fingerprint.trace import Z_THRESHOLD, Candidate, Opened, Score, detect
from gateway.services.principal import Principal
from gateway.services.publishing import PublishingService
from gateway.storage import Storage

CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """One grant's evidence in a trace: who held it and how strongly the suspect matches."""

    grant_id: int
    username: str
    tier: str
    z: float
    compared: int
    positions: int
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (z rounded to 2 decimals)."""
        return {**vars(self), "z": round(self.z, 2)}


@dataclass(frozen=True)
class TraceReport:
    """The outcome of a trace: exact matches, every candidate ranked, and the verdict."""

    model: str
    exact: tuple[dict[str, Any], ...]
    ranked: tuple[Finding, ...]
    threshold: float = Z_THRESHOLD

    @property
    def attributed(self) -> tuple[int, ...]:
        """The grants an exact digest or a z-score at or above the threshold names."""
        found = [m["grant_id"] for m in self.exact]
        found += [f.grant_id for f in self.ranked if f.z >= self.threshold]
        return tuple(dict.fromkeys(found))

    @property
    def verdict(self) -> str:
        """`attributed` when some grant is named, else `inconclusive`."""
        return "attributed" if self.attributed else "inconclusive"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "model": self.model,
            "verdict": self.verdict,
            "attributed": list(self.attributed),
            "threshold": self.threshold,
            "exact": list(self.exact),
            "ranked": [f.to_dict() for f in self.ranked],
        }


class TraceService:
    """Attributes suspect safetensors files to the grants whose marked copies they came from."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        storage: Storage,
        publishing: PublishingService,
        keys: Keyring,
    ) -> None:
        self.audit = audit
        self.storage = storage
        self.publishing = publishing
        self.keys = keys

    def trace(
        self,
        session: Session,
        *,
        principal: Principal | None,
        repo_id: str,
        suspects: Sequence[Path],
        revision: str | None = None,
    ) -> TraceReport:
        """Trace `suspects` (local files) against `repo_id`'s delivered copies, and audit it.

        `principal` None is the deployment's operator (the CLI on the deployment's host);
        otherwise a publisher or compliance member of the model's organization.
        """
        model = self.publishing.get_model(session, repo_id)
        actor_id = _authorize(principal, model)
        records = self._records(session, model, revision)
        digests = [_sha256(p) for p in suspects]
        exact = _exact(session, records, digests)
        scores = self._scores(session, records, suspects)
        report = TraceReport(model.repo_id, tuple(exact), _ranked(session, scores))
        self.audit.record(
            session,
            AuditAction.MODEL_TRACE,
            actor_id=actor_id,
            org_id=model.org_id,
            model_id=model.id,
            payload={
                "suspects": digests,
                "revision": revision,
                "verdict": report.verdict,
                "attributed": list(report.attributed),
                # audit events hold no floats: z as text, two decimals
                "top": [{**f.to_dict(), "z": f"{f.z:.2f}"} for f in report.ranked[:3]],
            },
        )
        session.commit()
        return report

    def trace_upload(
        self,
        session: Session,
        *,
        principal: Principal,
        repo_id: str,
        stream: BinaryIO,
        max_bytes: int,
        revision: str | None = None,
    ) -> TraceReport:
        """Trace one uploaded file: the caller is authorized before a byte is read."""
        _authorize(principal, self.publishing.get_model(session, repo_id))
        with tempfile.TemporaryDirectory(prefix="airlock-trace-") as tmp:
            path = spool_upload(stream, Path(tmp), max_bytes=max_bytes)
            return self.trace(
                session, principal=principal, repo_id=repo_id, suspects=[path], revision=revision
            )

    def marked_models(self, session: Session) -> list[str]:
        """The models some grant received a marked copy of, by repo id."""
        ids = select(DownloadFingerprint.model_id).distinct()
        return sorted(m.repo_id for m in session.scalars(select(Model).where(Model.id.in_(ids))))

    def _records(
        self, session: Session, model: Model, revision: str | None
    ) -> list[DownloadFingerprint]:
        query = select(DownloadFingerprint).where(DownloadFingerprint.model_id == model.id)
        if revision is not None:
            found = self.publishing.resolve_revision(session, model, revision)
            ids = select(RevisionFile.id).where(RevisionFile.revision_id == found.id)
            query = query.where(DownloadFingerprint.file_id.in_(ids))
        return list(session.scalars(query.order_by(DownloadFingerprint.id)))

    def _scores(
        self, session: Session, records: list[DownloadFingerprint], suspects: Sequence[Path]
    ) -> dict[int, Score]:
        scores: dict[int, Score] = {}
        by_file: dict[int, list[DownloadFingerprint]] = {}
        for record in records:
            by_file.setdefault(record.file_id, []).append(record)
        with ExitStack() as stack:
            opened = [_open(stack, path) for path in suspects]
            for file_id, marked in by_file.items():
                original = session.get_one(RevisionFile, file_id)
                with self._original(original.storage_key) as source:
                    detect(source, opened, [_candidate(r) for r in marked], self.keys, scores)
        return scores

    @contextmanager
    def _original(self, key: str) -> Iterator[Opened]:
        """The original file, seekable: its local path, or a temporary copy of an S3 object."""
        path = self.storage.local_path(key)
        with ExitStack() as stack:
            if path is None:
                spool = stack.enter_context(tempfile.TemporaryFile())
                with self.storage.open_read(key) as source:
                    shutil.copyfileobj(source, spool, CHUNK)
                stream: BinaryIO = spool
            else:
                stream = stack.enter_context(path.open("rb"))
            stream.seek(0)
            yield Opened(stream, read_header(stream))


def spool_upload(stream: BinaryIO, directory: Path, *, max_bytes: int) -> Path:
    """Write an uploaded suspect to a file in `directory`, refusing more than `max_bytes`."""
    path = directory / "suspect.safetensors"
    size = 0
    with path.open("wb") as out:
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"a suspect file may hold at most {max_bytes} bytes")
            out.write(chunk)
    return path


def _authorize(principal: Principal | None, model: Model) -> int | None:
    if principal is None:
        return None
    user_id = principal.require_user()
    allowed = principal.orgs_with_scope(Scope.MODELS_WRITE) | principal.orgs_with_scope(
        Scope.AUDIT_READ
    )
    if model.org_id not in allowed:
        raise Forbidden(
            "tracing a copy needs a publisher or compliance role in the model's organization"
        )
    return user_id


def _open(stack: ExitStack, path: Path) -> Opened:
    stream = stack.enter_context(path.open("rb"))
    try:
        header = read_header(stream)
    except NotSafetensors as exc:
        raise InvalidInput(f"the suspect {path.name} is not a safetensors file: {exc}") from exc
    needed = header.data_start + max((t.end for t in header.tensors), default=0)
    size = os.fstat(stream.fileno()).st_size
    if needed > size:
        raise InvalidInput(
            f"the suspect {path.name} is truncated: its header describes {needed} bytes, "
            f"the file holds {size}"
        )
    return Opened(stream, header)


def _candidate(record: DownloadFingerprint) -> Candidate:
    tensors = record.params.get("tensors", {})
    marks = tuple(MarkedTensor(name, int(k)) for name, k in sorted(tensors.items()))
    return Candidate(record.grant_id, record.key_version, marks)


def _exact(
    session: Session, records: list[DownloadFingerprint], digests: list[str]
) -> list[dict[str, Any]]:
    found = []
    for record in (r for r in records if r.sha256 in digests):
        grant = session.get_one(Grant, record.grant_id)
        path = session.get_one(RevisionFile, record.file_id).path
        found.append(
            {
                "grant_id": grant.id,
                "username": grant.user.username,
                "tier": grant.tier,
                "path": path,
                "sha256": record.sha256,
            }
        )
    return found


def _ranked(session: Session, scores: dict[int, Score]) -> tuple[Finding, ...]:
    if not scores:
        return ()
    grants = {
        g.id: (g.tier, name)
        for g, name in session.execute(
            select(Grant, User.username)
            .join(User, User.id == Grant.user_id)
            .where(Grant.id.in_(scores))
        )
    }
    found = [
        Finding(
            s.grant_id,
            grants[s.grant_id][1],
            grants[s.grant_id][0],
            s.z,
            s.compared,
            s.positions,
            len(s.tensors),
        )
        for s in scores.values()
    ]
    return tuple(sorted(found, key=lambda f: (-f.z, f.grant_id)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
