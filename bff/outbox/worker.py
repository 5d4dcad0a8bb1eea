"""The outbox worker: sends queued writes when each site's capability matrix allows, exactly once.

One pass over a site (`run_site`):

1. Read the site's matrix now (file + overrides: a change takes effect on the next pass, no restart).
2. Claims whose lease ran out (a worker killed mid-send) become **unknown**.
3. Read-only (by the matrix, or degraded): queued writes are **deferred**, nothing is sent. Writable: deferred
   sign-offs are expanded into requests and deferred writes are released, in order.
4. Unknown writes are read back (by identifier, or by patient, code and instant): found → confirmed; certainly
   absent → queued again; cannot tell → looked at again later. Nothing is resent blindly.
5. Due writes are claimed in creation order and sent one by one, each after a token from the site's bucket
   (Redis when configured, shared by every worker) and while its circuit breaker is closed:
   2xx or Epic's 400/59189 → confirmed; 429/503 → queued again after Retry-After (clamped) or a jittered backoff,
   and the rest of the batch waits behind it (order is kept); no response after sending, or another 5xx →
   unknown; 403/405 → the site is degraded to read-only (an audited override) and its queue deferred; other 4xx →
   failed with the EHR's reason. A write the matrix no longer allows is refused before it leaves (failed).
6. Every `corrections_every_s`: signed windows whose outcome changed since (a backfill) get their correction
   writes (`WritebackService.propose_corrections`), queued or held for a new sign-off.

The database is the only shared state: several workers may run (claims are exclusive; PostgreSQL uses
SKIP LOCKED). A database outage pauses the worker; results already received are recorded when it is back.

The database work is synchronous SQLAlchemy, so it runs in the worker's own bounded thread pool
(`WorkerConfig.db_threads`), never on its event loop: one site's slow query does not stall another site's sends.
Each step opens its own session, so the steps of concurrent sites share nothing but the connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from bff.actors import SystemActor
from bff.audit import audit
from bff.broker.broker import Broker, SendResult
from bff.broker.guard import WriteRefusedError
from bff.broker.plan import PlannedWrite
from bff.capabilities import CapabilityError, CapabilityService, SiteCapabilities
from bff.outbox import queue
from bff.outbox.retry import Outcome, backoff_s, classify, degrades_site, parse_retry_after
from bff.outbox.throttle import Breakers, Bucket, TokenBucket, make_bucket
from bff.store.db import Store
from bff.store.models import WriteIntent
from bff.vendors import profile_for

log = logging.getLogger("glucobridge.outbox")
T = TypeVar("T")
ACTOR = SystemActor.OUTBOX_WORKER


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    batch: int = 20
    lease_s: float = 120.0
    retry_min_s: float = 1.0
    retry_max_s: float = 3600.0
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 900.0
    max_attempts: int = 12
    unknown_recheck_s: float = 5.0  # wait this long after an unknown outcome before reading back
    unknown_giveup_s: float = 300.0  # look again this often when the read-back cannot tell
    breaker_threshold: int = 5
    breaker_cool_down_s: float = 60.0
    corrections_every_s: float = 60.0  # look for backfilled outcomes of signed windows (correction writes)
    db_retry_s: float = 1.0
    db_retry_max_s: float = 30.0
    db_threads: int = 4  # database steps at once (each holds a pooled connection while it runs)


class SignOffPlans(Protocol):
    """What the worker asks of the sign-offs (`bff.writeback.WritebackService`, which itself enqueues through
    `bff.outbox.queue`: the worker is handed it, and so imports nothing of it)."""

    def expand_plans(self, caps: SiteCapabilities) -> list[int]: ...

    def propose_corrections(self, site: str) -> list[int]: ...


@dataclass
class SiteRun:
    """What one pass did at one site (for logs, tests and the soak report)."""

    site: str
    sent: int = 0
    confirmed: int = 0
    retried: int = 0
    unknown: int = 0
    failed: int = 0
    deferred: int = 0
    read_back: int = 0
    expanded: int = 0
    corrections: int = 0
    degraded: bool = False
    waited_s: float = 0.0
    statuses: list[int | None] = field(default_factory=list)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _ResilientBucket:
    """A shared (Redis) bucket that falls back to an in-process one while Redis is unreachable."""

    def __init__(self, primary: Bucket, fallback: Bucket, site: str) -> None:
        self.primary = primary
        self.fallback = fallback
        self.site = site
        self.down = False

    def try_acquire(self, n: int = 1) -> float:
        try:
            wait = self.primary.try_acquire(n)
        except Exception as exc:  # redis.ConnectionError, TimeoutError: keep sending, within this process's limit
            if not self.down:
                log.warning("rate limit store unreachable for site %s (%s): using the in-process bucket",
                            self.site, type(exc).__name__)  # fmt: skip
            self.down = True
            return self.fallback.try_acquire(n)
        if self.down:
            log.info("rate limit store back for site %s", self.site)
        self.down = False
        return wait


class OutboxWorker:
    def __init__(
        self,
        store: Store,
        capabilities: CapabilityService,
        broker: Broker,
        *,
        writeback: SignOffPlans,
        config: WorkerConfig | None = None,
        redis_url: str | None = None,
        now: Callable[[], datetime] = _utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.capabilities = capabilities
        self.broker = broker
        self.config = config or WorkerConfig()
        self.redis_url = redis_url
        self._now = now
        self._sleep = sleep
        self.writeback = writeback
        self._buckets: dict[str, tuple[tuple[float, int], Bucket]] = {}
        self.breakers = Breakers(self.config.breaker_threshold, self.config.breaker_cool_down_s)
        self._corrections_last: dict[str, float] = {}
        self._db_pool = ThreadPoolExecutor(max(1, self.config.db_threads), thread_name_prefix="outbox-db")

    def close(self) -> None:
        """Let the database threads go (idle ones; a step in flight finishes)."""
        self._db_pool.shutdown(wait=False)

    # --- plumbing ----------------------------------------------------------------------------------------------

    def bucket(self, caps: SiteCapabilities) -> Bucket:
        """The site's token bucket, rebuilt when its rate limit changes in the matrix."""
        shape = (caps.rate_limit.rps, caps.rate_limit.burst)
        cached = self._buckets.get(caps.key)
        if cached is None or cached[0] != shape:
            local = TokenBucket(*shape)
            bucket: Bucket = local
            if self.redis_url:
                bucket = _ResilientBucket(make_bucket(caps.key, *shape, redis_url=self.redis_url), local, caps.key)
            cached = (shape, bucket)
            self._buckets[caps.key] = cached
        return cached[1]

    async def _db(self, what: str, fn: Callable[[], T]) -> T:
        """Run a database step in the worker's thread pool (off the event loop), waiting out an outage
        (PostgreSQL restarting) instead of losing a result."""
        delay = self.config.db_retry_s
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await loop.run_in_executor(self._db_pool, fn)
            except DBAPIError as exc:  # an outage (OperationalError, a dropped connection); other errors are bugs
                if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                    raise
                log.warning("database unavailable during %s (%s): retrying in %.1f s", what, type(exc).__name__, delay)
                await self._sleep(delay)
                delay = min(self.config.db_retry_max_s, delay * 2)

    # --- one pass ----------------------------------------------------------------------------------------------

    async def run_site(self, site: str) -> SiteRun:
        run = SiteRun(site)
        try:
            caps = await self._db("matrix", lambda: self.capabilities.get(site))  # the file and its overrides
        except CapabilityError as exc:
            log.error("site %s: capability matrix unusable, nothing sent: %s", site, exc)
            return run
        now = self._now()
        await self._db("lease expiry", lambda: queue.expire_leases(self.store, site, now))
        if not caps.write.writes:
            run.deferred += len(await self._db("defer", lambda: queue.defer(self.store, site, now)))
            return run
        run.expanded = len(await self._db("expand", lambda: self.writeback.expand_plans(caps)))
        last = self._corrections_last.get(site)
        if last is None or time.monotonic() - last >= self.config.corrections_every_s:
            self._corrections_last[site] = time.monotonic()
            run.corrections = len(await self._db("corrections", lambda: self.writeback.propose_corrections(site)))
        await self._db("release", lambda: queue.release(self.store, site, now))
        await self._reconcile(caps, run)
        if not self.breakers[site].allow():
            return run
        # Claim no more than the bucket lets out well within the lease: a claim must never outlive it while waiting.
        limit = max(1, min(self.config.batch, int(caps.rate_limit.rps * self.config.lease_s / 4)))
        intents = await self._db(
            "claim", lambda: queue.claim(self.store, site, self._now(), limit, lease_s=self.config.lease_s)
        )
        await self._send_batch(caps, intents, run, self.broker)
        return run

    async def send_in_context(self, site: str, intent_ids: Sequence[int], broker: Broker) -> SiteRun:
        """Send these intents now, through `broker` (e.g. one holding the clinician's own launch token), under the
        same rules as the queue: the site's matrix, its bucket, classification, read-back. What cannot be sent now
        (the site is read-only, throttled, or the token lacks a scope) stays with the worker."""
        run = SiteRun(site)
        caps = await self._db("matrix", lambda: self.capabilities.get(site))
        if not caps.write.writes or not self.breakers[site].allow():
            return run
        intents = await self._db("claim", lambda: queue.claim(
            self.store, site, self._now(), len(intent_ids), lease_s=self.config.lease_s, only=intent_ids))  # fmt: skip
        await self._send_batch(caps, intents, run, broker, in_context=True)
        return run

    async def _send_batch(
        self,
        caps: SiteCapabilities,
        intents: list[WriteIntent],
        run: SiteRun,
        broker: Broker,
        *,
        in_context: bool = False,
    ) -> None:
        for index, intent in enumerate(intents):
            stop = await self._send_one(caps, intent, run, broker, in_context=in_context)
            if stop is not None:
                rest = [i.id for i in intents[index + 1 :]]
                if rest:
                    state, at = stop
                    await self._db("put back", lambda r=rest, s=state, a=at: queue.put_back(  # type: ignore[misc]
                        self.store, r, self._now(), state=s, detail="waits behind an earlier write", at=a))  # fmt: skip
                break

    async def _acquire(self, caps: SiteCapabilities, run: SiteRun) -> None:
        bucket = self.bucket(caps)
        while True:
            wait = bucket.try_acquire()
            if wait <= 0:
                return
            run.waited_s += wait
            await self._sleep(wait)

    async def _send_one(
        self, caps: SiteCapabilities, intent: WriteIntent, run: SiteRun, broker: Broker, *, in_context: bool = False
    ) -> tuple[str, datetime] | None:
        """Send one claimed intent and record the outcome; returns (state, due) when the rest must wait."""
        write = PlannedWrite.from_json(intent.payload)
        await self._acquire(caps, run)
        try:
            result = await broker.send(caps, write)
        except WriteRefusedError as exc:
            reason = str(exc)
            if exc.read_only:
                await self._db("defer", lambda: queue.put_back(self.store, [intent.id], self._now(), state="deferred",
                                                              detail=reason, at=self._now()))  # fmt: skip
                run.deferred += 1
                return ("deferred", self._now())
            await self._record(intent.id, Outcome.FAILED, None, f"refused before sending: {reason}")
            run.failed += 1
            return None
        run.sent += 1
        run.statuses.append(result.status)
        outcome = classify(result.status, sent=result.sent, error=result.error, body=result.body,
                           quirks=profile_for(caps).quirks)  # fmt: skip
        breaker = self.breakers[caps.key]
        if degrades_site(result.status) and in_context:
            # The clinician's token may not write here; that says nothing about the site: the worker sends it.
            detail = f"{_detail(result)}; the clinician's token may not write this: left to the worker"
            await self._record(intent.id, Outcome.RETRY, result.status, detail)
            return ("queued", self._now())
        if degrades_site(result.status):
            await self._degrade(caps, intent, write, result)
            run.degraded = True
            run.deferred += 1
            return ("deferred", self._now())
        if outcome is Outcome.RETRY:
            if result.status != 429:  # a throttle says "slower", not "broken": the bucket and Retry-After handle it
                breaker.record_failure()
            now = self._now()
            floor = parse_retry_after(result.retry_after, now, minimum_s=self.config.retry_min_s,
                                      maximum_s=self.config.retry_max_s)  # fmt: skip
            if intent.attempts >= self.config.max_attempts:
                await self._record(intent.id, Outcome.FAILED, result.status,
                                   f"gave up after {intent.attempts} attempts: {result.error}")  # fmt: skip
                run.failed += 1
                return None
            delay = backoff_s(intent.attempts - 1, base=self.config.backoff_base_s, cap=self.config.backoff_cap_s,
                              retry_after=floor)  # fmt: skip
            await self._record(intent.id, Outcome.RETRY, result.status, _detail(result), retry_in_s=delay)
            run.retried += 1
            return ("queued", now + timedelta(seconds=delay))
        if outcome is Outcome.UNKNOWN:
            breaker.record_failure()
            await self._record(intent.id, Outcome.UNKNOWN, result.status, _detail(result),
                               retry_in_s=self.config.unknown_recheck_s)  # fmt: skip
            run.unknown += 1
            return None
        breaker.record_success()
        if outcome is Outcome.CONFIRMED:
            note = "already at the EHR (Epic 59189)" if result.status == 400 else None
            if in_context:
                note = "sent in context with the clinician's own token" + (f"; {note}" if note else "")
            await self._record(intent.id, Outcome.CONFIRMED, result.status, note, remote_id=result.remote_id)
            run.confirmed += 1
        else:
            await self._record(intent.id, Outcome.FAILED, result.status, _detail(result))
            run.failed += 1
        return None

    async def _record(
        self,
        intent_id: int,
        outcome: Outcome,
        status: int | None,
        detail: str | None,
        *,
        retry_in_s: float = 0.0,
        remote_id: str | None = None,
    ) -> None:
        def step() -> None:
            try:
                queue.record(self.store, intent_id, outcome, now=self._now(), status_code=status, detail=detail,
                             retry_in_s=retry_in_s, remote_id=remote_id)  # fmt: skip
            except queue.TransitionError:
                # Another worker took it over after our lease expired (e.g. while the database was down): it reads
                # the write back, so nothing is lost or doubled.
                log.warning("write intent %s: outcome %s not recorded, the claim had lapsed", intent_id, outcome)

        await self._db("record", step)

    async def _degrade(
        self, caps: SiteCapabilities, intent: WriteIntent, write: PlannedWrite, result: SendResult
    ) -> None:
        reason = f"the EHR answered {result.status} to a {write.kind} write: it no longer allows writes"
        log.warning("site %s degraded to read-only: %s", caps.key, reason)

        def step() -> None:
            queue.record(self.store, intent.id, Outcome.RETRY, now=self._now(), status_code=result.status,
                         detail=f"{reason}; deferred until the site allows writes")  # fmt: skip
            self.capabilities.set(caps.key, "write.mode", "read_only", who=ACTOR, reason=reason)
            audit(self.store, "site.degraded", outcome="read_only", site=caps.key, actor=ACTOR,
                  status=result.status, kind=write.kind, intent=intent.id)  # fmt: skip
            queue.defer(self.store, caps.key, self._now())

        await self._db("degrade", step)

    async def _reconcile(self, caps: SiteCapabilities, run: SiteRun) -> None:
        unknown = await self._db("unknown", lambda: queue.due_unknown(self.store, caps.key, self._now()))
        for intent in unknown:
            write = PlannedWrite.from_json(intent.payload)
            found = await self.broker.read_back(caps, write)
            run.read_back += 1
            if found is True:
                await self._record(intent.id, Outcome.CONFIRMED, None, "found at the EHR by reading back")
                run.confirmed += 1
            elif found is False:
                await self._record(intent.id, Outcome.RETRY, None, "not at the EHR (read back): sending again")
            else:
                how = "no read-back for this channel" if not write.readback else "the read-back could not tell"
                detail = f"unknown: {how}; a person may retry"
                await self._db("later", lambda i=intent.id, d=detail: queue.later(  # type: ignore[misc]
                    self.store, i, self._now(), self.config.unknown_giveup_s, d))  # fmt: skip

    # --- loops -------------------------------------------------------------------------------------------------

    async def _site_loop(self, site: str, stop: asyncio.Event, idle_s: float) -> None:
        while not stop.is_set():
            try:
                result = await self.run_site(site)
            except Exception:  # one site's bug must not stop the others
                log.exception("outbox pass failed at site %s", site)
                result = SiteRun(site)
            if not (result.sent or result.read_back or result.expanded):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=idle_s)

    async def run(self, sites: Iterable[str] | None = None, *, stop: asyncio.Event | None = None,
                  idle_s: float = 1.0) -> None:  # fmt: skip
        """Work every site (or `sites`) concurrently, each at its own pace, until `stop` is set.

        Sites added to the sites directory later are picked up (every `idle_s`)."""
        stop = stop or asyncio.Event()
        tasks: dict[str, asyncio.Task[None]] = {}
        try:
            while not stop.is_set():
                for site in list(sites) if sites is not None else self.capabilities.sites():
                    if site not in tasks or tasks[site].done():
                        tasks[site] = asyncio.create_task(self._site_loop(site, stop, idle_s))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(idle_s, 1.0))
        finally:
            stop.set()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def drain(self, sites: Iterable[str], *, timeout_s: float = 60.0, tick_s: float = 0.05) -> dict[str, Any]:
        """Work `sites` concurrently until none has a write queued, sending or unknown (or the timeout);
        returns the counts by state per site."""
        chosen = list(sites)
        deadline = time.monotonic() + timeout_s

        def open_count(counts: dict[str, int]) -> int:
            return counts["queued"] + counts["sending"] + counts["unknown"]

        async def one(site: str) -> None:
            while time.monotonic() < deadline:
                await self.run_site(site)
                if open_count(await self._db("counts", lambda: queue.counts_by_state(self.store, site))) == 0:
                    return
                await self._sleep(tick_s)

        await asyncio.gather(*(one(site) for site in chosen))
        return {site: await self._db("counts", lambda s=site: queue.counts_by_state(self.store, s))  # type: ignore[misc]
                for site in chosen}  # fmt: skip


def _detail(result: SendResult) -> str:
    text = result.error or ""
    body = result.body
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        diagnostics = "; ".join(str(i.get("diagnostics", "")) for i in body.get("issue", []) if i.get("diagnostics"))
        if diagnostics:
            text = f"{text}: {diagnostics}" if text else diagnostics
    return text[:2000] or f"HTTP {result.status}"


__all__ = ["OutboxWorker", "SignOffPlans", "SiteRun", "WorkerConfig"]
