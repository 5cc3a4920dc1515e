"""Helpers for driving the web pages with Flask's test client: sign in, read CSRF tokens."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from gateway.db.models import User
from gateway.services.container import Airlock
from gateway.services.web_auth import WebAuthService

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
TOKEN_FIELD = re.compile(r'name="token" value="([^"]*)"')


def web_auth(airlock: Airlock) -> WebAuthService:
    """The sign-in service as the app builds it."""
    return WebAuthService.from_settings(airlock.settings, identity=airlock.identity)


def login_link(airlock: Airlock, username: str, ttl: timedelta | None = None) -> str:
    """A fresh one-time link's path for `username`."""
    with airlock.db.session() as session:
        user = session.scalars(select(User).where(User.username == username)).one()
        token = web_auth(airlock).issue_link(session, user=user, ttl=ttl)
    return f"/ui/login/link?token={token}"


def redeem(client: FlaskClient, link: str) -> TestResponse:
    """Open a login link, then press its page's button, as a person does: the POST's answer."""
    opened = client.get(link)
    assert opened.status_code == 200, opened.text[:500]
    found = TOKEN_FIELD.search(opened.text)
    assert found, opened.text[:500]
    return client.post("/ui/login/link", data={"token": html.unescape(found.group(1))})


def sign_in(client: FlaskClient, airlock: Airlock, username: str) -> None:
    """Sign the client's browser in as `username` through a login link."""
    response = redeem(client, login_link(airlock, username))
    assert response.status_code == 302, response.text


def csrf_of(client: FlaskClient, path: str = "/ui/") -> str:
    """The CSRF token printed in a page's forms."""
    response = client.get(path)
    found = CSRF.search(response.text)
    assert found, response.text[:500]
    return found.group(1)
