"""The domain-separated hash chain: appends under a locked head, verification."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select
from sqlalchemy.orm import Session

from gateway.audit.canonical import (
    BODY_FIELDS,
    GENESIS_HASH,
    body_of,
    canonical_json,
    entry_hash,
    format_timestamp,
)
from gateway.db.engine import begin_one_statement
from gateway.db.group_commit import Batch
from gateway.db.models import AuditEvent, AuditHead, Base, utcnow
from gateway.db.prepared import Prepared
from gateway.observability.metrics import count_decision


class AuditAction(StrEnum):
    """Audit actions, grammar `subject:action`, kept sorted."""

    AUDIT_PRUNE = "audit:prune"
    DOWNLOAD_DENY = "download:deny"
    DOWNLOAD_ISSUE = "download:issue"
    GRANT_CREATE = "grant:create"
    GRANT_DEPROVISION = "grant:deprovision"
    GRANT_EXPIRE = "grant:expire"
    GRANT_PROVISION = "grant:provision"
    GRANT_REINSTATE = "grant:reinstate"
    GRANT_REVOKE = "grant:revoke"
    GRANT_SUSPEND = "grant:suspend"
    INFERENCE_DENY = "inference:deny"
    INFERENCE_SERVE = "inference:serve"
    KYC_START = "kyc:start"
    KYC_VERIFY = "kyc:verify"
    LEGAL_HOLD_PLACE = "legal_hold:place"
    LEGAL_HOLD_RELEASE = "legal_hold:release"
    MEMBERSHIP_ADD = "membership:add"
    MODEL_CREATE = "model:create"
    MODEL_FREEZE = "model:freeze"
    MODEL_TRACE = "model:trace"
    MODEL_UNFREEZE = "model:unfreeze"
    MODEL_UPSTREAM = "model:upstream"
    ORG_CREATE = "org:create"
    PACK_DEPLOY = "pack:deploy"
    POLICY_APPLY = "policy:apply"
    REQUEST_APPROVE = "request:approve"
    REQUEST_CREATE = "request:create"
    REQUEST_DENY = "request:deny"
    REQUEST_REJECT = "request:reject"
    REQUEST_RESET = "request:reset"
    REQUEST_REVIEW = "request:review"
    REVISION_COMMIT = "revision:commit"
    REVISION_OVERRIDE = "revision:override"
    REVISION_VET = "revision:vet"
    SESSION_CREATE = "session:create"
    SESSION_DENY = "session:deny"
    SESSION_END = "session:end"
    TOKEN_CREATE = "token:create"  # noqa: S105 (an action name, not a secret)
    TOKEN_REVOKE = "token:revoke"  # noqa: S105
    USER_CREATE = "user:create"


def event_body(event: AuditEvent) -> dict[str, Any]:
    """The hashed content of an event: everything but its own link fields."""
    return body_of({name: getattr(event, name) for name in BODY_FIELDS})


_head = AuditHead.__table__.c
_events = Base.metadata.tables["audit_events"]
LOCK_HEAD = select(_head.seq, _head.entry_hash).where(_head.id == 1).with_for_update()
# The statements of a SQLite append as prebuilt DBAPI-level executions (every audited request
# makes them): read the head, insert the event; the insert's trigger moves the head (0013).
ROW_FIELDS = (*BODY_FIELDS, "prev_hash", "entry_hash")
_LOCK_HEAD = Prepared(LOCK_HEAD)
_APPEND_EVENT = Prepared(insert(_events).values({k: bindparam(k) for k in ROW_FIELDS}))


class AuditRecorder:
    """Appends events inside the caller's transaction, serialized by the locked head row.

    Plain Core statements on the session's connection: they commit or roll back with whatever
    else the session's transaction holds, and cost a fraction of an ORM unit of work. On
    PostgreSQL the event is chained (sequence number, timestamp, hashes) while the transaction
    commits, so the head is locked only for the commit; on SQLite it is chained at once.
    """

    def record(
        self,
        into: Session | Batch,
        action: AuditAction,
        *,
        actor_id: int | None,
        org_id: int | None = None,
        subject_user_id: int | None = None,
        model_id: int | None = None,
        effect: str | None = None,
        payload: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one event to the chain; it commits or rolls back with the change it records.

        `into` is the session of that change or a group commit's batch
        (gateway/db/group_commit.py); on SQLite a batch's events follow one another from the
        head the batch last saw (read once, or noted by `note_head`)."""
        fields = _fields(action, actor_id, org_id, subject_user_id, model_id, effect, payload)
        batch, conn = (into, into.conn) if isinstance(into, Batch) else (None, into.connection())
        if conn.dialect.name == "postgresql":
            _append_at_commit(conn, fields)
        elif batch is None:
            _insert_event(conn, fields, *_locked_head(conn))  # the trigger moves the head (0013)
        else:
            head = batch.state.get(_BATCH_HEAD) or _locked_head(conn)
            batch.state[_BATCH_HEAD] = _insert_event(conn, fields, *head)
        if effect is not None:
            count_decision(str(action), effect, payload)

    def record_alone(self, sessions: Callable[[], Session], event: Mapping[str, Any]) -> None:
        """Write one event in a transaction of its own (one statement on PostgreSQL): `event`
        holds `record`'s keyword arguments and the action under "action" (as an event is
        spooled to the outbox, gateway/audit/outbox.py)."""
        fields = dict(event)
        action = AuditAction(fields.pop("action"))
        session = sessions()
        try:
            begin_one_statement(session)  # the event is the transaction's only statement
            self.record(session, action, **fields)
            session.commit()
        finally:
            session.close()

    @staticmethod
    def note_head(batch: Batch, seq: int, entry_hash: str) -> None:
        """The head as a statement of the batch just read it (the ticket insert returns it):
        the batch's next event on SQLite follows it without reading it again."""
        batch.state.setdefault(_BATCH_HEAD, (seq, entry_hash))


_BATCH_HEAD = "audit_head"
# Value types canonical JSON keeps as they are (subclasses such as enums take the slow path).
_FLAT = frozenset({str, int, bool, type(None)})


def _fields(
    action: AuditAction,
    actor_id: int | None,
    org_id: int | None,
    subject_user_id: int | None,
    model_id: int | None,
    effect: str | None,
    payload: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """An event's columns but its place in the chain (the payload as its canonical JSON reads:
    a flat payload of strings, integers, booleans and nulls already does)."""
    flat = (
        payload is not None
        and type(payload) is dict
        and all(type(v) in _FLAT for v in payload.values())
    )
    return {
        "action": str(action),
        "actor_id": actor_id,
        "org_id": org_id,
        "subject_user_id": subject_user_id,
        "model_id": model_id,
        "effect": effect,
        "payload": dict(payload or {}) if flat else json.loads(canonical_json(payload or {})),
    }


def _locked_head(conn: Connection) -> tuple[int, str]:
    """The head's sequence number and entry hash (its row locked on PostgreSQL)."""
    head = _LOCK_HEAD.all(conn, {})
    if len(head) != 1:
        raise RuntimeError("the audit head row is missing: the database is not migrated")
    seq, prev = head[0]
    return seq, prev


def _insert_event(conn: Connection, fields: dict[str, Any], seq: int, prev: str) -> tuple[int, str]:
    """Insert the event after (seq, prev); the new end of the chain."""
    row = {"seq": seq + 1, "occurred_at": utcnow(), **fields, "prev_hash": prev}
    row["entry_hash"] = digest = entry_hash(prev, body_of(row))
    _APPEND_EVENT.all(conn, row)
    return seq + 1, digest


# The event's canonical JSON around the two values only the locked head gives. Keys sort as
# ... "model_id", "occurred_at", "org_id", "payload", "seq", "subject_user_id": the first
# `"occurred_at":"` is the top-level one (a string value cannot hold an unescaped quote), and
# the last `,"seq":0,"subject_user_id":` is too (the payload's keys all come before it).
_TIME_KEY = '"occurred_at":"'
_SEQ_KEY = ',"seq":'
_PLACEHOLDER_TIME = datetime(2000, 1, 1, tzinfo=UTC)
_pending = Base.metadata.tables["audit_pending"]
_PENDING_FIELDS = (*BODY_FIELDS[2:], "head", "middle", "tail")
_PEND_EVENT = Prepared(insert(_pending).values({k: bindparam(k) for k in _PENDING_FIELDS}))


def canonical_pieces(fields: Mapping[str, Any]) -> tuple[str, str, str]:
    """(head, middle, tail): canonical_json of the body == head + time + middle + seq + tail."""
    text_ = canonical_json({**fields, "seq": 0, "occurred_at": _PLACEHOLDER_TIME}).decode()
    time_at = text_.index(_TIME_KEY) + len(_TIME_KEY)
    seq_at = text_.rindex(_SEQ_KEY + '0,"subject_user_id":') + len(_SEQ_KEY)
    middle_at = time_at + len(format_timestamp(_PLACEHOLDER_TIME))
    return text_[:time_at], text_[middle_at:seq_at], text_[seq_at + 1 :]


def _append_at_commit(conn: Connection, fields: dict[str, Any]) -> None:
    """PostgreSQL: a pending row, chained by a deferred trigger at commit (migration 0012)."""
    head, middle, tail = canonical_pieces(fields)
    _PEND_EVENT.all(conn, {**fields, "head": head, "middle": middle, "tail": tail})


@dataclass(frozen=True)
class ChainReport:
    """Outcome of verifying a chain: the first bad sequence number and what is wrong."""

    ok: bool
    checked: int
    head_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(
    events: Iterable[AuditEvent],
    *,
    head_seq: int | None = None,
    head_hash: str | None = None,
    after: tuple[int, str] = (0, GENESIS_HASH),
) -> ChainReport:
    """Recompute every link from `after` (seq and entry hash of the last pruned event, or the
    genesis); report the first sequence number whose record does not hold."""
    expected_seq, prev, checked = after[0] + 1, after[1], 0
    for event in events:
        problem = _check_event(event, expected_seq, prev)
        if problem:
            return ChainReport(False, checked, expected_seq - 1, expected_seq, problem)
        prev, expected_seq, checked = event.entry_hash, expected_seq + 1, checked + 1
    last = expected_seq - 1
    if head_seq is not None and (head_seq != last or (head_hash or prev) != prev):
        return ChainReport(
            False,
            checked,
            last,
            last + 1 if head_seq > last else head_seq,
            f"the chain ends at {last} ({prev[:12]}) but the head records "
            f"{head_seq} ({(head_hash or '')[:12]}): events were removed from the tail",
        )
    return ChainReport(True, checked, last)


def _check_event(event: AuditEvent, expected_seq: int, prev: str) -> str | None:
    if event.seq != expected_seq:
        kind = "missing" if event.seq > expected_seq else "duplicated or out of order"
        return f"expected sequence {expected_seq}, found {event.seq}: event {kind}"
    if event.prev_hash != prev:
        return "prev_hash does not link to the previous event (deleted, inserted or reordered)"
    if entry_hash(prev, event_body(event)) != event.entry_hash:
        return "entry_hash does not match the event's content (edited)"
    return None
