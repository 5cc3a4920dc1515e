"""One contract, two limiters: the in-process GCRA and Redis behave the same.

The memory limiter runs on a manual clock; Redis keeps its own (TIME), so its waits are real
sleeps and its windows short where time must pass. Each Redis test has its own key prefix.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis
from flask import Flask

from gateway.api.errors import render
from gateway.errors import ServiceUnavailable
from gateway.ratelimit import (
    Dimension,
    Lease,
    Limiter,
    LimiterUnavailable,
    MemoryLimiter,
    MonthlyQuota,
    RedisLimiter,
)
from gateway.ratelimit.base import month_of
from gateway.ratelimit.redis import EPOCH
from gateway.services.container import build_airlock
from gateway.settings import Settings
from tests.ports import free_port as closed_port
from tests.ports import silent_port
from tests.redis_server import REDIS_URL, throwaway_prefix

HOUR = 3600


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Case:
    """A limiter under test and how to let time pass for it."""

    limiter: Limiter
    wait: Callable[[float], None]
    backend: str


@pytest.fixture(params=["memory", "redis"])
def case(request: pytest.FixtureRequest) -> Iterator[Case]:
    if request.param == "memory":
        clock = Clock()
        yield Case(MemoryLimiter(clock), clock.advance, "memory")
        return
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix)
        yield Case(limiter, time.sleep, "redis")
        limiter.close()


def per_hour(quota: int, *, key: str = "k", cost: int = 1) -> Dimension:
    return Dimension(key, f"{key}_per_hour", quota, HOUR, cost=cost)


def lease(lease_id: str, quota: int = 2, ttl: float = 30, key: str = "c") -> Lease:
    return Lease(key, "concurrent", quota, ttl, id=lease_id)


def test_admits_up_to_the_quota_then_refuses(case: Case) -> None:
    dim = per_hour(5)
    remaining = [case.limiter.acquire([dim]).states[0].remaining for _ in range(5)]
    refused = case.limiter.acquire([dim])
    assert remaining == [4, 3, 2, 1, 0]
    assert not refused.allowed and refused.refused == dim
    assert refused.retry_after == pytest.approx(HOUR / 5, abs=1)
    assert refused.states[0].remaining == 0
    assert refused.states[0].reset_after == pytest.approx(HOUR, abs=1)


def test_a_refusal_consumes_nothing(case: Case) -> None:
    def take(cost: int) -> bool:
        return case.limiter.acquire([per_hour(100, key="bytes", cost=cost)]).allowed

    assert take(60)
    assert not take(60)
    assert take(40), "the refused 60 must not have been charged"
    assert not take(1)


def test_all_dimensions_are_charged_or_none(case: Case) -> None:
    wide, narrow = per_hour(5, key="wide"), per_hour(1, key="narrow")
    assert case.limiter.acquire([wide, narrow]).allowed
    result = case.limiter.acquire([wide, narrow])
    assert not result.allowed and result.refused == narrow
    assert [s.remaining for s in result.states] == [4, 0]
    admitted = sum(case.limiter.acquire([wide]).allowed for _ in range(5))
    assert admitted == 4, "the refused request must not have charged the wide dimension"


def test_a_refusal_names_the_longest_wait_and_states_keep_the_callers_order(case: Case) -> None:
    daily = Dimension("d", "per_day", 2, 86400)
    hourly = per_hour(2, key="h")
    for _ in range(2):
        case.limiter.acquire([hourly, daily])
    result = case.limiter.acquire([hourly, daily])
    assert result.refused == daily
    assert result.retry_after == pytest.approx(86400 / 2, abs=1)
    assert [s.dimension for s in result.states] == [hourly, daily]


def test_a_cost_above_the_whole_quota_is_never_admissible(case: Case) -> None:
    too_big = per_hour(100, key="bytes", cost=101)
    result = case.limiter.acquire([too_big])
    assert not result.allowed and result.retry_after == math.inf and result.refused == too_big
    assert case.limiter.acquire([per_hour(100, key="bytes", cost=100)]).allowed


def test_leases_count_up_to_their_quota_and_free_a_slot_on_release(case: Case) -> None:
    assert case.limiter.acquire([lease("a")]).allowed
    second = case.limiter.acquire([lease("b")])
    assert second.allowed and second.states[0].remaining == 0
    refused = case.limiter.acquire([lease("c")])
    assert not refused.allowed and refused.refused == lease("c")
    assert refused.retry_after == pytest.approx(30, abs=1)
    assert case.limiter.acquire([lease("b")]).allowed, "a live lease renews without a new slot"
    case.limiter.release(lease("a"))
    case.limiter.release(lease("a"))  # releasing twice is harmless
    assert case.limiter.acquire([lease("c")]).allowed


def test_an_unreleased_lease_frees_its_slot_after_its_ttl(case: Case) -> None:
    assert case.limiter.acquire([lease("crashed", quota=1, ttl=0.3)]).allowed
    assert not case.limiter.acquire([lease("next", quota=1, ttl=0.3)]).allowed
    case.wait(0.35)
    result = case.limiter.acquire([lease("next", quota=1, ttl=0.3)])
    assert result.allowed and result.states[0].remaining == 0


def test_a_lease_quota_of_zero_is_never_admissible(case: Case) -> None:
    result = case.limiter.acquire([lease("a", quota=0)])
    assert not result.allowed and result.retry_after == math.inf


def test_a_refused_request_takes_no_lease(case: Case) -> None:
    once = per_hour(1, key="once")
    assert case.limiter.acquire([once]).allowed
    assert not case.limiter.acquire([lease("a", quota=1), once]).allowed
    result = case.limiter.acquire([lease("b", quota=1)])
    assert result.allowed, "the refused request must not have kept lease a"


def test_adjust_charges_and_refunds_but_never_beyond_full(case: Case) -> None:
    tokens = per_hour(10, key="tokens")
    assert case.limiter.acquire([per_hour(10, key="tokens", cost=8)]).allowed
    assert case.limiter.adjust(tokens, 1).remaining == 1
    assert case.limiter.adjust(tokens, -5).remaining == 6
    full = case.limiter.adjust(tokens, -100)
    assert full.remaining == 10 and full.reset_after == 0
    assert sum(case.limiter.acquire([tokens]).allowed for _ in range(11)) == 10


def test_adjust_may_overdraw_a_dimension_which_then_refuses(case: Case) -> None:
    tokens = per_hour(10, key="tokens")
    debt = case.limiter.adjust(tokens, 15)
    assert debt.remaining == 0 and debt.reset_after == pytest.approx(1.5 * HOUR, abs=1)
    refused = case.limiter.acquire([tokens])
    assert refused.retry_after == pytest.approx(0.6 * HOUR, abs=1)


def test_settle_adjusts_every_dimension_and_frees_the_lease_in_one_call(case: Case) -> None:
    tokens, month = per_hour(10, key="tokens"), monthly(10)
    charged = [per_hour(10, key="tokens", cost=8), monthly(10, cost=8), lease("a", quota=1)]
    assert case.limiter.acquire(charged).allowed
    assert not case.limiter.acquire([lease("b", quota=1)]).allowed
    case.limiter.settle([tokens, month], -5, lease("a", quota=1))
    after = case.limiter.acquire([tokens, month, lease("b", quota=1)])
    assert after.allowed
    assert [s.remaining for s in after.states] == [6, 6, 0]  # 8 - 5 + 1 used of each


def test_settle_never_refunds_beyond_full_and_may_only_free_a_lease(case: Case) -> None:
    tokens, month = per_hour(10, key="tokens"), monthly(10)
    assert case.limiter.acquire([per_hour(10, key="tokens", cost=3), monthly(10, cost=3)]).allowed
    case.limiter.settle([tokens, month], -100, None)
    assert [case.limiter.adjust(d, 0).remaining for d in (tokens, month)] == [10, 10]
    assert case.limiter.acquire([lease("a", quota=1)]).allowed
    case.limiter.settle([], 0, lease("a", quota=1))
    assert case.limiter.acquire([lease("b", quota=1)]).allowed
    case.limiter.settle([tokens, month], 12, None)  # an overdraft, as adjust allows
    assert [case.limiter.adjust(d, 0).remaining for d in (tokens, month)] == [0, 0]
    with pytest.raises(ValueError, match="is a lease"):
        case.limiter.settle([lease("b")], 1, None)


def test_a_dimension_refills_continuously(case: Case) -> None:
    per_second = Dimension("fast", "per_second", 4, 1)
    assert all(case.limiter.acquire([per_second]).allowed for _ in range(4))
    refused = case.limiter.acquire([per_second])
    assert not refused.allowed and 0 < refused.retry_after <= 0.25
    case.wait(0.3)
    assert case.limiter.acquire([per_second]).allowed
    assert not case.limiter.acquire([per_second]).allowed


def test_malformed_requests_are_refused_before_anything_is_charged(case: Case) -> None:
    with pytest.raises(ValueError, match="once per request"):
        case.limiter.acquire([per_hour(5), per_hour(5)])
    with pytest.raises(ValueError, match="is a lease"):
        case.limiter.adjust(lease("a"), 1)
    assert case.limiter.acquire([per_hour(1)]).allowed


def monthly(quota: int, *, cost: int = 1, key: str = "m") -> MonthlyQuota:
    return MonthlyQuota(key, "per_month", quota, cost=cost)


def test_a_monthly_quota_is_charged_atomically_until_the_month_ends(case: Case) -> None:
    assert case.limiter.acquire([monthly(10, cost=6)]).allowed
    refused = case.limiter.acquire([lease("a"), monthly(10, cost=5), per_hour(5)])
    assert not refused.allowed and refused.refused == monthly(10, cost=5)
    assert refused.retry_after == pytest.approx(month_of(time.time())[1], abs=2)
    assert [s.remaining for s in refused.states] == [2, 4, 5]  # nothing was charged
    admitted = case.limiter.acquire([lease("a"), monthly(10, cost=4), per_hour(5)])
    assert [s.remaining for s in admitted.states] == [1, 0, 4]
    assert admitted.states[1].reset_after == pytest.approx(month_of(time.time())[1], abs=2)
    assert not case.limiter.acquire([monthly(10)]).allowed


def test_a_cost_above_the_whole_month_is_never_admissible(case: Case) -> None:
    refused = case.limiter.acquire([monthly(10, cost=11), per_hour(5)])
    assert refused.retry_after == math.inf and refused.refused == monthly(10, cost=11)
    assert case.limiter.acquire([monthly(10, cost=10)]).allowed


def test_a_monthly_quota_is_adjusted_but_never_below_nothing_used(case: Case) -> None:
    assert case.limiter.acquire([monthly(10, cost=8)]).allowed
    assert case.limiter.adjust(monthly(10), -5).remaining == 7
    assert case.limiter.adjust(monthly(10), -100).remaining == 10
    assert case.limiter.adjust(monthly(10), 12).remaining == 0
    assert not case.limiter.acquire([monthly(10)]).allowed


def test_the_next_calendar_month_starts_whole() -> None:
    wall = Clock()
    wall.now = datetime(2028, 2, 29, 23, 59, 50, tzinfo=UTC).timestamp()  # a leap day
    limiter = MemoryLimiter(wall=wall)
    assert limiter.acquire([monthly(10, cost=10)]).allowed
    refused = limiter.acquire([monthly(10)])
    assert refused.retry_after == pytest.approx(10)
    wall.advance(10)
    assert limiter.acquire([monthly(10, cost=10)]).allowed


@pytest.mark.parametrize(
    ("moment", "month", "left"),
    [
        (datetime(2026, 11, 27, 12, tzinfo=UTC), 2026 * 12 + 10, 3.5 * 86400),
        (datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC), 2026 * 12 + 11, 1),
        (datetime(2028, 2, 28, tzinfo=UTC), 2028 * 12 + 1, 2 * 86400),
        (datetime(2100, 2, 28, tzinfo=UTC), 2100 * 12 + 1, 86400),
    ],
)
def test_calendar_months(moment: datetime, month: int, left: float) -> None:
    assert month_of(moment.timestamp()) == (month, left)


def test_redis_counts_a_month_by_its_own_clock() -> None:
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix)
        limiter.acquire([monthly(10, cost=3)])
        client = redis.Redis.from_url(REDIS_URL)
        seconds, micros = client.time()
        stored = client.hgetall(f"{prefix}month:m")
        ttl = client.pttl(f"{prefix}month:m")
        client.close()
        limiter.close()
    month, left = month_of(seconds + micros / 1e6)
    assert stored == {b"m": str(month).encode(), b"u": b"3"}
    assert ttl == pytest.approx(left * 1000, abs=2000)


def test_redis_keys_are_namespaced_and_expire_when_idle() -> None:
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix)
        limiter.acquire([per_hour(4), lease("a", ttl=30)])
        client = redis.Redis.from_url(REDIS_URL)
        gcra_ttl = client.pttl(f"{prefix}gcra:k")
        lease_ttl = client.pttl(f"{prefix}lease:c")
        limiter.adjust(per_hour(4), -1)
        assert not client.exists(f"{prefix}gcra:k"), "a full dimension stores nothing"
        client.close()
        limiter.close()
    assert HOUR / 4 * 1000 - 1000 < gcra_ttl <= HOUR / 4 * 1000
    assert 29_000 < lease_ttl <= 30_000


def test_redis_keeps_time_by_its_own_clock() -> None:
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix)
        limiter.acquire([per_hour(4)])
        client = redis.Redis.from_url(REDIS_URL)
        seconds, micros = client.time()
        tat = float(client.get(f"{prefix}gcra:k") or 0)
        client.close()
        limiter.close()
    assert tat == pytest.approx(seconds - EPOCH + micros / 1e6 + HOUR / 4, abs=1)


def test_redis_reloads_its_scripts_after_a_flush() -> None:
    with throwaway_prefix() as prefix:
        limiter = RedisLimiter(REDIS_URL, prefix=prefix)
        limiter.ping()
        assert limiter.acquire([per_hour(2)]).allowed
        client = redis.Redis.from_url(REDIS_URL)
        client.script_flush()
        client.close()
        assert limiter.acquire([per_hour(2)]).allowed
        assert not limiter.acquire([per_hour(2)]).allowed
        limiter.close()


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A loopback server whose kernel accepts connections that nobody ever answers."""
    with silent_port() as port:
        yield port


def assert_fails_closed_quickly(operation: Callable[[], object]) -> None:
    started = time.perf_counter()
    with pytest.raises(LimiterUnavailable) as caught:
        operation()
    assert time.perf_counter() - started < 0.3
    assert isinstance(caught.value, ServiceUnavailable)
    assert not isinstance(caught.value, redis.RedisError)


def test_an_unreachable_redis_fails_closed_within_the_timeout() -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{closed_port()}/0")
    assert_fails_closed_quickly(lambda: limiter.acquire([per_hour(5)]))
    assert_fails_closed_quickly(lambda: limiter.adjust(per_hour(5), -1))
    assert_fails_closed_quickly(lambda: limiter.release(lease("a")))
    assert_fails_closed_quickly(limiter.ping)


def test_a_stalled_redis_fails_closed_within_the_timeout(stalled_port: int) -> None:
    limiter = RedisLimiter(f"redis://127.0.0.1:{stalled_port}/0")
    assert_fails_closed_quickly(lambda: limiter.acquire([per_hour(5), lease("a")]))
    assert_fails_closed_quickly(lambda: limiter.adjust(per_hour(5), 1))
    assert_fails_closed_quickly(limiter.ping)
    limiter.close()


def test_an_unavailable_limiter_is_a_503_with_retry_after(app: Flask) -> None:
    exc = LimiterUnavailable("the rate limiter is unavailable; nothing was authorized")
    with app.test_request_context("/api/v1/models"):
        response = render(exc)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["code"] == "rate_limiter_unavailable"
    with app.test_request_context("/acme/m/resolve/main/config.json"):
        assert render(exc).status_code == 503


def test_the_container_picks_redis_only_when_a_url_is_configured(settings: Settings) -> None:
    embedded = build_airlock(settings)
    # Building connects to nothing: an unreachable Redis fails requests, not the start-up.
    shared = build_airlock(settings.with_overrides(redis_url=f"redis://127.0.0.1:{closed_port()}"))
    assert isinstance(embedded.limiter, MemoryLimiter)
    assert isinstance(shared.limiter, RedisLimiter)
    embedded.close()
    shared.close()
