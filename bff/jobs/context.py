"""What a job runs with: the store, the site matrices, the EHR client, the queue (for the jobs it starts), the seams.

`build_context` is the one place a worker's services are built from `Settings` (the web app builds the same
services in `app.web.app.create_app`; a request handler never builds a worker).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from bff.capabilities import CapabilityService
from bff.jobs.bulk_job import bulk_starter
from bff.jobs.queue import JobQueue
from bff.jobs.seams import BulkStarter, CgmSearchRule, vendor_cgm_search
from bff.settings import Settings
from bff.smart import SiteRegistry, SmartClient, SmartSettings, SqlLaunchStore, TokenCipher, create_smart_client
from bff.store.db import Store
from bff.writeback import WritebackService

#: How long a launch-time read may take before it stops (the next launch continues where it stopped).
READ_BUDGET_S = 8.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class JobContext:
    settings: Settings
    store: Store
    queue: JobQueue
    capabilities: CapabilityService
    writeback: WritebackService
    http: httpx.AsyncClient
    smart: SmartClient
    cipher: TokenCipher  # seals launch handles inside job payloads (the SMART client's token cipher)
    cgm_search: CgmSearchRule = vendor_cgm_search
    bulk: BulkStarter | None = None
    read_budget_s: float = READ_BUDGET_S
    clock: Callable[[], datetime] = field(default=utcnow)

    async def close(self) -> None:
        await self.http.aclose()


def token_cipher(settings: Settings) -> TokenCipher:
    """The cipher of the SMART client's tokens at rest (SMART_TOKEN_KEYS, else derived from the app secret): the web
    app seals a launch handle with it before it goes into a job, the worker opens it."""
    return SmartSettings.from_env(os.environ).cipher(settings.secret())


def build_context(
    settings: Settings,
    queue: JobQueue,
    *,
    store: Store | None = None,
    http: httpx.AsyncClient | None = None,
    smart: SmartClient | None = None,
) -> JobContext:
    """A worker's services, from the settings (the environment's SMART_* for the EHR client)."""
    store = store or Store(settings)
    http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0))
    capabilities = CapabilityService(store, settings.sites_dir)
    if smart is None:
        registry = SiteRegistry.from_toml_dir(
            settings.sites_dir, default_redirect_uri=f"{settings.public_url}/callback"
        )
        smart = create_smart_client(SmartSettings.from_env(os.environ), registry=registry, http=http,
                                    store=SqlLaunchStore(store), app_secret=settings.secret(),
                                    redis_url=settings.redis_url)  # fmt: skip
    return JobContext(
        settings=settings,
        store=store,
        queue=queue,
        capabilities=capabilities,
        writeback=WritebackService(store, capabilities),
        http=http,
        smart=smart,
        cipher=token_cipher(settings),
        bulk=bulk_starter(settings),  # None without a Backend Services key (the nightly job then says so)
    )
