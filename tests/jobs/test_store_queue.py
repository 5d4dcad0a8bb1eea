"""The embedded job queue (`StoreQueue` on the store's `jobs` table), on SQLite and PostgreSQL: one job per key,
exclusive claims, leases that outlive a dead worker, retries, and jobs that survive a restart of every process."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from bff.jobs.context import JobContext
from bff.jobs.definitions import JobKind
from bff.jobs.queue import JobRequest, JobState, StoreQueue
from bff.jobs.worker import EmbeddedWorker
from bff.settings import Settings
from bff.store.db import Store


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(name="clock")
def fx_clock() -> Clock:
    return Clock()


@pytest.fixture(name="queue")
def fx_queue(store: Store, clock: Clock) -> StoreQueue:
    return StoreQueue(store, clock=clock, lease_s=30)


def reopen(store: Store) -> Iterator[Store]:
    """Another process's view of the same database: its own engine and connections."""
    other = Store(Settings(database_url=store.engine.url.render_as_string(hide_password=False)), check_schema=False)
    try:
        yield other
    finally:
        other.dispose()


def test_one_job_per_key_while_it_is_queued_or_running_then_again_once_finished(queue: StoreQueue) -> None:
    request = JobRequest("launch_read", "launch-read:epic-like:abc", {"n": 1})
    assert queue.put(request) is True
    assert queue.put(JobRequest("launch_read", "launch-read:epic-like:abc", {"n": 2})) is False  # a second launch
    job = queue.claim("w1")
    assert job is not None
    assert job.payload == {"n": 1}  # the first one's
    assert queue.get_state(request.key) is JobState.RUNNING
    assert queue.put(request) is False  # running: still one job
    assert queue.claim("w2") is None
    assert queue.finish(job, {"added": 3})
    assert queue.get_state(request.key) is JobState.DONE
    assert queue.put(JobRequest("launch_read", request.key, {"n": 3})) is True  # the next launch reads again
    again = queue.claim("w2")
    assert again is not None
    assert again.payload == {"n": 3}
    assert again.attempt == 1


def test_a_once_key_runs_once_unless_its_run_failed(queue: StoreQueue) -> None:
    night = JobRequest("nightly_bulk", "nightly-bulk:epic-like:2026-12-07", {}, once=True, attempts=1)
    assert queue.put(night)
    job = queue.claim("w1")
    assert job is not None
    assert queue.finish(job)
    assert queue.put(night) is False  # the scheduler sees the window again a minute later: nothing runs
    other = JobRequest("nightly_bulk", "nightly-bulk:oracle-like:2026-12-07", {}, once=True, attempts=1)
    assert queue.put(other)
    failed = queue.claim("w1")
    assert failed is not None
    assert queue.fail(failed, "the EHR was down", retry=False) is JobState.FAILED
    assert queue.put(other) is True  # a failed night is tried again while its window lasts


def test_a_failed_attempt_is_retried_after_a_delay_until_its_attempts_are_spent(queue: StoreQueue,
                                                                                clock: Clock) -> None:  # fmt: skip
    queue.put(JobRequest("recompute_stale", "recompute-stale", attempts=2))
    first = queue.claim("w1")
    assert first is not None
    assert queue.fail(first, "database busy") is JobState.QUEUED
    assert queue.claim("w1") is None  # not before its delay
    clock.advance(5)
    second = queue.claim("w1")
    assert second is not None
    assert second.attempt == 2
    assert queue.fail(second, "database busy") is JobState.FAILED
    clock.advance(600)
    assert queue.claim("w1") is None


def test_a_dead_workers_job_is_taken_over_when_its_lease_expires_and_the_dead_worker_cannot_finish_it(
    queue: StoreQueue, clock: Clock
) -> None:
    queue.put(JobRequest("corrections", "corrections:epic-like", {"site": "epic-like"}, attempts=2))
    dead = queue.claim("worker-that-dies")
    assert dead is not None
    clock.advance(10)
    assert queue.claim("w2") is None  # its lease holds
    assert queue.renew(dead)  # a live worker renews it
    clock.advance(29)
    assert queue.claim("w2") is None
    clock.advance(2)  # the worker died: no renewal for longer than the lease
    taken = queue.claim("w2")
    assert taken is not None
    assert taken.attempt == 2
    assert queue.finish(dead) is False  # the fencing token: the dead worker's attempt is not the job's any more
    assert queue.renew(dead) is False
    assert queue.finish(taken, {"corrections": 0})
    assert queue.get_state("corrections:epic-like") is JobState.DONE


def test_a_dead_workers_last_attempt_fails_instead_of_running_again(queue: StoreQueue, clock: Clock) -> None:
    queue.put(JobRequest("launch_read", "launch-read:x:y", attempts=1))
    assert queue.claim("dies") is not None
    clock.advance(31)
    assert queue.claim("w2") is None
    assert queue.get_state("launch-read:x:y") is JobState.FAILED


def test_jobs_survive_a_restart_of_every_process(store: Store, clock: Clock) -> None:
    before = StoreQueue(store, clock=clock)
    before.put(JobRequest("recompute_stale", "recompute-stale"))
    before.put(JobRequest("corrections", "corrections:epic-like", {"site": "epic-like"}))
    held = before.claim("killed-worker")  # claimed, then the process is killed mid-job
    assert held is not None
    store.dispose()  # every connection of the old processes is gone
    for after_store in reopen(store):
        after = StoreQueue(after_store, clock=clock)
        waiting = after.claim("restarted")
        assert waiting is not None
        assert waiting.key != held.key
        clock.advance(31)  # the killed worker's lease expires
        resumed = after.claim("restarted")
        assert resumed is not None
        assert resumed.key == held.key
        assert resumed.attempt == 2
        assert after.finish(resumed)
        assert after.finish(waiting)
        assert after.get_state(held.key) is JobState.DONE


def test_two_workers_racing_never_claim_one_job_twice(store: Store) -> None:
    keys = [f"corrections:site-{i}" for i in range(60)]
    queue = StoreQueue(store)
    for key in keys:
        queue.put(JobRequest("corrections", key, {}))
    claimed: dict[str, list[str]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def work(name: str) -> None:
        for own in reopen(store):  # each worker its own engine (its own connections), as two processes
            mine = StoreQueue(own)
            start.wait()
            while (job := mine.claim(name)) is not None:
                claimed[name].append(job.key)
                mine.finish(job)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    counts = Counter(claimed["a"] + claimed["b"])
    assert sorted(counts) == sorted(keys)
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1]


def test_two_launches_racing_on_one_key_make_one_job(store: Store) -> None:
    results: list[bool] = []
    start = threading.Barrier(4)

    def launch() -> None:
        for own in reopen(store):
            start.wait()
            results.append(StoreQueue(own).put(JobRequest("launch_read", "launch-read:epic-like:same", {})))

    threads = [threading.Thread(target=launch) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [False, False, False, True]


# MARK: the worker


def _kinds(runs: Counter[str], *, fail_first: set[str] | None = None, sleep_s: float = 0.0) -> Mapping[str, JobKind]:
    failed: set[str] = set()

    async def handler(ctx: JobContext, payload: Mapping[str, Any]) -> dict[str, Any]:
        del ctx
        name = str(payload["name"])
        runs[name] += 1
        await asyncio.sleep(sleep_s)
        if fail_first and name in fail_first and name not in failed:
            failed.add(name)
            raise RuntimeError("the first attempt fails")
        return {"ran": name}

    return {"test": JobKind("test", handler)}


def test_two_embedded_workers_run_every_job_exactly_once(store: Store) -> None:
    runs: Counter[str] = Counter()
    queue = StoreQueue(store)
    names = [f"job-{i}" for i in range(30)]
    for name in names:
        queue.put(JobRequest("test", f"test:{name}", {"name": name}))

    async def main() -> None:
        workers = [
            EmbeddedWorker(StoreQueue(store), cast(JobContext, None), jobs=_kinds(runs, sleep_s=0.01), name=n,
                           concurrency=3, poll_s=0.05, tick_s=None)
            for n in ("w1", "w2")
        ]  # fmt: skip
        stop = asyncio.Event()
        running = [asyncio.create_task(w.run(stop)) for w in workers]
        for _ in range(400):
            if sum(runs.values()) >= len(names) and all(queue.get_state(f"test:{n}") is JobState.DONE for n in names):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*running)

    asyncio.run(main())
    assert runs == Counter(names)


def test_the_worker_retries_a_failed_job_and_gives_back_what_it_holds_when_stopped(store: Store,
                                                                                    clock: Clock) -> None:  # fmt: skip
    runs: Counter[str] = Counter()
    queue = StoreQueue(store, clock=clock)
    queue.put(JobRequest("test", "test:flaky", {"name": "flaky"}, attempts=2))
    queue.put(JobRequest("test", "test:slow", {"name": "slow"}))
    worker = EmbeddedWorker(queue, cast(JobContext, None), jobs=_kinds(runs, fail_first={"flaky"}), tick_s=None)

    async def main() -> None:
        assert await worker.run_one() is not None  # flaky fails
        clock.advance(6)
        await worker.drain()
        assert queue.get_state("test:flaky") is JobState.DONE

        slow = EmbeddedWorker(queue, cast(JobContext, None), jobs=_kinds(runs, sleep_s=30), tick_s=None)
        queue.put(JobRequest("test", "test:held", {"name": "held"}))
        task = asyncio.create_task(slow.run_one())
        await asyncio.sleep(0.3)
        assert queue.get_state("test:held") is JobState.RUNNING
        task.cancel()  # the worker is stopped
        with pytest.raises(asyncio.CancelledError):
            await task
        assert queue.get_state("test:held") is JobState.QUEUED  # given back, at once, the attempt not counted
        again = queue.claim("another")
        assert again is not None
        assert again.attempt == 1

    asyncio.run(main())
    assert runs["flaky"] == 2
