"""The README's first five minutes, run as written against a live `airlock demo`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.live import ROOT, Server

pytestmark = pytest.mark.e2e
AIRLOCK = str(Path(sys.executable).parent / "airlock")


def airlock(server: Server, role: str, *args: str, data_dir: Path | None = None) -> tuple[int, str]:
    """Run the `airlock` CLI as the README does: endpoint and token from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    env.update(AIRLOCK_ENDPOINT=server.endpoint, AIRLOCK_TOKEN=server.tokens[role])
    if data_dir:
        env["AIRLOCK_DATA_DIR"] = str(data_dir)
    done = subprocess.run(
        [AIRLOCK, *args], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    return done.returncode, done.stdout + done.stderr


def test_researcher_sees_tiers_and_is_told_why_a_request_is_denied(server: Server) -> None:
    access = server.get("/api/v1/models/acme/tiny-llm/access", "outsider")
    assert [t["name"] for t in access["tiers"]] == ["card", "api-researcher", "weights-vetted"]
    code, output = airlock(
        server,
        "outsider",
        "request",
        "acme/tiny-llm",
        "--tier",
        "api-researcher",
        "--agreement",
        "acme-research-aup@2",
    )
    assert code == 0, output
    decision = json.loads(output)
    assert decision["status"] == "denied"
    assert "kyc_level_insufficient" in {r["code"] for r in decision["reasons"]}
    mine = server.get("/api/v1/me/requests", "outsider")["requests"]
    assert [r["id"] for r in mine] == [decision["id"]]
    grants = server.get("/api/v1/me/grants", "researcher")["grants"]
    assert [(g["repo_id"], g["tier"], g["status"]) for g in grants] == [
        ("acme/tiny-llm", "weights-vetted", "active")
    ]


def test_publisher_commands(server: Server, tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    code, output = airlock(
        server, "publisher", "push", str(model), "acme/my-model", "-m", "first upload"
    )
    assert code == 0 and "acme/my-model@" in output, output
    code, output = airlock(
        server, "publisher", "policy", "check", "gateway/demo_assets/release-policy.yaml"
    )
    assert code == 0 and "against the grants under policy version 1" in output, output
    assert "keep" in output and "grants: 1 keep" in output, output
    code, output = airlock(
        server, "publisher", "policy", "apply", "gateway/demo_assets/release-policy.yaml"
    )
    assert code == 0 and "policy version 1 unchanged" in output, output
    code, output = airlock(
        server, "publisher", "policy", "validate", "gateway/demo_assets/release-policy.yaml"
    )
    assert code == 0 and "acme/tiny-llm: valid (3 tiers, stage limited)" in output, output
    revision = server.get("/api/v1/models/acme/tiny-llm/revisions/main", "publisher")
    assert revision["vetting_status"] == "passed"
    grants = server.get("/api/v1/models/acme/tiny-llm/grants", "publisher")["grants"]
    assert len(grants) == 1


def test_reviewer_and_compliance_commands(server: Server) -> None:
    code, output = airlock(server, "reviewer", "requests", "list")
    assert code == 0, output
    assert isinstance(json.loads(output)["requests"], list)
    page = server.get("/api/v1/audit?limit=5", "compliance")
    seqs = [e["seq"] for e in page["events"]]
    assert len(seqs) == 5 and seqs == sorted(seqs) and page["next_cursor"] == seqs[-1]
    denials = server.get("/api/v1/audit?action=download:deny", "compliance")["events"]
    assert all(e["action"] == "download:deny" for e in denials)
    mine = server.get("/api/v1/audit?subject=rob&repo_id=acme/tiny-llm", "compliance")["events"]
    assert {"request:create", "grant:create"} <= {e["action"] for e in mine}
    why = "reason=kyc_level_insufficient&tier=api-researcher"
    refused = server.get(f"/api/v1/audit?{why}", "compliance")["events"]
    assert {e["effect"] for e in refused} <= {"deny"}  # the outsider's request, when made first
    vetted = server.get("/api/v1/audit?tier=weights-vetted", "compliance")["events"]
    assert "grant:create" in {e["action"] for e in vetted}
    grants = server.get("/api/v1/compliance/access-report", "compliance")["grants"]
    assert ("rob", "acme/tiny-llm", "weights-vetted") in {
        (g["username"], g["repo_id"], g["tier"]) for g in grants
    }
    stats = server.get("/api/v1/compliance/denials?bucket=week", "compliance")
    assert stats["totals"]["deny"] >= len(refused) and stats["series"]
    timeline = server.get("/api/v1/compliance/timeline?user=rob", "compliance")["events"]
    assert "grant:create" in {e["action"] for e in timeline}
    code, output = airlock(server, "compliance", "audit", "verify", data_dir=server.tmp / "data")
    assert code == 0 and "audit chain OK" in output, output


def test_freeze_and_thaw(server: Server) -> None:
    code, output = airlock(
        server, "publisher", "freeze", "acme/tiny-llm", "--reason", "incident 42: suspected leak"
    )
    assert code == 0 and json.loads(output)["frozen"] is True
    code, output = airlock(
        server, "publisher", "freeze", "acme/tiny-llm", "--undo", "--reason", "incident 42 closed"
    )
    assert code == 0 and json.loads(output)["frozen"] is False
