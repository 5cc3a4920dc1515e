"""Querying and verifying the audit log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, ChainReport, verify_chain
from gateway.audit.chain import ROW_FIELDS
from gateway.audit.facets import FacetName
from gateway.auth.tokens import Scope
from gateway.db.engine import begin_read_only
from gateway.db.models import (
    AccessRequest,
    AuditEvent,
    AuditFacet,
    AuditHead,
    Model,
    Organization,
    User,
)
from gateway.errors import Forbidden, InvalidInput, NotFound
from gateway.services.audit_export import events_in_order
from gateway.services.principal import Principal
from gateway.services.retention import anchor_of, anchor_problem, pruned_anchor

EXPORT_BATCH = 1000
# The columns of an exported row: the hashed fields, then the links.
EXPORT_COLUMNS = tuple(getattr(AuditEvent, name) for name in ROW_FIELDS)


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
    tier: str | None = None
    reason: str | None = None
    country: str | None = None
    party: str | None = None  # a username the event is by or about (actor or subject)


class AuditLogService:
    """Compliance reads of the audit log, confined to what `visible_to` lets the caller read."""

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
        query = select(AuditEvent).where(visible_to(principal))
        query = self._apply(session, query, filters)
        if cursor is not None:
            query = query.where(AuditEvent.seq > cursor)
        rows = list(session.scalars(query.order_by(AuditEvent.seq).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, rows[-1].seq if more and rows else None

    def get(self, session: Session, *, principal: Principal, seq: int) -> AuditEvent:
        """One event the caller may read; any other is as absent as a missing one."""
        visible = visible_to(principal)
        event = session.scalar(select(AuditEvent).where(AuditEvent.seq == seq, visible))
        if event is None:
            raise NotFound(f"no audit event {seq} in your organizations")
        return event

    def timeline(
        self,
        session: Session,
        *,
        principal: Principal,
        filters: AuditFilter,
        cursor: int | None,
        limit: int,
    ) -> tuple[list[AuditEvent], int | None]:
        """One user's (`party`: by or about them) or one model's (`repo_id`) events in order,
        a page at a time."""
        orgs = readable_orgs(principal)
        repo_id = filters.repo_id
        if (filters.party is None) == (repo_id is None):
            raise InvalidInput(
                "give exactly one of user and model",
                errors=[{"path": "user", "message": "give exactly one of user and model"}],
            )
        if repo_id is not None and _model_org(session, repo_id) not in orgs:
            raise NotFound(f"no model '{repo_id}' in your organizations")
        return self.query(session, principal=principal, filters=filters, cursor=cursor, limit=limit)

    def export(
        self,
        sessions: Callable[[], Session],
        *,
        principal: Principal,
        filters: AuditFilter,
        batch: int = EXPORT_BATCH,
    ) -> Iterator[dict[str, Any]]:
        """The matching events as exported rows (hashed fields and links), read a batch of
        sequence numbers at a time, each batch in a session of its own; authorized at once."""
        return self._stream(sessions, visible_to(principal), filters, batch)

    def _stream(
        self,
        sessions: Callable[[], Session],
        visible: ColumnElement[bool],
        filters: AuditFilter,
        batch: int,
    ) -> Iterator[dict[str, Any]]:
        with sessions() as session:
            begin_read_only(session)  # takes no write lock (SQLite): the request may hold one
            head = session.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0
            base = self._apply(session, select(*EXPORT_COLUMNS), filters)
        query = base.where(visible, AuditEvent.seq <= head)
        last = 0
        while True:
            with sessions() as session:
                begin_read_only(session)
                page = query.where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
                rows = session.execute(page).all()
            for row in rows:
                yield dict(row._mapping)
            if len(rows) < batch:
                return
            last = rows[-1].seq

    def _apply(self, session: Session, query: Select[Any], filters: AuditFilter) -> Select[Any]:
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
        if f.party:
            party = _user_id(session, f.party)
            query = query.where(
                or_(AuditEvent.actor_id == party, AuditEvent.subject_user_id == party)
            )
        for name, value in _facets(f):
            query = query.where(AuditEvent.seq.in_(_with_facet(name, value)))
        return query

    def verify(self, session: Session) -> ChainReport:
        """Verify the chain in the database, from the pruned horizon if any, against its head."""
        head = session.get_one(AuditHead, 1)
        anchor = pruned_anchor(session)
        problem = anchor_problem(session, anchor)
        if anchor is not None and problem is not None:
            return ChainReport(False, 0, anchor.cut_seq, anchor.cut_seq + 1, problem)
        return verify_chain(
            events_in_order(session, 0),
            head_seq=head.seq,
            head_hash=head.entry_hash,
            after=anchor_of(anchor),
        )


@dataclass(frozen=True)
class EventNames:
    """The usernames and repository ids an event list's ids stand for."""

    users: dict[int, str]
    models: dict[int, str]
    orgs: dict[int, str]


def event_names(session: Session, events: list[AuditEvent]) -> EventNames:
    """Names for the actors, subjects, models and organizations of `events`."""
    user_ids = {i for e in events for i in (e.actor_id, e.subject_user_id) if i is not None}
    model_ids = {e.model_id for e in events if e.model_id is not None}
    org_ids = {e.org_id for e in events if e.org_id is not None}
    users = session.execute(select(User.id, User.username).where(User.id.in_(user_ids)))
    models = session.execute(
        select(Model.id, Organization.slug, Model.name)
        .join(Organization)
        .where(Model.id.in_(model_ids))
    )
    orgs = session.execute(
        select(Organization.id, Organization.slug).where(Organization.id.in_(org_ids))
    )
    return EventNames(
        users={int(i): str(name) for i, name in users},
        models={i: f"{org}/{name}" for i, org, name in models},
        orgs={int(i): str(slug) for i, slug in orgs},
    )


def visible_to(principal: Principal) -> ColumnElement[bool]:
    """The events a compliance officer may read: those of their organizations, and the
    organization-less ones (tokens, KYC, accounts) about a person (the subject, else the actor)
    who has ever asked one of those organizations for access to a model; Forbidden without the
    role."""
    orgs = readable_orgs(principal)
    applicants = (
        select(AccessRequest.user_id)
        .join(Model, Model.id == AccessRequest.model_id)
        .where(Model.org_id.in_(orgs))
    )
    person = func.coalesce(AuditEvent.subject_user_id, AuditEvent.actor_id)
    return or_(
        AuditEvent.org_id.in_(orgs),
        and_(
            AuditEvent.org_id.is_(None),
            AuditEvent.action.in_(PERSONAL_ACTIONS),
            person.in_(applicants),
        ),
    )


# The organization-less events that concern one person; deployment operations (pack:deploy,
# audit:prune) stay out of every organization's view even when an applicant ran them.
PERSONAL_ACTIONS = tuple(
    str(a)
    for a in (
        AuditAction.KYC_START,
        AuditAction.KYC_VERIFY,
        AuditAction.SESSION_CREATE,
        AuditAction.SESSION_DENY,
        AuditAction.SESSION_END,
        AuditAction.TOKEN_CREATE,
        AuditAction.TOKEN_REVOKE,
        AuditAction.USER_CREATE,
    )
)


def readable_orgs(principal: Principal) -> set[int]:
    """The organizations whose audit the caller may read; Forbidden when there are none."""
    orgs = principal.orgs_with_scope(Scope.AUDIT_READ)
    if not orgs:
        principal.require_scope(Scope.AUDIT_READ)
        raise Forbidden("no compliance role in any organization")
    return orgs


def _facets(f: AuditFilter) -> list[tuple[FacetName, str]]:
    wanted = (
        (FacetName.TIER, f.tier),
        (FacetName.REASON, f.reason),
        (FacetName.COUNTRY, f.country),
    )
    return [(name, value) for name, value in wanted if value]


def _with_facet(name: FacetName, value: str) -> Select[int]:
    return select(AuditFacet.seq).where(AuditFacet.name == str(name), AuditFacet.value == value)


def _model_org(session: Session, repo_id: str) -> int | None:
    org, _, name = repo_id.partition("/")
    return session.scalar(
        select(Model.org_id).join(Organization).where(Organization.slug == org, Model.name == name)
    )


def _user_id(session: Session, username: str) -> int:
    return session.scalar(select(User.id).where(User.username == username)) or -1


def _model_id(session: Session, repo_id: str) -> int:
    org, _, name = repo_id.partition("/")
    found = session.scalar(
        select(Model.id).join(Organization).where(Organization.slug == org, Model.name == name)
    )
    return found or -1
