"""The Flask application factory."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from flask import Flask, Response, g, request
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.exceptions import HTTPException

from gateway.api import BLUEPRINTS
from gateway.api.auth import TokenAuthenticator
from gateway.api.context import close_session, db
from gateway.api.errors import render, render_http, render_unexpected
from gateway.errors import AirlockError, InvalidCredentials
from gateway.services.container import Airlock, build_airlock
from gateway.services.principal import Principal
from gateway.settings import Settings, load_settings

REQUEST_ID_HEADERS = ("X-Request-Id", "X-Amzn-Trace-Id")


def create_app(settings: Settings | None = None, *, airlock: Airlock | None = None) -> Flask:
    """Build a gateway app from settings (read from the environment when omitted)."""
    services = airlock or build_airlock(settings or load_settings())
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=services.settings.secret_key,
        MAX_CONTENT_LENGTH=services.settings.max_body_bytes,
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.session_interface = NoCookieSessions()
    app.extensions["airlock"] = services
    app.extensions["airlock_auth"] = TokenAuthenticator(_authenticator(services))
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.before_request(_assign_request_id)
    app.after_request(_finish_response)
    app.teardown_appcontext(close_session)
    app.register_error_handler(AirlockError, render)
    app.register_error_handler(HTTPException, render_http)
    app.register_error_handler(Exception, render_unexpected)
    logging.getLogger("gateway").setLevel(services.settings.log_level)
    return app


class NoCookieSessions(SessionInterface):
    """Airlock keeps no cookie session (callers present tokens): none is opened or signed per
    request, and writing to `flask.session` fails loudly (Flask's null session)."""

    def open_session(self, app: Flask, request: object) -> SessionMixin | None:
        return None

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None


def _authenticator(services: Airlock) -> Callable[[str], Principal | None]:
    """Token lookup in the request's own session: one transaction per request (no second
    SQLite writer waiting on the first)."""

    def authenticate(token: str) -> Principal | None:
        try:
            return services.identity.authenticate(db(), token)
        except InvalidCredentials:
            return None

    return authenticate


def _assign_request_id() -> None:
    incoming = next((request.headers[h] for h in REQUEST_ID_HEADERS if h in request.headers), "")
    g.request_id = incoming[:128] if incoming.isprintable() and incoming else secrets.token_hex(12)


def _finish_response(response: Response) -> Response:
    response.headers.setdefault("X-Request-Id", g.get("request_id", ""))
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Cache-Control", "no-store")
    return response
