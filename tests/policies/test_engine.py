"""Decisions: subject facts and a tier in, effect and the full set of reason codes out."""

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import (
    ApprovalMode,
    Decision,
    Effect,
    KycLevel,
    PackRegistry,
    ReasonCode,
    Subject,
    evaluate,
    load_packs,
    parse_policy,
)

R = ReasonCode
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PACKS = load_packs()

POLICY_YAML = """
model: acme/frontier-70b
stage: limited
agreements:
  acme-research-aup: {version: 2, text_file: agreements/acme-research-aup-v2.md}
forms:
  research:
    - {name: affiliation, type: text, required: true}
    - {name: intended_use, type: text, required: true, max_length: 2000}
    - {name: country, type: country, required: true}
    - {name: compute_environment, type: select, options: [on-premises, cloud, shared-cluster]}
tiers:
  - name: card
    grants: [metadata]
    requires: {}
    opens_in: [research-preview, limited, general]
  - name: api-researcher
    grants: [metadata, inference]
    requires:
      kyc: identity
      agreement: acme-research-aup@2
      form: research
      approval: auto
      jurisdiction:
        deny: [pack:us-ofac-comprehensive]
        review: [pack:us-bis-ai-diffusion-2025#tier3]
    grant_ttl: 180d
    opens_in: [research-preview, limited, general]
  - name: weights-vetted
    grants: [metadata, inference, weights]
    files: ["*.safetensors", "config.json", "tokenizer*"]
    requires:
      kyc: institution
      agreement: acme-research-aup@2
      form: research
      approval: {mode: manual, reviewers: 2}
      jurisdiction:
        allow: [pack:us-bis-ai-diffusion-2025#tier1]
        deny: [pack:us-ofac-comprehensive, pack:us-bis-ai-diffusion-2025#tier3]
        signals: [nationality, residence_country, document_country, org_hq_country,
                  request_country]
    opens_in: [limited, general]
  - {name: kyc-none, grants: [metadata], requires: {kyc: none}, opens_in: [limited]}
  - {name: kyc-email, grants: [metadata], requires: {kyc: email}, opens_in: [limited]}
  - {name: kyc-identity, grants: [metadata], requires: {kyc: identity}, opens_in: [limited]}
  - {name: kyc-institution, grants: [metadata], requires: {kyc: institution}, opens_in: [limited]}
  - {name: general-only, grants: [metadata, inference], requires: {}, opens_in: [general]}
  - {name: one-reviewer, grants: [metadata], requires: {approval: manual}, opens_in: [limited]}
  - name: bis-tiered
    grants: [inference]
    requires:
      jurisdiction:
        allow: [pack:us-bis-ai-diffusion-2025#tier1]
        deny: [pack:us-bis-ai-diffusion-2025#tier3]
        otherwise: review
        signals: [nationality]
    opens_in: [limited]
  - name: d5
    grants: [inference]
    requires: {jurisdiction: {deny: [pack:us-bis-ai-diffusion-2025#d5], signals: [nationality]}}
    opens_in: [limited]
  - name: literal
    grants: [inference]
    requires: {jurisdiction: {deny: [CN, UA-43], review: [RU], signals: [residence_country]}}
    opens_in: [limited]
  - name: no-eu
    grants: [inference]
    requires: {jurisdiction: {deny: [pack:eu], signals: [residence_country]}}
    opens_in: [limited]
  - name: request-only
    grants: [inference]
    requires: {jurisdiction: {deny: [pack:us-ofac-comprehensive], signals: [request_country]}}
    opens_in: [limited]
  - name: affiliated
    grants: [inference]
    requires:
      kyc: email
      affiliation: {orgs: [acme, mit], email_domains: [edu, ox.ac.uk]}
    opens_in: [limited]
  - name: kyc-fresh
    grants: [metadata]
    requires: {kyc: identity, kyc_max_age: 365d}
    opens_in: [limited]
"""

POLICY = parse_policy(POLICY_YAML, packs=PACKS)

GOOD_FORM = {"affiliation": "Example University", "intended_use": "Evals", "country": "DE"}
GOOD = Subject(
    user_id="u-1",
    kyc_level=KycLevel.INSTITUTION,
    kyc_expires_at=datetime(2027, 1, 1, tzinfo=UTC),
    kyc_verified_at=datetime(2025, 6, 1, 9, 30, tzinfo=UTC),
    sanctions_hit=False,
    nationality="DE",
    residence_country="DE",
    document_country="DE",
    org_hq_country="DE",
    request_country="DE",
    affiliation_org="acme",
    email="ada@cs.example.edu",
    accepted_agreements=frozenset({("acme-research-aup", 2)}),
    form=GOOD_FORM,
)
NOBODY = Subject()

# What a fully satisfied request collects on the two example tiers.
API_OK = {R.KYC_LEVEL_MET, R.AGREEMENT_ACCEPTED, R.FORM_COMPLETE, R.JURISDICTION_ALLOWED}
API_ALLOWED = API_OK | {R.REQUIREMENTS_MET}
WEIGHTS_OK = API_OK
WEIGHTS_APPROVAL = WEIGHTS_OK | {R.APPROVAL_REQUIRED}
MET = {R.KYC_LEVEL_MET, R.REQUIREMENTS_MET}
ALLOWED = {R.JURISDICTION_ALLOWED, R.KYC_LEVEL_MET, R.REQUIREMENTS_MET}


class Case(NamedTuple):
    id: str
    tier: str
    facts: dict[str, Any]
    effect: Effect
    codes: set[ReasonCode]
    now: datetime = NOW
    frozen: bool = False
    base: Subject = GOOD


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(hour=12, tzinfo=UTC)


LEVELS = list(KycLevel)
KYC_MATRIX = [
    Case(
        f"kyc-{have}-for-{need}",
        f"kyc-{need}",
        {"kyc_level": have},
        Effect.ALLOW if have.rank >= need.rank else Effect.DENY,
        MET if have.rank >= need.rank else {R.KYC_LEVEL_INSUFFICIENT},
    )
    for have in LEVELS
    for need in LEVELS
]

EXPIRED = NOW - timedelta(days=1)
OFAC_DENIED = {R.KYC_LEVEL_MET, R.AGREEMENT_ACCEPTED, R.FORM_COMPLETE, R.JURISDICTION_DENIED}
API_REVIEW = API_OK | {R.JURISDICTION_REVIEW}

VERIFIED = GOOD.kyc_verified_at or NOW
YEAR = timedelta(days=365)
KYC_AGE = [
    Case("kyc-fresh", "kyc-fresh", {}, Effect.ALLOW, MET),
    Case("kyc-age-at-limit", "kyc-fresh", {}, Effect.ALLOW, MET, now=VERIFIED + YEAR),
    Case(
        "kyc-too-old",
        "kyc-fresh",
        {},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.KYC_TOO_OLD},
        now=VERIFIED + YEAR + timedelta(seconds=1),
    ),
    Case(
        "kyc-verified-long-ago",
        "kyc-fresh",
        {"kyc_verified_at": NOW - timedelta(days=400)},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.KYC_TOO_OLD},
    ),
    Case(
        "kyc-verified-when-unknown",
        "kyc-fresh",
        {"kyc_verified_at": None},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.KYC_TOO_OLD},
    ),
    Case(  # lapsed counts as none: the level falls short, and its age no longer matters
        "kyc-old-and-expired",
        "kyc-fresh",
        {"kyc_verified_at": NOW - timedelta(days=400), "kyc_expires_at": EXPIRED},
        Effect.DENY,
        {R.KYC_EXPIRED, R.KYC_LEVEL_INSUFFICIENT},
    ),
    Case(
        "kyc-old-and-too-low",
        "kyc-fresh",
        {"kyc_verified_at": NOW - timedelta(days=400), "kyc_level": KycLevel.EMAIL},
        Effect.DENY,
        {R.KYC_LEVEL_INSUFFICIENT},
    ),
    Case("kyc-age-unlimited", "kyc-identity", {"kyc_verified_at": None}, Effect.ALLOW, MET),
]

CASES = [
    *KYC_MATRIX,
    *KYC_AGE,
    # Availability: unknown tier, stage, freeze, explicit empty requirements.
    Case("unknown-tier", "enterprise", {}, Effect.DENY, {R.TIER_UNKNOWN}),
    Case("card-anyone", "card", {}, Effect.ALLOW, {R.NO_REQUIREMENTS}, base=NOBODY),
    Case("card-frozen-metadata-only", "card", {}, Effect.ALLOW, {R.NO_REQUIREMENTS}, frozen=True),
    Case("stage-closed", "general-only", {}, Effect.DENY, {R.STAGE_CLOSED, R.NO_REQUIREMENTS}),
    Case("api-frozen", "api-researcher", {}, Effect.DENY, API_OK | {R.MODEL_FROZEN}, frozen=True),
    Case(
        "weights-frozen",
        "weights-vetted",
        {},
        Effect.DENY,
        WEIGHTS_OK | {R.MODEL_FROZEN},
        frozen=True,
    ),
    # KYC expiry and sanctions screening.
    Case("api-all-met", "api-researcher", {}, Effect.ALLOW, API_ALLOWED),
    Case(
        "api-kyc-email",
        "api-researcher",
        {"kyc_level": KycLevel.EMAIL},
        Effect.DENY,
        (API_OK - {R.KYC_LEVEL_MET}) | {R.KYC_LEVEL_INSUFFICIENT},
    ),
    Case(
        "api-kyc-expired",
        "api-researcher",
        {"kyc_expires_at": EXPIRED},
        Effect.DENY,
        (API_OK - {R.KYC_LEVEL_MET}) | {R.KYC_EXPIRED, R.KYC_LEVEL_INSUFFICIENT},
    ),
    Case(
        "api-kyc-expires-now",
        "api-researcher",
        {"kyc_expires_at": NOW},
        Effect.DENY,
        (API_OK - {R.KYC_LEVEL_MET}) | {R.KYC_EXPIRED, R.KYC_LEVEL_INSUFFICIENT},
    ),
    Case(
        "api-kyc-expires-later",
        "api-researcher",
        {"kyc_expires_at": NOW + timedelta(seconds=1)},
        Effect.ALLOW,
        API_ALLOWED,
    ),
    Case(
        "kyc-none-tier-ignores-expiry", "kyc-none", {"kyc_expires_at": EXPIRED}, Effect.ALLOW, MET
    ),
    Case(
        "api-sanctions-hit",
        "api-researcher",
        {"sanctions_hit": True},
        Effect.DENY,
        API_OK | {R.SANCTIONS_SCREENING_HIT},
    ),
    Case(
        "api-sanctions-unknown",
        "api-researcher",
        {"sanctions_hit": None},
        Effect.ALLOW,
        API_ALLOWED,
    ),
    Case("email-tier-no-screening", "kyc-email", {"sanctions_hit": True}, Effect.ALLOW, MET),
    Case(
        "institution-tier-sanctions-hit",
        "kyc-institution",
        {"sanctions_hit": True},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.SANCTIONS_SCREENING_HIT},
    ),
    # Agreements and forms.
    Case(
        "api-agreement-old-version",
        "api-researcher",
        {"accepted_agreements": frozenset({("acme-research-aup", 1)})},
        Effect.DENY,
        (API_OK - {R.AGREEMENT_ACCEPTED}) | {R.AGREEMENT_NOT_ACCEPTED},
    ),
    Case(
        "api-agreement-none",
        "api-researcher",
        {"accepted_agreements": frozenset()},
        Effect.DENY,
        (API_OK - {R.AGREEMENT_ACCEPTED}) | {R.AGREEMENT_NOT_ACCEPTED},
    ),
    Case(
        "api-form-missing-field",
        "api-researcher",
        {"form": {"affiliation": "Example University", "country": "DE"}},
        Effect.DENY,
        (API_OK - {R.FORM_COMPLETE}) | {R.FORM_INCOMPLETE},
    ),
    Case(
        "api-form-not-submitted",
        "api-researcher",
        {"form": None},
        Effect.DENY,
        (API_OK - {R.FORM_COMPLETE}) | {R.FORM_INCOMPLETE},
    ),
    Case(
        "api-form-bad-option",
        "api-researcher",
        {"form": {**GOOD_FORM, "compute_environment": "the moon"}},
        Effect.DENY,
        (API_OK - {R.FORM_COMPLETE}) | {R.FORM_INCOMPLETE},
    ),
    Case(
        "api-form-too-long",
        "api-researcher",
        {"form": {**GOOD_FORM, "intended_use": "x" * 2001}},
        Effect.DENY,
        (API_OK - {R.FORM_COMPLETE}) | {R.FORM_INCOMPLETE},
    ),
    Case(
        "api-everything-wrong",
        "api-researcher",
        {
            "kyc_level": KycLevel.EMAIL,
            "accepted_agreements": frozenset(),
            "form": None,
            "nationality": "IR",
        },
        Effect.DENY,
        {
            R.KYC_LEVEL_INSUFFICIENT,
            R.AGREEMENT_NOT_ACCEPTED,
            R.FORM_INCOMPLETE,
            R.JURISDICTION_DENIED,
            R.JURISDICTION_ALLOWED,
        },
    ),
    # OFAC comprehensive embargoes on the api tier (deny list), via several signals.
    Case("ofac-cu", "api-researcher", {"nationality": "CU"}, Effect.DENY, OFAC_DENIED | API_OK),
    Case(
        "ofac-ir", "api-researcher", {"residence_country": "IR"}, Effect.DENY, OFAC_DENIED | API_OK
    ),
    Case("ofac-kp", "api-researcher", {"nationality": "KP"}, Effect.DENY, OFAC_DENIED | API_OK),
    Case(
        "ofac-ir-lowercase",
        "api-researcher",
        {"nationality": "ir"},
        Effect.DENY,
        OFAC_DENIED | API_OK,
    ),
    Case(
        "ofac-crimea",
        "api-researcher",
        {"residence_country": "UA", "residence_subdivision": "UA-43"},
        Effect.DENY,
        OFAC_DENIED | API_OK,
    ),
    Case(
        "ofac-sevastopol",
        "api-researcher",
        {"residence_country": "UA", "residence_subdivision": "UA-40"},
        Effect.DENY,
        OFAC_DENIED | API_OK,
    ),
    Case(
        "subdivision-beats-country",
        "api-researcher",
        {"residence_country": "DE", "residence_subdivision": "UA-43"},
        Effect.DENY,
        OFAC_DENIED | API_OK,
    ),
    Case(
        "ofac-donetsk-partial",
        "api-researcher",
        {"residence_country": "UA", "residence_subdivision": "UA-14"},
        Effect.REVIEW,
        API_REVIEW,
    ),
    Case(
        "ofac-luhansk-partial",
        "api-researcher",
        {"residence_country": "UA", "residence_subdivision": "UA-09"},
        Effect.REVIEW,
        API_REVIEW,
    ),
    Case(
        "ofac-ukraine-country-only",
        "api-researcher",
        {"residence_country": "UA"},
        Effect.REVIEW,
        API_REVIEW,
    ),
    Case(
        "ofac-lviv-not-listed",
        "api-researcher",
        {"residence_country": "UA", "residence_subdivision": "UA-46"},
        Effect.ALLOW,
        API_ALLOWED,
    ),
    Case(
        "ofac-syria-before-2025-07-01",
        "api-researcher",
        {"nationality": "SY"},
        Effect.DENY,
        OFAC_DENIED | API_OK,
        now=day("2025-06-30"),
    ),
    Case(
        "ofac-syria-from-2025-07-01-tier3-review",
        "api-researcher",
        {"nationality": "SY"},
        Effect.REVIEW,
        API_REVIEW,
        now=day("2025-07-01"),
    ),
    Case(
        "ofac-crimea-before-2014-12-19",
        "api-researcher",
        {"residence_subdivision": "UA-43"},
        Effect.ALLOW,
        API_ALLOWED,
        now=day("2014-12-18"),
    ),
    Case("tier3-china-review", "api-researcher", {"nationality": "CN"}, Effect.REVIEW, API_REVIEW),
    Case(
        "deny-beats-review",
        "api-researcher",
        {"nationality": "CU", "residence_country": "CN"},
        Effect.DENY,
        API_OK - {R.JURISDICTION_ALLOWED} | {R.JURISDICTION_DENIED, R.JURISDICTION_REVIEW},
    ),
    Case(
        "review-beats-allow",
        "api-researcher",
        {"nationality": "CN", "residence_country": "FR"},
        Effect.REVIEW,
        API_REVIEW,
    ),
    Case(
        "deny-beats-missing-signal",
        "api-researcher",
        {"nationality": "IR", "residence_country": None},
        Effect.DENY,
        API_OK - {R.JURISDICTION_ALLOWED} | {R.JURISDICTION_DENIED, R.SIGNAL_MISSING},
    ),
    Case(
        "api-nationality-missing",
        "api-researcher",
        {"nationality": None},
        Effect.REVIEW,
        API_OK | {R.SIGNAL_MISSING},
    ),
    Case(
        "api-residence-missing",
        "api-researcher",
        {"residence_country": None},
        Effect.REVIEW,
        API_OK | {R.SIGNAL_MISSING},
    ),
    Case(
        "api-signal-not-iso",
        "api-researcher",
        {"nationality": "IRN"},
        Effect.REVIEW,
        API_OK | {R.SIGNAL_INVALID},
    ),
    Case(
        "api-signal-not-assigned",
        "api-researcher",
        {"nationality": "UK"},
        Effect.REVIEW,
        API_OK | {R.SIGNAL_INVALID},
    ),
    Case(
        "request-signal-ofac",
        "request-only",
        {"request_country": "IR"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case(
        "request-signal-missing",
        "request-only",
        {"request_country": None},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.SIGNAL_MISSING},
    ),
    Case("request-signal-clean", "request-only", {}, Effect.ALLOW, ALLOWED),
    # The weights tier: BIS tier 1 allow, OFAC and tier 3 deny, otherwise deny, manual approval.
    Case(
        "weights-all-met-needs-2-reviewers", "weights-vetted", {}, Effect.REVIEW, WEIGHTS_APPROVAL
    ),
    Case(
        "weights-kyc-identity",
        "weights-vetted",
        {"kyc_level": KycLevel.IDENTITY},
        Effect.DENY,
        (WEIGHTS_OK - {R.KYC_LEVEL_MET}) | {R.KYC_LEVEL_INSUFFICIENT},
    ),
    Case(
        "weights-tier2-not-listed",
        "weights-vetted",
        {"nationality": "BR"},
        Effect.DENY,
        WEIGHTS_OK | {R.JURISDICTION_NOT_LISTED},
    ),
    Case(
        "weights-tier3-denied",
        "weights-vetted",
        {"org_hq_country": "CN"},
        Effect.DENY,
        WEIGHTS_OK | {R.JURISDICTION_DENIED},
    ),
    Case(
        "weights-macau-tier3",
        "weights-vetted",
        {"document_country": "MO"},
        Effect.DENY,
        WEIGHTS_OK | {R.JURISDICTION_DENIED},
    ),
    Case(
        "weights-syria-still-tier3-after-ofac-ends",
        "weights-vetted",
        {"nationality": "SY"},
        Effect.DENY,
        WEIGHTS_OK | {R.JURISDICTION_DENIED},
        now=day("2025-08-01"),
    ),
    Case(
        "weights-us-requester",
        "weights-vetted",
        {"nationality": "US", "residence_country": "US", "request_country": "US"},
        Effect.REVIEW,
        WEIGHTS_APPROVAL,
    ),
    Case(
        "weights-ukraine-partial-no-approval-yet",
        "weights-vetted",
        {"residence_country": "UA"},
        Effect.REVIEW,
        WEIGHTS_OK | {R.JURISDICTION_REVIEW},
    ),
    *[
        Case(
            f"weights-missing-{signal}",
            "weights-vetted",
            {signal: None},
            Effect.REVIEW,
            WEIGHTS_OK | {R.SIGNAL_MISSING},
        )
        for signal in (
            "nationality",
            "residence_country",
            "document_country",
            "org_hq_country",
            "request_country",
        )
    ],
    Case("one-reviewer", "one-reviewer", {}, Effect.REVIEW, {R.KYC_LEVEL_MET, R.APPROVAL_REQUIRED}),
    # BIS tiers expressed with otherwise: allow tier 1, deny tier 3, review the rest (tier 2).
    Case("bis-tier1-gb", "bis-tiered", {"nationality": "GB"}, Effect.ALLOW, ALLOWED),
    Case("bis-tier1-norway", "bis-tiered", {"nationality": "NO"}, Effect.ALLOW, ALLOWED),
    Case(
        "bis-tier2-brazil",
        "bis-tiered",
        {"nationality": "BR"},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.JURISDICTION_REVIEW},
    ),
    Case(
        "bis-tier3-russia",
        "bis-tiered",
        {"nationality": "RU"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case(
        "bis-tier3-macau",
        "bis-tiered",
        {"nationality": "MO"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    # Country Group D:5 as its own list: Cambodia left on 2026-02-03.
    Case(
        "d5-cambodia-before",
        "d5",
        {"nationality": "KH"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
        now=day("2026-02-02"),
    ),
    Case(
        "d5-cambodia-on-removal-day",
        "d5",
        {"nationality": "KH"},
        Effect.ALLOW,
        ALLOWED,
        now=day("2026-02-03"),
    ),
    Case(
        "d5-china",
        "d5",
        {"nationality": "CN"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case("d5-germany", "d5", {}, Effect.ALLOW, ALLOWED),
    # Literal codes: a subdivision matches its country; a country only partly matches a subdivision.
    Case(
        "literal-country",
        "literal",
        {"residence_country": "CN"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case(
        "literal-subdivision-in-country",
        "literal",
        {"residence_subdivision": "CN-BJ"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case(
        "literal-subdivision",
        "literal",
        {"residence_subdivision": "UA-43"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case(
        "literal-country-vs-subdivision",
        "literal",
        {"residence_country": "UA"},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.JURISDICTION_REVIEW},
    ),
    Case(
        "literal-review-list",
        "literal",
        {"residence_country": "RU"},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.JURISDICTION_REVIEW},
    ),
    Case(
        "literal-other-subdivision",
        "literal",
        {"residence_subdivision": "UA-46"},
        Effect.ALLOW,
        ALLOWED,
    ),
    # The EU pack, as Hugging Face's extra_gated_eu_disallowed.
    Case(
        "eu-france",
        "no-eu",
        {"residence_country": "FR"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case(
        "eu-paris-subdivision",
        "no-eu",
        {"residence_subdivision": "FR-75C"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.JURISDICTION_DENIED},
    ),
    Case("eu-united-kingdom", "no-eu", {"residence_country": "GB"}, Effect.ALLOW, ALLOWED),
    # Affiliation: organization or email domain on a dot boundary.
    Case(
        "affiliation-org",
        "affiliated",
        {"email": None},
        Effect.ALLOW,
        {R.KYC_LEVEL_MET, R.AFFILIATION_ALLOWED, R.REQUIREMENTS_MET},
    ),
    Case(
        "affiliation-email-suffix",
        "affiliated",
        {"affiliation_org": None},
        Effect.ALLOW,
        {R.KYC_LEVEL_MET, R.AFFILIATION_ALLOWED, R.REQUIREMENTS_MET},
    ),
    Case(
        "affiliation-email-exact-domain",
        "affiliated",
        {"affiliation_org": "other", "email": "ada@OX.AC.UK"},
        Effect.ALLOW,
        {R.KYC_LEVEL_MET, R.AFFILIATION_ALLOWED, R.REQUIREMENTS_MET},
    ),
    Case(
        "affiliation-not-a-dot-boundary",
        "affiliated",
        {"affiliation_org": None, "email": "ada@fox.ac.uk"},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.AFFILIATION_NOT_ALLOWED},
    ),
    Case(
        "affiliation-other-org",
        "affiliated",
        {"affiliation_org": "globex", "email": None},
        Effect.DENY,
        {R.KYC_LEVEL_MET, R.AFFILIATION_NOT_ALLOWED},
    ),
    Case(
        "affiliation-unknown",
        "affiliated",
        {"affiliation_org": None, "email": None},
        Effect.REVIEW,
        {R.KYC_LEVEL_MET, R.AFFILIATION_UNKNOWN},
    ),
]


def decide(case: Case) -> Decision:
    subject = dataclasses.replace(case.base, **case.facts)
    return evaluate(POLICY, case.tier, subject, now=case.now, packs=PACKS, model_frozen=case.frozen)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_decision(case: Case) -> None:
    decision = decide(case)
    assert decision.effect is case.effect, decision.reasons
    assert {reason.code for reason in decision.reasons} == case.codes
    assert decision.allowed is (case.effect is Effect.ALLOW)
    for reason in decision.reasons:
        assert reason.message.strip() and reason.message.endswith(".")
        assert reason.rule.startswith("tiers")


def test_enough_decision_cases() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


def reasons_of(case_id: str, code: ReasonCode) -> list[str]:
    decision = decide(next(case for case in CASES if case.id == case_id))
    return [reason.message for reason in decision.reasons if reason.code is code]


def test_deny_message_names_signal_code_pack_and_version() -> None:
    (message,) = reasons_of("ofac-kp", R.JURISDICTION_DENIED)
    assert "nationality 'KP'" in message
    assert "us-ofac-comprehensive version 2025-07-01" in message
    assert "North Korea" in message


def test_partial_match_explains_why_review() -> None:
    (message,) = reasons_of("ofac-donetsk-partial", R.JURISDICTION_REVIEW)
    assert "only part of 'UA-14'" in message and "reviewer" in message


def test_kyc_message_reads_as_a_sentence() -> None:
    (message,) = reasons_of("weights-kyc-identity", R.KYC_LEVEL_INSUFFICIENT)
    expected = "Identity verification at level 'institution' is required; the requester has"
    assert message == f"{expected} 'identity'."


def test_form_message_lists_problems() -> None:
    (message,) = reasons_of("api-form-missing-field", R.FORM_INCOMPLETE)
    assert "Field 'intended_use' is required." in message


def test_manual_approval_reports_reviewers() -> None:
    decision = decide(next(case for case in CASES if case.id.startswith("weights-all-met")))
    assert decision.approval is not None
    assert (decision.approval.mode, decision.approval.reviewers) == (ApprovalMode.MANUAL, 2)
    (message,) = [r.message for r in decision.reasons if r.code is R.APPROVAL_REQUIRED]
    assert "2 reviewers" in message


@pytest.mark.parametrize(
    ("case_id", "mode", "reviewers"),
    [
        ("api-all-met", ApprovalMode.AUTO, 0),
        ("api-nationality-missing", ApprovalMode.MANUAL, 1),
        ("weights-missing-nationality", ApprovalMode.MANUAL, 2),
        ("api-kyc-email", ApprovalMode.AUTO, 0),
    ],
)
def test_review_always_needs_a_reviewer(case_id: str, mode: ApprovalMode, reviewers: int) -> None:
    decision = decide(next(case for case in CASES if case.id == case_id))
    assert decision.approval is not None
    assert (decision.approval.mode, decision.approval.reviewers) == (mode, reviewers)


def test_rule_paths_point_into_the_policy() -> None:
    decision = decide(next(case for case in CASES if case.id == "weights-tier3-denied"))
    rules = {reason.code: reason.rule for reason in decision.reasons}
    assert rules[R.KYC_LEVEL_MET] == "tiers[weights-vetted].requires.kyc"
    assert rules[R.JURISDICTION_DENIED] == "tiers[weights-vetted].requires.jurisdiction.deny[1]"


def test_packs_used_are_recorded_with_versions_and_hashes() -> None:
    decision = decide(CASES[0]._replace(tier="weights-vetted"))
    ids = [(pack_id, version) for pack_id, version, _ in decision.packs_used]
    assert ids == [
        ("us-bis-ai-diffusion-2025", "2026-02-03"),
        ("us-ofac-comprehensive", "2025-07-01"),
    ]
    pack = PACKS.get("us-ofac-comprehensive")
    assert pack is not None and (pack.id, pack.version, pack.content_hash) in decision.packs_used
    assert decide(CASES[0]._replace(tier="card")).packs_used == ()


def test_decision_to_dict_is_json() -> None:
    decision = decide(next(case for case in CASES if case.id == "ofac-crimea"))
    document = json.loads(json.dumps(decision.to_dict()))
    assert document["effect"] == "deny" and document["allowed"] is False
    assert document["tier"] == "api-researcher"
    assert {"code", "message", "rule", "effect"} <= set(document["reasons"][0])
    assert document["approval"] == {"mode": "auto", "reviewers": 0}
    assert len(document["packs_used"]) == 2


def test_missing_pack_fails_closed() -> None:
    decision = evaluate(POLICY, "api-researcher", GOOD, now=NOW, packs=PackRegistry())
    assert decision.effect is Effect.DENY
    assert R.PACK_UNAVAILABLE in {reason.code for reason in decision.reasons}


@pytest.mark.parametrize(
    "build",
    [
        lambda: evaluate(POLICY, "card", GOOD, now=datetime(2026, 1, 1), packs=PACKS),
        lambda: Subject(kyc_expires_at=datetime(2026, 1, 1)),
    ],
    ids=["naive-now", "naive-expiry"],
)
def test_naive_datetimes_are_refused(build: Any) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        build()


CODES = st.sampled_from(["DE", "US", "CN", "IR", "UA", "UA-43", "UA-14", "KH", "BR", "XX", "NO"])
SUBJECTS = st.builds(
    Subject,
    kyc_level=st.sampled_from(list(KycLevel)),
    kyc_expires_at=st.sampled_from([None, EXPIRED, NOW + timedelta(days=30)]),
    sanctions_hit=st.sampled_from([None, False, True]),
    nationality=st.none() | CODES,
    residence_country=st.none() | CODES,
    residence_subdivision=st.none() | st.sampled_from(["UA-43", "UA-14", "UA-46"]),
    document_country=st.none() | CODES,
    org_hq_country=st.none() | CODES,
    request_country=st.none() | CODES,
    affiliation_org=st.none() | st.sampled_from(["acme", "globex"]),
    email=st.none() | st.sampled_from(["a@mit.edu", "a@example.com"]),
    accepted_agreements=st.sampled_from([frozenset(), GOOD.accepted_agreements]),
    form=st.sampled_from([None, GOOD_FORM, {"country": "DE"}]),
)


@settings(max_examples=300, deadline=None)
@given(
    subject=SUBJECTS,
    tier=st.sampled_from([tier.name for tier in POLICY.tiers]),
    frozen=st.booleans(),
)
def test_decision_invariants(subject: Subject, tier: str, frozen: bool) -> None:
    decision = evaluate(POLICY, tier, subject, now=NOW, packs=PACKS, model_frozen=frozen)
    effects = {reason.effect for reason in decision.reasons}
    assert decision.reasons and decision.effect in effects
    if decision.allowed:
        assert effects == {Effect.ALLOW}
    found = POLICY.tier(tier)
    assert found is not None
    rule = found.requires.jurisdiction
    if rule and any(subject.signal(signal) is None for signal in rule.signals):
        assert not decision.allowed
