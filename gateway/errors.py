"""Domain errors: raised by services, mapped to each surface's dialect in one table per surface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AirlockError(Exception):
    """Base of every error a client may see; `code` is stable and machine-readable."""

    code = "error"
    title = "Error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}


class InvalidInput(AirlockError):
    """The request is well-formed HTTP but its content is invalid."""

    code = "invalid_input"
    title = "Invalid input"

    def __init__(self, detail: str, *, errors: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(detail, extra={"errors": list(errors)})


class PolicyInvalid(InvalidInput):
    """A release policy failed validation; `errors` carry path, line and message."""

    code = "policy_invalid"
    title = "Release policy is invalid"


class AuthenticationRequired(AirlockError):
    """No credentials were given where they are needed."""

    code = "authentication_required"
    title = "Authentication required"


class InvalidCredentials(AirlockError):
    """The token is unknown, expired or revoked."""

    code = "invalid_credentials"
    title = "Invalid credentials"


class Forbidden(AirlockError):
    """The caller is known but lacks the role or scope."""

    code = "forbidden"
    title = "Forbidden"


class NotFound(AirlockError):
    """The thing does not exist, or the caller may not know that it does."""

    code = "not_found"
    title = "Not found"


class RepoNotFound(NotFound):
    """A model that does not exist or is invisible to the caller."""

    code = "repo_not_found"


class RevisionNotFound(NotFound):
    """A revision name or commit id that does not exist."""

    code = "revision_not_found"


class EntryNotFound(NotFound):
    """A file that does not exist or lies outside the caller's grant."""

    code = "entry_not_found"


class AccessDenied(AirlockError):
    """The policy engine (or a grant's state) refuses access; carries the reasons."""

    code = "access_denied"
    title = "Access denied"

    def __init__(
        self,
        detail: str,
        *,
        reasons: Sequence[dict[str, Any]] = (),
        apply_url: str | None = None,
        authenticated: bool = True,
    ) -> None:
        super().__init__(detail, extra={"reasons": list(reasons), "apply_url": apply_url})
        self.reasons = list(reasons)
        self.apply_url = apply_url
        self.authenticated = authenticated


class Conflict(AirlockError):
    """The request conflicts with the current state."""

    code = "conflict"
    title = "Conflict"


class RateLimited(AirlockError):
    """A limit of the caller's grant or tier is exhausted."""

    code = "rate_limited"
    title = "Rate limit exceeded"

    def __init__(self, detail: str, *, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(detail, extra={"retry_after": retry_after})
        self.retry_after = retry_after
        self.headers = headers


class QuotaExhausted(RateLimited):
    """A calendar quota (tokens per month) is spent until its period ends."""

    code = "insufficient_quota"
    title = "Quota exhausted"


class PayloadTooLarge(AirlockError):
    """The body exceeds the allowed size."""

    code = "payload_too_large"
    title = "Payload too large"


class ServiceUnavailable(AirlockError):
    """A dependency of the decision is down; we fail closed."""

    code = "service_unavailable"
    title = "Service unavailable"


class StorageUnavailable(ServiceUnavailable):
    """The object store cannot be reached or refuses our credentials."""

    code = "storage_unavailable"
    title = "Storage unavailable"


class ArtifactMissing(AirlockError):
    """Stored bytes that should exist do not."""

    code = "artifact_missing"
    title = "Artifact missing"


class UploadMissing(ArtifactMissing):
    """A multipart upload the object store no longer knows (completed, aborted or expired)."""

    code = "upload_missing"


class WebhookRejected(AirlockError):
    """A provider callback whose signature is missing, malformed, stale or wrong; `reason` says
    which (nothing of it is stored)."""

    code = "webhook_rejected"
    title = "Webhook rejected"

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail, extra={"reason": reason})
        self.reason = reason


class KycProviderUnavailable(ServiceUnavailable):
    """A KYC provider's API cannot be reached or answered with an error."""

    code = "kyc_provider_unavailable"
    title = "KYC provider unavailable"


class UpstreamFailed(AirlockError):
    """A model's inference upstream failed; `status` is what we answer (502, 503 or 504)."""

    code = "upstream_error"
    title = "Upstream failed"

    def __init__(self, detail: str, *, status: int = 502) -> None:
        super().__init__(detail)
        self.status = status
