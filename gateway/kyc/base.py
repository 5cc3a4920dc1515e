"""The provider-neutral KYC adapter interface and normalized result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from policies import KycLevel


class KycStatus(StrEnum):
    """Normalized verification statuses, kept sorted."""

    APPROVED = "approved"
    DECLINED = "declined"
    EXPIRED = "expired"
    PENDING = "pending"
    RETRY = "retry"
    REVIEW = "review"


TERMINAL = frozenset({KycStatus.APPROVED, KycStatus.DECLINED, KycStatus.EXPIRED})


@dataclass(frozen=True)
class KycFacts:
    """Normalized facts of a verification: never raw documents."""

    provider: str
    provider_ref: str
    status: str
    level: KycLevel
    nationality: str | None = None
    residence_country: str | None = None
    residence_subdivision: str | None = None
    document_country: str | None = None
    sanctions_hit: bool | None = None
    screened_at: datetime | None = None
    expires_at: datetime | None = None
    checked_at: datetime | None = None
    document_type: str | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class KycSession:
    """A verification begun at a provider: its reference and the hosted-flow URL."""

    provider_ref: str
    url: str


@dataclass(frozen=True)
class WebhookEvent:
    """What a verified callback says happened; the result itself is always re-fetched."""

    event_id: str
    type: str
    provider_ref: str
    occurred_at: datetime


class KycProvider(Protocol):
    """A KYC vendor (Persona, Stripe Identity, Onfido) or the built-in manual reviewer flow."""

    name: str

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> KycSession:
        """Begin a verification; returns its reference and the hosted-flow URL."""
        ...

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes, now: datetime) -> None:
        """Raise WebhookRejected unless the callback carries a valid signature (`headers`
        keyed in lower case)."""
        ...

    def parse_event(self, raw_body: bytes) -> WebhookEvent:
        """The event id, type, verification reference and time of a verified callback."""
        ...

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """The authoritative, normalized result for a verification."""
        ...
