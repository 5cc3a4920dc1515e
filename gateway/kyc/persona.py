"""Persona: inquiries through a hosted flow, `Persona-Signature` webhooks, JSON:API results."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.errors import InvalidInput, KycProviderUnavailable
from gateway.kyc import normalize as n
from gateway.kyc.base import KycFacts, KycSession, KycStatus, WebhookEvent
from gateway.kyc.http import ProviderApi, segment
from gateway.kyc.signatures import header, verify_timestamped
from gateway.settings import KycProviderSettings
from policies import KycLevel

SIGNATURE_HEADER = "Persona-Signature"
API_VERSION = "2023-01-05"
STATUSES = {
    "created": KycStatus.PENDING,
    "pending": KycStatus.PENDING,
    "completed": KycStatus.REVIEW,  # checks passed; the decision (approved/declined) follows
    "needs_review": KycStatus.REVIEW,
    "failed": KycStatus.DECLINED,
    "expired": KycStatus.EXPIRED,
    "approved": KycStatus.APPROVED,
    "declined": KycStatus.DECLINED,
}


class PersonaProvider:
    """Persona inquiries; the inquiry id is the provider reference."""

    name = "persona"

    def __init__(self, config: KycProviderSettings, *, timeout: float) -> None:
        self.config = config
        self.api = ProviderApi(
            self.name,
            config.api_url,
            headers={
                "Authorization": f"Bearer {config.api_key}",
                "Persona-Version": API_VERSION,
                "Key-Inflection": "kebab",
            },
            timeout=timeout,
        )

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> KycSession:
        """Create an inquiry from the configured template and a one-time hosted-flow link."""
        attributes = {
            "inquiry-template-id": self.config.flow_id,
            "reference-id": f"airlock-user-{user_id}",
            "redirect-uri": return_url,
        }
        created = self.api.post_json("/inquiries", {"data": {"attributes": attributes}})
        inquiry_id = n.dig(created, "data", "id")
        if not isinstance(inquiry_id, str) or not inquiry_id:
            raise KycProviderUnavailable("Persona did not return an inquiry id")
        link = self.api.post_json(f"/inquiries/{segment(inquiry_id)}/generate-one-time-link", {})
        url = n.dig(link, "meta", "one-time-link")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise KycProviderUnavailable("Persona did not return a hosted-flow link")
        return KycSession(provider_ref=inquiry_id, url=url)

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes, now: datetime) -> None:
        """`t=<unix>,v1=<hex>`, two space-separated pairs while a secret rotates."""
        value = header(headers, SIGNATURE_HEADER)
        verify_timestamped(value, raw_body, self.config.webhook_secrets, now, name=SIGNATURE_HEADER)

    def parse_event(self, raw_body: bytes) -> WebhookEvent:
        """An event object whose payload is the inquiry."""
        body = n.load_json(raw_body)
        occurred = n.iso_time(n.dig(body, "data", "attributes", "created-at"))
        if occurred is None:
            raise InvalidInput("the callback body lacks data.attributes.created-at")
        return WebhookEvent(
            event_id=n.required_text(body, "data", "id"),
            type=n.required_text(body, "data", "attributes", "name"),
            provider_ref=n.required_text(body, "data", "attributes", "payload", "data", "id"),
            occurred_at=occurred,
        )

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """The inquiry with its government-id verification and watchlist report."""
        found = self.api.get(
            f"/inquiries/{segment(provider_ref)}", {"include": "verifications,reports"}
        )
        attributes = n.dig(found, "data", "attributes") or {}
        status = STATUSES.get(str(attributes.get("status")), KycStatus.REVIEW)
        included = n.dig(found, "included") or []
        document = _first(included, "verification/government-id")
        watchlist = _first(included, "report/watchlist")
        residence = n.country(attributes.get("address-country-code"))
        return KycFacts(
            provider=self.name,
            provider_ref=provider_ref,
            status=status,
            level=KycLevel.IDENTITY if status == KycStatus.APPROVED else KycLevel.NONE,
            nationality=n.country(document.get("nationality")),
            residence_country=residence,
            residence_subdivision=n.subdivision(residence, attributes.get("address-subdivision")),
            document_country=n.country(document.get("country-code")),
            document_type=_text(document.get("id-class")),
            expires_at=n.day_end(n.iso_date(document.get("expiration-date"))),
            sanctions_hit=_bool(watchlist.get("has-match")),
            screened_at=n.iso_time(watchlist.get("completed-at")),
            checked_at=n.iso_time(attributes.get("decisioned-at") or attributes.get("updated-at")),
        )


def _first(included: Any, kind: str) -> dict[str, Any]:
    """The attributes of the first included resource of a JSON:API type."""
    for item in included if isinstance(included, list) else []:
        if isinstance(item, dict) and item.get("type") == kind:
            attributes = item.get("attributes")
            return attributes if isinstance(attributes, dict) else {}
    return {}


def _text(value: Any) -> str | None:
    return value[:32] if isinstance(value, str) and value else None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
