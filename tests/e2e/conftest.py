"""The live demo server shared by the end-to-end tests of one module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.e2e.live import ROOT, Server, wait_healthy
from tests.ports import free_port
from tests.processes import stop_process


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("hub-e2e")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    command = [sys.executable, "-m", "gateway.cli", "demo", "--data-dir", str(tmp / "data")]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
    try:
        wait_healthy(endpoint, process, log)
        demo = json.loads((tmp / "data" / "demo.json").read_text())
        assert demo["endpoint"] == endpoint
        yield Server(endpoint, demo["tokens"], tmp)
    finally:
        stop_process(process)
