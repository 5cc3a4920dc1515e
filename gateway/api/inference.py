"""The OpenAI-compatible surface (/v1): list models, chat completions, completions, embeddings.

The wire contract is the shared protocol note `openai.md`; errors are OpenAI's
`{"error": {...}}` bodies (rendered in `gateway.api.errors`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from gateway.api.context import airlock, db, principal, request_country
from gateway.db.engine import begin_reads
from gateway.errors import InvalidInput
from gateway.services.inference import Admission, openai_ratelimit_headers

bp = Blueprint("inference", __name__, url_prefix="/v1")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.get("/models")
def list_models() -> Response:
    begin_reads(db())
    models = airlock().inference.permitted_models(
        db(), principal=principal(), request_country=request_country()
    )
    data = [
        {
            "id": m.repo_id,
            "object": "model",
            "created": int(m.created_at.timestamp()),
            "owned_by": m.org_slug,
        }
        for m in models
    ]
    return jsonify({"object": "list", "data": data})


@bp.post("/chat/completions")
def chat_completions() -> Response:
    return _relay("/chat/completions", streams=True)


@bp.post("/completions")
def completions() -> Response:
    return _relay("/completions", streams=True)


@bp.post("/embeddings")
def embeddings() -> Response:
    return _relay("/embeddings", streams=False)


def _relay(path: str, *, streams: bool) -> Response:
    body = _body()
    admission, sent = _admit(path, body)
    service = airlock().inference
    limits = openai_ratelimit_headers(admission.limit)
    if streams and body.get("stream") is True:
        events = service.open_stream(admission, path, sent)
        headers = {**SSE_HEADERS, **limits}
        return Response(events, mimetype="text/event-stream", headers=headers)
    answer = service.complete(admission, path, sent)
    return Response(answer, mimetype="application/json", headers=limits)


def _admit(path: str, body: dict[str, Any]) -> tuple[Admission, dict[str, Any]]:
    """Authorize the body's model and charge its limits; the body to send upstream."""
    session = db()
    begin_reads(session)  # a refusal's audit ends these reads and writes in a new transaction
    service = airlock().inference
    admission = service.admit(
        session, principal=principal(), repo_id=body["model"], request_country=request_country()
    )
    charged = service.charge(session, admission, path, body)
    session.rollback()  # nothing to write: release the connection before a long upstream call
    return charged


def _body() -> dict[str, Any]:
    """The JSON object body, with a string `model`; 400 otherwise."""
    found = request.get_json(silent=True)
    if not isinstance(found, dict):
        raise InvalidInput("the request body must be a JSON object")
    model = found.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("you must provide a model parameter")
    return found
