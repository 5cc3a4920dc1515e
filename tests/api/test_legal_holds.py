"""Compliance API: legal holds, placed, listed and released by a compliance officer of the org."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.auth.tokens import Scope
from tests.api.apikit import REPO, RIVAL_REPO, Api, make_api, ok, problem
from tests.factories import World

HOLDS = "/api/v1/compliance/legal-holds"


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    api = make_api(client, world)
    world.kyc(api.reviewer, api.researcher)
    ok(api.request("weights-auto"), 201)  # rob now appears in acme's events
    return api


def place(api: Api, **body: Any) -> Any:
    payload = {"org": "acme", "kind": "model", "subject": REPO, "reason": "litigation #7"} | body
    return api.post(HOLDS, api.compliance, json=payload)


def test_a_compliance_officer_places_lists_and_releases_a_hold(api: Api) -> None:
    held = ok(place(api), 201)
    assert (held["kind"], held["reason"], held["released_at"]) == ("model", "litigation #7", None)
    user = ok(place(api, kind="user", subject="rob"), 201)
    listed = ok(api.get(HOLDS, api.compliance))["holds"]
    assert [h["id"] for h in listed] == [held["id"], user["id"]]
    released = ok(api.delete(f"{HOLDS}/{held['id']}", api.compliance))
    assert released["released_at"] is not None
    active = ok(api.get(f"{HOLDS}?active=true", api.compliance))["holds"]
    assert [h["id"] for h in active] == [user["id"]]
    actions = [e["action"] for e in ok(api.get("/api/v1/audit", api.compliance))["events"]]
    assert actions.count("legal_hold:place") == 2 and actions.count("legal_hold:release") == 1
    problem(api.delete(f"{HOLDS}/{held['id']}", api.compliance), 409, "conflict")


def test_holds_stay_within_the_callers_compliance_orgs(api: Api) -> None:
    held = ok(place(api), 201)
    # Another organization's officer sees none of acme's holds and cannot release one.
    assert ok(api.get(HOLDS, api.rival_compliance))["holds"] == []
    problem(api.delete(f"{HOLDS}/{held['id']}", api.rival_compliance), 404, "not_found")
    # acme's officer places none for globex, nor on globex's model or people.
    problem(place(api, org="globex", subject=RIVAL_REPO), 403, "forbidden")
    problem(place(api, subject=RIVAL_REPO), 404, "not_found")
    problem(place(api, kind="user", subject="gus"), 404, "not_found")  # globex's publisher
    problem(place(api, org="nowhere"), 404, "not_found")
    # Roles without audit:read, and tokens without it, can do nothing with holds.
    body = {"org": "acme", "kind": "model", "subject": REPO, "reason": "x"}
    for caller in (api.publisher, api.reviewer, api.researcher, api.outsider):
        problem(api.post(HOLDS, caller, json=body), 403, "forbidden")
        problem(api.get(HOLDS, caller), 403, "forbidden")
        problem(api.delete(f"{HOLDS}/{held['id']}", caller), 403, "forbidden")
    problem(api.get(HOLDS), 401, "authentication_required")
    narrow = api.token(api.compliance, [Scope.ACCESS_REQUEST])
    problem(api.get(HOLDS, narrow), 403, "forbidden")
    problem(api.delete(f"{HOLDS}/{held['id']}", narrow), 403, "forbidden")
    assert ok(api.get(HOLDS, api.compliance))["holds"][0]["released_at"] is None


BAD_BODIES = [
    {"kind": "org"},
    {"reason": ""},
    {"subject": ""},
    {"extra": 1},
    {"reason": "x" * 3000},
]


def test_bad_hold_input_is_a_clear_4xx(api: Api) -> None:
    for body in BAD_BODIES:
        response = place(api, **body)
        problem(response, 422, "invalid_input")
    problem(api.get(f"{HOLDS}?active=maybe", api.compliance), 422, "invalid_input")
    problem(api.delete(f"{HOLDS}/999999", api.compliance), 404, "not_found")
