"""The scheduler: what every worker asks for each minute (`tick`). Keys make it safe to run on every worker at
once: each job it asks for is queued once, however many workers tick.

- **nightly Bulk export**, per site with `[bulk] available = true`, when the site's local time is inside its
  `[bulk] run_window` ("HH:MM-HH:MM", local to the site's `time_zone`, UTC without one; a window past midnight
  belongs to the night it opened; "" any time, once a day): `nightly-bulk:<site>:<night>`, a `once` key, so a
  night's export runs once however many minutes of the window the scheduler sees, and a failed one is tried
  again while the window lasts;
- **stale recomputes**, when outcome windows or standard outcomes are stale (readings arrived, a zone changed),
  or readings are past the standard outcomes' sweep mark (`bff.store.windows.pending`): `recompute-stale`;
- **corrections**, for each site that takes writes: `corrections:<site>` (cheap when nothing changed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from sqlalchemy import func, select

from bff.capabilities import CapabilityError, SiteCapabilities
from bff.jobs.context import JobContext
from bff.jobs.requests import corrections_request, nightly_request, recompute_request
from bff.store import windows
from bff.store.models import OutcomeWindow

log = logging.getLogger("glucobridge.jobs.schedule")

TICK_S = 60.0
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def night_in_window(run_window: str, zone: str, now: datetime) -> date | None:
    """The night (the local date its window opened) when `now` is inside the window, else None. "" is any time:
    the night is then the local date."""
    local = now.astimezone(_zone(zone))
    if not run_window:
        return local.date()
    found = _WINDOW.match(run_window)
    if found is None:
        raise ValueError(f"a run window is HH:MM-HH:MM, got {run_window!r}")
    start = time(int(found.group(1)), int(found.group(2)))
    end = time(int(found.group(3)), int(found.group(4)))
    at = local.time().replace(second=0, microsecond=0, tzinfo=None)
    if start <= end:
        return local.date() if start <= at < end else None
    if at >= start:  # past midnight: 22:00-04:00
        return local.date()
    if at < end:
        return local.date() - timedelta(days=1)
    return None


@dataclass(frozen=True, slots=True)
class TickReport:
    nightly: tuple[str, ...] = ()  # keys queued now
    recompute: bool = False
    corrections: tuple[str, ...] = ()


def nightly_due(caps: SiteCapabilities, now: datetime) -> date | None:
    if not caps.bulk.available:
        return None
    return night_in_window(caps.bulk.run_window, caps.time_zone, now)


async def tick(ctx: JobContext, now: datetime | None = None) -> TickReport:
    """Ask for every job that is due now (see the module docstring)."""
    now = now or ctx.clock()
    nightly: list[str] = []
    corrections: list[str] = []
    for site in await anyio.to_thread.run_sync(ctx.capabilities.sites):
        try:
            caps = await anyio.to_thread.run_sync(ctx.capabilities.get, site)
        except CapabilityError as exc:
            log.warning("site %s skipped by the scheduler: %s", site, exc)
            continue
        night = nightly_due(caps, now)
        if night is not None:
            request = nightly_request(site, night)
            if await ctx.queue.enqueue(request):
                nightly.append(request.key)
        if caps.write.writes:
            request = corrections_request(site)
            if await ctx.queue.enqueue(request):
                corrections.append(request.key)

    def stale_windows() -> int:
        with ctx.store.transaction() as session:
            stale = int(session.scalar(select(func.count()).where(OutcomeWindow.status == "stale")) or 0)
            return stale + int(windows.pending(session))

    recompute = bool(await anyio.to_thread.run_sync(stale_windows)) and await ctx.queue.enqueue(recompute_request())
    return TickReport(tuple(nightly), recompute, tuple(corrections))
