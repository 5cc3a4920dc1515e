"""Shared limiter in Redis: one Lua script and one round trip per admission, Redis's clock.

Every gateway process and host shares the counts, so limits are exact across all of them. The
scripts translate `gateway/ratelimit/base.py` line by line (the same contract tests run over
both limiters). Any Redis error or timeout becomes `LimiterUnavailable`: the request fails
closed with 503, never an accidental allow. No redis-py exception leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
import struct
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
    MonthlyQuota,
    decide,
    gcra_only,
    split,
)

log = logging.getLogger(__name__)

Arg = bytes | str | int | float  # what redis-py sends as is (hiredis writes floats with repr)

DEFAULT_PREFIX = "airlock:rl:"
DEFAULT_TIMEOUT = 0.1
# Times in the scripts are seconds since this instant (2023-11-14): a float TAT near 1e8 s
# keeps 16 times finer resolution than one near the Unix epoch's 1.7e9 s.
EPOCH = 1_700_000_000
MICRO = 1_000_000

# Redis >= 5 replicates a script's effects, not the script, so reading TIME is safe. Numbers
# passed to redis.call are written with %.17g (stored TATs and lease expiries keep every bit,
# with no string.format in Lua); replies are integers (microseconds), which need no formatting.
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
  redis.call('SET', key, tat, 'PX', max(ceil((tat - now) * 1000), 1))
end
local function adjust_tat(key, interval, delta)
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = max(now, tat + delta * interval)
  if new_tat > now then store(key, new_tat) else redis.call('DEL', key) end
  return new_tat
end
"""

# The UTC calendar month of Redis's TIME (year * 12 + month - 1) and the seconds to its end, by
# the civil-from-days arithmetic (H. Hinnant), as `month_of` in base.py computes it in Python.
# A quota's count is a hash {m: month, u: units used}; a count from an earlier month is spent.
_MONTH = """
local function month_now()
  local secs = tonumber(t[1])
  local days = floor(secs / 86400)
  local z = days + 719468
  local era = floor(z / 146097)
  local doe = z - era * 146097
  local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
  local mp = floor((5 * doy + 2) / 153)
  local d = doy - floor((153 * mp + 2) / 5) + 1
  local mo = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (mo <= 2 and 1 or 0)
  local len = ({31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31})[mo]
  if mo == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then len = 29 end
  local ends = (days - d + 1 + len) * 86400
  return y * 12 + mo - 1, ends - secs - tonumber(t[2]) / 1000000
end
local function month_used(key, month)
  local found = redis.call('HMGET', key, 'm', 'u')
  if tonumber(found[1]) == month then return tonumber(found[2]) or 0 end
  return 0
end
local function month_store(key, month, used, until_end)
  redis.call('HSET', key, 'm', month, 'u', used)
  redis.call('PEXPIRE', key, max(ceil(until_end * 1000), 1))
end
local function adjust_month(key, month, until_end, delta)
  local used = max(month_used(key, month) + delta, 0)
  month_store(key, month, used, until_end)
  return used
end
"""

# KEYS: n GCRA keys, then q calendar-quota keys, then m lease keys. ARGV[1]: (quota, window,
# cost) of each GCRA dimension as 3n little-endian doubles (`struct`, bundled with Redis: no
# decimal text to parse, and n is its length / 24); ARGV[2]: (quota, cost) of each calendar
# quota as 2q doubles; then (id, quota, ttl) per lease. Every check runs before any write: all
# or nothing. Returns (wait, remaining, reset) per dimension (GCRA, quotas, leases), as
# integers: waits and resets in microseconds, wait -1 for never; the state is the committed one
# when every wait is 0.
ACQUIRE = (
    _PRELUDE
    + _MONTH
    + """
local n, q = #ARGV[1] / 24, #ARGV[2] / 16
local m = #KEYS - n - q
local p = n > 0 and {struct.unpack('<' .. string.rep('d', 3 * n), ARGV[1])} or {}
local c = q > 0 and {struct.unpack('<' .. string.rep('d', 2 * q), ARGV[2])} or {}
local stored = n > 0 and redis.call('MGET', unpack(KEYS, 1, n)) or {}
local out, new_tats, counts, used, waiting = {}, {}, {}, {}, false
for i = 1, n do
  local quota, window, cost = p[3 * i - 2], p[3 * i - 1], p[3 * i]
  local interval = window / quota
  local tat = tonumber(stored[i]) or now
  if tat < now then tat = now end
  local new_tat, wait = tat + cost * interval, 0
  if cost > quota then
    wait = huge
  elseif (new_tat - now) / interval > quota + 1e-6 then
    wait = max(new_tat - window - now, 1e-6)
  end
  waiting = waiting or wait > 0
  new_tats[i], out[3 * i - 2], out[3 * i - 1] = new_tat, micros(wait), tat
end
local month, until_end = 0, 0
if q > 0 then month, until_end = month_now() end
for k = 1, q do
  local quota, cost = c[2 * k - 1], c[2 * k]
  used[k] = month_used(KEYS[n + k], month)
  local wait = 0
  if cost > quota then
    wait = huge
  elseif used[k] + cost > quota then
    wait = max(until_end, 1e-6)
  end
  waiting = waiting or wait > 0
  out[3 * (n + k) - 2] = micros(wait)
end
for j = 1, m do
  local key, id, quota = KEYS[n + q + j], ARGV[3 * j], tonumber(ARGV[3 * j + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count, wait = redis.call('ZCARD', key), 0
  if quota == 0 then
    wait = huge
  elseif count >= quota and not redis.call('ZSCORE', key, id) then
    local frees = redis.call('ZRANGE', key, count - quota, count - quota, 'WITHSCORES')
    wait = max(tonumber(frees[2]) - now, 1e-6)
  end
  waiting = waiting or wait > 0
  counts[j], out[3 * (n + q + j) - 2] = count, micros(wait)
end
for i = 1, n do
  local tat, quota = out[3 * i - 1], p[3 * i - 2]
  if not waiting then
    if new_tats[i] > tat then store(KEYS[i], new_tats[i]) end
    tat = new_tats[i]
  end
  out[3 * i - 1], out[3 * i] = gcra_state(quota, p[3 * i - 1] / quota, tat)
end
for k = 1, q do
  if not waiting then
    used[k] = used[k] + c[2 * k]
    month_store(KEYS[n + k], month, used[k], until_end)
  end
  out[3 * (n + k) - 1] = min(max(c[2 * k - 1] - used[k], 0), c[2 * k - 1])
  out[3 * (n + k)] = micros(until_end)
end
for j = 1, m do
  local key, quota, k = KEYS[n + q + j], tonumber(ARGV[3 * j + 1]), 3 * (n + q + j)
  if not waiting then
    local expiry = now + tonumber(ARGV[3 * j + 2])
    counts[j] = counts[j] + redis.call('ZADD', key, expiry, ARGV[3 * j])
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, max(ceil((tonumber(last[2]) - now) * 1000), 1))
  end
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  local reset = first[2] and max(tonumber(first[2]) - now, 0) or 0
  out[k - 1], out[k] = max(quota - counts[j], 0), micros(reset)
end
return out
"""
)

# KEYS: one calendar-quota key. ARGV: quota, delta. Returns (remaining, reset) as for ACQUIRE.
ADJUST_MONTH = (
    _PRELUDE
    + _MONTH
    + """
local quota = tonumber(ARGV[1])
local month, until_end = month_now()
local used = adjust_month(KEYS[1], month, until_end, tonumber(ARGV[2]))
return {min(max(quota - used, 0), quota), micros(until_end)}
"""
)

# KEYS: one GCRA key. ARGV: quota, window, delta. Returns (remaining, reset) as for ACQUIRE.
ADJUST = (
    _PRELUDE
    + """
local quota = tonumber(ARGV[1])
local interval = tonumber(ARGV[2]) / quota
local new_tat = adjust_tat(KEYS[1], interval, tonumber(ARGV[3]))
local remaining, reset = gcra_state(quota, interval, new_tat)
return {remaining, reset}
"""
)

# KEYS: n GCRA keys, then q calendar-quota keys, then at most one lease key. ARGV[1]: (quota,
# window) of each GCRA dimension as 2n little-endian doubles; ARGV[2]: each calendar quota's
# quota as q doubles; ARGV[3]: delta; ARGV[4]: the lease's id when there is a lease key. Does
# what ADJUST and ADJUST_MONTH do for each key, then ZREM the lease: a request's end in one
# round trip. Returns 0.
SETTLE = (
    _PRELUDE
    + _MONTH
    + """
local n, q = #ARGV[1] / 16, #ARGV[2] / 8
local delta = tonumber(ARGV[3])
if delta ~= 0 and n > 0 then
  local p = {struct.unpack('<' .. string.rep('d', 2 * n), ARGV[1])}
  for i = 1, n do
    adjust_tat(KEYS[i], p[2 * i] / p[2 * i - 1], delta)
  end
end
if delta ~= 0 and q > 0 then
  local month, until_end = month_now()
  for k = 1, q do
    adjust_month(KEYS[n + k], month, until_end, delta)
  end
end
if #KEYS > n + q then redis.call('ZREM', KEYS[n + q + 1], ARGV[4]) end
return 0
"""
)


class _Script:
    """A Lua script run by its SHA; sent whole only when the server does not have it cached."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Arg]) -> list[Any]:
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
        self._gcra_prefix, self._lease_prefix = f"{prefix}gcra:", f"{prefix}lease:"
        self._month_prefix = f"{prefix}month:"
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
        self._adjust_month = _Script(ADJUST_MONTH)
        self._settle = _Script(SETTLE)

    @timed_admission
    def acquire(self, dimensions: Sequence[Dimension]) -> LimitResult:
        """Admit if every dimension has room and every lease a free slot; else consume nothing."""
        gcra, months, leases = split(dimensions)
        planned: list[Dimension] = [*gcra, *months, *leases]
        keys = [self._gcra_prefix + d.key for d in gcra]
        keys += [self._month_prefix + q.key for q in months]
        numbers: list[float] = []
        for d in gcra:
            numbers += (d.quota, d.window, d.cost)
        counts: list[float] = []
        for q in months:
            counts += (q.quota, q.cost)
        args: list[Arg] = [
            struct.pack(f"<{len(numbers)}d", *numbers),
            struct.pack(f"<{len(counts)}d", *counts),
        ]
        if leases:  # the script counts them as the keys after the GCRA and quota keys
            keys += [self._lease_prefix + ls.key for ls in leases]
            for ls in leases:
                args += (ls.id, ls.quota, ls.ttl)
        return _decode(dimensions, planned, self._call(self._acquire, keys, args))

    def release(self, lease: Lease) -> None:
        """Give a lease back; unknown or expired leases are ignored."""
        try:
            self._client.zrem(self._lease_key(lease), lease.id)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def adjust(self, dimension: Dimension, delta: int) -> DimensionState:
        """Charge `delta` more units to `dimension` (negative refunds, never beyond full)."""
        dimension = gcra_only(dimension)
        if isinstance(dimension, MonthlyQuota):
            key = self._month_prefix + dimension.key
            remaining, reset = self._call(self._adjust_month, [key], [dimension.quota, delta])
            return DimensionState(dimension, remaining, reset / MICRO)
        args: list[Arg] = [dimension.quota, dimension.window, delta]
        remaining, reset = self._call(self._adjust, [self._gcra_key(dimension)], args)
        return DimensionState(dimension, remaining, reset / MICRO)

    def settle(self, dimensions: Sequence[Dimension], delta: int, lease: Lease | None) -> None:
        """Adjust each of `dimensions` by `delta` and give `lease` back: one script, one round
        trip (instead of one per dimension and one for the lease)."""
        checked = [gcra_only(d) for d in dimensions]
        gcra = [d for d in checked if not isinstance(d, MonthlyQuota)]
        months = [d for d in checked if isinstance(d, MonthlyQuota)]
        keys = [self._gcra_key(d) for d in gcra] + [self._month_prefix + q.key for q in months]
        windows = [x for d in gcra for x in (d.quota, d.window)]
        args: list[Arg] = [
            struct.pack(f"<{len(windows)}d", *windows),
            struct.pack(f"<{len(months)}d", *(q.quota for q in months)),
            delta,
        ]
        if lease is not None:
            keys.append(self._lease_key(lease))
            args.append(lease.id)
        self._call(self._settle, keys, args)

    def ping(self) -> None:
        """One round trip to Redis on the limiter's own pool (readiness checks, benchmarks)."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def _call(self, script: _Script, keys: list[str], args: list[Arg]) -> list[Any]:
        try:
            return script.run(self._client, keys, args)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def _gcra_key(self, dimension: Dimension) -> str:
        return self._gcra_prefix + dimension.key

    def _lease_key(self, lease: Lease) -> str:
        return self._lease_prefix + lease.key


def _decode(
    dimensions: Sequence[Dimension], planned: list[Dimension], reply: list[int]
) -> LimitResult:
    """The script's flat integer reply, in `planned` order (GCRA, then leases), as a result."""
    states = [
        DimensionState(dim, reply[i + 1], reply[i + 2] / MICRO)
        for i, dim in zip(range(0, len(reply), 3), planned, strict=True)
    ]
    waits = reply[::3]
    if not any(waits) and planned == list(dimensions):  # admitted, in the caller's order
        return LimitResult(True, tuple(states))
    return decide(dimensions, planned, states, [INF if w < 0 else w / MICRO for w in waits])


def _unavailable(exc: redis.RedisError) -> LimiterUnavailable:
    log.error("rate limiter unavailable: %s: %s", type(exc).__name__, exc)
    return LimiterUnavailable("the rate limiter is unavailable; nothing was authorized")
