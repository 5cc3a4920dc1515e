"""Access API: tiers, requests, reviews, own grants, tokens and manual KYC."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.auth.tokens import Scope
from gateway.db.models import ApiToken, AuditEvent, Grant, KycVerification, Role
from policies import KycLevel
from tests.api.apikit import REPO, RIVAL_REPO, Api, backdate, make_api, ok, past, problem
from tests.factories import World, policy_text


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    return make_api(client, world)


def codes(request: dict) -> set[str]:  # type: ignore[type-arg]
    return {r["code"] for r in request["reasons"]}


def pending_request(api: Api) -> dict:  # type: ignore[type-arg]
    api.world.kyc(api.reviewer, api.researcher)
    body = ok(api.request("weights-manual"), 201)
    assert body["status"] == "pending", body
    return body  # type: ignore[no-any-return]


# -- tiers -----------------------------------------------------------------------------------------
def test_tiers_are_described_with_how_to_request_them(api: Api) -> None:
    body = ok(api.get(f"/api/v1/models/{REPO}/access"))
    assert (body["repo_id"], body["stage"], body["frozen"]) == (REPO, "limited", False)
    assert [(t["name"], t["open"]) for t in body["tiers"]] == [
        ("card", True),
        ("weights-auto", True),
        ("weights-manual", True),
    ]
    assert body["tiers"][1]["requires"]["kyc"] == "identity"
    assert "aup" in body["agreements"]
    assert body["how_to_request"].startswith("POST http://airlock.test/api/v1/models/acme/tiny")


def test_internal_models_do_not_exist_for_outsiders(api: Api) -> None:
    api.apply(policy_text(REPO, stage="internal"))
    problem(api.get(f"/api/v1/models/{REPO}/access", api.outsider), 404)
    problem(api.request("card", api.researcher), 404)
    ok(api.get(f"/api/v1/models/{REPO}/access", api.reviewer))


# -- requests --------------------------------------------------------------------------------------
def test_auto_tier_grants_at_once_with_every_reason(api: Api) -> None:
    api.world.kyc(api.reviewer, api.researcher, level=KycLevel.IDENTITY)
    body = ok(api.request("weights-auto"), 201)
    assert (body["status"], body["effect"]) == ("approved", "allow")
    assert {"kyc_level_met", "agreement_accepted", "jurisdiction_allowed"} <= codes(body)
    assert all(r["message"] and r["rule"] and r["effect"] for r in body["reasons"])
    grant = body["grant"]
    assert (grant["tier"], grant["status"], grant["user"]) == ("weights-auto", "active", "rob")
    assert grant["expires_at"] is not None
    assert ok(api.get("/api/v1/me/grants", api.researcher))["grants"][0]["id"] == grant["id"]


def test_manual_tier_waits_for_reviewers(api: Api) -> None:
    body = pending_request(api)
    assert body["effect"] == "review"
    assert body["grant"] is None
    assert body["reviewers_required"] == 1
    assert "approval_required" in codes(body)
    assert ok(api.get("/api/v1/me/grants", api.researcher))["grants"] == []


def test_missing_kyc_is_denied_with_the_reason(api: Api) -> None:
    body = ok(api.request("weights-auto"), 201)
    assert (body["status"], body["effect"]) == ("denied", "deny")
    assert "kyc_level_insufficient" in codes(body)
    assert body["grant"] is None


def test_duplicate_pending_requests_and_active_grants_conflict(api: Api) -> None:
    pending = pending_request(api)
    body = problem(api.request("weights-manual"), 409, "conflict")
    assert body["request_id"] == pending["id"]
    grant = ok(api.request("weights-auto"), 201)["grant"]
    assert problem(api.request("weights-auto"), 409)["grant_id"] == grant["id"]


def test_an_expired_grant_can_be_requested_again_and_shows_as_expired(api: Api) -> None:
    api.world.kyc(api.reviewer, api.researcher)
    grant = ok(api.request("weights-auto"), 201)["grant"]
    backdate(api.world, Grant, grant["id"], expires_at=past())
    assert ok(api.get("/api/v1/me/grants", api.researcher))["grants"][0]["status"] == "expired"
    renewed = ok(api.request("weights-auto"), 201)
    assert renewed["grant"]["id"] != grant["id"]


def test_unknown_tiers_and_malformed_agreements_are_invalid(api: Api) -> None:
    problem(api.request("platinum"), 422, "invalid_input")
    problem(api.request("card", agreement="aup"), 422, "invalid_input")
    problem(api.request("card", agreement="aup@one"), 422, "invalid_input")


def test_requesting_needs_a_token_with_access_request(api: Api) -> None:
    anonymous = api.post(f"/api/v1/models/{REPO}/access", json={"tier": "card"})
    problem(anonymous, 401, "authentication_required")
    narrow = api.token(api.researcher, [Scope.MODELS_READ])
    problem(api.request("card", narrow), 403, "forbidden")


def test_requests_are_shown_to_the_requester_and_the_models_reviewers(api: Api) -> None:
    request_id = pending_request(api)["id"]
    url = f"/api/v1/requests/{request_id}"
    assert ok(api.get(url, api.researcher))["id"] == request_id
    assert ok(api.get(url, api.reviewer))["id"] == request_id
    reviewer_only = api.token(api.reviewer, [Scope.REQUESTS_REVIEW])
    assert ok(api.get(url, reviewer_only))["id"] == request_id
    for other in (api.outsider, api.rival_reviewer, api.publisher):
        problem(api.get(url, other), 404)
    problem(api.get(url), 401)
    assert [r["id"] for r in ok(api.get("/api/v1/me/requests", api.researcher))["requests"]] == [
        request_id
    ]
    assert ok(api.get("/api/v1/me/requests", api.outsider))["requests"] == []


# -- review queue ----------------------------------------------------------------------------------
def test_review_queue_holds_only_the_reviewers_orgs_requests(api: Api) -> None:
    request_id = pending_request(api)["id"]
    queue = ok(api.get("/api/v1/requests?status=pending", api.reviewer))["requests"]
    assert [r["id"] for r in queue] == [request_id]
    assert ok(api.get(f"/api/v1/requests?repo_id={REPO}", api.reviewer))["requests"]
    assert ok(api.get("/api/v1/requests", api.rival_reviewer))["requests"] == []
    assert ok(api.get(f"/api/v1/requests?repo_id={REPO}", api.rival_reviewer))["requests"] == []
    assert ok(api.get("/api/v1/requests?status=approved", api.reviewer))["requests"] == []


def test_review_queue_does_not_reveal_internal_models_of_other_orgs(api: Api) -> None:
    api.apply(policy_text(REPO, stage="internal"))
    missing = api.get("/api/v1/requests?repo_id=acme/nothing", api.rival_reviewer)
    hidden = api.get(f"/api/v1/requests?repo_id={REPO}", api.rival_reviewer)
    assert (
        problem(missing, 404)["detail"].replace("nothing", "tiny") == problem(hidden, 404)["detail"]
    )


@pytest.mark.parametrize("who", ["publisher", "compliance", "researcher"])
def test_review_queue_is_for_reviewers(api: Api, who: str) -> None:
    problem(api.get("/api/v1/requests", getattr(api, who)), 403, "forbidden")


# -- reviews ---------------------------------------------------------------------------------------
def test_approval_by_the_models_reviewer_creates_the_grant(api: Api) -> None:
    request_id = pending_request(api)["id"]
    body = ok(api.review(request_id, "approve", note="fine"))
    assert (body["status"], body["decision_note"]) == ("approved", "fine")
    assert body["grant"]["tier"] == "weights-manual"
    assert [r["verdict"] for r in body["reviews"]] == ["approve"]
    assert ok(api.get("/api/v1/me/grants", api.researcher))["grants"][0]["tier"] == "weights-manual"
    problem(api.review(request_id, "approve"), 409, "conflict")


def test_rejection_needs_a_note_the_requester_reads(api: Api) -> None:
    request_id = pending_request(api)["id"]
    problem(api.review(request_id, "reject"), 422, "invalid_input")
    problem(api.review(request_id, "reject", note="   "), 422, "invalid_input")
    ok(api.review(request_id, "reject", note="Intended use is out of scope."))
    mine = ok(api.get(f"/api/v1/requests/{request_id}", api.researcher))
    assert (mine["status"], mine["decision_note"]) == ("rejected", "Intended use is out of scope.")
    assert ok(api.get("/api/v1/me/grants", api.researcher))["grants"] == []


@pytest.mark.parametrize(
    "who", ["rival_reviewer", "publisher", "compliance", "researcher", "outsider"]
)
def test_only_reviewers_of_the_models_org_decide(api: Api, who: str) -> None:
    request_id = pending_request(api)["id"]
    problem(api.review(request_id, "approve", getattr(api, who)), 403, "forbidden")
    assert ok(api.get(f"/api/v1/requests/{request_id}", api.researcher))["status"] == "pending"


def test_reviewers_do_not_decide_their_own_requests(api: Api) -> None:
    colleague = api.world.actor("ron", org="acme", role=Role.REVIEWER)
    api.world.kyc(colleague, api.reviewer)
    own = ok(api.request("weights-manual", api.reviewer), 201)
    assert own["status"] == "pending"
    problem(api.review(own["id"], "approve", api.reviewer), 403, "forbidden")
    ok(api.review(own["id"], "approve", colleague))


def test_approving_after_kyc_expired_conflicts_with_the_reasons(api: Api) -> None:
    request_id = pending_request(api)["id"]
    with api.world.airlock.db.session() as s:
        kyc_id = s.scalars(select(KycVerification.id)).one()
    backdate(api.world, KycVerification, kyc_id, expires_at=past())
    body = problem(api.review(request_id, "approve"), 409, "conflict")
    assert "kyc_expired" in {r["code"] for r in body["reasons"]}
    assert all(r["message"] for r in body["reasons"])
    assert ok(api.get(f"/api/v1/requests/{request_id}", api.researcher))["status"] == "pending"


def test_two_reviewers_are_needed_when_the_tier_says_so(api: Api) -> None:
    api.apply(policy_text(REPO, reviewers=2))
    second = api.world.actor("ron", org="acme", role=Role.REVIEWER)
    request_id = pending_request(api)["id"]
    first = ok(api.review(request_id, "approve"))
    assert (first["status"], first["grant"]) == ("pending", None)
    problem(api.review(request_id, "approve"), 409)
    final = ok(api.review(request_id, "approve", second))
    assert final["status"] == "approved"
    assert final["grant"] is not None


def test_reviewing_an_unknown_request_is_404(api: Api) -> None:
    problem(api.review(424242, "approve"), 404, "not_found")
    problem(api.post("/api/v1/requests/1/review", json={"verdict": "approve"}), 401)


# -- grants of the caller --------------------------------------------------------------------------
def test_me_grants_needs_access_request_scope(api: Api) -> None:
    problem(api.get("/api/v1/me/grants"), 401)
    narrow = api.token(api.researcher, [Scope.TOKENS_MANAGE])
    problem(api.get("/api/v1/me/grants", narrow), 403)


def test_whoami_names_roles_by_org(api: Api) -> None:
    body = ok(api.get("/api/v1/me", api.reviewer))
    assert body["username"] == "rita"
    assert body["roles"] == {"acme": ["reviewer"]}
    assert "requests:review" in body["scopes"]
    problem(api.get("/api/v1/me"), 401)


# -- tokens ----------------------------------------------------------------------------------------
def test_token_is_shown_once_and_listed_without_secret(api: Api) -> None:
    created = ok(
        api.post(
            "/api/v1/me/tokens", api.publisher, json={"name": "ci", "scopes": ["models:write"]}
        ),
        201,
    )
    assert created["token"].startswith("alk_")
    assert created["prefix"] == created["token"][:8]
    assert created["scopes"] == ["models:write"]
    listed = ok(api.get("/api/v1/me/tokens", api.publisher))["tokens"]
    assert {t["name"] for t in listed} == {"test", "ci"}
    assert all(t["token"] is None for t in listed)
    assert created["token"] not in api.get("/api/v1/me/tokens", api.publisher).get_data(
        as_text=True
    )
    new = {"Authorization": f"Bearer {created['token']}"}
    assert ok(api.client.get("/api/v1/me", headers=new))["username"] == "pat"


def test_token_scopes_must_be_allowed_by_roles(api: Api) -> None:
    body = {"name": "x", "scopes": ["audit:read"]}
    problem(api.post("/api/v1/me/tokens", api.publisher, json=body), 403, "forbidden")
    problem(
        api.post("/api/v1/me/tokens", api.researcher, json=body | {"scopes": ["models:write"]}), 403
    )


def test_a_token_cannot_mint_a_token_with_more_scopes_than_itself(api: Api) -> None:
    narrow = api.token(api.publisher, [Scope.TOKENS_MANAGE, Scope.MODELS_READ])
    body = {"name": "escalate", "scopes": ["models:write"]}
    problem(api.post("/api/v1/me/tokens", narrow, json=body), 403, "forbidden")
    ok(api.post("/api/v1/me/tokens", narrow, json=body | {"scopes": ["models:read"]}), 201)


def test_unknown_scopes_are_invalid(api: Api) -> None:
    body = {"name": "x", "scopes": ["root:everything"]}
    problem(api.post("/api/v1/me/tokens", api.publisher, json=body), 422, "invalid_input")


def test_revoked_token_fails_on_the_next_request(api: Api) -> None:
    created = ok(
        api.post(
            "/api/v1/me/tokens", api.researcher, json={"name": "t", "scopes": ["tokens:manage"]}
        ),
        201,
    )
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert api.client.get("/api/v1/me/tokens", headers=headers).status_code == 200
    revoked = ok(api.delete(f"/api/v1/me/tokens/{created['id']}", api.researcher))
    assert revoked["revoked_at"] is not None
    assert revoked["token"] is None
    response = api.client.get("/api/v1/me/tokens", headers=headers)
    problem(response, 401, "invalid_credentials")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    with api.world.airlock.db.session() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    assert actions[-1] == "token:revoke"


def test_tokens_of_other_users_cannot_be_revoked(api: Api) -> None:
    problem(
        api.delete(f"/api/v1/me/tokens/{api.publisher.principal.token_id}", api.researcher), 404
    )
    assert api.get("/api/v1/me", api.publisher).status_code == 200


def test_expired_unknown_and_malformed_tokens_are_401(api: Api) -> None:
    backdate(api.world, ApiToken, api.outsider.principal.token_id, expires_at=past())
    for header in (
        f"Bearer {api.outsider.token}",
        "Bearer alk_" + "x" * 43,
        "Bearer not-a-token",
        "Basic dXNlcjpwYXNz",
        "Bearer",
    ):
        problem(api.client.get("/api/v1/me", headers={"Authorization": header}), 401)


def test_a_token_without_the_scope_is_403(api: Api) -> None:
    narrow = api.token(api.researcher, [Scope.ACCESS_REQUEST])
    problem(api.get("/api/v1/me/tokens", narrow), 403, "forbidden")
    problem(
        api.post("/api/v1/me/tokens", narrow, json={"name": "x", "scopes": ["access:request"]}), 403
    )


def test_token_lifetime_is_bounded(api: Api) -> None:
    body = {"name": "x", "scopes": ["access:request"], "expires_in_days": 400}
    problem(api.post("/api/v1/me/tokens", api.researcher, json=body), 422)
    ttl = ok(api.post("/api/v1/me/tokens", api.researcher, json=body | {"expires_in_days": 1}), 201)
    assert ttl["expires_at"] > ttl["created_at"]


# -- manual KYC ------------------------------------------------------------------------------------
def kyc_body(**over: object) -> dict[str, object]:
    return {
        "username": "rob",
        "org": "acme",
        "level": "identity",
        "nationality": "GB",
        "residence_country": "GB",
        "document_country": "GB",
    } | over


def test_reviewer_records_kyc_which_then_satisfies_the_tier(api: Api) -> None:
    body = ok(api.post("/api/v1/kyc/manual", api.reviewer, json=kyc_body()), 201)
    assert (body["username"], body["level"], body["provider"]) == ("rob", "identity", "manual")
    assert ok(api.request("weights-auto"), 201)["status"] == "approved"


@pytest.mark.parametrize("who", ["publisher", "compliance", "researcher", "rival_reviewer"])
def test_only_kyc_recorders_of_the_org_record_kyc(api: Api, who: str) -> None:
    problem(api.post("/api/v1/kyc/manual", getattr(api, who), json=kyc_body()), 403, "forbidden")
    problem(api.post("/api/v1/kyc/manual", json=kyc_body()), 401)


def test_kyc_for_unknown_users_or_orgs_is_404_and_self_verification_403(api: Api) -> None:
    problem(api.post("/api/v1/kyc/manual", api.reviewer, json=kyc_body(username="nobody")), 404)
    problem(api.post("/api/v1/kyc/manual", api.reviewer, json=kyc_body(org="nowhere")), 404)
    problem(api.post("/api/v1/kyc/manual", api.reviewer, json=kyc_body(username="rita")), 403)


def test_kyc_recorded_by_one_org_does_not_count_for_another(api: Api) -> None:
    ok(api.post("/api/v1/kyc/manual", api.rival_reviewer, json=kyc_body(org="globex")), 201)
    assert ok(api.request("weights-auto", repo=REPO), 201)["status"] == "denied"
    assert ok(api.request("weights-auto", repo=RIVAL_REPO), 201)["status"] == "approved"
