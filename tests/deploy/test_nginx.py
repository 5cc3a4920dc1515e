"""deploy/nginx.conf: nginx accepts it, and in front of a recording upstream it strips a spoofed
country, passes request ids, takes large bodies, hides /metrics and never logs query strings."""

from __future__ import annotations

import http.client
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, require, wait_http
from tests.ports import free_port
from tests.processes import stop_process

UPSTREAM = "server gateway:8000;"
SIGNATURE = "c2lnbmF0dXJlLW5vdC1mb3ItbG9ncw"


def render(prefix: Path, upstream_port: int, listen_port: int) -> Path:
    """deploy/nginx.conf with a test upstream, listen port and every path inside `prefix`."""
    text = (DEPLOY / "nginx.conf").read_text()
    assert text.count(UPSTREAM) == 1 and text.count("listen 8080;") == 1
    text = text.replace(UPSTREAM, f"server 127.0.0.1:{upstream_port};")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{listen_port};")
    text = text.replace("/tmp/", f"{prefix}/").replace("/dev/stdout", f"{prefix}/access.log")
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return conf


@dataclass
class Seen:
    """What the upstream received: path, headers and body size of each request."""

    requests: list[tuple[str, dict[str, str], int]] = field(default_factory=list)


def recording_upstream(seen: Seen) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            size = int(self.headers.get("Content-Length") or 0)
            while size:
                size -= len(self.rfile.read(min(size, 1 << 20)))
            body_size = int(self.headers.get("Content-Length") or 0)
            seen.requests.append((self.path, dict(self.headers.items()), body_size))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = _record

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = require("nginx")
    conf = render(tmp_path, 18000, free_port())
    done = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


@dataclass
class Edge:
    port: int
    seen: Seen
    log: Path

    def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    nginx = require("nginx")
    seen = Seen()
    upstream = recording_upstream(seen)
    port = free_port()
    conf = render(tmp_path, upstream.server_address[1], port)
    out = (tmp_path / "nginx.out").open("wb")
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=15)
        seen.requests.clear()
        yield Edge(port, seen, tmp_path / "access.log")
    finally:
        stop_process(proc)
        out.close()
        upstream.shutdown()
        upstream.server_close()


def test_the_edge_overwrites_trust_headers_and_keeps_signatures_out_of_its_log(edge: Edge) -> None:
    path = f"/blobs/7/model.safetensors?exp=1999999999&s={SIGNATURE}"
    status, _ = edge.request(
        "GET", path, {"X-Airlock-Country": "US", "X-Request-Id": "trace-1", "X-Forwarded-For": "1"}
    )
    assert status == 200
    status, _ = edge.request("GET", "/healthz", {})
    assert status == 200
    (first_path, first, _), (_, second, _) = edge.seen.requests
    assert first_path == path, "the query reaches the gateway unchanged"
    assert "X-Airlock-Country" not in first, "a client's own country header never passes"
    assert first["X-Request-Id"] == "trace-1"
    assert first["X-Forwarded-For"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{32}", second["X-Request-Id"]), "nginx makes one up"
    log = edge.log.read_text()
    assert '"path":"/blobs/7/model.safetensors"' in log
    assert SIGNATURE not in log and "exp=" not in log


def test_the_edge_streams_large_uploads_and_hides_metrics(edge: Edge) -> None:
    body = b"x" * (3 * 1024 * 1024)  # above nginx's default 1 MB body limit
    status, _ = edge.request("POST", "/api/v1/uploads", {}, body)
    assert status == 200
    assert edge.seen.requests[-1][2] == len(body)
    status, _ = edge.request("GET", "/metrics", {})
    assert status == 404
    assert all(p != "/metrics" for p, _, _ in edge.seen.requests)
