"""Per-request access to the process's services, the database session and the caller."""

from __future__ import annotations

import functools
from typing import Any

from flask import Flask, Request, current_app, g, request
from sqlalchemy.orm import Session
from werkzeug.sansio.utils import get_current_url

from gateway.db.models import Model
from gateway.services.container import Airlock
from gateway.services.principal import Principal


def airlock() -> Airlock:
    """The services bound to the current app."""
    app: Flask = unproxied(current_app)
    return app.extensions["airlock"]  # type: ignore[no-any-return]


def unproxied(proxy: object) -> Any:
    """The object behind one of Flask's context proxies (current_app, g, request): each attribute
    read through a proxy costs about 1 us, and these helpers run several times a request."""
    return proxy._get_current_object()  # type: ignore[attr-defined]


def db() -> Session:
    """This request's session, opened on first use and closed at teardown."""
    state = unproxied(g)
    session: Session | None = state.get("db_session")
    if session is None:
        session = state.db_session = airlock().db.sessionmaker()
    return session


def close_session(_exc: BaseException | None = None) -> None:
    """Teardown: roll back anything uncommitted and release the connection."""
    session = unproxied(g).pop("db_session", None)
    if session is not None:
        session.close()


def principal() -> Principal:
    """The authenticated caller (anonymous without a token; 401 for a bad one)."""
    state = unproxied(g)
    found: Principal | None = state.get("principal")
    if found is None:
        auth = unproxied(current_app).extensions["airlock_auth"]
        found = state.principal = auth.current()
    return found


def visible_model(org: str, name: str) -> Model:
    """The model `org/name` if the caller may know it exists, else a 404."""
    model = airlock().publishing.get_model(db(), f"{org}/{name}")
    airlock().access.require_visible(principal(), model)
    return model


def base_url() -> str:
    """The absolute public base URL of this deployment."""
    configured = airlock().settings.public_url
    if configured:
        return configured.rstrip("/")
    current: Request = unproxied(request)
    return _host_url(current.scheme, current.host)


@functools.lru_cache(maxsize=64)  # bounded: the Host header is the client's
def _host_url(scheme: str, host: str) -> str:
    """`request.host_url` without its trailing slash: a pure function of scheme and (validated)
    host, so computed once per pair instead of once per request."""
    return get_current_url(scheme, host).rstrip("/")


def request_country() -> str | None:
    """The request's country: a trusted proxy's header, else GeoIP; spoofed headers ignored."""
    current: Request = unproxied(request)
    return airlock().geo.country(current.remote_addr, current.headers)
