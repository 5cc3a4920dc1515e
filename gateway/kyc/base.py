"""The provider-neutral KYC adapter interface and normalized result."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from policies import KycLevel


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


class KycProvider(Protocol):
    """A KYC vendor (Persona, Stripe Identity, Onfido) or the built-in manual reviewer flow."""

    name: str

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> str:
        """Begin a verification; returns the hosted-flow URL to send the user to."""
        ...

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """The authoritative, normalized result for a verification."""
        ...
