"""Single sign-on against a real OpenID provider on loopback (Authlib's server components)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.db.models import AuditEvent, OidcIdentity, User
from gateway.services.audit_log import AuditLogService
from gateway.services.container import Airlock, build_airlock
from gateway.settings import Settings
from tests.factories import World
from tests.pg import on_both_engines
from tests.web.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider, running_provider

CALLBACK = "http://airlock.test/ui/login/sso/callback"


@pytest.fixture(scope="module")
def running() -> Iterator[Provider]:
    with running_provider(CALLBACK) as found:
        yield found


@pytest.fixture
def provider(running: Provider) -> Provider:
    running.mode, running.user = "honest", {}
    running.codes.clear()
    return running


@pytest.fixture
def sso(settings: Settings, provider: Provider) -> Iterator[Airlock]:
    services = build_airlock(
        settings.with_overrides(
            oidc_issuer=provider.issuer,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
        )
    )
    yield services
    services.close()


@pytest.fixture
def web(sso: Airlock) -> FlaskClient:
    return create_app(airlock=sso).test_client()


def _to_provider(web: FlaskClient) -> str:
    """Start sign-in at Airlock; return the provider's redirect back (with code and state)."""
    start = web.get("/ui/login/sso")
    assert start.status_code == 302, start.text
    query = parse_qs(urlsplit(start.location).query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    answer = requests.get(start.location, allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text
    assert answer.headers["Location"].startswith(CALLBACK)
    return answer.headers["Location"]


def _back(web: FlaskClient, location: str) -> object:
    return web.get(location.removeprefix("http://airlock.test"))


@on_both_engines
def test_sign_in_by_verified_email_links_the_subject(
    web: FlaskClient, sso: Airlock, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    World(sso).actor("rob")
    provider.sign_in_as("idp-rob-1", "ROB@example.org")
    done = _back(web, _to_provider(web))
    assert done.status_code == 302 and done.location == "/ui/"
    assert "Signed in as <strong>rob</strong>" in web.get("/ui/").text
    with sso.db.session() as session:
        link = session.scalars(select(OidcIdentity)).one()
        assert (link.issuer, link.subject) == (provider.issuer, "idp-rob-1")
    # Next time the stored (issuer, subject) link decides, whatever the email says now.
    provider.sign_in_as("idp-rob-1", "rob@elsewhere.test", verified=False)
    other = create_app(airlock=sso).test_client()
    assert _back(other, _to_provider(other)).status_code == 302
    assert "Signed in as <strong>rob</strong>" in other.get("/ui/").text
    assert CLIENT_SECRET not in caplog.text


def test_unknown_people_get_a_clear_page_and_no_account(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    provider.sign_in_as("idp-zed", "zed@example.org")
    refused = _back(web, _to_provider(web))
    assert refused.status_code == 403
    assert "no Airlock account belongs to this identity" in refused.text
    with sso.db.session() as session:
        assert session.scalar(select(User).where(User.email == "zed@example.org")) is None
    assert web.get("/ui/").status_code == 302


def test_an_unverified_email_is_not_matched(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    World(sso).actor("rob")
    provider.sign_in_as("idp-mallory", "rob@example.org", verified=False)
    refused = _back(web, _to_provider(web))
    assert refused.status_code == 403 and "not verified your email" in refused.text
    assert web.get("/ui/").status_code == 302


@pytest.mark.parametrize(
    "mode", ["wrong_audience", "expired", "wrong_signature", "no_nonce", "wrong_nonce"]
)
def test_bad_id_tokens_are_refused(
    web: FlaskClient, sso: Airlock, provider: Provider, mode: str
) -> None:
    World(sso).actor("rob")
    provider.sign_in_as("idp-rob-1", "rob@example.org")
    provider.mode = mode
    refused = _back(web, _to_provider(web))
    assert refused.status_code == 400, mode
    assert "nothing was signed in" in refused.text
    assert web.get("/ui/").status_code == 302


def test_a_bad_or_replayed_state_is_refused(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    World(sso).actor("rob")
    provider.sign_in_as("idp-rob-1", "rob@example.org")
    location = _to_provider(web)
    forged = location.replace("state=", "state=x")
    assert _back(web, forged).status_code == 400  # and the pending sign-in is spent
    assert _back(web, location).status_code == 400
    location = _to_provider(web)
    assert _back(web, location).status_code == 302
    assert _back(web, location).status_code == 400  # replayed: refused, rob stays signed in
    assert web.get("/ui/").status_code == 200


def test_a_callback_in_another_browser_is_refused(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    World(sso).actor("rob")
    provider.sign_in_as("idp-rob-1", "rob@example.org")
    location = _to_provider(web)
    attacker = create_app(airlock=sso).test_client()
    assert _back(attacker, location).status_code == 400
    assert attacker.get("/ui/").status_code == 302


def test_the_client_secret_is_never_rendered(web: FlaskClient, sso: Airlock, app: Flask) -> None:
    assert CLIENT_SECRET not in repr(sso.settings)
    page = web.get("/ui/login")
    assert "single sign-on" in page.text and CLIENT_SECRET not in page.text
    # without an issuer configured there is no SSO button, and the start page says so
    plain = app.test_client().get("/ui/login/sso")
    assert plain.status_code == 404


def test_an_oidc_sign_in_writes_one_session_create_naming_the_issuer(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    World(sso).actor("rob")
    provider.sign_in_as("idp-rob-1", "rob@example.org")
    assert _back(web, _to_provider(web)).status_code == 302
    with sso.db.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("session:%"))
        ).all()
        rob = session.scalar(select(User.id).where(User.username == "rob"))
        assert [e.action for e in events] == ["session:create"]
        [event] = events
        assert event.actor_id == rob and event.subject_user_id == rob
        assert set(event.payload) == {"method", "issuer", "session"}
        assert event.payload["method"] == "oidc" and event.payload["issuer"] == provider.issuer
        assert len(event.payload["session"]) == 12
        assert AuditLogService().verify(session).ok


def _session_denials(sso: Airlock) -> list[AuditEvent]:
    with sso.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.action == "session:deny")
        return list(session.scalars(query.order_by(AuditEvent.seq)).all())


@on_both_engines
def test_a_verified_identity_refused_for_want_of_an_account_is_audited_without_its_email(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    World(sso).actor("rob")
    provider.sign_in_as("idp-zed", "zed@example.org")
    assert _back(web, _to_provider(web)).status_code == 403
    provider.sign_in_as("idp-zed", "zed@example.org")
    assert _back(web, _to_provider(web)).status_code == 403
    provider.sign_in_as("idp-mallory", "rob@example.org", verified=False)
    assert _back(web, _to_provider(web)).status_code == 403
    zed, again, mallory = _session_denials(sso)
    assert zed.payload["reasons"] == [{"code": "oidc_unknown_account"}]
    assert mallory.payload["reasons"] == [{"code": "oidc_email_unverified"}]
    for event in (zed, again, mallory):
        assert event.effect == "deny" and event.actor_id is None and event.subject_user_id is None
        assert set(event.payload) == {"method", "issuer", "subject_sha256", "reasons"}
        assert event.payload["method"] == "oidc" and event.payload["issuer"] == provider.issuer
        assert "example.org" not in str(event.payload) and "idp-" not in str(event.payload)
    assert zed.payload["subject_sha256"] == again.payload["subject_sha256"]
    assert zed.payload["subject_sha256"] != mallory.payload["subject_sha256"]
    with sso.db.session() as session:
        assert AuditLogService().verify(session).ok
        assert session.scalar(select(User).where(User.email == "zed@example.org")) is None


def test_a_refusal_that_names_no_verified_identity_is_not_audited(
    web: FlaskClient, sso: Airlock, provider: Provider
) -> None:
    """A forged or replayed callback, or a bad ID token, names nobody: logged, not audited."""
    provider.mode = "wrong_signature"
    provider.sign_in_as("idp-rob-1", "rob@example.org")
    assert _back(web, _to_provider(web)).status_code == 400
    assert web.get("/ui/login/sso/callback?state=forged&code=x").status_code == 400
    assert _session_denials(sso) == []
