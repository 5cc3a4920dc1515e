"""Compliance pages: audit search and paging, an event's proof, the chain, reports, denials,
timelines and legal holds; only for the compliance role, and only its own organizations."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select, text, update

from gateway.audit.notes import SigningKey
from gateway.db.models import AuditEvent, Model, Role, User
from gateway.services.chain_status import ChainStatusService
from gateway.services.checkpoints import verifier_keys
from gateway.services.container import Airlock
from gateway.settings import Settings
from gateway.tasks.jobs import checkpoint_audit
from tests.factories import Actor, World
from tests.pg import on_both_engines
from tests.web.webkit import csrf_of, sign_in

KEY = SigningKey.generate("web-test")
ACME_PAGES = (
    "/ui/compliance/audit",
    "/ui/compliance/chain",
    "/ui/compliance/access-report",
    "/ui/compliance/denials",
    "/ui/compliance/timeline?user=rob",
    "/ui/compliance/legal-holds",
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A configured signing key: PostgreSQL deployments generate none."""
    return settings.with_overrides(audit_signing_key=KEY.to_text())


@dataclass
class Cast:
    officer: Actor
    reviewer: Actor
    researcher: Actor
    model: Model
    other: Model


@pytest.fixture
def cast(world: World, airlock: Airlock) -> Cast:
    publisher = world.actor("alice", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    officer = world.actor("carol", org="acme", role=Role.COMPLIANCE)
    beta = world.actor("bert", org="beta", role=Role.PUBLISHER)
    world.actor("cora", org="beta", role=Role.COMPLIANCE)
    researcher = world.actor("rob")
    model = world.model(publisher)
    other = world.model(beta, repo="beta/secret")
    world.kyc(reviewer, researcher)
    world.kyc(world.actor("bea", org="beta", role=Role.REVIEWER), researcher, org="beta")
    world.grant(researcher, model)
    world.grant(researcher, other)
    with airlock.db.session() as session:  # a denial with a reason and a country
        airlock.access.request_access(
            session,
            principal=researcher.principal,
            model=session.merge(model),
            tier="weights-manual",
            form={"intended_use": "x"},
            agreement="aup@1",
            request_country="DE",
        )
    return Cast(officer, reviewer, researcher, model, other)


def _seqs(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'aria-label="Event (\d+)"', html)]


def _model_events(airlock: Airlock, repo: str) -> list[int]:
    _org, name = repo.split("/")
    with airlock.db.session() as session:
        model_id = session.scalar(select(Model.id).where(Model.name == name))
        return list(
            session.scalars(
                select(AuditEvent.seq).where(AuditEvent.model_id == model_id).order_by("seq")
            )
        )


def test_each_page_for_the_officer_and_403_for_other_roles(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "carol")
    home = client.get("/ui/").text
    assert 'href="/ui/compliance/audit"' in home and 'href="/ui/compliance/chain"' in home
    for path in ACME_PAGES:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert "style=" not in response.text and "<script" not in response.text
    for name in ("rita", "rob"):
        other = client.application.test_client()
        sign_in(other, airlock, name)
        assert 'href="/ui/compliance/audit"' not in other.get("/ui/").text
        for path in (*ACME_PAGES, "/ui/compliance/audit/1", "/ui/compliance/audit/export"):
            assert other.get(path).status_code == 403, (name, path)
        token = csrf_of(other)
        refused = other.post("/ui/compliance/chain/verify", data={"csrf_token": token})
        assert refused.status_code == 403
    assert client.application.test_client().get(ACME_PAGES[0]).status_code == 302


def test_search_filters_pages_and_exports(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "carol")
    acme = _model_events(airlock, "acme/tiny")
    everything = client.get("/ui/compliance/audit").text
    assert set(acme) <= set(_seqs(everything))
    denied = client.get("/ui/compliance/audit?effect=review&reason=approval_required").text
    assert _seqs(denied) and set(_seqs(denied)) <= set(acme)
    assert _seqs(client.get("/ui/compliance/audit?country=de&subject=rob").text)
    bad = client.get("/ui/compliance/audit?action=nope&since=yesterday")
    assert bad.status_code == 400 and 'id="action-errors"' in bad.text
    assert 'id="since-errors"' in bad.text
    # Cursor paging forwards and back, keeping the filters.
    client.application.view_functions["web_compliance.audit"].__globals__["PAGE_SIZE"] = 2
    try:
        first = client.get("/ui/compliance/audit?subject=rob").text
        nxt = re.search(r'href="([^"]+)" rel="next"', first)
        assert nxt
        second = client.get(nxt.group(1).replace("&amp;", "&")).text
        assert _seqs(second) and min(_seqs(second)) > max(_seqs(first))
        prev = re.search(r'href="([^"]+)" rel="prev"', second)
        assert prev and "subject=rob" in prev.group(1)
        assert _seqs(client.get(prev.group(1).replace("&amp;", "&")).text) == _seqs(first)
    finally:
        client.application.view_functions["web_compliance.audit"].__globals__["PAGE_SIZE"] = 50
    lines = client.get("/ui/compliance/audit/export?format=jsonl&subject=rob").text.splitlines()
    assert [json.loads(line)["seq"] for line in lines] and all('"entry_hash"' in x for x in lines)
    csv = client.get("/ui/compliance/audit/export?format=csv")
    assert csv.mimetype == "text/csv" and csv.text.startswith("seq,")


@on_both_engines
def test_an_event_shows_its_reasons_chain_links_and_proof(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    sign_in(client, airlock, "carol")
    seq = _model_events(airlock, "acme/tiny")[-1]  # the request sent to review
    page = client.get(f"/ui/compliance/audit/{seq}").text
    assert "approval_required" in page and "Entry hash" in page
    assert "Not yet covered by a checkpoint" in page
    checkpoint_audit(airlock, force=True)
    assert (
        "Verified: this event is in the signed checkpoint"
        in client.get(f"/ui/compliance/audit/{seq}").text
    )
    other_key = ChainStatusService(
        verifiers=(SigningKey.generate("other").verifier(),), current=None, storage=airlock.storage
    )
    with airlock.db.session() as session:
        refused = other_key.prove(session, principal=cast.officer.principal, seq=seq)
    assert refused.covered and not refused.verified and "does not open" in str(refused.problem)
    _edit(airlock, seq)
    assert "Not verified against the checkpoint" in client.get(f"/ui/compliance/audit/{seq}").text


def _edit(airlock: Airlock, seq: int) -> None:
    """Edit an event as the database's owner could: past the append-only trigger."""
    with airlock.db.session() as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET LOCAL session_replication_role = replica"))
        else:
            session.execute(text("DROP TRIGGER audit_events_no_update"))
        session.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(effect="allow"))
        session.commit()


@on_both_engines
def test_the_chain_page_and_verify_now(
    client: FlaskClient, airlock: Airlock, world: World, cast: Cast
) -> None:
    sign_in(client, airlock, "carol")
    assert "none yet" in client.get("/ui/compliance/chain").text
    checkpoint_audit(airlock, force=True)
    page = client.get("/ui/compliance/chain").text
    assert "valid</span> (checked now)" in page and "the current key" in page
    token = csrf_of(client, "/ui/compliance/chain")
    verified = client.post("/ui/compliance/chain/verify", data={"csrf_token": token}).text
    assert "Chain verified" in verified and "A full verification" in verified
    assert client.post("/ui/compliance/chain/verify").status_code == 400  # no CSRF token
    world.actor("late")  # events past the checkpoint
    with airlock.db.session() as session:
        last = session.scalar(select(AuditEvent.seq).order_by(AuditEvent.seq.desc()).limit(1))
    assert last is not None
    _edit(airlock, last)
    broken = client.post("/ui/compliance/chain/verify", data={"csrf_token": token}).text
    assert "Verification FAILED" in broken and f"event {last}" in broken
    service = ChainStatusService(
        verifiers=verifier_keys(airlock.settings),
        current=None,
        storage=airlock.storage,
        full_limit=last - 1,  # the chain is "too long": the bounded path
    )
    with airlock.db.session() as session:
        bounded = service.verify(session, principal=cast.officer.principal)
    assert not bounded.full and bounded.problems and f"event {last}" in bounded.problems[0]
    assert any("were not re-hashed" in line for line in bounded.checked)


def test_reports_denials_and_timelines(client: FlaskClient, airlock: Airlock, cast: Cast) -> None:
    sign_in(client, airlock, "carol")
    report = client.get("/ui/compliance/access-report").text
    assert "acme/tiny" in report and "beta/secret" not in report
    csv = client.get("/ui/compliance/access-report?format=csv").text
    assert "acme/tiny" in csv and "beta/secret" not in csv
    denials = client.get("/ui/compliance/denials?bucket=week").text
    assert "<svg" in denials and "approval_required" in denials and "DE" in denials
    assert 'fill="#8a5a00"' in denials and "as a table" in denials
    assert client.get("/ui/compliance/denials?since=2026-02-01&until=2026-01-01").status_code == 400
    assert client.get("/ui/compliance/denials?since=0001-01-01").status_code == 400  # too long
    assert client.get("/ui/compliance/audit?until=9999-12-31").status_code == 200
    timeline = client.get("/ui/compliance/timeline?model=acme/tiny").text
    assert set(_seqs(timeline)) == set(_model_events(airlock, "acme/tiny"))


@on_both_engines
def test_an_officer_sees_nothing_of_another_organization(
    client: FlaskClient, airlock: Airlock, cast: Cast
) -> None:
    beta = _model_events(airlock, "beta/secret")
    sign_in(client, airlock, "carol")
    assert not set(beta) & set(_seqs(client.get("/ui/compliance/audit?subject=rob").text))
    assert client.get(f"/ui/compliance/audit/{beta[0]}").status_code == 404
    assert client.get(f"/ui/compliance/audit/{2**64}").status_code == 404  # never a query error
    assert client.get("/ui/compliance/timeline?model=beta/secret").status_code == 404
    assert not set(beta) & set(_seqs(client.get("/ui/compliance/timeline?user=rob").text))
    exported = client.get("/ui/compliance/audit/export?format=jsonl").text.splitlines()
    assert not {json.loads(line)["seq"] for line in exported} & set(beta)
    assert "beta/secret" not in client.get("/ui/compliance/access-report").text
    cora = client.application.test_client()
    sign_in(cora, airlock, "cora")
    assert "approval_required" not in cora.get("/ui/compliance/denials").text
    assert not set(_seqs(cora.get("/ui/compliance/audit").text)) & set(
        _model_events(airlock, "acme/tiny")
    )


def _token_events(airlock: Airlock, username: str) -> set[int]:
    with airlock.db.session() as session:
        user_id = session.scalar(select(User.id).where(User.username == username))
        return set(
            session.scalars(
                select(AuditEvent.seq).where(
                    AuditEvent.action == "token:create", AuditEvent.subject_user_id == user_id
                )
            )
        )


def test_an_officer_finds_the_tokens_of_their_own_applicants_only(
    client: FlaskClient, airlock: Airlock, world: World, cast: Cast
) -> None:
    gwen = world.actor("gwen")  # asks beta only; rob asked acme and beta
    with airlock.db.session() as session:
        airlock.access.request_access(
            session,
            principal=gwen.principal,
            model=session.merge(cast.other),
            tier="card",
            form={"intended_use": "x"},
            agreement="aup@1",
            request_country=None,
        )
    rob, theirs = _token_events(airlock, "rob"), _token_events(airlock, "gwen")
    assert rob and theirs
    sign_in(client, airlock, "carol")
    assert set(_seqs(client.get("/ui/compliance/audit?action=token:create").text)) == rob
    assert set(_seqs(client.get("/ui/compliance/audit?subject=gwen").text)) == set()
    assert client.get(f"/ui/compliance/audit/{min(rob)}").status_code == 200
    assert client.get(f"/ui/compliance/audit/{min(theirs)}").status_code == 404
    lines = client.get("/ui/compliance/audit/export?format=jsonl&action=token:create").text
    assert {json.loads(line)["seq"] for line in lines.splitlines()} == rob
    cora = client.application.test_client()
    sign_in(cora, airlock, "cora")
    assert set(_seqs(cora.get("/ui/compliance/audit?action=token:create").text)) == rob | theirs
    assert cora.get(f"/ui/compliance/audit/{min(theirs)}").status_code == 200


def test_legal_holds_place_and_release(client: FlaskClient, airlock: Airlock, cast: Cast) -> None:
    sign_in(client, airlock, "carol")
    token = csrf_of(client, "/ui/compliance/legal-holds")
    form = {"org": "acme", "kind": "user", "subject": "rob", "reason": "litigation"}
    assert client.post("/ui/compliance/legal-holds", data=form).status_code == 400  # no CSRF
    placed = client.post("/ui/compliance/legal-holds", data={**form, "csrf_token": token})
    assert placed.status_code == 302
    page = client.get("/ui/compliance/legal-holds").text
    assert "litigation" in page and "is placed" in page
    hold = re.search(r"/ui/compliance/legal-holds/(\d+)/release", page)
    assert hold
    beta = client.post(
        "/ui/compliance/legal-holds", data={**form, "org": "beta", "csrf_token": token}
    )
    assert beta.status_code in (403, 404)
    cora = client.application.test_client()
    sign_in(cora, airlock, "cora")
    assert "litigation" not in cora.get("/ui/compliance/legal-holds").text
    cora_token = csrf_of(cora, "/ui/compliance/legal-holds")
    assert cora.post(hold.group(0), data={"csrf_token": cora_token}).status_code == 404
    assert client.post(hold.group(0)).status_code == 400  # no CSRF
    assert client.post(hold.group(0), data={"csrf_token": token}).status_code == 302
    assert "is released" in client.get("/ui/compliance/legal-holds").text
