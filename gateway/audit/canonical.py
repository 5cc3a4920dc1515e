"""Canonical JSON and the entry hash: pure (no database), shared by the chain and the verifier."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

DOMAIN = b"airlock-audit-v1\x00"
GENESIS_HASH = "0" * 64
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

BODY_FIELDS = (
    "seq",
    "occurred_at",
    "action",
    "actor_id",
    "org_id",
    "subject_user_id",
    "model_id",
    "effect",
    "payload",
)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, UTF-8, no insignificant whitespace; floats are refused, not rounded."""
    return json.dumps(
        _canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # most values: no checks
        return value
    if kind is dict:
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, float):
        raise TypeError("floats are not allowed in audit events; use integers or strings")
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def format_timestamp(moment: datetime) -> str:
    """Fixed-format UTC with microseconds, e.g. 2026-01-02T03:04:05.000006Z."""
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def body_of(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The hashed fields of an event row, its timestamp in the canonical format."""
    body = {name: fields[name] for name in BODY_FIELDS}
    body["occurred_at"] = format_timestamp(body["occurred_at"])
    return body


def entry_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """SHA-256(domain || prev_hash || SHA-256(canonical_json(body))), hex."""
    inner = hashlib.sha256(canonical_json(body)).digest()
    return hashlib.sha256(DOMAIN + bytes.fromhex(prev_hash) + inner).hexdigest()
