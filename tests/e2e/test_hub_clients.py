"""Real huggingface_hub clients (2.x here, 0.36 from its own venv) against a live `airlock demo`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.live import ROOT, Server

pytestmark = pytest.mark.e2e

REPO = "acme/tiny-llm"
BIN = Path(sys.executable).parent
OUTSIDE_GRANT = "README.md"  # in the repository, outside the weights tier's file globs
WEIGHTS = "model.safetensors"  # marked per grantee by the demo's weights tier

# Runs inside the client's own interpreter; prints one JSON line. Works with hub 0.36 and 2.x.
CLIENT = r"""
import json, sys
import huggingface_hub
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, GatedRepoError

tokens, cache = json.loads(sys.argv[1]), sys.argv[2]
out = {"version": huggingface_hub.__version__}
out["snapshot"] = snapshot_download("acme/tiny-llm", token=tokens["researcher"], cache_dir=cache)
for who in ("outsider", "anonymous"):
    try:
        snapshot_download("acme/tiny-llm", token=tokens.get(who, False), cache_dir=f"{cache}-{who}")
        out[who] = ["downloaded", ""]
    except GatedRepoError as exc:
        out[who] = ["GatedRepoError", str(exc)]
    except Exception as exc:
        out[who] = [type(exc).__name__, str(exc)]
try:
    hf_hub_download("acme/tiny-llm", "README.md", token=tokens["researcher"], cache_dir=cache)
    out["readme"] = ["downloaded", ""]
except EntryNotFoundError as exc:
    out["readme"] = ["EntryNotFoundError", str(exc)]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def published(server: Server) -> dict[str, str]:
    """path -> sha256 of every file of the head revision as the researcher receives it: the
    publisher's digests, but the weights are the researcher's own marked copy (fingerprinted)."""
    revision = server.get(f"/api/v1/models/{REPO}/revisions/main", "publisher")
    files = {f["path"]: f["sha256"] for f in revision["files"]}
    assert OUTSIDE_GRANT in files
    tree = server.get(f"/api/models/{REPO}/tree/main?recursive=true", "researcher")
    own = {e["path"]: e["lfs"]["oid"] for e in tree if e["type"] == "file"}
    assert own[WEIGHTS] != files[WEIGHTS]
    assert {p: h for p, h in own.items() if p != WEIGHTS} == {
        p: h for p, h in files.items() if p not in (WEIGHTS, OUTSIDE_GRANT)
    }
    return {**files, **own}


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{command[:3]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


def run_client(python: str, server: Server, name: str) -> dict[str, Any]:
    tokens = {k: server.tokens[k] for k in ("researcher", "outsider")}
    cache = str(server.tmp / f"{name}-cache")
    line = run([python, "-c", CLIENT, json.dumps(tokens), cache], server.hub_env(name))
    return json.loads(line)  # type: ignore[no-any-return]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_snapshot(snapshot: Path, published: dict[str, str]) -> None:
    """Every file the grant allows arrived intact; the one outside its globs did not."""
    allowed = {p: h for p, h in published.items() if p != OUTSIDE_GRANT}
    got = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if p.is_file()}
    assert sorted(got) == sorted(allowed)
    assert {p: sha256_of(f) for p, f in got.items()} == allowed
    # the cache names blobs by X-Linked-Etag: the sha256 of each file
    blobs = snapshot.parents[1] / "blobs"
    assert sorted(os.listdir(blobs)) == sorted(allowed.values())


def assert_refusals(result: dict[str, Any], server: Server) -> None:
    apply_url = f"{server.endpoint}/api/v1/models/{REPO}/access"
    for who in ("outsider", "anonymous"):
        kind, message = result[who]
        assert kind == "GatedRepoError", result[who]
        assert apply_url in message
    assert result["readme"][0] == "EntryNotFoundError", result["readme"]


def test_hub_2x_snapshot_download(server: Server, published: dict[str, str]) -> None:
    result = run_client(sys.executable, server, "hub2")
    assert result["version"].startswith("2.")
    snapshot = Path(result["snapshot"])
    assert_snapshot(snapshot, published)
    assert_refusals(result, server)
    from safetensors.numpy import load_file

    tensors = load_file(snapshot / "model.safetensors")
    assert "model.embed_tokens.weight" in tensors


def test_hf_download_cli(server: Server, published: dict[str, str]) -> None:
    env = server.hub_env("cli", token=server.tokens["researcher"])
    snapshot = Path(run([str(BIN / "hf"), "download", REPO, "--quiet"], env))
    assert snapshot.is_relative_to(server.tmp / "cli-cache")
    assert_snapshot(snapshot, published)


def test_hub_036_snapshot_download(server: Server, published: dict[str, str]) -> None:
    python = os.environ.get("AIRLOCK_HUB036_PYTHON") or str(ROOT / ".venv-hub036/bin/python")
    if not Path(python).is_file():
        message = (
            f"huggingface_hub 0.36 interpreter not found at {python}: run `make test` (it creates "
            ".venv-hub036) or point AIRLOCK_HUB036_PYTHON at a Python with huggingface_hub 0.36"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    result = run_client(python, server, "hub036")
    assert result["version"].startswith("0.36.")
    assert_snapshot(Path(result["snapshot"]), published)
    assert_refusals(result, server)


# Downloads the weights and reads what model info and paths-info said about them.
TRACED_CLIENT = r"""
import json, os, sys
from huggingface_hub import get_paths_info, hf_hub_download, model_info

token, cache = sys.argv[1], sys.argv[2]
path = hf_hub_download("acme/tiny-llm", "model.safetensors", token=token, cache_dir=cache)
info = model_info("acme/tiny-llm", token=token, files_metadata=True)
(sibling,) = [s for s in info.siblings if s.rfilename == "model.safetensors"]
(entry,) = get_paths_info("acme/tiny-llm", ["model.safetensors"], token=token)
print(json.dumps({
    "path": path,
    "etag": os.path.basename(os.path.realpath(path)),
    "info": [sibling.lfs.sha256, sibling.size],
    "paths": [entry.lfs.sha256, entry.size],
}))
"""


def test_the_researchers_download_is_their_own_copy_and_traces_to_their_grant(
    server: Server,
) -> None:
    env = server.hub_env("traced")
    cache = str(server.tmp / "traced-cache")
    seen = json.loads(
        run([sys.executable, "-c", TRACED_CLIENT, server.tokens["researcher"], cache], env)
    )
    path = Path(seen["path"])
    digest, size = sha256_of(path), path.stat().st_size
    assert seen["etag"] == digest  # the client's cache names the blob by the ETag it was sent
    assert seen["info"] == seen["paths"] == [digest, size]
    grants = server.get("/api/v1/me/grants", "researcher")
    (grant,) = [g for g in grants["grants"] if g["tier"] == "weights-vetted"]
    trace_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    trace_env["AIRLOCK_DATA_DIR"] = str(server.tmp / "data")
    command = [sys.executable, "-m", "gateway.cli", "trace", str(path), "--model", REPO, "--json"]
    done = subprocess.run(
        command, env=trace_env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)
    assert report["verdict"] == "attributed" and report["attributed"] == [grant["id"]]
    assert report["exact"][0]["sha256"] == digest
    assert report["ranked"][0]["grant_id"] == grant["id"] and report["ranked"][0]["z"] >= 6
    remote = [*command, "--remote", "--endpoint", server.endpoint]  # the API, as compliance
    trace_env["AIRLOCK_TOKEN"] = server.tokens["compliance"]
    done = subprocess.run(
        remote, env=trace_env, capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["attributed"] == [grant["id"]]
