"""The jurisdiction matrix: nationality vs residence vs request country, subdivisions, missing
signals and effective dates, against the shipped OFAC pack (deny > review > allow)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import pytest

from policies import Effect, ReasonCode, Signal, Subject, evaluate, load_packs, parse_policy

R = ReasonCode
PACKS = load_packs()
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = parse_policy(
    """
model: acme/matrix
stage: limited
tiers:
  - name: weights
    grants: [metadata, weights]
    requires:
      jurisdiction:
        deny: [pack:us-ofac-comprehensive]
        signals: [nationality, residence_country, request_country]
    opens_in: [limited]
""",
    packs=PACKS,
)
HOME = {"nationality": "DE", "residence_country": "DE", "request_country": "DE"}


class Row(NamedTuple):
    id: str
    facts: dict[str, Any]
    effect: Effect
    # (code, words the message must contain) for each reason that is not an allow.
    objections: tuple[tuple[ReasonCode, str], ...]
    now: datetime = NOW


MATRIX = [
    Row("all-home", {}, Effect.ALLOW, ()),
    # Each signal on its own decides: a deemed export looks at nationality, not location.
    Row(
        "nationality",
        {"nationality": "IR"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "nationality 'IR'"),),
    ),
    Row(
        "residence",
        {"residence_country": "CU"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "place of residence 'CU'"),),
    ),
    Row(
        "request",
        {"request_country": "KP"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "request location 'KP'"),),
    ),
    Row(
        "all-three",
        {"nationality": "IR", "residence_country": "CU", "request_country": "KP"},
        Effect.DENY,
        (
            (R.JURISDICTION_DENIED, "nationality 'IR'"),
            (R.JURISDICTION_DENIED, "place of residence 'CU'"),
            (R.JURISDICTION_DENIED, "request location 'KP'"),
        ),
    ),
    # Subdivisions: Crimea and Sevastopol are denied; Donetsk and Luhansk only in part: review.
    Row(
        "UA-43",
        {"residence_country": "UA", "residence_subdivision": "UA-43"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "'UA-43' (Autonomous Republic of Crimea"),),
    ),
    Row(
        "UA-40",
        {"residence_country": "UA", "residence_subdivision": "UA-40"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "'UA-40'"),),
    ),
    Row(
        "UA-14",
        {"residence_country": "UA", "residence_subdivision": "UA-14"},
        Effect.REVIEW,
        ((R.JURISDICTION_REVIEW, "covers only part of 'UA-14'"),),
    ),
    Row(
        "UA-09",
        {"residence_country": "UA", "residence_subdivision": "UA-09"},
        Effect.REVIEW,
        ((R.JURISDICTION_REVIEW, "'UA-09'"),),
    ),
    Row("UA-30", {"residence_country": "UA", "residence_subdivision": "UA-30"}, Effect.ALLOW, ()),
    Row(
        "UA-only",
        {"residence_country": "UA"},
        Effect.REVIEW,
        ((R.JURISDICTION_REVIEW, "not precise enough"),),
    ),
    # deny beats review
    Row(
        "deny-over-review",
        {"nationality": "IR", "residence_country": "UA", "residence_subdivision": "UA-14"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "nationality 'IR'"), (R.JURISDICTION_REVIEW, "'UA-14'")),
    ),
    # A signal the rule needs but the subject lacks: review, never a silent allow.
    Row(
        "no-request-country",
        {"request_country": None},
        Effect.REVIEW,
        ((R.SIGNAL_MISSING, "request location, which is not known"),),
    ),
    Row(
        "no-nationality",
        {"nationality": None},
        Effect.REVIEW,
        ((R.SIGNAL_MISSING, "nationality, which is not known"),),
    ),
    Row(
        "nothing-known",
        {"nationality": None, "residence_country": None, "request_country": None},
        Effect.REVIEW,
        (
            (R.SIGNAL_MISSING, "nationality"),
            (R.SIGNAL_MISSING, "place of residence"),
            (R.SIGNAL_MISSING, "request location"),
        ),
    ),
    Row(
        "missing-and-denied",
        {"nationality": None, "request_country": "IR"},
        Effect.DENY,
        ((R.SIGNAL_MISSING, "nationality"), (R.JURISDICTION_DENIED, "request location 'IR'")),
    ),
    Row(
        "not-a-code",
        {"nationality": "ZZ"},
        Effect.REVIEW,
        ((R.SIGNAL_INVALID, "'ZZ' is not an assigned"),),
    ),
    # Effective dates: Syria's entry ended on 2025-07-01 (exclusive); Crimea's began 2014-12-19.
    Row("SY-after-end", {"nationality": "SY"}, Effect.ALLOW, ()),
    Row(
        "SY-last-day",
        {"nationality": "SY"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "'SY' (Syria"),),
        datetime(2025, 6, 30, 23, 59, tzinfo=UTC),
    ),
    Row(
        "SY-end-day",
        {"nationality": "SY"},
        Effect.ALLOW,
        (),
        datetime(2025, 7, 1, 0, 0, tzinfo=UTC),
    ),
    Row(
        "UA-43-before",
        {"residence_country": "UA", "residence_subdivision": "UA-43"},
        Effect.ALLOW,
        (),
        datetime(2014, 12, 18, 12, 0, tzinfo=UTC),
    ),
    Row(
        "UA-43-from",
        {"residence_country": "UA", "residence_subdivision": "UA-43"},
        Effect.DENY,
        ((R.JURISDICTION_DENIED, "'UA-43'"),),
        datetime(2014, 12, 19, 0, 0, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize("row", MATRIX, ids=[row.id for row in MATRIX])
def test_matrix(row: Row) -> None:
    subject = Subject(user_id="u", **{**HOME, **row.facts})
    decision = evaluate(POLICY, "weights", subject, now=row.now, packs=PACKS)
    assert decision.effect is row.effect, decision.to_dict()
    objections = [r for r in decision.reasons if r.effect is not Effect.ALLOW]
    assert sorted(r.code for r in objections) == sorted(code for code, _ in row.objections)
    for code, words in row.objections:
        assert any(r.code is code and words in r.message for r in objections), (words, objections)
    for reason in objections:
        assert reason.message.endswith("."), reason.message
        assert reason.rule.startswith("tiers[weights].requires.jurisdiction")
    if row.effect is Effect.ALLOW:
        assert {r.code for r in decision.reasons} >= {R.JURISDICTION_ALLOWED, R.REQUIREMENTS_MET}
    ofac = PACKS.get("us-ofac-comprehensive")
    assert ofac is not None
    assert decision.packs_used == (("us-ofac-comprehensive", ofac.version, ofac.content_hash),)


def test_every_signal_is_exercised() -> None:
    named = {key for row in MATRIX for key in row.facts}
    assert named >= {"nationality", "residence_country", "residence_subdivision", "request_country"}
    assert {row.effect for row in MATRIX} == set(Effect)


@pytest.mark.parametrize(
    ("facts", "effect"),
    [
        ({"request_country": None}, Effect.ALLOW),  # skipped, not sent to review
        ({"request_country": "IR"}, Effect.ALLOW),  # not looked at either
        ({"request_country": None, "nationality": "IR"}, Effect.DENY),
        ({"request_country": None, "nationality": None}, Effect.REVIEW),
    ],
)
def test_unobserved_signals_are_skipped(facts: dict[str, Any], effect: Effect) -> None:
    """Between requests nobody's location is observed: re-evaluation skips that signal only."""
    subject = Subject(user_id="u", **{**HOME, **facts})
    unobserved = frozenset({Signal.REQUEST_COUNTRY})
    decision = evaluate(POLICY, "weights", subject, now=NOW, packs=PACKS, unobserved=unobserved)
    assert decision.effect is effect, decision.to_dict()
    assert not any("request location" in r.message for r in decision.reasons)
