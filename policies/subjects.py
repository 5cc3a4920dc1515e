"""Subjects written as JSON, for `airlock policy explain` and what-if questions."""

import re
from datetime import datetime

from policies._document import Reader, describe
from policies.engine import Subject
from policies.errors import PolicyError
from policies.iso3166 import is_country_code, is_subdivision_code
from policies.vocab import KycLevel

_AGREEMENT = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,99})@([1-9][0-9]{0,8})")
_COUNTRIES = ("nationality", "residence_country", "document_country", "org_hq_country")
_TEXTS = ("user_id", "affiliation_org", "email")
SUBJECT_KEYS = (
    "kyc_level",
    "kyc_expires_at",
    "kyc_verified_at",
    "sanctions_hit",
    *_COUNTRIES,
    "residence_subdivision",
    "request_country",
    *_TEXTS,
    "accepted_agreements",
    "form",
)


def parse_subject(data: object) -> Subject:
    """A Subject from JSON-shaped data; raise PolicyError listing every problem."""
    r = Reader(lines={})
    m = r.mapping(data, "", optional=SUBJECT_KEYS)
    fields: dict[str, object] = {
        "kyc_level": r.choice(KycLevel, m.get("kyc_level"), "kyc_level", "KYC level")
        or KycLevel.NONE,
        "kyc_expires_at": _instant(r, m.get("kyc_expires_at"), "kyc_expires_at"),
        "kyc_verified_at": _instant(r, m.get("kyc_verified_at"), "kyc_verified_at"),
        "sanctions_hit": _flag(r, m.get("sanctions_hit"), "sanctions_hit"),
        "residence_subdivision": _code(r, m.get("residence_subdivision"), "residence_subdivision"),
        "request_country": _code(r, m.get("request_country"), "request_country"),
        "accepted_agreements": _agreements(r, m.get("accepted_agreements")),
        "form": _form(r, m.get("form")),
    }
    fields |= {key: _code(r, m.get(key), key) for key in _COUNTRIES}
    fields |= {key: r.text(m.get(key), key) for key in _TEXTS}
    fields["user_id"] = fields["user_id"] or ""
    if r.issues:
        raise PolicyError(r.issues)
    return Subject(**fields)  # type: ignore[arg-type]


def _instant(r: Reader, value: object, path: str) -> datetime | None:
    text = r.text(value, path)
    if text is None:
        return None
    try:
        instant = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        r.error(path, f"{text!r} is not an ISO 8601 time such as 2027-01-01T00:00:00Z")
        return None
    if instant.tzinfo is None:
        r.error(path, f"{text!r} has no time zone; write it in UTC, e.g. 2027-01-01T00:00:00Z")
        return None
    return instant


def _flag(r: Reader, value: object, path: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    r.error(path, f"must be true, false or null, not {describe(value)}")
    return None


def _code(r: Reader, value: object, path: str) -> str | None:
    code = r.text(value, path)
    if code is None:
        return None
    code = code.strip().upper()
    subdivision = path == "residence_subdivision"
    if not (is_subdivision_code(code) if subdivision else is_country_code(code)):
        kind = (
            "an ISO 3166-2 subdivision code such as UA-43"
            if subdivision
            else ("an assigned ISO 3166-1 alpha-2 country code such as DE")
        )
        r.error(path, f"{code!r} is not {kind}")
        return None
    return code


def _agreements(r: Reader, value: object) -> frozenset[tuple[str, int]]:
    accepted = set()
    for here, item in r.items(value, "accepted_agreements"):
        text = r.text(item, here, _AGREEMENT, "an agreement written id@version, e.g. aup@2")
        if text is not None:
            ident, _, version = text.partition("@")
            accepted.add((ident, int(version)))
    return frozenset(accepted)


def _form(r: Reader, value: object) -> dict[str, object] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        r.error("form", f"must be a mapping of field names to values, not {describe(value)}")
        return None
    return {key: value[key] for key in value}
