"""`airlock trace` on a seeded demo: the researcher's copy names their grant; the original none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from gateway.cli import main
from gateway.db.models import Grant, RevisionFile, StagedFile, User
from gateway.demo import PEOPLE
from gateway.services.container import build_airlock
from gateway.settings import load_settings

RESEARCHER = PEOPLE["researcher"].username


def files(demo: Path) -> tuple[int, Path, Path]:
    """The researcher's grant id, their copy of model.safetensors and the original."""
    airlock = build_airlock(load_settings({}, data_dir=demo))
    with airlock.db.session() as s:
        grant, staged, original = s.execute(
            select(Grant.id, StagedFile.storage_key, RevisionFile.storage_key)
            .join(StagedFile, StagedFile.grant_id == Grant.id)
            .join(RevisionFile, RevisionFile.id == StagedFile.file_id)
            .join(User, User.id == Grant.user_id)
            .where(User.username == RESEARCHER, RevisionFile.path == "model.safetensors")
        ).one()
    paths = airlock.storage.local_path(staged), airlock.storage.local_path(original)
    airlock.close()
    assert paths[0] is not None and paths[1] is not None
    return grant, paths[0], paths[1]


def trace(demo: Path, *args: str) -> tuple[int, str]:
    env = {"AIRLOCK_DATA_DIR": str(demo), "AIRLOCK_DATABASE_URL": ""}
    result = CliRunner().invoke(main, ["trace", *args], env=env)
    return result.exit_code, result.output


def test_trace_names_the_researchers_grant_for_their_copy_even_renamed(
    seeded_demo: Path, tmp_path: Path
) -> None:
    grant, copy, original = files(seeded_demo)
    leaked = tmp_path / "weights-from-a-torrent.safetensors"
    shutil.copyfile(copy, leaked)
    code, output = trace(seeded_demo, str(leaked), "--model", "acme/tiny-llm")
    assert code == 0, output
    assert f"acme/tiny-llm: attributed to grant {grant}" in output
    assert f"exact copy of model.safetensors delivered to grant {grant} ({RESEARCHER}" in output
    assert "threshold: z >= 6.0" in output
    code, output = trace(seeded_demo, str(original), "--json")  # every marked model
    (report,) = json.loads(output)
    assert code == 0 and report["verdict"] == "inconclusive" and report["exact"] == []
    assert [f["z"] for f in report["ranked"]] == [0.0]


def test_trace_refuses_a_file_that_is_not_safetensors(seeded_demo: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    code, output = trace(seeded_demo, str(junk), "--model", "acme/tiny-llm")
    assert code == 1 and "not a safetensors file" in output
    code, output = trace(seeded_demo, str(junk), "--model", "acme/none")
    assert code == 1 and "not found" in output
