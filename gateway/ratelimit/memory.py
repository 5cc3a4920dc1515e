"""In-process limiter for the embedded default (one gateway process), same contract as Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from gateway.observability.metrics import timed_admission
from gateway.ratelimit.base import (
    Dimension,
    DimensionState,
    Lease,
    LimitResult,
    decide,
    gcra_adjust,
    gcra_check,
    gcra_only,
    gcra_state,
    lease_retry,
    lease_state,
    split,
)

SWEEP_EVERY = 1024


class MemoryLimiter:
    """GCRA per dimension and a lease set per concurrency key; all-or-nothing under one lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._calls = 0

    @timed_admission
    def acquire(self, dimensions: Sequence[Dimension]) -> LimitResult:
        """Admit if every dimension has room and every lease a free slot; else consume nothing."""
        gcra, leases = split(dimensions)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            plans = [gcra_check(d, self._tat.get(d.key), now) for d in gcra]
            held = [self._live(lease.key, now) for lease in leases]
            waits = [p.retry_after for p in plans] + [
                lease_retry(lease, list(h.values()), lease.id in h, now)
                for lease, h in zip(leases, held, strict=True)
            ]
            admit = not any(waits)
            if admit:
                for dim, plan in zip(gcra, plans, strict=True):
                    self._tat[dim.key] = plan.new_tat
                for lease, h in zip(leases, held, strict=True):
                    h[lease.id] = now + lease.ttl
            tats = [p.new_tat if admit else p.tat for p in plans]
            states = [gcra_state(d, tat, now) for d, tat in zip(gcra, tats, strict=True)]
            states += [
                lease_state(ls, len(h), min(h.values(), default=None), now)
                for ls, h in zip(leases, held, strict=True)
            ]
            return decide(dimensions, [*gcra, *leases], states, waits)

    def release(self, lease: Lease) -> None:
        """Give a lease back; unknown or expired leases are ignored."""
        with self._lock:
            self._leases.get(lease.key, {}).pop(lease.id, None)

    def adjust(self, dimension: Dimension, delta: int) -> DimensionState:
        """Charge `delta` more units to `dimension` (negative refunds, never beyond full)."""
        dimension = gcra_only(dimension)
        with self._lock:
            now = self._clock()
            tat = gcra_adjust(dimension, self._tat.get(dimension.key), now, delta)
            if tat > now:
                self._tat[dimension.key] = tat
            else:
                self._tat.pop(dimension.key, None)
            return gcra_state(dimension, tat, now)

    def close(self) -> None:
        """Nothing to release in process."""

    def _live(self, key: str, now: float) -> dict[str, float]:
        """The lease set of `key` with expired leases dropped."""
        held = self._leases.setdefault(key, {})
        for lease_id in [i for i, expiry in held.items() if expiry <= now]:
            del held[lease_id]
        return held

    def _sweep(self, now: float) -> None:
        """Forget idle keys now and then, as Redis expires them (a full key refills to nothing)."""
        self._calls += 1
        if self._calls % SWEEP_EVERY:
            return
        self._tat = {k: tat for k, tat in self._tat.items() if tat > now}
        live = {k: {i: e for i, e in h.items() if e > now} for k, h in self._leases.items()}
        self._leases = {k: h for k, h in live.items() if h}
