"""The request country through the HTTP surfaces: a trusted proxy's header, else GeoIP of the
peer; a country header from any other peer is a spoof and is ignored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from gateway.db.models import AuditEvent, Role
from gateway.settings import Settings
from tests.api.hubkit import FILES, REPO, bearer
from tests.factories import Actor, World, policy_text

FIXTURE = Path(__file__).parent.parent / "data" / "geoip-test.mmdb"
HEADER = "X-Airlock-Country"
PROXY = "10.0.0.5"
IRAN, USA, NOWHERE = "198.51.100.7", "203.0.113.9", "127.0.0.1"  # as the fixture database says
SIGNALS = "signals: [nationality, residence_country]"
GEO_POLICY = policy_text(REPO).replace(
    SIGNALS, "signals: [nationality, residence_country, request_country]"
)
assert policy_text(REPO) != GEO_POLICY


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        trusted_proxies=(PROXY,), geo_header=HEADER, geoip_db=str(FIXTURE)
    )


@pytest.fixture
def researcher(world: World) -> Actor:
    world.org("acme")
    world.org("oxbridge", hq="GB")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob", affiliation="oxbridge")
    world.model(publisher, REPO, files=FILES, policy=GEO_POLICY)
    world.kyc(reviewer, researcher)  # GB national and resident
    return researcher


def ask(client: FlaskClient, actor: Actor, peer: str, country: str | None) -> dict[str, Any]:
    headers = {**bearer(actor), **({HEADER: country} if country else {})}
    response = client.post(
        f"/api/v1/models/{REPO}/access",
        json={"tier": "weights-auto", "agreement": "aup@1"},
        headers=headers,
        environ_base={"REMOTE_ADDR": peer},
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def objections(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["code"], r["message"]) for r in body["reasons"] if r["effect"] != "allow"]


def test_request_decisions_use_the_trusted_country_only(
    client: FlaskClient, researcher: Actor
) -> None:
    spoofed = ask(client, researcher, IRAN, "US")  # the header is ignored; GeoIP says IR
    assert spoofed["effect"] == "deny"
    assert objections(spoofed) == [
        (
            "jurisdiction_denied",
            "The requester's request location 'IR' matches 'IR' (Iran) on list 'default' of "
            "pack us-ofac-comprehensive version 2025-07-01, which this tier denies.",
        )
    ]
    unknown = ask(client, researcher, NOWHERE, "US")  # not in the database, header ignored
    assert unknown["effect"] == "review" and unknown["status"] == "pending"
    assert [code for code, _ in objections(unknown)] == ["signal_missing"]
    assert "request location, which is not known" in objections(unknown)[0][1]


def test_proxy_header_decides(client: FlaskClient, researcher: Actor) -> None:
    denied = ask(client, researcher, PROXY, "IR")
    assert denied["effect"] == "deny"
    assert [code for code, _ in objections(denied)] == ["jurisdiction_denied"]
    granted = ask(client, researcher, PROXY, "us")
    assert granted["effect"] == "allow" and granted["grant"]["status"] == "active"


def resolve(client: FlaskClient, actor: Actor, peer: str, country: str | None) -> TestResponse:
    headers = {**bearer(actor), **({HEADER: country} if country else {})}
    return client.get(
        f"/{REPO}/resolve/main/model.safetensors",
        headers=headers,
        environ_base={"REMOTE_ADDR": peer},
    )


def test_downloads_use_the_trusted_country_only(client: FlaskClient, researcher: Actor) -> None:
    assert ask(client, researcher, USA, None)["effect"] == "allow"
    assert resolve(client, researcher, USA, "IR").status_code == 302  # spoofed IR ignored
    assert resolve(client, researcher, PROXY, "DE").status_code == 302
    for peer, country in ((IRAN, "US"), (PROXY, "IR")):
        response = resolve(client, researcher, peer, country)
        assert response.status_code == 403, (peer, country)
        assert response.headers["X-Error-Code"] == "GatedRepo"
        message = response.headers["X-Error-Message"]
        assert "request location 'IR' matches 'IR' (Iran)" in message, message
        assert "which this tier denies." in message
    # each allowed download's event records the country its decision used, never a spoofed one
    issued = [e.payload.get("request_country") for e in _events(client, "download:issue")]
    assert issued == ["US", "DE"]
    denied = [e.payload.get("request_country") for e in _events(client, "download:deny")]
    assert denied == ["IR", "IR"]


def _events(client: FlaskClient, action: str) -> list[AuditEvent]:
    airlock = client.application.extensions["airlock"]
    with airlock.db.session() as session:
        query = select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
        return list(session.scalars(query).all())
