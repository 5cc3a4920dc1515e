"""Signed audit checkpoints: created incrementally from the last one's Merkle frontier, kept in
the database and in object storage, and verified against the events and against each other."""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from gateway.audit.canonical import GENESIS_HASH, body_of, entry_hash
from gateway.audit.chain import ROW_FIELDS
from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.notes import (
    Checkpoint,
    NoteError,
    SigningKey,
    VerifierKey,
    open_checkpoint,
    sign_checkpoint,
)
from gateway.db.models import AuditCheckpoint, AuditEvent, AuditHead, utcnow
from gateway.errors import AirlockError
from gateway.services.audit_export import entry_hashes
from gateway.settings import Settings
from gateway.storage import Storage

log = logging.getLogger(__name__)

PREFIX = "audit/checkpoints/"
SUFFIX = ".note"
SIZE_DIGITS = 20  # any BIGINT tree size: keys sort in tree order
KEY_FILE = "audit_signing_key"
NOTE_MAX_BYTES = 64 * 1024
BATCH = 5000
# One run signs at most this many new events (about 10 s of work), so a first checkpoint over a
# long history finishes within the task's time limit; the next runs continue from it.
MAX_EVENTS_PER_RUN = 100_000
# Creators serialize on this PostgreSQL advisory lock (SQLite's BEGIN IMMEDIATE does it there).
LOCK_ID = 0x41495243  # "AIRC"


def storage_key(size: int) -> str:
    """Where the checkpoint of a tree of `size` events is kept in object storage."""
    return f"{PREFIX}{size:0{SIZE_DIGITS}d}{SUFFIX}"


class SigningKeyMissing(RuntimeError):
    """No audit signing key is configured where none may be generated: nothing is signed."""


class ChainBroken(RuntimeError):
    """The events a checkpoint would cover do not link: they are not signed."""


@dataclass(frozen=True)
class CheckpointKeys:
    """The key that signs new checkpoints and the retired public keys old ones verify with."""

    signer: SigningKey
    retired: tuple[VerifierKey, ...] = ()

    @property
    def verifiers(self) -> tuple[VerifierKey, ...]:
        """Every public key a stored checkpoint may be signed with, current first."""
        return (self.signer.verifier(), *self.retired)


def load_keys(settings: Settings) -> CheckpointKeys:
    """The configured keys; on the embedded SQLite path a key generated into the data dir."""
    if settings.audit_signing_key:
        signer = SigningKey.from_text(settings.audit_signing_key)
    elif _embedded(settings):
        signer = _local_key(settings)
    else:
        raise SigningKeyMissing(
            "AIRLOCK_AUDIT_SIGNING_KEY (or AIRLOCK_AUDIT_SIGNING_KEY_FILE) is not set: audit "
            "checkpoints cannot be signed (create a key with `airlock audit keygen`)"
        )
    return CheckpointKeys(signer, retired_keys(settings))


def verifier_keys(settings: Settings) -> tuple[VerifierKey, ...]:
    """The public keys to verify with, without generating anything (verification only reads)."""
    retired = retired_keys(settings)
    if settings.audit_signing_key:
        return (SigningKey.from_text(settings.audit_signing_key).verifier(), *retired)
    path = settings.data_dir / KEY_FILE
    if _embedded(settings) and path.is_file():
        return (SigningKey.from_text(path.read_text()).verifier(), *retired)
    return retired


def retired_keys(settings: Settings) -> tuple[VerifierKey, ...]:
    """The retired public keys (AIRLOCK_AUDIT_RETIRED_KEYS)."""
    return tuple(VerifierKey.from_text(t) for t in settings.audit_retired_keys)


def _embedded(settings: Settings) -> bool:
    return settings.database_url.startswith("sqlite")


def _local_key(settings: Settings) -> SigningKey:
    """The data dir's signing key, generated (mode 0600) on first use."""
    path = settings.data_dir / KEY_FILE
    if path.is_file():
        return SigningKey.from_text(path.read_text())
    key = SigningKey.generate(settings.checkpoint_origin.replace("/", "-"))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=settings.data_dir, prefix=".key-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(key.to_text() + "\n")
        os.link(tmp, path)  # atomic, and refuses to replace a key another process just wrote
    except FileExistsError:
        return SigningKey.from_text(path.read_text())
    finally:
        os.unlink(tmp)
    log.warning(
        "generated an audit signing key %s in %s (embedded defaults); "
        "set AIRLOCK_AUDIT_SIGNING_KEY in production",
        key.verifier().to_text(),
        path,
    )
    return key


def generate_key_file(path: str, name: str) -> SigningKey:
    """Write a new signing key to `path` (mode 0600, never over an existing file)."""
    key = SigningKey.generate(name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.to_text() + "\n")
    return key


@dataclass
class CheckpointReport:
    """Outcome of checking stored checkpoints against the events and object storage."""

    checked: int = 0
    stored: int = 0
    latest: AuditCheckpoint | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every checkpoint holds."""
        return not self.problems


class CheckpointService:
    """Creates and verifies signed checkpoints of the audit chain."""

    def due(self, session: Session, *, now: datetime, every: timedelta, events: int) -> bool:
        """Whether `events` new events exist, or any new one and the last is `every` old."""
        head = session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0
        last = session.execute(
            select(AuditCheckpoint.tree_size, AuditCheckpoint.created_at)
            .order_by(AuditCheckpoint.tree_size.desc())
            .limit(1)
        ).first()
        if last is None:
            return head > 0
        new: int = head - last.tree_size
        return new >= events or (new > 0 and now - last.created_at >= every)

    def create(
        self,
        session: Session,
        *,
        signer: SigningKey,
        storage: Storage,
        origin: str,
        size: int | None = None,
    ) -> AuditCheckpoint | None:
        """Sign, store (database, then object storage) and return a checkpoint of the first
        `size` events (default: all); None when one exists at that size. Commits."""
        self._lock(session)
        target = self._target(session, size)
        base = self.before(session, target) if target else None
        if not target or (base is not None and base.tree_size == target):
            session.commit()
            if base is not None:
                self._ensure_copy(storage, base)
            return None
        row = self._sign(session, base, target, signer=signer, origin=origin)
        session.add(row)
        session.commit()
        self._write(storage, row)
        log.info("audit checkpoint at size %d signed by %s", row.tree_size, row.key_name)
        return row

    def _target(self, session: Session, size: int | None) -> int:
        """`size`, else the head, at most MAX_EVENTS_PER_RUN past the latest checkpoint."""
        head = session.execute(select(AuditHead.seq).where(AuditHead.id == 1)).scalar_one()
        if size is not None:
            if not 0 < size <= head:
                raise ValueError(f"no checkpoint at size {size}: the chain holds {head} events")
            return size
        latest = self.latest(session)
        done = latest.tree_size if latest is not None else 0
        if done > head:
            raise ChainBroken(
                f"the chain's head ({head}) is behind the checkpoint at size {done}: "
                "events were removed; nothing signed"
            )
        return int(min(head, done + MAX_EVENTS_PER_RUN))

    def before(self, session: Session, size: int) -> AuditCheckpoint | None:
        """The checkpoint with the largest tree size not above `size`."""
        return session.scalar(
            select(AuditCheckpoint)
            .where(AuditCheckpoint.tree_size <= size)
            .order_by(AuditCheckpoint.tree_size.desc())
            .limit(1)
        )

    def latest(self, session: Session) -> AuditCheckpoint | None:
        """The checkpoint of the largest tree."""
        return session.scalar(
            select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
        )

    def _lock(self, session: Session) -> None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": LOCK_ID})
        else:
            session.connection()  # SQLite: BEGIN IMMEDIATE holds the write lock from here

    def _sign(
        self,
        session: Session,
        base: AuditCheckpoint | None,
        target: int,
        *,
        signer: SigningKey,
        origin: str,
    ) -> AuditCheckpoint:
        frontier = Frontier.from_json(base.frontier) if base else Frontier()
        prev = base.head_hash if base else GENESIS_HASH
        for event in _events(session, frontier.size, target):
            prev = _linked(event, frontier.size + 1, prev)
            frontier.append(leaf_hash(bytes.fromhex(prev)))
        if frontier.size != target:
            raise ChainBroken(f"events end at {frontier.size}, before {target}: nothing signed")
        now = utcnow().replace(microsecond=0)
        note = sign_checkpoint(Checkpoint(origin, target, frontier.root(), prev, now), signer)
        verifier = signer.verifier()
        return AuditCheckpoint(
            tree_size=target,
            root_hash=frontier.root().hex(),
            head_hash=prev,
            origin=origin,
            key_name=verifier.name,
            key_id=verifier.key_id.hex(),
            note=note,
            frontier=frontier.to_json(),
            storage_key=storage_key(target),
            created_at=now,
        )

    def _write(self, storage: Storage, row: AuditCheckpoint) -> None:
        data = row.note.encode()
        storage.put_stream(row.storage_key, io.BytesIO(data), max_bytes=NOTE_MAX_BYTES)

    def _ensure_copy(self, storage: Storage, row: AuditCheckpoint) -> None:
        """Write a copy a crash between the commit and the upload left missing."""
        if not storage.exists(row.storage_key):
            log.warning("audit checkpoint %d was missing in object storage", row.tree_size)
            self._write(storage, row)

    def verify(
        self, session: Session, *, verifiers: tuple[VerifierKey, ...], storage: Storage
    ) -> CheckpointReport:
        """Check every stored checkpoint's signature, root and head hash against the events,
        and the database's checkpoints against the copies in object storage."""
        report = CheckpointReport()
        rows = list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)))
        if not verifiers:
            if rows or storage.list_keys(PREFIX):
                report.problems.append("no verifier key is configured: checkpoints go unchecked")
            return report
        for row in rows:
            _check_note(row, verifiers, report)
        _check_roots(session, rows, report)
        _check_copies(rows, storage, verifiers, report)
        report.checked, report.latest = len(rows), rows[-1] if rows else None
        return report


_EVENT_ROWS = select(*(getattr(AuditEvent, name) for name in ROW_FIELDS))


def _events(session: Session, after: int, upto: int) -> Iterator[Mapping[str, Any]]:
    """Events after..upto in sequence order, as plain rows (no ORM identity map), in batches."""
    while after < upto:
        batch = (
            session.execute(
                _EVENT_ROWS.where(AuditEvent.seq > after, AuditEvent.seq <= upto)
                .order_by(AuditEvent.seq)
                .limit(BATCH)
            )
            .mappings()
            .all()
        )
        if not batch:
            return
        yield from cast(Sequence[Mapping[str, Any]], batch)
        after = batch[-1]["seq"]


def _linked(event: Mapping[str, Any], expected: int, prev: str) -> str:
    """The event's entry hash, once its sequence, link and content hold."""
    seq, digest = event["seq"], event["entry_hash"]
    if seq != expected:
        raise ChainBroken(f"expected event {expected}, found {seq}: nothing signed")
    if event["prev_hash"] != prev or entry_hash(prev, body_of(event)) != digest:
        raise ChainBroken(f"event {seq} does not link or was edited: nothing signed")
    return str(digest)


def _check_note(
    row: AuditCheckpoint, verifiers: tuple[VerifierKey, ...], report: CheckpointReport
) -> None:
    """The note's signature holds and it states what the row records."""
    try:
        cp = open_checkpoint(row.note, verifiers)
    except NoteError as exc:
        report.problems.append(f"checkpoint at size {row.tree_size}: {exc.reason}")
        return
    stated = (cp.origin, cp.size, cp.root.hex(), cp.head_hash)
    if stated != (row.origin, row.tree_size, row.root_hash, row.head_hash):
        report.problems.append(
            f"checkpoint at size {row.tree_size}: its signed note states another tree "
            f"(size {cp.size}, root {cp.root.hex()[:12]}) than its row records"
        )


def _check_roots(session: Session, rows: list[AuditCheckpoint], report: CheckpointReport) -> None:
    """Recompute the Merkle root and head hash at each checkpoint's size from the events."""
    if not rows:
        return
    first = session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq).limit(1))
    start = (first or 1) - 1
    anchor = next((r for r in rows if r.tree_size == start), None)
    if start and anchor is None:
        report.problems.append(
            f"events 1 to {start} are missing and no checkpoint anchors the cut at {start}"
        )
        return
    frontier = Frontier.from_json(anchor.frontier) if anchor else Frontier()
    pending = iter([r for r in rows if r.tree_size > start])
    want = next(pending, None)
    hashes = entry_hashes(session, start, rows[-1].tree_size)
    for seq, digest in hashes:
        if want is None or seq != frontier.size + 1:
            break  # a gap: the chain verification names it
        frontier.append(leaf_hash(bytes.fromhex(digest)))
        if frontier.size == want.tree_size:
            _compare(want, frontier.root().hex(), digest, report)
            want = next(pending, None)
    if want is not None:
        report.problems.append(
            f"checkpoint at size {want.tree_size} covers events the database no longer holds "
            f"(they stop at {frontier.size}): events were removed, from the tail or after it"
        )


def _compare(row: AuditCheckpoint, root: str, head: str, report: CheckpointReport) -> None:
    if row.root_hash != root or row.head_hash != head:
        report.problems.append(
            f"checkpoint at size {row.tree_size}: the events' Merkle root or head hash differs "
            "from the signed one (events up to it were rewritten)"
        )


def _check_copies(
    rows: list[AuditCheckpoint],
    storage: Storage,
    verifiers: tuple[VerifierKey, ...],
    report: CheckpointReport,
) -> None:
    """Object storage holds what the database holds: a copy it lacks is a roll-back."""
    notes = {row.storage_key: row.note for row in rows}
    try:
        keys = [k for k in storage.list_keys(PREFIX) if k.endswith(SUFFIX)]
        for key in keys:
            _check_copy(key, _read(storage, key), notes.get(key), verifiers, report)
    except AirlockError as exc:
        report.problems.append(f"object storage could not be read: {exc.detail}")
        return
    report.stored = len(keys)
    missing = sorted(set(notes) - set(keys))
    if missing:
        report.warnings.append(
            f"{len(missing)} checkpoint(s) not yet copied to object storage (first {missing[0]}); "
            "the next checkpoint run writes the latest one"
        )


def _check_copy(
    key: str,
    copy: str,
    note: str | None,
    verifiers: tuple[VerifierKey, ...],
    report: CheckpointReport,
) -> None:
    try:
        cp = open_checkpoint(copy, verifiers)
    except NoteError as exc:
        report.problems.append(f"object storage copy {key}: {exc.reason}")
        return
    if note is None:
        report.problems.append(
            f"checkpoint at size {cp.size} is in object storage ({key}) but not in the "
            "database: its checkpoints were deleted or the database was rolled back"
        )
    elif note != copy:
        report.problems.append(
            f"checkpoint at size {cp.size}: the database's note and the object storage copy "
            f"({key}) differ"
        )


def _read(storage: Storage, key: str) -> str:
    with storage.open_read(key) as stream:
        return stream.read(NOTE_MAX_BYTES).decode("utf-8", errors="replace")
