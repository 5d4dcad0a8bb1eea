"""Single-flight locks: one refresh per launch at a time, whoever asks.

`RefreshLock` is the interface the SMART client holds around a refresh. `LocalRefreshLock` serialises the
coroutines of one process (an `asyncio.Lock` per key, dropped when unused); `RedisRefreshLock`
(`bff.smart.redis_lock`) adds a Redis lock so that several workers sharing a launch store refresh a launch once.
Keys are digests of launch handles, never the handles themselves.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass
class _Entry:
    lock: asyncio.Lock
    users: int = 0


class KeyedLocks:
    """asyncio locks by key, made on first use and dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0 and self._entries.get(key) is entry:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class RefreshLock(Protocol):
    """Mutual exclusion per key across everyone who may refresh the same launch."""

    def hold(self, key: str) -> AbstractAsyncContextManager[None]: ...

    async def aclose(self) -> None: ...


class LocalRefreshLock:
    """In-process single flight: enough for one worker (or for several sharing nothing)."""

    def __init__(self) -> None:
        self._locks = KeyedLocks()

    def hold(self, key: str) -> AbstractAsyncContextManager[None]:
        return self._locks.hold(key)

    async def aclose(self) -> None:
        return None


def make_refresh_lock(redis_url: str | None) -> RefreshLock:
    """A Redis-backed lock when a Redis URL is configured (several workers), else an in-process one."""
    if not redis_url:
        return LocalRefreshLock()
    from bff.smart.redis_lock import RedisRefreshLock  # noqa: PLC0415 - Redis is optional

    return RedisRefreshLock.from_url(redis_url)


__all__ = ["KeyedLocks", "LocalRefreshLock", "RefreshLock", "make_refresh_lock"]
