"""The baseline: a bare Flask app served exactly like the gateway (same server, same client)."""

from __future__ import annotations

from flask import Flask, Response

BODY = b"ok\n"


def create_app() -> Flask:
    """The resolve route answering 200 with a small body: no auth, no database, no hooks."""
    app = Flask(__name__)

    @app.route("/<org>/<name>/resolve/<path:rest>", methods=["GET", "HEAD"])
    def resolve(org: str, name: str, rest: str) -> Response:
        return Response(BODY, mimetype="text/plain")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(BODY, mimetype="text/plain")

    return app
