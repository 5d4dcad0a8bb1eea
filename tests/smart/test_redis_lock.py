"""Single-flight refresh across workers through Redis (127.0.0.1:6379; skipped without it, failed in CI)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from bff.smart import (
    FernetCipher,
    LocalRefreshLock,
    MemoryLaunchStore,
    RefreshError,
    RefreshLock,
    make_refresh_lock,
)
from bff.smart.locks import KeyedLocks
from tests.conftest import need_redis
from tests.smart.fakes import FakeEhr, launched, make_client, run

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_lock(prefix: str, *, wait_s: float = 40.0) -> RefreshLock:
    """One worker's lock; workers of one test share `prefix` (the Redis keys), tests do not."""
    from bff.smart.redis_lock import RedisRefreshLock  # noqa: PLC0415

    return RedisRefreshLock.from_url(REDIS_URL, prefix=prefix, wait_s=wait_s)


def test_without_redis_the_lock_is_local() -> None:
    assert isinstance(make_refresh_lock(None), LocalRefreshLock)


def test_keyed_locks_are_dropped_when_unused() -> None:
    async def scenario() -> None:
        locks = KeyedLocks()
        order: list[int] = []

        async def hold(i: int) -> None:
            async with locks.hold("k"):
                order.append(i)
                await asyncio.sleep(0.001)

        await asyncio.gather(*(hold(i) for i in range(5)))
        assert order == [0, 1, 2, 3, 4]
        assert len(locks) == 0

    run(scenario())


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "local-only"])
def test_two_workers_refresh_a_launch_once_with_redis(ehr: FakeEhr, shared: bool) -> None:
    if shared:
        need_redis(REDIS_URL)
    ehr.refresh_delay_s = 0.05

    async def scenario() -> None:
        store, cipher = MemoryLaunchStore(), FernetCipher([FernetCipher.generate_key()])  # one database
        prefix = f"test:{uuid.uuid4().hex}:"
        locks = [redis_lock(prefix) if shared else LocalRefreshLock() for _ in range(2)]
        try:
            async with ehr.client() as http:
                workers = [make_client(ehr, http, store=store, cipher=cipher, lock=lock) for lock in locks]
                done = await launched(workers[0], ehr)
                ehr.clock.advance(3590)
                results = await asyncio.gather(
                    *(workers[i % 2].access_token(done.handle) for i in range(20)), return_exceptions=True
                )
        finally:
            for lock in locks:
                await lock.aclose()
        if shared:
            assert len(ehr.refresh_requests) == 1
            assert set(results) == {ehr.issued_access_tokens[-1]}
        else:  # the control: each worker refreshes, and the loser's rotated refresh token is refused
            assert len(ehr.refresh_requests) == 2
            assert any(isinstance(r, RefreshError) for r in results)

    run(scenario())


def test_a_waiter_gives_up_with_a_refresh_error(ehr: FakeEhr) -> None:
    need_redis(REDIS_URL)
    ehr.refresh_delay_s = 1.0

    async def scenario() -> None:
        store, cipher = MemoryLaunchStore(), FernetCipher([FernetCipher.generate_key()])
        prefix = f"test:{uuid.uuid4().hex}:"
        first, second = redis_lock(prefix), redis_lock(prefix, wait_s=0.2)
        try:
            async with ehr.client() as http:
                workers = [make_client(ehr, http, store=store, cipher=cipher, lock=lock) for lock in (first, second)]
                done = await launched(workers[0], ehr)
                ehr.clock.advance(3590)
                slow = asyncio.create_task(workers[0].access_token(done.handle))
                await asyncio.sleep(0.05)
                with pytest.raises(RefreshError, match="timed out"):
                    await workers[1].access_token(done.handle)
                assert await slow == ehr.issued_access_tokens[-1]
        finally:
            await first.aclose()
            await second.aclose()

    run(scenario())
