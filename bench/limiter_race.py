"""The limiter race harness, shared by bench/ratelimit.py and tests/services/test_limiter_race.py.

Threads call one `attempt` from a common start until each is refused a few times in a row (or
its time is up), counting admissions and limiter errors; `in_processes` runs such a race in
several spawned processes that start together. The race measures a limiter rather than being
part of one, so it lives here, beside the benchmark, and the test imports it from `bench`.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from gateway.ratelimit import LimiterUnavailable

STOP_AFTER_REFUSALS = 5
# Spawned interpreters import for about a second before they can race.
SPAWN_HEAD_START = 1.5

T = TypeVar("T")


def hammer(
    attempt: Callable[[], bool],
    threads: int,
    seconds: float,
    stop_after: int = STOP_AFTER_REFUSALS,
) -> tuple[int, int]:
    """Admissions and limiter errors of `threads` threads calling `attempt` from one start."""
    start = threading.Barrier(threads)
    counts: list[tuple[int, int]] = []

    def worker() -> None:
        admitted = errors = refusals = 0
        start.wait()
        deadline = time.monotonic() + seconds
        while refusals < stop_after and time.monotonic() < deadline:
            try:
                allowed = attempt()
            except LimiterUnavailable:
                errors += 1
                continue
            admitted += allowed
            refusals = 0 if allowed else refusals + 1
        counts.append((admitted, errors))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sum(a for a, _ in counts), sum(e for _, e in counts)


def in_processes(target: Callable[..., T], args: tuple[object, ...], processes: int) -> list[T]:
    """`target(*args, start_at)` in `processes` spawned processes; each should call
    `wait_for(start_at)` once set up, so that all of them race together."""
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + SPAWN_HEAD_START
    with context.Pool(processes) as pool:
        return pool.starmap(target, [(*args, start_at)] * processes)


def wait_for(start_at: float) -> None:
    """Sleep until the common start time (a wall-clock time: the processes share no clock)."""
    time.sleep(max(0.0, start_at - time.time()))
