"""The hash-chained audit log: canonical encoding, appends and verification."""

from gateway.audit.chain import (
    GENESIS_HASH,
    AuditAction,
    AuditRecorder,
    ChainReport,
    canonical_json,
    entry_hash,
    event_body,
    verify_chain,
)

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
