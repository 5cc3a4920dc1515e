"""Querying and verifying the audit log."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.audit import ChainReport, verify_chain
from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent, AuditHead, Model, Organization, User
from gateway.errors import Forbidden
from gateway.services.principal import Principal
from gateway.services.retention import anchor_of, anchor_problem, pruned_anchor

VERIFY_BATCH = 5000


@dataclass(frozen=True)
class AuditFilter:
    """Filters over the audit log; None means any."""

    action: str | None = None
    effect: str | None = None
    actor: str | None = None
    subject: str | None = None
    repo_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class AuditLogService:
    """Compliance reads of the audit log, confined to the caller's organizations."""

    def query(
        self,
        session: Session,
        *,
        principal: Principal,
        filters: AuditFilter,
        cursor: int | None,
        limit: int,
    ) -> tuple[list[AuditEvent], int | None]:
        """A page of events in sequence order after `cursor`, and the next cursor."""
        orgs = principal.orgs_with_scope(Scope.AUDIT_READ)
        if not orgs:
            principal.require_scope(Scope.AUDIT_READ)
            raise Forbidden("no compliance role in any organization")
        query = select(AuditEvent).where(AuditEvent.org_id.in_(orgs))
        query = self._apply(session, query, filters)
        if cursor is not None:
            query = query.where(AuditEvent.seq > cursor)
        rows = list(session.scalars(query.order_by(AuditEvent.seq).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, rows[-1].seq if more and rows else None

    def _apply(self, session: Session, query, filters: AuditFilter):  # type: ignore[no-untyped-def]
        f = filters
        if f.action:
            query = query.where(AuditEvent.action == f.action)
        if f.effect:
            query = query.where(AuditEvent.effect == f.effect)
        if f.since:
            query = query.where(AuditEvent.occurred_at >= f.since)
        if f.until:
            query = query.where(AuditEvent.occurred_at < f.until)
        if f.actor:
            query = query.where(AuditEvent.actor_id == _user_id(session, f.actor))
        if f.subject:
            query = query.where(AuditEvent.subject_user_id == _user_id(session, f.subject))
        if f.repo_id:
            query = query.where(AuditEvent.model_id == _model_id(session, f.repo_id))
        return query

    def verify(self, session: Session) -> ChainReport:
        """Verify the chain in the database, from the pruned horizon if any, against its head."""
        head = session.get_one(AuditHead, 1)
        anchor = pruned_anchor(session)
        problem = anchor_problem(session, anchor)
        if anchor is not None and problem is not None:
            return ChainReport(False, 0, anchor.cut_seq, anchor.cut_seq + 1, problem)
        return verify_chain(
            _all_events(session),
            head_seq=head.seq,
            head_hash=head.entry_hash,
            after=anchor_of(anchor),
        )


def _all_events(session: Session) -> Iterator[AuditEvent]:
    last = 0
    while True:
        batch = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.seq > last)
                .order_by(AuditEvent.seq)
                .limit(VERIFY_BATCH)
            )
        )
        if not batch:
            return
        yield from batch
        last = batch[-1].seq
        session.expunge_all()


def _user_id(session: Session, username: str) -> int:
    return session.scalar(select(User.id).where(User.username == username)) or -1


def _model_id(session: Session, repo_id: str) -> int:
    org, _, name = repo_id.partition("/")
    found = session.scalar(
        select(Model.id).join(Organization).where(Organization.slug == org, Model.name == name)
    )
    return found or -1
