"""Forwarding the audit chain to a SIEM, at least once, from a durable cursor.

A run reads the events after the cursor in sequence order, hands a batch to the sink, and only
once the sink accepted it advances the cursor (compare-and-set, in its own short transaction).
No transaction is open while the sink works. A crash between the sink's acceptance and the
cursor's commit sends that batch again on the next run: the at-least-once window is one batch
(`metadata.uid`, the entry hash, identifies duplicates). Never called from a request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from gateway.audit.chain import ROW_FIELDS
from gateway.audit.forward import Sink, lines_of
from gateway.db.engine import Database, begin_read_only
from gateway.db.models import AuditEvent, AuditForwardCursor, utcnow

log = logging.getLogger(__name__)

CURSOR = "siem"
BATCH = 500


@dataclass(frozen=True)
class Forwarded:
    """What one run delivered: events sent and the cursor it left."""

    events: int
    cursor: int


class ForwardingService:
    """Delivers the events after the cursor to a sink, batch by batch."""

    def __init__(self, *, batch: int = BATCH, name: str = CURSOR) -> None:
        self.batch, self.name = batch, name

    def forward(self, db: Database, sink: Sink, *, max_batches: int = 100) -> Forwarded:
        """Send up to `max_batches` batches; stop early when the chain is drained."""
        sent, cursor = 0, self.cursor(db)
        for _ in range(max_batches):
            events = self._read(db, cursor)
            if not events:
                break
            sink.send(lines_of(events))  # raises SinkError: the cursor stays where it was
            last = int(events[-1]["seq"])
            if not self._advance(db, cursor, last):
                log.warning("audit forwarding cursor moved under this run; stopping")
                break
            sent, cursor = sent + len(events), last
        return Forwarded(sent, cursor)

    def cursor(self, db: Database) -> int:
        """The last sequence number the sink accepted (0: none yet)."""
        with db.session() as session:
            begin_read_only(session)
            found = session.scalar(
                select(AuditForwardCursor.seq).where(AuditForwardCursor.name == self.name)
            )
            session.commit()
        return int(found or 0)

    def _read(self, db: Database, after: int) -> list[dict[str, Any]]:
        columns = [getattr(AuditEvent, name) for name in ROW_FIELDS]
        with db.session() as session:
            begin_read_only(session)
            rows = session.execute(
                select(*columns)
                .where(AuditEvent.seq > after)
                .order_by(AuditEvent.seq)
                .limit(self.batch)
            ).all()
            session.commit()
        if rows and rows[0].seq != after + 1:
            log.warning(
                "audit forwarding: events %d to %d are gone (pruned)", after + 1, rows[0].seq - 1
            )
        return [dict(row._mapping) for row in rows]

    def _advance(self, db: Database, old: int, new: int) -> bool:
        """Move the cursor from `old` to `new`; False when another run moved it first."""
        with db.session() as session:
            moved = _compare_and_set(session, self.name, old, new)
            session.commit()
        return moved


def _compare_and_set(session: Session, name: str, old: int, new: int) -> bool:
    if old == 0 and session.get(AuditForwardCursor, name) is None:
        session.execute(insert(AuditForwardCursor).values(name=name, seq=new, updated_at=utcnow()))
        return True
    result = session.execute(
        update(AuditForwardCursor)
        .where(AuditForwardCursor.name == name, AuditForwardCursor.seq == old)
        .values(seq=new, updated_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
