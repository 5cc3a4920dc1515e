"""Publisher and reviewer pages: models, the policy editor, the review queue, grants, stage
promotion and freeze; each refuses the wrong role, another organization and a missing CSRF."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from gateway.db.models import AccessRequest, Grant, Model, Role
from gateway.services.container import Airlock
from tests.factories import Actor, World, policy_text
from tests.pg import on_both_engines
from tests.web.webkit import csrf_of, sign_in

MODEL = "/ui/manage/models/acme/tiny"
RU_DENIED = policy_text("acme/tiny").replace(
    "deny: [pack:us-ofac-comprehensive]", "deny: [pack:us-ofac-comprehensive, RU]"
)


@dataclass
class Cast:
    publisher: Actor
    reviewer: Actor
    researcher: Actor
    model: Model


@pytest.fixture
def cast(world: World) -> Cast:
    publisher = world.actor("alice", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob")
    return Cast(publisher, reviewer, researcher, world.model(publisher))


def _as(app: Flask, airlock: Airlock, username: str) -> FlaskClient:
    client = app.test_client()
    sign_in(client, airlock, username)
    return client


def _pending(world: World, cast: Cast) -> int:
    world.kyc(cast.reviewer, cast.researcher)
    with world.airlock.db.session() as s:
        outcome = world.airlock.access.request_access(
            s,
            principal=cast.researcher.principal,
            model=s.merge(cast.model),
            tier="weights-manual",
            form={"intended_use": "interpretability"},
            agreement="aup@1",
            request_country=None,
        )
        return outcome.request.id


def test_each_page_renders_for_its_role(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    alice = _as(app, airlock, "alice")
    listing = alice.get("/ui/manage/models").text
    assert f'href="{MODEL}"' in listing and "Manage models" in listing
    page = alice.get(MODEL).text
    assert "<caption>Revisions, newest first, with their vetting reports</caption>" in page
    assert re.search(r"status-(passed|pending)", page) and "Emergency freeze" in page
    assert 'href="/ui/manage/models/acme/tiny/policy"' in page
    editor = alice.get(MODEL + "/policy").text
    assert "model: acme/tiny" in editor and '<label for="policy-source">' in editor
    assert alice.get(MODEL + "/grants").status_code == 200
    assert alice.get("/ui/review").status_code == 403  # publishing is not reviewing

    rita = _as(app, airlock, "rita")
    assert "Review queue" in rita.get("/ui/").text
    page = rita.get(MODEL).text
    assert "Emergency freeze" not in page and "/policy" not in page
    assert rita.get(MODEL + "/policy").status_code == 403
    data = {"csrf_token": csrf_of(rita, MODEL), "frozen": "true", "reason": "x", "confirm": "yes"}
    assert rita.post(MODEL + "/freeze", data=data).status_code == 403


def test_wrong_role_and_other_organizations_are_refused(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    world.actor("carl", org="acme", role=Role.COMPLIANCE)
    uma = world.actor("uma", org="umbrella", role=Role.OWNER)
    world.model(uma, "umbrella/big")
    for username in ("rob", "carl"):
        client = _as(app, airlock, username)
        for path in ("/ui/manage/models", MODEL, MODEL + "/policy", "/ui/review"):
            assert client.get(path).status_code == 403, (username, path)
        assert "Manage models" not in client.get("/ui/").text
    other = _as(app, airlock, "uma")
    for path in (MODEL, MODEL + "/policy", MODEL + "/grants"):
        assert other.get(path).status_code == 404, path
    assert "acme/tiny" not in other.get("/ui/manage/models").text
    assert _as(app, airlock, "alice").get("/ui/manage/models/umbrella/big").status_code == 404
    request_id = _pending(world, cast)
    assert other.get(f"/ui/review/{request_id}").status_code == 404
    assert f"#{request_id}" not in other.get("/ui/review").text
    assert _as(app, airlock, "rob").get(f"/ui/review/{request_id}").status_code == 403
    grant = world.grant(world.actor("gil"), cast.model, tier="card")
    token = csrf_of(other, "/ui/manage/models")
    for path, data in (
        (MODEL + "/freeze", {"frozen": "true", "reason": "x", "confirm": "yes"}),
        (MODEL + "/stage", {"stage": "general", "reason": "x", "confirm": "yes"}),
        (MODEL + "/policy", {"source": RU_DENIED, "action": "apply"}),
        (f"/ui/manage/grants/{grant.id}/revoke", {"reason": "x"}),
        (f"/ui/review/{request_id}", {"verdict": "approve"}),
        (f"/ui/review/{request_id}/reset", {"reason": "x"}),
    ):
        assert other.post(path, data={"csrf_token": token, **data}).status_code == 404, path
    with airlock.db.session() as s:
        assert s.get_one(Model, cast.model.id).frozen_at is None
        assert s.get_one(Grant, grant.id).status == "active"
        assert s.get_one(AccessRequest, request_id).status == "pending"


def test_every_form_refuses_a_missing_csrf_token(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    alice = _as(app, airlock, "alice")
    grant = world.grant(_kyced(world, cast), cast.model)
    pending = _pending(world, cast)
    for path, data in (
        (MODEL + "/freeze", {"frozen": "true", "reason": "leak", "confirm": "yes"}),
        (MODEL + "/stage", {"stage": "general", "reason": "ready", "confirm": "yes"}),
        (MODEL + "/policy", {"source": RU_DENIED, "action": "apply"}),
        (f"/ui/manage/grants/{grant.id}/revoke", {"reason": "misuse"}),
        (f"/ui/review/{pending}", {"verdict": "approve"}),
        (f"/ui/review/{pending}/reset", {"reason": "again"}),
    ):
        refused = alice.post(path, data=data)
        assert refused.status_code == 400 and "security token" in refused.text, path
    with airlock.db.session() as s:
        assert s.get_one(Model, cast.model.id).frozen_at is None
        assert s.get_one(Grant, grant.id).status == "active"


def _kyced(world: World, cast: Cast) -> Actor:
    world.kyc(cast.reviewer, cast.researcher)
    return cast.researcher


def test_policy_errors_are_shown_at_their_line(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    alice = _as(app, airlock, "alice")
    source = policy_text("acme/tiny").replace("kyc: identity", "kyc: passport")
    line = source.splitlines().index("      kyc: passport") + 1
    data = {"csrf_token": csrf_of(alice, MODEL + "/policy"), "source": source}
    shown = alice.post(MODEL + "/policy", data={**data, "action": "validate"})
    assert shown.status_code == 422
    item = re.search(rf'<li id="line-{line}" class="has-error">(.*?)</li>', shown.text, re.S)
    assert item and "kyc: passport" in item.group(1)
    assert re.search(
        rf"Line {line}</strong>, <code>tiers\[1\]\.requires\.kyc</code>", item.group(1)
    )
    assert f'href="#line-{line}"' in shown.text
    elsewhere = RU_DENIED.replace("acme/tiny", "acme/else")
    other = alice.post(MODEL + "/policy", data={**data, "action": "apply", "source": elsewhere})
    assert other.status_code == 422 and "the document names" in other.text
    valid = alice.post(MODEL + "/policy", data={**data, "source": RU_DENIED, "action": "validate"})
    assert valid.status_code == 200 and "The policy is valid" in valid.text


@on_both_engines
def test_preview_lists_the_grants_a_change_would_revoke_and_apply_applies(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    boris = world.actor("boris")
    world.kyc(cast.reviewer, boris, country="RU")
    world.grant(boris, cast.model)
    world.grant(_kyced(world, cast), cast.model)
    alice = _as(app, airlock, "alice")
    data = {"csrf_token": csrf_of(alice, MODEL + "/policy"), "source": RU_DENIED}
    preview = alice.post(MODEL + "/policy", data={**data, "action": "preview"}).text
    rows = re.findall(r"<tr>\s*<th scope=\"row\">#\d+</th>\s*<td>(\w+)</td>.*?</tr>", preview, re.S)
    assert rows == ["boris"] and "jurisdiction_denied" in preview
    assert "1 kept, 0 suspended, 1 revoked" in preview
    applied = alice.post(MODEL + "/policy", data={**data, "action": "apply", "comment": "RU"})
    assert applied.status_code == 302
    assert "applied as version 2" in alice.get(applied.location).text


@on_both_engines
def test_review_queue_reject_needs_a_reason_then_approve(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    request_id = _pending(world, cast)
    rita = _as(app, airlock, "rita")
    queue = rita.get("/ui/review").text
    assert f'href="/ui/review/{request_id}"' in queue and "0 of 1" in queue
    detail = rita.get(f"/ui/review/{request_id}").text
    assert "interpretability" in detail and "approval_required" in detail
    assert "institution" in detail and "GB" in detail  # KYC level and countries
    token = csrf_of(rita, f"/ui/review/{request_id}")
    refused = rita.post(f"/ui/review/{request_id}", data={"csrf_token": token, "verdict": "reject"})
    assert refused.status_code == 400
    assert re.search(r'id="note-errors">\s*<li>A rejection needs a reason', refused.text)
    approved = rita.post(
        f"/ui/review/{request_id}", data={"csrf_token": token, "verdict": "approve"}
    )
    assert approved.status_code == 302
    with airlock.db.session() as s:
        assert s.get_one(AccessRequest, request_id).status == "approved"
        assert s.scalars(select(Grant).where(Grant.request_id == request_id)).one()

    assert "Recently decided" in rita.get("/ui/review").text
    reset = f"/ui/review/{request_id}/reset"
    missing = rita.post(reset, data={"csrf_token": token, "reason": ""})
    assert missing.status_code == 400 and 'id="reset_reason-errors"' in missing.text
    done = rita.post(reset, data={"csrf_token": token, "reason": "approved in error"})
    assert done.status_code == 302 and "is pending again" in rita.get(done.location).text
    with airlock.db.session() as s:
        assert s.get_one(AccessRequest, request_id).status == "pending"
        grant = s.scalars(select(Grant).where(Grant.request_id == request_id)).one()
        assert (grant.status, grant.end_reason) == ("revoked", "approved in error")


def test_a_reviewer_may_not_decide_their_own_request(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    ray = world.actor("ray", org="acme", role=Role.REVIEWER)
    world.kyc(ray, cast.reviewer)
    with airlock.db.session() as s:
        own = airlock.access.request_access(
            s,
            principal=cast.reviewer.principal,
            model=s.merge(cast.model),
            tier="weights-manual",
            form={"intended_use": "own"},
            agreement="aup@1",
            request_country=None,
        ).request.id
    rita = _as(app, airlock, "rita")
    token = csrf_of(rita, f"/ui/review/{own}")
    refused = rita.post(f"/ui/review/{own}", data={"csrf_token": token, "verdict": "approve"})
    assert refused.status_code == 403 and "may not decide their own" in refused.text


def test_grants_revoke_with_a_reason(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    grant = world.grant(_kyced(world, cast), cast.model)
    alice = _as(app, airlock, "alice")
    path = f"/ui/manage/grants/{grant.id}/revoke"
    token = csrf_of(alice, MODEL + "/grants")
    missing = alice.post(path, data={"csrf_token": token, "reason": " "})
    assert missing.status_code == 400 and f'id="{grant.id}-errors"' in missing.text
    done = alice.post(path, data={"csrf_token": token, "reason": "misuse"})
    assert done.status_code == 302 and "revoked" in alice.get(done.location).text
    assert _as(app, airlock, "rob").post(path, data={"csrf_token": "x"}).status_code == 400


def test_freeze_and_stage_ask_a_reason_and_a_confirmation(
    app: Flask, airlock: Airlock, world: World, cast: Cast
) -> None:
    world.grant(_kyced(world, cast), cast.model)
    alice = _as(app, airlock, "alice")
    token = csrf_of(alice, MODEL)
    missing = alice.post(MODEL + "/freeze", data={"csrf_token": token, "frozen": "true"})
    assert missing.status_code == 400 and 'id="freeze_reason-errors"' in missing.text
    ask = {"csrf_token": token, "frozen": "true", "reason": "leaked weights"}
    confirm = alice.post(MODEL + "/freeze", data=ask)
    assert confirm.status_code == 200 and "Confirm: Freeze" in confirm.text
    done = alice.post(MODEL + "/freeze", data={**ask, "confirm": "yes"})
    assert done.status_code == 302 and "leaked weights" in alice.get(MODEL).text

    ask = {"csrf_token": token, "stage": "research-preview", "reason": "pull back"}
    confirm = alice.post(MODEL + "/stage", data=ask).text
    assert "Confirm: Move to stage research-preview" in confirm
    assert "0 kept, 1 suspended, 0 revoked" in confirm and "stage_closed" in confirm
    assert alice.post(MODEL + "/stage", data={**ask, "confirm": "yes"}).status_code == 302
    with airlock.db.session() as s:
        model = s.get_one(Model, cast.model.id)
        assert model.frozen_at is not None and model.policy_version is not None
        assert "stage: research-preview" in model.policy_version.source
        assert model.policy_version.comment == "pull back"
    same = alice.post(MODEL + "/stage", data={**ask, "reason": ""})
    assert same.status_code == 400 and "already in stage" in same.text
    assert 'id="stage_reason-errors"' in same.text
