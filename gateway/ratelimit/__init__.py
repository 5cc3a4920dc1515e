"""Rate limits behind one interface: in-process GCRA by default, Redis when configured."""

from gateway.ratelimit.base import (
    Dimension,
    DimensionState,
    Lease,
    Limiter,
    LimiterUnavailable,
    LimitResult,
    MonthlyQuota,
)
from gateway.ratelimit.memory import MemoryLimiter
from gateway.ratelimit.redis import RedisLimiter


def limiter_from_url(redis_url: str | None, *, timeout: float) -> Limiter:
    """The shared Redis limiter when a URL is configured, the in-process one otherwise."""
    if redis_url:
        return RedisLimiter(redis_url, timeout=timeout)
    return MemoryLimiter()


__all__ = [
    "Dimension",
    "DimensionState",
    "Lease",
    "LimitResult",
    "Limiter",
    "LimiterUnavailable",
    "MemoryLimiter",
    "MonthlyQuota",
    "RedisLimiter",
    "limiter_from_url",
]
