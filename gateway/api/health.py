"""Operations endpoints and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from gateway.api.context import db
from gateway.api.spec import openapi_document

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: the database answers (an error here becomes 503 via the error table)."""
    db().execute(text("SELECT 1"))
    return jsonify({"status": "ready"})


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of /api/v1, generated from the validating schemas."""
    return jsonify(openapi_document("Airlock API", "1"))
