"""A refresh lock shared by workers through Redis (redis-py's Lock: SET NX PX with a token, released by Lua).

The Redis lock expires after `ttl_s` so that a worker that dies mid-refresh does not block the launch for good;
a waiter gives up after `wait_s` with RefreshError. Inside one process callers first queue on a local lock, so
only one coroutine per worker polls Redis.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import LockError, RedisError

from bff.smart.errors import RefreshError
from bff.smart.locks import KeyedLocks

DEFAULT_PREFIX = "glucobridge:smart:refresh:"


class RedisRefreshLock:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: float = 30.0,
        wait_s: float = 40.0,
        owns_client: bool = False,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl_s
        self._wait = wait_s
        self._owns_client = owns_client
        self._local = KeyedLocks()

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = DEFAULT_PREFIX, ttl_s: float = 30.0, wait_s: float = 40.0
    ) -> RedisRefreshLock:
        """A lock with its own Redis client (closed by `aclose`)."""
        return cls(Redis.from_url(url), prefix=prefix, ttl_s=ttl_s, wait_s=wait_s, owns_client=True)

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._hold(key)

    @asynccontextmanager
    async def _hold(self, key: str) -> AsyncIterator[None]:
        async with self._local.hold(key):
            lock = self._redis.lock(self._prefix + key, timeout=self._ttl, blocking_timeout=self._wait)
            try:
                acquired = await lock.acquire()
            except RedisError as exc:
                raise RefreshError(f"the refresh lock is unavailable: {type(exc).__name__}") from exc
            if not acquired:
                raise RefreshError("timed out waiting for another worker to refresh this launch")
            try:
                yield
            finally:
                try:
                    await lock.release()
                except LockError:
                    pass  # it expired while held (a very slow refresh): nothing left to release
                except RedisError:
                    pass  # Redis went away: the lock expires by itself after ttl_s

    async def aclose(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


__all__ = ["RedisRefreshLock"]
