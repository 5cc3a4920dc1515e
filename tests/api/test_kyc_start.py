"""POST /api/v1/kyc/start and the webhook surface's refusals of bad input (no provider needed
for most: a disabled provider does not exist to callers)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent
from gateway.kyc.dedup import WEEK_SECONDS, _key
from gateway.services.container import build_airlock
from gateway.settings import KycProviderSettings, Settings, load_settings
from tests.api.apikit import bearer, ok, problem
from tests.factories import World
from tests.kyc import standins as si
from tests.kyc.flavors import PERSONA
from tests.redis_server import require_redis

START = "/api/v1/kyc/start"
BODY = {"provider": "persona", "return_url": "https://airlock.test/done"}


@pytest.fixture
def apis() -> Iterator[si.ProviderApis]:
    with si.running_apis() as running:
        yield running


@pytest.fixture
def settings(settings: Settings, apis: si.ProviderApis) -> Settings:
    return settings.with_overrides(kyc_providers=apis.configs()[:1])  # Persona only


def test_start_needs_a_token(client: FlaskClient) -> None:
    problem(client.post(START, json=BODY), 401, "authentication_required")


def test_start_needs_the_access_request_scope(client: FlaskClient, world: World) -> None:
    narrow = world.actor("nina", scopes=[Scope.MODELS_READ])
    body = problem(client.post(START, json=BODY, headers=bearer(narrow)), 403, "forbidden")
    assert body["scope"] == "access:request"


def test_start_refuses_bad_input(client: FlaskClient, world: World) -> None:
    rita = world.actor("rita")
    cases = [
        {**BODY, "provider": "sumsub"},
        {**BODY, "level": "institution"},  # providers cannot establish an affiliation
        {**BODY, "return_url": "javascript:alert(1)"},
        {"provider": "persona"},
    ]
    for case in cases:
        problem(client.post(START, json=case, headers=bearer(rita)), 422, "invalid_input")


def test_a_provider_that_is_not_enabled_is_not_found(client: FlaskClient, world: World) -> None:
    rita = world.actor("rita")
    body = {**BODY, "provider": "onfido"}
    problem(client.post(START, json=body, headers=bearer(rita)), 404, "not_found")
    problem(client.post("/webhooks/kyc/onfido", data=b"{}"), 404, "not_found")
    problem(client.post("/webhooks/kyc/nope", data=b"{}"), 404, "not_found")


def test_start_returns_the_hosted_flow_and_records_a_pending_verification(
    client: FlaskClient, world: World, apis: si.ProviderApis
) -> None:
    rita = world.actor("rita")
    started = ok(client.post(START, json=BODY, headers=bearer(rita)), 201)
    assert started["url"].startswith("https://persona.test/v/inq_")
    assert started["status"] == "pending" and started["provider"] == "persona"
    (mine,) = ok(client.get("/api/v1/me/kyc", headers=bearer(rita)))["verifications"]
    assert (mine["id"], mine["status"], mine["level"]) == (
        started["verification_id"],
        "pending",
        "none",
    )
    created = [c for c in apis.calls if c[0] == "POST"]
    assert [p for _, p in created] == [
        "/persona/api/v1/inquiries",
        f"/persona/api/v1/inquiries/{started['url'].rsplit('/', 1)[1]}/generate-one-time-link",
    ]
    with world.airlock.db.session() as session:
        (event,) = session.scalars(select(AuditEvent).where(AuditEvent.action == "kyc:start"))
    assert event.subject_user_id == rita.user.id
    assert event.payload["verification_id"] == started["verification_id"]
    assert event.payload["requested_level"] == "identity"  # the default


def test_a_provider_outage_is_a_503_and_records_nothing(
    client: FlaskClient, world: World, apis: si.ProviderApis
) -> None:
    rita = world.actor("rita")
    apis.failing = True
    body = problem(client.post(START, json=BODY, headers=bearer(rita)), 503)
    assert body["code"] == "kyc_provider_unavailable"
    assert "persona_test_key" not in json.dumps(body)
    assert ok(client.get("/api/v1/me/kyc", headers=bearer(rita)))["verifications"] == []


def test_a_signed_callback_that_is_not_an_event_is_a_422_and_stores_nothing(
    client: FlaskClient,
) -> None:
    now = datetime.now(UTC)
    for raw in (b"not json", b"[]", b'{"data": {"id": "evt_1"}}'):
        headers = PERSONA.sign(raw, si.NEW_SECRET, now)
        problem(client.post("/webhooks/kyc/persona", data=raw, headers=headers), 422)


@pytest.fixture
def redis_settings(settings: Settings) -> Settings:
    return settings.with_overrides(redis_url=require_redis())


def test_accepted_events_are_remembered_in_redis_for_a_week(redis_settings: Settings) -> None:
    airlock = build_airlock(redis_settings)
    client = create_app(airlock=airlock).test_client()
    store = redis.Redis.from_url(redis_settings.redis_url or "")
    event_id = f"evt_redis_{datetime.now(UTC).timestamp()}"
    try:
        raw = si.persona_event(event_id, "approved", "inq_unknown", datetime.now(UTC))
        headers = PERSONA.sign(raw, si.OLD_SECRET, datetime.now(UTC))
        assert (
            ok(client.post("/webhooks/kyc/persona", data=raw, headers=headers))["duplicate"]
            is False
        )
        assert WEEK_SECONDS - 60 < store.ttl(_key("persona", event_id)) <= WEEK_SECONDS
        again = client.post("/webhooks/kyc/persona", data=raw, headers=headers)
        assert ok(again)["duplicate"] is True
    finally:
        store.delete(_key("persona", event_id))
        store.close()
        airlock.close()


def test_settings_read_providers_and_rotating_secrets_from_the_environment() -> None:
    loaded = load_settings(
        {
            "AIRLOCK_SECRET_KEY": "x",
            "AIRLOCK_KYC_STRIPE_API_KEY": "sk_live_1",
            "AIRLOCK_KYC_STRIPE_WEBHOOK_SECRETS": "whsec_a, whsec_b",
            "AIRLOCK_KYC_ONFIDO_WEBHOOK_SECRETS": "tok",
            "AIRLOCK_KYC_ONFIDO_API_URL": "https://api.us.onfido.com/v3.6",
        },
        data_dir="/nonexistent-airlock-test",
    )
    assert loaded.kyc_providers == (
        KycProviderSettings(
            "stripe_identity", "https://api.stripe.com", "sk_live_1", "", ("whsec_a", "whsec_b")
        ),
        KycProviderSettings("onfido", "https://api.us.onfido.com/v3.6", "", "", ("tok",)),
    )
    assert "sk_live_1" not in repr(loaded) and "whsec_a" not in repr(loaded)


def test_an_oversized_callback_is_a_413(client: FlaskClient, settings: Settings) -> None:
    raw = b"{" + b" " * settings.max_body_bytes + b"}"
    headers = PERSONA.sign(raw, si.NEW_SECRET, datetime.now(UTC))
    problem(client.post("/webhooks/kyc/persona", data=raw, headers=headers), 413)
