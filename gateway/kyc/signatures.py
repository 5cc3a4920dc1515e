"""Webhook signature checks: HMAC-SHA256 over the raw body, with rotation and a time window."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from gateway.errors import WebhookRejected

TOLERANCE_SECONDS = 300
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def header(headers: Mapping[str, str], name: str) -> str:
    """The value of a required signature header (`headers` keyed in lower case), else a
    rejection naming it."""
    value = headers.get(name.lower())
    if not value:
        raise WebhookRejected(f"the {name} header is missing", reason="missing_signature")
    return value


def hex_hmac(secret: str, message: bytes) -> str:
    """Hex HMAC-SHA256 of `message` under `secret`."""
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def matches_any(secrets: Sequence[str], message: bytes, candidates: Sequence[str]) -> bool:
    """Whether a candidate signature is the HMAC of `message` under any active secret."""
    expected = [hex_hmac(s, message).encode("ascii") for s in secrets]
    # compare_digest refuses non-ASCII str: compare bytes, after a shape check that leaks nothing
    # about the secret (a 64-digit hex string is what every provider sends).
    offered = [c.lower().encode("ascii") for c in candidates if _HEX.fullmatch(c)]
    return any(hmac.compare_digest(e, c) for e in expected for c in offered)


def verify_timestamped(
    value: str, raw_body: bytes, secrets: Sequence[str], now: datetime, *, name: str
) -> None:
    """Check `t=<unix>,v1=<hex>[,v1=...]` groups (space-separated during a Persona rotation):
    one group in the time window must sign `t + "." + raw_body` under an active secret."""
    groups = [_parse_group(g, name) for g in value.split()] or [_parse_group("", name)]
    fresh = [(t, sigs) for t, sigs in groups if abs(now.timestamp() - t) <= TOLERANCE_SECONDS]
    if not fresh:
        raise WebhookRejected(
            f"the {name} timestamp is outside the {TOLERANCE_SECONDS} s tolerance",
            reason="stale_timestamp",
        )
    for t, sigs in fresh:
        if matches_any(secrets, str(t).encode("ascii") + b"." + raw_body, sigs):
            return
    raise WebhookRejected(f"the {name} signature does not match", reason="signature_mismatch")


def verify_plain(value: str, raw_body: bytes, secrets: Sequence[str], *, name: str) -> None:
    """Check a bare hex HMAC-SHA256 of the raw body (no timestamp is signed)."""
    if not matches_any(secrets, raw_body, [value.strip()]):
        raise WebhookRejected(f"the {name} signature does not match", reason="signature_mismatch")


def _parse_group(group: str, name: str) -> tuple[int, list[str]]:
    """One `t=...,v1=...` group; other schemes (v0, ...) are ignored as the providers specify."""
    timestamp, signatures = None, []
    for part in group.split(","):
        key, _, val = part.partition("=")
        if key == "t" and val.isdigit() and len(val) <= 12:
            timestamp = int(val)
        elif key == "v1" and val:
            signatures.append(val)
    if timestamp is None or not signatures:
        raise WebhookRejected(
            f"the {name} header is malformed (expected t=<unix>,v1=<hex>)",
            reason="malformed_signature",
        )
    return timestamp, signatures
