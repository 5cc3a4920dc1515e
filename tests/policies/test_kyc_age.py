"""A tier's `requires.kyc_max_age`: how it is written, and the sentence a too-old check gives."""

import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from policies import (
    Effect,
    PolicyError,
    ReasonCode,
    evaluate,
    parse_policy,
    parse_subject,
)
from tests.policies.test_engine import PACKS, POLICY, POLICY_YAML

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def reason(verified: str | None, limit: str = "365d", now: datetime = NOW) -> str:
    text = POLICY_YAML.replace("kyc_max_age: 365d", f"kyc_max_age: {limit}")
    facts: dict[str, object] = {"kyc_level": "identity"}
    if verified is not None:
        facts["kyc_verified_at"] = verified
    decision = evaluate(
        parse_policy(text, packs=PACKS), "kyc-fresh", parse_subject(facts), now=now, packs=PACKS
    )
    assert decision.effect is Effect.REVIEW
    (found,) = [r for r in decision.reasons if r.code is ReasonCode.KYC_TOO_OLD]
    assert found.rule == "tiers[kyc-fresh].requires.kyc_max_age"
    return found.message


@pytest.mark.parametrize(
    ("verified", "limit", "words"),
    [
        ("2025-01-25T08:00:00Z", "365d", ["dates from 2025-01-25 (400 days ago)", "365 days old"]),
        ("2026-02-27T12:00:00Z", "1d", ["(2 days ago)", "at most 1 day old"]),
        ("2026-03-01T09:00:00Z", "2h", ["(3 hours ago)", "at most 2 hours old"]),
        ("2025-12-01T12:00:00Z", "4w", ["(90 days ago)", "at most 4 weeks old", "renewed"]),
        (None, "365d", ["is unknown", "at most 365 days old", "reviewer"]),
    ],
)
def test_too_old_names_the_age_and_the_limit(
    verified: str | None, limit: str, words: list[str]
) -> None:
    message = reason(verified, limit)
    for word in words:
        assert word in message, message


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("written", "words"),
    [
        ("{kyc: identity, kyc_max_age: 1y}", "'1y' is not a duration"),
        ("{kyc: identity, kyc_max_age: 0d}", "'0d' is not a duration"),
        ("{kyc: identity, kyc_max_age: 365}", "must be text"),
        ("{kyc: none, kyc_max_age: 365d}", "needs a kyc level other than none"),
        ("{kyc_max_age: 365d}", "needs a kyc level other than none"),
    ],
)
def test_bad_kyc_max_age_is_an_error_at_its_line(written: str, words: str) -> None:
    text = POLICY_YAML.replace("{kyc: identity, kyc_max_age: 365d}", written)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, packs=PACKS)
    (issue,) = caught.value.issues
    assert issue.path == "tiers[15].requires.kyc_max_age"
    assert issue.line == line_of(text, written) and words in issue.message


def test_kyc_max_age_round_trips() -> None:
    document = json.loads(json.dumps(POLICY.to_dict()))
    fresh = next(t for t in document["tiers"] if t["name"] == "kyc-fresh")
    assert fresh["requires"]["kyc_max_age"] == "365d"
    again = parse_policy(yaml.safe_dump(document), packs=PACKS)
    assert again == POLICY
    tier = again.tier("kyc-fresh")
    assert tier is not None and tier.requires.kyc_max_age == timedelta(days=365)


def test_subject_json_carries_the_verification_date() -> None:
    subject = parse_subject({"kyc_level": "identity", "kyc_verified_at": "2025-06-01T09:30:00Z"})
    assert subject.kyc_verified_at == datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
    with pytest.raises(PolicyError) as caught:
        parse_subject({"kyc_verified_at": "2025-06-01T09:30:00"})
    assert caught.value.issues[0].path == "kyc_verified_at"
