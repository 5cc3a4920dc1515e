"""In-process limiter for the embedded default (one gateway process), same contract as Redis."""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable, Sequence

from gateway.observability.metrics import timed_admission
from gateway.ratelimit.base import (
    Dimension,
    DimensionState,
    Lease,
    LimitResult,
    MonthlyQuota,
    decide,
    gcra_adjust,
    gcra_check,
    gcra_only,
    gcra_state,
    lease_retry,
    lease_state,
    month_of,
    quota_retry,
    quota_state,
    split,
)

SWEEP_EVERY = 1024


class MemoryLimiter:
    """GCRA per dimension, a monthly counter per calendar quota and a lease set per concurrency
    key; all-or-nothing under one lock. Calendar months follow `wall` (Unix seconds)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._tat: dict[str, float] = {}
        self._months: dict[str, tuple[int, int]] = {}  # key -> (month, units used in it)
        self._leases: dict[str, _LeaseSet] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self._wall = wall
        self._calls = 0

    @timed_admission
    def acquire(self, dimensions: Sequence[Dimension]) -> LimitResult:
        """Admit if every dimension has room and every lease a free slot; else consume nothing."""
        gcra, months, leases = split(dimensions)
        with self._lock:
            now = self._clock()
            self._sweep(now)
            month, until_end = month_of(self._wall()) if months else (0, 0.0)
            plans = [gcra_check(d, self._tat.get(d.key), now) for d in gcra]
            used = [self._used(q.key, month) for q in months]
            held = [self._live(lease.key, now) for lease in leases]
            waits = [p.retry_after for p in plans]
            waits += [quota_retry(q, u, until_end) for q, u in zip(months, used, strict=True)]
            waits += [
                lease_retry(lease, len(h), lease.id in h, h.expiries, now)
                for lease, h in zip(leases, held, strict=True)
            ]
            admit = not any(waits)
            if admit:
                for dim, plan in zip(gcra, plans, strict=True):
                    self._tat[dim.key] = plan.new_tat
                for i, q in enumerate(months):
                    used[i] += q.cost
                    self._months[q.key] = (month, used[i])
                for lease, h in zip(leases, held, strict=True):
                    h.take(lease.id, now + lease.ttl)
            tats = [p.new_tat if admit else p.tat for p in plans]
            states = [gcra_state(d, tat, now) for d, tat in zip(gcra, tats, strict=True)]
            states += [quota_state(q, u, until_end) for q, u in zip(months, used, strict=True)]
            states += [
                lease_state(ls, len(h), h.earliest(), now)
                for ls, h in zip(leases, held, strict=True)
            ]
            return decide(dimensions, [*gcra, *months, *leases], states, waits)

    def release(self, lease: Lease) -> None:
        """Give a lease back; unknown or expired leases are ignored."""
        with self._lock:
            self._release(lease)

    def _release(self, lease: Lease) -> None:
        held = self._leases.get(lease.key)
        if held is not None:
            held.drop(lease.id)

    def adjust(self, dimension: Dimension, delta: int) -> DimensionState:
        """Charge `delta` more units to `dimension` (negative refunds, never beyond full)."""
        dimension = gcra_only(dimension)
        with self._lock:
            return self._adjust(dimension, delta)

    def settle(self, dimensions: Sequence[Dimension], delta: int, lease: Lease | None) -> None:
        """Adjust each of `dimensions` by `delta` and give `lease` back, under one lock."""
        checked = [gcra_only(d) for d in dimensions]
        with self._lock:
            for dimension in checked:
                self._adjust(dimension, delta)
            if lease is not None:
                self._release(lease)

    def _adjust(self, dimension: Dimension, delta: int) -> DimensionState:
        """`adjust` with the lock held."""
        if isinstance(dimension, MonthlyQuota):
            month, until_end = month_of(self._wall())
            used = max(0, self._used(dimension.key, month) + delta)  # never below zero
            self._months[dimension.key] = (month, used)
            return quota_state(dimension, used, until_end)
        now = self._clock()
        tat = gcra_adjust(dimension, self._tat.get(dimension.key), now, delta)
        if tat > now:
            self._tat[dimension.key] = tat
        else:
            self._tat.pop(dimension.key, None)
        return gcra_state(dimension, tat, now)

    def close(self) -> None:
        """Nothing to release in process."""

    def _used(self, key: str, month: int) -> int:
        """Units charged to `key` in `month` (a count from an earlier month is spent)."""
        found = self._months.get(key)
        return found[1] if found is not None and found[0] == month else 0

    def _live(self, key: str, now: float) -> _LeaseSet:
        """The lease set of `key` with expired leases dropped."""
        held = self._leases.get(key)
        if held is None:
            held = self._leases[key] = _LeaseSet()
        held.prune(now)
        return held

    def _sweep(self, now: float) -> None:
        """Forget idle keys now and then, as Redis expires them (a full key refills to nothing)."""
        self._calls += 1
        if self._calls % SWEEP_EVERY:
            return
        month, _ = month_of(self._wall())
        self._tat = {k: tat for k, tat in self._tat.items() if tat > now}
        self._months = {k: m for k, m in self._months.items() if m[0] == month}
        for held in self._leases.values():
            held.prune(now)
        self._leases = {k: h for k, h in self._leases.items() if len(h)}


class _LeaseSet:
    """The live leases of one key: expiry by id, and a heap of expiries to prune in O(log n).

    The heap may hold stale entries (released or renewed leases); they are skipped when they
    reach the top, so pruning, counting and the earliest expiry never scan every lease.
    """

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._expiry

    def take(self, lease_id: str, expiry: float) -> None:
        """Hold (or renew) `lease_id` until `expiry`."""
        self._expiry[lease_id] = expiry
        heapq.heappush(self._heap, (expiry, lease_id))

    def drop(self, lease_id: str) -> None:
        """Release `lease_id` if held."""
        self._expiry.pop(lease_id, None)

    def prune(self, now: float) -> None:
        """Drop the leases expired at `now`, and stale heap entries on the way."""
        heap, expiry = self._heap, self._expiry
        while heap and (heap[0][0] <= now or expiry.get(heap[0][1]) != heap[0][0]):
            stale_or_expired, lease_id = heapq.heappop(heap)
            if expiry.get(lease_id) == stale_or_expired:
                del expiry[lease_id]
        if len(heap) > 2 * len(expiry) + 64:  # many releases: rebuild rather than grow
            self._heap = [(e, i) for i, e in expiry.items()]
            heapq.heapify(self._heap)

    def earliest(self) -> float | None:
        """The earliest live expiry (call after `prune`)."""
        return self._heap[0][0] if self._heap else None

    def expiries(self) -> list[float]:
        """Every live lease's expiry."""
        return list(self._expiry.values())
