"""The Flask application factory."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from flask import Flask, Request, Response, g, request
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.exceptions import HTTPException

from gateway.api import BLUEPRINTS
from gateway.api.auth import TokenAuthenticator
from gateway.api.context import close_session, db, unproxied
from gateway.api.errors import render, render_http, render_unexpected
from gateway.errors import AirlockError, InvalidCredentials
from gateway.observability import metrics
from gateway.observability.logs import REQUEST_ID, configure_logging
from gateway.observability.readiness import ReadinessProbe
from gateway.services.container import Airlock, build_airlock
from gateway.services.principal import Principal
from gateway.settings import Settings, load_settings
from gateway.web import WEB_BLUEPRINTS, init_web

REQUEST_ID_HEADERS = ("X-Request-Id", "X-Amzn-Trace-Id")
# The same headers as WSGI environ keys: read without building a Headers view per request.
REQUEST_ID_KEYS = tuple("HTTP_" + h.upper().replace("-", "_") for h in REQUEST_ID_HEADERS)
DEFAULT_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"))
access_log = logging.getLogger("gateway.access")


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
    services.audit_outbox.retry_waiting()  # what an earlier process spooled: retried from now
    app.extensions["airlock_auth"] = TokenAuthenticator(_authenticator(services))
    app.extensions["airlock_readiness"] = ReadinessProbe(services)
    metrics.check_mode(services.settings.metrics_dir)
    for blueprint in (*BLUEPRINTS, *WEB_BLUEPRINTS):
        app.register_blueprint(blueprint)
    init_web(app, services)
    app.before_request(_assign_request_id)
    app.after_request(_after)
    app.teardown_request(_leave_request)
    app.teardown_appcontext(close_session)
    app.register_error_handler(AirlockError, render)
    app.register_error_handler(HTTPException, render_http)
    app.register_error_handler(Exception, render_unexpected)
    configure_logging(log_format=services.settings.log_format, level=services.settings.log_level)
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
    state = unproxied(g)  # one proxy lookup, not six
    current: Request = unproxied(request)
    state.started = time.perf_counter()
    state.surface = surface = metrics.surface_of(current.endpoint)
    metrics.in_progress(surface).inc()
    environ = current.environ
    incoming = next((environ[k] for k in REQUEST_ID_KEYS if k in environ), "")
    request_id = incoming[:128] if incoming.isprintable() and incoming else secrets.token_hex(12)
    state.request_id = request_id
    state.request_id_token = REQUEST_ID.set(request_id)


def _after(response: Response) -> Response:
    """Observe, then the default headers (one hook: Flask wraps each hook call per request)."""
    return _finish_response(_observe(response))


def _finish_response(response: Response) -> Response:
    headers = response.headers
    present = {name.lower() for name, _ in headers.items()}  # one scan, not one per header
    if "x-request-id" not in present:
        headers.add("X-Request-Id", unproxied(g).get("request_id", ""))
    for name, value in DEFAULT_HEADERS:
        if name.lower() not in present:
            headers.add(name, value)
    return response


def _observe(response: Response) -> Response:
    """Count the request and write its access-log line (the path only: queries hold signatures)."""
    state = unproxied(g)
    current: Request = unproxied(request)
    seconds = time.perf_counter() - state.get("started", time.perf_counter())
    surface = state.get("surface", "other")
    method, status = current.method, response.status_code
    metrics.observe_request(surface, method, status, seconds)
    if not access_log.isEnabledFor(logging.INFO):  # the line's arguments cost when it is off
        return response
    caller = state.get("principal")
    path = current.path
    access_log.info(
        "%s %s %s %.1fms",
        method,
        path,
        status,
        seconds * 1000,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            "surface": surface,
            "principal_id": caller.user_id if caller is not None else None,
            "request_id": state.get("request_id"),
        },
    )
    return response


def _leave_request(_exc: BaseException | None = None) -> None:
    state = unproxied(g)
    surface = state.get("surface")
    if surface is not None:
        metrics.in_progress(surface).dec()
    token = state.pop("request_id_token", None)
    if token is not None:
        try:
            REQUEST_ID.reset(token)
        except ValueError:  # torn down in another context than it was set in
            REQUEST_ID.set(None)
