"""Every denial a researcher meets names its reasons in sentences: on the Hub surface
(`X-Error-Message`) and in the API's bodies, including grants ended by re-evaluation."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from gateway.db.models import KycVerification, Role, utcnow
from gateway.tasks import jobs
from tests.api.hubkit import FILES, REPO, bearer
from tests.factories import Actor, World, policy_text

RESOLVE = f"/{REPO}/resolve/main/model.safetensors"
RU_DENIED = policy_text(REPO).replace(
    "deny: [pack:us-ofac-comprehensive]", "deny: [pack:us-ofac-comprehensive, RU]"
)
CODE_LIKE = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")  # jurisdiction_denied, grant_revoked, ...


def assert_in_words(message: str) -> None:
    """Sentences, not codes or data dumps."""
    assert not CODE_LIKE.search(message), message
    assert not any(ch in message for ch in "{}[]"), message
    assert message[0].isupper(), message
    assert message.rstrip().endswith((".", "/access")), message


class Scene:
    def __init__(self, client: FlaskClient, world: World) -> None:
        world.org("acme")
        self.client, self.world = client, world
        self.publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
        self.reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
        world.model(self.publisher, REPO, files=FILES)
        with world.airlock.db.session() as s:
            self.model = world.airlock.publishing.get_model(s, REPO)

    def researcher(self, name: str, country: str, grant: bool = True) -> Actor:
        actor = self.world.actor(name)
        self.world.kyc(self.reviewer, actor, country=country)
        if grant:
            self.world.grant(actor, self.model)
        return actor

    def denial(self, actor: Actor | None) -> str:
        response = self.client.get(RESOLVE, headers=bearer(actor))
        assert response.status_code in (401, 403), response.status_code
        assert response.headers["X-Error-Code"]
        message = response.headers["X-Error-Message"]
        assert_in_words(message)
        return message

    def apply(self, source: str) -> None:
        with self.world.airlock.db.session() as s:
            self.world.airlock.policies.apply(s, principal=self.publisher.principal, source=source)


@pytest.fixture
def scene(client: FlaskClient, world: World) -> Scene:
    return Scene(client, world)


def test_hub_denials_name_their_reasons(scene: Scene) -> None:
    assert "Authenticate with an Airlock token" in scene.denial(None)
    nobody = scene.researcher("nina", "GB", grant=False)
    assert "You hold no grant" in scene.denial(nobody)

    boris = scene.researcher("boris", "RU")
    scene.apply(RU_DENIED)  # re-evaluation revokes boris's grant
    revoked = scene.denial(boris)
    assert "was revoked: The requester's nationality 'RU' matches 'RU'" in revoked
    assert "which this tier's rule denies by name." in revoked

    ann = scene.researcher("ann", "GB")
    with scene.world.airlock.db.session() as s:
        s.execute(
            update(KycVerification)
            .where(KycVerification.user_id == ann.user.id)
            .values(expires_at=utcnow() - timedelta(days=1))
        )
        s.commit()
    jobs.rescreen_grants(scene.world.airlock)
    suspended = scene.denial(ann)
    assert "was suspended: The requester's identity verification at level" in suspended
    assert "expired on" in suspended


def reason_messages(body: dict[str, Any]) -> list[str]:
    return [r["message"] for r in body["reasons"] if r["effect"] != "allow"]


def test_api_denials_name_their_reasons(scene: Scene) -> None:
    scene.apply(RU_DENIED)
    boris = scene.researcher("boris", "RU", grant=False)
    response = scene.client.post(
        f"/api/v1/models/{REPO}/access",
        json={"tier": "weights-auto", "agreement": "aup@1"},
        headers=bearer(boris),
    )
    body = response.get_json()
    assert response.status_code == 201 and body["effect"] == "deny"
    messages = reason_messages(body)
    assert len(messages) == 2
    for message in messages:
        assert_in_words(message)
    # The requester reads the same reasons later, with their request.
    mine = scene.client.get("/api/v1/me/requests", headers=bearer(boris)).get_json()
    assert reason_messages(mine["requests"][0]) == messages


def test_grants_ended_by_reevaluation_say_why(scene: Scene) -> None:
    boris = scene.researcher("boris", "RU")
    scene.apply(RU_DENIED)
    grants = scene.client.get("/api/v1/me/grants", headers=bearer(boris)).get_json()["grants"]
    [grant] = grants
    assert grant["status"] == "revoked"
    assert_in_words(grant["end_reason"])
    assert "nationality 'RU'" in grant["end_reason"]
