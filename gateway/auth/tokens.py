"""API token format, hashing and scopes; tokens are stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

TOKEN_PREFIX = "alk_"  # noqa: S105 (the public prefix, not a secret)
_SECRET_BYTES = 32


class Scope(StrEnum):
    """What a token may be used for, grammar `resource:action`, kept sorted."""

    ACCESS_REQUEST = "access:request"
    AUDIT_READ = "audit:read"
    GRANTS_MANAGE = "grants:manage"
    KYC_RECORD = "kyc:record"
    MODELS_READ = "models:read"
    MODELS_WRITE = "models:write"
    POLICIES_WRITE = "policies:write"
    REQUESTS_REVIEW = "requests:review"
    TOKENS_MANAGE = "tokens:manage"


def new_token() -> str:
    """A fresh token: `alk_` plus 256 bits of randomness, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_SECRET_BYTES)


def token_digest(token: str) -> bytes:
    """The SHA-256 digest we store and look tokens up by (tokens are high-entropy)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def digests_match(stored: bytes, presented: bytes) -> bool:
    """Constant-time comparison of two digests."""
    return hmac.compare_digest(stored, presented)


def looks_like_token(value: str) -> bool:
    """Cheap shape check before any database work; never logs the value."""
    return value.startswith(TOKEN_PREFIX) and 20 <= len(value) <= 200
