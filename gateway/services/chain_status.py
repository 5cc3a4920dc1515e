"""The audit chain's state for compliance officers: the last signed checkpoint, a bounded
verification run now, and whether one event is in a signed checkpoint by a proof that holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gateway.audit import verify_chain
from gateway.audit.exports import proof_document
from gateway.audit.merkle import Frontier, inclusion_proof
from gateway.audit.notes import NoteError, VerifierKey, open_checkpoint
from gateway.audit.offline import verify_proof
from gateway.db.models import AuditCheckpoint, AuditEvent, AuditHead
from gateway.services.audit_export import (
    ExportError,
    events_in_order,
    export_row,
    leaf_hashes,
    pruned_prefix,
)
from gateway.services.audit_log import AuditLogService, readable_orgs
from gateway.services.checkpoints import CheckpointService
from gateway.services.principal import Principal
from gateway.services.retention import anchor_of, pruned_anchor
from gateway.storage import Storage

# Up to this many events, "verify now" re-hashes the whole chain (as `airlock audit verify`;
# about 2 s on SQLite, bench/chain_status.py); past it, every checkpoint's signature and at most
# this many events after the last one, so a page never waits much longer.
FULL_VERIFY_LIMIT = 20_000


@dataclass(frozen=True)
class ChainState:
    """The chain's head, its last checkpoint and whether that checkpoint's signature holds."""

    head: int
    checkpoint: AuditCheckpoint | None
    signature_ok: bool
    problem: str | None
    current_key: bool

    @property
    def since(self) -> int:
        """Events appended after the last checkpoint."""
        return self.head - (self.checkpoint.tree_size if self.checkpoint else 0)


@dataclass(frozen=True)
class ProofStatus:
    """Whether a signed checkpoint covers an event and the event's inclusion proof verifies."""

    covered: bool
    verified: bool
    tree_size: int | None = None
    problem: str | None = None


@dataclass
class Verification:
    """What a verification run checked, and what it found wrong."""

    full: bool
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether everything checked holds."""
        return not self.problems


class ChainStatusService:
    """Reads and verifies the chain for the compliance role (any of its organizations)."""

    def __init__(
        self,
        *,
        verifiers: tuple[VerifierKey, ...],
        current: VerifierKey | None,
        storage: Storage,
        full_limit: int = FULL_VERIFY_LIMIT,
    ) -> None:
        self.verifiers, self.current, self.storage = verifiers, current, storage
        self.full_limit = full_limit

    def state(self, session: Session, *, principal: Principal) -> ChainState:
        """The head, the last checkpoint and its signature checked now."""
        readable_orgs(principal)
        head = _head(session)
        latest = CheckpointService().latest(session)
        if latest is None:
            return ChainState(head, None, False, "no checkpoint has been signed yet", False)
        problem = self._note_problem(latest)
        current = self.current is not None and latest.key_id == self.current.key_id.hex()
        return ChainState(head, latest, problem is None, problem, current)

    def prove(self, session: Session, *, principal: Principal, seq: int) -> ProofStatus:
        """Event `seq`'s proof in the first checkpoint covering it, verified with the keys."""
        event = AuditLogService().get(session, principal=principal, seq=seq)
        covering = session.scalar(
            select(AuditCheckpoint)
            .where(AuditCheckpoint.tree_size >= seq)
            .order_by(AuditCheckpoint.tree_size)
            .limit(1)
        )
        if covering is None:
            return ProofStatus(covered=False, verified=False)
        size = covering.tree_size
        try:
            prefix = self._prefix(session, seq)
            path = inclusion_proof(
                leaf_hashes(session, prefix.size, size), seq - 1, size, prefix=prefix
            )
        except (ExportError, ValueError) as exc:
            return ProofStatus(True, False, size, f"no proof could be built: {exc}")
        found = verify_proof(
            proof_document(export_row(event), size, path, covering.note), self.verifiers
        )
        return ProofStatus(True, found.ok, size, found.problem)

    def _prefix(self, session: Session, seq: int) -> Frontier:
        """The frontier of the last checkpoint before `seq` (else of the pruned events), so a
        proof reads only the events between two checkpoints."""
        before = CheckpointService().before(session, seq - 1)
        if before is not None:
            return Frontier.from_json(before.frontier)
        return pruned_prefix(session)

    def verify(self, session: Session, *, principal: Principal) -> Verification:
        """Verify now: the whole chain when it is small enough, else every checkpoint's
        signature and the events after the last one; says what was checked."""
        readable_orgs(principal)
        head = _head(session)
        if head <= self.full_limit:
            return self._full(session, head)
        return self._bounded(session, head)

    def _full(self, session: Session, head: int) -> Verification:
        found = Verification(full=True)
        chain = AuditLogService().verify(session)
        if chain.ok:
            found.checked.append(
                f"every one of the {chain.checked} events up to {head} was re-hashed and links "
                "to the one before it and to the recorded head"
            )
        else:
            found.problems.append(_broken(chain.first_bad_seq, chain.problem))
        notes = CheckpointService().verify(session, verifiers=self.verifiers, storage=self.storage)
        found.problems += notes.problems
        found.checked.append(
            f"checkpoints: {notes.checked} signatures checked, their Merkle roots and head hashes "
            f"recomputed from the events, copies in object storage compared: {notes.stored}"
        )
        found.checked += notes.warnings
        return found

    def _bounded(self, session: Session, head: int) -> Verification:
        found = Verification(full=False)
        rows = list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size)))
        found.problems += [p for p in (self._note_problem(r) for r in rows) if p]
        found.checked.append(f"checkpoints: {len(rows)} signatures checked")
        latest = rows[-1] if rows else None
        if (
            latest is not None
            and Frontier.from_json(latest.frontier).root().hex() != latest.root_hash
        ):
            found.problems.append(
                f"checkpoint at size {latest.tree_size}: its frontier is not its root"
            )
        after = (
            (latest.tree_size, latest.head_hash) if latest else anchor_of(pruned_anchor(session))
        )
        tail = head - after[0]
        upto = after[0] + min(tail, self.full_limit)
        report = verify_chain(
            events_in_order(session, after[0], upto),
            head_seq=head if upto == head else None,
            after=after,
        )
        if not report.ok:
            found.problems.append(_broken(report.first_bad_seq, report.problem))
        found.checked.append(
            f"the {report.checked} events after the last checkpoint (up to {upto}) were re-hashed "
            "and link to its signed head hash"
        )
        if upto < head:
            found.checked.append(f"events {upto + 1} to {head} were not checked (too many)")
        found.checked.append(
            f"the {after[0]} events the checkpoints cover were not re-hashed: run "
            "`airlock audit verify` for that"
        )
        return found

    def _note_problem(self, row: AuditCheckpoint) -> str | None:
        if not self.verifiers:
            return "no verifier key is configured: the signature cannot be checked"
        try:
            cp = open_checkpoint(row.note, self.verifiers)
        except NoteError as exc:
            return f"checkpoint at size {row.tree_size}: {exc.reason}"
        if (cp.size, cp.root.hex(), cp.head_hash) != (row.tree_size, row.root_hash, row.head_hash):
            return f"checkpoint at size {row.tree_size}: its signed note states another tree"
        return None


def _broken(seq: int | None, problem: str | None) -> str:
    return f"the chain breaks at event {seq}: {problem}"


def _head(session: Session) -> int:
    found = session.scalar(select(AuditHead.seq).where(AuditHead.id == 1))
    return int(found or session.scalar(select(func.max(AuditEvent.seq))) or 0)
