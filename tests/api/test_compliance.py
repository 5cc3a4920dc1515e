"""Compliance API: the audit log, confined to the caller's organizations, filtered and paged."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.auth.tokens import Scope
from gateway.db.models import AuditEvent, Role, utcnow
from tests.api.apikit import REPO, RIVAL_REPO, Api, audit_events, make_api, ok, problem
from tests.factories import World


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    api = make_api(client, world)
    world.kyc(api.reviewer, api.researcher)
    ok(api.request("weights-auto"), 201)
    world.kyc(api.rival_reviewer, api.researcher, org="globex")
    ok(api.request("weights-auto", repo=RIVAL_REPO), 201)
    return api


def org_id(api: Api, slug: str) -> int:
    return api.world.org(slug).id


def model_id(api: Api, repo: str) -> int:
    with api.world.airlock.db.session() as s:
        return api.world.airlock.publishing.get_model(s, repo).id


def test_compliance_sees_its_orgs_events_only(api: Api) -> None:
    mine = audit_events(api, api.compliance)
    assert mine
    assert {e["org_id"] for e in mine} == {org_id(api, "acme"), None}
    assert {"model:create", "policy:apply", "kyc:verify", "grant:create"} <= {
        e["action"] for e in mine
    }
    theirs = audit_events(api, api.rival_compliance)
    assert {e["org_id"] for e in theirs} == {org_id(api, "globex"), None}
    # Both see only the organization-less events of rob, who asked both for access.
    shared = [e for e in mine if e["seq"] in {t["seq"] for t in theirs}]
    assert {(e["org_id"], e["subject_user_id"]) for e in shared} == {(None, api.researcher.user.id)}


def test_filters_cannot_reach_into_another_org(api: Api) -> None:
    assert audit_events(api, api.compliance, repo_id=RIVAL_REPO) == []
    assert audit_events(api, api.compliance, actor="gus") == []
    assert audit_events(api, api.rival_compliance, repo_id=REPO) == []
    subject = audit_events(api, api.compliance, subject="rob")
    assert subject
    assert {e["org_id"] for e in subject} == {org_id(api, "acme"), None}  # None: his token


@pytest.mark.parametrize("who", ["publisher", "reviewer", "researcher", "outsider"])
def test_audit_needs_a_compliance_role(api: Api, who: str) -> None:
    problem(api.get("/api/v1/audit", getattr(api, who)), 403, "forbidden")


def test_audit_needs_a_token_with_audit_read(api: Api) -> None:
    problem(api.get("/api/v1/audit"), 401, "authentication_required")
    narrow = api.token(api.compliance, [Scope.ACCESS_REQUEST])
    problem(api.get("/api/v1/audit", narrow), 403, "forbidden")


def test_an_owner_reads_only_the_audit_of_their_own_org(api: Api) -> None:
    # An owner of globex holds audit:read by role; it confers nothing in acme.
    owner = api.world.actor("olga", org="globex", role=Role.OWNER)
    assert {e["org_id"] for e in audit_events(api, owner)} == {org_id(api, "globex"), None}


def test_cursor_pagination_returns_every_event_exactly_once(api: Api) -> None:
    everything = [e["seq"] for e in audit_events(api, api.compliance, limit=1000)]
    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        body = ok(api.get(f"/api/v1/audit?{urlencode(params)}", api.compliance))
        assert len(body["events"]) <= 3
        seen += [e["seq"] for e in body["events"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == everything
    assert len(set(seen)) == len(seen)
    assert pages >= len(everything) // 3


def test_filter_by_action_effect_actor_subject_and_repo(api: Api) -> None:
    grants = audit_events(api, api.compliance, action="grant:create")
    assert [e["payload"]["tier"] for e in grants] == ["weights-auto"]
    assert {e["effect"] for e in audit_events(api, api.compliance, effect="allow")} == {"allow"}
    by_pat = audit_events(api, api.compliance, actor="pat")
    assert by_pat
    assert {e["actor_id"] for e in by_pat} == {api.publisher.user.id}
    about_rob = audit_events(api, api.compliance, subject="rob")
    assert {e["subject_user_id"] for e in about_rob} == {api.researcher.user.id}
    assert {"kyc:verify", "request:create", "grant:create"} <= {e["action"] for e in about_rob}
    on_repo = audit_events(api, api.compliance, repo_id=REPO)
    assert on_repo
    assert {e["model_id"] for e in on_repo} == {model_id(api, REPO)}
    assert audit_events(api, api.compliance, actor="nobody") == []
    assert audit_events(api, api.compliance, action="grant:create", effect="deny") == []


def test_filter_by_time(api: Api) -> None:
    with api.world.airlock.db.session() as s:
        middle = s.scalars(
            select(AuditEvent).where(AuditEvent.action == "kyc:verify").order_by(AuditEvent.seq)
        ).first()
        assert middle is not None
        moment = middle.occurred_at
    all_events = audit_events(api, api.compliance)
    since = audit_events(api, api.compliance, since=moment.isoformat())
    until = audit_events(api, api.compliance, until=moment.isoformat())
    assert since
    assert until
    assert all(e["seq"] >= middle.seq for e in since)
    assert all(e["seq"] < middle.seq for e in until)
    assert len(since) + len(until) == len(all_events)
    future = (utcnow() + timedelta(days=1)).isoformat()
    assert audit_events(api, api.compliance, since=future) == []


def test_time_filters_need_a_time_zone(api: Api) -> None:
    response = api.get("/api/v1/audit?since=2024-01-01T00:00:00", api.compliance)
    assert problem(response, 422, "invalid_input")["errors"][0]["path"] == "since"
    ok(api.get("/api/v1/audit?since=2024-01-01T00:00:00Z", api.compliance))


def test_unknown_filters_are_refused_not_ignored(api: Api) -> None:
    problem(api.get("/api/v1/audit?actr=pat", api.compliance), 422, "invalid_input")
    problem(api.get("/api/v1/audit?effect=maybe", api.compliance), 422, "invalid_input")
    problem(api.get("/api/v1/audit?limit=0", api.compliance), 422, "invalid_input")
    problem(api.get(f"/api/v1/audit?cursor={2**64}", api.compliance), 422, "invalid_input")
