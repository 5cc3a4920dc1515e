"""Researcher pages: catalog, tiers and what is missing, the request form, tokens, KYC."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.db.models import AccessRequest, ApiToken, Role
from gateway.services.container import Airlock
from tests.factories import Actor, World, policy_text
from tests.pg import on_both_engines
from tests.web.webkit import csrf_of, sign_in

PAGE = "/ui/models/acme/tiny"


@dataclass
class Cast:
    publisher: Actor
    reviewer: Actor
    researcher: Actor


@pytest.fixture
def cast(world: World) -> Cast:
    publisher = world.actor("alice", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob")
    world.model(publisher)
    return Cast(publisher, reviewer, researcher)


def _request(client: FlaskClient, tier: str, **fields: str) -> object:
    data = {"csrf_token": csrf_of(client, PAGE), "tier": tier, **fields}
    return client.post(PAGE + "/request", data=data)


def test_catalog_and_tiers_in_plain_words(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "rob")
    catalog = client.get("/ui/models").text
    assert 'href="/ui/models/acme/tiny"' in catalog and "weights-manual" in catalog
    page = client.get(PAGE).text
    assert "verification by a reviewer of the publisher" in page
    assert "Accept the agreement &#39;aup&#39;, version 1." in page
    assert "1 reviewer of the publisher must approve" in page
    assert "You still lack:" in page and "kyc_level_insufficient" in page
    assert "Use responsibly." in page  # the agreement's text, beside its checkbox
    assert '<label for="weights-manual-intended_use">' in page


def test_the_request_form_shows_errors_next_to_the_fields(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "rob")
    response = _request(client, "weights-manual")
    assert response.status_code == 400
    html = response.text
    assert re.search(
        r'id="intended_use-errors">\s*<li>Field &#39;intended_use&#39; is required', html
    )
    assert 'id="agreement-errors"' in html and "Accept the agreement" in html
    assert 'aria-invalid="true"' in html


@on_both_engines
def test_a_researcher_requests_and_sees_it_pending_with_reasons(
    client: FlaskClient, airlock: Airlock, world: World, cast: Cast
) -> None:
    world.kyc(cast.reviewer, cast.researcher)
    sign_in(client, airlock, "rob")
    response = _request(
        client, "weights-manual", intended_use="interpretability", agreement="aup@1"
    )
    assert response.status_code == 302
    detail = client.get(response.location).text
    assert "is pending" in detail  # the flash message
    assert "status-pending" in detail and "approval_required" in detail
    assert "kyc_level_met" in detail and "agreement_accepted" in detail
    assert "pending" in client.get("/ui/requests").text
    again = _request(client, "weights-manual", intended_use="again", agreement="aup@1")
    assert again.status_code == 409 and "already pending" in again.text


def test_someone_elses_request_is_not_found(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    rob, otto = app.test_client(), app.test_client()
    world.actor("otto")
    sign_in(rob, airlock, "rob")
    made = _request(rob, "card")
    assert made.status_code == 302
    with airlock.db.session() as session:
        request_id = session.scalars(select(AccessRequest.id)).one()
    sign_in(otto, airlock, "otto")
    assert otto.get(f"/ui/requests/{request_id}").status_code == 404
    assert rob.get(f"/ui/requests/{request_id}").status_code == 200


def test_an_internal_model_is_not_found(
    client: FlaskClient, airlock: Airlock, world: World, cast: Cast
) -> None:
    world.model(cast.publisher, "acme/secret", policy=policy_text("acme/secret", stage="internal"))
    sign_in(client, airlock, "rob")
    assert client.get("/ui/models/acme/secret").status_code == 404
    assert "acme/secret" not in client.get("/ui/models").text
    sign_in(client, airlock, "alice")  # members see their own models
    assert client.get("/ui/models/acme/secret").status_code == 200


def test_tokens_are_shown_once_and_can_be_revoked(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "rob")
    created = client.post(
        "/ui/tokens",
        data={
            "csrf_token": csrf_of(client, "/ui/tokens"),
            "name": "laptop",
            "scopes": ["models:read"],
            "days": "30",
        },
    )
    assert created.status_code == 201
    secret = re.search(r'id="new-token"[^>]*value="(alk_[^"]+)"', created.text)
    assert secret is not None
    listing = client.get("/ui/tokens").text
    assert secret.group(1) not in listing and "laptop" in listing
    with airlock.db.session() as session:
        token_id = session.scalars(select(ApiToken.id).where(ApiToken.name == "laptop")).one()
    revoked = client.post(
        f"/ui/tokens/{token_id}/revoke", data={"csrf_token": csrf_of(client, "/ui/tokens")}
    )
    assert revoked.status_code == 302
    assert "is revoked" in client.get("/ui/tokens").text


def test_token_scopes_beyond_the_users_roles_are_refused(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "rob")
    response = client.post(
        "/ui/tokens",
        data={
            "csrf_token": csrf_of(client, "/ui/tokens"),
            "name": "sneaky",
            "scopes": ["audit:read"],
            "days": "30",
        },
    )
    assert response.status_code == 400 and 'id="scopes-errors"' in response.text
    assert "audit:read" not in client.get("/ui/tokens").text.split("Create a token")[0]


def test_revoking_someone_elses_token_is_not_found(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    with airlock.db.session() as session:
        alices = session.scalars(
            select(ApiToken.id).where(ApiToken.user_id == cast.publisher.user.id)
        ).first()
    sign_in(client, airlock, "rob")
    response = client.post(
        f"/ui/tokens/{alices}/revoke", data={"csrf_token": csrf_of(client, "/ui/tokens")}
    )
    assert response.status_code == 404
    with airlock.db.session() as session:
        token = session.get(ApiToken, alices)
        assert token is not None and token.revoked_at is None


def test_kyc_page_without_providers(client: FlaskClient, airlock: Airlock, cast: Cast) -> None:
    sign_in(client, airlock, "rob")
    page = client.get("/ui/kyc").text
    assert "No identity provider is configured" in page
    refused = client.post(
        "/ui/kyc/start", data={"csrf_token": csrf_of(client, "/ui/kyc"), "provider": "persona"}
    )
    assert refused.status_code == 400 and 'id="provider-errors"' in refused.text
