"""Per-site rate limiting (a token bucket) and a per-site circuit breaker.

The bucket is in-process for one worker, or in Redis (one atomic Lua script, keys `gb:bucket:<site>`) when
`REDIS_URL` is set and several workers share a site's limit. Both take the time from an injected clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

Clock = Callable[[], float]

_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens >= n then
  tokens = tokens - n
else
  wait = (n - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
return string.format('%.17g', wait)
"""


class Bucket(Protocol):
    def try_acquire(self, n: int = 1) -> float:
        """Take n tokens: 0.0 when allowed (taken), else the seconds to wait before n would be available."""
        ...


def _check(rate_per_s: float, burst: int) -> None:
    if not rate_per_s > 0 or burst < 1:
        raise ValueError(f"a token bucket needs rate_per_s > 0 and burst >= 1 (got {rate_per_s}, {burst})")


def _check_n(n: int, burst: int) -> None:
    if n < 1 or n > burst:
        raise ValueError(f"cannot take {n} tokens from a bucket of {burst}")


class TokenBucket:
    """An in-process token bucket: starts full, refills at rate_per_s up to burst. Thread-safe."""

    def __init__(self, rate_per_s: float, burst: int, clock: Clock = time.monotonic) -> None:
        _check(rate_per_s, burst)
        self.rate = rate_per_s
        self.burst = burst
        self.clock = clock
        self._tokens = float(burst)
        self._ts = clock()
        self._lock = threading.Lock()

    def try_acquire(self, n: int = 1) -> float:
        _check_n(n, self.burst)
        with self._lock:
            now = self.clock()
            if now > self._ts:
                self._tokens = min(self.burst, self._tokens + (now - self._ts) * self.rate)
                self._ts = now
            if self._tokens >= n:
                self._tokens -= n
                return 0.0
            return (n - self._tokens) / self.rate


class RedisTokenBucket:
    """The same bucket kept in Redis, shared by every worker; each acquire is one atomic script call.

    The clock should be wall time (the default) so that workers on several hosts agree.
    """

    def __init__(self, client: Any, site: str, rate_per_s: float, burst: int, clock: Clock = time.time) -> None:
        _check(rate_per_s, burst)
        self.key = f"gb:bucket:{site}"
        self.rate = rate_per_s
        self.burst = burst
        self.clock = clock
        self._script = client.register_script(_LUA)

    def try_acquire(self, n: int = 1) -> float:
        _check_n(n, self.burst)
        wait = self._script(keys=[self.key], args=[repr(self.rate), self.burst, repr(self.clock()), n])
        return float(wait.decode() if isinstance(wait, bytes) else wait)


def make_bucket(
    site: str, rate_per_s: float, burst: int, *, redis_url: str | None = None, clock: Clock | None = None
) -> Bucket:
    """A Redis bucket when a Redis URL is given (default: `REDIS_URL`), else an in-process one."""
    url = redis_url if redis_url is not None else os.environ.get("REDIS_URL") or None
    if url:
        import redis  # noqa: PLC0415 - only when Redis is configured

        return RedisTokenBucket(redis.Redis.from_url(url), site, rate_per_s, burst, clock or time.time)
    return TokenBucket(rate_per_s, burst, clock or time.monotonic)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Closed → open after `threshold` consecutive failures → half-open after `cool_down_s`, where one trial
    request is let through: its success closes the breaker, its failure opens it again for another cool-down.
    """

    def __init__(self, threshold: int, cool_down_s: float, clock: Clock = time.monotonic) -> None:
        if threshold < 1 or cool_down_s < 0:
            raise ValueError("threshold must be >= 1 and cool_down_s >= 0")
        self.threshold = threshold
        self.cool_down_s = cool_down_s
        self.clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_out = False
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def _maybe_half_open(self) -> None:
        if self._state is BreakerState.OPEN and self.clock() - self._opened_at >= self.cool_down_s:
            self._state = BreakerState.HALF_OPEN
            self._trial_out = False

    def allow(self) -> bool:
        """Whether a request may go now (in half-open, only the first caller gets the one trial)."""
        with self._lock:
            self._maybe_half_open()
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.HALF_OPEN and not self._trial_out:
                self._trial_out = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._trial_out = False

    def record_failure(self) -> None:
        with self._lock:
            self._maybe_half_open()
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
                self._state = BreakerState.OPEN
                self._opened_at = self.clock()
                self._trial_out = False


class Breakers:
    """One circuit breaker per site, made on first use."""

    def __init__(self, threshold: int, cool_down_s: float, clock: Clock = time.monotonic) -> None:
        self.threshold = threshold
        self.cool_down_s = cool_down_s
        self.clock = clock
        self._by_site: dict[str, CircuitBreaker] = {}
        self._lock = threading.Lock()

    def __getitem__(self, site: str) -> CircuitBreaker:
        with self._lock:
            if site not in self._by_site:
                self._by_site[site] = CircuitBreaker(self.threshold, self.cool_down_s, self.clock)
            return self._by_site[site]
