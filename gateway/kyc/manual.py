"""The manual provider: a reviewer records a verification with evidence notes."""

from __future__ import annotations

from gateway.errors import InvalidInput
from gateway.kyc.base import KycFacts
from policies import KycLevel


class ManualProvider:
    """No hosted flow: reviewers check evidence out of band and record the facts."""

    name = "manual"

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> str:
        """Manual verification has no hosted flow; the caller is told to contact a reviewer."""
        raise InvalidInput("manual verification is recorded by a reviewer; there is no hosted flow")

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """Manual results are recorded directly; there is nothing to fetch."""
        raise InvalidInput("manual verifications are not fetched")
