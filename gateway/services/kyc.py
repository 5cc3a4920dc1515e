"""KYC through providers: start a hosted flow, accept signed webhooks, apply fetched results.

Results go through a monotonic state machine: an event older than the newest one applied
changes nothing, and a terminal status (approved, declined, expired) is only replaced by a
newer terminal one, never reopened.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.audit import AuditAction, AuditRecorder
from gateway.db.models import KycVerification, KycWebhookEvent, utcnow
from gateway.errors import InvalidInput, NotFound
from gateway.kyc import KycFacts, KycProvider, KycStatus
from gateway.kyc.base import TERMINAL
from gateway.kyc.dedup import SeenEvents
from gateway.services.principal import Principal
from gateway.tasks import TaskRunner
from gateway.tasks.catalog import KYC_TASK, REEVALUATE_USER_TASK
from gateway.tasks.runner import enqueue_after_commit
from policies import KycLevel

PROVIDER_LEVEL = KycLevel.IDENTITY  # what a document check can establish; not an institution


@dataclass(frozen=True)
class Started:
    """A verification begun at a provider."""

    verification: KycVerification
    url: str


@dataclass(frozen=True)
class Accepted:
    """A verified callback: queued for processing, or a redelivery dropped."""

    provider: str
    event_id: str
    duplicate: bool


class KycService:
    """Starts provider verifications, accepts their webhooks and applies their results."""

    def __init__(
        self,
        *,
        audit: AuditRecorder,
        runner: TaskRunner,
        providers: Mapping[str, KycProvider],
        seen: SeenEvents,
        validity: timedelta,
    ) -> None:
        self.audit = audit
        self.runner = runner
        self.providers = dict(providers)
        self.seen = seen
        self.validity = validity

    def close(self) -> None:
        """Release the de-duplication connection pool."""
        self.seen.close()

    def provider(self, name: str) -> KycProvider:
        """An enabled provider by name, else a 404 (disabled ones do not exist to callers)."""
        found = self.providers.get(name)
        if found is None:
            raise NotFound(f"no KYC provider '{name[:40]}' is enabled")
        return found

    def start(
        self,
        session: Session,
        *,
        principal: Principal,
        provider: str,
        level: KycLevel,
        return_url: str,
    ) -> Started:
        """Begin a verification at a provider for the caller; returns the hosted-flow URL."""
        user_id = principal.require_user()
        adapter = self.provider(provider)
        if level.rank > PROVIDER_LEVEL.rank:
            raise InvalidInput(f"providers verify up to '{PROVIDER_LEVEL}'; '{level}' is recorded")
        begun = adapter.start(user_id=user_id, level=level, return_url=return_url)
        row = KycVerification(
            user_id=user_id,
            provider=provider,
            provider_ref=begun.provider_ref,
            status=str(KycStatus.PENDING),
            level=str(KycLevel.NONE),
            requested_level=str(level),
            updated_at=utcnow(),
        )
        session.add(row)
        session.flush()
        self.audit.record(
            session,
            AuditAction.KYC_START,
            actor_id=user_id,
            subject_user_id=user_id,
            payload={
                "verification_id": row.id,
                "provider": provider,
                "provider_ref": begun.provider_ref,
                "requested_level": str(level),
            },
        )
        session.commit()
        return Started(row, begun.url)

    def list_mine(self, session: Session, *, principal: Principal) -> list[KycVerification]:
        """The caller's verifications, newest first."""
        user_id = principal.require_user()
        query = select(KycVerification).where(KycVerification.user_id == user_id)
        return list(session.scalars(query.order_by(KycVerification.id.desc()).limit(100)))

    def accept_webhook(
        self,
        session: Session,
        *,
        provider: str,
        headers: Mapping[str, str],
        raw_body: bytes,
        now: datetime,
    ) -> Accepted:
        """Verify a callback's signature, keep it once per event id, queue its processing."""
        adapter = self.provider(provider)
        adapter.verify_webhook({k.lower(): v for k, v in headers.items()}, raw_body, now)
        event = adapter.parse_event(raw_body)
        if self.seen.seen(provider, event.event_id):
            return Accepted(provider, event.event_id, duplicate=True)
        values = {
            "provider": provider,
            "event_id": event.event_id,
            "event_type": event.type[:100],
            "provider_ref": event.provider_ref,
            "occurred_at": event.occurred_at,
            "received_at": now,
        }
        row_id = session.execute(_insert_new(session, values)).scalar()
        if row_id is None:
            session.rollback()
            return Accepted(provider, event.event_id, duplicate=True)
        enqueue_after_commit(session, self.runner, KYC_TASK, {"event_id": row_id})
        session.commit()
        self.seen.remember(provider, event.event_id)
        return Accepted(provider, event.event_id, duplicate=False)

    def pending_event(self, session: Session, event_id: int) -> KycWebhookEvent | None:
        """The event if it still needs a fetch: unprocessed, of a known verification, and not
        older than the newest event already applied to it (else it is closed here)."""
        event = session.get(KycWebhookEvent, event_id)
        if event is None or event.processed_at is not None:
            return None
        row = self._verification(session, event.provider, event.provider_ref)
        if row is None:
            return self._close(event, "unknown")
        if row.event_at is not None and event.occurred_at < row.event_at:
            return self._close(event, "stale")
        return event

    def apply_event(self, session: Session, *, event_id: int, facts: KycFacts) -> str:
        """Apply a fetched result for an event through the state machine; returns the outcome."""
        event = session.get(KycWebhookEvent, event_id, with_for_update=True)
        if event is None or event.processed_at is not None:
            return "done"
        row = self._verification(session, event.provider, event.provider_ref, lock=True)
        if row is None:
            outcome = "unknown"
        else:
            outcome = self.transition(session, row, facts=facts, event_at=event.occurred_at)
        self._close(event, outcome)
        session.commit()
        return outcome

    def transition(
        self, session: Session, row: KycVerification, *, facts: KycFacts, event_at: datetime
    ) -> str:
        """Move a verification to `facts` if the state machine allows; audit every change."""
        current = KycStatus(row.status)
        new = KycStatus(facts.status)
        if row.event_at is not None and event_at < row.event_at:
            return "stale"
        newer = row.event_at is None or event_at > row.event_at
        if current in TERMINAL and not (new in TERMINAL and newer):
            return "stale"
        facts = self._bounded(facts)
        before = _snapshot(row)
        _write(row, facts)
        row.event_at = max(event_at, row.event_at or event_at)
        if _snapshot(row) == before:
            return "unchanged"
        self._audit(session, row, previous=str(current))
        # The user's grants and pending requests are judged anew with the new facts.
        enqueue_after_commit(session, self.runner, REEVALUATE_USER_TASK, {"user_id": row.user_id})
        return "applied"

    def _bounded(self, facts: KycFacts) -> KycFacts:
        """Approved results expire with the document or after the validity period, if sooner;
        only approvals carry a level."""
        if facts.status != KycStatus.APPROVED:
            return replace(facts, level=KycLevel.NONE)
        checked = facts.checked_at or utcnow()
        lapse = checked + self.validity
        expires = min(facts.expires_at, lapse) if facts.expires_at else lapse
        return replace(facts, level=min(facts.level, PROVIDER_LEVEL, key=_rank), expires_at=expires)

    def _verification(
        self, session: Session, provider: str, ref: str, *, lock: bool = False
    ) -> KycVerification | None:
        query = select(KycVerification).where(
            KycVerification.provider == provider, KycVerification.provider_ref == ref
        )
        if lock:
            query = query.with_for_update()
        return session.scalars(query.order_by(KycVerification.id).limit(1)).first()

    @staticmethod
    def _close(event: KycWebhookEvent, outcome: str) -> None:
        event.processed_at = utcnow()
        event.outcome = outcome

    def _audit(self, session: Session, row: KycVerification, *, previous: str) -> None:
        self.audit.record(
            session,
            AuditAction.KYC_VERIFY,
            actor_id=None,
            subject_user_id=row.user_id,
            effect="allow" if row.status == KycStatus.APPROVED else "deny",
            payload={
                "verification_id": row.id,
                "provider": row.provider,
                "provider_ref": row.provider_ref,
                "from": previous,
                **_snapshot(row),
            },
        )


def _rank(level: KycLevel) -> int:
    return level.rank


def _insert_new(session: Session, values: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, on PostgreSQL or SQLite."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return (
        insert(KycWebhookEvent)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["provider", "event_id"])
        .returning(KycWebhookEvent.id)
    )


def _write(row: KycVerification, facts: KycFacts) -> None:
    """Keep only the normalized facts."""
    row.status = str(facts.status)
    row.level = str(facts.level)
    row.nationality = facts.nationality
    row.residence_country = facts.residence_country
    row.residence_subdivision = facts.residence_subdivision
    row.document_country = facts.document_country
    row.document_type = facts.document_type
    row.sanctions_hit = facts.sanctions_hit
    row.screened_at = facts.screened_at
    row.expires_at = facts.expires_at
    if facts.status == KycStatus.APPROVED:
        row.verified_at = facts.checked_at or utcnow()
    row.updated_at = utcnow()


def _snapshot(row: KycVerification) -> dict[str, Any]:
    return {
        "status": row.status,
        "level": row.level,
        "nationality": row.nationality,
        "residence_country": row.residence_country,
        "residence_subdivision": row.residence_subdivision,
        "document_country": row.document_country,
        "document_type": row.document_type,
        "sanctions_hit": row.sanctions_hit,
        "screened_at": row.screened_at,
        "expires_at": row.expires_at,
    }
