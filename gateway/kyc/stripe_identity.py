"""Stripe Identity: VerificationSessions, `Stripe-Signature` webhooks, expanded reports."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

from gateway.errors import InvalidInput, KycProviderUnavailable
from gateway.kyc import normalize as n
from gateway.kyc.base import KycFacts, KycSession, KycStatus, WebhookEvent
from gateway.kyc.http import ProviderApi, segment
from gateway.kyc.signatures import header, verify_timestamped
from gateway.settings import KycProviderSettings
from policies import KycLevel

SIGNATURE_HEADER = "Stripe-Signature"
SESSIONS = "/v1/identity/verification_sessions"


class StripeIdentityProvider:
    """Stripe Identity document checks; the VerificationSession id is the provider reference.

    Stripe screens no sanctions lists: `sanctions_hit` stays unknown, which policies requiring a
    screening treat as missing (review), never as clear."""

    name = "stripe_identity"

    def __init__(self, config: KycProviderSettings, *, timeout: float) -> None:
        self.config = config
        self.api = ProviderApi(
            self.name,
            config.api_url,
            headers={"Authorization": f"Bearer {config.api_key}"},
            timeout=timeout,
        )

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> KycSession:
        """Create a document VerificationSession; its `url` is the hosted flow."""
        created = self.api.post_form(
            SESSIONS,
            {
                "type": "document",
                "return_url": return_url,
                "client_reference_id": f"airlock-user-{user_id}",
                "options[document][require_matching_selfie]": "true",
            },
        )
        session_id, url = created.get("id"), created.get("url")
        if not isinstance(session_id, str) or not session_id:
            raise KycProviderUnavailable("Stripe did not return a VerificationSession id")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise KycProviderUnavailable("Stripe did not return a hosted-flow URL")
        return KycSession(provider_ref=session_id, url=url)

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes, now: datetime) -> None:
        """`t=<unix>,v1=<hex>[,v1=...]` (one v1 per active endpoint secret), 300 s tolerance."""
        value = header(headers, SIGNATURE_HEADER)
        verify_timestamped(value, raw_body, self.config.webhook_secrets, now, name=SIGNATURE_HEADER)

    def parse_event(self, raw_body: bytes) -> WebhookEvent:
        """An Event whose `data.object` is the VerificationSession."""
        body = n.load_json(raw_body)
        occurred = n.unix_time(body.get("created"))
        if occurred is None:
            raise InvalidInput("the callback body lacks created")
        return WebhookEvent(
            event_id=n.required_text(body, "id"),
            type=n.required_text(body, "type"),
            provider_ref=n.required_text(body, "data", "object", "id"),
            occurred_at=occurred,
        )

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """The session with its verified outputs and last verification report expanded."""
        found = self.api.get(
            f"{SESSIONS}/{segment(provider_ref)}",
            {"expand[]": ["verified_outputs", "last_verification_report"]},
        )
        status = _status(found)
        document = n.dig(found, "last_verification_report", "document") or {}
        address = n.dig(found, "verified_outputs", "address") or {}
        residence = n.country(address.get("country"))
        return KycFacts(
            provider=self.name,
            provider_ref=provider_ref,
            status=status,
            level=KycLevel.IDENTITY if status == KycStatus.APPROVED else KycLevel.NONE,
            residence_country=residence,
            residence_subdivision=n.subdivision(residence, address.get("state")),
            document_country=n.country(document.get("issuing_country")),
            document_type=document.get("type") if isinstance(document.get("type"), str) else None,
            expires_at=n.day_end(_stripe_date(document.get("expiration_date"))),
            checked_at=n.unix_time(n.dig(found, "last_verification_report", "created")),
            reasons=_reasons(found),
        )


def _status(session: dict[str, Any]) -> KycStatus:
    """requires_input is a retry once an attempt failed; canceled sessions are expired."""
    status = session.get("status")
    if status == "verified":
        return KycStatus.APPROVED
    if status == "canceled":
        return KycStatus.EXPIRED
    if status == "requires_input" and session.get("last_error"):
        return KycStatus.RETRY
    return KycStatus.PENDING


def _reasons(session: dict[str, Any]) -> tuple[str, ...]:
    code = n.dig(session, "last_error", "code")
    return (f"stripe:{code[:60]}",) if isinstance(code, str) and code else ()


def _stripe_date(value: Any) -> date | None:
    """Stripe's `{day, month, year}` objects."""
    if not isinstance(value, dict):
        return None
    try:
        return date(int(value["year"]), int(value["month"]), int(value["day"]))
    except (KeyError, TypeError, ValueError):
        return None
