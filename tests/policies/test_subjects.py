"""Subjects written as JSON (for `policy explain`): every field read, every problem listed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from policies import KycLevel, PolicyError, Subject, parse_subject


def test_every_field_is_read() -> None:
    subject = parse_subject(
        {
            "user_id": "u-7",
            "kyc_level": "institution",
            "kyc_expires_at": "2027-01-01T00:00:00Z",
            "sanctions_hit": False,
            "nationality": "de",
            "residence_country": "UA",
            "residence_subdivision": "ua-43",
            "document_country": "DE",
            "org_hq_country": "US",
            "request_country": "FR",
            "affiliation_org": "acme",
            "email": "ada@example.edu",
            "accepted_agreements": ["aup@2", "acme-research-aup@1"],
            "form": {"intended_use": "evals", "agree": True},
        }
    )
    assert subject == Subject(
        user_id="u-7",
        kyc_level=KycLevel.INSTITUTION,
        kyc_expires_at=datetime(2027, 1, 1, tzinfo=UTC),
        sanctions_hit=False,
        nationality="DE",
        residence_country="UA",
        residence_subdivision="UA-43",
        document_country="DE",
        org_hq_country="US",
        request_country="FR",
        affiliation_org="acme",
        email="ada@example.edu",
        accepted_agreements=frozenset({("aup", 2), ("acme-research-aup", 1)}),
        form={"intended_use": "evals", "agree": True},
    )


def test_an_empty_subject_knows_nothing() -> None:
    assert parse_subject({}) == Subject()


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        ([], "", "must be a mapping"),
        ({"shoe_size": 9}, "shoe_size", "unknown key"),
        ({"kyc_level": "gold"}, "kyc_level", "unknown KYC level 'gold'"),
        ({"kyc_expires_at": "2027-01-01T00:00:00"}, "kyc_expires_at", "no time zone"),
        ({"kyc_expires_at": "next year"}, "kyc_expires_at", "is not an ISO 8601 time"),
        ({"sanctions_hit": "no"}, "sanctions_hit", "must be true, false or null"),
        ({"nationality": "UK"}, "nationality", "'UK' is not an assigned ISO 3166-1"),
        ({"nationality": 49}, "nationality", "must be text"),
        ({"residence_subdivision": "UA"}, "residence_subdivision", "ISO 3166-2 subdivision"),
        ({"accepted_agreements": ["aup"]}, "accepted_agreements[0]", "id@version"),
        ({"accepted_agreements": "aup@1"}, "accepted_agreements", "must be a list"),
        ({"form": ["x"]}, "form", "mapping of field names"),
    ],
)
def test_problems(data: Any, path: str, words: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_subject(data)
    assert any(i.path == path and words in i.message for i in caught.value.issues), (
        caught.value.issues
    )


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_subject({"nationality": "XX", "kyc_level": "gold", "email": 3})
    assert sorted(i.path for i in caught.value.issues) == ["email", "kyc_level", "nationality"]
