"""bff.bootstrap: one function per service, each built from Settings and the services it is given."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx
import pytest

from bff import bootstrap
from bff.broker.broker import Broker
from bff.jobs.queue import StoreQueue
from bff.store.db import Store

ROOT = Path(__file__).resolve().parent.parent


def test_services_share_one_store_and_one_matrix(sqlite_store: Store) -> None:
    settings = dataclasses.replace(sqlite_store.settings, sites_dir=str(ROOT / "sites"), redis_url="redis://x:1/0")
    core = bootstrap.services(settings, store=sqlite_store)
    assert core.store is sqlite_store
    assert core.capabilities.store is sqlite_store
    assert core.writeback.capabilities is core.capabilities
    with pytest.raises(dataclasses.FrozenInstanceError):
        core.store = sqlite_store  # type: ignore[misc]

    async def wired() -> None:
        async with httpx.AsyncClient() as http:
            worker = bootstrap.outbox_worker(core, Broker(http, lambda *a: None))  # type: ignore[arg-type]
            try:
                assert worker.writeback is core.writeback
                assert worker.capabilities is core.capabilities
                assert worker.redis_url == "redis://x:1/0"  # the sites share their rate limits through Redis
            finally:
                worker.close()

    asyncio.run(wired())


def test_the_embedded_queue_without_redis(sqlite_store: Store) -> None:
    queue = bootstrap.job_queue(dataclasses.replace(sqlite_store.settings, redis_url=None), sqlite_store)
    assert isinstance(queue, StoreQueue)
