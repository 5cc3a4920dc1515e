"""deploy/gunicorn.conf.py under a real gunicorn: metrics summed over workers, hooks doing their
part when the server starts and when a worker exits."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gateway.app import create_app
from gateway.db.migrate import upgrade
from gateway.services.container import build_airlock
from gateway.settings import load_settings
from tests.api.hubkit import FILES, REPO, bearer, make_hub, sha256
from tests.deploy.conftest import DEPLOY, ROOT, VENV_BIN, wait_http
from tests.factories import World
from tests.ports import free_port
from tests.processes import stop_process

HEALTHZ = 'airlock_http_requests_total{method="GET",status="200",surface="health"}'


class Gunicorn:
    """A gunicorn master with two workers serving an SQLite deployment under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.metrics_dir = tmp_path / "metrics"
        self.log_path = tmp_path / "gunicorn.log"
        database = tmp_path / "airlock.db"
        upgrade(f"sqlite:///{database}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
        env.update(
            AIRLOCK_DATA_DIR=str(tmp_path),
            AIRLOCK_DATABASE_URL=f"sqlite:///{database}",
            AIRLOCK_SECRET_KEY="gunicorn-test",
            AIRLOCK_LOG_FORMAT="json",
            PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir),
        )
        self.metrics_dir.mkdir()
        (self.metrics_dir / "counter_999999.db").write_bytes(b"from an earlier run")
        argv = [str(VENV_BIN / "gunicorn"), "--config", str(DEPLOY / "gunicorn.conf.py")]
        argv += ["--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--threads", "2"]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url(path), timeout=5) as response:
            return str(response.read().decode())

    def counted(self) -> float:
        lines = self.get("/metrics").splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith(HEALTHZ))

    def worker_pids(self) -> set[int]:
        return {int(p.stem.rsplit("_", 1)[1]) for p in self.metrics_dir.glob("gauge_livesum_*")}

    def stop(self) -> None:
        stop_process(self.proc, grace=20)
        self._log.close()


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path)
    try:
        wait_http(server.url("/readyz"))
        yield server
    finally:
        server.stop()


def wait_until(what: str, check: object, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def test_metrics_add_up_across_workers_and_outlive_a_worker(gunicorn: Gunicorn) -> None:
    assert not (gunicorn.metrics_dir / "counter_999999.db").exists(), "on_starting resets"
    before = gunicorn.counted()  # the readiness polls that waited for the server
    for _ in range(30):
        gunicorn.get("/healthz")
    assert gunicorn.counted() == before + 30
    served = gunicorn.worker_pids()
    assert served, "a worker that served requests has a live gauge file"
    gone = min(served)
    os.kill(gone, signal.SIGTERM)  # the master replaces it and runs child_exit
    wait_until(
        "child_exit to drop the exited worker's live gauges",
        lambda: gone not in gunicorn.worker_pids(),
        gunicorn.log_path,
    )
    wait_http(gunicorn.url("/healthz"))  # one more, to a live worker
    assert gunicorn.counted() == before + 31, "the exited worker's requests still count"
    in_progress = 'airlock_http_requests_in_progress{surface="metrics"} 1.0'
    assert in_progress in gunicorn.get("/metrics").splitlines(), "only the scrape itself"
    log_lines = [line for line in gunicorn.log_path.read_text().splitlines() if line]
    access = [json.loads(line) for line in log_lines if '"gateway.access"' in line]
    assert len(access) >= 31
    booted = [json.loads(line) for line in log_lines if "Booting worker" in line]
    assert booted and booted[0]["logger"] == "gunicorn.error", "gunicorn's own lines are JSON"


def test_blobs_download_whole_through_gunicorn_with_their_bodies_corked(
    gunicorn: Gunicorn, tmp_path: Path
) -> None:
    """Under gunicorn /blobs corks the socket for the body (TCP_CORK) and uncorks it when the
    file closes: each file arrives whole, and the keep-alive connection goes on serving."""
    settings = load_settings(
        {
            "AIRLOCK_DATABASE_URL": f"sqlite:///{tmp_path / 'airlock.db'}",
            "AIRLOCK_SECRET_KEY": "gunicorn-test",
        },
        data_dir=tmp_path,
    )
    services = build_airlock(settings)
    try:
        hub = make_hub(create_app(airlock=services).test_client(), World(services))
    finally:
        services.close()
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn.port, timeout=10)
    try:
        for name in ("model.safetensors", "config.json", "model.safetensors"):
            conn.request("GET", f"/{REPO}/resolve/main/{name}", headers=bearer(hub.researcher))
            redirect = conn.getresponse()
            redirect.read()
            assert redirect.status == 302, redirect.status
            signed = urlsplit(redirect.headers["Location"])
            conn.request("GET", f"{signed.path}?{signed.query}")
            blob = conn.getresponse()
            data = blob.read()
            assert blob.status == 200 and sha256(data) == sha256(FILES[name]), name
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
