"""Benchmark the inference gateway against calling its upstream directly and against LiteLLM's
proxy, all in one run against the same upstream.

The demo world (SQLite, or a throwaway PostgreSQL database with --postgres) with acme/tiny-llm
wired to the reference upstream (`airlock dev-upstream`, its own process); the gateway under
gunicorn; LiteLLM's proxy (from .venv-litellm, `make bench-litellm`) with uvicorn and as many
worker processes as the gateway, pointed at the same upstream as an OpenAI-compatible provider.
Both gateways enforce a bearer key and limits on every request: the demo tier's limits lifted far
above what a run can use, so the limiter is consulted and charged but never refuses.

1. Latency: sequential non-streaming chat completions over one keep-alive connection per path,
   each gateway's calls alternating with direct calls so both see the same machine load: p50/p99
   and the added latency of each gateway (target: Airlock's added p50 <= 2 ms).
2. Throughput: the same request from a fixed number of keep-alive connections for a fixed time,
   rounds alternating between the paths: requests/s (median of rounds) and each gateway's own
   CPU per request (target: Airlock >= 1.5 x LiteLLM's requests/s).

Figures are printed, never asserted; the exit status is non-zero only when the set-up fails.

    make bench-inference   # = .venv/bin/python bench/inference.py
    .venv/bin/python bench/inference.py --requests 300 --duration 5 --rounds 3 --postgres
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import harness
import litellm_proxy
import loadgen
import yaml
from harness import BenchError, ServerConfig
from litellm_proxy import KeyLimits
from resolve import DEFAULT_PG_ADMIN, postgres_database
from world import environment

from gateway.db.migrate import upgrade
from gateway.demo import REPO, demo_policy, seed, wire_upstream
from gateway.services.container import build_airlock
from gateway.settings import load_settings

TARGET_ADDED_P50_MS = 2.0
TARGET_THROUGHPUT_RATIO = 1.5
WARMUP = 20
# Far above what a run can use, but configured: every request is reserved, charged and settled.
RPM, TPM, CONCURRENT = 10**7, 10**9, 10**6
LIFTED = {
    "requests_per_minute": RPM,
    "tokens_per_minute": TPM,
    "tokens_per_day": 10**10,
    "concurrent_requests": CONCURRENT,
}
BODY = json.dumps(
    {"model": REPO, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8}
).encode()
PATH = "/v1/chat/completions"


@dataclass
class Route:
    """One way to reach the upstream: its server, the headers it needs, what was measured."""

    label: str
    url: str
    pgid: int
    headers: dict[str, str]
    latencies: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)  # direct calls alternating with these
    rounds: list[Throughput] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The server's loopback port."""
        return int(self.url.rsplit(":", 1)[1])


@dataclass(frozen=True)
class Throughput:
    """One load round on one path."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_ms_per_request: float
    bad: int


def main() -> int:
    """Run the benchmark; non-zero only when the set-up itself fails."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="sequential, per path")
    parser.add_argument("--workers", type=int, default=2, help="processes, for both gateways")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive, under load")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="load rounds per path")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        nargs="?",
        const=os.environ.get("AIRLOCK_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN),
        help="Airlock on a throwaway PostgreSQL database of this server (default: SQLite)",
    )
    args = parser.parse_args()
    config = ServerConfig(args.workers, args.threads)
    busy = harness.machine_busy()
    with tempfile.TemporaryDirectory(prefix="airlock-bench-inference-") as tmp:
        paths = _run(Path(tmp), args, config, _litellm_note(args))
    print(f"machine: {busy:.1f} of {os.cpu_count()} CPUs busy with other work before the run")
    _report(paths, args, config)
    return 0


def _litellm_note(args: argparse.Namespace) -> str | None:
    """Why LiteLLM is not measured in this run, or None when it is."""
    if args.no_litellm:
        return "skipped (--no-litellm)"
    if not litellm_proxy.available():
        venv = litellm_proxy.VENV.name
        return f"not measured: {venv} is absent; build it with {litellm_proxy.BUILD_HINT}"
    return None


def _run(
    root: Path, args: argparse.Namespace, config: ServerConfig, skip_litellm: str | None
) -> list[Route]:
    """Start the upstream and both gateways, measure every path, stop them all."""
    with ExitStack() as stack:
        port = harness.free_port()
        upstream_cmd = [sys.executable, "-m", "gateway.cli", "dev-upstream", "--port", str(port)]
        proc = stack.enter_context(
            harness._process(upstream_cmd, env=None, cwd=root, log=root / "upstream.log")
        )
        upstream = f"http://{harness.HOST}:{port}/v1"
        _wait(port)
        database = None
        if args.postgres:
            database = stack.enter_context(postgres_database(args.postgres))
            if database is None:
                raise BenchError(f"PostgreSQL unreachable at {args.postgres}")
        token = _world(root, upstream, database)
        gateway = stack.enter_context(
            harness.gunicorn(
                "gateway.app:create_app()",
                config=config,
                env=environment(root, database),
                workdir=root,
            )
        )
        paths = [
            Route("upstream directly", f"http://{harness.HOST}:{port}", proc.pid, {}),
            Route("through Airlock", gateway.url, gateway.pgid, _bearer(token)),
        ]
        if skip_litellm is None:
            key = "sk-bench-" + secrets.token_hex(16)
            proxy = stack.enter_context(
                litellm_proxy.serve(
                    model=REPO,
                    upstream=upstream,
                    key=key,
                    limits=KeyLimits(RPM, TPM, CONCURRENT),
                    workers=config.workers,
                    workdir=root,
                )
            )
            paths.append(Route("through LiteLLM", proxy.url, proxy.pgid, _bearer(key)))
        for path in paths[1:]:
            _preflight(path)
        _latency(paths, args.requests)
        _throughput(paths, args)
        return paths


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _world(root: Path, upstream: str, database: str | None) -> str:
    """Seed the demo, lift its inference limits, wire the upstream; the researcher's token."""
    settings = load_settings(environment(root, database))
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
    raise BenchError("the reference upstream did not start")


def _preflight(path: Route) -> None:
    """A gateway must refuse a wrong key and answer ours with its rate-limit headers."""
    conn = _connect(path.port)
    status, _ = _post(conn, {"Authorization": "Bearer sk-wrong"})
    if status != 401:
        raise BenchError(f"{path.label}: a wrong key answered {status}, expected 401")
    status, headers = _post(conn, path.headers)
    limited = [h for h in headers if h.startswith("x-ratelimit-") and "remaining-requests" in h]
    if status != 200 or not limited:
        raise BenchError(f"{path.label}: {status} without rate-limit headers: {sorted(headers)}")
    conn.close()


def _post(conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[int, set[str]]:
    conn.request("POST", PATH, body=BODY, headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    response.read()
    return response.status, {k.lower() for k, _ in response.getheaders()}


def _latency(paths: list[Route], count: int) -> None:
    """Each gateway in turn, its calls alternating with direct ones (the direct calls made
    alongside it are its baseline); the first WARMUP of each are not counted. A gateway's
    background work (LiteLLM logs after answering) never lands in another's figures."""
    direct = paths[0]
    for gateway in paths[1:]:
        time.sleep(1.0)  # whatever the previous phase left running settles
        conns = (_connect(direct.port), _connect(gateway.port))
        for i in range(count + WARMUP):
            baseline, through = _timed(conns[0], direct), _timed(conns[1], gateway)
            if i >= WARMUP:
                gateway.direct.append(baseline)
                gateway.latencies.append(through)
        for conn in conns:
            conn.close()


def _timed(conn: http.client.HTTPConnection, path: Route) -> float:
    """Milliseconds for one request on a path, which must answer 200."""
    start = time.perf_counter()
    status, _ = _post(conn, path.headers)
    elapsed = (time.perf_counter() - start) * 1000
    if status != 200:
        raise BenchError(f"status {status} {path.label}")
    return elapsed


def _connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection without Nagle's delay (http.client writes headers and body
    separately)."""
    conn = http.client.HTTPConnection(harness.HOST, port)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _throughput(paths: list[Route], args: argparse.Namespace) -> None:
    """Rounds of closed-loop load, alternating between the paths."""
    headers = {"Content-Type": "application/json"}
    for path in paths:  # a short unmeasured round first: every worker warm, every pool filled
        _load(path, headers, args.connections, min(2.0, args.duration))
    for _ in range(args.rounds):
        for path in paths:
            before = sum(harness.group_cpu(path.pgid))
            result = _load(path, headers, args.connections, args.duration)
            cpu = sum(harness.group_cpu(path.pgid)) - before
            bad = result.errors + sum(n for s, n in result.statuses.items() if s != 200)
            per_request = 1000 * cpu / result.requests if result.requests else 0.0
            path.rounds.append(
                Throughput(
                    result.rps,
                    result.percentile_ms(0.5),
                    result.percentile_ms(0.99),
                    per_request,
                    bad,
                )
            )


def _load(
    path: Route, headers: dict[str, str], connections: int, duration: float
) -> loadgen.LoadResult:
    return loadgen.run(
        "POST",
        path.url + PATH,
        headers={**headers, **path.headers},
        body=BODY,
        connections=connections,
        duration=duration,
    )


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def _report(paths: list[Route], args: argparse.Namespace, config: ServerConfig) -> None:
    _report_latency(paths, config, "PostgreSQL" if args.postgres else "SQLite")
    _report_throughput(paths, args)
    note = _litellm_note(args)
    if note is not None:
        print(f"  through LiteLLM    {note}")


def _report_latency(paths: list[Route], config: ServerConfig, database: str) -> None:
    count = len(paths[1].latencies)
    print(f"inference: {count} sequential non-streaming chat completions per path")
    print(f"  Airlock: {config.describe()}, {database}")
    if len(paths) > 2:
        print(
            f"  LiteLLM {litellm_proxy.version()}: uvicorn --num_workers {config.workers} "
            "(custom-auth key with rpm/tpm/parallel limits, no database)"
        )
    print("  latency (alternating with direct calls)   p50         p99     added p50   added p99")
    for gateway in paths[1:]:
        direct50, direct99 = statistics.median(gateway.direct), _pct(gateway.direct, 99)
        p50, p99 = statistics.median(gateway.latencies), _pct(gateway.latencies, 99)
        name = gateway.label.split()[-1]
        print(
            f"  {'upstream directly (with ' + name + ')':40} {direct50:7.2f} ms  {direct99:7.2f} ms"
        )
        print(
            f"  {gateway.label:40} {p50:7.2f} ms  {p99:7.2f} ms"
            f"  {p50 - direct50:7.2f} ms  {p99 - direct99:7.2f} ms"
        )
    airlock = paths[1]
    added = statistics.median(airlock.latencies) - statistics.median(airlock.direct)
    verdict = "met" if added <= TARGET_ADDED_P50_MS else "MISSED"
    print(f"  Airlock added p50 {added:.2f} ms (target <= {TARGET_ADDED_P50_MS} ms: {verdict})")


def _report_throughput(paths: list[Route], args: argparse.Namespace) -> None:
    print(
        f"throughput: POST {PATH}, {args.connections} keep-alive connections, "
        f"{args.rounds} x {args.duration:.0f} s rounds per path (median round; best)"
    )
    print("  path                 req/s   (best)     p50        p99     server CPU/req")
    for path in paths:
        mid = _median_round(path.rounds)
        best = max(r.rps for r in path.rounds)
        line = (
            f"  {path.label:18} {mid.rps:7.0f}  ({best:5.0f})  {_ms(mid.p50_ms)}  "
            f"{_ms(mid.p99_ms)}  {mid.cpu_ms_per_request:6.2f} ms"
        )
        bad = sum(r.bad for r in path.rounds)
        if bad:
            line += f"  INVALID: {bad} errors or non-200 responses"
        print(line)
    if len(paths) > 2:
        airlock, litellm = _median_round(paths[1].rounds), _median_round(paths[2].rounds)
        ratio = airlock.rps / litellm.rps if litellm.rps else float("inf")
        verdict = "met" if ratio >= TARGET_THROUGHPUT_RATIO else "MISSED"
        cpu = litellm.cpu_ms_per_request / airlock.cpu_ms_per_request
        print(
            f"  Airlock / LiteLLM throughput {ratio:.2f}x "
            f"(target >= {TARGET_THROUGHPUT_RATIO}x: {verdict}); CPU per request {cpu:.2f}x less"
        )


def _median_round(rounds: list[Throughput]) -> Throughput:
    return sorted(rounds, key=lambda r: r.rps)[len(rounds) // 2]


def _ms(value: float | None) -> str:
    return f"{value:6.2f} ms" if value is not None else "   n/a   "


if __name__ == "__main__":
    sys.exit(main())
