"""Audit exports and inclusion proofs read from the database, in the files the offline
verifier checks (gateway.audit.exports describes the formats and the sub-range anchor)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.audit import event_body
from gateway.audit.canonical import format_timestamp
from gateway.audit.exports import (
    CHECKPOINTS_FILE,
    EVENT_FILES,
    EXPORT_FORMAT,
    MANIFEST_FILE,
    Anchor,
    dump_json,
    proof_document,
    write_checkpoints,
    write_events,
)
from gateway.audit.merkle import Frontier, inclusion_proof, leaf_hash
from gateway.db.models import AuditCheckpoint, AuditEvent, utcnow

BATCH = 5000


class ExportError(ValueError):
    """An export or proof that cannot be made, with the reason."""


@dataclass(frozen=True)
class SeqRange:
    """The contiguous sequence numbers an export holds (empty when last < first)."""

    first: int
    last: int


def export_audit(
    session: Session,
    *,
    out: Path,
    fmt: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Write events, checkpoints and manifest for [since, until) into `out`; the manifest."""
    if fmt not in EVENT_FILES:
        raise ExportError(f"unknown format {fmt!r}: jsonl or csv")
    out.mkdir(parents=True, exist_ok=True)
    span = _range(session, since, until)
    covering = _covering(session, span)
    anchor = Anchor(_prefix(session, span.first - 1), _suffix(session, span, covering))
    events = write_events(_rows(session, span), out / EVENT_FILES[fmt], fmt)
    upto = covering.tree_size if covering else None
    notes = write_checkpoints(_notes(session, upto), out / CHECKPOINTS_FILE)
    manifest = {
        "format": EXPORT_FORMAT,
        "created_at": format_timestamp(utcnow()),
        "range": {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
        },
        "events": {
            "file": EVENT_FILES[fmt],
            "format": fmt,
            "rows": events.rows,
            "first_seq": events.first_seq,
            "last_seq": events.last_seq,
            "sha256": events.sha256,
        },
        "checkpoints": {
            "file": CHECKPOINTS_FILE,
            "count": notes.rows,
            "sha256": notes.sha256,
            "covering": _describe(covering),
        },
        "anchor": anchor.to_json(),
    }
    dump_json(manifest, out / MANIFEST_FILE)
    return manifest


def _range(session: Session, since: datetime | None, until: datetime | None) -> SeqRange:
    """The sequence numbers from the first event at or after `since` to the last before
    `until`: every event in between is exported, whatever its timestamp."""
    first_q = select(func.min(AuditEvent.seq))
    last_q = select(func.max(AuditEvent.seq))
    if since is not None:
        first_q = first_q.where(AuditEvent.occurred_at >= since)
    if until is not None:
        last_q = last_q.where(AuditEvent.occurred_at < until)
    first, last = session.scalar(first_q), session.scalar(last_q)
    if first is None or last is None or last < first:
        head = session.scalar(select(func.max(AuditEvent.seq))) or 0
        return SeqRange(head + 1, head)
    return SeqRange(first, last)


def _covering(session: Session, span: SeqRange) -> AuditCheckpoint | None:
    """The smallest checkpoint at or past the export's last event."""
    return session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tree_size >= max(span.last, 1))
        .order_by(AuditCheckpoint.tree_size)
        .limit(1)
    )


def _prefix(session: Session, size: int) -> Frontier:
    """The Merkle frontier of the first `size` events: the last checkpoint's, extended."""
    base = session.scalar(
        select(AuditCheckpoint)
        .where(AuditCheckpoint.tree_size <= size)
        .order_by(AuditCheckpoint.tree_size.desc())
        .limit(1)
    )
    frontier = Frontier.from_json(base.frontier) if base else Frontier()
    for seq, digest in entry_hashes(session, frontier.size, size):
        if seq != frontier.size + 1:
            raise ExportError(f"event {frontier.size + 1} is missing: no anchor before the range")
        frontier.append(leaf_hash(bytes.fromhex(digest)))
    if frontier.size != size:
        raise ExportError(f"events up to {size} are missing: no anchor before the range")
    return frontier


def _suffix(session: Session, span: SeqRange, covering: AuditCheckpoint | None) -> list[str]:
    """Entry hashes after the export up to its covering checkpoint."""
    if covering is None:
        return []
    return [digest for _, digest in entry_hashes(session, span.last, covering.tree_size)]


def entry_hashes(session: Session, after: int, upto: int) -> Iterator[tuple[int, str]]:
    """The sequence numbers and entry hashes of events after..upto in order, read in batches."""
    while after < upto:
        batch = session.execute(
            select(AuditEvent.seq, AuditEvent.entry_hash)
            .where(AuditEvent.seq > after, AuditEvent.seq <= upto)
            .order_by(AuditEvent.seq)
            .limit(BATCH)
        ).all()
        if not batch:
            return
        yield from ((seq, digest) for seq, digest in batch)
        after = batch[-1][0]


def _rows(session: Session, span: SeqRange) -> Iterator[dict[str, Any]]:
    """Export rows of the range in sequence order, read in batches."""
    return (export_row(event) for event in events_in_order(session, span.first - 1, span.last))


def events_in_order(session: Session, after: int, upto: int | None = None) -> Iterator[AuditEvent]:
    """Events after..upto (no upper bound when None) in sequence order, read in batches, each
    batch detached from the session once read."""
    while upto is None or after < upto:
        query = select(AuditEvent).where(AuditEvent.seq > after)
        if upto is not None:
            query = query.where(AuditEvent.seq <= upto)
        batch = list(session.scalars(query.order_by(AuditEvent.seq).limit(BATCH)))
        if not batch:
            return
        yield from batch
        after = batch[-1].seq
        session.expunge_all()


def export_row(event: AuditEvent) -> dict[str, Any]:
    """An event as exported: its hashed body plus its two link fields."""
    return {**event_body(event), "prev_hash": event.prev_hash, "entry_hash": event.entry_hash}


def _notes(session: Session, upto: int | None) -> Iterator[str]:
    query = select(AuditCheckpoint.note).order_by(AuditCheckpoint.tree_size)
    if upto is not None:
        query = query.where(AuditCheckpoint.tree_size <= upto)
    yield from session.scalars(query)


def _describe(checkpoint: AuditCheckpoint | None) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    return {
        "size": checkpoint.tree_size,
        "root": checkpoint.root_hash,
        "head_hash": checkpoint.head_hash,
        "key_name": checkpoint.key_name,
        "key_id": checkpoint.key_id,
    }


def prove_event(session: Session, seq: int, *, size: int | None = None) -> dict[str, Any]:
    """An inclusion proof of event `seq` in a checkpoint (default the first that covers it)."""
    query = select(AuditCheckpoint).where(AuditCheckpoint.tree_size >= seq)
    if size is not None:
        query = select(AuditCheckpoint).where(AuditCheckpoint.tree_size == size)
    checkpoint = session.scalar(query.order_by(AuditCheckpoint.tree_size).limit(1))
    event = session.get(AuditEvent, seq)
    if event is None:
        raise ExportError(f"no event with sequence number {seq}")
    if checkpoint is None or checkpoint.tree_size < seq:
        which = f" of size {size}" if size is not None else ""
        raise ExportError(
            f"no checkpoint{which} covers event {seq} yet (airlock audit checkpoint signs one)"
        )
    size, prefix = checkpoint.tree_size, pruned_prefix(session)
    try:
        leaves = leaf_hashes(session, prefix.size, size)
        proof = inclusion_proof(leaves, seq - 1, size, prefix=prefix)
    except ValueError as exc:
        raise ExportError(f"events of the checkpoint of size {size} are missing: {exc}") from None
    return proof_document(export_row(event), size, proof, checkpoint.note)


def pruned_prefix(session: Session) -> Frontier:
    """The Merkle frontier of the events pruned away (empty when none were): the one the
    checkpoint at the cut recorded."""
    first = session.scalar(select(func.min(AuditEvent.seq))) or 1
    if first == 1:
        return Frontier()
    cut = session.get(AuditCheckpoint, first - 1)
    if cut is None:
        raise ExportError(f"events before {first} were pruned and no checkpoint marks the cut")
    return Frontier.from_json(cut.frontier)


def leaf_hashes(session: Session, after: int, size: int) -> Iterator[bytes]:
    """The leaf hashes of events after..size, streamed; refuses a gap."""
    for position, (seq, digest) in enumerate(entry_hashes(session, after, size), after + 1):
        if seq != position:
            raise ExportError(f"event {position} is missing: no proof in this checkpoint")
        yield leaf_hash(bytes.fromhex(digest))
