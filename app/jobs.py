"""The job queue's wiring: which backend the settings choose, and the worker `glucobridge worker` runs.

- `REDIS_URL` set: SAQ on Redis. The queue's configuration and its worker are litestar-saq's (`SAQConfig`,
  `QueueConfig`, its `Worker`, built by `SAQPlugin.get_workers`), with the job kinds as SAQ functions and the
  scheduler as a SAQ cron job every minute. The web app only enqueues: it takes the same queue instance and does
  not install the plugin (whose start-up hook would run a heartbeat thread in every web process).
- Otherwise: the embedded queue on the store (`bff.jobs.queue.StoreQueue`) and its worker (`bff.jobs.worker`).

The queue the web app enqueues on and the jobs' services are built by `bff.bootstrap` (`job_queue`, `job_context`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping

from litestar_saq import CronJob, QueueConfig, SAQConfig, SAQPlugin
from litestar_saq.base import Worker as SaqWorker
from saq.queue.redis import RedisQueue
from saq.types import PartialTimersDict

from bff import bootstrap
from bff.jobs.context import JobContext
from bff.jobs.definitions import JOBS, JobKind
from bff.jobs.queue import StoreQueue
from bff.jobs.saq_queue import QUEUE_NAME, SaqQueue, redis_queue, saq_functions, saq_tick
from bff.jobs.worker import EmbeddedWorker
from bff.settings import Settings
from bff.store.db import Store

log = logging.getLogger("glucobridge.jobs")


def saq_config(
    queue: RedisQueue,
    context: Callable[[], JobContext],
    *,
    concurrency: int = 4,
    burst: bool = False,
    timers: PartialTimersDict | None = None,
    jobs: Mapping[str, JobKind] = JOBS,
    schedule: bool = True,
    grace_s: int = 10,
) -> SAQConfig:
    """litestar-saq's configuration of the queue: the job kinds, the scheduler every minute (one across workers)."""
    tasks = saq_functions(context, SaqQueue(queue), jobs)
    return SAQConfig(
        queue_instances={queue.name: queue},
        queue_configs=[
            QueueConfig(
                broker_instance=queue.redis,
                name=queue.name,
                tasks=tasks,
                scheduled_tasks=[CronJob(function=saq_tick(context), cron="* * * * *", timeout=50)]
                if schedule and not burst
                else [],
                concurrency=concurrency,
                burst=burst,
                dequeue_timeout=1.0,  # a stop is noticed within a second (0 would block in Redis until a job comes)
                timers=timers,
                shutdown_grace_period_s=grace_s,  # jobs in hand may finish; then they are cancelled (retried)
            )
        ],
    )


def saq_worker(
    queue: RedisQueue, context: Callable[[], JobContext], *, concurrency: int = 4, burst: bool = False,
    timers: PartialTimersDict | None = None, jobs: Mapping[str, JobKind] = JOBS, schedule: bool = True,
    grace_s: int = 10,
) -> SaqWorker:  # fmt: skip
    config = saq_config(queue, context, concurrency=concurrency, burst=burst, timers=timers, jobs=jobs,
                        schedule=schedule, grace_s=grace_s)  # fmt: skip
    return SAQPlugin(config).get_workers()[queue.name]


async def run_worker(
    settings: Settings,
    *,
    stop: asyncio.Event,
    concurrency: int = 4,
    once: bool = False,
    store: Store | None = None,
) -> None:
    """Run jobs until `stop` is set (or, with `once`, until none is due)."""
    # Request URLs carry patient ids (a launch read's search): keep the HTTP client's per-request lines out.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    core = bootstrap.services(settings, store=store)
    if settings.redis_url:
        queue = redis_queue(settings.redis_url, QUEUE_NAME)
        ctx = bootstrap.job_context(core, SaqQueue(queue))
        worker = saq_worker(queue, lambda: ctx, concurrency=concurrency, burst=once)
        worker.SIGNALS = []  # the caller handles signals (stop)
        await queue.connect()
        log.info("job worker: SAQ on Redis, queue %s, %d at a time", queue.name, concurrency)
        try:
            running = asyncio.create_task(worker.start())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([running, stopping], return_when=asyncio.FIRST_COMPLETED)
            await worker.stop()
            stopping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        finally:
            await ctx.close()
            await queue.disconnect()
        return
    embedded = StoreQueue(core.store)
    ctx = bootstrap.job_context(core, embedded)
    worker_ = EmbeddedWorker(embedded, ctx, concurrency=concurrency)
    try:
        if once:
            ran = await worker_.drain()
            log.info("job worker: %d job(s) run", ran)
        else:
            await worker_.run(stop)
    finally:
        await ctx.close()


def serve_forever(settings: Settings, *, concurrency: int = 4, once: bool = False) -> None:
    """`glucobridge worker`: SIGTERM or SIGINT stop it after the jobs in hand (or give them back)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, stop.set)
        await run_worker(settings, stop=stop, concurrency=concurrency, once=once)

    asyncio.run(main())
