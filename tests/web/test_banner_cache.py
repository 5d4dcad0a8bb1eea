"""The patient banner (name, birth date, MRN) is held per launch for a while, never for ever, and only so many."""

from __future__ import annotations

import asyncio
import os
import uuid

import redis

from app.web.common import Banner, BannerCache, SharedBanners
from bff.smart.crypto import FernetCipher
from tests.conftest import need_redis


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Ehr:
    """Answers a banner read, counting them."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self) -> Banner | None:
        self.reads += 1
        return {"name": f"Read {self.reads}", "mrn": "M-1"}


def test_a_banner_is_read_once_while_fresh_then_again() -> None:
    clock, ehr = Clock(), Ehr()
    cache = BannerCache(ttl_s=60, clock=clock)
    assert asyncio.run(cache.get("h1", ehr.read)) == {"name": "Read 1", "mrn": "M-1"}
    clock.now += 59
    assert asyncio.run(cache.get("h1", ehr.read)) == {"name": "Read 1", "mrn": "M-1"}
    assert cache.cached("h1") == {"name": "Read 1", "mrn": "M-1"}
    assert ehr.reads == 1
    clock.now += 1  # its time is up: nothing shows it, the next page reads it again
    assert cache.cached("h1") is None
    assert asyncio.run(cache.get("h1", ehr.read)) == {"name": "Read 2", "mrn": "M-1"}
    assert ehr.reads == 2


def test_stale_banners_are_dropped_not_kept() -> None:
    clock, ehr = Clock(), Ehr()
    cache = BannerCache(ttl_s=60, clock=clock)
    for handle in ("a", "b", "c"):
        asyncio.run(cache.get(handle, ehr.read))
    clock.now += 61
    asyncio.run(cache.get("d", ehr.read))
    assert len(cache) == 1  # a, b and c went when d came: no PHI kept past its time


def test_at_most_max_entries_launches_are_held() -> None:
    clock, ehr = Clock(), Ehr()
    cache = BannerCache(ttl_s=600, max_entries=2, clock=clock)
    for handle in ("a", "b"):
        asyncio.run(cache.get(handle, ehr.read))
    assert cache.cached("a") is not None  # a used last: b goes first
    asyncio.run(cache.get("c", ehr.read))
    assert len(cache) == 2
    assert cache.cached("b") is None
    assert cache.cached("a") is not None


def test_a_banner_that_could_not_be_read_is_not_asked_for_on_every_page() -> None:
    clock = Clock()
    reads = []

    async def refused() -> Banner | None:
        reads.append(1)
        return None

    cache = BannerCache(ttl_s=60, clock=clock)
    assert asyncio.run(cache.get("h", refused)) is None
    assert asyncio.run(cache.get("h", refused)) is None
    assert len(reads) == 1


# MARK: shared by the app's processes (Redis)

SHARED_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _shared() -> tuple[SharedBanners, redis.Redis, str]:
    """A shared level under a prefix of this test's own (the Redis database is shared with other tests)."""
    need_redis(SHARED_URL)
    prefix = f"test:banner:{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(SHARED_URL)
    return SharedBanners(client, FernetCipher([FernetCipher.generate_key()]), prefix=prefix), client, prefix


def _drop(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()


def test_a_banner_one_process_read_is_found_by_another_sealed_and_for_what_is_left_of_its_life() -> None:
    shared, client, prefix = _shared()
    try:
        clock, ehr = Clock(), Ehr()
        first = BannerCache(ttl_s=60, clock=clock, shared=shared)
        second = BannerCache(ttl_s=60, clock=clock, shared=shared)  # another app process
        assert asyncio.run(first.get("handle-1", ehr.read)) == {"name": "Read 1", "mrn": "M-1"}
        assert asyncio.run(second.get("handle-1", ehr.read)) == {"name": "Read 1", "mrn": "M-1"}
        assert ehr.reads == 1
        # In Redis: neither the handle nor the banner in the clear, and Redis's own expiry.
        keys = list(client.scan_iter(prefix + "*"))
        assert len(keys) == 1
        assert b"handle-1" not in keys[0]
        raw = client.get(keys[0])
        assert raw is not None
        assert b"Read 1" not in raw
        assert b"M-1" not in raw
        assert 0 < client.pttl(keys[0]) <= 60_000
        # The second process holds it no longer than its life in Redis has left.
        client.pexpire(keys[0], 5_000)
        third = BannerCache(ttl_s=60, clock=clock, shared=shared)
        assert asyncio.run(third.get("handle-1", ehr.read)) == {"name": "Read 1", "mrn": "M-1"}
        clock.now += 6
        client.delete(keys[0])
        assert asyncio.run(third.get("handle-1", ehr.read)) == {"name": "Read 2", "mrn": "M-1"}
        assert ehr.reads == 2
    finally:
        _drop(client, prefix)


def test_a_shared_entry_that_cannot_be_opened_is_a_miss_and_redis_down_reads_from_the_ehr() -> None:
    shared, client, prefix = _shared()
    try:
        ehr = Ehr()
        other_key = SharedBanners(client, FernetCipher([FernetCipher.generate_key()]), prefix=prefix)  # another key
        asyncio.run(BannerCache(ttl_s=60, shared=other_key).get("h", ehr.read))
        assert asyncio.run(BannerCache(ttl_s=60, shared=shared).get("h", ehr.read)) == {"name": "Read 2", "mrn": "M-1"}
        down = SharedBanners(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2),
                             FernetCipher([FernetCipher.generate_key()]))  # fmt: skip
        assert asyncio.run(BannerCache(ttl_s=60, shared=down).get("h", ehr.read)) == {"name": "Read 3", "mrn": "M-1"}
    finally:
        _drop(client, prefix)
