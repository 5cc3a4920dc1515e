"""Facets of audit events: the tier, reason codes and countries a payload records, indexed.

The payload is hashed JSON whose shape varies by action; a database trigger (migration 0008)
lifts the few values compliance queries filter and count by into `audit_event_facets` rows when
an event is inserted, so those queries use an index on SQLite and PostgreSQL alike and the
append sends no extra statement. Facets are derived data, outside the chain.
"""

from __future__ import annotations

from enum import StrEnum

from policies.vocab import ReasonCode


class FacetName(StrEnum):
    """What a facet records, kept sorted."""

    COUNTRY = "country"  # payload request_country, nationality, residence_country, document_country
    OBJECTION = "objection"  # a reason code whose own effect is deny or review
    REASON = "reason"  # the code of any reason in payload.reasons or payload.decision.reasons
    TIER = "tier"  # payload.tier or payload.decision.tier


class RefusalCode(StrEnum):
    """The gateway's own refusal codes (downloads, inference, sign-in), beside the engine's."""

    CONCURRENT_DOWNLOADS_EXCEEDED = "concurrent_downloads_exceeded"
    CONCURRENT_REQUESTS_EXCEEDED = "concurrent_requests_exceeded"
    GRANT_EXPIRED = "grant_expired"
    GRANT_REVOKED = "grant_revoked"
    GRANT_SUSPENDED = "grant_suspended"
    LOGIN_LINK_EXPIRED = "login_link_expired"
    LOGIN_LINK_USED = "login_link_used"
    NO_GRANT = "no_grant"
    OIDC_EMAIL_UNVERIFIED = "oidc_email_unverified"
    OIDC_UNKNOWN_ACCOUNT = "oidc_unknown_account"
    RATE_LIMITED = "rate_limited"
    RATE_LIMITER_UNAVAILABLE = "rate_limiter_unavailable"
    REVISION_NOT_VETTED = "revision_not_vetted"
    TOKEN_QUOTA_EXHAUSTED = "token_quota_exhausted"  # noqa: S105
    TOKEN_SCOPE_MISSING = "token_scope_missing"  # noqa: S105 (a reason code, not a secret)


# Every reason code an audit event can carry: what the reason filter accepts.
REASON_CODES = frozenset(str(c) for c in ReasonCode) | frozenset(str(c) for c in RefusalCode)
