"""Grant renewal: the window, ownership, supersession, review and a changed policy."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from gateway.db.models import AuditEvent, Grant, GrantStatus, RequestStatus, Role, utcnow
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.services.access import RequestOutcome, renewable_from
from gateway.services.policy import PolicyService
from policies import KycLevel
from tests.factories import Actor, World, policy_text
from tests.pg import on_both_engines

FORM = {"intended_use": "evaluation"}


class Scene:
    """acme publishes acme/tiny; rita reviews; rob holds a grant; eve is another researcher."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.airlock = world.airlock
        self.pat = world.actor("pat", org="acme", role=Role.PUBLISHER)
        self.rita = world.actor("rita", org="acme", role=Role.REVIEWER)
        self.rob = world.actor("rob")
        self.eve = world.actor("eve")
        self.repo = "acme/tiny"
        self.model = world.model(self.pat, self.repo)
        world.kyc(self.rita, self.rob, level=KycLevel.INSTITUTION)

    def grant(self, tier: str = "weights-auto") -> Grant:
        if tier == "weights-auto":
            return self.world.grant(self.rob, self.model, tier)
        with self.airlock.db.session() as s:
            asked = self.airlock.access.request_access(
                s,
                principal=self.rob.principal,
                model=s.merge(self.model),
                tier=tier,
                form=FORM,
                agreement="aup@1",
                request_country=None,
            )
        granted = self.review(asked.request.id, approve=True)
        assert granted.grant is not None
        return granted.grant

    def age(self, grant_id: int, by: timedelta) -> None:
        """Move a grant's lifetime into the past, as if it had been granted `by` earlier."""
        with self.airlock.db.session() as s:
            grant = s.get_one(Grant, grant_id)
            assert grant.expires_at is not None
            grant.granted_at, grant.expires_at = grant.granted_at - by, grant.expires_at - by
            s.commit()

    def renew(self, grant_id: int, actor: Actor | None = None, **kw: Any) -> RequestOutcome:
        with self.airlock.db.session() as s:
            return self.airlock.access.renew_grant(
                s,
                principal=(actor or self.rob).principal,
                grant_id=grant_id,
                form=kw.pop("form", None),
                agreement=kw.pop("agreement", None),
                request_country=kw.pop("request_country", None),
            )

    def review(self, request_id: int, approve: bool) -> RequestOutcome:
        with self.airlock.db.session() as s:
            return self.airlock.access.review(
                s, principal=self.rita.principal, request_id=request_id, approve=approve, note="ok"
            )

    def row(self, grant_id: int) -> Grant:
        with self.airlock.db.session() as s:
            return s.get_one(Grant, grant_id)

    def live(self) -> list[int]:
        with self.airlock.db.session() as s:
            query = select(Grant.id).where(
                Grant.user_id == self.rob.user.id, Grant.status == GrantStatus.ACTIVE
            )
            return list(s.scalars(query))

    def payloads(self, action: str) -> list[dict[str, Any]]:
        with self.airlock.db.session() as s:
            query = select(AuditEvent.payload).where(AuditEvent.action == action)
            return list(s.scalars(query.order_by(AuditEvent.seq)))

    def apply(self, source: str) -> None:
        with self.airlock.db.session() as s:
            self.airlock.policies.apply(s, principal=self.pat.principal, source=source)


@pytest.fixture
def scene(world: World) -> Scene:
    return Scene(world)


def test_window_is_the_shorter_of_thirty_days_and_a_third_of_the_lifetime(scene: Scene) -> None:
    start = utcnow()
    for ttl, window in [(30, 10), (90, 30), (365, 30)]:
        grant = Grant(granted_at=start, expires_at=start + timedelta(days=ttl))
        assert renewable_from(grant) == grant.expires_at - timedelta(days=window)
    assert renewable_from(Grant(granted_at=start, expires_at=None)) is None


def test_renewal_is_refused_until_the_window_opens_and_accepted_inside_it(scene: Scene) -> None:
    grant = scene.grant()
    scene.age(grant.id, timedelta(days=20) - timedelta(minutes=5))
    with pytest.raises(Conflict, match="can be renewed from") as refused:
        scene.renew(grant.id)
    assert "renewable_from" in refused.value.extra
    scene.age(grant.id, timedelta(minutes=10))
    assert scene.renew(grant.id).request.status == RequestStatus.APPROVED


@on_both_engines
def test_auto_tier_renews_at_once_and_supersedes_the_old_grant(scene: Scene) -> None:
    old = scene.grant()
    scene.age(old.id, timedelta(days=25))
    outcome = scene.renew(old.id)
    assert outcome.grant is not None and outcome.request.form == FORM
    assert outcome.request.agreement_id == "aup"
    assert scene.live() == [outcome.grant.id]
    ended = scene.row(old.id)
    assert (ended.status, ended.end_reason) == (
        "expired",
        f"superseded by grant {outcome.grant.id} (renewal)",
    )
    assert scene.payloads("request:create")[-1]["renews_grant_id"] == old.id
    assert scene.payloads("grant:create")[-1]["supersedes"] == [old.id]
    expired = scene.payloads("grant:expire")[-1]
    assert (expired["reason"], expired["superseded_by"]) == ("superseded", outcome.grant.id)


@on_both_engines
def test_manual_tier_renewal_waits_for_a_reviewer_and_rejection_keeps_the_old_grant(
    scene: Scene,
) -> None:
    old = scene.grant("weights-manual")
    scene.age(old.id, timedelta(days=61))
    first = scene.renew(old.id)
    assert (first.request.status, first.grant) == (RequestStatus.PENDING, None)
    with scene.airlock.db.session() as s:
        grants = [s.get_one(Grant, old.id)]
        assert scene.airlock.access.pending_renewals(s, grants) == {old.id: first.request.id}
    with pytest.raises(Conflict, match="already pending"):
        scene.renew(old.id)
    scene.review(first.request.id, approve=False)
    assert scene.live() == [old.id]
    second = scene.renew(old.id)
    approved = scene.review(second.request.id, approve=True)
    assert approved.grant is not None and scene.live() == [approved.grant.id]
    assert scene.row(old.id).status == GrantStatus.EXPIRED


def test_only_the_holder_renews_an_active_grant(scene: Scene) -> None:
    grant = scene.grant()
    scene.age(grant.id, timedelta(days=25))
    with pytest.raises(NotFound):
        scene.renew(grant.id, scene.eve)
    with pytest.raises(NotFound):
        scene.renew(10**9)
    with scene.airlock.db.session() as s:
        scene.airlock.access.revoke_grant(
            s, principal=scene.pat.principal, grant_id=grant.id, reason="misuse"
        )
    with pytest.raises(Conflict, match="is revoked"):
        scene.renew(grant.id)


def test_an_expired_grant_is_requested_again_not_renewed(scene: Scene) -> None:
    grant = scene.grant()
    scene.age(grant.id, timedelta(days=31))
    with pytest.raises(Conflict, match="is expired"):
        scene.renew(grant.id)
    assert scene.world.grant(scene.rob, scene.model).id != grant.id


def test_a_stricter_policy_denies_the_renewal_and_the_old_grant_runs_on(scene: Scene) -> None:
    grant = scene.grant()
    scene.age(grant.id, timedelta(days=25))
    # The new policy also tests where a request comes from; re-evaluation cannot observe that
    # for a grant already given, but the renewal is a new request, judged on today's facts.
    signals = "[nationality, residence_country]"
    scene.apply(policy_text(scene.repo).replace(signals, signals[:-1] + ", request_country]"))
    outcome = scene.renew(grant.id, request_country="IR")
    assert (outcome.request.status, outcome.grant) == (RequestStatus.DENIED, None)
    assert "jurisdiction_denied" in {r["code"] for r in outcome.request.reasons}
    assert scene.live() == [grant.id]


def test_a_new_agreement_version_must_be_accepted_again(scene: Scene) -> None:
    grant = scene.grant()
    scene.age(grant.id, timedelta(days=25))
    text = policy_text(scene.repo).replace("version: 1", "version: 2")
    # Applied without a task runner: the renewal arrives before re-evaluation (which revokes
    # grants under the old agreement) has run, as it can with a broker.
    a = scene.airlock
    quiet = PolicyService(audit=a.audit, packs=a.packs, publishing=a.publishing)
    with a.db.session() as s:
        quiet.apply(s, principal=scene.pat.principal, source=text.replace("aup@1", "aup@2"))
    with pytest.raises(InvalidInput, match="accept it again"):
        scene.renew(grant.id)
    outcome = scene.renew(grant.id, agreement="aup@2")
    assert outcome.grant is not None and outcome.request.agreement_version == 2
    assert scene.live() == [outcome.grant.id]
