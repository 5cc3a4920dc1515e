"""KYC webhooks end to end: signed callbacks from each provider, the stand-in provider APIs the
worker re-fetches from, and the monotonic state machine. Only valid callbacks change state."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given
from hypothesis import settings as fuzzing
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway.audit import AuditAction
from gateway.db.models import AuditEvent, Grant, KycVerification, KycWebhookEvent, Role
from gateway.services.container import Airlock
from gateway.settings import Settings
from gateway.tasks.jobs import apply_kyc_event
from tests.api.apikit import bearer, ok, problem
from tests.factories import Actor, World
from tests.kyc import standins as si
from tests.kyc.flavors import FLAVORS, ONFIDO, PERSONA, Flavor
from tests.pg import on_both_engines

pytestmark = pytest.mark.parametrize("flavor", FLAVORS, ids=lambda f: f.name)


@pytest.fixture
def apis() -> Iterator[si.ProviderApis]:
    with si.running_apis() as running:
        yield running


@pytest.fixture
def settings(settings: Settings, apis: si.ProviderApis) -> Settings:
    return settings.with_overrides(kyc_providers=apis.configs())


@pytest.fixture
def researcher(world: World) -> Actor:
    return world.actor("rita")


def start(client: FlaskClient, actor: Actor, flavor: Flavor) -> str:
    """Begin a verification through the API; returns the provider's reference."""
    body = ok(
        client.post(
            "/api/v1/kyc/start",
            json={"provider": flavor.name, "return_url": "https://airlock.test/done"},
            headers=bearer(actor),
        ),
        201,
    )
    assert body["status"] == "pending" and body["url"].startswith("https://")
    return state_of(client, body["verification_id"])["provider_ref"]  # type: ignore[no-any-return]


def state_of(client: FlaskClient, verification_id: int) -> dict[str, Any]:
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        row = s.get(KycVerification, verification_id)
        assert row is not None
        return {c.name: getattr(row, c.name) for c in KycVerification.__table__.columns}


def verification(client: FlaskClient, ref: str) -> dict[str, Any]:
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        row_id = s.scalar(select(KycVerification.id).where(KycVerification.provider_ref == ref))
    return state_of(client, row_id)  # type: ignore[arg-type]


def kyc_audits(client: FlaskClient) -> list[dict[str, Any]]:
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        rows = s.scalars(
            select(AuditEvent).where(AuditEvent.action == str(AuditAction.KYC_VERIFY))
        ).all()
        return [dict(r.payload) for r in rows]


def stored_events(client: FlaskClient) -> int:
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        return s.scalar(select(func.count()).select_from(KycWebhookEvent)) or 0


def deliver(
    client: FlaskClient,
    flavor: Flavor,
    ref: str,
    *,
    status: str,
    at: datetime,
    secret: str = si.NEW_SECRET,
    signed_at: datetime | None = None,
    event_id: str | None = None,
) -> Any:
    body = flavor.event(event_id or f"evt_{secrets.token_hex(6)}", status, ref, at)
    headers = flavor.sign(body, secret, signed_at or datetime.now(UTC))
    return client.post(f"/webhooks/kyc/{flavor.name}", data=body, headers=headers)


def test_a_valid_callback_applies_the_re_fetched_result(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "approved")
    answer = deliver(client, flavor, ref, status="approved", at=datetime.now(UTC))
    assert ok(answer) == {"received": True, "duplicate": False}
    row = verification(client, ref)
    assert row["status"] == "approved" and row["level"] == "identity"
    assert {k: row[k] for k in flavor.expected} == flavor.expected
    assert row["user_id"] == researcher.user.id and row["requested_level"] == "identity"
    # Expiry: the document's, or a year after the check, whichever comes first.
    assert row["expires_at"] is not None
    assert row["expires_at"] <= row["verified_at"] + timedelta(days=365)
    (audit,) = kyc_audits(client)
    assert audit["from"] == "pending" and audit["status"] == "approved"
    assert audit["provider_ref"] == ref and audit["level"] == "identity"


def test_a_verification_the_api_shows_to_its_owner(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor, world: World
) -> None:
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "approved")
    ok(deliver(client, flavor, ref, status="approved", at=datetime.now(UTC)))
    mine = ok(client.get("/api/v1/me/kyc", headers=bearer(researcher)))["verifications"]
    assert [(v["provider"], v["status"]) for v in mine] == [(flavor.name, "approved")]
    other = world.actor("otto")
    assert ok(client.get("/api/v1/me/kyc", headers=bearer(other)))["verifications"] == []


def rejected_cases(flavor: Flavor) -> list[str]:
    cases = ["tampered", "wrong_secret", "missing_header", "malformed_header"]
    if flavor.timestamped:
        cases += ["stale", "future"]
    if flavor is ONFIDO:
        cases += ["sha1_only"]
    return cases


def test_rejected_callbacks_store_and_change_nothing(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "approved")
    fetches = apis.fetches()
    now = datetime.now(UTC)
    expected = {
        "tampered": "signature_mismatch",
        "wrong_secret": "signature_mismatch",
        "missing_header": "missing_signature",
        "malformed_header": "signature_mismatch" if flavor is ONFIDO else "malformed_signature",
        "stale": "stale_timestamp",
        "future": "stale_timestamp",
        "sha1_only": "unsupported_algorithm",
    }
    for case in rejected_cases(flavor):
        body = flavor.event(f"evt_{case}", "approved", ref, now)
        headers = flavor.sign(body, si.NEW_SECRET, now)
        if case == "tampered":
            body = body.replace(b"approved", b"approvef")
        elif case == "wrong_secret":
            headers = flavor.sign(body, "whsec_attacker", now)
        elif case == "missing_header":
            headers = {}
        elif case == "malformed_header":
            headers = {flavor.header: "v1=deadbeef"}
        elif case in ("stale", "future"):
            # Signed timestamps are whole seconds: 301 s ahead, truncated, can land within the
            # 300 s window by the time the request is checked; 302 s cannot.
            skew = timedelta(seconds=302) * (-1 if case == "stale" else 1)
            headers = flavor.sign(body, si.NEW_SECRET, now + skew)
        elif case == "sha1_only":
            headers = {"X-Signature": si.hex_hmac(si.NEW_SECRET, body)[:40]}
        answer = client.post(f"/webhooks/kyc/{flavor.name}", data=body, headers=headers)
        assert problem(answer, 400, "webhook_rejected")["reason"] == expected[case], case
    assert stored_events(client) == 0
    assert apis.fetches() == fetches  # nothing was re-fetched
    assert verification(client, ref)["status"] == "pending"
    assert kyc_audits(client) == []


def test_both_secrets_are_accepted_during_a_rotation(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "pending")
    now = datetime.now(UTC)
    old = deliver(client, flavor, ref, status="pending", at=now, secret=si.OLD_SECRET)
    assert ok(old)["duplicate"] is False
    new = deliver(client, flavor, ref, status="pending", at=now + timedelta(seconds=1))
    assert ok(new)["duplicate"] is False
    assert stored_events(client) == 2


def test_a_rotation_header_with_several_signatures_needs_one_valid(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    if flavor is ONFIDO:  # one signature per callback: a list of them is no signature
        body = flavor.event("evt_rotation", "approved", ref, datetime.now(UTC))
        pair = f"{si.hex_hmac('whsec_retired', body)} {si.hex_hmac(si.NEW_SECRET, body)}"
        refused = client.post("/webhooks/kyc/onfido", data=body, headers={flavor.header: pair})
        assert problem(refused, 400, "webhook_rejected")["reason"] == "signature_mismatch"
        return
    flavor.decide(apis, ref, "approved")
    body = flavor.event("evt_rotation", "approved", ref, datetime.now(UTC))
    t = int(datetime.now(UTC).timestamp())
    retired = si.timestamped("whsec_retired", body, t)
    current = si.timestamped(si.NEW_SECRET, body, t)
    if flavor is PERSONA:  # two space-separated t=,v1= pairs
        header = f"{retired} {current}"
    else:  # STRIPE: one t, one v1 per endpoint secret
        header = f"{current.split(',')[0]},{retired.split(',')[1]},{current.split(',')[1]}"
    answer = client.post(f"/webhooks/kyc/{flavor.name}", data=body, headers={flavor.header: header})
    assert ok(answer)["duplicate"] is False
    assert verification(client, ref)["status"] == "approved"
    both_retired = header.replace(si.hex_hmac(si.NEW_SECRET, f"{t}.".encode() + body), "0" * 64)
    refused = client.post(
        f"/webhooks/kyc/{flavor.name}", data=body, headers={flavor.header: both_retired}
    )
    assert problem(refused, 400, "webhook_rejected")["reason"] == "signature_mismatch"


@on_both_engines
def test_a_redelivered_event_is_kept_and_applied_once(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "approved")
    at = datetime.now(UTC)
    first = deliver(client, flavor, ref, status="approved", at=at, event_id="evt_same")
    assert ok(first)["duplicate"] is False
    fetches = apis.fetches()
    again = deliver(client, flavor, ref, status="approved", at=at, event_id="evt_same")
    assert ok(again)["duplicate"] is True
    assert stored_events(client) == 1
    assert apis.fetches() == fetches
    assert len(kyc_audits(client)) == 1


@on_both_engines
def test_out_of_order_and_stale_events_never_move_the_state_back(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    flavor.decide(apis, ref, "approved")
    ok(deliver(client, flavor, ref, status="approved", at=t0 + timedelta(minutes=5)))
    assert verification(client, ref)["status"] == "approved"
    # An older event arrives late while the API (say) reports an in-progress state: ignored.
    flavor.decide(apis, ref, "pending")
    ok(deliver(client, flavor, ref, status="pending", at=t0))
    # A newer event cannot reopen the terminal state with a non-terminal one either.
    ok(deliver(client, flavor, ref, status="pending", at=t0 + timedelta(minutes=6)))
    row = verification(client, ref)
    assert row["status"] == "approved" and row["level"] == "identity"
    assert len(kyc_audits(client)) == 1
    # A newer terminal result does replace it, and is audited.
    flavor.decide(apis, ref, "other_terminal")
    ok(deliver(client, flavor, ref, status="other_terminal", at=t0 + timedelta(minutes=7)))
    row = verification(client, ref)
    assert row["status"] in ("declined", "expired") and row["level"] == "none"
    assert [a["from"] for a in kyc_audits(client)] == ["pending", "approved"]
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        outcomes = s.scalars(select(KycWebhookEvent.outcome).order_by(KycWebhookEvent.id)).all()
    assert outcomes == ["applied", "stale", "stale", "applied"]


def test_a_provider_outage_leaves_the_event_for_a_retry(
    client: FlaskClient, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "approved")
    apis.failing = True
    ok(deliver(client, flavor, ref, status="approved", at=datetime.now(UTC)))  # answered, kept
    assert verification(client, ref)["status"] == "pending"
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        event_id = s.scalar(select(KycWebhookEvent.id))
    assert event_id is not None
    apis.failing = False
    for _ in range(2):  # the worker's retry, and a second run of the same task: no-op
        apply_kyc_event(airlock, event_id=event_id)
    assert verification(client, ref)["status"] == "approved"
    assert len(kyc_audits(client)) == 1


PRINTABLE = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(
    raw=st.binary(max_size=300) | JSONISH.map(lambda v: json.dumps(v).encode()),
    header=PRINTABLE,
    signed=st.booleans(),
)
@fuzzing(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_garbage_callbacks_get_a_4xx_problem_never_a_5xx(
    client: FlaskClient, flavor: Flavor, raw: bytes, header: str, signed: bool
) -> None:
    headers = (
        flavor.sign(raw, si.NEW_SECRET, datetime.now(UTC)) if signed else {flavor.header: header}
    )
    answer = client.post(f"/webhooks/kyc/{flavor.name}", data=raw, headers=headers)
    assert answer.status_code in (400, 422), answer.get_data(as_text=True)
    problem(answer, answer.status_code)
    assert stored_events(client) == 0


def test_provider_results_drive_the_grants_that_need_them(
    client: FlaskClient, world: World, researcher: Actor, apis: si.ProviderApis, flavor: Flavor
) -> None:
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    model = world.model(publisher)
    ref = start(client, researcher, flavor)
    flavor.decide(apis, ref, "approved")
    ok(deliver(client, flavor, ref, status="approved", at=datetime.now(UTC) - timedelta(minutes=1)))
    form = {"tier": "weights-auto", "form": {"intended_use": "x"}, "agreement": "aup@1"}
    url = f"/api/v1/models/{model.repo_id}/access"
    asked = ok(client.post(url, json=form, headers=bearer(researcher)), 201)
    if flavor.expected["nationality"] is None:
        # Stripe Identity reports no nationality: the tier's rule needs it, so a reviewer decides.
        assert asked["status"] == "pending"
        assert "signal_missing" in {r["code"] for r in asked["reasons"]}
        return
    assert asked["status"] == "approved", asked  # the provider's identity level counts
    flavor.decide(apis, ref, "other_terminal")
    ok(deliver(client, flavor, ref, status="other_terminal", at=datetime.now(UTC)))
    airlock: Airlock = client.application.extensions["airlock"]
    with airlock.db.session() as s:
        statuses = s.scalars(select(Grant.status).where(Grant.user_id == researcher.user.id)).all()
        actions = s.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.subject_user_id == researcher.user.id)
            .order_by(AuditEvent.seq)
        ).all()
    assert len(statuses) == 1 and statuses[0] != "active"
    assert actions[-2:][0] == "kyc:verify" and actions[-1] in ("grant:suspend", "grant:revoke")
