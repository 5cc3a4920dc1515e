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

from gateway.ratelimit.base import (
    Dimension,
    DimensionState,
    Lease,
    LimiterUnavailable,
    LimitResult,
    decide,
    gcra_only,
    gcra_state,
    lease_state,
    split,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "airlock:rl:"
DEFAULT_TIMEOUT = 0.1
# Times in the scripts are seconds since this instant (2023-11-14): a float TAT near 1e8 s
# keeps 16 times finer resolution than one near the Unix epoch's 1.7e9 s.
EPOCH = 1_700_000_000

_PRELUDE = f"""
if redis.replicate_commands then redis.replicate_commands() end
local function fmt(x) return string.format('%.17g', x) end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - {EPOCH}) + tonumber(t[2]) / 1000000
"""

# KEYS: n GCRA keys, then m lease keys. ARGV: n, m, then (quota, window, cost) per dimension,
# then (id, limit, ttl) per lease. Every check runs before any write: all or nothing.
# Returns now, then (tat, wait) per dimension and (count, earliest, wait) per lease; a TAT or
# count is the committed one when every wait is 0, the untouched one otherwise.
ACQUIRE = (
    _PRELUDE
    + """
local n, m = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, new_tats, waiting = {fmt(now)}, {}, false
for i = 1, n do
  local quota, window = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local cost, interval = tonumber(ARGV[3 * i + 2]), window / quota
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new_tat, wait = tat + cost * interval, 0
  if cost > quota then
    wait = math.huge
  elseif (new_tat - now) / interval > quota + 1e-6 then
    wait = math.max(new_tat - window - now, 1e-6)
  end
  waiting = waiting or wait > 0
  new_tats[i] = new_tat
  out[#out + 1], out[#out + 2] = tat, wait
end
local base = 3 + 3 * n
for j = 1, m do
  local key = KEYS[n + j]
  local id, limit = ARGV[base + 3 * j - 3], tonumber(ARGV[base + 3 * j - 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', fmt(now))
  local count, wait = redis.call('ZCARD', key), 0
  if limit == 0 then
    wait = math.huge
  elseif count >= limit and not redis.call('ZSCORE', key, id) then
    local frees = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    wait = math.max(tonumber(frees[2]) - now, 1e-6)
  end
  waiting = waiting or wait > 0
  out[#out + 1], out[#out + 2], out[#out + 3] = count, false, wait
end
if not waiting then
  for i = 1, n do
    if new_tats[i] > out[2 * i] then
      local ms = math.ceil((new_tats[i] - now) * 1000)
      redis.call('SET', KEYS[i], fmt(new_tats[i]), 'PX', math.max(ms, 1))
    end
    out[2 * i] = new_tats[i]
  end
  for j = 1, m do
    local key = KEYS[n + j]
    local id, ttl = ARGV[base + 3 * j - 3], tonumber(ARGV[base + 3 * j - 1])
    redis.call('ZADD', key, fmt(now + ttl), id)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, math.max(math.ceil((tonumber(last[2]) - now) * 1000), 1))
    out[2 * n + 3 * j - 1] = redis.call('ZCARD', key)
  end
end
for j = 1, m do
  local first = redis.call('ZRANGE', KEYS[n + j], 0, 0, 'WITHSCORES')
  out[2 * n + 3 * j] = first[2] or ''
end
for k = 2, #out do
  if type(out[k]) == 'number' then out[k] = fmt(out[k]) end
end
return out
"""
)

# KEYS: one GCRA key. ARGV: quota, window, delta. Returns now and the new TAT.
ADJUST = (
    _PRELUDE
    + """
local interval = tonumber(ARGV[2]) / tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = math.max(now, tat + tonumber(ARGV[3]) * interval)
if new_tat > now then
  local ms = math.ceil((new_tat - now) * 1000)
  redis.call('SET', KEYS[1], fmt(new_tat), 'PX', math.max(ms, 1))
else
  redis.call('DEL', KEYS[1])
end
return {fmt(now), fmt(new_tat)}
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

    def acquire(self, dimensions: Sequence[Dimension]) -> LimitResult:
        """Admit if every dimension has room and every lease a free slot; else consume nothing."""
        gcra, leases = split(dimensions)
        keys = [self._gcra_key(d) for d in gcra] + [self._lease_key(ls) for ls in leases]
        args = [str(len(gcra)), str(len(leases))]
        for d in gcra:
            args += [str(d.quota), repr(float(d.window)), str(d.cost)]
        for ls in leases:
            args += [ls.id, str(ls.quota), repr(float(ls.ttl))]
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
        args = [str(dimension.quota), repr(float(dimension.window)), str(delta)]
        now, tat = self._call(self._adjust, [self._gcra_key(dimension)], args)
        return gcra_state(dimension, float(tat), float(now))

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
    dimensions: Sequence[Dimension], gcra: list[Dimension], leases: list[Lease], reply: list[Any]
) -> LimitResult:
    """The script's flat reply as a LimitResult, through the same state functions as memory."""
    now = float(reply[0])
    states, waits = [], []
    for i, dim in enumerate(gcra):
        tat, wait = reply[1 + 2 * i : 3 + 2 * i]
        states.append(gcra_state(dim, float(tat), now))
        waits.append(float(wait))
    offset = 1 + 2 * len(gcra)
    for j, lease in enumerate(leases):
        count, earliest, wait = reply[offset + 3 * j : offset + 3 * j + 3]
        states.append(lease_state(lease, int(count), float(earliest) if earliest else None, now))
        waits.append(float(wait))
    return decide(dimensions, [*gcra, *leases], states, waits)


def _unavailable(exc: redis.RedisError) -> LimiterUnavailable:
    log.error("rate limiter unavailable: %s: %s", type(exc).__name__, exc)
    return LimiterUnavailable("the rate limiter is unavailable; nothing was authorized")
