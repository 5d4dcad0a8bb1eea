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
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import numpy as np
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
from bff.ingest.validate import check_time, check_value
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
from engine import GlucoseUnit, SensorFlag, device_profile, group_winners
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


def reading_key(site: str, feed: str, reading: FeedReading, patient_id: int) -> str:
    """Deterministic: the feed's record key when it has one, else the reading's identity (patient, device, time)."""
    if reading.record_key:
        basis = f"{site}|{feed}|{reading.record_key}"
    else:
        basis = f"{site}|{feed}|{patient_id}|{reading.device}|{reading.stream}|{reading.time_ms}|{reading.unit.label}"
    return hashlib.sha256(basis.encode()).hexdigest()[:40]


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
        self.touched: dict[int, list[int]] = {}  # stream id -> [min ms, max ms] of readings added
        self.touched_patients: dict[int, list[int]] = {}
        self.needs_reconcile: set[int] = set()
        self.last_time: dict[int, int] = {}
        self.staging_ready = False

    # MARK: the stream of items

    def consume(self, items: Iterable[FeedItem]) -> None:
        chunk: list[FeedReading] = []
        size = self.settings.ingest_chunk
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

    def quarantine(self, problem: FeedProblem) -> None:
        self.report.quarantined += 1
        if len(self.report.problems) < 5:
            self.report.problems.append(f"{problem.locator}: {problem.reason}" if problem.locator else problem.reason)
        payload = problem.payload
        if len(payload) > QUARANTINE_PAYLOAD_LIMIT:
            payload = payload[:QUARANTINE_PAYLOAD_LIMIT]
        digest = hashlib.sha256((problem.context + "\n" + problem.payload).encode()).hexdigest()
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
        rows: list[tuple[Any, ...]] = []
        tolerance = self.settings.future_tolerance_min * 60_000
        for reading in chunk:
            reason = check_time(reading, self.now_ms, tolerance) or check_value(reading)
            if reason is None and reading.value is None:
                bound = device_profile(reading.device).bound(reading.unit, high=reading.flag is SensorFlag.HIGH)
                if bound is None:
                    reason = f"{reading.flag.name} reading without a value from an unknown device: its bound is unknown"
            if reason:
                self.problem(reading, reason)
                continue
            patient_id = self.patient_for(reading.patient)
            if isinstance(patient_id, str):
                self.problem(reading, patient_id)
                continue
            stream_id = self.stream_for(patient_id, reading.device)
            session_id = self.session_for(stream_id, reading) if reading.session_key else None
            value = reading.value
            if value is None:
                value = device_profile(reading.device).bound(reading.unit, high=reading.flag is SensorFlag.HIGH)
            assert value is not None
            factor = MMOL_L_TO_MG_DL if reading.unit is GlucoseUnit.MMOL_L else 1.0
            kind = "scan" if reading.extra.get("record_type") == "scan" else "cgm"
            rows.append((
                reading_key(self.site, str(self.feed), reading, patient_id), patient_id, stream_id, session_id,
                reading.time_ms, value * factor, value, reading.unit.label, factor, int(reading.flag), kind,
                reading.ambiguous, str(self.feed), int(self.feed.source), reading.record_key[:300],
                reading.stream[:128], self.batch.id, self.now,
                json.dumps(dict(reading.extra)) if reading.extra else None,
            ))  # fmt: skip
        if rows:
            self.insert(rows)
        if self.on_chunk is not None:
            self.on_chunk(self.report.added + self.report.already_present)

    def patient_for(self, ref: PatientRef | None) -> int | str:
        """The patient's id, or the reason it cannot be known (then the reading goes to quarantine)."""
        key = None if ref is None else (self.qualified(ref.issuer), ref.value)
        if key in self.patients:
            return self.patients[key]
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
            row = self.session.scalar(
                select(DeviceStream).where(DeviceStream.patient_id == patient_id, DeviceStream.device_key == device)
            )
            if row is None:
                row = DeviceStream(patient_id=patient_id, device_key=device, created_at=self.now)
                self.session.add(row)
                self.session.flush()
            found = self.streams[key] = row.id
        return found

    def session_for(self, stream_id: int, reading: FeedReading) -> int:
        key = (stream_id, reading.session_key)
        found = self.sessions.get(key)
        if found is None:
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
            found = self.sessions[key] = row.id
        return found

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
        self._staging()
        conn = self.session.connection()
        cols = ", ".join(_COLUMNS)
        if self.dialect == "postgresql":
            raw = conn.connection.driver_connection
            with raw.cursor().copy(f"COPY gb_staging ({cols}) FROM STDIN") as copy:  # type: ignore[union-attr]
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in _COLUMNS)
            conn.exec_driver_sql(f"INSERT INTO gb_staging ({cols}) VALUES ({marks})", rows)
        where = " WHERE true" if self.dialect == "sqlite" else ""
        inserted = conn.exec_driver_sql(
            f"INSERT INTO readings ({cols}) SELECT {cols} FROM gb_staging{where} "
            "ON CONFLICT (reading_key) DO NOTHING RETURNING patient_id, stream_id, observed_ms, kind"
        ).all()
        self.report.added += len(inserted)
        self.report.already_present += len(rows) - len(inserted)
        if len(inserted) < len(rows):
            self._conflicts()
        conn.exec_driver_sql("DELETE FROM gb_staging")
        if inserted:
            self._note(np.array([(r[0], r[1], r[2]) for r in inserted if r[3] == "cgm"], dtype=np.int64).reshape(-1, 3))

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

    def _note(self, added: np.ndarray[Any, np.dtype[np.int64]]) -> None:
        """Remember what was added (for reconciliation and stale outcomes); flag streams with near-copies."""
        if added.size == 0:
            return
        order = np.lexsort((added[:, 2], added[:, 1]))
        added = added[order]
        streams = np.unique(added[:, 1])
        for stream_id in streams.tolist():
            sel = added[added[:, 1] == stream_id]
            lo, hi = int(sel[:, 2].min()), int(sel[:, 2].max())
            span = self.touched.setdefault(stream_id, [lo, hi])
            span[0], span[1] = min(span[0], lo), max(span[1], hi)
            pspan = self.touched_patients.setdefault(int(sel[0, 0]), [lo, hi])
            pspan[0], pspan[1] = min(pspan[0], lo), max(pspan[1], hi)
            t = sel[:, 2]
            previous = self.last_time.get(stream_id)
            if previous is not None:
                t = np.concatenate(([previous], t))
            # Any two added readings closer than the longest nominal interval may be copies: reconcile that stream.
            if t.size > 1 and bool((np.diff(np.sort(t)) < 15 * 60_000).any()):
                self.needs_reconcile.add(stream_id)
            self.last_time[stream_id] = int(t.max())

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
        """Decide, with the engine's duplicate rule, which copy counts where new readings meet existing ones."""
        if not self.touched:
            return
        candidates = set(self.needs_reconcile)
        others = [s for s in self.touched if s not in candidates]
        conn = self.session.connection()
        for start in range(0, len(others), 500):
            part = others[start : start + 500]
            lo = min(self.touched[s][0] for s in part) - RECONCILE_MARGIN_MS
            hi = max(self.touched[s][1] for s in part) + RECONCILE_MARGIN_MS
            marks = ", ".join(str(int(s)) for s in part)
            rows = conn.exec_driver_sql(
                f"SELECT DISTINCT stream_id FROM readings WHERE stream_id IN ({marks}) "
                f"AND batch_id <> {int(self.batch.id)} AND kind = 'cgm' AND observed_ms BETWEEN {lo} AND {hi}"
            ).all()
            candidates.update(int(r[0]) for r in rows)
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
