"""A throwaway key prefix per test on the machine's Redis server, deleted afterwards."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis

REDIS_URL = os.environ.get("AIRLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def require_redis() -> str:
    """The test Redis URL; skip when it is unreachable, but fail in CI."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            raise RuntimeError(f"Redis is required in CI and unreachable: {exc}") from exc
        pytest.skip("Redis is not reachable (start it, or set AIRLOCK_TEST_REDIS_URL)")
    finally:
        client.close()
    return REDIS_URL


@contextmanager
def throwaway_prefix() -> Iterator[str]:
    """A unique key prefix; every key under it is deleted on exit."""
    require_redis()
    prefix = f"airlock:test:{secrets.token_hex(6)}:"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
