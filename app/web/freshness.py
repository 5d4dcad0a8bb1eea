"""The view's freshness: when the EHR was last read, and a read in progress that the view follows.

    GET /v/{handle}/patients/{id}/ehr-read?days=…[&unit=…]   polled by the view while a launch-time read runs

Opening the view asks for a launch-time read of the patient's CGM Observations (`bff.jobs.launch_read`; the
view itself shows at once what is stored). While the read is queued or running, the view holds a small element that
polls this route (`load delay:1s`, swapping itself); when the read is over it is answered with 286 (htmx stops):
with the whole fresh summary in place of `#summary` when the read stored new readings, or when the view had none
(its empty state said "Reading …") (`HX-Retarget`), else with the final freshness line alone. A read that no
worker takes up within `WAIT_S` is reported as such.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anyio
from litestar import get
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

from app.web.common import AppContext, check_days, check_unit, context_of, headers_for, launch_for
from app.web.presenters import age_text, date_text
from bff.jobs.launch_read import ReadStatus, request_read
from bff.smart import LaunchContext

#: A read not started by a worker within this long is reported ("no job worker is running?"); polling stops.
WAIT_S = 45.0
POLL = "load delay:1s"


@dataclass(frozen=True, slots=True)
class ReadView:
    """What the view says of the EHR reads: `polling` while one runs."""

    polling: bool
    text: str
    state: str  # queued | running | done | incomplete | failed | stalled | none


def _when(moment: datetime, zone: str, now: datetime) -> str:
    local = moment.astimezone(ZoneInfo(zone))
    return f"{date_text(local.date())} {local:%H:%M}, {age_text(moment, now)}"


def read_view(status: ReadStatus | None, zone: str, now: datetime | None = None) -> ReadView:
    now = now or datetime.now(UTC)
    if status is None:
        return ReadView(False, "", "none")
    if status.running:
        if status.state == "queued" and now - status.requested_at > timedelta(seconds=WAIT_S):
            return ReadView(False, "The EHR has not been read: no job worker took the read up", "stalled")
        return ReadView(True, "Reading new CGM data from the EHR…", status.state)
    last = f"read from the EHR {_when(status.last_read_at, zone, now)}" if status.last_read_at else ""
    if status.state == "failed":
        failed = f"The last read from the EHR failed: {status.error or 'unknown error'}"
        return ReadView(False, f"{failed}. Last {last}" if last else failed, "failed")
    if status.state == "incomplete":
        return ReadView(False, f"Partly {last}: the next launch reads the rest", "incomplete")
    return ReadView(False, last[:1].upper() + last[1:], status.state)


async def launch_read_status(ctx: AppContext, handle: str, found: LaunchContext, *, request: bool) -> ReadStatus | None:
    """The patient's read status; with `request`, a read is asked for first when one is due (the view opening)."""
    if not found.patient or ctx.reads is None:
        return None
    reads, patient = ctx.reads, found.patient
    if request and ctx.jobs is not None and ctx.handle_cipher is not None:
        return await request_read(reads, ctx.jobs, ctx.handle_cipher, site=found.site_key, patient=patient,
                                  handle=handle)  # fmt: skip
    return await anyio.to_thread.run_sync(lambda: reads.status(found.site_key, patient))


@get("/v/{handle:str}/patients/{patient:str}/ehr-read")
async def ehr_read(request: HTMXRequest, handle: str, patient: str, days: int = 14, unit: str | None = None,
                   since: str = "") -> Template:  # fmt: skip
    """The polled element while the read runs; when it is over, 286 with the fresh summary (new readings) or the
    final freshness line."""
    from app.web.app import summary_context  # noqa: PLC0415 - app.web.app registers this route

    ctx = context_of(request)
    found = await launch_for(ctx, handle, patient, site_filter=False)  # checked in summary_context
    days, unit = check_days(days), check_unit(unit)
    headers = {**headers_for(found.frame_ancestors), "Vary": "HX-Request"}
    context = await summary_context(ctx, handle, found, days, unit)
    read: ReadView = context["ehr_read"]
    if read.polling:
        return Template("patient/_ehr_read.html", context=context, headers=headers)
    status: ReadStatus | None = context["ehr_read_status"]
    summary = context["summary"]
    added = status is not None and status.added > 0 and status.state in ("done", "incomplete")
    if added or not summary.has_data:  # new readings; or the empty state, whose heading said "Reading …"
        if added:
            context["summary"] = dataclasses.replace(
                summary, announcement=f"New CGM readings from the EHR. {summary.announcement}"
            )
        return Template("patient/_summary.html", context=context, status_code=286,
                        headers={**headers, "HX-Retarget": "#summary", "HX-Reswap": "outerHTML"})  # fmt: skip
    return Template("patient/_ehr_read.html", context=context, status_code=286, headers=headers)


def poll_context(days: int, unit_query: str, base: str) -> dict[str, Any]:
    return {"ehr_read_poll": POLL, "ehr_read_url": f"{base}ehr-read?days={days}{unit_query}"}
