"""Web sessions, login links, CSRF and security headers, through the test client."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from gateway.app import create_app
from gateway.db.models import AuditEvent, LoginLink, WebSession, utcnow
from gateway.services.container import Airlock
from tests.factories import World
from tests.pg import on_both_engines
from tests.web.webkit import csrf_of, login_link, redeem, sign_in, web_auth

COOKIE = "airlock_session"


@pytest.fixture
def rob(world: World) -> str:
    world.actor("rob")
    return "rob"


@on_both_engines
def test_a_login_link_signs_in_once(
    client: FlaskClient, airlock: Airlock, rob: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    link = login_link(airlock, rob)
    first = redeem(client, link)
    assert first.status_code == 302 and first.location.endswith("/ui/")
    cookie = first.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Signed in as <strong>rob</strong>" in client.get("/ui/").text
    other = Flask.test_client(client.application)
    again = redeem(other, link)
    assert again.status_code == 400
    assert "not valid, was used, or has expired" in again.text
    assert other.get("/ui/").status_code == 302  # still signed out
    secret = link.rsplit("=", 1)[1]
    assert "/ui/login/link" in caplog.text and secret not in caplog.text  # path only is logged


def test_expired_and_tampered_links_are_refused(
    client: FlaskClient, airlock: Airlock, rob: str
) -> None:
    expired = login_link(airlock, rob, ttl=timedelta(seconds=-1))
    assert redeem(client, expired).status_code == 400
    good = login_link(airlock, rob)
    tampered = good[:-3] + ("AAA" if not good.endswith("AAA") else "BBB")
    assert redeem(client, tampered).status_code == 400
    assert redeem(client, "/ui/login/link?token=not-a-link").status_code == 400
    assert client.get("/ui/login/link").status_code == 400
    assert client.get("/ui/").status_code == 302
    assert redeem(client, good).status_code == 302  # the untampered one still works


def test_links_and_sessions_are_stored_hashed(
    client: FlaskClient, airlock: Airlock, rob: str
) -> None:
    link = login_link(airlock, rob)
    redeem(client, link)
    sid = client.get_cookie(COOKIE)
    assert sid is not None
    with airlock.db.session() as session:
        digests = [*session.scalars(select(WebSession.digest))]
        digests += [*session.scalars(select(LoginLink.digest))]
    for stored in digests:
        assert sid.value.encode() not in stored and link.rsplit("=", 1)[1].encode() not in stored


def test_secure_cookie_on_https(airlock: Airlock, rob: str) -> None:
    services = airlock
    object.__setattr__(
        services, "settings", airlock.settings.with_overrides(public_url="https://a.test")
    )
    app = create_app(airlock=services)
    response = redeem(app.test_client(), login_link(airlock, rob))
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("__Host-airlock=") and "Secure" in cookie and "HttpOnly" in cookie


def test_pages_need_sign_in(client: FlaskClient) -> None:
    for path in ("/ui/", "/ui/models", "/ui/requests", "/ui/grants", "/ui/tokens", "/ui/kyc"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert "/ui/login?next=" in response.location


def test_forged_cookie_is_signed_out(client: FlaskClient) -> None:
    client.set_cookie(COOKIE, "forged-session-id")
    assert client.get("/ui/tokens").status_code == 302


@on_both_engines
def test_idle_and_absolute_timeouts(client: FlaskClient, airlock: Airlock, rob: str) -> None:
    sign_in(client, airlock, rob)
    assert client.get("/ui/").status_code == 200
    idle = web_auth(airlock).idle
    with airlock.db.session() as session:
        session.execute(update(WebSession).values(last_seen_at=utcnow() - idle))
        session.commit()
    assert client.get("/ui/").status_code == 302
    sign_in(client, airlock, rob)
    with airlock.db.session() as session:
        session.execute(update(WebSession).values(expires_at=utcnow()))
        session.commit()
    assert client.get("/ui/").status_code == 302
    sign_in(client, airlock, rob)  # a sign-in sweeps the sessions past their end
    with airlock.db.session() as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 1
        ended = select(func.count()).where(WebSession.expires_at <= utcnow())
        assert session.scalar(ended) == 0


@on_both_engines
def test_sign_out_and_sign_out_everywhere(app: Flask, airlock: Airlock, rob: str) -> None:
    laptop, phone = app.test_client(), app.test_client()
    sign_in(laptop, airlock, rob)
    sign_in(phone, airlock, rob)
    response = laptop.post("/ui/logout", data={"csrf_token": csrf_of(laptop)})
    assert response.status_code == 200 and "signed out" in response.text
    assert laptop.get("/ui/").status_code == 302
    assert phone.get("/ui/").status_code == 200
    sign_in(laptop, airlock, rob)
    ended = phone.post("/ui/logout/everywhere", data={"csrf_token": csrf_of(phone)})
    assert "2 sessions ended" in ended.text
    assert laptop.get("/ui/").status_code == 302 and phone.get("/ui/").status_code == 302
    with airlock.db.session() as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0


@pytest.mark.parametrize(
    "path",
    ["/ui/logout", "/ui/logout/everywhere", "/ui/tokens", "/ui/tokens/1/revoke", "/ui/kyc/start"],
)
def test_every_form_refuses_a_missing_or_wrong_csrf_token(
    client: FlaskClient, airlock: Airlock, rob: str, path: str
) -> None:
    sign_in(client, airlock, rob)
    good = csrf_of(client)
    wrong = good[:-1] + ("1" if good.endswith("0") else "0")
    for data in ({}, {"csrf_token": ""}, {"csrf_token": wrong}):
        response = client.post(path, data={**data, "name": "x", "scopes": "models:read"})
        assert response.status_code == 400, (path, data)
        assert "security token" in response.text
    assert client.get("/ui/").status_code == 200  # still signed in: nothing happened


def test_another_sessions_csrf_token_is_refused(app: Flask, airlock: Airlock, rob: str) -> None:
    mine, theirs = app.test_client(), app.test_client()
    sign_in(mine, airlock, rob)
    sign_in(theirs, airlock, rob)
    response = mine.post("/ui/logout", data={"csrf_token": csrf_of(theirs)})
    assert response.status_code == 400


def test_security_headers_on_every_web_response(
    client: FlaskClient, airlock: Airlock, rob: str
) -> None:
    responses = [client.get("/ui/login"), client.get("/ui/no-such-page"), client.get("/ui/")]
    sign_in(client, airlock, rob)
    responses += [client.get("/ui/"), client.post("/ui/logout")]
    responses.append(client.get("/ui/static/airlock.css"))
    for response in responses:
        response.close()
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp
        assert "form-action 'self'" in csp and "style-src 'self'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_no_inline_script_or_style(client: FlaskClient, airlock: Airlock, rob: str) -> None:
    sign_in(client, airlock, rob)
    for path in ("/ui/", "/ui/models", "/ui/tokens", "/ui/kyc", "/ui/requests", "/ui/grants"):
        html = client.get(path).text
        assert "<script" not in html and "<style" not in html and " style=" not in html, path
        assert 'href="#main"' in html  # the skip link
        assert 'name="csrf_token" value=""' not in html, path  # every form carries its token


def test_next_never_leaves_the_site(client: FlaskClient) -> None:
    for target in ("https://evil.test/ui/", "//evil.test/ui", "/ui/\\evil"):
        page = client.get("/ui/login", query_string={"next": target})
        assert "evil" not in page.text


def test_opening_a_link_spends_nothing_until_its_button_is_pressed(
    client: FlaskClient, app: Flask, airlock: Airlock, rob: str
) -> None:
    """Mail scanners and link previews GET links before people do: that must not use them."""
    link = login_link(airlock, rob)
    for _ in range(3):  # a scanner, a preview, the person
        opened = app.test_client().get(link)
        assert opened.status_code == 200
        assert "Set-Cookie" not in opened.headers
        assert opened.headers["Referrer-Policy"] == "no-referrer"
        assert opened.headers["Cache-Control"] == "no-store"
        assert 'method="post" action="/ui/login/link"' in opened.text
    with airlock.db.session() as session:
        assert session.scalars(select(LoginLink.used_at)).one() is None
        assert (
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action.like("session:%"))
            )
            == 0
        )
    assert redeem(client, link).status_code == 302
    assert "Signed in as <strong>rob</strong>" in client.get("/ui/").text


def test_redeeming_needs_the_links_secret_in_the_form(
    client: FlaskClient, airlock: Airlock, rob: str
) -> None:
    link = login_link(airlock, rob)
    secret = link.rsplit("=", 1)[1]
    assert client.post(link).status_code == 400  # in the query string only: not taken
    assert client.post("/ui/login/link", data={"token": ""}).status_code == 400
    assert client.get("/ui/").status_code == 302  # still signed out
    assert client.post("/ui/login/link", data={"token": secret}).status_code == 302
