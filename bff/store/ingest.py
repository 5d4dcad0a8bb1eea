"""Ingestion: one input (a file or a message) into the store, in one transaction.

    digest → parse (streaming) → validate → resolve patient, device stream, session → key
    → load the chunk into a staging table (PostgreSQL: COPY; SQLite: one executemany)
    → one set-based merge per chunk (INSERT … SELECT … ON CONFLICT DO NOTHING) → record conflicts
    → reconcile copies across feeds → mark outcome windows stale → close the batch

A crash or a lost database connection anywhere rolls the whole batch back: nothing is half-written, and
running the same input again completes it. Re-ingesting an input adds nothing (every reading has a
deterministic key), and an input already stored whole is not read again: its digest, with everything that
decides how it is read, names the earlier batch (`input_key`). Every record that cannot be used is kept in
quarantine with the reason.

Where a caller learns what changed: `IngestReport.changed_patients`, the ids of the patients whose stored
readings (CGM or scans) or zone this input changed, filled in `_Run.finish` just before the transaction commits.
"""

from __future__ import annotations

import gc
import hashlib
import io
import re
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np
import orjson
from sqlalchemy import Connection, Table, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bff.ingest.records import (
    Feed,
    FeedItem,
    FeedProblem,
    FeedReading,
    ParseOptions,
    Parser,
    PatientRef,
    reading_to_json,
)
from bff.ingest.validate import EARLIEST_MS, check_time, check_value, reportable_range
from bff.store import windows, zones
from bff.store.db import Store
from bff.store.models import (
    DeviceStream,
    IngestBatch,
    OutcomeWindow,
    Patient,
    PatientIdentifier,
    QuarantineItem,
    SensorSession,
    Site,
)
from bff.store.patients import OWN_ISSUER
from engine import DEVICES, UNKNOWN_DEVICE, GlucoseUnit, SensorFlag, device_profile, group_winners
from engine.units import MMOL_L_TO_MG_DL

#: A quarantined record's payload beyond this is cut (its SHA-256 covers the whole record); parsers refuse
#: records this large before building them, so this bounds what a hostile input can make the store keep.
QUARANTINE_PAYLOAD_LIMIT = 2**20
#: A quarantine reason beyond this is cut: a reason says what to fix, it never carries the value itself.
REASON_LIMIT = 1000
#: A reading's feed details (`extra`, as JSON) beyond this make the reading a problem, not a huge row.
EXTRA_LIMIT = 4096
#: Chunks handed to the writer thread and not yet written: the reading thread goes on reading while up to this many
#: wait (with one, it waited for each chunk's write before handing over the next: 5 µs a reading, `bench ingest`).
#: Memory holds this many chunks besides the one being read.
IN_FLIGHT = 2
#: Problems are written in sets of this many (one statement each), so a file of bad records costs little.
QUARANTINE_FLUSH = 2000
#: The context of a quarantined reading that was parsed but failed a check (its payload is the reading's JSON).
READING_CONTEXT = "glucobridge:reading"
#: Margin around new readings when re-deciding duplicates: chains of near-copies longer than this are not real.
RECONCILE_MARGIN_MS = 60 * 60_000

#: What each staged reading carries (the staging table's columns, in the order of a chunk's rows).
_STAGED = (
    "reading_key", "patient_id", "stream_id", "session_id", "observed_ms", "value_mg_dl", "value_original",
    "unit_original", "factor", "flag", "kind", "ambiguous_time", "source_record_key", "record_hash", "stream_label",
    "extra",
)  # fmt: skip
#: What every reading of one input shares: given once to the merge, not staged per reading.
_PER_INPUT = ("source_feed", "source_rank", "batch_id", "received_at")
#: COPY's text format: these characters in a text field would need escaping (a chunk with any is sent row by row).
_COPY_SPECIAL = re.compile("[\\\\\t\n\r\x00]")
_COPY_NULL, _BACKSLASH, _TWO_BACKSLASHES = "\\N", "\\", "\\\\"
_QUARANTINE_COLUMNS = (
    "site_key", "feed", "batch_id", "locator", "reason", "payload", "context", "payload_sha256", "patient_public_id",
    "first_seen", "last_seen", "seen_count",
)  # fmt: skip


def utcnow() -> datetime:
    return datetime.now(UTC)


class ReadingOwnerError(RuntimeError):
    """A staged reading names a device stream that is not its patient's: a defect of the ingestor, not of the
    input. Raised before the chunk is merged; the input's transaction rolls back."""


class IngestError(ValueError):
    """The input cannot be ingested at all (not a problem of single records)."""


@dataclass
class IngestReport:
    batch_id: int
    site: str
    feed: str
    received: int = 0
    added: int = 0
    already_present: int = 0
    conflicts: int = 0
    quarantined: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stale_windows: int = 0
    reconciled: int = 0
    zones: list[str] = field(default_factory=list)  # zone changes this input caused ("zone changed from … to …")
    problems: list[str] = field(default_factory=list)  # the first few quarantine reasons, for the caller
    #: The patients (database ids) whose stored readings or zone this input changed: the one place a caller
    #: (e.g. materialized outcomes) learns whose outcomes to recompute. Empty when nothing was added.
    changed_patients: set[int] = field(default_factory=set)
    #: The earlier batch this input was found identical to (same digest, site, feed, patient and options, every
    #: record stored): nothing was read again. None when the input was read.
    same_as_batch: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "site": self.site, "feed": self.feed, "received": self.received,
            "added": self.added, "already_present": self.already_present, "conflicts": self.conflicts,
            "quarantined": self.quarantined, "skipped": self.skipped, "stale_windows": self.stale_windows,
            "duplicates_reconciled": self.reconciled, "zone_changes": len(self.zones), "first_problems": self.problems,
            "same_as_batch": self.same_as_batch,
        }  # fmt: skip


class _HashingReader(io.RawIOBase):
    """A raw stream that hashes what is read through it (the batch's content digest)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha.update(data)
        return n


def reading_key(site: str, feed: str, reading: FeedReading, patient: str) -> uuid.UUID:
    """Deterministic, and scoped by site, sender and patient: the feed's record key when it has one, else the
    reading's identity (device, stream, time, unit). `patient` is the patient's public id (never a database id,
    which differs between databases and after a rolled-back batch). Two senders that reuse a message control id,
    or two patients whose rows carry the same `record_id`, never share a key.

    128 bits of SHA-256: collisions are out of reach at any realistic number of readings.
    """
    return uuid.UUID(hex=_key_hex(site, feed, reading, patient))


def _key_hex(site: str, feed: str, reading: FeedReading, patient: str) -> str:
    """`reading_key` as 32 hex digits (what the staging table is loaded with: no UUID object per reading)."""
    if reading.record_key:
        basis = f"{site}|{feed}|{reading.sender}|{patient}|{reading.record_key}"
    else:
        basis = f"{site}|{feed}|{patient}|{reading.device}|{reading.stream}|{reading.time_ms}|{reading.unit.label}"
    return _sha256(basis.encode()).digest()[:16].hex()


def record_hash(site: str, feed: str, reading: FeedReading) -> int | None:
    """The record's identity without the patient (64 bits of SHA-256, signed for BIGINT); None without a record key.

    The same record (same sender, record key, time and value) arriving for a different patient than the one it
    was filed for is a re-send for the wrong patient: it is quarantined, never filed twice.
    """
    if not reading.record_key:
        return None
    digest = _sha256(f"{site}|{feed}|{reading.sender}|{reading.record_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_sha256 = hashlib.sha256


def input_key(content_sha256: str, *, site: str, feed: str, patient: str | None, options: ParseOptions,
              site_zone: str | None) -> str:  # fmt: skip
    """SHA-256 of an input's content digest and of everything that decides how it is read: two runs with the same
    key read the same records into the same patients (reading keys are deterministic), so once a batch with this
    key stored every record, the same input again can only add nothing."""
    parts = [content_sha256, site, feed, patient or "", options.input_tz or "", options.date_order or "",
             site_zone or ""]  # fmt: skip
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()


#: While an input is read, the interpreter lets another thread in after 0.2 ms instead of 5. The writer thread's
#: every statement ends with it waiting for the reading thread, which parses without a pause, to let go of the
#: interpreter; at the default 5 ms, several waits a chunk held the writer back, and with it the reading thread
#: (1 M readings into PostgreSQL: CSV 37.7k/s at 5 ms, 43.6k/s at 0.2 ms; no gain below). It costs nothing while no
#: thread waits.
SWITCH_INTERVAL_S = 0.0002
#: While an input is read, the cyclic garbage collector's youngest generation is collected after 50,000 new
#: container objects instead of 700. An ingest holds up to three chunks of readings alive while it makes several
#: objects a reading: at 700 the collector ran every few readings, rescanning and promoting the chunks in flight
#: (1 M CSV readings into PostgreSQL: 23.3 µs of client CPU a reading at 700, 16.6 at 50,000, 14.9 with the
#: collector off). Reference counting still frees everything that is not a cycle at once; cycles wait for the next
#: collection, at most 50,000 objects later.
GC_YOUNG_THRESHOLD = 50_000


class _IngestMode:
    """While any ingest of the process runs: `sys.setswitchinterval` lowered to `SWITCH_INTERVAL_S` and the
    collector's youngest threshold raised to `GC_YOUNG_THRESHOLD`; both put back as they were after the last one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.saved_interval = sys.getswitchinterval()
        self.saved_thresholds = gc.get_threshold()

    @contextmanager
    def entered(self) -> Iterator[None]:
        with self.lock:
            if self.users == 0:
                self.saved_interval = sys.getswitchinterval()
                self.saved_thresholds = gc.get_threshold()
                sys.setswitchinterval(min(self.saved_interval, SWITCH_INTERVAL_S))
                young, *older = self.saved_thresholds
                gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    sys.setswitchinterval(self.saved_interval)
                    gc.set_threshold(*self.saved_thresholds)


ingest_mode = _IngestMode().entered


def content_digest(stream: IO[bytes]) -> str | None:
    """The SHA-256 of a seekable stream's remaining bytes, read before parsing (the stream is put back where it
    was); None for a stream that cannot seek (its digest is then taken while it is parsed)."""
    try:
        if not stream.seekable():
            return None
        start = stream.tell()
    except (AttributeError, OSError, ValueError):
        return None
    sha = hashlib.sha256()
    while block := stream.read(1 << 20):
        sha.update(block)
    stream.seek(start)
    return sha.hexdigest()


class Ingestor:
    """Writes inputs into the store. One instance per process; `ingest` is one transaction per input."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_chunk: Callable[[int], None] | None = None,
        copy: bool | None = None,
    ) -> None:
        """`copy`: load each chunk into the staging table with PostgreSQL's COPY (the default there); False loads
        it with one executemany, the path SQLite always takes. The merge after it is the same statement."""
        self.store = store
        self.clock = clock
        self.on_chunk = on_chunk  # called with the count of readings written so far, after each chunk
        self.copy = store.dialect == "postgresql" if copy is None else copy and store.dialect == "postgresql"

    def ingest(
        self,
        parser: Parser,
        stream: IO[bytes],
        *,
        site: str,
        source_name: str,
        patient: str | None = None,
        options: ParseOptions | None = None,
        site_zone: str | None = None,
    ) -> IngestReport:
        """`site_zone`: the site's default zone (sites/NAME.toml `time_zone`) for patients nothing else places;
        `options.input_tz`, when given, is the feed's own statement of its patients' zone."""
        options = options or ParseOptions()
        digest = content_digest(stream)
        key = None
        if digest is not None:
            key = input_key(digest, site=site, feed=str(parser.feed), patient=patient, options=options,
                            site_zone=site_zone)  # fmt: skip
            skipped_run = self._same_as_before(key, digest, site=site, feed=parser.feed, source_name=source_name)
            if skipped_run is not None:
                return skipped_run
        reader = _HashingReader(stream)
        items = parser.parse(io.BufferedReader(reader, buffer_size=1 << 16), options)
        with self.store.transaction() as session:
            run = _Run(self, session, site=site, feed=parser.feed, source_name=source_name, patient=patient,
                       site_zone=site_zone, feed_zone=options.input_tz)  # fmt: skip
            run.consume(items)
            skipped = getattr(parser, "skipped", None)
            if key is None:  # the digest is known only now: the next run of this input can be skipped
                key = input_key(reader.sha.hexdigest(), site=site, feed=str(parser.feed), patient=patient,
                                options=options, site_zone=site_zone)  # fmt: skip
            run.batch.input_sha256 = key
            return run.finish(reader.sha.hexdigest(), dict(skipped) if isinstance(skipped, dict) else {})

    def _same_as_before(self, key: str, digest: str, *, site: str, feed: Feed, source_name: str) -> IngestReport | None:
        """When a batch with this input key stored every record (nothing quarantined), the input is not read again:
        every reading in it is already present. The run is still recorded as a batch of its own, naming the
        earlier one. A batch that quarantined anything is read again, so its records are counted again."""
        with self.store.transaction() as session:
            earlier = session.scalar(
                select(IngestBatch)
                .where(
                    IngestBatch.input_sha256 == key,
                    IngestBatch.site_key == site,
                    IngestBatch.finished_at.is_not(None),
                    IngestBatch.quarantined == 0,
                )
                .order_by(IngestBatch.id)
                .limit(1)
            )
            if earlier is None:
                return None
            now = self.clock()
            batch = IngestBatch(
                site_key=site, feed=str(feed), source_name=source_name[:500], content_sha256=digest,
                input_sha256=key, started_at=now, finished_at=now, received=earlier.received, added=0,
                already_present=earlier.received, conflicts=0, quarantined=0, skipped=dict(earlier.skipped or {}),
            )  # fmt: skip
            session.add(batch)
            session.flush()
            return IngestReport(
                batch_id=batch.id, site=site, feed=str(feed), received=earlier.received,
                already_present=earlier.received, skipped=dict(earlier.skipped or {}), same_as_batch=earlier.id,
            )  # fmt: skip

    def ingest_items(
        self,
        items: Iterable[FeedItem],
        *,
        site: str,
        feed: Feed,
        source_name: str,
        patient: str | None = None,
        content_sha256: str = "",
        site_zone: str | None = None,
        feed_zone: str | None = None,
    ) -> IngestReport:
        """Ingest already-parsed items (an MLLP message, a quarantine retry) as one batch."""
        with self.store.transaction() as session:
            run = _Run(self, session, site=site, feed=feed, source_name=source_name, patient=patient,
                       site_zone=site_zone, feed_zone=feed_zone)  # fmt: skip
            run.consume(items)
            return run.finish(content_sha256, {})


@dataclass(slots=True)
class _HeldProblem:
    """A problem waiting to be written, and how often its record was seen in this batch."""

    problem: FeedProblem
    locator: str
    reason: str
    count: int = 1


class _Run:
    """The state of one batch while its items stream through."""

    def __init__(
        self,
        owner: Ingestor,
        session: Session,
        *,
        site: str,
        feed: Feed,
        source_name: str,
        patient: str | None,
        site_zone: str | None = None,
        feed_zone: str | None = None,
    ) -> None:
        self.session = session
        self.on_chunk = owner.on_chunk
        self.settings = owner.store.settings
        self.dialect = owner.store.dialect
        self.copy = owner.copy
        self.now = owner.clock()
        self.now_ms = int(self.now.timestamp() * 1000)
        self.site = site
        self.feed = feed
        self.patient_public_id = patient
        _ensure_site(session, site, self.now)
        self.batch = IngestBatch(
            site_key=site,
            feed=str(feed),
            source_name=source_name[:500],
            content_sha256="",
            started_at=self.now,
            skipped={},
        )
        session.add(self.batch)
        session.flush()
        self.report = IngestReport(batch_id=self.batch.id, site=site, feed=str(feed))
        # (issuer, value) as the feed gave it -> patient id, or why it cannot be known (the site qualifies it once)
        self.patients: dict[tuple[str, str] | None, int | str] = {}
        self.streams: dict[tuple[int, str], int] = {}
        self.sessions: dict[tuple[int, str], int] = {}
        self.ranges: dict[tuple[str, GlucoseUnit], tuple[float, float]] = {}
        self.touched: dict[int, list[int]] = {}  # stream id -> [min ms, max ms] of readings added
        self.touched_patients: dict[int, list[int]] = {}
        self.changed: set[int] = set()  # patients with readings added (any kind) or a zone changed
        self.staging_ready = False
        self.held_problems: dict[str, _HeldProblem] = {}
        self.quarantine_staging_ready = False
        self.belongs: dict[int, bool] = {}  # patient id -> may be fed at this site
        self.public_ids: dict[int, str] = {}  # patient id -> public id (what reading keys are built from)
        self.site_zone = site_zone or None
        self.feed_zone = feed_zone or None
        self.offsets: dict[int, dict[str, list[int]]] = {}  # patient id -> {offset minutes: [first ms, last ms]}
        self.stated_zones: dict[int, str] = {}  # patient id -> the zone the feed states
        # Writes of chunk k run in a writer thread while the next chunks are read: the database works on the other
        # core. One connection serves both threads, so every use of it holds `lock`. Each chunk's future gives the
        # readings the writer found to be another patient's record; the reading thread quarantines them.
        self.lock = threading.Lock()
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gb-ingest-writer")
        self.pending: deque[Future[list[tuple[FeedReading, str]]]] = deque()

    # MARK: the stream of items

    def consume(self, items: Iterable[FeedItem]) -> None:
        """Read the items, writing them a chunk at a time in the writer thread (in `ingest_mode`: threads switch
        promptly, the collector runs rarely)."""
        chunk: list[FeedReading] = []
        size = self.settings.ingest_chunk
        with ingest_mode():
            try:
                for item in items:
                    if isinstance(item, FeedProblem):
                        self.quarantine(item)
                        continue
                    self.report.received += 1
                    chunk.append(item)
                    if len(chunk) >= size:
                        self.write(chunk)
                        chunk = []
                if chunk:
                    self.write(chunk)
                self.drain()
                self.flush_quarantine()
            finally:
                self.writer.shutdown(wait=True)  # never leave the writer using the connection during a rollback

    def drain(self, keep: int = 0) -> None:
        """Wait until at most `keep` chunks are still being written, and quarantine what those written refused. A
        chunk's error, if any, is raised here."""
        while len(self.pending) > keep:
            for reading, reason in self.pending.popleft().result():
                self.problem(reading, reason)  # counted as received when read; `problem` moves it to quarantined

    def quarantine(self, problem: FeedProblem) -> None:
        """Keep the record with its reason. Problems are buffered and written a set at a time (`flush_quarantine`);
        the same record seen again (same site, feed and content) counts on its existing row."""
        self.report.quarantined += 1
        reason = problem.reason if len(problem.reason) <= REASON_LIMIT else problem.reason[: REASON_LIMIT - 1] + "…"
        if len(self.report.problems) < 5:
            self.report.problems.append(f"{problem.locator}: {reason}" if problem.locator else reason)
        digest = hashlib.sha256((problem.context + "\n" + problem.payload).encode()).hexdigest()
        held = self.held_problems.get(digest)
        if held is not None:
            held.count += 1
            held.locator, held.reason = problem.locator, reason
            return
        self.held_problems[digest] = _HeldProblem(problem, problem.locator, reason)
        if len(self.held_problems) >= QUARANTINE_FLUSH:
            self.flush_quarantine()

    def flush_quarantine(self) -> None:
        if not self.held_problems:
            return
        held, self.held_problems = self.held_problems, {}
        rows = [
            {
                "site_key": self.site,
                "feed": str(self.feed),
                "batch_id": self.batch.id,
                "locator": _no_nul(held_problem.locator[:200]),
                "reason": _no_nul(held_problem.reason),
                "payload": _no_nul(held_problem.problem.payload[:QUARANTINE_PAYLOAD_LIMIT]),
                "context": _no_nul(held_problem.problem.context),
                "payload_sha256": digest,
                "patient_public_id": self.patient_public_id,
                "first_seen": self.now,
                "last_seen": self.now,
                "seen_count": held_problem.count,
            }
            for digest, held_problem in held.items()
        ]
        with self.lock:
            if self.dialect == "postgresql":
                self._copy_quarantine(rows)
                return
            table = QuarantineItem.__table__
            assert isinstance(table, Table)
            insert = sqlite_insert(table)
            self.session.execute(
                insert.on_conflict_do_update(
                    index_elements=[table.c.site_key, table.c.feed, table.c.payload_sha256],
                    set_={
                        "last_seen": insert.excluded.last_seen,
                        "seen_count": table.c.seen_count + insert.excluded.seen_count,
                        "reason": insert.excluded.reason,
                        "locator": insert.excluded.locator,
                        "batch_id": insert.excluded.batch_id,
                    },
                ),
                rows,
            )

    def _copy_quarantine(self, rows: list[dict[str, Any]]) -> None:
        """PostgreSQL: COPY the problems into a staging table, then one upsert (a statement per row is 10x slower)."""
        conn = self.session.connection()
        cols = ", ".join(_QUARANTINE_COLUMNS)
        if not self.quarantine_staging_ready:
            conn.exec_driver_sql(
                "CREATE TEMP TABLE IF NOT EXISTS gb_quarantine_staging (LIKE quarantine INCLUDING DEFAULTS) "
                "ON COMMIT DROP"
            )
            conn.exec_driver_sql("ALTER TABLE gb_quarantine_staging DROP COLUMN IF EXISTS id")
            self.quarantine_staging_ready = True
        raw = conn.connection.driver_connection
        with raw.cursor().copy(f"COPY gb_quarantine_staging ({cols}) FROM STDIN") as copy:  # type: ignore[union-attr]
            for row in rows:
                copy.write_row(tuple(row[c] for c in _QUARANTINE_COLUMNS))
        conn.exec_driver_sql(
            f"INSERT INTO quarantine ({cols}) SELECT {cols} FROM gb_quarantine_staging "
            "ON CONFLICT (site_key, feed, payload_sha256) DO UPDATE SET last_seen = excluded.last_seen, "
            "seen_count = quarantine.seen_count + excluded.seen_count, reason = excluded.reason, "
            "locator = excluded.locator, batch_id = excluded.batch_id"
        )
        conn.exec_driver_sql("DELETE FROM gb_quarantine_staging")

    def problem(self, reading: FeedReading, reason: str) -> None:
        """A parsed reading that failed a check: quarantined as JSON, so a retry needs no re-parse."""
        self.report.received -= 1
        self.quarantine(
            FeedProblem(
                reading.locator, reason, reading_to_json(reading), context=READING_CONTEXT, patient=reading.patient
            )
        )

    # MARK: one chunk

    def write(self, chunk: list[FeedReading]) -> None:
        """Check, resolve and key a chunk of readings, then hand it to the writer. The common case stays cheap."""
        rows: list[tuple[Any, ...]] = []
        keyed: dict[str, FeedReading] = {}  # reading key (32 hex digits) -> reading
        records: dict[tuple[int, int, float, str], int] = {}  # (record hash, time, value, unit) -> patient id
        tolerance = self.settings.future_tolerance_min * 60_000
        earliest, latest = EARLIEST_MS, self.now_ms + tolerance
        site, feed = self.site, str(self.feed)
        patients = self.patients
        ranges = self.ranges
        for reading in chunk:
            unit, value, flag = reading.unit, reading.value, reading.flag
            limits = ranges.get((reading.device, unit))
            if limits is None:
                limits = ranges[(reading.device, unit)] = reportable_range(reading.device, unit)
            if not (
                earliest <= reading.time_ms <= latest
                and flag is SensorFlag.NONE
                and value is not None
                and limits[0] <= value <= limits[1]
            ):
                reason = check_time(reading, self.now_ms, tolerance) or check_value(reading)
                if reason is None and value is None:
                    value = device_profile(reading.device).bound(unit, high=flag is SensorFlag.HIGH)
                    if value is None:
                        reason = f"{flag.name} reading without a value from an unknown device: its bound is unknown"
                if reason:
                    self.problem(reading, reason)
                    continue
            assert value is not None
            ref = reading.patient
            as_given = None if ref is None else (ref.issuer, ref.value)
            patient_id = patients.get(as_given)
            if patient_id is None:
                patient_id = self.patient_for(ref)
            if isinstance(patient_id, str):
                self.problem(reading, patient_id)
                continue
            if len(reading.stream) > 128 or len(reading.record_key) > 300:
                self.problem(reading, "the record's stream label (over 128 characters) or record key (over 300) is "
                                      "longer than any CGM feed sends: it would be cut")  # fmt: skip
                continue
            extra = reading.extra
            details = orjson.dumps(extra if isinstance(extra, dict) else dict(extra)).decode() if extra else None
            if details is not None and len(details) > EXTRA_LIMIT:
                self.problem(reading, _too_large(len(details)))
                continue
            if reading.utc_offset_min is not None:
                spans = self.offsets.setdefault(patient_id, {})
                span = spans.setdefault(str(reading.utc_offset_min), [reading.time_ms, reading.time_ms])
                if reading.time_ms < span[0]:
                    span[0] = reading.time_ms
                elif reading.time_ms > span[1]:
                    span[1] = reading.time_ms
            if reading.zone:
                self.stated_zones[patient_id] = reading.zone
            identity = record_hash(site, feed, reading)
            if identity is not None:
                mark = (identity, reading.time_ms, value, unit.label)
                first = records.setdefault(mark, patient_id)
                if first != patient_id:
                    self.problem(reading, _other_patients_record(reading, "earlier in this input"))
                    continue
            stream_id = self.streams.get((patient_id, reading.device)) or self.stream_for(patient_id, reading.device)
            session_id = self.session_for(stream_id, reading) if reading.session_key else None
            key = _key_hex(site, feed, reading, self.public_ids[patient_id])
            keyed[key] = reading
            factor = MMOL_L_TO_MG_DL if unit is GlucoseUnit.MMOL_L else 1.0
            value = float(value)  # a feed's int or Decimal is stored (and written to COPY by repr) as a double
            rows.append((
                key, patient_id, stream_id, session_id, reading.time_ms, value * factor, value, unit.label, factor,
                int(flag), "scan" if extra.get("record_type") == "scan" else "cgm", reading.ambiguous,
                reading.record_key, identity, reading.stream, details,
            ))  # fmt: skip
        if rows:
            self.insert(rows, keyed)

    def patient_for(self, ref: PatientRef | None) -> int | str:
        """The patient's id, or the reason it cannot be known (then the reading goes to quarantine)."""
        as_given = None if ref is None else (ref.issuer, ref.value)
        found = self.patients.get(as_given)
        if found is None:
            with self.lock:
                found = self._resolve_patient(None if ref is None else (self.qualified(ref.issuer), ref.value))
            self.patients[as_given] = found
        return found

    def qualified(self, issuer: str) -> str:
        """Every issuer is scoped to the site: one site's identifiers never resolve to another site's patient."""
        return f"site:{self.site}:{issuer}"

    def _new_patient(self, public_id: str) -> Patient:
        patient = Patient(public_id=public_id, tz="UTC", tz_source="unknown", created_at=self.now, site_key=self.site)
        self.session.add(patient)
        self.session.flush()
        self.belongs[patient.id] = True
        return patient

    def _belongs_here(self, patient: Patient) -> bool:
        """A patient may be fed at the site that first fed it, or at a site it was explicitly linked to."""
        known = self.belongs.get(patient.id)
        if known is None:
            known = patient.site_key in (None, self.site) or (
                self.session.scalar(
                    select(PatientIdentifier.id).where(
                        PatientIdentifier.patient_id == patient.id,
                        PatientIdentifier.issuer == self.qualified(OWN_ISSUER),
                        PatientIdentifier.value == patient.public_id,
                    )
                )
                is not None
            )
            self.belongs[patient.id] = known
        return known

    def _elsewhere(self, patient: Patient) -> str:
        return (
            f"patient {patient.public_id} belongs to site {patient.site_key}, not {self.site}: one site's feed never "
            f"reaches another site's patient; if this is the same person, link them first "
            f"(glucobridge patient link {patient.public_id} --site {self.site})"
        )

    def _resolve_patient(self, key: tuple[str, str] | None) -> int | str:
        session = self.session
        chosen: Patient | None = None
        if self.patient_public_id:
            chosen = session.scalar(select(Patient).where(Patient.public_id == self.patient_public_id))
            if chosen is None:
                chosen = self._new_patient(self.patient_public_id)
            elif not self._belongs_here(chosen):
                return self._elsewhere(chosen)
        if key is None:
            if chosen is None:
                return "the input does not say which patient this is: give --patient"
            return self._known(chosen)
        issuer, value = key
        if issuer == self.qualified(OWN_ISSUER):  # glucobridge's own patient ids (the engine CSV's patient_id column)
            if chosen is not None and chosen.public_id != value:
                return f"the row is for patient {value}, not {chosen.public_id}: check --patient"
            own = session.scalar(select(Patient).where(Patient.public_id == value))
            if own is None:
                own = self._new_patient(value)
            elif not self._belongs_here(own):
                return self._elsewhere(own)
            return self._known(own)
        known = session.scalar(
            select(PatientIdentifier).where(PatientIdentifier.issuer == issuer, PatientIdentifier.value == value)
        )
        if known is not None:
            if chosen is not None and known.patient_id != chosen.id:
                owner = session.get(Patient, known.patient_id)
                return (
                    f"identifier {issuer}|{value} belongs to patient {owner.public_id if owner else '?'}, "
                    f"not {chosen.public_id}: check --patient or the patient links"
                )
            owner = chosen if chosen is not None else session.get(Patient, known.patient_id)
            assert owner is not None
            return self._known(owner)
        if chosen is None:
            chosen = self._new_patient(_public_id(issuer, value))
        session.add(
            PatientIdentifier(patient_id=chosen.id, site_key=self.site, issuer=issuer, value=value, created_at=self.now)
        )
        session.flush()
        return self._known(chosen)

    def _known(self, patient: Patient) -> int:
        self.public_ids[patient.id] = patient.public_id
        return patient.id

    def stream_for(self, patient_id: int, device: str) -> int:
        key = (patient_id, device)
        found = self.streams.get(key)
        if found is None:
            with self.lock:
                found = self.streams[key] = self._stream_row(patient_id, device)
        return found

    def _stream_row(self, patient_id: int, device: str) -> int:
        row = self.session.scalar(
            select(DeviceStream).where(DeviceStream.patient_id == patient_id, DeviceStream.device_key == device)
        )
        if row is None:
            row = DeviceStream(patient_id=patient_id, device_key=device, created_at=self.now)
            self.session.add(row)
            self.session.flush()
        return row.id

    def session_for(self, stream_id: int, reading: FeedReading) -> int:
        key = (stream_id, reading.session_key)
        found = self.sessions.get(key)
        if found is None:
            with self.lock:
                found = self.sessions[key] = self._session_row(stream_id, reading)
        return found

    def _session_row(self, stream_id: int, reading: FeedReading) -> int:
        row = self.session.scalar(
            select(SensorSession).where(
                SensorSession.stream_id == stream_id, SensorSession.session_key == reading.session_key
            )
        )
        if row is None:
            row = SensorSession(
                stream_id=stream_id, session_key=reading.session_key[:128], started_ms=reading.session_start_ms
            )
            self.session.add(row)
            self.session.flush()
        elif row.started_ms is None and reading.session_start_ms is not None:
            row.started_ms = reading.session_start_ms
        return row.id

    # MARK: set-based writes

    @property
    def _mark(self) -> str:
        """The driver's parameter mark (psycopg's, or sqlite3's)."""
        return "%s" if self.dialect == "postgresql" else "?"

    @property
    def _shared(self) -> str:
        return ", ".join(self._mark for _ in _PER_INPUT)

    def _staging(self) -> None:
        if self.staging_ready:
            return
        conn = self.session.connection()
        if self.dialect == "postgresql":
            conn.exec_driver_sql(
                "CREATE TEMP TABLE IF NOT EXISTS gb_staging (LIKE readings INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            unstaged = ("id", *_PER_INPUT, "duplicate_of", "duplicate_reason")
            conn.exec_driver_sql(f"ALTER TABLE gb_staging {', '.join(f'DROP COLUMN {c}' for c in unstaged)}")
        else:
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.gb_staging")
            conn.exec_driver_sql(f"CREATE TEMP TABLE gb_staging AS SELECT {', '.join(_STAGED)} FROM readings WHERE 0")
        self.staging_ready = True

    def insert(self, rows: list[tuple[Any, ...]], keyed: dict[str, FeedReading]) -> None:
        """Hand the chunk to the writer thread, once fewer than `IN_FLIGHT` chunks wait there. For COPY the chunk's
        text is built here: the writer thread then holds the interpreter only to start its statements."""
        self.drain(keep=IN_FLIGHT - 1)
        block = _copy_text(rows) if self.copy else None
        self.pending.append(self.writer.submit(self._insert_locked, rows, block, keyed))

    def _insert_locked(
        self, rows: list[tuple[Any, ...]], block: str | None, keyed: dict[str, FeedReading]
    ) -> list[tuple[FeedReading, str]]:
        with self.lock:
            refused = self._insert_now(rows, block, keyed)
        if self.on_chunk is not None:
            self.on_chunk(self.report.added + self.report.already_present)
        return refused

    def _insert_now(
        self, rows: list[tuple[Any, ...]], block: str | None, keyed: dict[str, FeedReading]
    ) -> list[tuple[FeedReading, str]]:
        """Load the chunk into the staging table, then merge it into `readings` with one statement.

        Loading is the only step that differs between the paths: PostgreSQL's COPY (`self.copy`; `block` is the
        chunk in COPY's text format, or None when a field would need escaping: then psycopg writes it row by row),
        or one executemany (SQLite, and PostgreSQL when asked). Keys go in as 32 hex digits, which both a
        PostgreSQL uuid and SQLite's UUID column (32 hex characters) take as they are. What every reading of the
        input shares (feed, rank, batch, received time) is given once, to the merge."""
        self._staging()
        conn = self.session.connection()
        cols = ", ".join(_STAGED)
        if self.copy:
            raw = conn.connection.driver_connection
            with raw.cursor().copy(f"COPY gb_staging ({cols}) FROM STDIN") as copy:  # type: ignore[union-attr]
                if block is not None:
                    copy.write(block)
                else:
                    for row in rows:
                        copy.write_row(row)
        else:
            marks = ", ".join(self._mark for _ in _STAGED)
            conn.exec_driver_sql(f"INSERT INTO gb_staging ({cols}) VALUES ({marks})", rows)
        if self.dialect == "postgresql":
            # The planner knows nothing of a fresh temporary table: without statistics it joins the chunk to
            # `readings` by scanning the whole of it, once per chunk (quadratic over a large input).
            conn.exec_driver_sql("ANALYZE gb_staging")
        self._check_owners(conn)
        refused = self._refuse_other_patients_records(keyed)
        offered = len(rows) - len(refused)
        into = f"INSERT INTO readings ({cols}, {', '.join(_PER_INPUT)}) SELECT {cols}, {self._shared} FROM gb_staging"
        shared = (str(self.feed), int(self.feed.source), self.batch.id, self.now)
        if self.dialect == "postgresql":
            # What was added, summed up by the server: per stream, the span and the count.
            spans: Sequence[Any] = conn.exec_driver_sql(
                f"WITH ins AS ({into} ON CONFLICT (reading_key) DO NOTHING "
                "RETURNING patient_id, stream_id, observed_ms, kind) "
                "SELECT patient_id, stream_id, kind, min(observed_ms), max(observed_ms), count(*) FROM ins "
                "GROUP BY patient_id, stream_id, kind",
                shared,
            ).all()
        else:
            inserted = conn.exec_driver_sql(
                f"{into} WHERE true ON CONFLICT (reading_key) DO NOTHING "
                "RETURNING patient_id, stream_id, kind, observed_ms",
                shared,
            ).all()
            spans = _spans(inserted)
        added = sum(int(span[5]) for span in spans)
        self.report.added += added
        self.report.already_present += offered - added
        if added < offered:
            self._conflicts()
        # TRUNCATE, not DELETE: a temporary table is never vacuumed, so deleted chunks would stay in it and every
        # later chunk's scans would read them again (quadratic over a large input).
        conn.exec_driver_sql("TRUNCATE gb_staging" if self.dialect == "postgresql" else "DELETE FROM gb_staging")
        for patient_id, stream_id, kind, lo, hi, _count in spans:
            self.changed.add(int(patient_id))
            if kind != "cgm":
                continue
            for table, key in ((self.touched, int(stream_id)), (self.touched_patients, int(patient_id))):
                span = table.setdefault(key, [int(lo), int(hi)])
                span[0], span[1] = min(span[0], int(lo)), max(span[1], int(hi))
        return refused

    @staticmethod
    def _check_owners(conn: Connection) -> None:
        """Every staged reading's stream is a stream of the reading's own patient: checked once per chunk, in one
        statement over its distinct pairs (the readings table has no foreign keys on them: a trigger per row was
        40 % of the merge, and would not have caught a stream of another patient). A failure is a defect, never
        bad input: the whole input rolls back."""
        stray = conn.exec_driver_sql(
            "SELECT s.patient_id, s.stream_id FROM (SELECT DISTINCT patient_id, stream_id FROM gb_staging) s "
            "LEFT JOIN device_streams d ON d.id = s.stream_id AND d.patient_id = s.patient_id WHERE d.id IS NULL "
            "LIMIT 1"
        ).first()
        if stray is not None:
            raise ReadingOwnerError(
                f"internal error: a staged reading of patient {stray[0]} names device stream {stray[1]}, which is not "
                "that patient's; nothing from this input was written"
            )

    def _refuse_other_patients_records(self, keyed: dict[str, FeedReading]) -> list[tuple[FeedReading, str]]:
        """Take out of the staged chunk every record already filed for another patient (same sender, record key,
        time and value): a re-send for the wrong patient. They are quarantined (by the reading thread), never
        filed twice. Returns them, each with its reason."""
        conn = self.session.connection()
        # `readings` is reached through its record-hash index, by the chunk's hashes as one array. On a 1 M-reading
        # file of 250 patients this ingests at 25 k/s where the plain join gave 19 k/s (the join reads more of
        # `readings` as the file's own readings fill it); a lookup per staged row (a correlated subquery) was a
        # third slower than either on a 100,000-reading file (`bench ingest`).
        lookup = (
            "AND r.record_hash = ANY(ARRAY(SELECT record_hash FROM gb_staging WHERE record_hash IS NOT NULL))"
            if self.dialect == "postgresql"
            else ""
        )
        found = conn.exec_driver_sql(
            "SELECT s.reading_key, min(r.patient_id) FROM gb_staging s JOIN readings r "
            "ON r.record_hash = s.record_hash AND r.observed_ms = s.observed_ms "
            "AND r.value_original = s.value_original AND r.unit_original = s.unit_original "
            "AND r.patient_id <> s.patient_id WHERE s.record_hash IS NOT NULL "
            f"{lookup} GROUP BY s.reading_key"
        ).all()
        if not found:
            return []
        owners = dict(
            conn.execute(
                select(Patient.id, Patient.public_id).where(Patient.id.in_({int(row[1]) for row in found}))
            ).all()
        )
        refused = []
        for staged_key, owner in found:
            key = staged_key.hex if isinstance(staged_key, uuid.UUID) else str(staged_key)
            refused.append((keyed[key], _other_patients_record(keyed[key], f"for patient {owners.get(owner)}")))
            conn.execute(text("DELETE FROM gb_staging WHERE reading_key = :key"), {"key": staged_key})
        return refused

    def _conflicts(self) -> None:
        found = self.session.execute(
            text(
                "INSERT INTO reading_conflicts (reading_id, batch_id, incoming_value, incoming_unit, detected_at) "
                "SELECT r.id, :batch, s.value_original, s.unit_original, :now FROM gb_staging s "
                "JOIN readings r ON r.reading_key = s.reading_key "
                "WHERE r.value_original <> s.value_original OR r.unit_original <> s.unit_original "
                "ON CONFLICT (reading_id, incoming_value, incoming_unit) DO NOTHING RETURNING id"
            ),
            {"batch": self.batch.id, "now": self.now},
        ).all()
        self.report.conflicts += len(found)

    # MARK: the end of the batch

    def finish(self, content_sha256: str, skipped: dict[str, int]) -> IngestReport:
        session = self.session
        self.reconcile()
        self.mark_stale()
        self.place()
        windows.mark_stale(session, self.touched_patients, now=self.now)  # standard outcomes: recomputed by a job
        batch = self.batch
        batch.content_sha256 = content_sha256
        batch.finished_at = self.now
        batch.received = self.report.received
        batch.added = self.report.added
        batch.already_present = self.report.already_present
        batch.conflicts = self.report.conflicts
        batch.quarantined = self.report.quarantined
        batch.skipped = skipped
        self.report.skipped = skipped
        self.report.changed_patients = set(self.changed)  # the hook: these patients' readings or zone changed
        session.flush()
        return self.report

    def reconcile(self) -> None:
        """Decide, with the engine's duplicate rule, which copy counts where new readings meet any other.

        The database finds the streams that hold two readings closer than half their device's interval in the
        time added (one window-function query per 500 streams); only those are decided row by row. Each stream's
        span is joined from a list of (patient, stream, from, to), so readings are found by their index (patient,
        stream, time): a condition of 500 ORs was checked against every reading of the table.
        """
        if not self.touched:
            return
        conn = self.session.connection()
        half = " ".join(f"WHEN '{key}' THEN {p.interval_ms}" for key, p in DEVICES.items())
        interval = f"CASE d.device_key {half} ELSE {UNKNOWN_DEVICE.interval_ms} END"
        streams = sorted(self.touched)
        patient_of = {stream: patient for (patient, _device), stream in self.streams.items()}  # readings' index
        candidates: list[int] = []
        for start in range(0, len(streams), 500):
            part = streams[start : start + 500]
            spans = ", ".join(
                f"({patient_of[s]}, {int(s)}, {self.touched[s][0] - RECONCILE_MARGIN_MS}, "
                f"{self.touched[s][1] + RECONCILE_MARGIN_MS})"
                for s in part
            )
            rows = conn.exec_driver_sql(
                f"WITH spans (p, s, lo, hi) AS (VALUES {spans}) "
                "SELECT DISTINCT stream_id FROM (SELECT r.stream_id, 2 * (r.observed_ms - lag(r.observed_ms) "
                "OVER (PARTITION BY r.stream_id ORDER BY r.observed_ms, r.id)) AS twice_step, "
                f"{interval} AS step FROM spans JOIN readings r ON r.patient_id = spans.p AND r.stream_id = spans.s "
                "AND r.observed_ms BETWEEN spans.lo AND spans.hi JOIN device_streams d ON d.id = r.stream_id "
                "WHERE r.kind = 'cgm') steps WHERE twice_step < step"
            ).all()
            candidates.extend(int(r[0]) for r in rows)
        for stream_id in sorted(candidates):
            self._reconcile_stream(patient_of[stream_id], stream_id)

    def _reconcile_stream(self, patient_id: int, stream_id: int) -> None:
        lo, hi = self.touched[stream_id]
        conn = self.session.connection()
        rows = conn.exec_driver_sql(
            "SELECT r.id, r.observed_ms, r.source_rank, r.value_mg_dl, r.duplicate_of, r.source_feed, d.device_key "
            "FROM readings r JOIN device_streams d ON d.id = r.stream_id "
            f"WHERE r.patient_id = {int(patient_id)} AND r.stream_id = {int(stream_id)} "
            "AND r.kind = 'cgm' "
            f"AND r.observed_ms BETWEEN {lo - RECONCILE_MARGIN_MS} AND {hi + RECONCILE_MARGIN_MS} "
            "ORDER BY r.observed_ms, r.id"
        ).all()
        if len(rows) < 2:
            return
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        t = np.array([r[1] for r in rows], dtype=np.int64)
        interval = np.full(len(rows), device_profile(rows[0][6]).interval_ms, dtype=np.int64)
        winner = group_winners(
            t,
            np.zeros(len(rows), dtype=np.int64),
            interval,
            np.array([r[2] for r in rows], dtype=np.int64),
            ids,
            np.array([r[3] for r in rows], dtype=np.float64),
        )
        changes: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            w = int(winner[i])
            target = None if w == i else int(ids[w])
            if target == row[4]:
                continue
            reason = None
            if target is not None:
                kept = rows[w]
                reason = (
                    f"same reading as {kept[0]} ({kept[5]}, {abs(int(t[w]) - int(t[i])) / 1000:g} s apart): "
                    f"kept by precedence fhir > vendor > hl7v2 > file, then the latest received"
                )
            changes.append({"rid": int(ids[i]), "dup": target, "why": reason})
        if changes:
            self.session.execute(
                text("UPDATE readings SET duplicate_of = :dup, duplicate_reason = :why WHERE id = :rid"), changes
            )
            self.report.reconciled += len(changes)

    def place(self) -> None:
        """Give each patient of this input the zone that what is now known points to (bff.store.zones)."""
        patients = set(self.touched_patients) | set(self.offsets) | set(self.stated_zones)
        for patient_id in sorted(patients):
            patient = self.session.get(Patient, patient_id)
            if patient is None:
                continue
            evidence = self.offsets.get(patient_id, {})
            stated = self.stated_zones.get(patient_id) or self.feed_zone
            zone = zones.resolve(
                patient,
                explicit=(stated, "feed") if stated else None,
                site_zone=self.site_zone,
                evidence=evidence,
            )
            if evidence:
                patient.tz_evidence = zones.merge_evidence(patient.tz_evidence, evidence)
            change = zones.apply(self.session, patient, zone, self.now)
            if change:
                self.report.zones.append(change)
                self.changed.add(patient_id)

    def mark_stale(self) -> None:
        if not self.touched_patients:
            return
        stale = 0
        for patient_id, (lo, hi) in self.touched_patients.items():
            result = self.session.execute(
                update(OutcomeWindow)
                .where(
                    OutcomeWindow.patient_id == patient_id,
                    OutcomeWindow.status == "current",
                    OutcomeWindow.window_start_ms <= hi,
                    OutcomeWindow.window_end_ms > lo,
                )
                .values(status="stale", stale_since=self.now, stale_reason="readings arrived for its window")
            )
            stale += result.rowcount  # type: ignore[attr-defined]
        self.report.stale_windows = stale


def _public_id(issuer: str, value: str) -> str:
    """A new patient's public id from the identifier that first named it: `issuer|value`, or when that is longer
    than the column (128), its first 100 characters and 16 hex digits of its SHA-256 (still unique, never cut)."""
    full = f"{issuer}|{value}"
    if len(full) <= 128:
        return full
    return f"{full[:100]}~{hashlib.sha256(full.encode()).hexdigest()[:16]}"


def _copy_text(rows: list[tuple[Any, ...]]) -> str | None:
    """The chunk in COPY's text format (columns `_STAGED`), or None when one of its texts holds a backslash, a tab,
    a line break or a NUL (psycopg then escapes it row by row). Floats are written by `repr`, which reads back as
    the same double; JSON's own backslashes are doubled, as the format asks."""
    texts = "".join(f"{row[7]}{row[10]}{row[12]}{row[14]}" for row in rows)
    if _COPY_SPECIAL.search(texts):
        return None
    null = _COPY_NULL
    return "".join(
        f"{key}\t{patient}\t{stream}\t{null if session is None else session}\t{ms}\t{mg!r}\t{value!r}\t"
        f"{unit}\t{factor!r}\t{flag}\t{kind}\t{'t' if ambiguous else 'f'}\t{record_key}\t"
        f"{null if identity is None else identity}\t{stream_label}\t"
        f"{null if extra is None else extra.replace(_BACKSLASH, _TWO_BACKSLASHES)}\n"
        for (key, patient, stream, session, ms, mg, value, unit, factor, flag, kind, ambiguous, record_key, identity,
             stream_label, extra) in rows
    )  # fmt: skip


def _no_nul(text: str) -> str:
    """PostgreSQL text cannot hold NUL: keep it visible as \\x00."""
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def _too_large(size: int) -> str:
    return (
        f"the record's details are {size:,} characters, over the limit of {EXTRA_LIMIT:,}: "
        "a field of the record is far larger than a CGM feed sends"
    )


def _other_patients_record(reading: FeedReading, where: str) -> str:
    sender = f"sender {reading.sender}, " if reading.sender else ""
    return (
        f"this record ({sender}record {reading.record_key[:80]}, same time and value) was already filed {where}, "
        "a different patient: a re-send with the wrong patient, or a sender reusing record ids for the same "
        "reading. Check the sender's patient identification, then retry or resolve this item"
    )


def _ensure_site(session: Session, site: str, now: datetime) -> None:
    if not site or len(site) > 64:
        raise IngestError(f"a site key of 1–64 characters is needed, got {site!r}")
    if session.get(Site, site) is None:
        # Two processes may meet a new site at once (two workers reading two patients of it): the second insert
        # does nothing instead of failing the read with a unique violation.
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(insert(Site).values(key=site, name=site, created_at=now).on_conflict_do_nothing())


def _spans(inserted: Sequence[Any]) -> list[tuple[int, int, str, int, int, int]]:
    """(patient, stream, kind, first ms, last ms, count) of inserted (patient, stream, kind, ms) rows."""
    spans: dict[tuple[int, int, str], list[int]] = {}
    for patient_id, stream_id, kind, ms in inserted:
        span = spans.setdefault((int(patient_id), int(stream_id), str(kind)), [int(ms), int(ms), 0])
        span[0], span[1], span[2] = min(span[0], int(ms)), max(span[1], int(ms)), span[2] + 1
    return [(p, s, k, lo, hi, n) for (p, s, k), (lo, hi, n) in spans.items()]
