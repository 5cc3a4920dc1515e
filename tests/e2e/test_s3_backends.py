"""Every production backend at once: PostgreSQL, Redis limits and broker, S3, a Celery worker.

A publisher pushes with `airlock push` (parts straight to S3), the worker vets the revision
and provisions the grant, and huggingface_hub downloads through presigned S3 redirects.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.db.migrate import upgrade
from gateway.db.models import DownloadFingerprint, Grant, Revision, Role
from gateway.services.container import Airlock, build_airlock
from gateway.settings import load_settings
from tests.e2e.live import ROOT
from tests.factories import Actor, World, safetensors_bytes
from tests.pg import throwaway_database
from tests.ports import free_port
from tests.s3_servers import S3Server, moto_server
from tests.workers.conftest import claimed_redis_db, fingerprint_policy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = "acme/tiny-s3"
PART = 5 * 1024 * 1024
FILES = {
    "config.json": b'{"model_type": "test"}',
    "model.safetensors": safetensors_bytes(2 * 1024 * 1024),  # 8 MiB: two parts
    "README.md": b"# card\n",  # outside the weights tier's file globs
}
SERVED = ("config.json", "model.safetensors")
HUB036 = ROOT / ".venv-hub036" / "bin" / "python"  # make test installs it

CLIENT = r"""
import json, sys
from huggingface_hub import snapshot_download
repo, token, cache = sys.argv[1:4]
print(json.dumps({"snapshot": snapshot_download(repo, token=token, cache_dir=cache)}))
"""


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@dataclass
class Deployment:
    """The environment of one deployment and the processes started with it."""

    tmp: Path
    env: dict[str, str]
    s3: S3Server
    airlock: Airlock
    endpoint: str = ""
    processes: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")} | self.env
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # SIGTERM reaches a worker's pool children too
            )
        self.processes.append((process, log))
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for _, log in self.processes)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    with (
        claimed_redis_db() as redis_url,
        throwaway_database() as database_url,
        moto_server(tmp_path / "moto.log") as s3,
    ):
        upgrade(database_url)
        env = {
            "AIRLOCK_DATA_DIR": str(tmp_path / "data"),
            "AIRLOCK_DATABASE_URL": database_url,
            "AIRLOCK_REDIS_URL": redis_url,
            "AIRLOCK_BROKER_URL": redis_url,
            "AIRLOCK_SECRET_KEY": "e2e-s3",
            "AIRLOCK_UPLOAD_PART_BYTES": str(PART),
            "AIRLOCK_LOG_LEVEL": "INFO",
            **s3.env(s3.new_bucket()),
        }
        airlock = build_airlock(load_settings(env))
        deployment = Deployment(tmp_path, env, s3, airlock)
        try:
            port = free_port()
            deployment.endpoint = f"http://127.0.0.1:{port}"
            deployment.start("gateway", "serve", "--port", str(port))
            deployment.start("worker", "worker", "--concurrency", "1")
            deployment.wait_for("the gateway", lambda: healthy(deployment.endpoint), 30)
            yield deployment
        finally:
            deployment.stop()
            airlock.close()


def healthy(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/healthz", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def push(deployment: Deployment, publisher: Actor) -> None:
    source = deployment.tmp / "model"
    source.mkdir()
    for name, data in FILES.items():
        (source / name).write_bytes(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    argv = ["push", str(source), REPO, "-m", "v1", "--endpoint", deployment.endpoint]
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *argv, "--token", publisher.token],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{deployment.logs()}"
    assert f"{REPO}@" in done.stdout


def resolve(deployment: Deployment, token: str, path: str) -> tuple[int, str]:
    """The gateway's answer to a Hub GET of `path`, without following the redirect."""
    request = urllib.request.Request(
        f"{deployment.endpoint}/{REPO}/resolve/main/{path}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=10) as response:
            return response.status, response.headers.get("Location", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "")


def hub_clients() -> list[str]:
    """Interpreters with huggingface_hub 2.x and, where make test installed it, 0.36."""
    if HUB036.is_file():
        return [sys.executable, str(HUB036)]
    if os.environ.get("CI"):
        pytest.fail(f"huggingface_hub 0.36 is missing at {HUB036}: make test creates it")
    return [sys.executable]


def hub_download(deployment: Deployment, token: str, python: str) -> Path:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AIRLOCK_"))}
    env |= {
        "HF_ENDPOINT": deployment.endpoint,
        "HF_HOME": str(deployment.tmp / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    cache = str(deployment.tmp / f"hf-cache-{Path(python).parent.parent.name}")
    done = subprocess.run(
        [python, "-c", CLIENT, REPO, token, cache],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{deployment.logs()}"
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["snapshot"])


def test_push_vet_grant_and_download_through_presigned_s3_redirects(
    deployment: Deployment,
) -> None:
    world = World(deployment.airlock)
    world.org("acme")
    publisher = world.actor("pat", org="acme", role=Role.PUBLISHER)
    reviewer = world.actor("rita", org="acme", role=Role.REVIEWER)
    researcher = world.actor("rob")
    world.kyc(reviewer, researcher)

    push(deployment, publisher)  # parts straight to S3; vetting goes to the broker
    airlock = deployment.airlock
    with airlock.db.session() as s:
        model = airlock.publishing.get_model(s, REPO)
        airlock.policies.apply(s, principal=publisher.principal, source=fingerprint_policy(REPO))

    def vetted() -> bool:
        with airlock.db.session() as s:
            return s.scalar(select(Revision.vetting_status)) == "passed"

    deployment.wait_for("the worker to vet the revision", vetted)
    grant = world.grant(researcher, model)  # fingerprinting tier: provisioning on the worker

    def provisioned() -> bool:
        with airlock.db.session() as s:
            return s.get_one(Grant, grant.id).provisioned_at is not None

    deployment.wait_for("the worker to provision the grant", provisioned)

    status, location = resolve(deployment, researcher.token, "model.safetensors")
    assert status == 302
    assert location.startswith(deployment.s3.endpoint + "/")
    assert "X-Amz-Signature=" in location and "X-Amz-Expires=" in location

    with airlock.db.session() as s:
        marked = s.scalars(select(DownloadFingerprint.sha256)).one()  # the weights' copy
    expected = {"config.json": digest(FILES["config.json"]), "model.safetensors": marked}
    assert marked != digest(FILES["model.safetensors"])
    for python in hub_clients():
        snapshot = hub_download(deployment, researcher.token, python)
        got = {p.relative_to(snapshot).as_posix(): p for p in snapshot.rglob("*") if p.is_file()}
        assert sorted(got) == sorted(SERVED)
        for path in SERVED:
            assert digest(got[path].read_bytes()) == expected[path]
    with airlock.db.session() as s:  # the original is read back from S3 to trace against
        report = airlock.tracing.trace(
            s, principal=None, repo_id=REPO, suspects=[got["model.safetensors"]]
        )
    assert report.attributed == (grant.id,) and report.ranked[0].z >= 6
    assert deployment.s3.log is not None
    s3_gets = [
        line
        for line in deployment.s3.log.read_text().splitlines()
        if '"GET /' in line and "/grants/" in line and "X-Amz-Signature=" in line
    ]
    assert s3_gets, "the bytes did not come from presigned S3 GETs of the staged copies"
