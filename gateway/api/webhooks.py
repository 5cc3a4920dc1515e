"""Provider callbacks: `/webhooks/kyc/<provider>`. No bearer token; the signature is the authority.

The raw bytes are read before any JSON parsing (the signature covers them exactly). A callback
is answered once it is verified and stored; the result is re-fetched by a worker.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from gateway.api.context import airlock, db
from gateway.db.models import utcnow

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/kyc/<provider>")
def kyc_callback(provider: str) -> Response:
    """Verify, de-duplicate and queue one KYC provider callback."""
    accepted = airlock().kyc.accept_webhook(
        db(),
        provider=provider,
        headers=dict(request.headers.items()),
        raw_body=request.get_data(cache=False),
        now=utcnow(),
    )
    return jsonify({"received": True, "duplicate": accepted.duplicate})
