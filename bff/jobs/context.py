"""What a job runs with: the store, the site matrices, the EHR client, the queue (for the jobs it starts), the seams.

It is built from `Settings` by `bff.bootstrap.job_context`, the one wiring point of every process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx

from bff.capabilities import CapabilityService
from bff.jobs.queue import JobQueue
from bff.jobs.seams import BulkStarter, CgmSearchRule, vendor_cgm_search
from bff.settings import Settings
from bff.smart import SmartClient, SmartSettings, TokenCipher
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
