"""The manual provider: a reviewer records a verification with evidence notes."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from gateway.errors import InvalidInput, WebhookRejected
from gateway.kyc.base import KycFacts, KycSession, WebhookEvent
from policies import KycLevel


class ManualProvider:
    """No hosted flow: reviewers check evidence out of band and record the facts."""

    name = "manual"

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> KycSession:
        """Manual verification has no hosted flow; the caller is told to contact a reviewer."""
        raise InvalidInput("manual verification is recorded by a reviewer; there is no hosted flow")

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes, now: datetime) -> None:
        """Manual verifications never arrive by webhook."""
        raise WebhookRejected("the manual provider has no webhook", reason="unsupported_provider")

    def parse_event(self, raw_body: bytes) -> WebhookEvent:
        """Manual verifications never arrive by webhook."""
        raise InvalidInput("the manual provider has no webhook")

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """Manual results are recorded directly; there is nothing to fetch."""
        raise InvalidInput("manual verifications are not fetched")
