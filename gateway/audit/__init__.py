"""The hash-chained audit log: canonical encoding, appends and verification.

The chain (which needs the database) loads on first use, so the pure modules (canonical,
merkle, notes, exports, offline) import without SQLAlchemy: the offline verifier opens no
database.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from gateway.audit.canonical import GENESIS_HASH, canonical_json, entry_hash

if TYPE_CHECKING:
    from gateway.audit.chain import (
        AuditAction,
        AuditRecorder,
        ChainReport,
        event_body,
        verify_chain,
    )

_FROM_CHAIN = {"AuditAction", "AuditRecorder", "ChainReport", "event_body", "verify_chain"}

__all__ = [
    "GENESIS_HASH",
    "AuditAction",
    "AuditRecorder",
    "ChainReport",
    "canonical_json",
    "entry_hash",
    "event_body",
    "verify_chain",
]


def __getattr__(name: str) -> Any:
    """Load the database-backed chain names on first use."""
    if name in _FROM_CHAIN:
        return getattr(import_module("gateway.audit.chain"), name)
    raise AttributeError(f"module 'gateway.audit' has no attribute {name!r}")
