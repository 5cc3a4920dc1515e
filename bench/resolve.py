"""Benchmark the Hub resolve path and /blobs downloads against baselines measured in the same run.

1. Requests/s of /resolve (HEAD: authorize and answer metadata; GET: authorize, charge, audit
   a ticket, 302 to a signed URL, not followed) against a bare Flask route served by the same
   gunicorn configuration and loaded by the same client. Target: resolve >= 0.3 x bare.
2. MB/s of a large signed /blobs download against nginx (sendfile) serving the same file.
   Target: /blobs >= 0.7 x nginx.
3. An in-process cProfile of the resolve path: where one request's time goes.

Figures are printed, never asserted: a missed target prints MISSED and still exits 0; the exit
status is non-zero only when the benchmark itself fails (a server that does not start, error
responses under load). Only loopback is used; every run is bounded in time and count, and every
process started here is stopped before exit.

    make bench                     # = .venv/bin/python bench/resolve.py
    .venv/bin/python bench/resolve.py --duration 5 --blob-mib 256 --no-postgres
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import harness
import loadgen
from harness import BenchError, ServerConfig
from profile_resolve import profile_resolve, report
from world import BIG_FILE, SMALL_FILE, World, build_world

RESOLVE_TARGET = 0.3
BLOB_TARGET = 0.7
MB = 1_000_000
DEFAULT_PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class Rate:
    """One load run's outcome, whichever client measured it."""

    label: str
    rps: float
    requests: int
    p50_ms: float | None
    p99_ms: float | None
    bad: int
    client: str

    def line(self, baseline: Rate | None = None) -> str:
        """A report line, with the ratio to `baseline` and the verdict when given."""
        lat = f"p50 {_ms(self.p50_ms)}  p99 {_ms(self.p99_ms)}"
        count = f"({self.requests} req, {self.client})"
        text = f"  {self.label:34s} {self.rps:8.0f} req/s  {lat}  {count}"
        if self.bad:
            text += f"  INVALID: {self.bad} error responses or socket errors"
        if baseline is not None and baseline.rps:
            ratio = self.rps / baseline.rps
            verdict = "OK" if ratio >= RESOLVE_TARGET else "MISSED"
            text += f"\n  {'':34s} ratio {ratio:.3f} x bare (target >= {RESOLVE_TARGET}) {verdict}"
        return text


def _ms(value: float | None) -> str:
    return f"{value:7.2f} ms" if value is not None else "    n/a   "


class Bench:
    """One benchmark run: options, scratch directory, and the errors seen so far."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.config = ServerConfig(args.workers, args.threads)
        self.errors: list[str] = []

    def env(self, world: World) -> dict[str, str]:
        """The servers' environment: ours, minus any AIRLOCK_* of the calling shell."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
        return {**inherited, **world.env}

    @contextmanager
    def gateway(self, world: World) -> Iterator[harness.Server]:
        """The real gateway (`gateway.app:create_app()`) under gunicorn."""
        with harness.gunicorn(
            "gateway.app:create_app()",
            config=self.config,
            env=self.env(world),
            workdir=self.workdir,
        ) as server:
            yield server

    @contextmanager
    def bare(self, world: World) -> Iterator[harness.Server]:
        """The bare Flask baseline under the same gunicorn configuration."""
        with harness.gunicorn(
            "bare:create_app()",
            config=self.config,
            env=self.env(world),
            workdir=self.workdir,
            pythonpath=str(harness.BENCH_DIR),
        ) as server:
            yield server

    def load(self, label: str, method: str, url: str, headers: dict[str, str]) -> Rate:
        """One bounded load run: wrk for GET when installed, the Python client otherwise."""
        conns, duration = self.args.connections, self.args.duration
        if method == "GET" and harness.have("wrk"):
            found = harness.wrk(url, headers=headers, connections=conns, duration=duration)
            rate = Rate(
                label,
                found.rps,
                found.requests,
                found.p50_ms,
                found.p99_ms,
                found.bad_status + found.socket_errors,
                "wrk",
            )
        else:
            result = loadgen.run(method, url, headers=headers, connections=conns, duration=duration)
            bad = result.errors + sum(n for s, n in result.statuses.items() if s >= 400)
            rate = Rate(
                label,
                result.rps,
                result.requests,
                result.percentile_ms(0.5),
                result.percentile_ms(0.99),
                bad,
                "python client",
            )
        if rate.bad:
            self.errors.append(f"{label}: {rate.bad} error responses or socket errors")
        return rate


def check(reply: harness.Reply, expected: int, what: str) -> harness.Reply:
    """Fail the run when a pre-flight request does not answer as the benchmark assumes."""
    if reply.status != expected:
        raise BenchError(f"{what} answered {reply.status}, expected {expected}: {reply.headers}")
    return reply


def resolve_rates(
    bench: Bench, world: World, server: harness.Server, bare_server: harness.Server | None
) -> list[Rate]:
    """HEAD and GET resolve against the gateway, each after the bare baseline if given."""
    auth = {"Authorization": f"Bearer {world.researcher_token}"}
    path = world.resolve_path(SMALL_FILE)
    gateway, bare = server.url, bare_server.url if bare_server else None
    check(harness.fetch("HEAD", gateway + path, auth), 200, "HEAD resolve")
    check(harness.fetch("GET", gateway + path, auth), 302, "GET resolve")
    db = "postgresql" if "AIRLOCK_DATABASE_URL" in world.env else "sqlite"
    rates = []
    for method in ("HEAD", "GET"):
        if bare is not None:
            check(harness.fetch(method, bare + path, auth), 200, f"bare {method}")
            rates.append(bench.load(f"{method} bare Flask", method, bare + path, auth))
        rates.append(bench.load(f"{method} resolve ({db})", method, gateway + path, auth))
    return rates


def print_resolve(rates: list[Rate], baselines: dict[str, Rate]) -> None:
    """Each rate, with its ratio to the bare baseline of the same method."""
    for rate in rates:
        method = rate.label.split()[0]
        is_bare = "bare" in rate.label
        print(rate.line(None if is_bare else baselines.get(method)))


@dataclass(frozen=True)
class Downloads:
    """Sequential full downloads of one URL."""

    label: str
    speeds: list[float]  # MB/s, one per download
    cpu: tuple[float, float]  # the server's user and system CPU seconds over the downloads

    def line(self, baseline: Downloads | None = None) -> str:
        """Best and median MB/s, and the ratio of bests to the baseline when given."""
        best, median = max(self.speeds), statistics.median(self.speeds)
        text = f"  {self.label:34s} best {best:7.0f} MB/s  median {median:7.0f} MB/s"
        text += f"  (server CPU: user {self.cpu[0]:.2f} s, sys {self.cpu[1]:.2f} s)"
        if baseline is not None:
            ratio = best / max(baseline.speeds)
            median_ratio = median / statistics.median(baseline.speeds)
            verdict = "OK" if ratio >= BLOB_TARGET else "MISSED"
            text += (
                f"\n  {'':34s} ratio {ratio:.3f} x nginx best, {median_ratio:.3f} median "
                f"(target >= {BLOB_TARGET}) {verdict}"
            )
        return text


def download_alternately(targets: list[tuple[str, str, int]], count: int) -> list[Downloads]:
    """A warm-up download of each (label, url, server pgid), then `count` timed rounds."""
    speeds: dict[str, list[float]] = {label: [] for label, _, _ in targets}
    before = {}
    for label, url, pgid in targets:
        harness.curl_download(url)
        before[label] = harness.group_cpu(pgid)
    for _ in range(count):
        for label, url, _ in targets:
            size, seconds = harness.curl_download(url)
            speeds[label].append(size / seconds / MB)
    found = []
    for label, _, pgid in targets:
        after, start = harness.group_cpu(pgid), before[label]
        found.append(Downloads(label, speeds[label], (after[0] - start[0], after[1] - start[1])))
    return found


def blob_downloads(
    bench: Bench, world: World, gateway: harness.Server
) -> tuple[Downloads | None, Downloads]:
    """nginx (when installed) and /blobs serving the same stored file, measured alternately."""
    assert world.big_file is not None
    auth = {"Authorization": f"Bearer {world.researcher_token}"}
    redirect = check(
        harness.fetch("GET", gateway.url + world.resolve_path(BIG_FILE), auth), 302, "GET big file"
    )
    signed = redirect.headers["location"]
    if not urlsplit(signed).path.startswith("/blobs/"):
        raise BenchError(f"resolve redirected outside /blobs: {signed}")
    head = check(harness.fetch("HEAD", signed), 200, "HEAD signed blob")
    size = world.big_file.stat().st_size
    if int(head.headers.get("content-length", -1)) != size:
        raise BenchError(f"/blobs announces {head.headers.get('content-length')} bytes, not {size}")
    targets = [("/blobs (gunicorn, signed URL)", signed, gateway.pgid)]
    with ExitStack() as stack:
        if harness.nginx_binary() is not None:
            ngx = stack.enter_context(
                harness.nginx(world.big_file, workers=bench.args.workers, workdir=bench.workdir)
            )
            targets.insert(0, ("nginx (sendfile on)", ngx.url, ngx.pgid))
        found = download_alternately(targets, bench.args.downloads)
    return (found[0], found[1]) if len(found) == 2 else (None, found[0])


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str | None]:
    """A throwaway database on the local server (None when unreachable); dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"airlock_bench_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError:
        admin.dispose()
        yield None
        return
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are what `make bench` runs."""
    cpus = os.cpu_count() or 2
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=cpus, help="gunicorn (and nginx) workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn gthread threads")
    parser.add_argument("--blob-mib", type=int, default=1024, help="size of the blob (0: skip)")
    parser.add_argument("--downloads", type=int, default=5, help="timed downloads per server")
    parser.add_argument("--profile-requests", type=int, default=500, help="0: skip profiling")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL line")
    parser.add_argument(
        "--postgres-admin-url",
        default=os.environ.get("AIRLOCK_TEST_POSTGRES_URL", DEFAULT_PG_ADMIN),
        help="a database URL on the server where a throwaway database is created",
    )
    args = parser.parse_args(argv)
    if not 0 < args.duration <= 120 or not 0 < args.connections <= 256:
        parser.error("--duration must be in (0, 120] and --connections in (0, 256]")
    if not 0 <= args.downloads <= 50 or not 0 <= args.blob_mib <= 8192:
        parser.error("--downloads must be in [0, 50] and --blob-mib in [0, 8192]")
    return args


def run(bench: Bench) -> None:
    """Every benchmark in order, printing as it goes."""
    args = bench.args
    print(f"machine: {harness.machine('gunicorn', 'Flask', 'SQLAlchemy')}")
    print(
        f"servers: {bench.config.describe()} for both apps; {args.connections} keep-alive "
        f"connections, {args.duration:.0f} s per run; HEAD by the Python client, GET by "
        f"{'wrk -t1' if harness.have('wrk') else 'the Python client'}; all on 127.0.0.1"
    )
    print(
        f"background: {harness.machine_busy():.2f} of {os.cpu_count()} CPUs busy before start "
        "(other tenants of this machine; figures are ratios to a same-run baseline for this)"
    )
    started = time.monotonic()
    world = build_world(
        bench.workdir / "sqlite", database_url=None, big_bytes=args.blob_mib * 2**20
    )
    print(f"seeded demo world in {time.monotonic() - started:.1f} s ({bench.workdir})\n")
    print("[resolve] requests/s, same server config and client for both apps")
    with bench.bare(world) as bare, bench.gateway(world) as gateway:
        rates = resolve_rates(bench, world, gateway, bare)
        baselines = {r.label.split()[0]: r for r in rates if "bare" in r.label}
        print_resolve(rates, baselines)
        if world.big_file is not None and args.downloads:
            print(f"\n[blobs] {world.big_file.stat().st_size / 2**30:.2f} GiB, curl -o /dev/null")
            nginx, blobs = blob_downloads(bench, world, gateway)
            if nginx is None:
                print("  nginx: not installed, no baseline (apt-get install nginx)")
            else:
                print(nginx.line())
            print(blobs.line(nginx))
    if not args.no_postgres:
        print()
        run_postgres(bench, baselines)
    if args.profile_requests:
        print(f"\n[profile] cProfile of {args.profile_requests} in-process requests (SQLite)")
        for method in ("HEAD", "GET"):
            found = profile_resolve(
                world.env,
                world.researcher_token,
                world.resolve_path(SMALL_FILE),
                method=method,
                requests=args.profile_requests,
            )
            print(report(found))


def run_postgres(bench: Bench, baselines: dict[str, Rate]) -> None:
    """The resolve runs again on a throwaway PostgreSQL database, against this run's bare."""
    with postgres_database(bench.args.postgres_admin_url) as url:
        if url is None:
            print("[resolve/postgresql] skipped: PostgreSQL unreachable")
            return
        print("[resolve/postgresql] same runs, database-per-run on the local server")
        world = build_world(bench.workdir / "postgres", database_url=url, big_bytes=0)
        with bench.gateway(world) as gateway:
            print_resolve(resolve_rates(bench, world, gateway, None), baselines)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Run, report, clean up; 1 on errors (never on missed targets)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on TERM as on Ctrl-C
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background
        signal.signal(signal.SIGINT, _interrupt)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="airlock-bench-")))
        bench = Bench(args, workdir)
        try:
            run(bench)
        except BenchError as exc:
            print(f"\nERROR: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            return 130
    if bench.errors:
        print("\nERROR: " + "; ".join(bench.errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
