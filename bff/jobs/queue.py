"""The job queue's interface, and its embedded backend on the store.

    enqueue(key) ──► queued ──claim (a lease, renewed while it runs)──► running ──► done | failed
                       ▲                                                  │
                       └──── retry after a delay (attempts left) ◄────────┤ the handler raised or timed out
                                                                          │ its worker died: the lease expires,
                                                                          └ another worker claims it (next attempt)

Two backends implement `JobQueue`, with the same meaning:

- `StoreQueue` (here): the store's `jobs` table. The embedded default (SQLite, no services), and any deployment
  without Redis. Jobs are rows, so they survive a restart of every process.
- `SaqQueue` (`bff/jobs/saq_queue.py`): SAQ on Redis (`REDIS_URL`), in production.

A job is named by its **key** (`JobRequest.key`): while a job with that key is queued or running, enqueueing the
key again changes nothing (two launches of one patient make one read); once it is done or failed, enqueueing it
again queues it anew, except a `once` job, which a finished run closes for good (the nightly Bulk export of a
site and night). **Claims are exclusive**: PostgreSQL takes the next due row with `FOR UPDATE SKIP LOCKED`, SQLite
with one guarded `UPDATE … RETURNING` under its single writer, so two workers never run one job at once. A claim
holds a **lease** that the running worker renews (`renew`); only a worker that stopped (a crash, a kill) lets its
lease expire, and then another worker takes the job over as its next attempt. The attempt number is the
**fencing token**: `finish` and `fail` change a job only while the attempt they ran is still its current one, so a
worker that lost its lease cannot overwrite what its successor did.

Nothing here knows what a job does: the handlers are `bff.jobs.definitions`; the worker loop is `bff.jobs.worker`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import anyio
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from bff.store.db import Store
from bff.store.models import Job

#: How long a claim holds before another worker may take the job over; a running job renews it every third.
DEFAULT_LEASE_S = 30.0
#: Errors kept on a job row are cut to this (a traceback's last lines; never a payload).
ERROR_LIMIT = 2000


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """SQLite gives back naive datetimes (stored in UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class JobRequest:
    """A job to run: `kind` names its handler, `key` names this job (see the module docstring)."""

    kind: str
    key: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    run_at: datetime | None = None  # not before (default: now)
    attempts: int = 3  # at most, retries included
    timeout_s: float = 60.0  # one attempt at most
    once: bool = False  # a finished run closes the key for good

    def __post_init__(self) -> None:
        if not self.key or len(self.key) > 200:
            raise ValueError(f"a job key has 1-200 characters, got {len(self.key)}")
        if self.attempts < 1 or self.timeout_s <= 0:
            raise ValueError("a job needs at least one attempt and a positive timeout")


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds: run `kind` with `payload`, as attempt `attempt` of `max_attempts`."""

    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    timeout_s: float


class JobQueue(Protocol):
    """What enqueues and follows jobs (the web app, the scheduler, jobs that start others)."""

    backend: str  # "store" | "saq"

    async def enqueue(self, request: JobRequest) -> bool:
        """Queue the job; False when its key is queued or running already (or a `once` key has run)."""
        ...

    async def state(self, key: str) -> JobState | None:
        """The state of the job with this key, None when there is none."""
        ...

    async def close(self) -> None: ...


def retry_delay_s(attempt: int) -> float:
    """After a failed attempt: 5 s, 10 s, 20 s … at most 5 min."""
    return float(min(300, 5 * 2 ** max(0, attempt - 1)))


class StoreQueue:
    """The embedded backend: jobs as rows of the store's `jobs` table (see the module docstring)."""

    backend = "store"

    def __init__(
        self, store: Store, *, clock: Callable[[], datetime] = utcnow, lease_s: float = DEFAULT_LEASE_S
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease_s = lease_s

    # MARK: JobQueue

    async def enqueue(self, request: JobRequest) -> bool:
        return await anyio.to_thread.run_sync(self.put, request)

    async def state(self, key: str) -> JobState | None:
        return await anyio.to_thread.run_sync(self.get_state, key)

    async def close(self) -> None:
        return None

    # MARK: the same, synchronously

    def put(self, request: JobRequest) -> bool:
        now = _utc(self.clock())
        run_at = _utc(request.run_at) if request.run_at else now
        values = {
            "kind": request.kind, "payload": dict(request.payload), "state": JobState.QUEUED.value,
            "once": request.once, "run_at": run_at, "attempts": 0, "max_attempts": request.attempts,
            "timeout_s": request.timeout_s, "worker": None, "lease_expires_at": None, "result": None, "error": None,
            "updated_at": now, "started_at": None, "finished_at": None,
        }  # fmt: skip
        # Again after it finished: the same row, queued anew (a `once` key only when its run failed). Guarded by
        # the state, so of two callers racing here one queues it and the other finds it queued.
        finished = [JobState.FAILED.value] if request.once else [JobState.DONE.value, JobState.FAILED.value]
        with self.store.transaction() as session:
            again = session.execute(update(Job).where(Job.key == request.key, Job.state.in_(finished)).values(**values))
            if again.rowcount:  # type: ignore[attr-defined]
                return True
            if session.scalar(select(Job.id).where(Job.key == request.key)) is not None:
                return False  # queued or running (or a `once` key that has run)
        try:
            with self.store.transaction() as session:
                session.add(Job(key=request.key, created_at=now, **values))
        except IntegrityError:  # another caller inserted the key in between
            return False
        return True

    def get_state(self, key: str) -> JobState | None:
        with self.store.transaction() as session:
            found = session.scalar(select(Job.state).where(Job.key == key))
        return None if found is None else JobState(found)

    def claim(self, worker: str) -> ClaimedJob | None:
        """Take the next due job (queued and due, or running with an expired lease) for `worker`, or None."""
        now = _utc(self.clock())
        lease = now + timedelta(seconds=self.lease_s)
        expired = (Job.state == JobState.RUNNING.value) & (Job.lease_expires_at < now)
        with self.store.transaction() as session:
            # A job whose worker died on its last allowed attempt is not taken again: it failed.
            session.execute(
                update(Job)
                .where(expired, Job.attempts >= Job.max_attempts)
                .values(state=JobState.FAILED.value, finished_at=now, updated_at=now, lease_expires_at=None,
                        error="the worker running its last attempt stopped (its lease expired)")
            )  # fmt: skip
            due = or_((Job.state == JobState.QUEUED.value) & (Job.run_at <= now), expired)
            claimed = {"state": JobState.RUNNING.value, "worker": worker[:64], "attempts": Job.attempts + 1,
                       "lease_expires_at": lease, "started_at": now, "updated_at": now}  # fmt: skip
            if self.store.dialect == "postgresql":
                job_id = session.scalar(
                    select(Job.id).where(due).order_by(Job.run_at, Job.id).limit(1).with_for_update(skip_locked=True)
                )
                if job_id is None:
                    return None
                session.execute(update(Job).where(Job.id == job_id).values(**claimed))
            else:
                next_due = select(Job.id).where(due).order_by(Job.run_at, Job.id).limit(1).scalar_subquery()
                job_id = session.scalar(
                    update(Job)
                    .where(Job.id == next_due, due)
                    .values(**claimed)
                    .returning(Job.id)
                    .execution_options(synchronize_session=False)
                )
                if job_id is None:
                    return None
            row = session.execute(
                select(Job.key, Job.kind, Job.payload, Job.attempts, Job.max_attempts, Job.timeout_s).where(
                    Job.id == job_id
                )
            ).one()
        return ClaimedJob(int(job_id), row.key, row.kind, dict(row.payload), int(row.attempts),
                          int(row.max_attempts), float(row.timeout_s))  # fmt: skip

    def _mine(self, job: ClaimedJob) -> Any:
        return (Job.id == job.id) & (Job.state == JobState.RUNNING.value) & (Job.attempts == job.attempt)

    def renew(self, job: ClaimedJob) -> bool:
        """Extend the lease of a running job; False when it is no longer this attempt's (its lease was lost)."""
        now = _utc(self.clock())
        with self.store.transaction() as session:
            done = session.execute(
                update(Job)
                .where(self._mine(job))
                .values(lease_expires_at=now + timedelta(seconds=self.lease_s), updated_at=now)
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def finish(self, job: ClaimedJob, result: Mapping[str, Any] | None = None) -> bool:
        """The attempt succeeded; False when the job was no longer this attempt's (nothing is changed then)."""
        now = _utc(self.clock())
        with self.store.transaction() as session:
            done = session.execute(
                update(Job)
                .where(self._mine(job))
                .values(state=JobState.DONE.value, result=dict(result or {}), error=None, finished_at=now,
                        updated_at=now, lease_expires_at=None)
            )  # fmt: skip
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def fail(self, job: ClaimedJob, error: str, *, retry: bool = True) -> JobState | None:
        """The attempt failed: queued again after a delay while attempts are left (and `retry`), else failed.
        Returns the new state, or None when the job was no longer this attempt's."""
        now = _utc(self.clock())
        again = retry and job.attempt < job.max_attempts
        state = JobState.QUEUED if again else JobState.FAILED
        values: dict[str, Any] = {"state": state.value, "error": error[-ERROR_LIMIT:], "updated_at": now,
                                  "lease_expires_at": None}  # fmt: skip
        if again:
            values["run_at"] = now + timedelta(seconds=retry_delay_s(job.attempt))
        else:
            values["finished_at"] = now
        with self.store.transaction() as session:
            done = session.execute(update(Job).where(self._mine(job)).values(**values))
            return state if done.rowcount else None  # type: ignore[attr-defined]

    def release(self, job: ClaimedJob) -> bool:
        """Give a job back unfinished (its worker is stopping): queued again at once, this attempt not counted."""
        now = _utc(self.clock())
        with self.store.transaction() as session:
            done = session.execute(
                update(Job)
                .where(self._mine(job))
                .values(state=JobState.QUEUED.value, attempts=Job.attempts - 1, run_at=now, updated_at=now,
                        lease_expires_at=None, worker=None)
            )  # fmt: skip
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def purge(self, older_than: timedelta) -> int:
        """Forget jobs finished longer ago than that (a `once` key names a past night then: never enqueued again)."""
        cutoff = _utc(self.clock()) - older_than
        with self.store.transaction() as session:
            gone = session.execute(
                delete(Job).where(
                    Job.state.in_([JobState.DONE.value, JobState.FAILED.value]),
                    Job.finished_at < cutoff,
                )
            )
            return int(gone.rowcount)  # type: ignore[attr-defined]
