"""Synthetic audit chains for the pure tests: rows as exported, and checkpoints over them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.audit.canonical import GENESIS_HASH, entry_hash, format_timestamp
from gateway.audit.exports import canonical_line
from gateway.audit.merkle import Frontier, leaf_hash
from gateway.audit.notes import Checkpoint, SigningKey, sign_checkpoint
from gateway.audit.offline import SignedCheckpoint, merge_checkpoints, open_checkpoint_files

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def body(seq: int, **changes: Any) -> dict[str, Any]:
    """An event body; payloads hold keys named like the row's own fields, on purpose."""
    fields = {
        "seq": seq,
        "occurred_at": format_timestamp(START + timedelta(microseconds=1001 * seq)),
        "action": "download:issue",
        "actor_id": seq % 5 or None,
        "org_id": 3,
        "subject_user_id": seq % 7 or None,
        "model_id": 9,
        "effect": "allow" if seq % 3 else None,
        "payload": {"entry_hash": "f" * 64, "seq": 1, "prev_hash": "x", "name": "Société"},
    }
    return {**fields, **changes}


def rehash(rows: list[dict[str, Any]], start: int = 0) -> list[dict[str, Any]]:
    """Recompute the links and hashes from `start` on, as a forger would."""
    prev = rows[start - 1]["entry_hash"] if start else GENESIS_HASH
    for row in rows[start:]:
        content = {k: v for k, v in row.items() if k not in ("prev_hash", "entry_hash")}
        row["prev_hash"], row["entry_hash"] = prev, entry_hash(prev, content)
        prev = row["entry_hash"]
    return rows


def chain(count: int) -> list[dict[str, Any]]:
    """`count` linked rows, seq 1..count."""
    return rehash([body(seq) for seq in range(1, count + 1)])


def lines(rows: list[dict[str, Any]]) -> list[bytes]:
    """The rows as canonical JSONL lines."""
    return [(canonical_line(row) + "\n").encode() for row in rows]


def note_at(rows: list[dict[str, Any]], size: int, key: SigningKey, minute: int = 0) -> str:
    """A signed checkpoint of the first `size` rows."""
    frontier = Frontier()
    for row in rows[:size]:
        frontier.append(leaf_hash(bytes.fromhex(row["entry_hash"])))
    head = rows[size - 1]["entry_hash"] if size else GENESIS_HASH
    moment = START + timedelta(minutes=minute or size)
    return sign_checkpoint(Checkpoint("test/audit", size, frontier.root(), head, moment), key)


def opened(key: SigningKey, *files: list[str]) -> list[SignedCheckpoint]:
    """Checkpoint files (lists of notes) opened and merged."""
    texts = [(f"file{n}", "".join(notes)) for n, notes in enumerate(files)]
    return merge_checkpoints(open_checkpoint_files(texts, [key.verifier()]))
