"""Helpers for driving the web pages with Flask's test client: sign in, read CSRF tokens."""

from __future__ import annotations

import re
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.db.models import User
from gateway.services.container import Airlock
from gateway.services.web_auth import WebAuthService

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def web_auth(airlock: Airlock) -> WebAuthService:
    """The sign-in service as the app builds it."""
    return WebAuthService.from_settings(airlock.settings, identity=airlock.identity)


def login_link(airlock: Airlock, username: str, ttl: timedelta | None = None) -> str:
    """A fresh one-time link's path for `username`."""
    with airlock.db.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        token = web_auth(airlock).issue_link(session, user=user, ttl=ttl)
    return f"/ui/login/link?token={token}"


def sign_in(client: FlaskClient, airlock: Airlock, username: str) -> None:
    """Sign the client's browser in as `username` through a login link."""
    response = client.get(login_link(airlock, username))
    assert response.status_code == 302, response.text


def csrf_of(client: FlaskClient, path: str = "/ui/") -> str:
    """The CSRF token printed in a page's forms."""
    response = client.get(path)
    found = CSRF.search(response.text)
    assert found, response.text[:500]
    return found.group(1)
