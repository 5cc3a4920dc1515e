"""Domain errors to HTTP, in one table; each surface renders its clients' dialect."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, g, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException

from gateway import errors as e

log = logging.getLogger(__name__)

STATUS: dict[type[e.AirlockError], int] = {
    e.AccessDenied: 403,
    e.ArtifactMissing: 503,
    e.AuthenticationRequired: 401,
    e.Conflict: 409,
    e.EntryNotFound: 404,
    e.Forbidden: 403,
    e.InvalidCredentials: 401,
    e.InvalidInput: 422,
    e.KycProviderUnavailable: 503,
    e.NotFound: 404,
    e.PayloadTooLarge: 413,
    e.PolicyInvalid: 422,
    e.RateLimited: 429,
    e.RepoNotFound: 404,
    e.RevisionNotFound: 404,
    e.ServiceUnavailable: 503,
    e.StorageUnavailable: 503,
    e.UpstreamFailed: 502,
    e.WebhookRejected: 400,
}
HTTP_CODES = {413: "payload_too_large"}  # Werkzeug's names where a domain code already exists
HUB_MAX_RETRY_WAIT = 60
OPENAI_CODES: dict[type[e.AirlockError], str] = {  # OpenAI's codes, where the SDK expects one
    e.AuthenticationRequired: "invalid_api_key",
    e.InvalidCredentials: "invalid_api_key",
    e.InvalidInput: "invalid_request_error",
    e.NotFound: "model_not_found",
    e.QuotaExhausted: "insufficient_quota",  # before RateLimited, its base class
    e.RateLimited: "rate_limit_exceeded",
}
# Which denial reasons make a 403 `jurisdiction_blocked` or `kyc_required` (checked in order);
# any other denial is `model_not_permitted`.
OPENAI_DENIAL_CODES = (
    ("jurisdiction_blocked", ("jurisdiction_", "sanctions_", "signal_")),
    ("kyc_required", ("kyc_",)),
)
API_KEY_MESSAGE = (
    "Incorrect or missing API key: send a live Airlock API token (alk_...) as the API key."
)
HUB_CODES: dict[type[e.AirlockError], str] = {
    e.AccessDenied: "GatedRepo",
    e.EntryNotFound: "EntryNotFound",
    e.RepoNotFound: "RepoNotFound",
    e.RevisionNotFound: "RevisionNotFound",
}


def status_of(exc: e.AirlockError) -> int:
    """The HTTP status for a domain error (most specific class wins)."""
    if isinstance(exc, e.AccessDenied) and not exc.authenticated:
        return 401
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def is_hub_request() -> bool:
    """Whether this request belongs to the Hugging Face-compatible surface."""
    return request.blueprint in ("hub", "blobs")


def problem(status: int, title: str, detail: str, code: str, **extra: Any) -> Response:
    """An RFC 9457 problem-details response."""
    body = {
        "type": f"https://airlock.dev/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": g.get("request_id"),
        **extra,
    }
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    return response


def hub_error(status: int, code: str | None, message: str) -> Response:
    """The Hub dialect: X-Error-Code and X-Error-Message headers plus {"error": ...}."""
    response = jsonify({"error": message})
    response.status_code = status
    if code:
        response.headers["X-Error-Code"] = code
    response.headers["X-Error-Message"] = _header_safe(message)
    return response


def is_openai_request() -> bool:
    """Whether this request belongs to the OpenAI-compatible surface (routed or not)."""
    return request.blueprint == "inference" or request.path.startswith("/v1/")


def openai_error(status: int, message: str, code: str | None, param: str | None = None) -> Response:
    """The OpenAI dialect: {"error": {"message", "type", "param", "code"}}."""
    kind = "invalid_request_error"
    if code == "insufficient_quota":
        kind = code  # OpenAI's type for a spent budget, as well as its code
    elif status == 429:
        kind = "requests"
    elif status >= 500:
        kind = "server_error"
    body = {"message": message, "type": kind, "param": param, "code": code}
    response = jsonify({"error": body})
    response.status_code = status
    return response


def _openai(exc: e.AirlockError, status: int) -> Response:
    if status == 401:
        return openai_error(401, API_KEY_MESSAGE, "invalid_api_key")
    if isinstance(exc, e.UpstreamFailed):
        return openai_error(exc.status, exc.detail, exc.code)
    if isinstance(exc, e.AccessDenied):
        return openai_error(403, exc.detail, _denial_code(exc.reasons))
    if isinstance(exc, e.InvalidInput):
        status = 400  # OpenAI has no 422: the SDK raises BadRequestError on 400
    code = next((c for cls, c in OPENAI_CODES.items() if isinstance(exc, cls)), exc.code)
    return openai_error(status, exc.detail, code)


def _denial_code(reasons: list[dict[str, Any]]) -> str:
    codes = [str(r.get("code", "")) for r in reasons]
    for code, prefixes in OPENAI_DENIAL_CODES:
        if any(c.startswith(prefixes) for c in codes):
            return code
    return "model_not_permitted"


def render(exc: e.AirlockError) -> Response:
    """Render a domain error for the surface the request came in on."""
    status = status_of(exc)
    if is_openai_request():
        response = _openai(exc, status)
    elif is_hub_request():
        code = next((c for cls, c in HUB_CODES.items() if isinstance(exc, cls)), None)
        if isinstance(exc, e.RateLimited) and exc.retry_after > HUB_MAX_RETRY_WAIT:
            # Hub clients sleep out any Retry-After, however long: a quota that resets in hours
            # is a refusal the researcher should read now, not a wait.
            status, code = 403, "GatedRepo"
        response = hub_error(status, code, exc.detail)
    else:
        response = problem(status, exc.title, exc.detail, exc.code, **exc.extra)
    if isinstance(exc, e.RateLimited):
        response.headers.update(exc.headers)
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, e.ServiceUnavailable | e.ArtifactMissing):
        response.headers["Retry-After"] = "5"
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="airlock"'
    return response


def render_http(exc: HTTPException) -> Response:
    """Werkzeug's own errors (unknown route, wrong method, body too large) in our dialects."""
    status = exc.code or 500
    code = HTTP_CODES.get(status) or (exc.name or "error").lower().replace(" ", "_")
    if is_openai_request():
        return openai_error(status, exc.description or exc.name, code)
    if is_hub_request():
        return hub_error(status, None, exc.description or exc.name)
    response = problem(status, exc.name, exc.description or exc.name, code)
    if status == 405 and exc.response is None:
        response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
    return response


def render_unexpected(exc: Exception) -> Response:
    """Never show internals: a database outage is 503 (fail closed), anything else 500."""
    if isinstance(exc, OperationalError):
        log.error("database unavailable: %s", type(exc).__name__)
        return render(e.ServiceUnavailable("the database is unavailable; nothing was authorized"))
    if isinstance(exc, IntegrityError):  # a concurrent request won a uniqueness race
        log.warning("integrity error on %s %s", request.method, request.path)
        return render(e.Conflict("the request conflicts with a concurrent change; retry it"))
    log.exception("unexpected error on %s %s", request.method, request.path)
    if is_openai_request():
        return openai_error(500, "an unexpected error occurred", "internal_error")
    if is_hub_request():
        return hub_error(500, None, "internal error")
    return problem(500, "Internal error", "an unexpected error occurred", "internal_error")


def _header_safe(message: str) -> str:
    return message.encode("latin-1", "replace").decode("latin-1").replace("\n", " ")[:2000]
