"""Shared limiter in Redis: one Lua script and one round trip per admission, Redis's clock.

Every gateway process and host shares the counts, so limits are exact across all of them. The
scripts translate `gateway/ratelimit/base.py` line by line (the same contract tests run over
both limiters). Any Redis error or timeout becomes `LimiterUnavailable`: the request fails
closed with 503, never an accidental allow. No redis-py exception leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from gateway.observability.metrics import timed_admission
from gateway.ratelimit.base import (
    INF,
    Dimension,
    DimensionState,
    Lease,
    LimiterUnavailable,
    LimitResult,
    decide,
    gcra_only,
    split,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "airlock:rl:"
DEFAULT_TIMEOUT = 0.1
# Times in the scripts are seconds since this instant (2023-11-14): a float TAT near 1e8 s
# keeps 16 times finer resolution than one near the Unix epoch's 1.7e9 s.
EPOCH = 1_700_000_000
MICRO = 1_000_000

# Redis >= 5 replicates a script's effects, not the script, so reading TIME is safe. Stored
# TATs keep every bit (%.17g); replies are integers (microseconds), which need no formatting.
_PRELUDE = f"""
local floor, ceil, max, min, huge = math.floor, math.ceil, math.max, math.min, math.huge
local t = redis.call('TIME')
local now = (tonumber(t[1]) - {EPOCH}) + tonumber(t[2]) / 1000000
local function micros(seconds)
  if seconds == huge then return -1 end
  return ceil(seconds * 1000000)
end
local function gcra_state(quota, interval, tat)
  local ahead = max(tat - now, 0)
  local remaining = floor(quota - ahead / interval + 1e-6)
  return min(max(remaining, 0), quota), micros(ahead)
end
local function store(key, tat)
  local ms = max(ceil((tat - now) * 1000), 1)
  redis.call('SET', key, string.format('%.17g', tat), 'PX', ms)
end
"""

# KEYS: n GCRA keys, then m lease keys. ARGV: n, m, then (quota, window, cost) per dimension,
# then (id, quota, ttl) per lease. Every check runs before any write: all or nothing.
# Returns (wait, remaining, reset) per dimension then per lease, as integers: waits and resets
# in microseconds, wait -1 for never; the state is the committed one when every wait is 0.
ACQUIRE = (
    _PRELUDE
    + """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local tats, new_tats, waits, counts, waiting = {}, {}, {}, {}, false
local stored = n > 0 and redis.call('MGET', unpack(KEYS, 1, n)) or {}
for i = 1, n do
  local quota, window = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local cost, interval = tonumber(ARGV[3 * i + 2]), window / quota
  local tat = tonumber(stored[i]) or now
  if tat < now then tat = now end
  local new_tat, wait = tat + cost * interval, 0
  if cost > quota then
    wait = huge
  elseif (new_tat - now) / interval > quota + 1e-6 then
    wait = max(new_tat - window - now, 1e-6)
  end
  waiting = waiting or wait > 0
  tats[i], new_tats[i], waits[i] = tat, new_tat, wait
end
local base = 3 + 3 * n
for j = 1, m do
  local key, id = KEYS[n + j], ARGV[base + 3 * j - 3]
  local quota = tonumber(ARGV[base + 3 * j - 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.17g', now))
  local count, wait = redis.call('ZCARD', key), 0
  if quota == 0 then
    wait = huge
  elseif count >= quota and not redis.call('ZSCORE', key, id) then
    local frees = redis.call('ZRANGE', key, count - quota, count - quota, 'WITHSCORES')
    wait = max(tonumber(frees[2]) - now, 1e-6)
  end
  waiting = waiting or wait > 0
  counts[j], waits[n + j] = count, wait
end
if not waiting then
  for i = 1, n do
    if new_tats[i] > tats[i] then store(KEYS[i], new_tats[i]) end
    tats[i] = new_tats[i]
  end
  for j = 1, m do
    local key, id = KEYS[n + j], ARGV[base + 3 * j - 3]
    local expiry = now + tonumber(ARGV[base + 3 * j - 1])
    counts[j] = counts[j] + redis.call('ZADD', key, string.format('%.17g', expiry), id)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, max(ceil((tonumber(last[2]) - now) * 1000), 1))
  end
end
local out = {}
for i = 1, n do
  local quota = tonumber(ARGV[3 * i])
  local remaining, reset = gcra_state(quota, tonumber(ARGV[3 * i + 1]) / quota, tats[i])
  out[#out + 1], out[#out + 2], out[#out + 3] = micros(waits[i]), remaining, reset
end
for j = 1, m do
  local quota = tonumber(ARGV[base + 3 * j - 2])
  local first = redis.call('ZRANGE', KEYS[n + j], 0, 0, 'WITHSCORES')
  local reset = first[2] and max(tonumber(first[2]) - now, 0) or 0
  local remaining = max(quota - counts[j], 0)
  out[#out + 1], out[#out + 2], out[#out + 3] = micros(waits[n + j]), remaining, micros(reset)
end
return out
"""
)

# KEYS: one GCRA key. ARGV: quota, window, delta. Returns (remaining, reset) as for ACQUIRE.
ADJUST = (
    _PRELUDE
    + """
local quota = tonumber(ARGV[1])
local interval = tonumber(ARGV[2]) / quota
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = max(now, tat + tonumber(ARGV[3]) * interval)
if new_tat > now then store(KEYS[1], new_tat) else redis.call('DEL', KEYS[1]) end
local remaining, reset = gcra_state(quota, interval, new_tat)
return {remaining, reset}
"""
)


class _Script:
    """A Lua script run by its SHA; sent whole only when the server does not have it cached."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[str]) -> list[Any]:
        try:
            reply = client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed server: EVAL caches it again
            reply = client.eval(self.source, len(keys), *keys, *args)
        return cast(list[Any], reply)


class RedisLimiter:
    """GCRA dimensions and lease sets in Redis, checked and charged in one atomic script."""

    def __init__(
        self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.prefix = prefix
        # No retries: a retried timeout would hold the request far past the fail-closed bound.
        self._client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
        self._acquire = _Script(ACQUIRE)
        self._adjust = _Script(ADJUST)

    @timed_admission
    def acquire(self, dimensions: Sequence[Dimension]) -> LimitResult:
        """Admit if every dimension has room and every lease a free slot; else consume nothing."""
        gcra, leases = split(dimensions)
        keys = [self._gcra_key(d) for d in gcra] + [self._lease_key(ls) for ls in leases]
        args = [str(len(gcra)), str(len(leases))]
        for d in gcra:
            args += [str(d.quota), str(d.window), str(d.cost)]
        for ls in leases:
            args += [ls.id, str(ls.quota), str(ls.ttl)]
        reply = self._call(self._acquire, keys, args)
        return _decode(dimensions, gcra, leases, reply)

    def release(self, lease: Lease) -> None:
        """Give a lease back; unknown or expired leases are ignored."""
        try:
            self._client.zrem(self._lease_key(lease), lease.id)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def adjust(self, dimension: Dimension, delta: int) -> DimensionState:
        """Charge `delta` more units to `dimension` (negative refunds, never beyond full)."""
        dimension = gcra_only(dimension)
        args = [str(dimension.quota), str(dimension.window), str(delta)]
        remaining, reset = self._call(self._adjust, [self._gcra_key(dimension)], args)
        return DimensionState(dimension, remaining, reset / MICRO)

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def _call(self, script: _Script, keys: list[str], args: list[str]) -> list[Any]:
        try:
            return script.run(self._client, keys, args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def _gcra_key(self, dimension: Dimension) -> str:
        return f"{self.prefix}gcra:{dimension.key}"

    def _lease_key(self, lease: Lease) -> str:
        return f"{self.prefix}lease:{lease.key}"


def _decode(
    dimensions: Sequence[Dimension], gcra: list[Dimension], leases: list[Lease], reply: list[int]
) -> LimitResult:
    """The script's flat integer reply as a LimitResult."""
    planned = [*gcra, *leases]
    states, waits = [], []
    for i, dim in enumerate(planned):
        wait, remaining, reset = reply[3 * i : 3 * i + 3]
        states.append(DimensionState(dim, remaining, reset / MICRO))
        waits.append(INF if wait < 0 else wait / MICRO)
    return decide(dimensions, planned, states, waits)


def _unavailable(exc: redis.RedisError) -> LimiterUnavailable:
    log.error("rate limiter unavailable: %s: %s", type(exc).__name__, exc)
    return LimiterUnavailable("the rate limiter is unavailable; nothing was authorized")
