"""Per-provider test knowledge: how each signs, what its events say, what its results are."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tests.kyc import standins as si


@dataclass(frozen=True)
class Flavor:
    """One provider as the webhook tests drive it."""

    name: str
    header: str
    timestamped: bool
    event: Callable[[str, str, str, datetime], bytes]
    words: dict[str, str]  # our outcome -> the provider's status word
    expected: dict[str, object]  # normalized facts after approval

    def sign(self, body: bytes, secret: str, at: datetime) -> dict[str, str]:
        """The signature header the provider would send."""
        if self.timestamped:
            return {self.header: si.timestamped(secret, body, int(at.timestamp()))}
        return {self.header: si.hex_hmac(secret, body)}

    def decide(self, apis: si.ProviderApis, ref: str, outcome: str) -> None:
        """Make the provider's API report `outcome` for `ref`."""
        word = self.words[outcome]
        if self.name == "persona":
            apis.persona_result(ref, word)
        elif self.name == "stripe_identity":
            apis.stripe_result(ref, word)
        else:
            apis.onfido_result(ref, word)


PERSONA = Flavor(
    "persona",
    "Persona-Signature",
    True,
    si.persona_event,
    {"approved": "approved", "other_terminal": "declined", "pending": "pending"},
    {
        "nationality": "DE",
        "residence_country": "US",
        "residence_subdivision": "US-CA",
        "document_country": "DE",
        "document_type": "pp",
        "sanctions_hit": False,
    },
)
STRIPE = Flavor(
    "stripe_identity",
    "Stripe-Signature",
    True,
    si.stripe_event,
    {"approved": "verified", "other_terminal": "canceled", "pending": "processing"},
    {
        "nationality": None,
        "residence_country": "FR",
        "residence_subdivision": "FR-IDF",
        "document_country": "FR",
        "document_type": "id_card",
        "sanctions_hit": None,
    },
)
ONFIDO = Flavor(
    "onfido",
    "X-SHA2-Signature",
    False,
    si.onfido_event,
    {"approved": "approved", "other_terminal": "declined", "pending": "processing"},
    {
        "nationality": "GB",
        "residence_country": "GB",
        "residence_subdivision": "GB-ENG",
        "document_country": "GB",
        "document_type": "passport",
        "sanctions_hit": False,
    },
)
FLAVORS = [PERSONA, STRIPE, ONFIDO]
