"""Benchmark RedisLimiter.acquire against the raw Redis round trip, and race it for exactness.

1. Admissions/s and p50/p99 latency of `RedisLimiter.acquire` with 4 dimensions (requests per
   minute, tokens per minute, downloads per day, bytes per day; quotas far above the run so
   every call is admitted and charged), next to `PING` round trips through the same limiter's
   redis-py client and connection pool (`RedisLimiter.ping`), in alternating rounds. Target:
   acquire >= 0.5 x PING.
   The in-process MemoryLimiter is timed the same way for reference.
2. An exactness race: processes x threads hammer one key of quota N (a day's window) until
   each thread is refused a few times in a row; admitted must equal N. The same race runs on
   a lease key (every holder keeps its lease) and, for contrast, on a naive read-then-increment
   counter (GET, compare, INCR: two round trips, not atomic), which overshoots.

Figures are printed, never asserted; the exit status is non-zero only when the benchmark
itself fails (no Redis). Only the given Redis on loopback is used, every loop is bounded in
time, and every key the run writes (under a random prefix) is deleted at the end.

    .venv/bin/python bench/ratelimit.py
    .venv/bin/python bench/ratelimit.py --seconds 2 --processes 4 --threads 8 --quota 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version

import harness
import limiter_race
import redis

from gateway.ratelimit import Dimension, Lease, MemoryLimiter, RedisLimiter

RATIO_TARGET = 0.5
DAY = 86400
DEFAULT_URL = "redis://127.0.0.1:6379/15"


@dataclass(frozen=True)
class Timing:
    """Calls completed over a measured time, with their latencies in seconds."""

    label: str
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        """Completed calls per second."""
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        """Latency at quantile q (0..1) in milliseconds."""
        cuts = statistics.quantiles(self.latencies, n=1000, method="inclusive")
        return cuts[min(len(cuts) - 1, max(0, round(q * 1000) - 1))] * 1000

    def row(self) -> str:
        """One printed line."""
        return (
            f"{self.label:<36} {self.rate:>9.0f}/s   p50 {self.ms(0.5):.3f} ms"
            f"   p99 {self.ms(0.99):.3f} ms"
        )


def four_dimensions(n: int) -> list[Dimension]:
    """A request's dimensions as an inference call would carry them (never binding here)."""
    return [
        Dimension(f"bench:{n % 64}:rpm", "rpm", 10**9, 60),
        Dimension(f"bench:{n % 64}:tpm", "tpm", 10**12, 60, cost=1500, unit="tokens"),
        Dimension(f"bench:{n % 64}:dpd", "downloads_per_day", 10**9, DAY),
        Dimension(f"bench:{n % 64}:bpd", "bytes_per_day", 10**15, DAY, cost=4096),
    ]


def timed(call: Callable[[int], object], seconds: float) -> tuple[float, list[float]]:
    """Call `call(i)` back to back for `seconds`; the elapsed time and each call's latency."""
    latencies: list[float] = []
    clock = time.perf_counter
    started = clock()
    deadline = started + seconds
    i = 0
    while True:
        before = clock()
        if before >= deadline:
            return before - started, latencies
        call(i)
        latencies.append(clock() - before)
        i += 1


def throughput(url: str, prefix: str, seconds: float, rounds: int) -> list[Timing]:
    """PING, RedisLimiter.acquire and MemoryLimiter.acquire (4 dimensions), rounds alternating."""
    limiter = RedisLimiter(url, prefix=prefix, timeout=1.0)
    memory = MemoryLimiter()
    dims = [four_dimensions(n) for n in range(64)]
    calls: dict[str, Callable[[int], object]] = {
        "PING, the limiter's client and pool": lambda i: limiter.ping(),
        "RedisLimiter.acquire, 4 dimensions": lambda i: limiter.acquire(dims[i % 64]),
        "MemoryLimiter.acquire, 4 dimensions": lambda i: memory.acquire(dims[i % 64]),
    }
    for call in calls.values():  # warm up: connections, the script cache, the CPU caches
        timed(call, 0.2)
    spent = dict.fromkeys(calls, 0.0)
    latencies: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            elapsed, lat = timed(call, seconds / rounds)
            spent[label] += elapsed
            latencies[label] += lat
    limiter.close()
    return [Timing(label, spent[label], latencies[label]) for label in calls]


class NaiveCounter:
    """Read, compare, then increment: the textbook race this limiter exists to avoid."""

    def __init__(self, url: str, key: str, quota: int) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2)
        self.key, self.quota = key, quota

    def allowed(self) -> bool:
        if int(self.client.get(self.key) or 0) >= self.quota:
            return False
        self.client.incr(self.key)
        return True


def race_process(
    url: str, prefix: str, kind: str, quota: int, threads: int, seconds: float, start_at: float
) -> tuple[int, int]:
    """One process of a race: admissions and errors of its threads."""
    limiter = RedisLimiter(url, prefix=prefix, timeout=2.0)
    naive = NaiveCounter(url, f"{prefix}naive", quota)
    dimension = Dimension("race", "race_per_day", quota, DAY)
    attempts: dict[str, Callable[[], bool]] = {
        "gcra": lambda: limiter.acquire([dimension]).allowed,
        "lease": lambda: (
            limiter.acquire([Lease("race", "concurrent", quota, 120, id=uuid.uuid4().hex)]).allowed
        ),
        "naive": naive.allowed,
    }
    limiter_race.wait_for(start_at)
    try:
        return limiter_race.hammer(attempts[kind], threads, seconds)
    finally:
        limiter.close()
        naive.client.close()


def race(args: argparse.Namespace, prefix: str, kind: str, quota: int) -> list[tuple[int, int]]:
    """Per-process (admitted, errors) of one race."""
    job = (args.url, prefix, kind, quota, args.threads, args.race_seconds)
    return limiter_race.in_processes(race_process, job, args.processes)


def cleanup(url: str, prefix: str) -> int:
    """Delete every key under the run's prefix; how many there were."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    return len(keys)


def redis_cpu(url: str) -> float:
    """CPU seconds the Redis server has used since it started."""
    info = redis.Redis.from_url(url, socket_timeout=1).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measured(args: argparse.Namespace, prefix: str) -> tuple[list[Timing], str]:
    """The throughput timings, and how busy the machine was meanwhile and with what."""
    machine, server = harness.cpu_sample(), redis_cpu(args.url)
    own, wall = time.process_time(), time.time()
    timings = throughput(args.url, prefix, args.seconds, args.rounds)
    wall = time.time() - wall
    busy = harness.busy_between(machine, harness.cpu_sample())
    ours = (time.process_time() - own) / wall
    server = (redis_cpu(args.url) - server) / wall
    return timings, (
        f"CPUs busy meanwhile: {busy:.2f} on the machine, of which this process {ours:.2f} "
        f"and Redis {server:.2f}, other work {max(busy - ours - server, 0):.2f}\n   (round "
        f"trips take about 5 x longer on an otherwise idle machine: see docs/performance.md)"
    )


def report_throughput(timings: list[Timing], load: str) -> None:
    print("\n1. One process, one call in flight, back to back")
    for timing in timings:
        print("   " + timing.row())
    print(f"   {load}")
    ping, acquire = timings[0], timings[1]
    ratio = acquire.rate / ping.rate
    verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
    print(f"   ratio acquire / PING: {ratio:.2f}  (target >= {RATIO_TARGET}: {verdict})")
    # Medians shrug off the scheduling stalls a busy machine adds to a few calls.
    print(f"   ratio of the p50 latencies, PING / acquire: {ping.ms(0.5) / acquire.ms(0.5):.2f}")


def report_races(args: argparse.Namespace, prefix: str) -> None:
    print(
        f"\n2. Races: {args.processes} processes x {args.threads} threads on one key, each "
        f"thread until {limiter_race.STOP_AFTER_REFUSALS} refusals in a row "
        f"(at most {args.race_seconds:.0f} s)"
    )
    for kind, label, quota in (
        ("gcra", "RedisLimiter, GCRA, quota", args.quota),
        ("lease", "RedisLimiter, leases, limit", args.leases),
        ("naive", "naive GET then INCR, limit", args.quota),
    ):
        results = race(args, f"{prefix}{kind}:", kind, quota)
        admitted = sum(a for a, _ in results)
        errors = sum(e for _, e in results)
        per_process = ", ".join(str(a) for a, _ in results)
        print(
            f"   {label} {quota}: admitted {admitted} ({admitted / quota:.3f} x), "
            f"per process [{per_process}], errors {errors}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("AIRLOCK_TEST_REDIS_URL", DEFAULT_URL))
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput measurement")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds per measurement")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--quota", type=int, default=2000, help="the race's GCRA quota")
    parser.add_argument("--leases", type=int, default=500, help="the race's lease limit")
    parser.add_argument("--race-seconds", type=float, default=5.0)
    args = parser.parse_args()
    try:
        info = redis.Redis.from_url(args.url, socket_timeout=1).info("server")
    except redis.RedisError as exc:
        print(f"Redis at {args.url} is not reachable: {exc}", file=sys.stderr)
        return 1
    print(
        f"Redis {info['redis_version']} at {args.url}, redis-py {version('redis')}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"background: {harness.machine_busy(1.0):.2f} CPUs busy before start"
    )
    prefix = f"airlock:bench:{secrets.token_hex(4)}:"
    try:
        report_throughput(*measured(args, prefix))
        report_races(args, prefix)
    finally:
        print(f"\ncleaned up {cleanup(args.url, prefix)} keys under {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
