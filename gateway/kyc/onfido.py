"""Onfido: Studio workflow runs through a hosted link, `X-SHA2-Signature` webhooks, reports."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gateway.errors import InvalidInput, KycProviderUnavailable, WebhookRejected
from gateway.kyc import normalize as n
from gateway.kyc.base import KycFacts, KycSession, KycStatus, WebhookEvent
from gateway.kyc.http import ProviderApi, segment
from gateway.kyc.signatures import verify_plain
from gateway.settings import KycProviderSettings
from policies import KycLevel

SIGNATURE_HEADER = "X-SHA2-Signature"
LEGACY_HEADER = "X-Signature"  # HMAC-SHA1, superseded: refused
STATUSES = {
    "awaiting_input": KycStatus.PENDING,
    "processing": KycStatus.PENDING,
    "approved": KycStatus.APPROVED,
    "declined": KycStatus.DECLINED,
    "review": KycStatus.REVIEW,
    "abandoned": KycStatus.EXPIRED,
    "error": KycStatus.RETRY,
}
WATCHLISTS = ("watchlist_aml", "watchlist_enhanced", "watchlist_standard")


class OnfidoProvider:
    """Onfido workflow runs; the workflow run id is the provider reference."""

    name = "onfido"

    def __init__(self, config: KycProviderSettings, *, timeout: float) -> None:
        self.config = config
        self.api = ProviderApi(
            self.name,
            config.api_url,
            headers={"Authorization": f"Token token={config.api_key}"},
            timeout=timeout,
        )

    def start(self, *, user_id: int, level: KycLevel, return_url: str) -> KycSession:
        """Create an applicant and a workflow run of the configured workflow, with a link."""
        applicant = self.api.post_json(
            "/applicants", {"first_name": "Airlock", "last_name": f"user {user_id}"}
        )
        applicant_id = applicant.get("id")
        if not isinstance(applicant_id, str) or not applicant_id:
            raise KycProviderUnavailable("Onfido did not return an applicant id")
        run = self.api.post_json(
            "/workflow_runs",
            {
                "workflow_id": self.config.flow_id,
                "applicant_id": applicant_id,
                "customer_user_id": f"airlock-user-{user_id}",
                "link": {"completed_redirect_url": return_url},
            },
        )
        run_id, url = run.get("id"), n.dig(run, "link", "url")
        if not isinstance(run_id, str) or not run_id:
            raise KycProviderUnavailable("Onfido did not return a workflow run id")
        if not isinstance(url, str) or not url.startswith("https://"):
            raise KycProviderUnavailable("Onfido did not return a hosted-flow link")
        return KycSession(provider_ref=run_id, url=url)

    def verify_webhook(self, headers: Mapping[str, str], raw_body: bytes, now: datetime) -> None:
        """Hex HMAC-SHA256 of the raw body under a webhook token; no timestamp is signed."""
        value = headers.get(SIGNATURE_HEADER.lower())
        if not value:
            if headers.get(LEGACY_HEADER.lower()):
                raise WebhookRejected(
                    "the SHA-1 X-Signature is not accepted; send X-SHA2-Signature",
                    reason="unsupported_algorithm",
                )
            raise WebhookRejected(
                f"the {SIGNATURE_HEADER} header is missing", reason="missing_signature"
            )
        verify_plain(value, raw_body, self.config.webhook_secrets, name=SIGNATURE_HEADER)

    def parse_event(self, raw_body: bytes) -> WebhookEvent:
        """Onfido payloads carry no event id: the action, object and completion time name one."""
        body = n.load_json(raw_body)
        action = n.required_text(body, "payload", "action")
        run_id = n.required_text(body, "payload", "object", "id")
        stamp = n.required_text(body, "payload", "object", "completed_at_iso8601")
        occurred = n.iso_time(stamp)
        if occurred is None:
            raise InvalidInput("payload.object.completed_at_iso8601 is not a timestamp")
        return WebhookEvent(
            event_id=f"{action}:{run_id}:{stamp}"[:200],
            type=action,
            provider_ref=run_id,
            occurred_at=occurred,
        )

    def fetch_result(self, provider_ref: str) -> KycFacts:
        """The workflow run's decision, the applicant's address and the latest check's reports."""
        run = self.api.get(f"/workflow_runs/{segment(provider_ref)}")
        status = STATUSES.get(str(run.get("status")), KycStatus.REVIEW)
        applicant_id = run.get("applicant_id")
        applicant, reports = {}, []
        if isinstance(applicant_id, str) and applicant_id:
            applicant = self.api.get(f"/applicants/{segment(applicant_id)}")
            reports = self._latest_reports(applicant_id)
        document = next((r for r in reports if r.get("name") == "document"), {})
        watchlist = next((r for r in reports if r.get("name") in WATCHLISTS), {})
        properties = document.get("properties") or {}
        residence = n.country(n.dig(applicant, "address", "country"))
        return KycFacts(
            provider=self.name,
            provider_ref=provider_ref,
            status=status,
            level=KycLevel.IDENTITY if status == KycStatus.APPROVED else KycLevel.NONE,
            nationality=n.country(properties.get("nationality")),
            residence_country=residence,
            residence_subdivision=n.subdivision(residence, n.dig(applicant, "address", "state")),
            document_country=n.country(properties.get("issuing_country")),
            document_type=_text(properties.get("document_type")),
            expires_at=n.day_end(n.iso_date(properties.get("date_of_expiry"))),
            sanctions_hit=_hit(watchlist.get("result")),
            screened_at=n.iso_time(watchlist.get("created_at")),
            checked_at=n.iso_time(run.get("updated_at")),
        )

    def _latest_reports(self, applicant_id: str) -> list[dict[str, Any]]:
        checks = self.api.get("/checks", {"applicant_id": applicant_id}).get("checks")
        if not isinstance(checks, list) or not checks or not isinstance(checks[0], dict):
            return []
        check_id = checks[0].get("id")  # Onfido lists an applicant's checks newest first
        if not isinstance(check_id, str):
            return []
        reports = self.api.get("/reports", {"check_id": check_id}).get("reports")
        return [r for r in reports if isinstance(r, dict)] if isinstance(reports, list) else []


def _hit(result: Any) -> bool | None:
    """A watchlist report's result: `clear`, or `consider` (a possible match)."""
    return {"clear": False, "consider": True}.get(result) if isinstance(result, str) else None


def _text(value: Any) -> str | None:
    return value[:32] if isinstance(value, str) and value else None
