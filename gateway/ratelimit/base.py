"""The limiter contract: every dimension of one request admitted atomically, or none.

A plain `Dimension` is a GCRA (the virtual-scheduling form of a token bucket): one stored
number per key, its theoretical arrival time (TAT). A dimension of `quota` units per `window`
seconds refills one unit every `window / quota` seconds and bursts up to the whole quota.

A `Lease` is the concurrency kind of dimension: at most `quota` leases live on `key` at once,
this one named `id` and held for `window` seconds (its TTL) unless released earlier, so a
crashed holder frees its slot within the TTL and no key is ever stuck.

A `MonthlyQuota` is a fixed-window counter over the UTC calendar month (by the limiter's wall
clock: Redis's TIME, or the process's): `quota` units a month, whole again on the 1st.

The arithmetic lives here once, in plain functions; `MemoryLimiter` calls them and the Redis
Lua scripts (`gateway/ratelimit/redis.py`) are a line-by-line translation, checked by the same
contract tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol

from gateway.errors import ServiceUnavailable

INF = math.inf
# Rounding slack in units: the float TAT drifts by far less than a millionth of a unit per
# operation, so this never admits an extra unit; without it a full quota could miss its last.
SLACK = 1e-6


class LimiterUnavailable(ServiceUnavailable):
    """The shared limiter could not answer (down, slow, refused): the request fails closed."""

    code = "rate_limiter_unavailable"
    title = "Rate limiter unavailable"


@dataclass(frozen=True)
class Dimension:
    """One limit: `quota` units per `window` seconds on `key`, charged `cost` units."""

    key: str
    name: str
    quota: int
    window: float
    cost: int = 1
    unit: str = "requests"

    def __post_init__(self) -> None:
        if self.quota < 1 or self.window <= 0 or self.cost < 0:
            raise ValueError(f"invalid dimension {self.name}: quota>=1, window>0, cost>=0")

    @property
    def interval(self) -> float:
        """Seconds one unit takes to refill."""
        return self.window / self.quota


@dataclass(frozen=True, kw_only=True)
class Lease(Dimension):
    """A concurrency slot `id`: at most `quota` live on `key`, each held `window` seconds at most.

    `quota` may be 0 (nothing is ever admitted); `cost` is always 1. Taking a lease id that is
    already live renews it (a new expiry) without taking a second slot.
    """

    id: str
    unit: str = "concurrent-requests"

    def __post_init__(self) -> None:
        if self.quota < 0 or self.window <= 0 or self.cost != 1 or not self.id:
            raise ValueError(f"invalid lease {self.name}: quota>=0, window>0, cost 1, an id")

    @property
    def ttl(self) -> float:
        """Seconds until the lease expires unless released or renewed."""
        return self.window


@dataclass(frozen=True, kw_only=True)
class MonthlyQuota(Dimension):
    """A calendar quota: at most `quota` units on `key` per UTC calendar month (a fixed window,
    not a refilling bucket: it is whole again when the next month begins)."""

    window: float = 31 * 86400  # the longest month; the window really ends at the month's end
    unit: str = "tokens"


@dataclass(frozen=True)
class DimensionState:
    """What one dimension has left after the decision, for the `RateLimit` header.

    `reset_after` is the seconds until a GCRA dimension is whole again, or until the earliest
    live lease of a `Lease` key expires (0 when none is held).
    """

    dimension: Dimension
    remaining: int
    reset_after: float


@dataclass(frozen=True)
class LimitResult:
    """The admission decision; on refusal nothing was consumed.

    `states` has one entry per dimension, in the order given. On refusal, `refused` is the
    dimension that must wait longest and `retry_after` that wait: `inf` when the request can
    never be admitted (a cost above the whole quota, a lease quota of 0).
    """

    allowed: bool
    states: tuple[DimensionState, ...]
    retry_after: float = 0.0
    refused: Dimension | None = None


class Limiter(Protocol):
    """Admits a request against all its dimensions at once."""

    def acquire(self, dimensions: Sequence[Dimension]) -> LimitResult:
        """Charge every dimension and take every lease if all have room; otherwise none."""
        ...

    def release(self, lease: Lease) -> None:
        """Give a lease back (a lease already expired or released is not an error)."""
        ...

    def adjust(self, dimension: Dimension, delta: int) -> DimensionState:
        """Charge `delta` more units (negative: refund), never refilling beyond full."""
        ...

    def settle(self, dimensions: Sequence[Dimension], delta: int, lease: Lease | None) -> None:
        """End a request in one call: `adjust` each of `dimensions` by `delta`, then give
        `lease` back (if any)."""
        ...

    def close(self) -> None:
        """Release connections, if any."""
        ...


@dataclass(frozen=True)
class Gcra:
    """One dimension's check at `now`: the TAT it starts from and the TAT it would commit."""

    tat: float
    new_tat: float
    retry_after: float

    @property
    def allowed(self) -> bool:
        """Whether this dimension admits the charge."""
        return self.retry_after == 0.0


def gcra_check(dim: Dimension, stored_tat: float | None, now: float) -> Gcra:
    """Plan charging `dim.cost` at `now` given the stored TAT (None: never charged or expired)."""
    tat = now if stored_tat is None else max(stored_tat, now)
    new_tat = tat + dim.cost * dim.interval
    if dim.cost > dim.quota:
        return Gcra(tat, new_tat, INF)
    used = (new_tat - now) / dim.interval
    if used <= dim.quota + SLACK:
        return Gcra(tat, new_tat, 0.0)
    return Gcra(tat, new_tat, max(new_tat - dim.window - now, 1e-6))


def gcra_state(dim: Dimension, tat: float, now: float) -> DimensionState:
    """Remaining whole units and seconds until full, given the TAT at `now`."""
    ahead = max(tat - now, 0.0)
    remaining = math.floor(dim.quota - ahead / dim.interval + SLACK)
    return DimensionState(dim, min(max(remaining, 0), dim.quota), ahead)


def gcra_adjust(dim: Dimension, stored_tat: float | None, now: float, delta: int) -> float:
    """The TAT after charging `delta` units (negative refunds), never earlier than `now`."""
    tat = now if stored_tat is None else max(stored_tat, now)
    return max(now, tat + delta * dim.interval)


def lease_state(lease: Lease, count: int, earliest: float | None, now: float) -> DimensionState:
    """Free slots, and seconds until the earliest of the `count` live leases expires."""
    reset = 0.0 if earliest is None else max(earliest - now, 0.0)
    return DimensionState(lease, max(lease.quota - count, 0), reset)


def lease_retry(
    lease: Lease, count: int, held: bool, expiries: Callable[[], list[float]], now: float
) -> float:
    """0 when the lease may be taken (or renewed), else seconds until a slot frees at latest.

    `expiries` lists the `count` live leases' expiries; it is called only on a refusal.
    """
    if lease.quota == 0:
        return INF
    if held or count < lease.quota:
        return 0.0
    frees = sorted(expiries())[count - lease.quota]  # enough leases have expired by then
    return max(frees - now, 1e-6)


def month_of(unix: float) -> tuple[int, float]:
    """The UTC calendar month of `unix` seconds (year * 12 + month - 1) and seconds to its end."""
    day = datetime.fromtimestamp(unix, UTC).date()
    nxt = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    end = datetime(nxt.year, nxt.month, 1, tzinfo=UTC).timestamp()
    return day.year * 12 + day.month - 1, end - unix


def quota_retry(quota: MonthlyQuota, used: int, until_end: float) -> float:
    """0 when `quota.cost` more fits this month, the seconds to the month's end if not, `inf`
    when it exceeds the whole quota."""
    if quota.cost > quota.quota:
        return INF
    if used + quota.cost > quota.quota:
        return max(until_end, 1e-6)
    return 0.0


def quota_state(quota: MonthlyQuota, used: int, until_end: float) -> DimensionState:
    """Units left this month, and seconds until the month (and the quota) ends."""
    return DimensionState(quota, min(max(quota.quota - used, 0), quota.quota), until_end)


def split(
    dimensions: Sequence[Dimension],
) -> tuple[list[Dimension], list[MonthlyQuota], list[Lease]]:
    """GCRA dimensions, calendar quotas and leases, each key at most once per kind."""
    gcra = [d for d in dimensions if not isinstance(d, Lease | MonthlyQuota)]
    months = [d for d in dimensions if isinstance(d, MonthlyQuota)]
    leases = [d for d in dimensions if isinstance(d, Lease)]
    for kind in (gcra, months, leases):
        if len({d.key for d in kind}) != len(kind):
            # a key checked twice in one request would be planned from a stale state
            raise ValueError("each key may appear once per request and kind of dimension")
    return gcra, months, leases


def decide(
    dimensions: Sequence[Dimension],
    planned: list[Dimension],
    states: list[DimensionState],
    waits: list[float],
) -> LimitResult:
    """The result with states in the caller's order; a refusal names the longest wait.

    `planned`, `states` and `waits` are parallel lists in the order the limiter checked them.
    """
    if not any(waits) and planned == list(dimensions):  # admitted, checked in the caller's order
        return LimitResult(True, tuple(states))
    by_dimension = dict(zip(planned, states, strict=True))
    ordered = tuple(by_dimension[d] for d in dimensions)
    if not any(waits):
        return LimitResult(True, ordered)
    worst = max(range(len(waits)), key=waits.__getitem__)
    return LimitResult(False, ordered, retry_after=waits[worst], refused=planned[worst])


def gcra_only(dimension: Dimension) -> Dimension:
    """`dimension` (a GCRA or a calendar quota), or ValueError for a lease (leases are
    released, not adjusted)."""
    if isinstance(dimension, Lease):
        raise ValueError(f"{dimension.name} is a lease: release it instead of adjusting it")
    return dimension
