"""Researcher pages: renewing a grant from the grants page (button only in the window)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from flask.testing import FlaskClient

from gateway.db.models import AccessRequest, Grant, GrantStatus, Role
from gateway.services.container import Airlock
from tests.factories import Actor, World
from tests.web.webkit import csrf_of, sign_in

GRANTS = "/ui/grants"


@pytest.fixture
def rob(world: World) -> Actor:
    publisher = world.actor("alice", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob")
    world.model(publisher)
    world.kyc(reviewer, researcher)
    world.actor("eve")
    return researcher


def _grant(world: World, rob: Actor, aged: timedelta) -> int:
    with world.airlock.db.session() as s:
        model = world.airlock.publishing.get_model(s, "acme/tiny")
    granted = world.grant(rob, model)
    with world.airlock.db.session() as s:
        row = s.get_one(Grant, granted.id)
        assert row.expires_at is not None
        row.granted_at, row.expires_at = row.granted_at - aged, row.expires_at - aged
        s.commit()
    return granted.id


def test_the_button_shows_only_in_the_window(
    client: FlaskClient, airlock: Airlock, world: World, rob: Actor
) -> None:
    grant_id = _grant(world, rob, timedelta(days=1))
    sign_in(client, airlock, "rob")
    page = client.get(GRANTS).text
    assert "renewable from" in page and f"/ui/grants/{grant_id}/renew" not in page
    assert client.get(f"/ui/grants/{grant_id}/renew").status_code == 409
    with airlock.db.session() as s:
        row = s.get_one(Grant, grant_id)
        assert row.expires_at is not None
        row.granted_at, row.expires_at = (
            t - timedelta(days=20) for t in (row.granted_at, row.expires_at)
        )
        s.commit()
    page = client.get(GRANTS).text
    assert f'href="/ui/grants/{grant_id}/renew">Renew</a>' in page


def test_renewal_through_the_form_replaces_the_grant(
    client: FlaskClient, airlock: Airlock, world: World, rob: Actor
) -> None:
    old = _grant(world, rob, timedelta(days=25))
    sign_in(client, airlock, "rob")
    form = client.get(f"/ui/grants/{old}/renew").text
    assert re.search(r'name="agreement" value="aup@1" checked', form)  # prefilled
    refused = client.post(f"/ui/grants/{old}/renew", data={"csrf_token": csrf_of(client)})
    assert refused.status_code == 400 and "Accept the agreement" in refused.text
    data = {"csrf_token": csrf_of(client, GRANTS), "agreement": "aup@1"}
    done = client.post(f"/ui/grants/{old}/renew", data=data)
    assert done.status_code == 302, done.text
    with airlock.db.session() as s:
        assert s.get_one(Grant, old).status == GrantStatus.EXPIRED
        made = s.query(AccessRequest).order_by(AccessRequest.id.desc()).first()
        assert made is not None and made.status == "approved"
    page = client.get(GRANTS).text
    assert "superseded by grant" in page


def test_a_renewal_needs_the_csrf_token_and_the_own_grant(
    client: FlaskClient, airlock: Airlock, world: World, rob: Actor
) -> None:
    old = _grant(world, rob, timedelta(days=25))
    sign_in(client, airlock, "rob")
    forged = client.post(f"/ui/grants/{old}/renew", data={"agreement": "aup@1"})
    assert forged.status_code in (400, 403)
    sign_in(client, airlock, "eve")
    assert client.get(f"/ui/grants/{old}/renew").status_code == 404
    data = {"csrf_token": csrf_of(client, GRANTS), "agreement": "aup@1"}
    assert client.post(f"/ui/grants/{old}/renew", data=data).status_code == 404
    with airlock.db.session() as s:
        assert s.get_one(Grant, old).status == GrantStatus.ACTIVE


def test_the_form_is_prefilled_and_a_pending_renewal_shows_on_the_grants_page(
    client: FlaskClient, airlock: Airlock, world: World, rob: Actor
) -> None:
    access = airlock.access
    with airlock.db.session() as s:
        asked = access.request_access(
            s,
            principal=rob.principal,
            model=airlock.publishing.get_model(s, "acme/tiny"),
            tier="weights-manual",
            form={"intended_use": "evaluation"},
            agreement="aup@1",
            request_country=None,
        )
        rita = world.actor("rita2", org="acme", role=Role.REVIEWER)
        granted = access.review(
            s, principal=rita.principal, request_id=asked.request.id, approve=True, note=""
        ).grant
        assert granted is not None and granted.expires_at is not None
        granted.granted_at -= timedelta(days=61)
        granted.expires_at -= timedelta(days=61)
        s.commit()
    sign_in(client, airlock, "rob")
    form = client.get(f"/ui/grants/{granted.id}/renew").text
    assert re.search(r'name="intended_use"[^>]*>evaluation</textarea>', form)  # prefilled
    with airlock.db.session() as s:
        pending = access.renew_grant(
            s,
            principal=rob.principal,
            grant_id=granted.id,
            form=None,
            agreement=None,
            request_country=None,
        ).request
    page = client.get(GRANTS).text
    assert f'Renewal request #{pending.id}</a>: <span class="status status-pending">' in page
    assert f"/ui/grants/{granted.id}/renew" not in page
