"""S3-compatible HTTP servers on loopback for the tests: moto's server mode and s3rver (Node)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.ports import free_port
from tests.processes import stop_process

ROOT = Path(__file__).resolve().parents[1]
S3RVER_DIR = ROOT / "tests" / "s3rver"
S3RVER_START = S3RVER_DIR / "start.js"
S3RVER_PACKAGE = S3RVER_DIR / "node_modules" / "@20minutes" / "s3rver"


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible endpoint and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    log: Path | None = None

    def client(self) -> Any:
        """A plain boto3 client of the server (path-style, like our storage uses here)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self) -> str:
        """A fresh, empty bucket for one test."""
        name = f"airlock-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "blobs") -> dict[str, str]:
        """The AIRLOCK_* variables that point a deployment at this server."""
        return {
            "AIRLOCK_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "AIRLOCK_S3_ENDPOINT_URL": self.endpoint,
            "AIRLOCK_S3_REGION": self.region,
            "AIRLOCK_S3_ADDRESSING_STYLE": "path",
            "AIRLOCK_S3_ACCESS_KEY_ID": self.access_key,
            "AIRLOCK_S3_SECRET_ACCESS_KEY": self.secret_key,
        }

    def overrides(self, bucket: str, prefix: str = "blobs") -> dict[str, Any]:
        """Settings overrides that point a gateway at this server (what `env` says, typed)."""
        return {
            "storage_url": f"s3://{bucket}/{prefix}",
            "s3_endpoint_url": self.endpoint,
            "s3_region": self.region,
            "s3_addressing_style": "path",
            "s3_access_key_id": self.access_key,
            "s3_secret_access_key": self.secret_key,
        }


@contextmanager
def moto_server(log: Path) -> Iterator[S3Server]:
    """`python -m moto.server` on a free loopback port, stopped afterwards."""
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _process(argv, log, port, "moto server") as endpoint:
        yield S3Server(endpoint, "testing", "testing", log=log)


def part_puts(server: S3Server) -> int:
    """How many UploadPart requests moto has logged so far (its werkzeug access log)."""
    assert server.log is not None
    lines = server.log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if '"PUT /' in line and "partNumber=" in line)


@contextmanager
def s3rver(data_dir: Path, log: Path) -> Iterator[S3Server]:
    """s3rver (checks SigV4 presigned signatures and expiry) on a free loopback port."""
    node = shutil.which("node")
    if node is None or not S3RVER_PACKAGE.exists():
        message = (
            "s3rver is not installed: it needs Node.js and npm; run `npm ci --prefix tests/s3rver`"
            " (make test does)"
        )
        if os.environ.get("CI"):
            raise RuntimeError(message)
        pytest.skip(message)
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [node, str(S3RVER_START), "127.0.0.1", str(port), str(data_dir)]
    with _process(argv, log, port, "s3rver") as endpoint:
        yield S3Server(endpoint, "S3RVER", "S3RVER", log=log)


@contextmanager
def _process(argv: list[str], log: Path, port: int, name: str) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AIRLOCK_"))}
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        _wait_listening(process, port, log, name)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def _wait_listening(process: subprocess.Popen[bytes], port: int, log: Path, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{name} did not listen on port {port} within 30 s:\n{log.read_text()}")
