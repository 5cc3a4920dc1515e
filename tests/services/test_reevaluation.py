"""Re-evaluation of live grants and pending requests: the dry run (`policy check`) and the real
thing (after a policy apply, a KYC change, and the daily re-screen) judge alike."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event as sql_event
from sqlalchemy import select, update

from gateway.db.models import AccessRequest, AuditEvent, Grant, KycVerification, Role, utcnow
from gateway.services.container import Airlock
from gateway.services.reevaluation import Action
from gateway.services.sweeps import notice_pack_changes
from gateway.tasks import jobs
from policies import KycLevel, PackRegistry
from tests.factories import Actor, World, policy_text

REPO = "acme/tiny"
OFAC = "deny: [pack:us-ofac-comprehensive]"
BASE = policy_text(REPO)


def variant(old: str, new: str, source: str = BASE) -> str:
    assert source.count(old) == 1, old
    return source.replace(old, new)


RU_DENIED = variant(OFAC, "deny: [pack:us-ofac-comprehensive, RU]")
GB_REVIEW = variant(OFAC, "deny: [pack:us-ofac-comprehensive]\n        review: [GB]")
REQUEST_COUNTRY = variant(
    "signals: [nationality, residence_country]",
    "signals: [nationality, residence_country, request_country]",
)


class Setup:
    def __init__(self, world: World) -> None:
        world.org("acme")
        self.world = world
        self.airlock: Airlock = world.airlock
        self.publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
        self.reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
        world.model(self.publisher, REPO)
        with self.airlock.db.session() as s:
            self.model = self.airlock.publishing.get_model(s, REPO)

    def researcher(self, name: str, country: str, tier: str = "weights-auto") -> Actor:
        actor = self.world.actor(name)
        self.world.kyc(self.reviewer, actor, country=country)
        self.world.grant(actor, self.model, tier)
        return actor

    def apply(self, source: str) -> None:
        with self.airlock.db.session() as s:
            _, created = self.airlock.policies.apply(
                s, principal=self.publisher.principal, source=source
            )
        assert created

    def check(self, source: str) -> dict[str, Any]:
        with self.airlock.db.session() as s:
            return self.airlock.reevaluation.check(
                s, principal=self.publisher.principal, source=source
            ).to_dict()

    def grants(self) -> dict[str, str]:
        with self.airlock.db.session() as s:
            rows = s.scalars(select(Grant).order_by(Grant.id))
            return {f"{g.user.username}/{g.tier}": g.status for g in rows}

    def events(self, *actions: str) -> list[AuditEvent]:
        with self.airlock.db.session() as s:
            query = select(AuditEvent).where(AuditEvent.action.in_(actions))
            return list(s.scalars(query.order_by(AuditEvent.seq)))


@pytest.fixture
def setup(world: World) -> Setup:
    return Setup(world)


def actions(report: dict[str, Any]) -> dict[str, str]:
    return {f"{g['user']}/{g['tier']}": g["action"] for g in report["grants"]}


def test_check_predicts_and_apply_revokes_exactly_that_set(setup: Setup) -> None:
    for name, country in (("ann", "GB"), ("boris", "RU"), ("dima", "RU"), ("eva", "DE")):
        setup.researcher(name, country)
    setup.world.grant(setup.world.actor("carl"), setup.model, "card")  # no requirements
    predicted = setup.check(RU_DENIED)
    assert setup.grants() == dict.fromkeys(setup.grants(), "active")  # a dry run changes nothing
    assert actions(predicted) == {
        "ann/weights-auto": "keep",
        "boris/weights-auto": "revoke",
        "dima/weights-auto": "revoke",
        "eva/weights-auto": "keep",
        "carl/card": "keep",
    }
    assert predicted["summary"] == {"deny": 0, "keep": 3, "reinstate": 0, "revoke": 2, "suspend": 0}
    assert predicted["current_version"] == 1

    setup.apply(RU_DENIED)

    revoked = {k for k, status in setup.grants().items() if status == "revoked"}
    assert revoked == {k for k, action in actions(predicted).items() if action == "revoke"}
    events = setup.events("grant:revoke")
    assert len(events) == 2
    for event in events:
        assert event.actor_id is None and event.effect == "deny"
        assert event.payload["cause"] == {
            "kind": "policy_apply",
            "policy_version_id": event.payload["cause"]["policy_version_id"],
            "policy_version": 2,
        }
        reasons = event.payload["reasons"]
        assert {(r["code"], r["effect"]) for r in reasons} == {("jurisdiction_denied", "deny")}
        messages = " ".join(r["message"] for r in reasons)
        assert "nationality 'RU' matches 'RU'" in messages
        assert "place of residence 'RU' matches 'RU'" in messages
    with setup.airlock.db.session() as s:
        ended = s.scalars(select(Grant).where(Grant.status == "revoked")).all()
        assert all(g.end_reason and "'RU'" in g.end_reason and g.ended_at for g in ended)


def test_new_review_reasons_suspend_and_settled_ones_do_not(setup: Setup) -> None:
    setup.researcher("ann", "GB")
    setup.researcher("eva", "DE")
    assert actions(setup.check(GB_REVIEW)) == {
        "ann/weights-auto": "suspend",
        "eva/weights-auto": "keep",
    }
    setup.apply(GB_REVIEW)
    assert setup.grants() == {"ann/weights-auto": "suspended", "eva/weights-auto": "active"}
    [event] = setup.events("grant:suspend")
    assert {r["code"] for r in event.payload["reasons"]} == {"jurisdiction_review"}
    # Back to the old policy: the suspended grant holds again and is reinstated.
    setup.apply(BASE)
    assert setup.grants() == {"ann/weights-auto": "active", "eva/weights-auto": "active"}
    [event] = setup.events("grant:reinstate")
    assert event.payload["previous_status"] == "suspended" and event.effect == "allow"


def test_a_reviewer_approved_review_reason_is_settled(setup: Setup) -> None:
    """A grant a reviewer approved despite a review reason is not suspended for that reason."""
    setup.apply(GB_REVIEW)
    ann = setup.world.actor("ann")
    setup.world.kyc(setup.reviewer, ann, country="GB")
    with setup.airlock.db.session() as s:
        outcome = setup.airlock.access.request_access(
            s,
            principal=ann.principal,
            model=setup.airlock.publishing.get_model(s, REPO),
            tier="weights-auto",
            form={},
            agreement="aup@1",
            request_country=None,
        )
        assert outcome.request.status == "pending"
        request_id = outcome.request.id
    with setup.airlock.db.session() as s:
        done = setup.airlock.access.review(
            s, principal=setup.reviewer.principal, request_id=request_id, approve=True, note="ok"
        )
        assert done.grant is not None
    assert actions(setup.check(GB_REVIEW + "\n# again\n")) == {"ann/weights-auto": "keep"}
    # A new reason the reviewer never saw still suspends it.
    both = variant("review: [GB]", "review: [GB, pack:eu]", GB_REVIEW)
    both = variant(
        "signals: [nationality, residence_country]",
        "signals: [nationality, residence_country, org_hq_country]",
        both,
    )
    report = setup.check(both)
    assert actions(report) == {"ann/weights-auto": "suspend"}
    assert [r["code"] for r in report["grants"][0]["reasons"]] == ["signal_missing"]


def test_pending_requests_that_the_policy_now_denies_are_denied(setup: Setup) -> None:
    boris = setup.world.actor("boris")
    setup.world.kyc(setup.reviewer, boris, country="RU")
    with setup.airlock.db.session() as s:
        request = setup.airlock.access.request_access(
            s,
            principal=boris.principal,
            model=setup.airlock.publishing.get_model(s, REPO),
            tier="weights-manual",
            form={"intended_use": "evals"},
            agreement="aup@1",
            request_country=None,
        ).request
        assert request.status == "pending"
        request_id = request.id
    manual_ru = variant(
        "      form: research\n",
        "      form: research\n      jurisdiction: {deny: [RU]}\n",
        RU_DENIED,
    )
    report = setup.check(manual_ru)
    assert [(r["request_id"], r["action"]) for r in report["requests"]] == [(request_id, "deny")]
    setup.apply(manual_ru)
    with setup.airlock.db.session() as s:
        stored = s.get_one(AccessRequest, request_id)
        assert stored.status == "denied" and stored.effect == "deny"
        assert "nationality 'RU'" in (stored.decision_note or "")
    [event] = setup.events("request:deny")
    assert event.payload["request_id"] == request_id


def test_the_request_country_is_left_to_each_request(setup: Setup) -> None:
    setup.researcher("ann", "GB")
    assert actions(setup.check(REQUEST_COUNTRY)) == {"ann/weights-auto": "keep"}


def test_removing_a_tier_revokes_its_grants(setup: Setup) -> None:
    setup.researcher("ann", "GB")
    setup.world.grant(setup.world.actor("carl"), setup.model, "card")
    report = setup.check(variant("  - name: card\n", "  - name: card-v2\n"))
    assert actions(report) == {"ann/weights-auto": "keep", "carl/card": "revoke"}
    assert report["grants"][1]["reasons"][0]["code"] == "tier_unknown"


def lapse_kyc(setup: Setup, actor: Actor) -> None:
    with setup.airlock.db.session() as s:
        s.execute(
            update(KycVerification)
            .where(KycVerification.user_id == actor.user.id)
            .values(expires_at=utcnow() - timedelta(days=1))
        )
        s.commit()


def test_lapsed_kyc_suspends_at_the_daily_rescreen_and_renewal_reinstates(setup: Setup) -> None:
    ann = setup.researcher("ann", "GB")
    setup.researcher("eva", "DE")
    lapse_kyc(setup, ann)
    for _ in range(2):  # safe to run twice: the second run changes nothing
        jobs.rescreen_grants(setup.airlock)
        assert setup.grants() == {"ann/weights-auto": "suspended", "eva/weights-auto": "active"}
    [event] = setup.events("grant:suspend")
    assert event.payload["cause"]["kind"] == "daily_rescreen"
    assert "kyc_expired" in [r["code"] for r in event.payload["reasons"]]
    # A renewed verification (recorded through the service) re-evaluates the user at once.
    setup.world.kyc(setup.reviewer, ann, country="GB", level=KycLevel.IDENTITY)
    assert setup.grants() == {"ann/weights-auto": "active", "eva/weights-auto": "active"}
    [event] = setup.events("grant:reinstate")
    assert event.payload["cause"]["kind"] == "kyc_change"


def test_a_kyc_change_to_a_denied_country_revokes(setup: Setup) -> None:
    ann = setup.researcher("ann", "GB")
    setup.world.kyc(setup.reviewer, ann, country="IR")
    assert setup.grants() == {"ann/weights-auto": "revoked"}
    [event] = setup.events("grant:revoke")
    assert event.payload["cause"] == {"kind": "kyc_change", "policy_version": 1}


def test_the_model_task_is_safe_to_run_twice(setup: Setup) -> None:
    setup.researcher("boris", "RU")
    setup.apply(RU_DENIED)
    before = len(setup.events("grant:revoke", "grant:suspend", "grant:reinstate"))
    jobs.reevaluate_model(setup.airlock, model_id=setup.model.id, policy_version_id=None)
    jobs.reevaluate_model(setup.airlock, model_id=setup.model.id + 1000)  # gone: nothing
    assert len(setup.events("grant:revoke", "grant:suspend", "grant:reinstate")) == before == 1


def test_a_pack_rescreen_touches_only_models_referencing_the_pack(setup: Setup) -> None:
    literal = variant(OFAC, "deny: [IR, CU]", policy_text("acme/other"))
    setup.world.model(setup.publisher, "acme/other", policy=literal)
    with setup.airlock.db.session() as s:
        other = setup.airlock.publishing.get_model(s, "acme/other")
    ann = setup.researcher("ann", "GB")
    setup.world.grant(ann, other)
    with setup.airlock.db.session() as s:
        rescreen = setup.airlock.reevaluation.models_to_rescreen
        assert rescreen(s) == sorted([setup.model.id, other.id])
        assert rescreen(s, pack_id="us-ofac-comprehensive") == [setup.model.id]
        assert rescreen(s, pack_id="eu") == []
    lapse_kyc(setup, ann)
    jobs.rescreen_grants(setup.airlock, pack_id="us-ofac-comprehensive")
    with setup.airlock.db.session() as s:
        statuses = {g.model_id: g.status for g in s.scalars(select(Grant))}
    assert statuses == {setup.model.id: "suspended", other.id: "active"}
    [event] = setup.events("grant:suspend")
    assert event.payload["cause"]["kind"] == "pack_change"
    assert event.payload["cause"]["pack"] == "us-ofac-comprehensive"


def test_a_closed_stage_suspends_and_reopening_reinstates(setup: Setup) -> None:
    setup.researcher("ann", "GB")
    setup.world.grant(setup.world.actor("carl"), setup.model, "card")
    preview = variant("stage: limited", "stage: research-preview")
    assert actions(setup.check(preview)) == {"ann/weights-auto": "suspend", "carl/card": "keep"}
    setup.apply(preview)
    assert setup.grants() == {"ann/weights-auto": "suspended", "carl/card": "active"}
    [event] = setup.events("grant:suspend")
    assert [r["code"] for r in event.payload["reasons"]] == ["stage_closed"]
    setup.apply(BASE)
    assert setup.grants() == {"ann/weights-auto": "active", "carl/card": "active"}


def test_a_suspended_grant_is_not_reinstated_beside_a_new_one(setup: Setup) -> None:
    ann = setup.researcher("ann", "GB")
    with setup.airlock.db.session() as s:
        s.execute(update(Grant).values(status="suspended"))
        s.commit()
    assert [g["action"] for g in setup.check(BASE + "\n# again\n")["grants"]] == ["reinstate"]
    setup.world.grant(ann, setup.model)  # asked anew while suspended
    report = setup.check(BASE + "\n# again\n")
    assert [(g["status"], g["action"]) for g in report["grants"]] == [
        ("suspended", "keep"),
        ("active", "keep"),
    ]


KYC_WEEK = variant("kyc: identity\n", "kyc: identity\n      kyc_max_age: 7d\n")


def test_kyc_older_than_the_policy_allows_suspends_at_the_daily_rescreen(setup: Setup) -> None:
    ann = setup.researcher("ann", "GB")
    setup.researcher("eva", "DE")
    with setup.airlock.db.session() as s:  # ann verified five days ago, eva just now
        s.execute(
            update(KycVerification)
            .where(KycVerification.user_id == ann.user.id)
            .values(verified_at=utcnow() - timedelta(days=5))
        )
        s.commit()
    setup.apply(KYC_WEEK)  # both verifications are younger than a week: nothing changes
    jobs.rescreen_grants(setup.airlock)
    assert setup.grants() == {"ann/weights-auto": "active", "eva/weights-auto": "active"}
    assert setup.events("grant:suspend") == []
    later = (utcnow() + timedelta(days=3)).isoformat()  # ann's is now 8 days old, eva's 3
    for _ in range(2):  # safe to run twice
        jobs.rescreen_grants(setup.airlock, at=later)
        assert setup.grants() == {"ann/weights-auto": "suspended", "eva/weights-auto": "active"}
    [event] = setup.events("grant:suspend")
    assert event.payload["cause"]["kind"] == "daily_rescreen"
    [reason] = event.payload["reasons"]
    assert reason["code"] == "kyc_too_old" and reason["effect"] == "review"
    assert "(8 days ago)" in reason["message"] and "at most 1 week old" in reason["message"]
    with setup.airlock.db.session() as s:
        grant = s.scalars(select(Grant).where(Grant.user_id == ann.user.id)).one()
        assert grant.end_reason is not None and "must be renewed" in grant.end_reason
    # A renewed verification re-evaluates ann at once and reinstates the grant.
    setup.world.kyc(setup.reviewer, ann, country="GB", level=KycLevel.IDENTITY)
    assert setup.grants() == {"ann/weights-auto": "active", "eva/weights-auto": "active"}


def test_a_reviewer_approval_does_not_settle_an_old_verification(setup: Setup) -> None:
    """Approving a request despite an old verification lets the grant start, but the age keeps
    growing: the next re-screen past the limit suspends it like any other."""
    setup.apply(KYC_WEEK)
    ann = setup.world.actor("ann")
    setup.world.kyc(setup.reviewer, ann, country="GB", level=KycLevel.IDENTITY)
    with setup.airlock.db.session() as s:
        s.execute(
            update(KycVerification)
            .where(KycVerification.user_id == ann.user.id)
            .values(verified_at=utcnow() - timedelta(days=10))
        )
        s.commit()
    with setup.airlock.db.session() as s:
        outcome = setup.airlock.access.request_access(
            s,
            principal=ann.principal,
            model=setup.airlock.publishing.get_model(s, REPO),
            tier="weights-auto",
            form={"intended_use": "evaluation"},
            agreement="aup@1",
            request_country=None,
        )
        assert outcome.grant is None, outcome.decision.to_dict()
        assert outcome.decision.effect == "review"
        request_id = outcome.request.id
    with setup.airlock.db.session() as s:
        setup.airlock.access.review(
            s, principal=setup.reviewer.principal, request_id=request_id, approve=True, note="seen"
        )
    assert setup.grants() == {"ann/weights-auto": "active"}
    jobs.rescreen_grants(setup.airlock)
    assert setup.grants() == {"ann/weights-auto": "suspended"}


def test_a_deployed_pack_change_is_recorded_once_and_rescreens_its_models(setup: Setup) -> None:
    ann = setup.researcher("ann", "GB")
    lapse_kyc(setup, ann)  # what the re-screen will find, if it runs
    shipped = setup.airlock.packs
    notice = functools.partial(
        notice_pack_changes, audit=setup.airlock.audit, runner=setup.airlock.runner
    )
    with setup.airlock.db.session() as s:
        assert sorted(notice(s, packs=shipped)) == sorted(p.id for p in shipped)
    assert setup.grants() == {"ann/weights-auto": "active"}  # a first sighting judges nothing
    with setup.airlock.db.session() as s:
        assert notice(s, packs=shipped) == []
    ofac = shipped.get("us-ofac-comprehensive")
    assert ofac is not None
    redeployed = PackRegistry(
        dataclasses.replace(p, version="2099-01-01") if p is ofac else p for p in shipped
    )
    with setup.airlock.db.session() as s:
        assert notice(s, packs=redeployed) == ["us-ofac-comprehensive"]
    with setup.airlock.db.session() as s:
        assert notice(s, packs=redeployed) == []
    deployed = setup.events("pack:deploy")
    assert len(deployed) == len(shipped) + 1
    assert deployed[-1].payload["version"] == "2099-01-01"
    assert deployed[-1].payload["previous_hash"] == ofac.content_hash
    assert setup.grants() == {"ann/weights-auto": "suspended"}
    [event] = setup.events("grant:suspend")
    assert event.payload["cause"]["kind"] == "pack_change"


def statements_of(setup: Setup, run: Callable[[], object]) -> list[str]:
    """The SQL statements `run` sends (transaction control left out)."""
    sent: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        sent.append(statement)

    engine = setup.airlock.db.engine
    sql_event.listen(engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        sql_event.remove(engine, "before_cursor_execute", record)
    return [s for s in sent if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT"))]


def test_re_evaluating_a_model_reads_the_holders_kyc_in_one_statement(setup: Setup) -> None:
    """The query count does not grow with the number of holders."""

    def reevaluate() -> None:
        with setup.airlock.db.session() as s:
            found = setup.airlock.reevaluation.reevaluate_model(
                s, model_id=setup.model.id, cause={"kind": "test"}
            )
        assert found is not None and {v.action for v in found.grants} == {Action.KEEP}

    setup.researcher("ann", "GB")
    few = statements_of(setup, reevaluate)
    for name in ("eva", "finn", "gus", "hal"):
        setup.researcher(name, "DE")
    many = statements_of(setup, reevaluate)
    print(f"statements: {len(few)} with 1 holder, {len(many)} with 5")
    assert len(many) == len(few), many
    assert sum("kyc_verifications" in s for s in many) == 1
