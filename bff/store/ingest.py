"""Ingestion: one input (a file or a message) into the store, in one transaction.

    parse (streaming) → validate → resolve patient, device stream, session → insert by deterministic key
    → record conflicts → reconcile copies across feeds → mark outcome windows stale → close the batch

A crash or a lost database connection anywhere rolls the whole batch back: nothing is half-written, and
running the same input again completes it. Re-ingesting an input adds nothing (every reading has a
deterministic key). Every record that cannot be used is kept in quarantine with the reason.
"""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np
import orjson
from sqlalchemy import select, text, update
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
from engine import DEVICES, UNKNOWN_DEVICE, GlucoseUnit, SensorFlag, device_profile, group_winners
from engine.units import MMOL_L_TO_MG_DL

#: Issuers that are global (a vendor's own user ids); every other issuer is scoped to the site.
GLOBAL_ISSUERS = frozenset({"dexcom-user", "glucobridge"})
QUARANTINE_PAYLOAD_LIMIT = 10 * 2**20
#: The context of a quarantined reading that was parsed but failed a check (its payload is the reading's JSON).
READING_CONTEXT = "glucobridge:reading"
#: Margin around new readings when re-deciding duplicates: chains of near-copies longer than this are not real.
RECONCILE_MARGIN_MS = 60 * 60_000

_COLUMNS = (
    "reading_key", "patient_id", "stream_id", "session_id", "observed_ms", "value_mg_dl", "value_original",
    "unit_original", "factor", "flag", "kind", "ambiguous_time", "source_feed", "source_rank",
    "source_record_key", "stream_label", "batch_id", "received_at", "extra",
)  # fmt: skip


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    problems: list[str] = field(default_factory=list)  # the first few quarantine reasons, for the caller

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id, "site": self.site, "feed": self.feed, "received": self.received,
            "added": self.added, "already_present": self.already_present, "conflicts": self.conflicts,
            "quarantined": self.quarantined, "skipped": self.skipped, "stale_windows": self.stale_windows,
            "duplicates_reconciled": self.reconciled, "first_problems": self.problems,
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


def reading_key(site: str, feed: str, reading: FeedReading, patient_id: int) -> uuid.UUID:
    """Deterministic: the feed's record key when it has one, else the reading's identity (patient, device, time).

    128 bits of SHA-256: collisions are out of reach at any realistic number of readings.
    """
    if reading.record_key:
        basis = f"{site}|{feed}|{reading.record_key}"
    else:
        basis = f"{site}|{feed}|{patient_id}|{reading.device}|{reading.stream}|{reading.time_ms}|{reading.unit.label}"
    return uuid.UUID(bytes=hashlib.sha256(basis.encode()).digest()[:16])


class Ingestor:
    """Writes inputs into the store. One instance per process; `ingest` is one transaction per input."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utcnow,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_chunk = on_chunk  # called with the count of readings written so far, after each chunk

    def ingest(
        self,
        parser: Parser,
        stream: IO[bytes],
        *,
        site: str,
        source_name: str,
        patient: str | None = None,
        options: ParseOptions | None = None,
    ) -> IngestReport:
        options = options or ParseOptions()
        reader = _HashingReader(stream)
        items = parser.parse(io.BufferedReader(reader, buffer_size=1 << 16), options)
        with self.store.transaction() as session:
            run = _Run(self, session, site=site, feed=parser.feed, source_name=source_name, patient=patient)
            run.consume(items)
            skipped = getattr(parser, "skipped", None)
            return run.finish(reader.sha.hexdigest(), dict(skipped) if isinstance(skipped, dict) else {})

    def ingest_items(
        self,
        items: Iterable[FeedItem],
        *,
        site: str,
        feed: Feed,
        source_name: str,
        patient: str | None = None,
        content_sha256: str = "",
    ) -> IngestReport:
        """Ingest already-parsed items (an MLLP message, a quarantine retry) as one batch."""
        with self.store.transaction() as session:
            run = _Run(self, session, site=site, feed=feed, source_name=source_name, patient=patient)
            run.consume(items)
            return run.finish(content_sha256, {})


class _Run:
    """The state of one batch while its items stream through."""

    def __init__(
        self, owner: Ingestor, session: Session, *, site: str, feed: Feed, source_name: str, patient: str | None
    ) -> None:
        self.session = session
        self.on_chunk = owner.on_chunk
        self.settings = owner.store.settings
        self.dialect = owner.store.dialect
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
        self.patients: dict[tuple[str, str] | None, int | str] = {}
        self.streams: dict[tuple[int, str], int] = {}
        self.sessions: dict[tuple[int, str], int] = {}
        self.ranges: dict[tuple[str, GlucoseUnit], tuple[float, float]] = {}
        self.touched: dict[int, list[int]] = {}  # stream id -> [min ms, max ms] of readings added
        self.touched_patients: dict[int, list[int]] = {}
        self.staging_ready = False
        # Writes of chunk k run in a writer thread while chunk k+1 is parsed: the database works on the other
        # core. One connection serves both threads, so every use of it holds `lock`.
        self.lock = threading.Lock()
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gb-ingest-writer")
        self.pending: Future[None] | None = None

    # MARK: the stream of items

    def consume(self, items: Iterable[FeedItem]) -> None:
        chunk: list[FeedReading] = []
        size = self.settings.ingest_chunk
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
        finally:
            self.writer.shutdown(wait=True)  # never leave the writer using the connection during a rollback

    def drain(self) -> None:
        """Wait for the chunk being written; its error, if any, is raised here."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def quarantine(self, problem: FeedProblem) -> None:
        self.report.quarantined += 1
        if len(self.report.problems) < 5:
            self.report.problems.append(f"{problem.locator}: {problem.reason}" if problem.locator else problem.reason)
        payload = problem.payload
        if len(payload) > QUARANTINE_PAYLOAD_LIMIT:
            payload = payload[:QUARANTINE_PAYLOAD_LIMIT]
        digest = hashlib.sha256((problem.context + "\n" + problem.payload).encode()).hexdigest()
        with self.lock:
            self._quarantine_row(problem, payload, digest)

    def _quarantine_row(self, problem: FeedProblem, payload: str, digest: str) -> None:
        existing = self.session.scalar(
            select(QuarantineItem).where(
                QuarantineItem.site_key == self.site,
                QuarantineItem.feed == str(self.feed),
                QuarantineItem.payload_sha256 == digest,
            )
        )
        if existing is not None:
            existing.last_seen = self.now
            existing.seen_count += 1
            existing.reason = problem.reason
            existing.batch_id = self.batch.id
            return
        self.session.add(
            QuarantineItem(
                site_key=self.site,
                feed=str(self.feed),
                batch_id=self.batch.id,
                locator=problem.locator[:200],
                reason=problem.reason,
                payload=payload,
                context=problem.context,
                payload_sha256=digest,
                patient_public_id=self.patient_public_id,
                first_seen=self.now,
                last_seen=self.now,
                seen_count=1,
            )
        )

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
        tolerance = self.settings.future_tolerance_min * 60_000
        earliest, latest = EARLIEST_MS, self.now_ms + tolerance
        feed, rank, batch_id, now = str(self.feed), int(self.feed.source), self.batch.id, self.now
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
            patient_id = self.patients.get(None if ref is None else (self.qualified(ref.issuer), ref.value))
            if patient_id is None:
                patient_id = self.patient_for(ref)
            if isinstance(patient_id, str):
                self.problem(reading, patient_id)
                continue
            stream_id = self.streams.get((patient_id, reading.device)) or self.stream_for(patient_id, reading.device)
            session_id = self.session_for(stream_id, reading) if reading.session_key else None
            key = reading_key(self.site, feed, reading, patient_id)
            factor = MMOL_L_TO_MG_DL if unit is GlucoseUnit.MMOL_L else 1.0
            extra = reading.extra
            rows.append((
                key, patient_id, stream_id, session_id, reading.time_ms, value * factor, value, unit.label, factor,
                int(flag), "scan" if extra.get("record_type") == "scan" else "cgm", reading.ambiguous, feed, rank,
                reading.record_key[:300], reading.stream[:128], batch_id, now,
                orjson.dumps(extra if isinstance(extra, dict) else dict(extra)).decode() if extra else None,
            ))  # fmt: skip
        if rows:
            self.insert(rows)

    def patient_for(self, ref: PatientRef | None) -> int | str:
        """The patient's id, or the reason it cannot be known (then the reading goes to quarantine)."""
        key = None if ref is None else (self.qualified(ref.issuer), ref.value)
        if key in self.patients:
            return self.patients[key]
        with self.lock:
            result = self._resolve_patient(key)
        self.patients[key] = result
        return result

    def qualified(self, issuer: str) -> str:
        return issuer if issuer in GLOBAL_ISSUERS else f"site:{self.site}:{issuer}"

    def _resolve_patient(self, key: tuple[str, str] | None) -> int | str:
        session = self.session
        chosen: Patient | None = None
        if self.patient_public_id:
            chosen = session.scalar(select(Patient).where(Patient.public_id == self.patient_public_id))
            if chosen is None:
                chosen = Patient(public_id=self.patient_public_id, tz="UTC", created_at=self.now)
                session.add(chosen)
                session.flush()
        if key is None:
            if chosen is None:
                return "the input does not say which patient this is: give --patient"
            return chosen.id
        issuer, value = key
        if issuer == "glucobridge":  # glucobridge's own patient ids (the engine CSV's patient_id column)
            if chosen is not None and chosen.public_id != value:
                return f"the row is for patient {value}, not {chosen.public_id}: check --patient"
            own = session.scalar(select(Patient).where(Patient.public_id == value))
            if own is None:
                own = Patient(public_id=value, tz="UTC", created_at=self.now)
                session.add(own)
                session.flush()
            return own.id
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
            return known.patient_id
        if chosen is None:
            chosen = Patient(public_id=f"{issuer}|{value}", tz="UTC", created_at=self.now)
            session.add(chosen)
            session.flush()
        session.add(
            PatientIdentifier(
                patient_id=chosen.id,
                site_key=None if issuer in GLOBAL_ISSUERS else self.site,
                issuer=issuer,
                value=value,
                created_at=self.now,
            )
        )
        session.flush()
        return chosen.id

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

    def _staging(self) -> None:
        if self.staging_ready:
            return
        conn = self.session.connection()
        if self.dialect == "postgresql":
            conn.exec_driver_sql(
                "CREATE TEMP TABLE IF NOT EXISTS gb_staging (LIKE readings INCLUDING DEFAULTS) ON COMMIT DROP"
            )
            conn.exec_driver_sql("ALTER TABLE gb_staging DROP COLUMN IF EXISTS id")
        else:
            conn.exec_driver_sql("DROP TABLE IF EXISTS temp.gb_staging")
            conn.exec_driver_sql("CREATE TEMP TABLE gb_staging AS SELECT * FROM readings WHERE 0")
        self.staging_ready = True

    def insert(self, rows: list[tuple[Any, ...]]) -> None:
        """Hand the chunk to the writer thread (after the previous chunk is written)."""
        self.drain()
        self.pending = self.writer.submit(self._insert_locked, rows)

    def _insert_locked(self, rows: list[tuple[Any, ...]]) -> None:
        with self.lock:
            self._insert_now(rows)
        if self.on_chunk is not None:
            self.on_chunk(self.report.added + self.report.already_present)

    def _insert_now(self, rows: list[tuple[Any, ...]]) -> None:
        self._staging()
        conn = self.session.connection()
        cols = ", ".join(_COLUMNS)
        if self.dialect == "postgresql":
            raw = conn.connection.driver_connection
            with raw.cursor().copy(f"COPY gb_staging ({cols}) FROM STDIN") as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
            # What was added, summed up by the server: per stream, the span and the count.
            spans: Sequence[Any] = conn.exec_driver_sql(
                f"WITH ins AS (INSERT INTO readings ({cols}) SELECT {cols} FROM gb_staging "
                "ON CONFLICT (reading_key) DO NOTHING RETURNING patient_id, stream_id, observed_ms, kind) "
                "SELECT patient_id, stream_id, kind, min(observed_ms), max(observed_ms), count(*) FROM ins "
                "GROUP BY patient_id, stream_id, kind"
            ).all()
        else:
            marks = ", ".join("?" for _ in _COLUMNS)
            as_text = [(row[0].hex, *row[1:]) for row in rows]  # SQLite stores UUIDs as 32 hex characters
            conn.exec_driver_sql(f"INSERT INTO gb_staging ({cols}) VALUES ({marks})", as_text)
            inserted = conn.exec_driver_sql(
                f"INSERT INTO readings ({cols}) SELECT {cols} FROM gb_staging WHERE true "
                "ON CONFLICT (reading_key) DO NOTHING RETURNING patient_id, stream_id, kind, observed_ms"
            ).all()
            spans = _spans(inserted)
        added = sum(int(span[5]) for span in spans)
        self.report.added += added
        self.report.already_present += len(rows) - added
        if added < len(rows):
            self._conflicts()
        conn.exec_driver_sql("DELETE FROM gb_staging")
        for patient_id, stream_id, kind, lo, hi, _count in spans:
            if kind != "cgm":
                continue
            for table, key in ((self.touched, int(stream_id)), (self.touched_patients, int(patient_id))):
                span = table.setdefault(key, [int(lo), int(hi)])
                span[0], span[1] = min(span[0], int(lo)), max(span[1], int(hi))

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
        session.flush()
        return self.report

    def reconcile(self) -> None:
        """Decide, with the engine's duplicate rule, which copy counts where new readings meet any other.

        The database finds the streams that hold two readings closer than half their device's interval in the
        time added (one window-function query per 500 streams); only those are decided row by row.
        """
        if not self.touched:
            return
        conn = self.session.connection()
        half = " ".join(f"WHEN '{key}' THEN {p.interval_ms}" for key, p in DEVICES.items())
        interval = f"CASE d.device_key {half} ELSE {UNKNOWN_DEVICE.interval_ms} END"
        streams = sorted(self.touched)
        candidates: list[int] = []
        for start in range(0, len(streams), 500):
            part = streams[start : start + 500]
            spans = " OR ".join(
                f"(r.stream_id = {int(s)} AND r.observed_ms BETWEEN {self.touched[s][0] - RECONCILE_MARGIN_MS} "
                f"AND {self.touched[s][1] + RECONCILE_MARGIN_MS})"
                for s in part
            )
            rows = conn.exec_driver_sql(
                "SELECT DISTINCT stream_id FROM (SELECT r.stream_id, 2 * (r.observed_ms - lag(r.observed_ms) "
                "OVER (PARTITION BY r.stream_id ORDER BY r.observed_ms, r.id)) AS twice_step, "
                f"{interval} AS step FROM readings r JOIN device_streams d ON d.id = r.stream_id "
                f"WHERE r.kind = 'cgm' AND ({spans})) steps WHERE twice_step < step"
            ).all()
            candidates.extend(int(r[0]) for r in rows)
        for stream_id in sorted(candidates):
            self._reconcile_stream(stream_id)

    def _reconcile_stream(self, stream_id: int) -> None:
        lo, hi = self.touched[stream_id]
        conn = self.session.connection()
        rows = conn.exec_driver_sql(
            "SELECT r.id, r.observed_ms, r.source_rank, r.value_mg_dl, r.duplicate_of, r.source_feed, d.device_key "
            "FROM readings r JOIN device_streams d ON d.id = r.stream_id "
            f"WHERE r.stream_id = {int(stream_id)} AND r.kind = 'cgm' "
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
                .values(status="stale", stale_since=self.now)
            )
            stale += result.rowcount  # type: ignore[attr-defined]
        self.report.stale_windows = stale


def _ensure_site(session: Session, site: str, now: datetime) -> None:
    if not site or len(site) > 64:
        raise IngestError(f"a site key of 1–64 characters is needed, got {site!r}")
    if session.get(Site, site) is None:
        session.add(Site(key=site, name=site, created_at=now))
        session.flush()


def _spans(inserted: Sequence[Any]) -> list[tuple[int, int, str, int, int, int]]:
    """(patient, stream, kind, first ms, last ms, count) of inserted (patient, stream, kind, ms) rows."""
    spans: dict[tuple[int, int, str], list[int]] = {}
    for patient_id, stream_id, kind, ms in inserted:
        span = spans.setdefault((int(patient_id), int(stream_id), str(kind)), [int(ms), int(ms), 0])
        span[0], span[1], span[2] = min(span[0], int(ms)), max(span[1], int(ms)), span[2] + 1
    return [(p, s, k, lo, hi, n) for (p, s, k), (lo, hi, n) in spans.items()]
