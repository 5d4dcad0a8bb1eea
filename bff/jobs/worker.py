"""The worker of the embedded queue (`StoreQueue`): `glucobridge worker` without Redis (`app.jobs`).

`concurrency` loops each claim a due job, run its handler within the job's timeout while renewing the claim's
lease, and record the outcome (done; queued again after a delay while attempts are left; failed). A worker told to
stop gives back the jobs it holds unfinished (`StoreQueue.release`); one that is killed leaves their leases to
expire, and another worker (or this one, restarted) takes them over. Every `tick_s` it runs the scheduler
(`bff.jobs.schedule.tick`) and forgets jobs finished more than `KEEP_DONE` ago. Several workers may run against one
store, on one machine or many: claims are exclusive.

Logs name a job by its kind and key (keys hold digests, never a patient) and an error by its type only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import traceback
from collections.abc import Mapping
from datetime import timedelta

import anyio

from bff.jobs.context import JobContext
from bff.jobs.definitions import JOBS, JobKind
from bff.jobs.queue import ClaimedJob, JobState, StoreQueue
from bff.jobs.schedule import TICK_S, tick

log = logging.getLogger("glucobridge.jobs.worker")

#: Finished jobs are kept this long (what ran, what it said), then forgotten.
KEEP_DONE = timedelta(days=30)


def worker_name() -> str:
    return f"{socket.gethostname()[:40]}:{os.getpid()}"


class EmbeddedWorker:
    def __init__(
        self,
        queue: StoreQueue,
        ctx: JobContext,
        *,
        jobs: Mapping[str, JobKind] = JOBS,
        name: str | None = None,
        concurrency: int = 2,
        poll_s: float = 0.25,
        tick_s: float | None = TICK_S,
    ) -> None:
        self.queue = queue
        self.ctx = ctx
        self.jobs = jobs
        self.name = name or worker_name()
        self.concurrency = max(1, concurrency)
        self.poll_s = poll_s
        self.tick_s = tick_s  # None: no scheduler in this worker

    async def run_one(self) -> ClaimedJob | None:
        """Claim one due job and run it to its end; None when none was due."""
        job = await anyio.to_thread.run_sync(self.queue.claim, self.name)
        if job is None:
            return None
        kind = self.jobs.get(job.kind)
        if kind is None:
            await anyio.to_thread.run_sync(lambda: self.queue.fail(job, f"no job of kind {job.kind!r}", retry=False))
            log.error("job %s: no job of kind %s", job.key, job.kind)
            return job
        renewing = asyncio.create_task(self._renew(job))
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(kind.handler(self.ctx, job.payload), job.timeout_s)
        except asyncio.CancelledError:
            await asyncio.shield(anyio.to_thread.run_sync(self.queue.release, job))
            raise
        except Exception as exc:
            error = "".join(traceback.format_exception(exc)[-5:])
            state = await anyio.to_thread.run_sync(lambda: self.queue.fail(job, error))
            log.warning("job %s (%s) attempt %d failed: %s; now %s", job.key, job.kind, job.attempt,
                        type(exc).__name__, state.value if state else "taken over by another worker")  # fmt: skip
        else:
            kept = await anyio.to_thread.run_sync(lambda: self.queue.finish(job, result))
            log.info("job %s (%s) %s in %.1f s", job.key, job.kind, "done" if kept else "done, but taken over",
                     time.monotonic() - started)  # fmt: skip
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        return job

    async def _renew(self, job: ClaimedJob) -> None:
        while True:
            await asyncio.sleep(self.queue.lease_s / 3)
            if not await anyio.to_thread.run_sync(self.queue.renew, job):
                log.warning("job %s: its lease was lost (taken over)", job.key)
                return

    async def drain(self, *, timeout_s: float = 60.0) -> int:
        """Run due jobs until none is due (tests, `glucobridge worker --once`); how many ran."""
        ran = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and await self.run_one() is not None:
            ran += 1
        return ran

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                job = await self.run_one()
            except Exception as exc:  # the store went away: wait and try again
                log.error("worker loop: %s", type(exc).__name__)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)

    async def _schedule(self, stop: asyncio.Event, tick_s: float) -> None:
        while not stop.is_set():
            try:
                report = await tick(self.ctx)
                await anyio.to_thread.run_sync(self.queue.purge, KEEP_DONE)
                if report.nightly or report.recompute:
                    log.info("scheduled: %s", ", ".join([*report.nightly, *(["recompute-stale"] if report.recompute
                                                                            else [])]))  # fmt: skip
            except Exception as exc:
                log.error("scheduler: %s", type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; the jobs in hand are given back (or finish) before it returns."""
        log.info(
            "job worker %s: %d at a time, embedded queue (%s)", self.name, self.concurrency, self.queue.store.dialect
        )
        loops = [asyncio.create_task(self._loop(stop)) for _ in range(self.concurrency)]
        if self.tick_s is not None:
            loops.append(asyncio.create_task(self._schedule(stop, self.tick_s)))
        try:
            await stop.wait()
        finally:
            stop.set()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)


__all__ = ["KEEP_DONE", "EmbeddedWorker", "JobState", "worker_name"]
