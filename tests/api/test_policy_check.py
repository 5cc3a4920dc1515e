"""Publisher API: dry-run a policy against live grants, and explain a decision (what-if)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.auth.tokens import Scope
from tests.api.apikit import REPO, RIVAL_REPO, Api, make_api, ok, problem
from tests.factories import World, policy_text

CHECK, EXPLAIN = "/api/v1/policies/check", "/api/v1/policies/explain"
RU_DENIED = policy_text(REPO).replace(
    "deny: [pack:us-ofac-comprehensive]", "deny: [pack:us-ofac-comprehensive, RU]"
)
SUBJECT = {
    "kyc_level": "identity",
    "nationality": "GB",
    "residence_country": "UA",
    "residence_subdivision": "UA-14",
    "accepted_agreements": ["aup@1"],
}


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    api = make_api(client, world)
    with world.airlock.db.session() as s:
        model = world.airlock.publishing.get_model(s, REPO)
    for name, country in (("ann", "GB"), ("boris", "RU")):
        actor = world.actor(name)
        world.kyc(api.reviewer, actor, country=country)
        world.grant(actor, model)
    return api


def test_check_lists_what_the_policy_would_do(api: Api) -> None:
    body = ok(api.post(CHECK, api.publisher, json={"source": RU_DENIED}))
    assert body["repo_id"] == REPO and body["current_version"] == 1
    assert len(body["sha256"]) == 64
    verdicts = {g["user"]: g for g in body["grants"]}
    assert {u: g["action"] for u, g in verdicts.items()} == {"ann": "keep", "boris": "revoke"}
    assert verdicts["boris"]["effect"] == "deny"
    assert {r["code"] for r in verdicts["boris"]["reasons"]} == {"jurisdiction_denied"}
    assert body["summary"]["revoke"] == 1 and body["summary"]["keep"] == 1
    assert body["requests"] == []
    # A dry run: nothing changed.
    grants = ok(api.get(f"/api/v1/models/{REPO}/grants", api.publisher))["grants"]
    assert {g["status"] for g in grants} == {"active"}


def test_check_another_model_of_the_same_org(api: Api) -> None:
    api.world.model(api.publisher, "acme/other", policy=policy_text("acme/other"))
    body = ok(api.post(CHECK, api.publisher, json={"source": RU_DENIED, "repo_id": "acme/other"}))
    assert body["repo_id"] == "acme/other" and body["grants"] == []


@pytest.mark.parametrize(
    ("who", "payload", "status", "code"),
    [
        (None, {"source": RU_DENIED}, 401, "authentication_required"),
        ("rival_publisher", {"source": RU_DENIED}, 403, "forbidden"),
        ("publisher", {"source": RU_DENIED, "repo_id": RIVAL_REPO}, 403, "forbidden"),
        ("reviewer", {"source": RU_DENIED}, 403, None),
        ("researcher", {"source": RU_DENIED}, 403, None),
        ("publisher", {"source": "model: acme/tiny\nstage: nope\n"}, 422, "policy_invalid"),
        ("publisher", {"source": RU_DENIED, "repo_id": "acme/absent"}, 404, "not_found"),
        ("publisher", {"source": RU_DENIED, "extra": 1}, 422, None),
    ],
)
def test_check_refusals(
    api: Api, who: str | None, payload: dict[str, Any], status: int, code: str | None
) -> None:
    actor = getattr(api, who) if who else None
    body = problem(api.post(CHECK, actor, json=payload), status, code)
    assert body["detail"]


def test_check_needs_the_policies_scope(api: Api) -> None:
    narrow = api.token(api.publisher, [Scope.MODELS_WRITE])
    problem(api.post(CHECK, narrow, json={"source": RU_DENIED}), 403)


def test_explain_decides_with_reasons_and_packs(api: Api) -> None:
    body = ok(
        api.post(
            EXPLAIN,
            api.publisher,
            json={"source": policy_text(REPO), "tier": "weights-auto", "subject": SUBJECT},
        )
    )
    assert body["model"] == REPO and body["effect"] == "review" and body["allowed"] is False
    review = [r for r in body["reasons"] if r["effect"] == "review"]
    assert {r["code"] for r in review} == {"jurisdiction_review"}
    assert all(r["rule"].startswith("tiers[weights-auto].requires.jurisdiction") for r in review)
    [pack] = body["packs_used"]
    assert pack["id"] == "us-ofac-comprehensive" and len(pack["content_hash"]) == 64
    # What-if at a date: before EO 14065 the Donetsk entry was not in effect.
    before = ok(
        api.post(
            EXPLAIN,
            api.publisher,
            json={
                "source": policy_text(REPO),
                "tier": "weights-auto",
                "subject": SUBJECT,
                "at": "2022-02-20T12:00:00Z",
            },
        )
    )
    assert before["effect"] == "allow"


@pytest.mark.parametrize(
    ("who", "payload", "status", "code"),
    [
        (None, {"tier": "card", "subject": {}}, 401, "authentication_required"),
        ("rival_publisher", {"tier": "card", "subject": {}}, 403, "forbidden"),
        ("reviewer", {"tier": "card", "subject": {}}, 403, None),
        ("publisher", {"tier": "card", "subject": {"nationality": "ZZ"}}, 422, "invalid_input"),
        ("publisher", {"tier": "card", "subject": {"kyc_level": "max"}}, 422, "invalid_input"),
        ("publisher", {"tier": "card", "subject": {"kyc_expires_at": "soon"}}, 422, None),
        ("publisher", {"tier": "card", "subject": [], "x": 1}, 422, None),
        ("publisher", {"tier": "card", "subject": {}, "at": "yesterday"}, 422, None),
    ],
)
def test_explain_refusals(
    api: Api, who: str | None, payload: dict[str, Any], status: int, code: str | None
) -> None:
    actor = getattr(api, who) if who else None
    body = problem(
        api.post(EXPLAIN, actor, json={"source": policy_text(REPO), **payload}), status, code
    )
    if code == "invalid_input":
        assert body["errors"] and body["errors"][0]["message"]


def test_explain_an_unknown_tier_denies_with_the_tiers_named(api: Api) -> None:
    body = ok(
        api.post(
            EXPLAIN,
            api.publisher,
            json={"source": policy_text(REPO), "tier": "gold", "subject": {}},
        )
    )
    assert body["effect"] == "deny"
    assert body["reasons"][0]["code"] == "tier_unknown"
    assert "'card'" in body["reasons"][0]["message"]
