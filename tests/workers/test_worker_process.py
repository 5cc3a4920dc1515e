"""Real `celery worker` processes on Redis and PostgreSQL: end to end, and killed mid-task."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway.db.models import Revision
from gateway.services.container import Airlock, build_airlock
from gateway.services.provisioning import TEMP_SUFFIX
from gateway.settings import load_settings
from gateway.tasks.broker import CeleryRunner
from gateway.tasks.catalog import SWEEP_TASK
from tests.workers.conftest import COVERED, FILES, Scene, blob_files, claimed_redis_db

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
RECEIVED = re.compile(r"provision_download\[([0-9a-f-]{36})\] received")


class Deployment:
    """One deployment's settings as environment variables, and its producer-side services."""

    def __init__(self, tmp_path: Path, database_url: str, broker_url: str) -> None:
        self.tmp_path = tmp_path
        self.blobs = tmp_path / "blobs"
        self.env = {
            "AIRLOCK_DATA_DIR": str(tmp_path),
            "AIRLOCK_DATABASE_URL": database_url,
            "AIRLOCK_BROKER_URL": broker_url,
            "AIRLOCK_STORAGE_URL": f"file://{self.blobs}",
            "AIRLOCK_SECRET_KEY": "worker-test",
            "AIRLOCK_LOG_LEVEL": "INFO",
        }
        self.airlock: Airlock = build_airlock(load_settings(self.env))
        assert isinstance(self.airlock.runner, CeleryRunner)
        self.workers: list[WorkerProcess] = []

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop every worker started, then close the producer side."""
        for worker in self.workers:
            worker.stop()
        self.airlock.close()

    def start(self, name: str, *args: str) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")} | self.env
        worker = WorkerProcess([sys.executable, "-m", *args], env, self.tmp_path / f"{name}.log")
        self.workers.append(worker)
        return worker

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {w.log_path.name}\n{w.output()[-4000:]}" for w in self.workers
                )
                pytest.fail(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.1)


class WorkerProcess:
    """A worker in its own process group, so SIGKILL reaches the pool children too."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self.kill()


@pytest.fixture
def deployment(tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    """This test's PostgreSQL database, shared by the gateway side and the worker processes."""
    with (
        claimed_redis_db() as broker_url,
        Deployment(tmp_path, database_url, broker_url) as deployment,
    ):
        yield deployment


def test_a_worker_vets_provisions_and_sweeps_what_the_gateway_enqueues(
    deployment: Deployment,
) -> None:
    scene = Scene(deployment.airlock)  # commits a revision: vetting goes to the broker
    grant = scene.grant()  # a fingerprinting grant: provisioning goes to the broker
    deployment.start("worker", "gateway.cli", "worker", "--concurrency", "1")

    def vetted() -> bool:
        with deployment.airlock.db.session() as s:
            return s.scalar(select(Revision.vetting_status)) == "passed"

    deployment.wait_for("vetting", vetted)
    deployment.wait_for("provisioning", lambda: len(scene.staged(grant.id)) == len(COVERED))
    deployment.wait_for("the provisioned mark", lambda: scene.events("grant:provision") == 1)
    assert scene.events("revision:vet") == 1
    with deployment.airlock.db.session() as s:
        deployment.airlock.access.revoke_grant(
            s, principal=scene.pat.principal, grant_id=grant.id, reason="test"
        )
    deployment.airlock.runner.send(SWEEP_TASK, {})
    deployment.wait_for("the sweep", lambda: scene.staged(grant.id) == [])
    assert scene.events("grant:deprovision") == 1
    assert not list((deployment.blobs / "orgs").glob("*/grants/*/files/*"))


def test_a_task_killed_mid_copy_is_redelivered_and_completes_once(
    deployment: Deployment,
) -> None:
    marker = deployment.tmp_path / "paused"
    scene = Scene(deployment.airlock)
    grant = scene.grant()
    first = deployment.start("first", "tests.workers.paused_worker", "--marker", str(marker))
    deployment.wait_for("the first worker to pause mid-copy", marker.exists)
    assert [p for p in blob_files(deployment.blobs) if p.name.endswith(TEMP_SUFFIX)]
    first.kill()
    assert scene.staged(grant.id) == []

    second = deployment.start(
        "second", "tests.workers.paused_worker", "--marker", str(marker), "--visibility", "1"
    )
    deployment.wait_for("the redelivered task", lambda: scene.events("grant:provision") == 1)
    second.stop()

    # The same message (task id) was received by both workers, and ran to the end once.
    assert RECEIVED.findall(first.output()) == RECEIVED.findall(second.output())
    assert len(RECEIVED.findall(second.output())) == 1
    staged = scene.staged(grant.id)
    assert len(staged) == len(COVERED)
    copies = sorted(p for p in blob_files(deployment.blobs) if "/grants/" in p.as_posix())
    assert copies == sorted(deployment.blobs / row.storage_key for row in staged)
    assert sorted(p.read_bytes() for p in copies) == sorted(FILES[path] for path in COVERED)
    assert scene.events("grant:provision") == 1
