"""Benchmark the inference gateway's added latency against calling its upstream directly.

The demo world (SQLite) with acme/tiny-llm wired to the reference upstream (`airlock
dev-upstream`, its own process); the gateway under gunicorn. Sequential non-streaming chat
completions over one keep-alive connection each way, alternating direct and gateway calls so
both see the same machine load. Prints p50/p99 of each and the gateway's added latency (target:
added p50 <= 2 ms). Figures are printed, never asserted. The comparison with LiteLLM's proxy
(issue 5) is not here yet.

    .venv/bin/python bench/inference.py --requests 500
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import harness
import yaml
from harness import ServerConfig
from world import environment

from gateway.db.migrate import upgrade
from gateway.demo import REPO, demo_policy, seed, wire_upstream
from gateway.services.container import build_airlock
from gateway.settings import load_settings

TARGET_ADDED_P50_MS = 2.0
LIFTED = {"requests_per_minute": 10**7, "tokens_per_minute": 10**9, "tokens_per_day": 10**10}
BODY = {"model": REPO, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}


def main() -> int:
    """Run the benchmark; non-zero only when the set-up itself fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-inference-") as tmp:
        root = Path(tmp)
        port = harness.free_port()
        upstream_cmd = [sys.executable, "-m", "gateway.cli", "dev-upstream", "--port", str(port)]
        with harness._process(upstream_cmd, env=None, cwd=root, log=root / "upstream.log"):
            upstream = f"http://{harness.HOST}:{port}/v1"
            _wait(port)
            token = _world(root, upstream)
            config = ServerConfig(args.workers, args.threads)
            env = environment(root, None)
            with harness.gunicorn(
                "gateway.app:create_app()", config=config, env=env, workdir=root
            ) as gateway:
                gport = int(gateway.url.rsplit(":", 1)[1])
                direct, via = _measure(port, gport, token, args.requests)
    _report(direct, via, config)
    return 0


def _world(root: Path, upstream: str) -> str:
    """Seed the demo, lift its inference limits, wire the upstream; the researcher's token."""
    settings = load_settings(environment(root, None))
    upgrade(settings.database_url)
    airlock = build_airlock(settings)
    try:
        tokens = seed(airlock, root)
        document = yaml.safe_load(demo_policy())
        for tier in document["tiers"]:
            if "inference" in tier["grants"]:
                tier["limits"] = {**tier.get("limits", {}), **LIFTED}
        with airlock.db.session() as session:
            publisher = airlock.identity.authenticate(session, tokens["publisher"])
            airlock.policies.apply(
                session, principal=publisher, source=yaml.safe_dump(document, sort_keys=False)
            )
        wire_upstream(airlock, upstream)
    finally:
        airlock.close()
    return tokens["researcher"]


def _wait(port: int) -> None:
    for _ in range(100):
        try:
            conn = http.client.HTTPConnection(harness.HOST, port, timeout=1)
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
    raise harness.BenchError("the reference upstream did not start")


def _measure(port: int, gport: int, token: str, count: int) -> tuple[list[float], list[float]]:
    body = json.dumps(BODY).encode()
    direct, via = _connect(port), _connect(gport)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    plain = {"Content-Type": "application/json"}
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(count + 20):  # the first 20 of each warm up and are not counted
        for which, conn, sent in ((0, direct, plain), (1, via, headers)):
            start = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body=body, headers=sent)
            response = conn.getresponse()
            response.read()
            elapsed = (time.perf_counter() - start) * 1000
            if response.status != 200:
                raise harness.BenchError(
                    f"status {response.status} ({'gateway' if which else 'direct'})"
                )
            if i >= 20:
                times[which].append(elapsed)
    return times


def _connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection without Nagle's delay (http.client writes headers and body
    separately)."""
    conn = http.client.HTTPConnection(harness.HOST, port)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def _report(direct: list[float], via: list[float], config: ServerConfig) -> None:
    added = statistics.median(via) - statistics.median(direct)
    print(f"inference: {len(via)} sequential chat completions each way ({config.describe()})")
    for name, values in (("upstream directly", direct), ("through Airlock", via)):
        p50, p99 = statistics.median(values), _pct(values, 99)
        print(f"  {name:18} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    added99 = _pct(via, 99) - _pct(direct, 99)
    verdict = "met" if added <= TARGET_ADDED_P50_MS else "MISSED"
    print(
        f"  added by Airlock   p50 {added:7.2f} ms   p99 {added99:7.2f} ms"
        f"   (target p50 <= {TARGET_ADDED_P50_MS} ms: {verdict})"
    )


if __name__ == "__main__":
    sys.exit(main())
