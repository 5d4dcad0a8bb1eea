"""The persisted Bulk Data job record (tables `bulk_jobs`, `bulk_files`, `bulk_watermarks`): every step of an export
is written before the next one starts, so a job can be resumed from its record after a crash.

- A job takes one of its site's `max_concurrent` slots when it is created (the unique (site, slot) makes that
  race-free across processes) and gives it back when it ends. A job that crashed keeps its slot: the server still
  holds the export, so it counts until it is resumed or cancelled.
- A lease (`host:pid`, renewed at every step) keeps two processes from driving one job. A lease whose process is
  gone (same host, no such pid) or whose time ran out is taken over.
- The watermark of (site, scope) moves to the manifest's `transactionTime` only when a job completes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from bff.bulk.protocol import Manifest, manifest_json
from bff.store.db import Store
from bff.store.models import BulkFile, BulkJob, BulkWatermark

ACTIVE = ("kicking_off", "exporting", "downloading")
TERMINAL = ("complete", "failed", "cancelled")


class JobBusyError(RuntimeError):
    """The site's concurrent-job slots are taken, or another live process runs the job (the message says which)."""


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str | None) -> bool:
    """A lease held by a process of this host that no longer exists (kill -9, a crash)."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True, slots=True)
class FileRow:
    """A snapshot of a `bulk_files` row (detached from any session)."""

    id: int
    export_no: int
    kind: str
    position: int
    resource_type: str
    url: str
    expected_count: int | None
    state: str
    attempts: int


def _snapshot(row: BulkFile) -> FileRow:
    return FileRow(row.id, row.export_no, row.kind, row.position, row.resource_type, row.url, row.expected_count,
                   row.state, row.attempts)  # fmt: skip


class JobStore:
    """Reads and writes of the job record; each method is one transaction."""

    def __init__(self, store: Store, *, owner: str | None = None, lease_s: float = 600.0) -> None:
        self.store = store
        self.owner = owner or this_process()
        self.lease = timedelta(seconds=lease_s)

    # MARK: jobs

    def create(
        self, site: str, scope: str, kickoff_url: str, since: datetime | None, max_concurrent: int, now: datetime
    ) -> BulkJob:
        """A new job in the first free slot of the site, leased to this process; JobBusyError when none is free."""
        for slot in range(max_concurrent):
            try:
                with self.store.transaction() as session:
                    job = BulkJob(site_key=site, scope=scope, state="kicking_off", slot=slot, kickoff_url=kickoff_url,
                                  since=since, exports=1, lease_owner=self.owner, lease_expires_at=now + self.lease,
                                  created_at=now, updated_at=now)  # fmt: skip
                    session.add(job)
                    session.flush()
                    return job
            except IntegrityError:
                continue
        busy = ", ".join(f"{j.id} ({j.state})" for j in self.active(site))
        raise JobBusyError(
            f"site {site} already runs {max_concurrent} export(s), its [bulk] max_concurrent: job(s) {busy}; "
            f"resume or cancel them first (glucobridge bulk resume|cancel {site})"
        )

    def get(self, job_id: int) -> BulkJob | None:
        with self.store.transaction() as session:
            return session.get(BulkJob, job_id)

    def active(self, site: str) -> list[BulkJob]:
        with self.store.transaction() as session:
            return list(session.scalars(
                select(BulkJob).where(BulkJob.site_key == site, BulkJob.state.in_(ACTIVE)).order_by(BulkJob.id)
            ))  # fmt: skip

    def recent(self, site: str, limit: int = 20) -> list[BulkJob]:
        with self.store.transaction() as session:
            return list(session.scalars(
                select(BulkJob).where(BulkJob.site_key == site).order_by(BulkJob.id.desc()).limit(limit)
            ))  # fmt: skip

    def claim(self, job_id: int, now: datetime) -> BulkJob:
        """Lease the job to this process (taking over a lapsed lease or one of a process that is gone)."""
        with self.store.transaction() as session:
            job = session.get(BulkJob, job_id)
            if job is None:
                raise KeyError(job_id)
            free = (
                job.lease_owner in (None, self.owner)
                or job.lease_expires_at is None
                or _aware(job.lease_expires_at) <= now
                or _owner_gone(job.lease_owner)
            )
            if not free:
                raise JobBusyError(
                    f"job {job_id} is being run by {job.lease_owner} (lease until {job.lease_expires_at:%H:%M:%S}); "
                    "let it finish, or cancel it"
                )
            job.lease_owner, job.lease_expires_at, job.updated_at = self.owner, now + self.lease, now
            return job

    def save(self, job_id: int, now: datetime, **values: Any) -> BulkJob:
        """Set fields of the job and renew the lease; a job that became terminal meanwhile (cancelled by another
        process) is left as it is and returned."""
        with self.store.transaction() as session:
            job = session.get(BulkJob, job_id)
            if job is None:
                raise KeyError(job_id)
            if job.state in TERMINAL and values.get("state") not in TERMINAL:
                return job
            for name, value in values.items():
                setattr(job, name, value)
            job.updated_at = now
            if job.state in TERMINAL:
                job.slot, job.lease_owner, job.lease_expires_at = None, None, None
                job.finished_at = job.finished_at or now
            elif job.lease_owner == self.owner:
                job.lease_expires_at = now + self.lease
            return job

    def release(self, job_id: int) -> None:
        """Give up the lease (the process stops; the job stays where it is)."""
        with self.store.transaction() as session:
            session.execute(
                update(BulkJob)
                .where(BulkJob.id == job_id, BulkJob.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    # MARK: files

    def add_manifest(self, job_id: int, export_no: int, manifest: Manifest, now: datetime) -> BulkJob:
        """Keep the manifest and one row per file (pending; `deleted` entries are recorded as skipped)."""
        with self.store.transaction() as session:
            job = session.get(BulkJob, job_id)
            assert job is not None
            job.manifest, job.transaction_time = manifest_json(manifest), manifest.transaction_time
            job.state, job.updated_at, job.lease_expires_at = "downloading", now, now + self.lease
            for kind, items in (("output", manifest.output), ("error", manifest.error), ("deleted", manifest.deleted)):
                for position, item in enumerate(items):
                    session.add(BulkFile(job_id=job_id, export_no=export_no, kind=kind, position=position,
                                         resource_type=item.type, url=item.url, expected_count=item.count,
                                         state="skipped" if kind == "deleted" else "pending", attempts=0,
                                         added=0, already_present=0, quarantined=0))  # fmt: skip
            return job

    def files(self, job_id: int, export_no: int | None = None) -> list[FileRow]:
        with self.store.transaction() as session:
            query = select(BulkFile).where(BulkFile.job_id == job_id)
            if export_no is not None:
                query = query.where(BulkFile.export_no == export_no)
            return [_snapshot(r) for r in session.scalars(query.order_by(BulkFile.export_no, BulkFile.id))]

    def update_file(self, file_id: int, **values: Any) -> None:
        with self.store.transaction() as session:
            row = session.get(BulkFile, file_id)
            assert row is not None
            for name, value in values.items():
                setattr(row, name, value)

    def expire_pending(self, job_id: int, export_no: int) -> None:
        with self.store.transaction() as session:
            session.execute(
                update(BulkFile)
                .where(BulkFile.job_id == job_id, BulkFile.export_no == export_no, BulkFile.state == "pending")
                .values(state="expired")
            )

    def totals(self, job_ids: Iterable[int]) -> dict[int, dict[str, int]]:
        """Per job: files done and in all (of its latest export), readings added and already present, quarantined."""
        out: dict[int, dict[str, int]] = {}
        with self.store.transaction() as session:
            for job_id in job_ids:
                rows = list(session.scalars(select(BulkFile).where(BulkFile.job_id == job_id)))
                latest = max((r.export_no for r in rows), default=0)
                current = [r for r in rows if r.export_no == latest and r.state != "skipped"]
                out[job_id] = {
                    "files_done": sum(1 for r in current if r.state == "done"),
                    "files": len(current),
                    "added": sum(r.added for r in rows),
                    "already_present": sum(r.already_present for r in rows),
                    "quarantined": sum(r.quarantined for r in rows),
                }
        return out

    # MARK: the watermark

    def watermark(self, site: str, scope: str) -> datetime | None:
        with self.store.transaction() as session:
            row = session.get(BulkWatermark, (site, scope))
            return None if row is None else _aware(row.since)

    def watermarks(self, site: str) -> dict[str, datetime]:
        with self.store.transaction() as session:
            rows = session.scalars(select(BulkWatermark).where(BulkWatermark.site_key == site))
            return {row.scope: _aware(row.since) for row in rows}

    def complete(self, job_id: int, now: datetime) -> BulkJob:
        """The job is done: its slot is free and the watermark of its scope moves to its transactionTime."""
        with self.store.transaction() as session:
            job = session.get(BulkJob, job_id)
            assert job is not None
            assert job.transaction_time is not None
            job.state, job.updated_at, job.finished_at = "complete", now, now
            job.slot, job.lease_owner, job.lease_expires_at = None, None, None
            mark = session.get(BulkWatermark, (job.site_key, job.scope))
            if mark is None:
                session.add(BulkWatermark(site_key=job.site_key, scope=job.scope, since=job.transaction_time,
                                          job_id=job.id, updated_at=now))  # fmt: skip
            elif _aware(mark.since) < _aware(job.transaction_time):
                mark.since, mark.job_id, mark.updated_at = job.transaction_time, job.id, now
            return job


def _aware(moment: datetime) -> datetime:
    """SQLite gives timestamps back without their zone: they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


__all__ = ["ACTIVE", "TERMINAL", "FileRow", "JobBusyError", "JobStore", "this_process"]
