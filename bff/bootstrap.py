"""The one wiring point: a process's services, built from `Settings` (docs/architecture.md, "Wiring").

Every entry point builds what it works with here, and nowhere else: the web app (`app.web.app.create_app`), the
CLI commands (`app.cli`), the job worker (`app.jobs`), the outbox worker (`glucobridge outbox work`) and the
benches. A request handler builds nothing: it uses what its process was given at start.

- `services(settings)`: what every process shares: the store, the site matrices, the sign-offs.
- `job_queue(settings, store)`: SAQ on Redis when REDIS_URL is set, else the embedded queue in the store.
- `smart_client(...)`: the SMART client (launches, EHR tokens at rest) on the sites directory.
- `job_context(...)`: what a job runs with (`bff.jobs.context.JobContext`).
- `outbox_worker(...)`: the outbox worker; the web app keeps one per process for the clinician's in-context send.

Functions, not a container: each takes what it needs and returns a plain object, so a test passes its own fakes to
the function (or to the service's constructor) and nothing is looked up by name. The job side (SAQ, the job kinds,
the Bulk client) is imported by the functions that build it: an outbox worker or a CLI command does not load it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from bff.broker.broker import Broker
from bff.capabilities import CapabilityService
from bff.jobs.queue import JobQueue, StoreQueue
from bff.outbox.worker import OutboxWorker, WorkerConfig
from bff.settings import Settings
from bff.smart import SiteRegistry, SmartClient, SmartSettings, SqlLaunchStore, create_smart_client
from bff.store.db import Store
from bff.writeback import WritebackService

if TYPE_CHECKING:
    from bff.jobs.context import JobContext


@dataclass(frozen=True, slots=True)
class Services:
    """What every process works with."""

    settings: Settings
    store: Store
    capabilities: CapabilityService  # the site matrices (files + overrides in the store)
    writeback: WritebackService  # sign-offs and the writes they enqueue


def services(settings: Settings, *, store: Store | None = None) -> Services:
    """The shared services; `store` when the caller opened it already (the CLI's, with its error messages)."""
    store = store or Store(settings)
    capabilities = CapabilityService(store, settings.sites_dir)
    return Services(settings, store, capabilities, WritebackService(store, capabilities))


def job_queue(settings: Settings, store: Store) -> JobQueue:
    """What enqueues jobs: SAQ on Redis when REDIS_URL is set, else the embedded queue on the store."""
    if settings.redis_url:
        from bff.jobs.saq_queue import SaqQueue, redis_queue  # noqa: PLC0415 - SAQ and the job kinds: only with Redis

        return SaqQueue(redis_queue(settings.redis_url))
    return StoreQueue(store)


def smart_client(
    settings: Settings, store: Store, http: httpx.AsyncClient, *, environ: Mapping[str, str] = os.environ
) -> SmartClient:
    """The SMART client on the sites directory (each site's secret or key is read now: a missing one says so)."""
    registry = SiteRegistry.from_toml_dir(settings.sites_dir, default_redirect_uri=f"{settings.public_url}/callback")
    return create_smart_client(SmartSettings.from_env(environ), registry=registry, http=http,
                               store=SqlLaunchStore(store), app_secret=settings.secret(), redis_url=settings.redis_url,
                               environ=environ)  # fmt: skip


def job_context(
    core: Services,
    queue: JobQueue,
    *,
    http: httpx.AsyncClient | None = None,
    smart: SmartClient | None = None,
) -> JobContext:
    """A job worker's services (the environment's SMART_* for the EHR client); `close()` it when done."""
    from bff.jobs.bulk_job import bulk_starter  # noqa: PLC0415 - the Bulk client: only a job worker needs it
    from bff.jobs.context import JobContext, token_cipher  # noqa: PLC0415

    http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
    return JobContext(
        settings=core.settings,
        store=core.store,
        queue=queue,
        capabilities=core.capabilities,
        writeback=core.writeback,
        http=http,
        smart=smart or smart_client(core.settings, core.store, http),
        cipher=token_cipher(core.settings),
        bulk=bulk_starter(core.settings),  # None without a Backend Services key (the nightly job then says so)
    )


def outbox_worker(core: Services, broker: Broker, *, config: WorkerConfig | None = None) -> OutboxWorker:
    """The outbox worker: sends through `broker` (the system token per site), shares rate limits through Redis."""
    return OutboxWorker(core.store, core.capabilities, broker, writeback=core.writeback, config=config,
                        redis_url=core.settings.redis_url)  # fmt: skip


__all__ = ["Services", "job_context", "job_queue", "outbox_worker", "services", "smart_client"]
