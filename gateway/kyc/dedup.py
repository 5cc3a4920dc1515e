"""Redis fast path for webhook de-duplication; the database's unique key stays the authority."""

from __future__ import annotations

import hashlib
import logging

import redis

log = logging.getLogger(__name__)
WEEK_SECONDS = 7 * 24 * 3600


class SeenEvents:
    """Remembers committed (provider, event id) pairs for a week, when Redis is configured.

    Only events already committed are remembered, so a lost Redis write or an outage never
    drops an event: the unique constraint still refuses the duplicate."""

    def __init__(self, url: str | None, *, timeout: float = 0.2) -> None:
        self._client = (
            redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            if url
            else None
        )

    def seen(self, provider: str, event_id: str) -> bool:
        """Whether this event was already accepted (False when Redis is absent or down)."""
        if self._client is None:
            return False
        try:
            return bool(self._client.exists(_key(provider, event_id)))
        except redis.RedisError:
            log.warning("redis unavailable for webhook de-duplication; using the database")
            return False

    def remember(self, provider: str, event_id: str) -> None:
        """Record an accepted event for a week (SET NX EX)."""
        if self._client is None:
            return
        try:
            self._client.set(_key(provider, event_id), b"1", nx=True, ex=WEEK_SECONDS)
        except redis.RedisError:
            log.warning("redis unavailable for webhook de-duplication; using the database")

    def close(self) -> None:
        """Release the connection pool."""
        if self._client is not None:
            self._client.close()


def _key(provider: str, event_id: str) -> str:
    digest = hashlib.sha256(event_id.encode("utf-8")).hexdigest()[:32]
    return f"airlock:kyc:event:{provider}:{digest}"
