"""Audit export files: events (JSON lines or CSV), checkpoint notes, the manifest, proofs.

Pure: the exporter writes these from database rows, the offline verifier reads them back.

An export of events `first..last` stays verifiable without the events before it: the manifest's
anchor carries the Merkle frontier of the tree of the `first - 1` earlier events (one hash per
perfect subtree) and the entry hashes of the events after `last` up to the covering checkpoint
(the smallest one at or past `last`). The verifier extends that frontier with the exported
events' leaves, then the suffix hashes, and compares the root at every checkpoint size it
reaches with the signed one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.audit.canonical import BODY_FIELDS
from gateway.audit.merkle import Frontier
from gateway.audit.notes import SIGNATURE_PREFIX

EXPORT_FORMAT = "airlock-audit-export-v1"
PROOF_FORMAT = "airlock-audit-proof-v1"
EVENT_COLUMNS = (*BODY_FIELDS, "prev_hash", "entry_hash")
COLUMN_SET = frozenset(EVENT_COLUMNS)
EVENT_FORMAT_CSV = "csv"
EVENT_FILES = {"jsonl": "events.jsonl", "csv": "events.csv"}
CHECKPOINTS_FILE = "checkpoints.notes"
MANIFEST_FILE = "manifest.json"
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
HEX64 = re.compile(r"[0-9a-f]{64}")
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
_INT_COLUMNS = ("seq", "actor_id", "org_id", "subject_user_id", "model_id")
_NULLABLE = ("actor_id", "org_id", "subject_user_id", "model_id", "effect")


class ExportFormatError(ValueError):
    """An export file that does not parse: its line and what is wrong."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line, self.reason = line, reason


def _no_float(text: str) -> Any:
    raise ValueError(f"a number with a fraction or exponent ({text}): floats are not allowed")


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("an object repeats a key: a reader could see either value")
    return found


STRICT_JSON = json.JSONDecoder(
    parse_float=_no_float, parse_constant=_no_constant, object_pairs_hook=_unique
)


def canonical_line(row: Mapping[str, Any]) -> str:
    """One JSONL event: the row's fields as canonical JSON (sorted keys, no spaces)."""
    return json.dumps(
        {name: row[name] for name in EVENT_COLUMNS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass
class FileDigest:
    """Rows written to a file and its SHA-256, computed while writing."""

    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    sha256: str = ""


class _HashingWriter:
    """A text sink that hashes the UTF-8 bytes it writes."""

    def __init__(self, out: TextIO) -> None:
        self.out, self.digest = out, hashlib.sha256()

    def write(self, text: str) -> int:
        self.digest.update(text.encode("utf-8"))
        return self.out.write(text)


def write_events(rows: Iterable[Mapping[str, Any]], path: Path, fmt: str) -> FileDigest:
    """Write event rows (canonical timestamps, payload dicts) as JSONL or CSV."""
    summary = FileDigest()
    with path.open("w", encoding="utf-8", newline="") as out:
        sink = _HashingWriter(out)
        writer = csv.writer(sink, lineterminator="\n") if fmt == "csv" else None
        if writer is not None:
            writer.writerow(EVENT_COLUMNS)
        for row in rows:
            if writer is None:
                sink.write(canonical_line(row) + "\n")
            else:
                writer.writerow(_csv_cells(row))
            summary.first_seq = summary.first_seq or row["seq"]
            summary.last_seq, summary.rows = row["seq"], summary.rows + 1
    summary.sha256 = sink.digest.hexdigest()
    return summary


def _csv_cells(row: Mapping[str, Any]) -> list[str]:
    cells = []
    for name in EVENT_COLUMNS:
        value = row[name]
        if name == "effect" and value == "":
            raise ValueError("an empty effect cannot be told from none in CSV: export JSONL")
        if name == "payload":
            value = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        cells.append("" if value is None else str(value))
    return cells


def read_events(path: Path, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Event rows from an export file, strictly parsed; ExportFormatError names the line."""
    fmt = fmt or event_format(path)
    with path.open(encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            yield from _csv_rows(handle)
        else:
            yield from _jsonl_rows(handle)


def event_format(path: Path) -> str:
    """`csv` or `jsonl`, from the file name."""
    return "csv" if path.suffix.lower() == ".csv" else "jsonl"


def _jsonl_rows(handle: TextIO) -> Iterator[dict[str, Any]]:
    decode = STRICT_JSON.decode
    for number, line in enumerate(handle, start=1):
        try:
            row = decode(line)
        except ValueError as exc:
            raise ExportFormatError(number, f"not valid JSON: {exc}") from None
        if type(row) is not dict or row.keys() != COLUMN_SET:
            raise ExportFormatError(number, f"an event holds exactly {', '.join(EVENT_COLUMNS)}")
        yield row


def _csv_rows(handle: TextIO) -> Iterator[dict[str, Any]]:
    reader = csv.reader(handle, strict=True)
    try:
        header = next(reader, None)
        if header is None or tuple(header) != EVENT_COLUMNS:
            raise ExportFormatError(1, f"the CSV header is not {','.join(EVENT_COLUMNS)}")
        for cells in reader:
            yield _csv_row(reader.line_num, cells)
    except csv.Error as exc:
        raise ExportFormatError(reader.line_num, f"not valid CSV: {exc}") from None


def _csv_row(number: int, cells: list[str]) -> dict[str, Any]:
    if len(cells) != len(EVENT_COLUMNS):
        raise ExportFormatError(number, f"a CSV event has {len(EVENT_COLUMNS)} cells")
    row: dict[str, Any] = dict(zip(EVENT_COLUMNS, cells, strict=True))
    for name in _NULLABLE:
        if row[name] == "":
            row[name] = None
    for name in _INT_COLUMNS:
        if row[name] is not None:
            if not _INTEGER.fullmatch(row[name]):
                raise ExportFormatError(number, f"{name} is not an integer: {row[name]!r}")
            row[name] = int(row[name])
    try:
        row["payload"] = STRICT_JSON.decode(row["payload"])
    except ValueError as exc:
        raise ExportFormatError(number, f"the payload is not valid JSON: {exc}") from None
    return row


def split_notes(text: str) -> list[str]:
    """Signed notes concatenated in one file, each ending after its signature lines."""
    notes: list[str] = []
    current: list[str] = []
    in_signatures = False
    for line in re.findall(r"[^\n]*\n|[^\n]+$", text):  # only \n ends a line in a note
        if in_signatures and not line.startswith(SIGNATURE_PREFIX):
            notes.append("".join(current))
            current, in_signatures = [], False
        if not current and line == "\n":
            continue  # blank lines between notes
        current.append(line)
        if line == "\n":
            in_signatures = True
    if current:
        notes.append("".join(current))
    return notes


def write_checkpoints(notes: Iterable[str], path: Path) -> FileDigest:
    """Concatenate signed notes into one file."""
    summary, digest = FileDigest(), hashlib.sha256()
    with path.open("w", encoding="utf-8", newline="") as out:
        for note in notes:
            out.write(note)
            digest.update(note.encode("utf-8"))
            summary.rows += 1
    summary.sha256 = digest.hexdigest()
    return summary


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Anchor:
    """What a sub-range export needs from outside it: the tree before it and the hashes after."""

    prefix: Frontier = field(default_factory=Frontier)
    suffix: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The manifest's `anchor` object."""
        return {"prefix": self.prefix.to_json(), "suffix": list(self.suffix)}

    @classmethod
    def from_json(cls, value: Any) -> Anchor:
        """Parse a manifest's `anchor`, refusing malformed hashes."""
        if not isinstance(value, dict) or not isinstance(value.get("suffix"), list):
            raise ValueError("the manifest's anchor holds a prefix frontier and a suffix list")
        suffix = value["suffix"]
        if not all(isinstance(h, str) and HEX64.fullmatch(h) for h in suffix):
            raise ValueError("the anchor's suffix holds 64-digit lowercase hex entry hashes")
        return cls(Frontier.from_json(value.get("prefix")), suffix)


def proof_document(
    row: Mapping[str, Any], size: int, proof: Iterable[bytes], note: str
) -> dict[str, Any]:
    """An inclusion proof file: the event, its place, the audit path and the signed note."""
    return {
        "format": PROOF_FORMAT,
        "event": {name: row[name] for name in EVENT_COLUMNS},
        "index": row["seq"] - 1,
        "tree_size": size,
        "proof": [node.hex() for node in proof],
        "checkpoint": note,
    }


def dump_json(value: Any, path: Path) -> None:
    """Write a JSON document, indented, with a final newline."""
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
