"""The publisher and reviewer CLI against a live gateway: push, policy, request, decide, revoke."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

from gateway.cli import main
from gateway.db.models import Role
from tests.factories import Actor, World, policy_text, safetensors_bytes
from tests.ports import serving


@pytest.fixture
def live(app: Flask) -> Iterator[str]:
    """The gateway served on a loopback port for the duration of a test."""
    with serving(app) as url:
        yield url


@pytest.fixture
def people(world: World) -> dict[str, Actor]:
    world.org("acme")
    return {
        "publisher": world.actor("alice", org="acme", role=Role.PUBLISHER),
        "reviewer": world.actor("rita", org="acme", role=Role.REVIEWER),
        "researcher": world.actor("rob"),
    }


def run(live: str, token: str, *args: str) -> tuple[int, str]:
    """Exit code, and stdout on success (the in-process server logs to the same stderr)."""
    result = CliRunner().invoke(main, [*args, "--endpoint", live, "--token", token])
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_push_uploads_every_file_and_commits(
    live: str, people: dict[str, Actor], tmp_path: Path, client
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    files = {"config.json": b"{}", "model.safetensors": safetensors_bytes(), "sub/notes.txt": b"x"}
    for name, data in files.items():
        (src / name).write_bytes(data)
    code, output = run(live, people["publisher"].token, "push", str(src), "acme/pushed", "-m", "v1")
    assert code == 0, output
    assert "acme/pushed@" in output and "3 files" in output
    response = client.get(
        "/api/v1/models/acme/pushed/revisions/main",
        headers={"Authorization": f"Bearer {people['publisher'].token}"},
    )
    listed = {f["path"]: f["sha256"] for f in response.get_json()["files"]}
    assert listed == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    assert response.get_json()["vetting_status"] == "passed"


def test_push_is_refused_for_a_researcher(
    live: str, people: dict[str, Actor], tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    code, output = run(live, people["researcher"].token, "push", str(tmp_path), "acme/nope")
    assert code == 1
    assert "error 403" in output


def test_policy_apply_reports_lines_then_versions(
    live: str, people: dict[str, Actor], world: World, tmp_path: Path
) -> None:
    world.model(people["publisher"], repo="acme/tiny")
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_text("acme/tiny").replace("kyc: identity", "kyc: passport"))
    code, output = run(live, people["publisher"].token, "policy", "apply", str(bad))
    assert code == 1
    assert "error 422" in output and "requires.kyc" in output and "line " in output
    good = tmp_path / "good.yaml"
    good.write_text(policy_text("acme/tiny", downloads=7))
    code, output = run(live, people["publisher"].token, "policy", "apply", str(good))
    assert code == 0, output
    assert "policy version 2 applied" in output
    code, output = run(live, people["publisher"].token, "policy", "apply", str(good))
    assert "policy version 2 unchanged" in output


def test_request_review_and_revoke_round_trip(
    live: str, people: dict[str, Actor], world: World
) -> None:
    world.model(people["publisher"], repo="acme/tiny")
    world.kyc(people["reviewer"], people["researcher"])
    code, output = run(
        live,
        people["researcher"].token,
        "request",
        "acme/tiny",
        "--tier",
        "weights-manual",
        "--agreement",
        "aup@1",
        "--field",
        "intended_use=safety evaluation",
    )
    assert code == 0, output
    request = json.loads(output)
    assert request["status"] == "pending"
    assert "approval_required" in {r["code"] for r in request["reasons"]}
    code, output = run(live, people["reviewer"].token, "requests", "list")
    assert [r["id"] for r in json.loads(output)["requests"]] == [request["id"]]
    code, output = run(
        live,
        people["reviewer"].token,
        "requests",
        "decide",
        str(request["id"]),
        "approve",
        "--note",
        "ok",
    )
    grant = json.loads(output)["grant"]
    assert code == 0 and grant["status"] == "active"
    code, output = run(
        live, people["reviewer"].token, "grants", "revoke", str(grant["id"]), "--reason", "breach"
    )
    assert code == 0 and json.loads(output)["status"] == "revoked"
    args = ["requests", "reset", str(request["id"]), "--reason", "decided in error"]
    code, output = run(live, people["reviewer"].token, *args)
    assert code == 0 and json.loads(output)["status"] == "pending"


def test_freeze_needs_a_publisher(live: str, people: dict[str, Actor], world: World) -> None:
    world.model(people["publisher"], repo="acme/tiny")
    code, output = run(live, people["reviewer"].token, "freeze", "acme/tiny", "--reason", "x")
    assert code == 1 and "error 403" in output
    code, output = run(live, people["publisher"].token, "freeze", "acme/tiny", "--reason", "leak")
    assert code == 0 and json.loads(output)["frozen"] is True


def test_upstream_sets_the_served_name_and_prompt_digests(
    live: str, people: dict[str, Actor], world: World
) -> None:
    world.model(people["publisher"], repo="acme/tiny")
    args = ["upstream", "acme/tiny", "--url", "http://vllm:8000/v1", "--model", "org/Tiny-1B"]
    code, output = run(live, people["reviewer"].token, *args)
    assert code == 1 and "error 403" in output
    code, output = run(live, people["publisher"].token, *args, "--prompt-digests")
    assert code == 0, output
    assert json.loads(output) == {
        "repo_id": "acme/tiny",
        "url": "http://vllm:8000/v1",
        "key_ref": None,
        "model": "org/Tiny-1B",
        "prompt_digests": True,
    }


def test_unreachable_endpoint_is_a_clear_error(tmp_path: Path) -> None:
    code, output = run("http://127.0.0.1:9", "alk_x" * 5, "freeze", "acme/tiny", "--reason", "x")
    assert code == 1
    assert "cannot reach Airlock" in output
