"""Rate limits behind one interface: an in-process GCRA limiter now, Redis later."""

from gateway.ratelimit.base import Dimension, Limiter, LimitResult
from gateway.ratelimit.memory import MemoryLimiter

__all__ = ["Dimension", "LimitResult", "Limiter", "MemoryLimiter"]
