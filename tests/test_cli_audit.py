"""`airlock audit verify` on a seeded demo database: passes, then names the row after tampering."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from gateway.cli import main


@pytest.fixture
def demo_copy(seeded_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the seeded demo database."""
    shutil.copytree(seeded_demo, tmp_path / "demo")
    return tmp_path / "demo"


def verify(data_dir: Path) -> tuple[int, str]:
    env = {"AIRLOCK_DATA_DIR": str(data_dir), "AIRLOCK_DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["audit", "verify"], env=env)
    return result.exit_code, result.output


def tamper(data_dir: Path, *statements: str) -> None:
    """Edit the database as its owner could: drop the append-only triggers first."""
    engine = create_engine(f"sqlite:///{data_dir / 'airlock.db'}")
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_events_no_update"))
        conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def test_verify_passes_on_the_demo_database(demo_copy: Path) -> None:
    code, output = verify(demo_copy)
    assert code == 0, output
    assert "audit chain OK" in output


@pytest.mark.parametrize("seq", [1, 5, 12])
@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE audit_events SET action = 'grant:revoke' WHERE seq = {seq}",
        "UPDATE audit_events SET payload = '{{\"forged\": true}}' WHERE seq = {seq}",
        "UPDATE audit_events SET occurred_at = '2020-01-01 00:00:00.000000' WHERE seq = {seq}",
        "UPDATE audit_events SET actor_id = 999 WHERE seq = {seq}",
        "DELETE FROM audit_events WHERE seq = {seq}",
    ],
)
def test_verify_names_the_first_edited_or_deleted_row(demo_copy: Path, seq: int, edit: str) -> None:
    tamper(demo_copy, edit.format(seq=seq))
    code, output = verify(demo_copy)
    assert code == 1
    assert f"BROKEN at seq {seq}:" in output


def test_verify_detects_a_recomputed_hash_through_the_next_link(demo_copy: Path) -> None:
    """Row 3 edited and its own hash recomputed: the link from row 4 no longer holds."""
    from sqlalchemy.orm import Session

    from gateway.audit import entry_hash, event_body
    from gateway.db.models import AuditEvent

    engine = create_engine(f"sqlite:///{demo_copy / 'airlock.db'}")
    with Session(engine) as session:
        event = session.get_one(AuditEvent, 3)
        session.expunge(event)
    engine.dispose()
    event.payload = {"forged": True}
    forged = entry_hash(event.prev_hash, event_body(event))
    tamper(
        demo_copy,
        f"UPDATE audit_events SET payload = '{{\"forged\": true}}', "
        f"entry_hash = '{forged}' WHERE seq = 3",
    )
    code, output = verify(demo_copy)
    assert code == 1
    assert "BROKEN at seq 4: prev_hash does not link" in output


def test_verify_detects_a_truncated_tail_against_the_head(demo_copy: Path) -> None:
    engine = create_engine(f"sqlite:///{demo_copy / 'airlock.db'}")
    with engine.connect() as conn:
        last = conn.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
    engine.dispose()
    tamper(demo_copy, f"DELETE FROM audit_events WHERE seq = {last}")
    code, output = verify(demo_copy)
    assert code == 1
    assert f"BROKEN at seq {last}:" in output


# -- signed checkpoints --------------------------------------------------------------------------
def audit(data_dir: Path, *args: str, **env: str) -> tuple[int, str]:
    base = {"AIRLOCK_DATA_DIR": str(data_dir), "AIRLOCK_DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["audit", *args], env={**base, **env})
    return result.exit_code, result.output


def head_seq(data_dir: Path) -> int:
    engine = create_engine(f"sqlite:///{data_dir / 'airlock.db'}")
    with engine.connect() as conn:
        seq = conn.execute(text("SELECT seq FROM audit_head")).scalar_one()
    engine.dispose()
    return int(seq)


def test_the_demo_is_anchored_by_a_checkpoint_in_the_database_and_storage(demo_copy: Path) -> None:
    code, output = verify(demo_copy)
    size = head_seq(demo_copy)
    assert code == 0, output
    assert f"checkpoints OK: 1 signed, 1 in object storage; the latest covers {size} " in output
    assert (demo_copy / "blobs" / "audit" / "checkpoints" / f"{size:020d}.note").is_file()
    assert audit(demo_copy, "checkpoint") == (
        0,
        f"no new events since the checkpoint at size {size}\n",
    )


def test_checkpoints_dropped_from_the_database_are_a_roll_back(demo_copy: Path) -> None:
    size = head_seq(demo_copy)
    engine = create_engine(f"sqlite:///{demo_copy / 'airlock.db'}")
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER audit_checkpoints_no_delete"))
        conn.execute(text("DELETE FROM audit_checkpoints"))
    engine.dispose()
    code, output = verify(demo_copy)
    assert code == 1
    assert "audit chain OK" in output
    assert (
        f"checkpoints BROKEN: checkpoint at size {size} is in object storage "
        f"(audit/checkpoints/{size:020d}.note) but not in the database" in output
    )


def test_a_checkpoint_by_an_unknown_key_fails_and_a_retired_key_verifies_it(
    demo_copy: Path, tmp_path: Path
) -> None:
    size = head_seq(demo_copy)
    old = (demo_copy / "audit_signing_key").read_text().strip()
    code, old_public = audit(demo_copy, "keys")
    assert code == 0 and "PRIVATE" not in old_public and len(old_public.splitlines()) == 1
    key_file = str(tmp_path / "k")
    code, new_public = audit(demo_copy, "keygen", "--name", "demo-2027", "--out", key_file)
    assert code == 0 and new_public.startswith("demo-2027+")
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600
    new = {"AIRLOCK_AUDIT_SIGNING_KEY_FILE": key_file}
    code, output = audit(demo_copy, "verify", **new)
    assert code == 1
    assert f"checkpoints BROKEN: checkpoint at size {size}: signed by no known key" in output

    rotated = {**new, "AIRLOCK_AUDIT_RETIRED_KEYS": old_public.strip()}
    created = CliRunner().invoke(
        main,
        ["admin", "create-org", "rotated", "--name", "After rotation"],
        env={"AIRLOCK_DATA_DIR": str(demo_copy), "AIRLOCK_DATABASE_URL": "", **rotated},
    )
    assert created.exit_code == 0, created.output
    code, output = audit(demo_copy, "checkpoint", **rotated)
    # The output mixes stderr in: an earlier test's logging setup may add the service's log line.
    last = output.splitlines()[-1]
    assert code == 0 and last.startswith(f"checkpoint at size {size + 1} signed by demo-2027 ")
    code, output = audit(demo_copy, "verify", **rotated)
    assert code == 0, output
    assert "checkpoints OK: 2 signed, 2 in object storage" in output
    code, keys = audit(demo_copy, "keys", "--out", str(tmp_path / "pub"), **rotated)
    assert keys.splitlines() == [new_public.strip(), old_public.strip()]
    assert (tmp_path / "pub").read_text() == keys
    assert old not in keys


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("keep me")
    code, output = audit(tmp_path, "keygen", "--name", "x", "--out", str(tmp_path / "k"))
    assert code == 1 and "File exists" in output
    assert (tmp_path / "k").read_text() == "keep me"
