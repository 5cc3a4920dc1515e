"""AccessService.decide memoizes the pure engine: a reused decision is the one evaluate gives."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from gateway.services.access import SUBJECT_FIELDS, AccessService, decision_key
from gateway.services.container import Airlock
from policies import Decision, Effect, ReleasePolicy, Subject, evaluate, parse_policy
from tests.policies.test_engine import CASES, GOOD, NOW, PACKS, POLICY, POLICY_YAML, Case


@dataclass(frozen=True)
class Model:
    frozen_at: datetime | None


def fresh(access: AccessService, policy: ReleasePolicy, case: Case, subject: Subject) -> Decision:
    return evaluate(
        policy, case.tier, subject, now=case.now, packs=access.packs, model_frozen=case.frozen
    )


def cached(access: AccessService, policy: ReleasePolicy, case: Case, subject: Subject) -> Decision:
    model = Model(case.now if case.frozen else None)
    return access.decide(policy, case.tier, subject, model, case.now)


@pytest.mark.sqlite
def test_every_engine_case_through_one_cache_in_both_orders(airlock: Airlock) -> None:
    """Each case differs from others in one input (a subject fact, the time, the freeze): a key
    missing any of them would hand one case another's decision."""
    access = airlock.access
    for case in [*CASES, *reversed(CASES), *CASES]:
        subject = dataclasses.replace(case.base, **case.facts)
        assert cached(access, POLICY, case, subject) == fresh(access, POLICY, case, subject)


@pytest.mark.sqlite
def test_kyc_expiry_within_the_same_day_is_not_served_stale(airlock: Airlock) -> None:
    expires = NOW + timedelta(hours=1)
    subject = dataclasses.replace(GOOD, kyc_expires_at=expires)
    before = Case(
        "before", "api-researcher", {}, Effect.ALLOW, set(), now=expires - timedelta(0, 1)
    )
    after = before._replace(now=expires)
    first = cached(airlock.access, POLICY, before, subject)
    second = cached(airlock.access, POLICY, after, subject)
    assert first.effect is Effect.ALLOW and second.effect is Effect.DENY
    assert second == fresh(airlock.access, POLICY, after, subject)


@pytest.mark.sqlite
def test_forms_are_keyed_by_value_and_unusual_ones_not_cached(airlock: Airlock) -> None:
    case = Case("form", "api-researcher", {}, Effect.ALLOW, set())
    assert GOOD.form is not None
    for form in ({**GOOD.form, "country": "FR"}, {**GOOD.form, "extra": 1}, {}, None):
        subject = dataclasses.replace(GOOD, form=form)
        assert cached(airlock.access, POLICY, case, subject) == fresh(
            airlock.access, POLICY, case, subject
        )
    odd = dataclasses.replace(GOOD, form={**GOOD.form, "when": datetime(2026, 1, 1, tzinfo=UTC)})
    assert decision_key(POLICY, case.tier, odd, False, NOW) is None
    assert cached(airlock.access, POLICY, case, odd) == fresh(airlock.access, POLICY, case, odd)
    # 1, "1" and True are different form values, and so different keys
    keys = {
        decision_key(POLICY, case.tier, dataclasses.replace(GOOD, form={"n": v}), False, NOW)
        for v in (1, "1", True, 1.0, [1], None)
    }
    assert len(keys) == 6


@pytest.mark.sqlite
def test_another_policy_object_never_gets_this_ones_entry(airlock: Airlock) -> None:
    case = Case("policy", "api-researcher", {}, Effect.ALLOW, set())
    closed = parse_policy(POLICY_YAML.replace("stage: limited", "stage: internal", 1), packs=PACKS)
    assert cached(airlock.access, POLICY, case, GOOD).effect is Effect.ALLOW
    assert cached(airlock.access, closed, case, GOOD).effect is Effect.DENY
    same = parse_policy(POLICY_YAML, packs=PACKS)
    assert decision_key(same, case.tier, GOOD, False, NOW) != decision_key(
        POLICY, case.tier, GOOD, False, NOW
    )
    assert cached(airlock.access, same, case, GOOD) == fresh(airlock.access, same, case, GOOD)


def test_the_key_covers_every_subject_field() -> None:
    names = {f.name for f in dataclasses.fields(Subject)}
    assert set(SUBJECT_FIELDS) == names
    for name in names - {"form", "user_id"}:
        value = getattr(GOOD, name)
        other = dataclasses.replace(GOOD, **{name: _other(value)})
        assert decision_key(POLICY, "t", other, False, NOW) != decision_key(
            POLICY, "t", GOOD, False, NOW
        ), name


def _other(value: object) -> object:
    if value is None:
        return "DE-BY"
    if isinstance(value, bool):
        return not value
    if isinstance(value, datetime):
        return value + timedelta(seconds=1)
    if isinstance(value, frozenset):
        return frozenset()
    if isinstance(value, str) and len(value) == 2:
        return "FR" if value != "FR" else "DE"
    if isinstance(value, str):
        return value + "x"
    return None


def test_decide_passes_every_input_evaluate_takes() -> None:
    """A new parameter of `evaluate` that `decide` starts passing must join `decision_key`; one
    it does not pass keeps its default, which the cache may share. Review this list then."""
    taken = set(inspect.signature(evaluate).parameters)
    passed = {"policy", "tier_name", "subject", "now", "packs", "model_frozen"}
    assert passed <= taken
    assert taken - passed <= {"unobserved"}, "evaluate gained an input: see decision_key"
