"""The outbox worker's database steps run off its event loop: one site's slow database call does not stall another
site's sends.

No timing: the slow call at one site waits (in its thread) until the other site's pass has confirmed its writes.
Were the call on the event loop, the other site could not run meanwhile: the wait would time out first, and the
test says so.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Any, cast

import pytest

from bff.outbox import queue
from bff.outbox.worker import OutboxWorker, WorkerConfig
from bff.store.db import Store
from tests.broker.conftest import Rig, sign

SLOW, OTHER = "epic-like", "oracle-like"
PATIENCE_S = 30.0  # only reached when the worker blocks its loop (the failure this test is for)


def test_a_slow_database_call_at_one_site_does_not_stall_another_sites_sends(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_signoff, other_signoff = sign(rig, SLOW), sign(rig, OTHER)
    other_done = threading.Event()
    waited: list[bool] = []
    expire_leases = queue.expire_leases

    def slow_for_one_site(store: Store, site: str, now: datetime) -> Any:
        if site == SLOW and not waited:
            waited.append(other_done.wait(PATIENCE_S))  # the database "hangs" until the other site is done
        return expire_leases(store, site, now)

    monkeypatch.setattr(queue, "expire_leases", slow_for_one_site)

    async def other() -> int:
        run = await rig.worker.run_site(OTHER)
        other_done.set()
        return run.confirmed

    async def both() -> tuple[Any, int]:
        return await asyncio.gather(rig.worker.run_site(SLOW), other())

    slow_run, other_confirmed = rig.run(both())
    assert waited == [True], "the other site's pass could not run while one site's database call was in progress"
    assert other_confirmed == len(rig.writeback.status(other_signoff).intents)
    assert rig.writeback.status(other_signoff).state == "confirmed"
    assert slow_run.confirmed == len(rig.writeback.status(slow_signoff).intents)  # and then the slow site's own


def test_the_worker_runs_its_database_steps_in_its_own_bounded_pool() -> None:
    worker = OutboxWorker(cast(Any, None), cast(Any, None), cast(Any, None), writeback=cast(Any, None),
                          config=WorkerConfig(db_threads=2))  # fmt: skip
    threads: set[str] = set()
    loop = threading.get_ident()

    def where() -> None:
        assert threading.get_ident() != loop
        threads.add(threading.current_thread().name)

    async def many() -> None:
        await asyncio.gather(*(worker._db("probe", where) for _ in range(20)))

    try:
        asyncio.run(many())
    finally:
        worker.close()
    assert threads
    assert all(name.startswith("outbox-db") for name in threads)
    assert len(threads) <= 2
