"""`airlock audit export`, `verify --events/--checkpoints/--pubkey`, `prove`: the tamper cases
of docs/security.md (1-12) on exported files, each detected, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.audit import AuditAction
from gateway.audit.canonical import entry_hash
from gateway.audit.exports import canonical_line, split_notes
from gateway.audit.notes import SigningKey, open_checkpoint, sign_checkpoint
from gateway.cli import main
from gateway.db.migrate import upgrade
from gateway.services.container import build_airlock
from gateway.settings import load_settings

ORIGIN = "test.airlock/audit"
RETIRED, CURRENT = SigningKey.generate("audit-2025"), SigningKey.generate("audit-2026")
EVENTS, ANCHORED = 27, 20  # checkpoints at 10 (retired key) and 20 (current key)


def record(airlock: object, count: int, start: int) -> None:
    with airlock.db.session() as session:  # type: ignore[attr-defined]
        for n in range(start, start + count):
            airlock.audit.record(  # type: ignore[attr-defined]
                session,
                AuditAction.DOWNLOAD_ISSUE if n % 2 else AuditAction.DOWNLOAD_DENY,
                actor_id=n,
                org_id=1,
                model_id=2,
                effect="allow" if n % 2 else "deny",
                payload={"name": "Société Générale", "count": 1, "flag": True, "n": n},
            )
        session.commit()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """27 events; signed checkpoints at 10 (a retired key) and 20; the tail is unanchored."""
    root = tmp_path_factory.mktemp("audit")
    settings = load_settings({}, data_dir=root)
    upgrade(settings.database_url)
    airlock = build_airlock(settings)
    for size, key in ((10, RETIRED), (20, CURRENT)):
        record(airlock, size - (10 if size == 20 else 0), size - 9 if size == 20 else 1)
        with airlock.db.session() as session:
            airlock.checkpoints.create(
                session, signer=key, storage=airlock.storage, origin=ORIGIN, size=size
            )
    record(airlock, EVENTS - ANCHORED, ANCHORED + 1)
    with (root / "storage.notes").open("wb") as copy:  # what an operator fetches from S3
        for key in airlock.storage.list_keys("audit/"):
            with airlock.storage.open_read(key) as note:
                copy.write(note.read())
    airlock.close()
    keys = root / "keys.pub"
    keys.write_text(f"# current\n{CURRENT.verifier().to_text()}\n{RETIRED.verifier().to_text()}\n")
    return root


def cli(data_dir: Path, *args: str) -> tuple[int, str]:
    env = {"AIRLOCK_DATA_DIR": str(data_dir), "AIRLOCK_DATABASE_URL": ""}
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def exported(deployment: Path) -> Path:
    out = deployment / "export"
    code, output = cli(deployment, "audit", "export", "--out", str(out))
    assert code == 0, output
    return out


@pytest.fixture
def export(exported: Path, deployment: Path, tmp_path: Path) -> Path:
    """A private copy of the full export, plus the keys and the object-storage copy."""
    shutil.copytree(exported, tmp_path / "export")
    shutil.copy(deployment / "keys.pub", tmp_path / "keys.pub")
    shutil.copy(deployment / "storage.notes", tmp_path / "storage.notes")
    return tmp_path / "export"


def verify(export: Path, *extra: str, keys: str = "keys.pub") -> tuple[int, str]:
    args = ["audit", "verify", "--events", str(export / "events.jsonl")]
    args += ["--checkpoints", str(export / "checkpoints.notes"), *extra]
    return cli(export, *args, "--pubkey", str(export.parent / keys))


def rows(export: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (export / "events.jsonl").read_text().splitlines()]


def write(export: Path, events: list[dict[str, object]]) -> None:
    (export / "events.jsonl").write_text("".join(canonical_line(row) + "\n" for row in events))
    (export / "manifest.json").unlink()  # an edited export no longer matches its manifest


def rehash(events: list[dict[str, object]], start: int) -> None:
    """Recompute hashes and links from index `start` on, as a forger with the file would."""
    prev = events[start - 1]["entry_hash"] if start else "0" * 64
    for row in events[start:]:
        body = {k: v for k, v in row.items() if k not in ("prev_hash", "entry_hash")}
        row["prev_hash"], row["entry_hash"] = prev, entry_hash(str(prev), body)
        prev = row["entry_hash"]


def edit_lines(export: Path, change: Callable[[str], str], seq: int) -> None:
    path = export / "events.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lines[seq - 1] = change(lines[seq - 1])
    path.write_text("".join(lines))
    (export / "manifest.json").unlink()


def broken(export: Path, seq: int, words: str, *extra: str) -> None:
    code, output = verify(export, *extra)
    assert code == 1, output
    assert f"BROKEN at seq {seq}: " in output and words in output, output


def test_the_untouched_export_verifies_and_says_what_is_anchored(export: Path) -> None:
    code, output = verify(export, "--checkpoints", str(export.parent / "storage.notes"))
    assert code == 0, output
    assert f"audit export OK: {EVENTS} events (seq 1..{EVENTS}), 2 checkpoints matched" in output
    assert f"events {ANCHORED + 1}..{EVENTS} come after the last checkpoint" in output
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["events"]["rows"] == EVENTS
    assert manifest["checkpoints"]["count"] == 2 and manifest["checkpoints"]["covering"] is None


def test_case_1_a_field_edited(export: Path) -> None:
    edit_lines(export, lambda line: line.replace('"actor_id":5', '"actor_id":6'), 5)
    broken(export, 5, "entry_hash does not match")


def test_case_2_a_row_edited_with_its_hash_recomputed(export: Path) -> None:
    events = rows(export)
    events[4]["effect"] = "deny" if events[4]["effect"] == "allow" else "allow"
    rehash(events[:5], 4)
    write(export, events)
    broken(export, 6, "prev_hash does not link")


@pytest.mark.parametrize(("seq", "first"), [(5, 1), (15, 11)])
def test_case_3_the_whole_chain_recomputed(export: Path, seq: int, first: int) -> None:
    events = rows(export)
    events[seq - 1]["effect"] = "allow" if events[seq - 1]["effect"] == "deny" else "deny"
    rehash(events, seq - 1)
    write(export, events)
    broken(export, first, f"an event in seq {first}..{first + 9} was rewritten")


def test_case_4_a_middle_row_deleted(export: Path) -> None:
    events = rows(export)
    del events[11]
    write(export, events)
    broken(export, 12, "expected sequence 12, found 13: event missing")


def test_case_5_two_rows_swapped(export: Path) -> None:
    events = rows(export)
    events[6], events[7] = events[7], events[6]
    write(export, events)
    broken(export, 7, "expected sequence 7, found 8")


def test_case_6_a_forged_row_inserted(export: Path) -> None:
    events = rows(export)
    forged = {**events[7], "action": "grant:approve", "actor_id": 1}
    events.insert(7, forged)
    rehash(events[:8], 7)  # the forged row links correctly to row 7
    write(export, events)
    broken(export, 9, "expected sequence 9, found 8: event duplicated or out of order")


def test_case_7_a_duplicated_row(export: Path) -> None:
    events = rows(export)
    events.insert(3, events[2])
    write(export, events)
    broken(export, 4, "expected sequence 4, found 3")


def test_case_8_a_truncated_tail_is_caught_up_to_the_last_checkpoint(export: Path) -> None:
    events = rows(export)
    write(export, events[:18])
    broken(export, 19, "signs 20 events but the export ends at seq 18")


def test_case_8_a_tail_after_the_last_checkpoint_cannot_be_caught(export: Path) -> None:
    """The documented bound: events after the last checkpoint (at most one interval)."""
    write(export, rows(export)[:24])
    code, output = verify(export)
    assert code == 0, output
    assert f"events {ANCHORED + 1}..24 come after the last checkpoint" in output


def test_case_9_a_checkpoint_forged_with_another_key(export: Path) -> None:
    """A forger re-signs the first checkpoint with a key of the same name but not ours."""
    path = export / "checkpoints.notes"
    notes = split_notes(path.read_text())
    checkpoint = open_checkpoint(notes[0], [RETIRED.verifier()])
    forger = SigningKey.generate("audit-2025")
    path.write_text(sign_checkpoint(checkpoint, forger) + "".join(notes[1:]))
    broken_checkpoints(export, "checkpoint 1 of checkpoints.notes: signed by no known key")


def test_case_9_a_checkpoint_text_altered(export: Path) -> None:
    path = export / "checkpoints.notes"
    path.write_text(path.read_text().replace("\n20\n", "\n19\n", 1))
    broken_checkpoints(export, "checkpoint 2 of checkpoints.notes: the signature by audit-2026")


def broken_checkpoints(export: Path, words: str) -> None:
    code, output = verify(export)
    assert code == 1, output
    assert "audit export BROKEN: " in output and words in output, output


def test_case_10_recent_checkpoints_dropped_are_caught_against_object_storage(
    export: Path,
) -> None:
    """A roll-back: the tail and its checkpoint removed from the database's export."""
    path = export / "checkpoints.notes"
    notes = path.read_text()
    path.write_text(notes[: notes.index(f"{ORIGIN}\n20\n")])
    write(export, rows(export)[:15])
    assert verify(export)[0] == 0  # consistent on its own: only the copy tells
    storage = str(export.parent / "storage.notes")
    broken(
        export, 11, "signs size 20 but checkpoints.notes ends at size 10", "--checkpoints", storage
    )


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('"count":1', '"count":1.0', "floats are not allowed"),
        ('"count":1', '"count":"1"', "entry_hash does not match"),
        ('"flag":true', '"flag":1', "entry_hash does not match"),
        ('"actor_id":9', '"actor_id":"9"', "actor_id is '9', not an integer"),
        ("Société", unicodedata.normalize("NFD", "Société"), "entry_hash does not match"),
        ('Z","org_id"', '000Z","org_id"', "occurred_at is not"),
        ('"count":1', '"count":1,"count":1', "repeats a key"),
    ],
)
def test_case_11_canonicalization_traps(export: Path, old: str, new: str, words: str) -> None:
    edit_lines(export, lambda line: line.replace(old, new, 1), 9)
    broken(export, 9, words)


def test_case_11_key_order_and_spacing_are_not_tampering(export: Path) -> None:
    events = rows(export)
    lines = [json.dumps(dict(reversed(list(row.items()))), indent=None) for row in events]
    (export / "events.jsonl").write_text("".join(line + "\n" for line in lines))
    (export / "manifest.json").unlink()
    assert verify(export)[0] == 0


def test_case_12_rotation_old_checkpoints_verify_with_the_retired_key(export: Path) -> None:
    assert verify(export)[0] == 0
    (export.parent / "current.pub").write_text(CURRENT.verifier().to_text() + "\n")
    code, output = verify(export, keys="current.pub")
    assert code == 1
    assert "checkpoint 1 of checkpoints.notes: signed by no known key: audit-2025" in output


def test_an_events_file_the_manifest_does_not_list_fails(export: Path) -> None:
    path = export / "events.jsonl"
    path.write_text(path.read_text().replace('"actor_id":5', '"actor_id":6', 1))
    code, output = verify(export)
    assert code == 1
    assert "events.jsonl is not the file the manifest lists (SHA-256 differs)" in output


@pytest.mark.parametrize(
    ("last", "matched", "covering"), [(14, "2 checkpoints", 20), (8, "1 checkpoints", 10)]
)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_sub_range_exports_verify_with_the_storage_copy(
    deployment: Path,
    exported: Path,
    tmp_path: Path,
    fmt: str,
    last: int,
    matched: str,
    covering: int,
) -> None:
    """Seq 5..last: the frontier before it and the hashes up to its covering checkpoint."""
    events = rows(exported)
    since, until = str(events[4]["occurred_at"]), str(events[last]["occurred_at"])
    out, keys = tmp_path / fmt, str(deployment / "keys.pub")
    export = ["audit", "export", "--format", fmt, "--out", str(out)]
    code, output = cli(deployment, *export, "--since", since, "--until", until)
    assert code == 0, output
    assert f"exported {last - 4} events (seq 5..{last})" in output
    code, output = cli(
        deployment,
        *("audit", "verify", "--events", str(out / f"events.{fmt}"), "--pubkey", keys),
        *("--checkpoints", str(out / "checkpoints.notes")),
        *("--checkpoints", str(deployment / "storage.notes")),
    )
    assert code == 0, output
    assert f"OK: {last - 4} events (seq 5..{last}), {matched} matched, " in output
    assert f"anchored up to seq {covering}" in output


def test_prove_gives_a_proof_verified_offline(deployment: Path, tmp_path: Path) -> None:
    proof = tmp_path / "proof.json"
    code, output = cli(deployment, "audit", "prove", "7", "--out", str(proof))
    assert code == 0 and "checkpoint of size 10" in output, output
    keys = str(deployment / "keys.pub")
    code, output = cli(deployment, "audit", "verify", "--proof", str(proof), "--pubkey", keys)
    assert code == 0 and "event 7 is in the signed tree of 10" in output, output
    document = json.loads(proof.read_text())
    document["event"]["effect"] = "allow" if document["event"]["effect"] == "deny" else "deny"
    proof.write_text(json.dumps(document))
    code, output = cli(deployment, "audit", "verify", "--proof", str(proof), "--pubkey", keys)
    assert code == 1 and "inclusion proof BROKEN for seq 7" in output, output
    code, output = cli(deployment, "audit", "prove", str(EVENTS))
    assert code == 1 and f"no checkpoint covers event {EVENTS} yet" in output


def test_offline_verify_opens_no_database(export: Path, tmp_path: Path) -> None:
    """Run in a fresh process with a database URL that cannot open: nothing even imports one."""
    missing = tmp_path / "nowhere" / "airlock.db"
    script = (
        "import sys\n"
        "from gateway.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    found = ('sqlalchemy', 'psycopg', 'redis', 'boto3')\n"
        "    loaded = [m for m in found if m in sys.modules]\n"
        "    print('loaded:', loaded)\n"
        "    raise\n"
    )
    args = ["audit", "verify", "--events", str(export / "events.jsonl")]
    args += ["--checkpoints", str(export / "checkpoints.notes")]
    args += ["--pubkey", str(export.parent / "keys.pub")]
    env = {**os.environ, "AIRLOCK_DATABASE_URL": f"sqlite:///{missing}"}
    result = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "audit export OK" in result.stdout and "loaded: []" in result.stdout
    assert not missing.parent.exists()
