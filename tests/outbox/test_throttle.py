"""Token buckets (in-process and Redis) and the circuit breaker, on a fake clock."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bff.outbox.throttle import (
    Breakers,
    BreakerState,
    Bucket,
    CircuitBreaker,
    RedisTokenBucket,
    TokenBucket,
    make_bucket,
)
from tests.conftest import need_redis

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(name="redis_client")
def fx_redis_client() -> Iterator[Any]:
    import redis  # noqa: PLC0415

    need_redis(REDIS_URL)
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    yield client
    client.close()


BucketMaker = Callable[[float, int, FakeClock], Bucket]


@pytest.fixture(params=["memory", "redis"], name="make")
def fx_make(request: pytest.FixtureRequest) -> Iterator[BucketMaker]:
    if request.param == "memory":
        yield TokenBucket
        return
    client = request.getfixturevalue("redis_client")
    sites: list[str] = []

    def make(rate: float, burst: int, clock: FakeClock) -> Bucket:
        sites.append("test-" + uuid.uuid4().hex[:10])
        return RedisTokenBucket(client, sites[-1], rate, burst, clock)

    yield make
    for site in sites:
        client.delete(f"gb:bucket:{site}")


def test_bucket_allows_a_burst_then_waits(make: BucketMaker) -> None:
    clock = FakeClock()
    bucket = make(5.0, 10, clock)
    assert [bucket.try_acquire() for _ in range(10)] == [0.0] * 10
    assert bucket.try_acquire() == pytest.approx(0.2)
    assert bucket.try_acquire(3) == pytest.approx(0.6)  # a refusal takes nothing


def test_bucket_refills_at_its_rate_up_to_burst(make: BucketMaker) -> None:
    clock = FakeClock()
    bucket = make(2.0, 4, clock)
    for _ in range(4):
        assert bucket.try_acquire() == 0
    clock.advance(1.0)  # two tokens back
    assert bucket.try_acquire() == 0
    assert bucket.try_acquire() == 0
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.advance(100)  # never more than burst
    assert [bucket.try_acquire() for _ in range(5)][-1] == pytest.approx(0.5)


def test_bucket_sustained_rate(make: BucketMaker) -> None:
    clock = FakeClock()
    bucket = make(4.0, 1, clock)
    allowed = 0
    for _ in range(80):  # 10 s in steps of 1/8 s (exact in binary)
        if bucket.try_acquire() == 0:
            allowed += 1
        clock.advance(0.125)
    assert allowed == 40


def test_bucket_refuses_impossible_requests() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(0, 1)
    with pytest.raises(ValueError, match="cannot take"):
        TokenBucket(1, 2).try_acquire(3)


def test_redis_bucket_key_is_namespaced_by_site(redis_client: Any) -> None:
    site = "test-" + uuid.uuid4().hex[:10]
    bucket = RedisTokenBucket(redis_client, site, 1.0, 2, FakeClock())
    try:
        assert bucket.try_acquire() == 0
        assert redis_client.exists(f"gb:bucket:{site}") == 1
        assert redis_client.ttl(f"gb:bucket:{site}") > 0
    finally:
        redis_client.delete(f"gb:bucket:{site}")


def test_make_bucket_chooses_by_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert isinstance(make_bucket("a", 1, 1), TokenBucket)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    assert isinstance(make_bucket("a", 1, 1), RedisTokenBucket)  # no connection until the first acquire
    assert isinstance(make_bucket("a", 1, 1, redis_url=""), TokenBucket)


def test_breaker_opens_after_consecutive_failures_only() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 30, clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the count
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_breaker_half_open_lets_one_trial_through() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 30, clock)
    breaker.record_failure()
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # only one trial
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_breaker_failed_trial_reopens_for_another_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10, clock)
    breaker.record_failure()
    breaker.record_failure()
    clock.advance(10)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.advance(9)
    assert not breaker.allow()
    clock.advance(1)
    assert breaker.allow()


def test_breakers_are_per_site() -> None:
    breakers = Breakers(1, 10, FakeClock())
    breakers["a"].record_failure()
    assert breakers["a"].state is BreakerState.OPEN
    assert breakers["b"].state is BreakerState.CLOSED
    assert breakers["a"] is breakers["a"]
