"""Compliance API: an officer also reads the organization-less events (tokens, accounts) of the
people who asked one of their organizations for access, and nobody else's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.audit import AuditAction
from gateway.db.models import AuditEvent, User
from gateway.errors import NotFound
from gateway.services.audit_log import AuditFilter, AuditLogService
from tests.api.apikit import REPO, RIVAL_REPO, Api, audit_events, make_api, ok
from tests.factories import Actor, World
from tests.pg import on_both_engines


@pytest.fixture
def api(client: FlaskClient, world: World) -> Api:
    """Rob asks acme, gwen asks globex, bo asks both, otto asks nobody; each makes a token."""
    api = make_api(client, world)
    gwen, bo = world.actor("gwen"), world.actor("bo")
    asks = ((api.researcher, REPO), (gwen, RIVAL_REPO), (bo, REPO), (bo, RIVAL_REPO))
    for who, repo in asks:
        ok(api.request("card", who, repo=repo), 201)
    for who in (api.researcher, gwen, bo, api.outsider):
        body = {"name": "laptop", "scopes": ["models:read"], "expires_in_days": 7}
        ok(api.post("/api/v1/me/tokens", who, json=body), 201)
    return api


def user_id(api: Api, name: str) -> int:
    with api.world.airlock.db.session() as s:
        return s.scalars(select(User.id).where(User.username == name)).one()


def events(api: Api, caller: Actor, **params: Any) -> list[dict[str, Any]]:
    return audit_events(api, caller, **{"limit": 1000, **params})


def subjects(api: Api, found: list[dict[str, Any]]) -> set[str]:
    names = {user_id(api, n): n for n in ("rob", "gwen", "bo", "otto")}
    return {names.get(e["subject_user_id"], "?") for e in found}


def token_events(api: Api, name: str) -> list[int]:
    with api.world.airlock.db.session() as s:
        found = s.scalars(
            select(AuditEvent.seq).where(
                AuditEvent.action == str(AuditAction.TOKEN_CREATE),
                AuditEvent.subject_user_id == user_id(api, name),
            )
        )
        return list(found)


@on_both_engines
def test_officers_see_the_personal_events_of_their_own_applicants_only(api: Api) -> None:
    acme, globex = api.world.org("acme").id, api.world.org("globex").id
    mine = events(api, api.compliance)
    assert {e["org_id"] for e in mine} == {acme, None}
    personal = [e for e in mine if e["org_id"] is None]
    assert {e["action"] for e in personal} == {"token:create", "user:create"}
    assert subjects(api, personal) == {"rob", "bo"}
    theirs = events(api, api.rival_compliance)
    assert {e["org_id"] for e in theirs} == {globex, None}
    assert subjects(api, [e for e in theirs if e["org_id"] is None]) == {"gwen", "bo"}
    shared = {e["seq"] for e in mine} & {e["seq"] for e in theirs}
    assert shared == {e["seq"] for e in personal if subjects(api, [e]) == {"bo"}}
    assert shared


def test_filters_pick_personal_events_of_applicants_and_nobody_else(api: Api) -> None:
    tokens = events(api, api.compliance, action="token:create")
    assert subjects(api, tokens) == {"rob", "bo"}
    assert len(tokens) == 4  # each one's test token and laptop token
    assert subjects(api, events(api, api.rival_compliance, action="token:create")) == {
        "gwen",
        "bo",
    }
    by_rob = events(api, api.compliance, actor="rob", action="token:create")
    assert [e["payload"]["name"] for e in by_rob] == ["test", "laptop"]
    assert events(api, api.compliance, actor="gwen") == []
    assert events(api, api.compliance, subject="gwen") == []
    assert events(api, api.compliance, subject="otto") == []
    assert events(api, api.rival_compliance, actor="rob") == []
    about_bo = {e["action"] for e in events(api, api.compliance, subject="bo")}
    assert {"user:create", "token:create", "request:create"} <= about_bo


def test_export_and_timelines_follow_the_same_rule(api: Api) -> None:
    for caller, gone in ((api.compliance, "gwen"), (api.rival_compliance, "rob")):
        listed = [e["seq"] for e in events(api, caller)]
        response = api.get("/api/v1/audit/export?format=jsonl", caller)
        lines = response.get_data(as_text=True).splitlines()
        exported = [json.loads(line)["seq"] for line in lines]
        assert exported == listed
        assert not set(token_events(api, gone)) & set(exported)
        assert not set(token_events(api, "otto")) & set(exported)
        assert set(token_events(api, "bo")) <= set(exported)
    timeline = ok(api.get("/api/v1/compliance/timeline?user=bo", api.compliance))["events"]
    assert [e["action"] for e in timeline][:2] == ["user:create", "token:create"]
    assert {e["org_id"] for e in timeline} == {api.world.org("acme").id, None}
    gwen = ok(api.get("/api/v1/compliance/timeline?user=gwen", api.compliance))["events"]
    assert gwen == []


def test_an_invisible_personal_event_is_not_found(api: Api) -> None:
    service = AuditLogService()
    with api.world.airlock.db.session() as s:
        for seq in token_events(api, "rob"):
            assert service.get(s, principal=api.compliance.principal, seq=seq).seq == seq
        for name in ("gwen", "otto"):
            for seq in token_events(api, name):
                with pytest.raises(NotFound):
                    service.get(s, principal=api.compliance.principal, seq=seq)


def test_an_event_without_a_subject_is_its_actors(api: Api) -> None:
    """An organization-less personal event naming only its actor goes with the actor's
    applications; a deployment operation an applicant ran stays out of view."""
    airlock = api.world.airlock
    with airlock.db.session() as s:
        for who in ("rob", "gwen"):
            for action in (AuditAction.KYC_START, AuditAction.PACK_DEPLOY):
                airlock.audit.record(s, action, actor_id=user_id(api, who), payload={"x": who})
        airlock.audit.record(s, AuditAction.KYC_START, actor_id=None, payload={"x": "nobody"})
        s.commit()
        seen = {
            action: [
                e.payload.get("x")
                for e in AuditLogService().query(
                    s,
                    principal=api.compliance.principal,
                    filters=AuditFilter(action=action),
                    cursor=None,
                    limit=10,
                )[0]
            ]
            for action in ("kyc:start", "pack:deploy")
        }
    assert seen == {"kyc:start": ["rob"], "pack:deploy": []}
