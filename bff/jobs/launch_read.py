"""Reading a patient's CGM Observations from the EHR at launch: incremental, paged, within a time budget.

    the view opens ──► LaunchReads.request: a read is due? ──► enqueue launch-read:<site>:<digest> (sealed handle)
    a worker runs it ──► Observation?patient=…&code=<reading codes>&date=gt<last stored reading>&_sort=date&_count=…
                     ──► each page through the ingestion path (precedence, dedupe, quarantine), `next` links followed
                     ──► done (nothing more) | incomplete (stopped at the budget: the next launch continues) | failed
    the view polls `ehr_reads` and swaps in the fresh summary when the read is over

The read uses the clinician's launch token, server-side: the job carries the launch handle and the patient sealed
with the SMART client's token cipher (`seal`: never in the clear, so never in a queue's log), and the worker asks
`SmartClient.access_token` for the token. Search values are percent-encoded by httpx (`code` holds `|`). A `next`
link is followed only to the launch's own FHIR server (the token never goes elsewhere), and every Observation must
be the launch's patient's.

Where a read starts (`since`): after the patient's last stored CGM reading (any feed: what another door already
delivered is not read again), never earlier than `FIRST_READ_DAYS` (the longest period the view shows). A read
that stops early continues after the last reading it stored when its pages came oldest first (`_sort=date`
honoured); when they did not, the next read starts again where this one started (`resume_from_ms`), so nothing
is skipped, and re-reading adds nothing (every reading has a deterministic key).

`ehr_reads` (one row per site and EHR patient) is what the view shows: a read in progress, when the EHR was last
read, and what it brought. It is written here whatever queue runs the job.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import orjson
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bff.capabilities import CapabilityError
from bff.ingest.registry import parser_for
from bff.jobs.context import JobContext
from bff.jobs.queue import JobQueue
from bff.jobs.requests import fhir_reference, read_request, recompute_request
from bff.jobs.seams import PAGE_SIZE
from bff.smart import LaunchNotFoundError, SmartError, TokenCipher, TokenCipherError
from bff.store.db import Store
from bff.store.ingest import Ingestor, IngestReport
from bff.store.models import EhrRead, Patient, PatientIdentifier, Reading

log = logging.getLogger("glucobridge.jobs.launch_read")

#: The first read of a patient goes this far back: the longest period the view shows.
FIRST_READ_DAYS = 90
#: Pages one read follows at most (with 1000 a page, far more than 90 days of 5-minute readings).
MAX_PAGES = 200
#: A read that finished (complete) this recently is fresh enough: opening the view again does not read again.
FRESH_S = 60.0
#: A read queued or running this long is taken as lost (no worker, a flushed queue): the next launch asks again.
LOST_AFTER_S = 600.0


class ReadFailedError(RuntimeError):
    """The read cannot go on; the message says why without naming the patient."""


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# MARK: ehr_reads


@dataclass(frozen=True, slots=True)
class ReadStatus:
    """A patient's launch-time reads at a site, as the view shows them."""

    state: str  # queued | running | done | incomplete | failed
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_read_at: datetime | None  # when the EHR was last read to the end of a read (done or incomplete)
    pages: int
    received: int
    added: int  # readings the latest read stored (0: the store had them all)
    error: str | None

    @property
    def running(self) -> bool:
        return self.state in ("queued", "running")


def _status(row: Any) -> ReadStatus:
    """The status of a read row (an `EhrRead`, or a row of `_READ_STATUS`)."""
    return ReadStatus(
        row.state, _utc(row.requested_at) or datetime.now(UTC), _utc(row.started_at), _utc(row.finished_at),
        _utc(row.last_read_at), row.pages, row.received, row.added, row.error,
    )  # fmt: skip


def _row(session: Session, site: str, patient: str) -> EhrRead | None:
    """The site's read row of a patient (an id or `Patient/<id>`)."""
    row: EhrRead | None = session.scalar(
        select(EhrRead).where(EhrRead.site_key == site, EhrRead.fhir_patient == fhir_reference(patient))
    )
    return row


_READ = EhrRead.__table__.c
#: A read row's status columns by site and FHIR reference, built once: every view asks it (`LaunchReads.status`).
_READ_STATUS = select(
    _READ.id,
    _READ.state,
    _READ.requested_at,
    _READ.started_at,
    _READ.finished_at,
    _READ.last_read_at,
    _READ.pages,
    _READ.received,
    _READ.added,
    _READ.error,
).where(_READ.site_key == bindparam("site"), _READ.fhir_patient == bindparam("patient"))


def _status_row(session: Session, site: str, patient: str) -> Any:
    return session.connection().execute(_READ_STATUS, {"site": site, "patient": fhir_reference(patient)}).first()


class LaunchReads:
    """The `ehr_reads` table: whether a read is due, its progress, where the next one starts."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def status(self, site: str, patient: str, session: Session | None = None) -> ReadStatus | None:
        with self.store.joined(session) as s:
            row = _status_row(s, site, patient)
            return None if row is None else _status(row)

    def mark_requested(self, site: str, patient: str, now: datetime) -> bool:
        """Record that a read is wanted; True when it should be queued now (none is in progress, and the last
        complete read is not from the last `FRESH_S`). Of two callers at once, one gets True."""
        return self.request(site, patient, now)[0]

    def request(self, site: str, patient: str, now: datetime) -> tuple[bool, ReadStatus | None]:
        """`mark_requested` and the status it leaves, read in the same transaction (the view asks both at once)."""
        with self.store.transaction() as session:
            asked = self.request_in(session, site, patient, now)
        if asked is not None:
            return asked
        try:
            with self.store.transaction() as session:
                added = EhrRead(site_key=site, fhir_patient=fhir_reference(patient), state="queued", requested_at=now,
                                pages=0, received=0, added=0)  # fmt: skip
                session.add(added)
                session.flush()
                return True, _status(added)
        except IntegrityError:
            return False, self.status(site, patient)

    def request_in(self, session: Session, site: str, patient: str, now: datetime) -> tuple[bool, ReadStatus] | None:
        """`request` in the caller's transaction, for a patient read before; None when never requested (then
        `request` adds the row, in a transaction of its own)."""
        row = _status_row(session, site, patient)
        if row is None:
            return None
        since = now - (_utc(row.started_at) or _utc(row.requested_at) or now)
        if row.state in ("queued", "running") and since < timedelta(seconds=LOST_AFTER_S):
            return False, _status(row)
        last = _utc(row.last_read_at)
        if row.state == "done" and last is not None and now - last < timedelta(seconds=FRESH_S):
            return False, _status(row)
        taken = session.execute(
            update(EhrRead)
            .where(EhrRead.id == row.id, EhrRead.state == row.state, EhrRead.requested_at == row.requested_at)
            # Not started: a lost read's old start would make every later view take it as lost again.
            .values(state="queued", requested_at=now, started_at=None, error=None)
            .execution_options(synchronize_session=False)
        )
        if not taken.rowcount:  # type: ignore[attr-defined]  # another view took it first: its status
            again = _status_row(session, site, patient)
            return None if again is None else (False, _status(again))
        return True, replace(_status(row), state="queued", requested_at=now, started_at=None, error=None)

    def mark_started(self, site: str, patient: str, now: datetime, since_ms: int) -> None:
        with self.store.transaction() as session:
            row = _row(session, site, patient)
            if row is None:  # enqueued by something other than a view (a test, a CLI)
                row = EhrRead(site_key=site, fhir_patient=fhir_reference(patient), requested_at=now)
                session.add(row)
            row.state, row.started_at, row.since_ms, row.error = "running", now, since_ms, None
            row.pages, row.received, row.added = 0, 0, 0

    def mark_finished(self, site: str, patient: str, now: datetime, *, state: str, pages: int = 0,
                      received: int = 0, added: int = 0, error: str | None = None,
                      resume_from_ms: int | None = None) -> None:  # fmt: skip
        with self.store.transaction() as session:
            row = _row(session, site, patient)
            if row is None:
                return
            row.state, row.finished_at, row.pages, row.received, row.added = state, now, pages, received, added
            row.error = error
            if state in ("done", "incomplete"):
                row.last_read_at = now
                row.resume_from_ms = resume_from_ms

    def since_ms(self, site: str, patient: str, now: datetime) -> int:
        """Where the next read starts (see the module docstring)."""
        reference = fhir_reference(patient)
        floor = int((now - timedelta(days=FIRST_READ_DAYS)).timestamp() * 1000)
        with self.store.transaction() as session:
            resume = session.scalar(
                select(EhrRead.resume_from_ms).where(EhrRead.site_key == site, EhrRead.fhir_patient == reference)
            )
            if resume is not None:
                return max(int(resume), floor)
            last = session.scalar(
                select(func.max(Reading.observed_ms))
                .join(PatientIdentifier, PatientIdentifier.patient_id == Reading.patient_id)
                .join(Patient, Patient.id == Reading.patient_id)
                .where(PatientIdentifier.issuer == f"site:{site}:fhir", PatientIdentifier.value == reference,
                       Reading.kind == "cgm")
            )  # fmt: skip
        return max(int(last), floor) if last is not None else floor


def seal(cipher: TokenCipher, handle: str, patient: str) -> str:
    return cipher.encrypt(orjson.dumps({"handle": handle, "patient": patient}).decode())


def unseal(cipher: TokenCipher, sealed: str) -> tuple[str, str]:
    """(handle, patient); ReadFailedError when it cannot be opened (the token keys were rotated)."""
    try:
        opened = orjson.loads(cipher.decrypt(sealed))
        return str(opened["handle"]), str(opened["patient"])
    except (TokenCipherError, orjson.JSONDecodeError, KeyError, TypeError):
        raise ReadFailedError("the job's launch cannot be opened (were the token keys rotated?)") from None


async def request_read(
    reads: LaunchReads, queue: JobQueue, cipher: TokenCipher, *, site: str, patient: str, handle: str,
    now: datetime | None = None,
) -> ReadStatus | None:  # fmt: skip
    """Queue a launch-time read of the patient when one is due (the view calls this when it opens); the status."""
    now = now or datetime.now(UTC)
    due, status = await anyio.to_thread.run_sync(lambda: reads.request(site, patient, now))
    if due:
        await queue_read(queue, cipher, site=site, patient=patient, handle=handle)
    return status


async def queue_read(queue: JobQueue, cipher: TokenCipher, *, site: str, patient: str, handle: str) -> None:
    """Queue the read `LaunchReads.request` found due (the launch's handle sealed into the job)."""
    await queue.enqueue(read_request(site, patient, seal(cipher, handle, patient)))


# MARK: the read


@dataclass(slots=True)
class _Progress:
    pages: int = 0
    received: int = 0
    added: int = 0
    in_order: bool = True  # every page's readings came oldest first, after the previous page's
    last_ms: int | None = None


def _instant_ms(resource: Mapping[str, Any]) -> int | None:
    value = resource.get("effectiveDateTime") or resource.get("effectiveInstant")
    if value is None and isinstance(resource.get("effectivePeriod"), dict):
        value = resource["effectivePeriod"].get("start")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(moment.timestamp() * 1000) if moment.tzinfo is not None else None


def _page(body: bytes, reference: str, progress: _Progress) -> str | None:
    """Check a searchset page (every Observation the launch's patient's; the order of its readings) and return its
    `next` link, if any. ReadFailedError when it is not a searchset Bundle or names another patient."""
    try:
        bundle = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReadFailedError("the EHR's answer to the search is not JSON") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ReadFailedError("the EHR's answer to the search is not a Bundle")
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
            continue
        subject = (resource.get("subject") or {}).get("reference")
        if isinstance(subject, str) and subject != reference and not subject.endswith("/" + reference):
            raise ReadFailedError("the EHR's answer holds another patient's Observations: nothing more is read")
        moment = _instant_ms(resource)
        if moment is None:
            continue
        if progress.last_ms is not None and moment < progress.last_ms:
            progress.in_order = False
        progress.last_ms = moment if progress.last_ms is None else max(progress.last_ms, moment)
    links = bundle.get("link") or []
    return next(
        (str(link["url"]) for link in links if isinstance(link, dict) and link.get("relation") == "next"
         and isinstance(link.get("url"), str)),
        None,
    )  # fmt: skip


def _same_server(url: str, base: str) -> bool:
    """A `next` link stays on the launch's FHIR server (scheme, host, port and base path): the token goes nowhere
    else."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc) and a.path.startswith(b.path.rstrip("/") + "/")


async def run(ctx: JobContext, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The job: read, store, record; its result has counts only (no patient)."""
    site = str(payload["site"])
    try:
        handle, patient = unseal(ctx.cipher, str(payload["sealed"]))
    except ReadFailedError as exc:
        log.warning("launch read at site %s: %s", site, exc)
        return {"state": "failed", "error": str(exc)}
    reads = LaunchReads(ctx.store)
    now = ctx.clock()
    since = await anyio.to_thread.run_sync(lambda: reads.since_ms(site, patient, now))
    await anyio.to_thread.run_sync(lambda: reads.mark_started(site, patient, now, since))
    progress = _Progress()
    try:
        complete = await _read(ctx, site, patient, handle, since, progress)
    except ReadFailedError as exc:
        error = str(exc)
        log.warning("launch read failed at site %s: %s", site, error)
        await anyio.to_thread.run_sync(lambda: reads.mark_finished(
            site, patient, ctx.clock(), state="failed", pages=progress.pages, received=progress.received,
            added=progress.added, error=error))  # fmt: skip
        return {"state": "failed", "error": error, "pages": progress.pages, "added": progress.added}
    except BaseException:
        await anyio.to_thread.run_sync(lambda: reads.mark_finished(
            site, patient, ctx.clock(), state="failed", pages=progress.pages, received=progress.received,
            added=progress.added, error="the read stopped unexpectedly"))  # fmt: skip
        raise
    state = "done" if complete else "incomplete"
    resume = None if complete or progress.in_order else since
    await anyio.to_thread.run_sync(lambda: reads.mark_finished(
        site, patient, ctx.clock(), state=state, pages=progress.pages, received=progress.received,
        added=progress.added, resume_from_ms=resume))  # fmt: skip
    if progress.added:
        await ctx.queue.enqueue(recompute_request())  # outcome windows the new readings made stale
    return {"state": state, "pages": progress.pages, "received": progress.received, "added": progress.added,
            "in_order": progress.in_order}  # fmt: skip


async def _read(ctx: JobContext, site: str, patient: str, handle: str, since: int, progress: _Progress) -> bool:
    """Page through the search until the EHR has no more (True) or the budget or page limit is reached (False)."""
    deadline = time.monotonic() + ctx.read_budget_s
    try:
        launch = await ctx.smart.launch(handle)
        token = await ctx.smart.access_token(handle)
    except LaunchNotFoundError:
        raise ReadFailedError("the launch has ended: the next launch reads again") from None
    except (SmartError, httpx.HTTPError) as exc:
        raise ReadFailedError(f"no token for the read ({type(exc).__name__})") from None
    if launch.site_key != site or launch.patient is None or fhir_reference(launch.patient) != fhir_reference(patient):
        raise ReadFailedError("the job's launch is not this patient's")
    try:
        caps = await anyio.to_thread.run_sync(lambda: ctx.capabilities.get(site))
    except CapabilityError as exc:
        raise ReadFailedError(f"the site's matrix cannot be used: {exc}") from None
    base = launch.iss.rstrip("/")
    reference = fhir_reference(patient)
    since_at = datetime.fromtimestamp(since / 1000, UTC)
    searches = ctx.cgm_search(caps, reference, since_at)  # the vendor profile's, for this site (bff/vendors)
    if len(searches) != 1:
        raise ReadFailedError(f"the site's profile asks for {len(searches)} searches: one is read at launch")
    (search,) = searches
    url: str = f"{base}/{search.resource_type}"
    params: httpx.QueryParams | None = httpx.QueryParams(
        [*search.params, ("_sort", "date"), ("_count", str(PAGE_SIZE))]  # oldest first: a stop leaves no gap
    )
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    ingestor = Ingestor(ctx.store)
    zone = caps.time_zone or None
    while progress.pages < MAX_PAGES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            with anyio.fail_after(remaining):
                response = await ctx.http.get(url, params=params, headers=headers, timeout=remaining)
        except TimeoutError:
            return False  # the budget ran out mid-page: that page is read again next time
        except httpx.HTTPError as exc:
            raise ReadFailedError(f"the EHR did not answer the search ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise ReadFailedError(f"the EHR answered the search with HTTP {response.status_code}")
        body = response.content
        following = _page(body, reference, progress)

        def store(body: bytes = body) -> IngestReport:
            return ingestor.ingest(parser_for("fhir"), io.BytesIO(body), site=site, source_name=f"ehr-read:{site}",
                                   site_zone=zone)  # fmt: skip

        report = await anyio.to_thread.run_sync(store)
        progress.pages += 1
        progress.received += report.received
        progress.added += report.added
        if following is None:
            return True
        if not _same_server(following, base):
            raise ReadFailedError("the EHR's next link leads to another server: it is not followed")
        url, params = following, None
    return False
