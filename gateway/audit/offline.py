"""The offline verifier: exported events and checkpoint notes, checked with public keys only.

It opens no database and no network connection: it reads files and recomputes every entry
hash, every link, the sequence, every checkpoint's signature, root and head hash.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.audit.canonical import BODY_FIELDS, DOMAIN, GENESIS_HASH
from gateway.audit.exports import (
    COLUMN_SET,
    EVENT_COLUMNS,
    EVENT_FORMAT_CSV,
    HEX64,
    PROOF_FORMAT,
    STRICT_JSON,
    TIMESTAMP,
    Anchor,
    ExportFormatError,
    event_format,
    file_sha256,
    read_events,
    split_notes,
)
from gateway.audit.merkle import verify_inclusion
from gateway.audit.notes import Checkpoint, NoteError, VerifierKey, open_checkpoint

_sha256 = hashlib.sha256
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_OPTIONAL_INT = ("actor_id", "org_id", "subject_user_id", "model_id")


@dataclass
class OfflineReport:
    """The verdict: ok, what was checked, the first bad sequence number and the problem."""

    ok: bool = True
    events: int = 0
    checkpoints: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    anchored_to: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def fail(self, seq: int | None, problem: str) -> OfflineReport:
        """Record the first failure and return the report."""
        if self.ok:
            self.ok, self.first_bad_seq, self.problem = False, seq, problem
        return self


class VerificationFailed(Exception):
    """Stops verification at the first bad sequence number."""

    def __init__(self, seq: int | None, problem: str) -> None:
        super().__init__(problem)
        self.seq, self.problem = seq, problem


def read_verifier_keys(paths: Iterable[Path]) -> list[VerifierKey]:
    """Verifier keys, one per line (current and retired); `#` starts a comment."""
    keys = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                keys.append(VerifierKey.from_text(line))
    return keys


@dataclass(frozen=True)
class SignedCheckpoint:
    """An opened checkpoint and where it came from."""

    checkpoint: Checkpoint
    source: str


def open_checkpoint_files(
    files: Sequence[tuple[str, str]], verifiers: Sequence[VerifierKey]
) -> list[list[SignedCheckpoint]]:
    """Open every note of each (label, text) file; raise on the first bad one."""
    opened = []
    for label, text in files:
        found = []
        for number, note in enumerate(split_notes(text), start=1):
            try:
                checkpoint = open_checkpoint(note, verifiers)
            except NoteError as exc:
                raise VerificationFailed(
                    None, f"checkpoint {number} of {label}: {exc.reason}"
                ) from None
            found.append(SignedCheckpoint(checkpoint, f"checkpoint {number} of {label}"))
        opened.append(found)
    return opened


def merge_checkpoints(
    files: Sequence[Sequence[SignedCheckpoint]], *, upto: int | None = None
) -> list[SignedCheckpoint]:
    """One list by size: each file only grows, the files agree, none lacks a later one (up to
    size `upto` for an export that stops before the log's end).

    Times are not compared across sizes: pruning signs a checkpoint at its cut after later ones.
    """
    by_size: dict[int, SignedCheckpoint] = {}
    for found in files:
        _check_growth(found)
        for item in found:
            _agree(by_size.setdefault(item.checkpoint.size, item), item)
    merged = [by_size[size] for size in sorted(by_size)]
    _check_origins(merged)
    compared = [c for c in merged if upto is None or c.checkpoint.size <= upto]
    for found in files:
        _check_complete(found, compared)
    return merged


def _check_growth(found: Sequence[SignedCheckpoint]) -> None:
    for before, after in itertools.pairwise(found):
        if after.checkpoint.size < before.checkpoint.size:
            raise VerificationFailed(
                after.checkpoint.size + 1,
                f"{after.source} (size {after.checkpoint.size}) follows a checkpoint of size "
                f"{before.checkpoint.size}: checkpoints only grow (rolled back)",
            )


def _agree(first: SignedCheckpoint, other: SignedCheckpoint) -> None:
    a, b = first.checkpoint, other.checkpoint
    if (a.root, a.head_hash) != (b.root, b.head_hash):
        raise VerificationFailed(
            a.size,
            f"{first.source} and {other.source} both sign size {a.size} with different "
            "roots or head hashes: the log was forked",
        )


def _check_origins(merged: Sequence[SignedCheckpoint]) -> None:
    origins = {item.checkpoint.origin for item in merged}
    if len(origins) > 1:
        raise VerificationFailed(None, f"checkpoints of several logs: {sorted(origins)}")


def _check_complete(found: Sequence[SignedCheckpoint], merged: Sequence[SignedCheckpoint]) -> None:
    latest = found[-1].checkpoint.size if found else 0
    beyond = [item for item in merged if item.checkpoint.size > latest]
    if beyond:
        label = found[-1].source.partition(" of ")[2] if found else "a checkpoints file"
        raise VerificationFailed(
            latest + 1,
            f"{beyond[0].source} signs size {beyond[0].checkpoint.size} but {label} ends at "
            f"size {latest}: its recent checkpoints were dropped (rolled back)",
        )


class _Walk:
    """The recomputation: a frontier, the last entry hash, and the checkpoints still ahead."""

    def __init__(self, anchor: Anchor, checkpoints: Sequence[SignedCheckpoint]) -> None:
        self.frontier = anchor.prefix.copy()
        self.ahead = [c for c in checkpoints if c.checkpoint.size >= self.frontier.size]
        self.ahead.reverse()
        self.matched = 0
        self.checked = 0

    @property
    def position(self) -> int:
        """How many leaves the recomputed tree holds."""
        return self.frontier.size

    def reach(self, size: int, head: str | None) -> None:
        """Compare every checkpoint of this size with the recomputed root and head."""
        while self.ahead and self.ahead[-1].checkpoint.size == size:
            item = self.ahead.pop()
            self._compare(item, head)

    def _compare(self, item: SignedCheckpoint, head: str | None) -> None:
        cp = item.checkpoint
        if self.frontier.root() != cp.root or (head is not None and head != cp.head_hash):
            what = "root" if self.frontier.root() != cp.root else "head hash"
            raise VerificationFailed(
                self.matched + 1,
                f"the events up to seq {cp.size} do not give the {what} that {item.source} "
                f"signs: an event in seq {self.matched + 1}..{cp.size} was rewritten "
                "(and the chain recomputed)",
            )
        self.matched, self.checked = cp.size, self.checked + 1


def verify_lines(
    lines: Iterable[bytes],
    checkpoints: Sequence[SignedCheckpoint] = (),
    *,
    anchor: Anchor | None = None,
    complete: bool = True,
) -> OfflineReport:
    """Verify JSONL event lines (bytes) against signed checkpoints; `complete`: they reach
    the log's end, so a checkpoint past them means a truncated tail."""
    return _verify(lines, _check_line, checkpoints, anchor, complete)


def verify_rows(
    rows: Iterable[dict[str, Any]],
    checkpoints: Sequence[SignedCheckpoint] = (),
    *,
    anchor: Anchor | None = None,
    complete: bool = True,
) -> OfflineReport:
    """Verify parsed event rows (as `read_events` yields them) against signed checkpoints."""
    return _verify(rows, _check_row, checkpoints, anchor, complete)


# check(item, line number, expected seq, previous entry hash, fast path allowed) -> entry hash
Check = Callable[[Any, int, int, str | None, bool], str]


def _verify(
    entries: Iterable[Any],
    check: Check,
    checkpoints: Sequence[SignedCheckpoint],
    anchor: Anchor | None,
    complete: bool,
) -> OfflineReport:
    anchor = anchor or Anchor()
    report = OfflineReport(first_seq=anchor.prefix.size + 1)
    walk = _Walk(anchor, checkpoints)
    try:
        walk.reach(walk.frontier.size, None)
        last = _walk_entries(entries, check, walk, report)
        _walk_suffix(anchor.suffix, walk, last)
        _after_end(walk, report, complete)
    except VerificationFailed as failure:
        report.fail(failure.seq, failure.problem)
    except ExportFormatError as exc:
        report.fail(walk.position + 1, str(exc))
    report.checkpoints, report.anchored_to = walk.checked, walk.matched
    _describe(report, anchor, checkpoints)
    return report


def _walk_entries(
    entries: Iterable[Any], check: Check, walk: _Walk, report: OfflineReport
) -> str | None:
    """The hot loop: check each event's link and hash, append its leaf, compare checkpoints."""
    frontier, sha256, fromhex = walk.frontier, _sha256, bytes.fromhex
    expected = frontier.size + 1
    prev = GENESIS_HASH if expected == 1 else None
    fast_until = walk.ahead[0].checkpoint.size if walk.ahead else 0
    next_size = walk.ahead[-1].checkpoint.size if walk.ahead else 0
    try:
        for number, item in enumerate(entries, start=1):
            prev = check(item, number, expected, prev, expected <= fast_until)
            frontier.append(sha256(b"\x00" + fromhex(prev)).digest())
            if expected == next_size:
                walk.reach(expected, prev)
                next_size = walk.ahead[-1].checkpoint.size if walk.ahead else 0
            expected += 1
    finally:
        report.events = expected - (report.first_seq or 1)
        report.last_seq = expected - 1 if report.events else None
    return prev


def _check_line(line: bytes, number: int, expected: int, prev: str | None, fast: bool) -> str:
    """The fast path for an anchored canonical line, else a strict parse that names the fault.

    Cutting a canonical line's entry_hash and prev_hash fields out leaves exactly the canonical
    body the recorder hashed, so a matching hash proves those bytes without parsing them.
    Lines past the last checkpoint are always parsed, so every accepted line is valid JSON.
    """
    entry = _fast(line, expected, prev) if fast else None
    return entry or _slow(_parse(number, line), expected, prev)


def _check_row(row: dict[str, Any], number: int, expected: int, prev: str | None, _: bool) -> str:
    return _slow(row, expected, prev)


def _fast(line: bytes, expected: int, prev: str | None) -> str | None:
    """The entry hash of a canonical line that holds, or None to take the slow path.

    The checks pin both hash fields to their top-level places: raw quotes cannot occur inside
    JSON strings, the first `,"payload":{` is the top-level one, and after prev_hash only seq
    and subject_user_id (no braces) may follow.
    """
    i = line.find(b',"entry_hash":"')
    j = line.rfind(b',"prev_hash":"')
    if (
        i < 0
        or j < i + 80
        or line[i + 79 : i + 92] != b'","model_id":'
        or line.find(b',"payload":{') < i
        or line[j + 78 : j + 86] != b'","seq":'
        or line.count(b"}", j) != 1
        or line[j + 86 : line.find(b",", j + 86)] != b"%d" % expected
    ):
        return None
    link, entry = line[j + 14 : j + 78].decode(), line[i + 15 : i + 79].decode()
    if link != prev and (prev is not None or link != link.lower()):
        return None
    try:
        inner = _sha256(line[:i] + line[i + 80 : j] + line[j + 79 :].rstrip(b"\n")).digest()
        digest = _sha256(DOMAIN + bytes.fromhex(link) + inner).hexdigest()
    except ValueError:
        return None
    return entry if digest == entry else None


def _parse(number: int, line: bytes | None) -> dict[str, Any]:
    try:
        row = STRICT_JSON.decode(line.decode("utf-8") if line is not None else "")
    except ValueError as exc:
        raise ExportFormatError(number, f"not valid JSON: {exc}") from None
    if type(row) is not dict or row.keys() != COLUMN_SET:
        raise ExportFormatError(number, f"an event holds exactly {', '.join(EVENT_COLUMNS)}")
    return row


def _slow(row: dict[str, Any], expected: int, prev: str | None) -> str:
    """Check one parsed event field by field; return its entry hash or raise naming why."""
    if type(row["seq"]) is not int or row["seq"] != expected:
        raise VerificationFailed(expected, _sequence_problem(expected, row["seq"]))
    link, entry = row["prev_hash"], row["entry_hash"]
    if prev is not None and link != prev:
        raise VerificationFailed(
            expected,
            "prev_hash does not link to the previous event (deleted, inserted or reordered)",
        )
    if type(link) is not str or not HEX64.fullmatch(link):
        raise VerificationFailed(expected, "prev_hash is not 64 lowercase hex digits")
    body = {name: row[name] for name in BODY_FIELDS}
    _check_types(body, expected)
    try:
        inner = _sha256(_dumps(body).encode("utf-8")).digest()
    except ValueError:
        raise VerificationFailed(expected, "the event holds text that is not UTF-8") from None
    if _sha256(DOMAIN + bytes.fromhex(link) + inner).hexdigest() != entry:
        raise VerificationFailed(expected, "entry_hash does not match the event's content (edited)")
    return str(entry)


def _sequence_problem(expected: int, found: Any) -> str:
    if type(found) is not int:
        return f"expected sequence {expected}, found {found!r}: not an integer"
    kind = "missing" if found > expected else "duplicated or out of order"
    return f"expected sequence {expected}, found {found}: event {kind}"


def _check_types(row: dict[str, Any], seq: int) -> None:
    """Canonical values: a fixed-format UTC timestamp, integers or null ids, hex links."""
    if type(row["occurred_at"]) is not str or not TIMESTAMP.fullmatch(row["occurred_at"]):
        raise VerificationFailed(seq, "occurred_at is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    for name in _OPTIONAL_INT:
        value = row[name]
        if value is not None and type(value) is not int:
            raise VerificationFailed(seq, f"{name} is {value!r}, not an integer or null")
    if type(row["action"]) is not str or type(row["payload"]) is not dict:
        raise VerificationFailed(seq, "action is not a string or payload not an object")
    if row["effect"] is not None and type(row["effect"]) is not str:
        raise VerificationFailed(seq, "effect is not a string or null")


def _walk_suffix(suffix: Sequence[str], walk: _Walk, prev: str | None) -> None:
    """Extend the tree with the entry hashes after the export, up to its covering checkpoint."""
    for entry in suffix:
        walk.frontier.append(_sha256(b"\x00" + bytes.fromhex(entry)).digest())
        walk.reach(walk.frontier.size, entry)


def _after_end(walk: _Walk, report: OfflineReport, complete: bool) -> None:
    if not walk.ahead or not complete:
        return
    item, end = walk.ahead[-1], walk.frontier.size
    raise VerificationFailed(
        end + 1,
        f"{item.source} signs {item.checkpoint.size} events but the export ends at seq {end}: "
        f"events after seq {end} were removed (truncated)",
    )


def _describe(report: OfflineReport, anchor: Anchor, checkpoints: Sequence[Any]) -> None:
    if not report.ok:
        return
    before = sum(1 for c in checkpoints if c.checkpoint.size < anchor.prefix.size)
    if before:
        report.notes.append(
            f"{before} checkpoint(s) before seq {report.first_seq}: signatures checked, roots "
            "not (their events are not in this export)"
        )
    last = report.last_seq or anchor.prefix.size
    if not checkpoints:
        report.notes.append("no checkpoint: the chain is unanchored (hashes and links only)")
    elif report.anchored_to < last:
        report.notes.append(
            f"events {report.anchored_to + 1}..{last} come after the last checkpoint: their "
            "links hold, but a truncation there could not be detected"
        )


def verify_files(
    events: Path,
    checkpoint_files: Sequence[Path],
    verifiers: Sequence[VerifierKey],
    *,
    manifest: Path | None = None,
) -> OfflineReport:
    """Verify an export: the events file, one or more checkpoints files, the public keys."""
    try:
        anchor, upto = _read_manifest(manifest, events)
        texts = [
            (_label(path, checkpoint_files), path.read_text("utf-8")) for path in checkpoint_files
        ]
        merged = merge_checkpoints(open_checkpoint_files(texts, verifiers), upto=upto)
    except VerificationFailed as failure:
        return OfflineReport().fail(failure.seq, failure.problem)
    except (OSError, ValueError) as exc:
        return OfflineReport().fail(None, f"cannot read the export: {exc}")
    complete = upto is None
    try:
        if event_format(events) == EVENT_FORMAT_CSV:
            return verify_rows(read_events(events), merged, anchor=anchor, complete=complete)
        with events.open("rb") as lines:
            return verify_lines(lines, merged, anchor=anchor, complete=complete)
    except OSError as exc:
        return OfflineReport().fail(None, f"cannot read the events: {exc}")


def _label(path: Path, paths: Sequence[Path]) -> str:
    """A file's name, or its whole path when another file given has the same name."""
    return path.name if [p.name for p in paths].count(path.name) == 1 else str(path)


def _read_manifest(manifest: Path | None, events: Path) -> tuple[Anchor, int | None]:
    """The anchor, and where the export's tree ends if it stops before the log's end (None:
    it reaches the end; no manifest: the events start at seq 1 and reach the end)."""
    if manifest is None:
        return Anchor(), None
    document = STRICT_JSON.decode(manifest.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("events", {}), dict):
        raise ValueError(f"{manifest.name} is not an export manifest")
    listed = document.get("events", {})
    if listed.get("sha256") and listed["sha256"] != file_sha256(events):
        raise VerificationFailed(
            None, f"{events.name} is not the file the manifest lists (SHA-256 differs)"
        )
    anchor = Anchor.from_json(document.get("anchor"))
    if document.get("range", {}).get("until") is None:
        return anchor, None
    return anchor, anchor.prefix.size + int(listed.get("rows", 0)) + len(anchor.suffix)


@dataclass(frozen=True)
class ProofReport:
    """Whether an inclusion proof holds, and for which event and checkpoint."""

    ok: bool
    seq: int | None
    tree_size: int | None
    problem: str | None = None


def verify_proof(document: Any, verifiers: Sequence[VerifierKey]) -> ProofReport:
    """Check an inclusion proof file: the note's signature, the event's hash, the audit path."""
    try:
        return _verify_proof(document, verifiers)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        return ProofReport(False, None, None, f"not an inclusion proof: {exc!r}")


def _verify_proof(document: Any, verifiers: Sequence[VerifierKey]) -> ProofReport:
    if document.get("format") != PROOF_FORMAT:
        raise ValueError(f"the format is not {PROOF_FORMAT}")
    row, size = document["event"], document["tree_size"]
    seq = row["seq"]
    try:
        checkpoint = open_checkpoint(document["checkpoint"], verifiers)
    except NoteError as exc:
        return ProofReport(False, seq, size, f"the checkpoint does not open: {exc.reason}")
    if checkpoint.size != size or document["index"] != seq - 1:
        return ProofReport(False, seq, size, "the proof's place does not match the checkpoint")
    if type(row) is not dict or row.keys() != COLUMN_SET:
        return ProofReport(False, seq, size, f"an event holds exactly {', '.join(EVENT_COLUMNS)}")
    try:
        entry = _slow(dict(row), seq, None)
    except VerificationFailed as failure:
        return ProofReport(False, seq, size, failure.problem)
    leaf = _sha256(b"\x00" + bytes.fromhex(entry)).digest()
    path = [bytes.fromhex(node) for node in document["proof"]]
    if not verify_inclusion(leaf, seq - 1, size, path, checkpoint.root):
        return ProofReport(False, seq, size, "the audit path does not lead to the signed root")
    return ProofReport(True, seq, size)


__all__ = [
    "OfflineReport",
    "ProofReport",
    "SignedCheckpoint",
    "merge_checkpoints",
    "open_checkpoint_files",
    "read_verifier_keys",
    "verify_files",
    "verify_lines",
    "verify_proof",
    "verify_rows",
]
