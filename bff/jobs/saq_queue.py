"""The SAQ backend of the job queue: SAQ on Redis (`REDIS_URL`), in production. Same meaning as `StoreQueue`
(`bff.jobs.queue`), by SAQ's own means:

- **Keys**: a SAQ job's key is ours (`JobRequest.key`). SAQ refuses to enqueue a key that is still incomplete
  (queued, scheduled or active: one Lua script, atomic in Redis), so two launches or two workers' schedulers
  queue one job; a finished key may be enqueued again. A `once` key is closed for good by a marker
  (`glucobridge:jobs:<queue>:once:<key>`, kept `ONCE_TTL_S`) set when its run succeeds; enqueueing it again is
  refused, and a run that finds the marker (queued before the first one finished) does nothing.
- **Claims**: a worker moves a job from the queued list to the active list with one `BLMOVE`, so two workers never
  take one job.
- **Restarts**: jobs are in Redis, not in any worker. A job whose worker died stays active until its timeout;
  the sweep (every worker, each minute, one at a time) then retries it while attempts are left (`retries`), else
  it fails. The sweep is SAQ's with one change (`SettlingRedisQueue`): a job is taken for abandoned only if it
  still looks so `SETTLE_S` later, so a job another worker is just taking is left to it.
- **Scheduler**: `tick` is a SAQ cron job every minute with a unique key (`cron:tick`): one per minute across
  all workers.

`saq_functions` turns the job handlers (`bff.jobs.definitions.JOBS`) into SAQ functions named by their kind; the
worker that runs them (litestar-saq's) is built in `app.jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from saq import Queue
from saq.job import Job, Status
from saq.queue.redis import RedisQueue
from saq.types import Context

from bff.jobs.context import JobContext
from bff.jobs.definitions import JOBS, JobKind
from bff.jobs.queue import JobRequest, JobState, retry_delay_s
from bff.jobs.schedule import tick

#: A closed `once` key is remembered this long (its night is long past by then).
ONCE_TTL_S = 14 * 24 * 3600
#: A finished SAQ job (its result and error) is kept this long in Redis.
RESULT_TTL_S = 24 * 3600
QUEUE_NAME = "glucobridge"

_STATES = {
    Status.NEW: JobState.QUEUED,
    Status.QUEUED: JobState.QUEUED,
    Status.ACTIVE: JobState.RUNNING,
    Status.ABORTING: JobState.RUNNING,
    Status.COMPLETE: JobState.DONE,
    Status.FAILED: JobState.FAILED,
    Status.ABORTED: JobState.FAILED,
}


#: How long a job found in the active list but not marked active is given before the sweep takes it for abandoned.
SETTLE_S = 5.0


class SettlingRedisQueue(RedisQueue):
    """SAQ's Redis queue with a sweep that takes a job for abandoned only if it looks so twice, SETTLE_S apart.

    A worker dequeues a job by moving it to the active list, then marks it active. SAQ's sweep takes any job of the
    active list not marked active for abandoned: it aborts it and queues it again. A sweep that runs between those
    two steps of another worker (most likely when workers start together) so turned a job that ran once into one
    reported failed. Here a job is swept only if it is still in the active list, and still not active (or stuck),
    when looked at again SETTLE_S later; what is then done with it is SAQ's own (abort, then retry or finish)."""

    async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
        if not await self.redis.set(self._sweep, 1, ex=lock, nx=True):
            return []  # another worker swept within `lock` seconds (as SAQ's own sweep)
        first = set(await self._unsettled())
        if not first:
            return []
        await asyncio.sleep(SETTLE_S)
        swept: list[str] = []
        for job_id in await self._unsettled():
            if job_id not in first:
                continue
            job = await self._get_job_by_id(job_id)
            if job is None:  # gone: only its id is left in the lists (both dropped at once, as SAQ does)
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.lrem(self._active, 0, job_id)
                    pipe.zrem(self._incomplete, job_id)
                    await pipe.execute()
            else:
                await self.abort(job, error=self.swept_error_message)
                with contextlib.suppress(asyncio.TimeoutError):
                    await job.refresh(abort)
                if job.retryable:
                    await self.retry(job, error=self.swept_error_message)
                else:
                    await self.finish(job, Status.ABORTED, error=self.swept_error_message)
            swept.append(job_id)
        return swept

    async def _unsettled(self) -> list[str]:
        """The active list's jobs that are missing, not marked active, or stuck."""
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in await self.redis.lrange(self._active, 0, -1)]
        if not ids:
            return []
        found = await self.redis.mget(ids)
        out = []
        for job_id, raw in zip(ids, found, strict=True):
            job = self.deserialize(raw) if raw is not None else None
            if job is None or job.status != Status.ACTIVE or job.stuck:
                out.append(job_id)
        return out


def redis_queue(url: str, name: str = QUEUE_NAME) -> RedisQueue:
    return SettlingRedisQueue.from_url(url, name=name)


class SaqQueue:
    backend = "saq"

    def __init__(self, queue: Queue) -> None:
        if not isinstance(queue, RedisQueue):
            raise TypeError("the SAQ backend runs on Redis (REDIS_URL)")
        self.queue = queue

    def once_marker(self, key: str) -> str:
        return f"glucobridge:jobs:{self.queue.name}:once:{key}"

    async def closed(self, key: str) -> bool:
        return bool(await self.queue.redis.exists(self.once_marker(key)))

    async def close_key(self, key: str) -> None:
        await self.queue.redis.set(self.once_marker(key), "1", ex=ONCE_TTL_S)

    def run_marker(self, job: Job) -> str:
        # A retried job keeps its `queued` time; the same key enqueued again later gets a new one.
        return f"glucobridge:jobs:{self.queue.name}:run:{job.key}:{job.queued}"

    async def claim_run(self, job: Job) -> bool:
        """SAQ delivers at least once: a worker's sweep takes a job another worker has just moved to its active
        list (status not yet ACTIVE) for abandoned and queues it again. One marker per job run (NX, expiring after
        the job's own timeout, so a run whose worker died is run again) lets exactly one delivery run it."""
        timeout = max(1, int(job.timeout or 60))
        return bool(await self.queue.redis.set(self.run_marker(job), "1", nx=True, ex=timeout))

    async def keep_run(self, job: Job) -> None:
        await self.queue.redis.expire(self.run_marker(job), RESULT_TTL_S)

    async def release_run(self, job: Job) -> None:
        await self.queue.redis.delete(self.run_marker(job))

    async def enqueue(self, request: JobRequest) -> bool:
        if request.once and await self.closed(request.key):
            return False
        scheduled = int(request.run_at.astimezone(UTC).timestamp()) if request.run_at else 0
        job = await self.queue.enqueue(
            request.kind,
            key=request.key,
            timeout=math.ceil(request.timeout_s),
            retries=request.attempts,
            retry_delay=retry_delay_s(1),
            retry_backoff=retry_delay_s(99),
            ttl=RESULT_TTL_S,
            scheduled=scheduled if scheduled > datetime.now(UTC).timestamp() else 0,
            meta={"once": True} if request.once else {},
            payload=dict(request.payload),
        )
        return job is not None

    async def state(self, key: str) -> JobState | None:
        job = await self.queue.job(key)
        return None if job is None else _STATES[job.status]

    async def close(self) -> None:
        await self.queue.disconnect()


def _function(kind: JobKind, context: Callable[[], JobContext], queue: SaqQueue) -> Callable[..., Any]:
    async def run(ctx: Context, *, payload: Mapping[str, Any]) -> dict[str, Any]:
        job = ctx.get("job")
        once = bool(job is not None and job.meta.get("once"))
        if once and job is not None and await queue.closed(job.key):
            return {"skipped": "this key has run already"}
        claimed = job is None or await queue.claim_run(job)
        if not claimed:
            return {"skipped": "a duplicate delivery of a run already under way or done"}
        try:
            result = await kind.handler(context(), payload)
        except BaseException:
            if job is not None:
                await queue.release_run(job)  # a real failure: SAQ's retry must run it again
            raise
        if job is not None:
            await queue.keep_run(job)
        if once and job is not None:
            await queue.close_key(job.key)
        return result

    run.__qualname__ = run.__name__ = kind.name  # SAQ names a function by its __qualname__
    return run


def saq_functions(
    context: Callable[[], JobContext], queue: SaqQueue, jobs: Mapping[str, JobKind] = JOBS
) -> list[Callable[..., Any]]:
    """Each job kind as a SAQ function; `context` gives the worker's JobContext (built once the worker starts)."""
    return [_function(kind, context, queue) for kind in jobs.values()]


def saq_tick(context: Callable[[], JobContext]) -> Callable[..., Any]:
    """The scheduler as a SAQ function (a cron job every minute, `app.jobs`)."""

    async def run(ctx: Context) -> dict[str, Any]:
        del ctx
        report = await tick(context())
        return {"nightly": list(report.nightly), "recompute": report.recompute, "corrections": list(report.corrections)}

    run.__qualname__ = run.__name__ = "tick"
    return run
