"""The patient banner (name, birth date, MRN) is held per launch for a while, never for ever, and only so many."""

from __future__ import annotations

import asyncio

from app.web.common import Banner, BannerCache


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
