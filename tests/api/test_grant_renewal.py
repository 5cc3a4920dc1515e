"""Access API: POST /grants/<id>/renew (own grant, in its window) and what /me/grants says."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from gateway.auth.tokens import Scope
from gateway.db.models import Grant
from tests.api.apikit import Api, backdate, make_api, ok, problem
from tests.factories import Actor, World


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    return make_api(client, world)


def _granted(api: Api, tier: str = "weights-auto", aged: timedelta = timedelta(0)) -> Any:
    """A grant of the researcher's, its lifetime moved `aged` into the past."""
    api.world.kyc(api.reviewer, api.researcher)
    body = ok(api.request(tier), 201)
    if body["grant"] is None:
        body = ok(api.review(body["id"], "approve"))
    grant = body["grant"]
    with api.world.airlock.db.session() as s:
        row = s.get_one(Grant, grant["id"])
        start, end = row.granted_at - aged, row.expires_at
    assert end is not None
    backdate(api.world, Grant, grant["id"], granted_at=start, expires_at=end - aged)
    return grant


def _renew(api: Api, grant_id: int, actor: Actor | None = None, **body: Any) -> Any:
    return api.post(f"/api/v1/grants/{grant_id}/renew", actor or api.researcher, json=body)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _mine(api: Api) -> dict[int, Any]:
    return {g["id"]: g for g in ok(api.get("/api/v1/me/grants", api.researcher))["grants"]}


def test_renewal_in_the_window_supersedes_the_grant(api: Api) -> None:
    old = _granted(api, aged=timedelta(days=25))
    assert _mine(api)[old["id"]]["renewable_from"] is not None
    body = ok(_renew(api, old["id"]), 201)
    assert (body["status"], body["form"], body["agreement"]) == (
        "approved",
        {"intended_use": "evaluation"},
        "aup@1",
    )
    grants = _mine(api)
    new = grants[body["grant"]["id"]]
    assert (new["status"], new["renewal_request_id"]) == ("active", None)
    ended = grants[old["id"]]
    assert (ended["status"], ended["renewable_from"]) == ("expired", None)
    assert ended["end_reason"].startswith("superseded by grant")


def test_a_pending_renewal_is_listed_with_its_grant(api: Api) -> None:
    old = _granted(api, "weights-manual", aged=timedelta(days=61))
    body = ok(_renew(api, old["id"]), 201)
    assert (body["status"], body["grant"]) == ("pending", None)
    assert _mine(api)[old["id"]]["renewal_request_id"] == body["id"]
    problem(_renew(api, old["id"]), 409, "conflict")


def test_outside_the_window_is_409_saying_when_it_opens(api: Api) -> None:
    grant = _granted(api)
    body = problem(_renew(api, grant["id"]), 409, "conflict")
    assert "can be renewed from" in body["detail"]
    listed = _mine(api)[grant["id"]]["renewable_from"]
    assert _at(body["renewable_from"]) == _at(listed)


def test_another_researchers_grant_is_404(api: Api) -> None:
    grant = _granted(api, aged=timedelta(days=25))
    problem(_renew(api, grant["id"], api.outsider), 404)
    problem(_renew(api, 10**9), 404)
    problem(_renew(api, grant["id"], api.reviewer), 404)


def test_renewal_needs_a_token_with_access_request(api: Api) -> None:
    grant = _granted(api, aged=timedelta(days=25))
    problem(api.post(f"/api/v1/grants/{grant['id']}/renew", json={}), 401)
    narrow = api.token(api.researcher, [Scope.MODELS_READ])
    problem(_renew(api, grant["id"], narrow), 403)


@pytest.mark.parametrize(
    "body",
    [{"form": "evaluation"}, {"agreement": 12}, {"agreement": "aup"}, {"extra": 1}],
)
def test_bad_input_is_422(api: Api, body: dict[str, Any]) -> None:
    grant = _granted(api, aged=timedelta(days=25))
    problem(_renew(api, grant["id"], **body), 422)
