"""AccessService: requests, decisions with reasons, reviews, grants, revocation, freezes, KYC."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from gateway.db.models import (
    AccessRequest,
    AuditEvent,
    Grant,
    KycVerification,
    Model,
    RequestStatus,
    Role,
    utcnow,
)
from gateway.errors import Conflict, Forbidden, InvalidInput, NotFound, RepoNotFound
from gateway.kyc import KycFacts
from gateway.services.access import RequestOutcome
from policies import KycLevel
from tests.factories import Actor, World, policy_text
from tests.pg import on_both_engines

FORM = {"intended_use": "evaluation"}


class Scene:
    """acme publishes acme/tiny; globex has its own staff; rob is a researcher."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.airlock = world.airlock
        self.pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
        self.rita = world.actor("rita", org="acme", role=Role.REVIEWER)
        self.gina = world.actor("gina", org="globex", role=Role.REVIEWER)
        self.gus = world.actor("gus", org="globex", role=Role.PUBLISHER)
        self.rob = world.actor("rob")
        self.repo = "acme/tiny"
        world.model(self.pat, self.repo)

    def model(self, session: Any) -> Model:
        return self.airlock.publishing.get_model(session, self.repo)

    def ask(self, actor: Actor, tier: str, **kw: Any) -> RequestOutcome:
        with self.airlock.db.session() as s:
            return self.airlock.access.request_access(
                s,
                principal=actor.principal,
                model=self.model(s),
                tier=tier,
                form=kw.pop("form", FORM),
                agreement=kw.pop("agreement", "aup@1"),
                request_country=kw.pop("request_country", None),
            )

    def review(
        self, actor: Actor, request_id: int, approve: bool, note: str = ""
    ) -> RequestOutcome:
        with self.airlock.db.session() as s:
            return self.airlock.access.review(
                s, principal=actor.principal, request_id=request_id, approve=approve, note=note
            )

    def status(self, request_id: int) -> str:
        with self.airlock.db.session() as s:
            return s.get_one(AccessRequest, request_id).status

    def actions(self) -> list[str]:
        with self.airlock.db.session() as s:
            return list(s.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)))


@pytest.fixture
def scene(world: World) -> Scene:
    return Scene(world)


def codes(outcome: RequestOutcome) -> set[str]:
    return {str(r.code) for r in outcome.decision.reasons}


# -- requests --------------------------------------------------------------------------------------
def test_auto_tier_grants_at_once_and_records_every_reason(scene: Scene) -> None:
    scene.world.kyc(scene.rita, scene.rob, level=KycLevel.IDENTITY)
    outcome = scene.ask(scene.rob, "weights-auto")
    assert outcome.request.status == RequestStatus.APPROVED
    assert outcome.grant is not None
    assert outcome.grant.expires_at is not None
    assert outcome.grant.expires_at - outcome.grant.granted_at == timedelta(days=30)
    assert {"kyc_level_met", "agreement_accepted", "jurisdiction_allowed"} <= codes(outcome)
    stored = {r["code"] for r in outcome.request.reasons}
    assert stored == codes(outcome)
    assert scene.actions()[-2:] == ["request:create", "grant:create"]


def test_manual_tier_is_pending_without_a_grant(scene: Scene) -> None:
    scene.world.kyc(scene.rita, scene.rob)
    outcome = scene.ask(scene.rob, "weights-manual")
    assert (outcome.request.status, outcome.grant) == (RequestStatus.PENDING, None)
    assert outcome.request.reviewers_required == 1
    assert "approval_required" in codes(outcome)


def test_missing_kyc_is_denied_with_kyc_level_insufficient(scene: Scene) -> None:
    outcome = scene.ask(scene.rob, "weights-auto")
    assert (outcome.request.status, outcome.grant) == (RequestStatus.DENIED, None)
    assert "kyc_level_insufficient" in codes(outcome)
    assert scene.actions()[-1] == "request:create"


def test_sanctioned_nationality_is_denied(scene: Scene) -> None:
    scene.world.kyc(scene.rita, scene.rob, country="IR")
    outcome = scene.ask(scene.rob, "weights-auto")
    assert outcome.request.status == RequestStatus.DENIED
    assert "jurisdiction_denied" in codes(outcome)


def test_duplicates_conflict_but_denials_do_not_block(scene: Scene) -> None:
    scene.ask(scene.rob, "weights-auto")
    scene.world.kyc(scene.rita, scene.rob)
    granted = scene.ask(scene.rob, "weights-auto")
    assert granted.grant is not None
    with pytest.raises(Conflict) as active:
        scene.ask(scene.rob, "weights-auto")
    assert active.value.extra == {"grant_id": granted.grant.id}
    pending = scene.ask(scene.rob, "weights-manual")
    with pytest.raises(Conflict) as dup:
        scene.ask(scene.rob, "weights-manual")
    assert dup.value.extra == {"request_id": pending.request.id}


def test_an_expired_grant_no_longer_blocks_a_new_request(scene: Scene) -> None:
    scene.world.kyc(scene.rita, scene.rob)
    first = scene.ask(scene.rob, "weights-auto").grant
    assert first is not None
    with scene.airlock.db.session() as s:
        s.execute(
            update(Grant)
            .where(Grant.id == first.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
    second = scene.ask(scene.rob, "weights-auto").grant
    assert second is not None
    assert second.id != first.id


def test_request_validation(scene: Scene) -> None:
    with pytest.raises(InvalidInput, match="unknown tier"):
        scene.ask(scene.rob, "gold")
    for agreement in ("aup", "aup@", "@1", "aup@x", "a" * 101 + "@1"):
        with pytest.raises(InvalidInput):
            scene.ask(scene.rob, "card", agreement=agreement)


def test_internal_models_cannot_be_requested_by_outsiders(scene: Scene) -> None:
    with scene.airlock.db.session() as s:
        scene.airlock.policies.apply(
            s, principal=scene.pat.principal, source=policy_text(scene.repo, stage="internal")
        )
    with pytest.raises(RepoNotFound):
        scene.ask(scene.rob, "card")


def test_no_policy_means_no_access(world: World, scene: Scene) -> None:
    with scene.airlock.db.session() as s:
        model = scene.airlock.publishing.create_model(
            s, principal=scene.pat.principal, repo_id="acme/bare"
        )
        assert not scene.airlock.access.visible(scene.rob.principal, model)
        with pytest.raises(RepoNotFound):
            scene.airlock.access.request_access(
                s,
                principal=scene.rob.principal,
                model=model,
                tier="card",
                form={},
                agreement=None,
                request_country=None,
            )


# -- reviews ---------------------------------------------------------------------------------------
def pending(scene: Scene) -> int:
    scene.world.kyc(scene.rita, scene.rob)
    return scene.ask(scene.rob, "weights-manual").request.id


def test_approval_creates_the_grant(scene: Scene) -> None:
    request_id = pending(scene)
    outcome = scene.review(scene.rita, request_id, approve=True)
    assert outcome.grant is not None
    assert outcome.grant.tier == "weights-manual"
    assert scene.status(request_id) == "approved"
    assert scene.actions()[-3:] == ["request:review", "request:approve", "grant:create"]
    with pytest.raises(Conflict):
        scene.review(scene.rita, request_id, approve=True)


@pytest.mark.parametrize("who", ["gina", "gus", "pat", "rob"])
def test_only_reviewers_of_the_models_org_review(scene: Scene, who: str) -> None:
    request_id = pending(scene)
    with pytest.raises(Forbidden):
        scene.review(getattr(scene, who), request_id, approve=True)
    assert scene.status(request_id) == "pending"


def test_self_review_is_forbidden(scene: Scene) -> None:
    ron = scene.world.actor("ron", org="acme", role=Role.REVIEWER)
    scene.world.kyc(ron, scene.rita)
    own = scene.ask(scene.rita, "weights-manual").request.id
    with pytest.raises(Forbidden, match="own"):
        scene.review(scene.rita, own, approve=True)
    assert scene.review(ron, own, approve=True).grant is not None


def test_rejection_needs_a_note(scene: Scene) -> None:
    request_id = pending(scene)
    with pytest.raises(InvalidInput):
        scene.review(scene.rita, request_id, approve=False, note=" \n ")
    outcome = scene.review(scene.rita, request_id, approve=False, note="Out of scope.")
    assert outcome.grant is None
    assert (outcome.request.status, outcome.request.decision_note) == ("rejected", "Out of scope.")
    assert scene.actions()[-1] == "request:reject"


def test_approving_after_kyc_expired_conflicts_with_reasons(scene: Scene) -> None:
    request_id = pending(scene)
    with scene.airlock.db.session() as s:
        s.execute(update(KycVerification).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    with pytest.raises(Conflict) as caught:
        scene.review(scene.rita, request_id, approve=True)
    assert "kyc_expired" in {r["code"] for r in caught.value.extra["reasons"]}
    assert scene.status(request_id) == "pending"
    assert "request:review" not in scene.actions()


def test_n_reviewers_are_needed_and_each_counts_once(scene: Scene) -> None:
    with scene.airlock.db.session() as s:
        scene.airlock.policies.apply(
            s, principal=scene.pat.principal, source=policy_text(scene.repo, reviewers=2)
        )
    ron = scene.world.actor("ron", org="acme", role=Role.REVIEWER)
    request_id = pending(scene)
    assert scene.review(scene.rita, request_id, approve=True).grant is None
    with pytest.raises(Conflict):
        scene.review(scene.rita, request_id, approve=True)
    assert scene.status(request_id) == "pending"
    assert scene.review(ron, request_id, approve=True).grant is not None


def test_unknown_requests_are_not_found(scene: Scene) -> None:
    with pytest.raises(NotFound):
        scene.review(scene.rita, 9999, approve=True)
    with scene.airlock.db.session() as s, pytest.raises(NotFound):
        scene.airlock.access.get_request(s, principal=scene.rob.principal, request_id=9999)


def test_requests_are_visible_to_requester_and_model_reviewers_only(scene: Scene) -> None:
    request_id = pending(scene)
    otto = scene.world.actor("otto")
    with scene.airlock.db.session() as s:
        for actor in (scene.rob, scene.rita):
            assert scene.airlock.access.get_request(
                s, principal=actor.principal, request_id=request_id
            )
        for actor in (scene.gina, scene.pat, otto):
            with pytest.raises(NotFound):
                scene.airlock.access.get_request(
                    s, principal=actor.principal, request_id=request_id
                )
        assert scene.airlock.access.list_requests(s, principal=scene.gina.principal) == []
        queue = scene.airlock.access.list_requests(s, principal=scene.rita.principal)
        assert [r.id for r in queue] == [request_id]
        with pytest.raises(Forbidden):
            scene.airlock.access.list_requests(s, principal=scene.pat.principal)


# -- grants, revocation and freezes ----------------------------------------------------------------
def granted(scene: Scene) -> Grant:
    scene.world.kyc(scene.rita, scene.rob)
    grant = scene.ask(scene.rob, "weights-auto").grant
    assert grant is not None
    return grant


@pytest.mark.parametrize("who", ["gina", "gus", "rob"])
def test_revocation_needs_grants_manage_in_the_models_org(scene: Scene, who: str) -> None:
    grant = granted(scene)
    with scene.airlock.db.session() as s:
        with pytest.raises(Forbidden):
            scene.airlock.access.revoke_grant(
                s, principal=getattr(scene, who).principal, grant_id=grant.id, reason="x"
            )
        assert s.get_one(Grant, grant.id).status == "active"


def test_revocation_is_recorded_with_its_reason(scene: Scene) -> None:
    grant = granted(scene)
    with scene.airlock.db.session() as s:
        with pytest.raises(InvalidInput):
            scene.airlock.access.revoke_grant(
                s, principal=scene.pat.principal, grant_id=grant.id, reason=" "
            )
        revoked = scene.airlock.access.revoke_grant(
            s, principal=scene.rita.principal, grant_id=grant.id, reason="misuse"
        )
        assert (revoked.status, revoked.end_reason, revoked.ended_by_id) == (
            "revoked",
            "misuse",
            scene.rita.user.id,
        )
        with pytest.raises(Conflict):
            scene.airlock.access.revoke_grant(
                s, principal=scene.pat.principal, grant_id=grant.id, reason="x"
            )
        with pytest.raises(NotFound):
            scene.airlock.access.revoke_grant(
                s, principal=scene.pat.principal, grant_id=999, reason="x"
            )
    assert scene.actions()[-1] == "grant:revoke"


def test_grant_lists_are_own_or_managed(scene: Scene) -> None:
    grant = granted(scene)
    with scene.airlock.db.session() as s:
        model = scene.model(s)
        mine = scene.airlock.access.list_grants(s, principal=scene.rob.principal)
        assert [g.id for g in mine] == [grant.id]
        managed = scene.airlock.access.list_grants(
            s, principal=scene.pat.principal, model=model, mine=False
        )
        assert [g.id for g in managed] == [grant.id]
        with pytest.raises(Forbidden):
            scene.airlock.access.list_grants(
                s, principal=scene.gus.principal, model=model, mine=False
            )
        assert scene.airlock.access.list_grants(s, principal=scene.pat.principal) == []


def test_freeze_is_audited_and_denies_new_requests(scene: Scene) -> None:
    scene.world.kyc(scene.rita, scene.rob)
    with scene.airlock.db.session() as s:
        for actor in (scene.rita, scene.gus):
            with pytest.raises(Forbidden):
                scene.airlock.access.set_frozen(
                    s, principal=actor.principal, model=scene.model(s), frozen=True, reason="x"
                )
        with pytest.raises(InvalidInput):
            scene.airlock.access.set_frozen(
                s, principal=scene.pat.principal, model=scene.model(s), frozen=True, reason=""
            )
        scene.airlock.access.set_frozen(
            s, principal=scene.pat.principal, model=scene.model(s), frozen=True, reason="incident"
        )
        scene.airlock.access.set_frozen(
            s, principal=scene.pat.principal, model=scene.model(s), frozen=True, reason="again"
        )
    outcome = scene.ask(scene.rob, "weights-auto")
    assert outcome.request.status == "denied"
    assert "model_frozen" in codes(outcome)
    assert scene.actions().count("model:freeze") == 1
    with scene.airlock.db.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "model:freeze")).one()
        assert (event.actor_id, event.effect, event.payload) == (
            scene.pat.user.id,
            "deny",
            {"reason": "incident"},
        )


# -- KYC -------------------------------------------------------------------------------------------
def facts(**over: Any) -> KycFacts:
    base: dict[str, Any] = {
        "provider": "manual",
        "provider_ref": "r1",
        "status": "approved",
        "level": KycLevel.IDENTITY,
        "nationality": "GB",
        "residence_country": "GB",
        "expires_at": utcnow() + timedelta(days=30),
    }
    return KycFacts(**(base | over))


def test_kyc_is_recorded_by_reviewers_for_their_own_org_only(world: World, scene: Scene) -> None:
    access = scene.airlock.access
    with scene.airlock.db.session() as s:
        acme = s.merge(world.org("acme"))
        rob = s.merge(scene.rob.user)
        for actor in (scene.pat, scene.gina, scene.rob):
            with pytest.raises(Forbidden):
                access.record_kyc(
                    s, principal=actor.principal, org=acme, user=rob, facts=facts(), notes=""
                )
        with pytest.raises(Forbidden):
            access.record_kyc(
                s,
                principal=scene.rita.principal,
                org=acme,
                user=s.merge(scene.rita.user),
                facts=facts(),
                notes="",
            )
        row = access.record_kyc(
            s, principal=scene.rita.principal, org=acme, user=rob, facts=facts(), notes="seen"
        )
        assert (row.issuer_org_id, row.recorded_by_id) == (acme.id, scene.rita.user.id)
        found = access.current_kyc(s, user_id=rob.id, org_id=acme.id)
        assert found is not None
        assert found.id == row.id
        assert access.current_kyc(s, user_id=rob.id, org_id=world.org("globex").id) is None
    assert scene.actions()[-1] == "kyc:verify"


@on_both_engines
def test_the_grouped_kyc_read_picks_what_current_kyc_picks(world: World) -> None:
    """Several verifications, issuer scoping, rejected and pending newer ones, a tie in time."""
    acme, globex = world.org("acme"), world.org("globex")
    users = {name: world.actor(name).user.id for name in ("ann", "bob", "cy", "di", "ed", "fay")}
    day = utcnow() - timedelta(days=30)
    rows = [  # (name, tag, issuer, status, days after `day`)
        ("ann", "global-old", None, "approved", 0),
        ("ann", "acme", acme.id, "approved", 1),
        ("ann", "globex", globex.id, "approved", 2),
        ("bob", "approved", None, "approved", 0),
        ("bob", "rejected", None, "rejected", 5),
        ("cy", "globex-only", globex.id, "approved", 0),
        ("di", "tie-first", None, "approved", 3),
        ("di", "tie-second", None, "approved", 3),
        ("fay", "acme-old", acme.id, "approved", 0),
        ("fay", "pending", None, "pending", 9),
    ]
    tags = {}
    with world.airlock.db.session() as s:
        for name, tag, issuer, status, days in rows:
            kyc = KycVerification(
                user_id=users[name],
                provider="manual",
                provider_ref=tag,
                issuer_org_id=issuer,
                status=status,
                level=str(KycLevel.IDENTITY),
                verified_at=day + timedelta(days=days),
            )
            s.add(kyc)
            s.flush()
            tags[kyc.id] = f"{name}/{tag}"
        s.commit()
    expected = {
        acme.id: {"ann/acme", "bob/approved", "di/tie-second", "fay/acme-old"},
        globex.id: {"ann/globex", "bob/approved", "cy/globex-only", "di/tie-second"},
    }
    access = world.airlock.access
    with world.airlock.db.session() as s:
        for org_id, wanted in expected.items():
            one = {u: access.current_kyc(s, user_id=u, org_id=org_id) for u in users.values()}
            each = {u: tags[k.id] for u, k in one.items() if k is not None}
            grouped = access.current_kycs(s, user_ids=list(users.values()), org_id=org_id)
            assert {u: tags[k.id] for u, k in grouped.items()} == each
            assert set(each.values()) == wanted
        assert access.current_kycs(s, user_ids=[], org_id=acme.id) == {}
