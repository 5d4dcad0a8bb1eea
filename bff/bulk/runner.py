"""Bulk Data exports of a site, driven to the end from their job record: kick-off, poll, manifest, download, ingest.

    runner = BulkRunner(store, capabilities, BulkClient(http, token, forget_token=auth.forget), work_dir=...)
    await runner.start("epic-like")          # one job per export scope of the site's matrix, run to the end
    await runner.resume("epic-like")         # the site's unfinished jobs, from where their record says
    await runner.cancel("epic-like")         # DELETE at the server, then the job is cancelled
    runner.status("epic-like")               # jobs, files, counts and the _since watermarks

What a site allows comes from its `[bulk]` matrix: `available`, `group_ids` (a Group export per group; no groups:
Patient level), `params` (extra kick-off parameters such as `_typeFilter`), `max_concurrent` (jobs at once, across
processes), `poll_floor_s` (never poll sooner), `run_window` (a job starts only inside it, in the site's zone).

A job's state moves kicking_off → exporting → downloading → complete (or failed, cancelled), each step saved first:

- kick-off: 202 + Content-Location; 429 ("a job is already running") and transient errors wait their Retry-After
  (three forms) and try again, up to `kickoff_attempts`;
- polling: 202 shows X-Progress and waits Retry-After (never under the floor; backing off without one); transient
  5xx and 429 are retried (up to `transient_limit` in a row); any other error fails the job with the server's words;
- the manifest is checked (`bff.bulk.protocol.parse_manifest`) and each file gets a row;
- each file is streamed to disk with a fresh token, retried on its own (cut short, 5xx, transport errors) up to
  `file_attempts`, then ingested: Observations through `bff.store.ingest.Ingestor` with the FHIR parser (each
  reading keyed, so a file ingested twice adds nothing), Patients into the store's names and zone, error files
  (OperationOutcome) into quarantine; Patient files come after the readings they name. A file marked done is
  never fetched again;
- files gone (404/410: expired) make the job export again with the same request (`max_exports` kick-offs at most);
- at the end the export is deleted at the server and the scope's `_since` watermark moves to `transactionTime`.

A process killed anywhere leaves the job active with its slot; `resume` claims it (the dead process's lease is taken
over), polls its status URL again or fetches the files not yet done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import orjson

from bff.bulk.client import Answer, BulkClient, Download
from bff.bulk.jobs import ACTIVE, FileRow, JobBusyError, JobStore
from bff.bulk.protocol import (
    BulkProtocolError,
    ExportScope,
    Level,
    diagnostics,
    in_run_window,
    is_transient,
    kickoff_url,
    parse_manifest,
    poll_delay,
)
from bff.capabilities import CapabilityService, SiteCapabilities
from bff.clinical import PatientOutcomesView
from bff.ehr_read import patient_demographics
from bff.files import private_dir
from bff.ingest.records import Feed, FeedProblem
from bff.ingest.registry import parser_for
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.models import BulkJob

log = logging.getLogger("glucobridge.bulk")

#: The context of a quarantined line of a Bulk Data error file.
ERROR_FILE_CONTEXT = "glucobridge:bulk-error-file"


class BulkError(RuntimeError):
    """A bulk request refused before anything was sent (not available, outside the run window, no such job)."""


@dataclass
class JobReport:
    """Where a job stands (for the CLI and tests)."""

    id: int
    site: str
    scope: str
    state: str
    progress: str | None = None
    error: str | None = None
    transaction_time: datetime | None = None
    exports: int = 1
    files_done: int = 0
    files: int = 0
    added: int = 0
    already_present: int = 0
    quarantined: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["transaction_time"] = self.transaction_time.isoformat() if self.transaction_time else None
        return out


@dataclass
class _Run:
    caps: SiteCapabilities
    job: BulkJob
    events: list[str] = field(default_factory=list)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _file_order(row: FileRow) -> tuple[int, int, int]:
    """Readings first, then Patients (they name patients the readings created), then error files."""
    kind = 2 if row.kind == "error" else (1 if row.resource_type == "Patient" else 0)
    return (kind, row.position, row.id)


class BulkRunner:
    """Runs a site's exports. One per process; jobs of different sites may run concurrently."""

    def __init__(
        self,
        store: Store,
        capabilities: CapabilityService,
        client: BulkClient,
        *,
        work_dir: Path,
        now: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_event: Callable[[str], None] | None = None,
        kickoff_attempts: int = 8,
        transient_limit: int = 10,
        file_attempts: int = 5,
        file_retry_s: float = 2.0,
        max_exports: int = 3,
        lease_s: float = 600.0,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.capabilities = capabilities
        self.client = client
        self.jobs = JobStore(store, owner=owner, lease_s=lease_s)
        self.work_dir = Path(work_dir)
        self.now = now
        self.sleep = sleep
        self.on_event = on_event
        self.kickoff_attempts = kickoff_attempts
        self.transient_limit = transient_limit
        self.file_attempts = file_attempts
        self.file_retry_s = file_retry_s
        self.max_exports = max_exports
        self.ingestor = Ingestor(store)
        self.view = PatientOutcomesView(store)

    def _event(self, job: BulkJob | int, message: str) -> None:
        job_id = job if isinstance(job, int) else job.id
        line = f"job {job_id}: {message}"
        log.info(line)
        if self.on_event is not None:
            self.on_event(line)

    # MARK: what the matrix asks for

    def scopes(
        self, caps: SiteCapabilities, *, level: Level | None = None, group: str | None = None
    ) -> list[ExportScope]:
        """The exports `start` makes: a Group export per `[bulk] group_ids` (or the one named), else Patient level;
        `level` asks for another level explicitly."""
        if group is not None:
            if group not in caps.bulk.group_ids:
                raise BulkError(f"group {group!r} is not in site {caps.key}'s [bulk] group_ids "
                                f"({', '.join(caps.bulk.group_ids) or 'none'})")  # fmt: skip
            return [ExportScope(Level.GROUP, group)]
        if level is Level.GROUP or (level is None and caps.bulk.group_ids):
            if not caps.bulk.group_ids:
                raise BulkError(f"site {caps.key} has no [bulk] group_ids: a Group export needs one")
            return [ExportScope(Level.GROUP, g) for g in caps.bulk.group_ids]
        return [ExportScope(level or Level.PATIENT)]

    def _caps(self, site: str) -> SiteCapabilities:
        caps = self.capabilities.get(site)
        if not caps.bulk.available:
            raise BulkError(f"site {site} does not offer Bulk Data ([bulk] available = false)")
        if not caps.iss:
            raise BulkError(f"site {site} has no FHIR base ([smart] iss)")
        return caps

    # MARK: commands

    async def start(
        self, site: str, *, level: Level | None = None, group: str | None = None, full: bool = False
    ) -> list[JobReport]:
        """Export each scope of the site in turn (each job to its end). `full`: ignore the `_since` watermark."""
        caps = self._caps(site)
        now = self.now()
        if not in_run_window(caps.bulk.run_window, caps.time_zone, now):
            raise BulkError(f"site {site} allows exports only in its run window {caps.bulk.run_window} "
                            f"({caps.time_zone or 'UTC'}); it is outside it now")  # fmt: skip
        reports = []
        for scope in self.scopes(caps, level=level, group=group):
            since = None if full else self.jobs.watermark(site, scope.key)
            try:
                url = kickoff_url(caps.iss, scope, caps.bulk.params, since)
            except BulkProtocolError as exc:
                raise BulkError(f"site {site}: {exc}") from None
            job = self.jobs.create(site, scope.key, url, since, caps.bulk.max_concurrent, self.now())
            self._event(
                job, f"{scope.key} export of {site}" + (f" since {since.isoformat()}" if since else " (all data)")
            )
            reports.append(await self.run(job.id))
        return reports

    async def resume(self, site: str, job_id: int | None = None) -> list[JobReport]:
        """Drive the site's unfinished jobs (or the one named) on from their record."""
        reports = []
        for one in self._job_ids(site, job_id):
            job = self._site_job(site, one)
            if job.state not in ACTIVE:
                reports.append(self.report(job))
                continue
            self.jobs.claim(one, self.now())
            self._event(one, f"resumed ({job.state})")
            reports.append(await self.run(one))
        return reports

    async def cancel(self, site: str, job_id: int | None = None) -> list[JobReport]:
        """Cancel the site's unfinished jobs (or the one named): DELETE at the server, then state cancelled."""
        caps = self.capabilities.get(site)
        reports = []
        for one in self._job_ids(site, job_id):
            job = self._site_job(site, one)
            if job.state in ACTIVE:
                if job.status_url:
                    answer = await self.client.cancel(caps, job.status_url)
                    self._event(one, f"DELETE {job.status_url}: {answer.status or answer.error}")
                job = self.jobs.save(one, self.now(), state="cancelled", error="cancelled")
                self._remove_files(one)
            reports.append(self.report(job))
        return reports

    def _job_ids(self, site: str, job_id: int | None) -> list[int]:
        """The job named, else the site's unfinished ones."""
        return [job_id] if job_id is not None else [j.id for j in self.jobs.active(site)]

    def _site_job(self, site: str, job_id: int) -> BulkJob:
        job = self.jobs.get(job_id)
        if job is None or job.site_key != site:
            raise BulkError(f"no bulk job {job_id} at site {site}")
        return job

    def status(self, site: str, limit: int = 20) -> list[JobReport]:
        return [self.report(job) for job in self.jobs.recent(site, limit)]

    def report(self, job: BulkJob) -> JobReport:
        totals = self.jobs.totals([job.id])[job.id]
        moment = job.transaction_time
        if moment is not None and moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # SQLite keeps no zone: it was written in UTC
        return JobReport(job.id, job.site_key, job.scope, job.state, job.progress, job.error, moment, job.exports,
                         **totals)  # fmt: skip

    # MARK: one job

    async def run(self, job_id: int) -> JobReport:
        """Drive a job (leased to this process) to a terminal state, or until the process stops."""
        try:
            while True:
                job = self.jobs.get(job_id)
                assert job is not None
                if job.state not in ACTIVE:
                    break
                caps = self.capabilities.get(job.site_key)
                if job.state == "kicking_off":
                    await self._kickoff(caps, job)
                elif job.state == "exporting":
                    await self._poll(caps, job)
                else:
                    await self._download(caps, job)
        finally:
            self.jobs.release(job_id)
        job = self.jobs.get(job_id)
        assert job is not None
        if job.state == "complete":
            self._remove_files(job_id)
        return self.report(job)

    def _fail(self, job: BulkJob, error: str) -> None:
        self._event(job, f"failed: {error}")
        self.jobs.save(job.id, self.now(), state="failed", error=error[:4000])

    async def _wait(self, job: BulkJob, seconds: float, why: str) -> None:
        self._event(job, f"{why}; next request in {seconds:g} s")
        await self.sleep(seconds)

    async def _kickoff(self, caps: SiteCapabilities, job: BulkJob) -> None:
        floor = float(caps.bulk.poll_floor_s)
        for attempt in range(self.kickoff_attempts):
            answer = await self.client.kickoff(caps, job.kickoff_url)
            if answer.status == 202:
                location = answer.header("content-location")
                if not location:
                    self._fail(job, "the kick-off answered 202 without Content-Location (no status URL to poll)")
                    return
                status_url = urljoin(job.kickoff_url, location)
                self.jobs.save(job.id, self.now(), state="exporting", status_url=status_url, progress="accepted")
                self._event(job, f"accepted, status at {status_url}")
                return
            what = _what(answer)
            if answer.status is not None and not is_transient(answer.status, answer.body):
                self._fail(job, f"the kick-off was refused: {what}")
                return
            if attempt + 1 == self.kickoff_attempts:
                break
            delay = poll_delay(answer.header("retry-after"), self.now(), floor_s=floor, waits=attempt)
            busy = " (a job is already running there)" if answer.status == 429 else ""
            await self._wait(job, delay, f"kick-off answered {what}{busy}")
        self._fail(job, f"the kick-off was still refused after {self.kickoff_attempts} attempts: {what}")

    async def _poll(self, caps: SiteCapabilities, job: BulkJob) -> None:
        assert job.status_url
        floor = float(caps.bulk.poll_floor_s)
        waits = transient = 0
        while True:
            answer = await self.client.status(caps, job.status_url)
            now = self.now()
            current = self.jobs.get(job.id)
            if current is None or current.state not in ACTIVE:
                return  # cancelled meanwhile
            if answer.status == 202:
                transient = 0
                progress = (answer.header("x-progress") or "in progress")[:200]
                self.jobs.save(job.id, now, progress=progress)
                delay = poll_delay(answer.header("retry-after"), now, floor_s=floor, waits=waits)
                waits += 1
                await self._wait(job, delay, f"in progress ({progress})")
                continue
            if answer.status == 200:
                try:
                    manifest = parse_manifest(answer.body, kickoff=job.kickoff_url, status_url=job.status_url,
                                              base=caps.iss)  # fmt: skip
                except BulkProtocolError as exc:
                    self._fail(job, f"the manifest cannot be used: {exc}")
                    return
                self.jobs.add_manifest(job.id, job.exports, manifest, now)
                files = len(manifest.output) + len(manifest.error)
                self._event(job, f"complete at the server: {files} file(s), transactionTime "
                                 f"{manifest.transaction_time.isoformat()}")  # fmt: skip
                return
            what = _what(answer)
            if answer.status is None or is_transient(answer.status, answer.body):
                transient += 1
                if transient > self.transient_limit:
                    self._fail(job, f"the status URL kept failing ({transient} times in a row): {what}")
                    return
                delay = poll_delay(answer.header("retry-after"), now, floor_s=floor, waits=transient)
                await self._wait(job, delay, f"status answered {what} (transient)")
                continue
            if answer.status in (404, 410):
                self._fail(job, f"the server no longer knows this export ({what}): start a new one")
            else:
                self._fail(job, f"the export failed at the server: {what}")
            return

    async def _download(self, caps: SiteCapabilities, job: BulkJob) -> None:
        rows = [r for r in self.jobs.files(job.id, job.exports) if r.state == "pending"]
        total = len([r for r in self.jobs.files(job.id, job.exports) if r.state != "skipped"])
        requires_token = bool((job.manifest or {}).get("requiresAccessToken", True))
        directory = private_dir(self.work_dir / f"job-{job.id}")
        for row in sorted(rows, key=_file_order):
            current = self.jobs.get(job.id)
            if current is None or current.state not in ACTIVE:
                return
            got = await self._fetch(caps, job, row, directory / f"{row.export_no}-{row.kind}-{row.position}.ndjson",
                                    requires_token)  # fmt: skip
            if got == "expired":
                await self._export_again(caps, job, row)
                return
            if isinstance(got, str):
                self.jobs.update_file(row.id, state="failed", error=got[:4000])
                self._fail(job, f"file {row.url} could not be fetched: {got}")
                return
            try:
                counts = await asyncio.to_thread(self._ingest, caps, job, row, got)
            except Exception as exc:  # the batch rolled back: the file stays pending, a resume does it again
                self._fail(job, f"file {row.url} could not be ingested: {type(exc).__name__}: {exc}")
                return
            finally:
                got.path.unlink(missing_ok=True)
            self.jobs.update_file(row.id, state="done", lines=got.lines, sha256=got.sha256, done_at=self.now(),
                                  error=None, **counts)  # fmt: skip
            finished = len([r for r in self.jobs.files(job.id, job.exports) if r.state == "done"])
            self._event(job, f"file {finished}/{total} done: {row.resource_type} {row.kind}, {got.lines} line(s), "
                             + _counts(row, counts))  # fmt: skip
        self.jobs.complete(job.id, self.now())
        if job.status_url:
            answer = await self.client.cancel(caps, job.status_url)  # the IG: DELETE when done, the server tidies up
            self._event(job, f"DELETE at the server after download: {answer.status or answer.error}")
        self._event(job, "complete; the _since watermark moved to its transactionTime")

    async def _fetch(
        self, caps: SiteCapabilities, job: BulkJob, row: FileRow, dest: Path, requires_token: bool
    ) -> Download | str:
        """The file on disk, "expired" when the server no longer has it, or why it could not be fetched."""
        reason = ""
        for attempt in range(self.file_attempts):
            self.jobs.update_file(row.id, attempts=row.attempts + attempt + 1)
            got = await self.client.download(caps, row.url, dest, with_token=requires_token)
            retry_after = None
            if isinstance(got, Download):
                if row.expected_count is None or got.lines >= row.expected_count:
                    return got
                reason = f"cut short: {got.lines} of {row.expected_count} line(s)"
            elif got.status in (404, 410):
                return "expired"
            elif got.status is None or got.status >= 500 or is_transient(got.status, got.body):
                reason, retry_after = _what(got), got.header("retry-after")
            else:
                return _what(got)
            dest.unlink(missing_ok=True)
            if attempt + 1 < self.file_attempts:
                delay = poll_delay(retry_after, self.now(), floor_s=self.file_retry_s, waits=attempt, cap_s=600.0)
                await self._wait(job, delay, f"file {row.url}: {reason}, trying again")
        return f"{reason} (after {self.file_attempts} attempts)"

    async def _export_again(self, caps: SiteCapabilities, job: BulkJob, row: FileRow) -> None:
        self.jobs.expire_pending(job.id, job.exports)
        if job.exports >= self.max_exports:
            self._fail(job, f"files expired before they could be fetched ({row.url}), after {job.exports} export(s)")
            return
        if job.status_url:
            with contextlib.suppress(Exception):
                await self.client.cancel(caps, job.status_url)
        self.jobs.save(job.id, self.now(), state="kicking_off", exports=job.exports + 1, status_url=None,
                       manifest=None, progress=None)  # fmt: skip
        self._event(job, f"file {row.url} expired at the server: exporting again (export {job.exports + 1})")

    # MARK: into the store

    def _ingest(self, caps: SiteCapabilities, job: BulkJob, row: FileRow, got: Download) -> dict[str, int]:
        source = f"bulk job {job.id} export {row.export_no} {row.kind} {row.resource_type} file {row.position + 1}"
        if row.kind == "error":
            return self._quarantine_errors(caps, got.path, source)
        if row.resource_type == "Patient":
            return self._remember_patients(caps, got.path)
        with got.path.open("rb") as stream:
            report = self.ingestor.ingest(parser_for(Feed.FHIR), stream, site=caps.key, source_name=source,
                                          site_zone=caps.time_zone or None)  # fmt: skip
        return {"added": report.added, "already_present": report.already_present, "quarantined": report.quarantined,
                "batch_id": report.batch_id}  # fmt: skip

    def _remember_patients(self, caps: SiteCapabilities, path: Path) -> dict[str, int]:
        """Names, birth date, MRN and zone of each Patient the store knows (by its FHIR id at this site)."""
        known = 0
        for resource in _lines(path):
            if resource.get("resourceType") != "Patient" or not isinstance(resource.get("id"), str):
                continue
            reference = f"Patient/{resource['id']}"
            if self.view.public_id(caps.key, reference) is None:
                continue  # a patient without readings here: nothing to attach the names to
            self.view.remember(caps.key, reference, patient_demographics(resource))
            known += 1
        return {"added": 0, "already_present": known, "quarantined": 0}

    def _quarantine_errors(self, caps: SiteCapabilities, path: Path, source: str) -> dict[str, int]:
        """Each OperationOutcome of an error file becomes a quarantine item (seen again: counted on the same row)."""

        def problems() -> Iterator[FeedProblem]:
            with path.open("rb") as stream:
                for number, raw in enumerate(stream, start=1):
                    line = raw.strip()
                    if not line:
                        continue
                    try:
                        body = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        body = None
                    why = diagnostics(body) or "an error file line that is not an OperationOutcome"
                    yield FeedProblem(f"{source}, line {number}", f"the export reported an error: {why}",
                                      line.decode("utf-8", errors="replace"), context=ERROR_FILE_CONTEXT)  # fmt: skip

        report = self.ingestor.ingest_items(problems(), site=caps.key, feed=Feed.FHIR, source_name=source)
        return {"added": 0, "already_present": 0, "quarantined": report.quarantined, "batch_id": report.batch_id}

    def _remove_files(self, job_id: int) -> None:
        directory = self.work_dir / f"job-{job_id}"
        if directory.is_dir():
            for leftover in directory.iterdir():
                leftover.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                directory.rmdir()


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open("rb") as stream:
        for raw in stream:
            line = raw.strip()
            if not line:
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                yield value


def _counts(row: FileRow, counts: dict[str, int]) -> str:
    if row.kind == "error":
        return f"{counts['quarantined']} error(s) quarantined"
    if row.resource_type == "Patient":
        return f"names and zones of {counts['already_present']} known patient(s) kept"
    return f"{counts['added']} reading(s) added, {counts['already_present']} already present, " \
           f"{counts['quarantined']} quarantined"  # fmt: skip


def _what(answer: Answer) -> str:
    if answer.status is None:
        return answer.error or "no response"
    text = diagnostics(answer.body)
    return f"HTTP {answer.status}" + (f" ({text})" if text else "")


__all__ = ["ERROR_FILE_CONTEXT", "BulkError", "BulkRunner", "JobBusyError", "JobReport"]
