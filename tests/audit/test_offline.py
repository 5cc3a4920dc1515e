"""The offline verifier over synthetic chains: fast and strict paths, sub-range anchors,
checkpoint files compared, inclusion proofs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.audit.exports import (
    Anchor,
    proof_document,
    split_notes,
    write_checkpoints,
    write_events,
)
from gateway.audit.merkle import Frontier, inclusion_proof, leaf_hash
from gateway.audit.notes import SigningKey
from gateway.audit.offline import (
    VerificationFailed,
    verify_files,
    verify_lines,
    verify_proof,
    verify_rows,
)
from tests.audit.chainkit import chain, lines, note_at, opened, rehash

KEY = SigningKey.generate("test-audit")
ROWS = chain(40)
NOTES = [note_at(ROWS, size, KEY) for size in (8, 16, 33)]
CHECKPOINTS = opened(KEY, NOTES)


def test_a_sound_chain_verifies_on_both_paths() -> None:
    fast = verify_lines(lines(ROWS), CHECKPOINTS)
    slow = verify_rows([dict(row) for row in ROWS], CHECKPOINTS)
    for report in (fast, slow):
        assert report.ok, report.problem
        assert (report.events, report.first_seq, report.last_seq) == (40, 1, 40)
        assert (report.checkpoints, report.anchored_to) == (3, 33)
        assert any("34..40 come after the last checkpoint" in n for n in report.notes)


def test_without_checkpoints_the_chain_is_reported_unanchored() -> None:
    report = verify_lines(lines(ROWS))
    assert report.ok
    assert report.notes == ["no checkpoint: the chain is unanchored (hashes and links only)"]


@pytest.mark.parametrize("seq", [1, 8, 9, 33, 34, 40])
def test_an_edited_field_names_its_row_on_both_paths(seq: int) -> None:
    rows = [dict(row) for row in ROWS]
    rows[seq - 1]["model_id"] = 10
    for report in (verify_lines(lines(rows), CHECKPOINTS), verify_rows(rows, CHECKPOINTS)):
        assert not report.ok
        assert report.first_bad_seq == seq
        assert "entry_hash does not match" in (report.problem or "")


def test_a_rewritten_and_rehashed_chain_fails_at_the_checkpoint() -> None:
    rows = rehash([{**row, "effect": "deny"} if row["seq"] == 12 else dict(row) for row in ROWS])
    report = verify_lines(lines(rows), CHECKPOINTS)
    assert (report.ok, report.first_bad_seq) == (False, 9)
    assert "seq 9..16 was rewritten" in (report.problem or "")


def test_a_line_with_its_keys_reordered_is_not_tampering() -> None:
    """The hash covers the canonical form, so key order in the file does not matter."""
    encoded = lines(ROWS)
    reordered = dict(reversed(list(json.loads(encoded[4]).items())))
    encoded[4] = (json.dumps(reordered, ensure_ascii=False) + "\n").encode()
    assert verify_lines(encoded, CHECKPOINTS).ok


def test_a_hash_field_moved_into_the_payload_is_refused() -> None:
    """The fast path pins the hash fields to their top-level places."""
    encoded = lines(ROWS)
    line = encoded[4]
    start = line.index(b',"entry_hash":"')
    segment = line[start : start + 80]
    cut = line.replace(segment, b"", 1)
    encoded[4] = cut.replace(b'"payload":{', b'"payload":{' + segment[1:] + b",")
    report = verify_lines(encoded, CHECKPOINTS)
    assert (report.ok, report.first_bad_seq) == (False, 5)
    assert "line 5:" in (report.problem or "")


def test_a_prev_hash_field_moved_into_the_payload_is_refused() -> None:
    encoded = lines(ROWS)
    line = encoded[4]
    start = line.rindex(b',"prev_hash":"')
    segment = line[start : start + 79]
    cut = line.replace(segment, b"", 1)
    encoded[4] = cut.replace(b',"seq":1}', segment + b',"seq":1}', 1)
    report = verify_lines(encoded, CHECKPOINTS)
    assert (report.ok, report.first_bad_seq) == (False, 5)


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (b'"org_id":3', b'"org_id":3.0', "floats are not allowed"),
        (b'"org_id":3', b'"org_id":"3"', "not an integer"),
        (b'"org_id":3', b'"org_id":true', "not an integer"),
        (b'"org_id":3', b'"org_id":3,"org_id":4', "repeats a key"),
        (b'"org_id":3', b'"org_id":NaN', "not valid JSON"),
        (b'Z",', b'000Z",', "occurred_at is not"),
    ],
)
def test_non_canonical_values_are_refused(old: bytes, new: bytes, problem: str) -> None:
    encoded = lines(ROWS)
    encoded[6] = encoded[6].replace(old, new, 1)
    report = verify_lines(encoded, CHECKPOINTS)
    assert (report.ok, report.first_bad_seq) == (False, 7)
    assert problem in (report.problem or "")


def anchor_for(first: int, last: int, covering: int) -> Anchor:
    prefix = Frontier()
    for row in ROWS[: first - 1]:
        prefix.append(leaf_hash(bytes.fromhex(row["entry_hash"])))
    return Anchor(prefix, [row["entry_hash"] for row in ROWS[last:covering]])


@pytest.mark.parametrize(("first", "last"), [(1, 5), (3, 8), (9, 16), (5, 30), (17, 33), (20, 20)])
def test_a_sub_range_verifies_against_its_covering_checkpoint(first: int, last: int) -> None:
    covering = min(size for size in (8, 16, 33) if size >= last)
    anchor = anchor_for(first, last, covering)
    part = lines(ROWS[first - 1 : last])
    report = verify_lines(part, CHECKPOINTS, anchor=anchor, complete=False)
    assert report.ok, report.problem
    assert (report.first_seq, report.last_seq, report.anchored_to) == (first, last, covering)


def test_a_sub_range_with_a_forged_anchor_or_row_fails() -> None:
    anchor = anchor_for(10, 14, 16)
    part = lines(ROWS[9:14])
    forged = Anchor(anchor.prefix, [*anchor.suffix[:-1], "0" * 64])
    assert not verify_lines(part, CHECKPOINTS, anchor=forged, complete=False).ok
    other = anchor_for(11, 14, 16).prefix
    assert not verify_lines(part, CHECKPOINTS, anchor=Anchor(other, anchor.suffix)).ok
    rows = [dict(row) for row in ROWS[9:14]]
    rows[0]["action"] = "grant:revoke"
    assert not verify_lines(lines(rows), CHECKPOINTS, anchor=anchor, complete=False).ok


def test_a_checkpoint_past_a_complete_export_means_truncation() -> None:
    report = verify_lines(lines(ROWS[:30]), CHECKPOINTS)
    assert (report.ok, report.first_bad_seq) == (False, 31)
    assert "truncated" in (report.problem or "")
    assert verify_lines(lines(ROWS[:30]), CHECKPOINTS, complete=False).ok


def test_checkpoint_files_must_agree_and_none_may_lack_a_later_one() -> None:
    with pytest.raises(VerificationFailed, match="dropped"):
        opened(KEY, NOTES, NOTES[:2])
    fork = chain(40)
    fork[10]["action"] = "grant:revoke"
    rehash(fork)
    with pytest.raises(VerificationFailed, match="forked"):
        opened(KEY, NOTES, [NOTES[0], note_at(fork, 16, KEY), NOTES[2]])
    with pytest.raises(VerificationFailed, match="only grow"):
        opened(KEY, [NOTES[1], NOTES[0], NOTES[2]])
    assert len(opened(KEY, NOTES, [NOTES[2]])) == 3  # a copy may lack older ones


def proof_of(seq: int, size: int) -> dict[str, Any]:
    leaves = [leaf_hash(bytes.fromhex(row["entry_hash"])) for row in ROWS]
    note = note_at(ROWS, size, KEY)
    return proof_document(ROWS[seq - 1], size, inclusion_proof(leaves, seq - 1, size), note)


@pytest.mark.parametrize(("seq", "size"), [(1, 8), (8, 8), (5, 33), (33, 33), (17, 33)])
def test_inclusion_proofs_verify_offline(seq: int, size: int) -> None:
    document = json.loads(json.dumps(proof_of(seq, size)))
    report = verify_proof(document, [KEY.verifier()])
    assert report.ok, report.problem
    assert (report.seq, report.tree_size) == (seq, size)


def test_a_tampered_proof_fails() -> None:
    document = proof_of(5, 33)
    edited = json.loads(json.dumps(document))
    edited["event"]["action"] = "grant:revoke"
    assert "does not match the event" in (verify_proof(edited, [KEY.verifier()]).problem or "")
    moved = json.loads(json.dumps(document))
    moved["index"] = 5
    assert not verify_proof(moved, [KEY.verifier()]).ok
    bent = json.loads(json.dumps(document))
    bent["proof"][0] = "00" * 32
    assert "audit path" in (verify_proof(bent, [KEY.verifier()]).problem or "")
    other = SigningKey.generate("test-audit")
    assert "no known key" in (verify_proof(document, [other.verifier()]).problem or "")
    for junk in (
        {"format": "nope"},
        [],
        {**document, "event": {"seq": "5"}},
        {**document, "proof": [1]},
    ):
        assert not verify_proof(junk, [KEY.verifier()]).ok


def test_verify_files_reads_both_formats_and_refuses_a_junk_manifest(tmp_path: Path) -> None:
    notes = tmp_path / "checkpoints.notes"
    write_checkpoints(NOTES, notes)
    for fmt in ("jsonl", "csv"):
        events = tmp_path / f"events.{fmt}"
        write_events([dict(row) for row in ROWS], events, fmt)
        report = verify_files(events, [notes], [KEY.verifier()])
        assert (report.ok, report.events, report.anchored_to) == (True, 40, 33)
    for missing in (tmp_path / "none.jsonl", tmp_path / "none.csv"):
        report = verify_files(missing, [notes], [KEY.verifier()])
        assert not report.ok and "cannot read" in (report.problem or "")
    twin = tmp_path / "copy" / notes.name
    twin.parent.mkdir()
    twin.write_text(NOTES[0])
    report = verify_files(events, [notes, twin], [KEY.verifier()])
    assert f"but {twin} ends at size 8" in (report.problem or "")
    junk = tmp_path / "manifest.json"
    junk.write_text("[]")
    report = verify_files(events, [notes], [KEY.verifier()], manifest=junk)
    assert not report.ok and "not an export manifest" in (report.problem or "")


def test_notes_split_on_newlines_only_and_blank_lines_between_are_skipped() -> None:
    odd = note_at(ROWS, 3, KEY).replace("test/audit", "test\u2028audit")
    assert split_notes(odd + "\n" + NOTES[0] + NOTES[1]) == [odd, NOTES[0], NOTES[1]]
