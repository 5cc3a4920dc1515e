"""Operations endpoints and the OpenAPI document."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, jsonify, request

from gateway.api.context import airlock
from gateway.api.errors import problem
from gateway.api.spec import openapi_document
from gateway.observability.metrics import exposition
from gateway.observability.readiness import ReadinessProbe

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: database, Redis, storage and broker each answered within the timeout."""
    probe: ReadinessProbe = current_app.extensions["airlock_readiness"]
    result = probe.run()
    response = jsonify(result.to_dict())
    if not result.ready:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return response


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of this process, or of every process sharing the metrics directory."""
    settings = airlock().settings
    if settings.metrics_token and not _bearer_matches(settings.metrics_token):
        response = problem(
            401,
            "Authentication required",
            "/metrics needs its bearer token",
            "authentication_required",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="airlock-metrics"'
        return response
    body, content_type = exposition(settings.metrics_dir, airlock().audit_outbox)
    return Response(body, content_type=content_type)


def _bearer_matches(token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.encode(), token.encode())


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of /api/v1, generated from the validating schemas."""
    return jsonify(openapi_document("Airlock API", "1"))
