"""In-process GCRA limiter for the embedded default (one gateway process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from gateway.ratelimit.base import Dimension, DimensionState, LimitResult


class MemoryLimiter:
    """GCRA per dimension (burst = the whole window's quota); all-or-nothing under one lock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def acquire(self, dimensions: list[Dimension]) -> LimitResult:
        """Admit if every dimension has room for its cost; refusals consume nothing."""
        with self._lock:
            now = self._clock()
            planned: list[tuple[Dimension, float]] = []
            for dim in dimensions:
                interval = dim.window / dim.quota
                tat = max(self._tat.get(dim.key, now), now)
                new_tat = tat + interval * dim.cost
                allow_at = new_tat - dim.window
                if dim.cost > dim.quota or allow_at > now:
                    retry = float("inf") if dim.cost > dim.quota else allow_at - now
                    refusal = (DimensionState(dim, _remaining(dim, tat, now), tat - now),)
                    return LimitResult(False, refusal, retry_after=retry, refused=dim)
                planned.append((dim, new_tat))
            for dim, new_tat in planned:
                self._tat[dim.key] = new_tat
            states = tuple(
                DimensionState(dim, _remaining(dim, tat, now), tat - now) for dim, tat in planned
            )
            return LimitResult(True, states)


def _remaining(dim: Dimension, tat: float, now: float) -> int:
    interval = dim.window / dim.quota
    return max(0, int((dim.window - (tat - now)) // interval))
