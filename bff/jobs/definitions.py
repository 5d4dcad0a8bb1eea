"""What each kind of job does (`requests.py` has their keys). A handler takes the job context and the payload and
returns its result: counts and states, JSON, never a patient.

Every handler is safe to run twice one after the other (the ingestion path keys every reading, recomputes and
corrections look at what changed, a `once` night closes itself); the queue makes sure none runs twice at once.
SAQ jobs never write to an EHR: corrections become outbox intents, which the outbox worker sends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

from bff.capabilities import CapabilityError
from bff.jobs import launch_read
from bff.jobs.context import JobContext
from bff.jobs.requests import CORRECTIONS, LAUNCH_READ, NIGHTLY_BULK, RECOMPUTE_STALE, corrections_request
from bff.store import windows
from bff.store.outcomes import OutcomeService

Handler = Callable[[JobContext, Mapping[str, Any]], Awaitable[dict[str, Any]]]


async def recompute_stale(ctx: JobContext, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The patients' stale standard outcomes (`bff.store.windows`: the watermark sweep, then chunks through the
    batch engine, claimed so two workers never compute one), and the next version of every stale outcome window;
    then the sites that write look for corrections."""
    del payload
    found, standard = await anyio.to_thread.run_sync(lambda: windows.sweep_and_refresh(ctx.store))
    results = await anyio.to_thread.run_sync(OutcomeService(ctx.store).recompute_stale)
    queued = []
    if results:
        for site in await anyio.to_thread.run_sync(ctx.capabilities.sites):
            try:
                writes = (await anyio.to_thread.run_sync(ctx.capabilities.get, site)).write.writes
            except CapabilityError:
                continue
            if writes and await ctx.queue.enqueue(corrections_request(site)):
                queued.append(site)
    return {"recomputed": len(results), "standard_found": found, "standard_computed": standard.computed,
            "standard_changed": standard.changed, "standard_still_stale": standard.still_stale,
            "corrections_queued": queued}  # fmt: skip


async def corrections(ctx: JobContext, payload: Mapping[str, Any]) -> dict[str, Any]:
    """Correction writes (outbox intents) of the site's signed windows whose outcome changed since the sign-off."""
    site = str(payload["site"])
    try:
        created = await anyio.to_thread.run_sync(lambda: ctx.writeback.propose_corrections(site))
    except CapabilityError as exc:
        return {"site": site, "skipped": f"the site's matrix cannot be used: {exc}"}
    return {"site": site, "corrections": len(created)}


async def nightly_bulk(ctx: JobContext, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The site's nightly Bulk Data export, through the Bulk client the context has (`bff.jobs.seams`)."""
    site, night = str(payload["site"]), str(payload.get("night", ""))
    try:
        caps = await anyio.to_thread.run_sync(lambda: ctx.capabilities.get(site))
    except CapabilityError as exc:
        return {"site": site, "night": night, "skipped": f"the site's matrix cannot be used: {exc}"}
    if not caps.bulk.available:
        return {"site": site, "night": night, "skipped": "the site offers no Bulk Data export ([bulk] available)"}
    if ctx.bulk is None:
        return {"site": site, "night": night, "skipped": "no Bulk client"}
    return {"site": site, "night": night, **dict(await ctx.bulk(ctx, site))}


@dataclass(frozen=True, slots=True)
class JobKind:
    name: str
    handler: Handler


JOBS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(LAUNCH_READ, launch_read.run),
        JobKind(RECOMPUTE_STALE, recompute_stale),
        JobKind(CORRECTIONS, corrections),
        JobKind(NIGHTLY_BULK, nightly_bulk),
    )
}
