"""Access API: a reviewer sends a reviewed request back to pending (verdicts cleared, its grant
revoked, audited), only in their organization, never their own, always with a reason."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from gateway.db.models import AuditEvent, Role
from tests.api.apikit import Api, make_api, ok, problem
from tests.factories import Actor, World


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    return make_api(client, world)


def _pending(api: Api) -> int:
    api.world.kyc(api.reviewer, api.researcher)
    body = ok(api.request("weights-manual"), 201)
    assert body["status"] == "pending", body
    return int(body["id"])


def _reset(
    api: Api, request_id: int, reason: str = "reviewed in error", actor: Actor | None = None
) -> TestResponse:
    return api.post(
        f"/api/v1/requests/{request_id}/reset", actor or api.reviewer, json={"reason": reason}
    )


def test_an_approved_request_goes_back_to_pending_and_its_grant_is_revoked(api: Api) -> None:
    request_id = _pending(api)
    grant = ok(api.review(request_id, "approve", note="fine"))["grant"]
    body = ok(_reset(api, request_id))
    assert (body["status"], body["reviews"], body["decided_at"]) == ("pending", [], None)
    grants = ok(api.get("/api/v1/me/grants", api.researcher))["grants"]
    assert [(g["id"], g["status"], g["end_reason"]) for g in grants] == [
        (grant["id"], "revoked", "reviewed in error")
    ]
    with api.world.airlock.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "request:reset")).one()
    assert event.payload["previous"] == "approved"
    assert event.payload["reviews"] == [{"reviewer_id": api.reviewer.user.id, "verdict": "approve"}]
    # decided again from the start: the same reviewer may approve anew
    assert ok(api.review(request_id, "approve"))["grant"]["id"] != grant["id"]


def test_a_rejected_request_is_reopened(api: Api) -> None:
    request_id = _pending(api)
    ok(api.review(request_id, "reject", note="out of scope"))
    body = ok(_reset(api, request_id))
    assert (body["status"], body["decision_note"]) == ("pending", None)
    problem(_reset(api, request_id), 409, "conflict")  # nothing left to reset


@pytest.mark.parametrize("who", ["rival_reviewer", "publisher", "compliance", "researcher"])
def test_only_reviewers_of_the_models_org_reset(api: Api, who: str) -> None:
    request_id = _pending(api)
    ok(api.review(request_id, "reject", note="no"))
    problem(_reset(api, request_id, actor=getattr(api, who)), 403, "forbidden")
    assert ok(api.get(f"/api/v1/requests/{request_id}", api.researcher))["status"] == "rejected"


def test_reset_needs_a_reason_and_never_ones_own_request(api: Api) -> None:
    request_id = _pending(api)
    ok(api.review(request_id, "reject", note="no"))
    problem(_reset(api, request_id, reason=""), 422)
    problem(_reset(api, request_id, reason="   "), 422, "invalid_input")
    colleague = api.world.actor("ron", org="acme", role=Role.REVIEWER)
    api.world.kyc(colleague, api.reviewer)
    own = ok(api.request("weights-manual", api.reviewer), 201)["id"]
    ok(api.review(own, "reject", colleague, note="no"))
    problem(_reset(api, own), 403, "forbidden")
    problem(_reset(api, 10_000), 404, "not_found")
