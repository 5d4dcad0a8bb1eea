"""Outcomes from the store: readings of a patient into the engine, and versioned outcome windows out.

An outcome window is never changed in its numbers or deleted. New readings for its window mark it stale
(bff.store.ingest); recomputing writes the next version and marks the earlier one superseded, both kept
with the SHA-256 of exactly the readings they used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from bff.store.db import Store
from bff.store.models import DeviceStream, OutcomeWindow, Patient, Reading, SensorSession
from bff.store.rawdata import canonical_line, ndjson_of_lines
from engine import (
    ENGINE_VERSION,
    NO_TIME,
    OutcomePolicy,
    OutcomeReport,
    ReadingTable,
    WindowSpec,
    compute_cohort,
    resolve_window,
)
from engine.report import build_report
from engine.timezones import check_zone


class UnknownPatientError(LookupError):
    """No patient with that id."""


@dataclass(frozen=True)
class StoredReading:
    """A reading as the store holds it (what the audit trail and the raw-data NDJSON are made of)."""

    id: int
    reading_key: str
    observed_ms: int
    value_original: float
    unit_original: str
    value_mg_dl: float
    flag: int
    device: str
    source_feed: str
    source_record_key: str
    duplicate_of: int | None

    def canonical(self) -> dict[str, Any]:
        return {
            "key": self.reading_key, "t": self.observed_ms, "value": self.value_original, "unit": self.unit_original,
            "flag": self.flag, "device": self.device, "feed": self.source_feed, "record": self.source_record_key,
        }  # fmt: skip


def readings_ndjson(readings: Sequence[StoredReading]) -> bytes:
    """Canonical NDJSON of readings (sorted by time then key; sorted keys; no spaces), the digest's input."""
    ordered = sorted(readings, key=lambda r: (r.observed_ms, r.reading_key))
    return ndjson_of_lines(
        [
            canonical_line(r.reading_key, r.observed_ms, r.value_original, r.unit_original, r.flag, r.device,
                           r.source_feed, r.source_record_key)
            for r in ordered
        ]
    )  # fmt: skip


def digest(readings: Sequence[StoredReading]) -> str:
    return hashlib.sha256(readings_ndjson(readings)).hexdigest()


@dataclass(frozen=True)
class PatientOutcomes:
    """The engine's report for one patient from the store, the readings behind it and its stored window."""

    report: OutcomeReport
    used: list[StoredReading]
    window: OutcomeWindow | None
    created: bool  # a new version was written


class OutcomeService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def patient(self, session: Session, public_id: str) -> Patient:
        patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
        if patient is None:
            raise UnknownPatientError(f"no patient {public_id!r} in the store")
        return patient

    def load(
        self, session: Session, patient: Patient, start_ms: int, end_ms: int
    ) -> tuple[ReadingTable, list[StoredReading]]:
        """Every CGM reading of the patient in [start, end) with every copy: the engine applies the duplicate rule."""
        rows = session.execute(
            select(
                Reading.id, Reading.reading_key, Reading.observed_ms, Reading.value_original, Reading.unit_original,
                Reading.value_mg_dl, Reading.flag, DeviceStream.device_key, Reading.source_feed,
                Reading.source_record_key, Reading.duplicate_of, Reading.stream_id, Reading.source_rank,
                Reading.ambiguous_time, SensorSession.started_ms,
            )
            .join(DeviceStream, DeviceStream.id == Reading.stream_id)
            .outerjoin(SensorSession, SensorSession.id == Reading.session_id)
            .where(Reading.patient_id == patient.id, Reading.kind == "cgm", Reading.observed_ms >= start_ms,
                   Reading.observed_ms < end_ms)
            .order_by(Reading.stream_id, Reading.observed_ms, Reading.id)
        ).all()  # fmt: skip
        stored = [StoredReading(r[0], r[1].hex, r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10]) for r in rows]
        stream_ids = sorted({r[11] for r in rows})
        code = {s: i for i, s in enumerate(stream_ids)}
        device_of = {r[11]: r[7] for r in rows}
        n = len(rows)
        table = ReadingTable(
            patient=np.zeros(n, dtype=np.int32),
            time_ms=np.array([r[2] for r in rows], dtype=np.int64),
            value=np.array([r[3] for r in rows], dtype=np.float64),
            unit=np.array([0 if r[4] == "mg/dL" else 1 for r in rows], dtype=np.int8),
            flag=np.array([r[6] for r in rows], dtype=np.int8),
            stream=np.array([code[r[11]] for r in rows], dtype=np.int32),
            session_start_ms=np.array([NO_TIME if r[14] is None else r[14] for r in rows], dtype=np.int64),
            source=np.array([r[12] for r in rows], dtype=np.int8),
            received=np.array([r[0] for r in rows], dtype=np.int64),
            ambiguous=np.array([bool(r[13]) for r in rows], dtype=np.bool_),
            patient_ids=(patient.public_id,),
            zones=(patient.tz,),
            stream_patient=np.zeros(len(stream_ids), dtype=np.int32),
            stream_device=tuple(device_of[s] for s in stream_ids),
        )
        return table, stored

    def load_table(self, session: Session, patient: Patient, start_ms: int, end_ms: int) -> ReadingTable:
        """The same readings as `load`, straight from the driver into columns (for views: a few ms per window)."""
        rows = session.execute(
            text(
                "SELECT r.id, r.observed_ms, r.value_original, r.unit_original, r.flag, d.device_key, r.stream_id, "
                "r.source_rank, r.ambiguous_time, s.started_ms FROM readings r "
                "JOIN device_streams d ON d.id = r.stream_id LEFT JOIN sensor_sessions s ON s.id = r.session_id "
                "WHERE r.patient_id = :p AND r.kind = 'cgm' AND r.observed_ms >= :a AND r.observed_ms < :b "
                "ORDER BY r.stream_id, r.observed_ms, r.id"
            ),
            {"p": patient.id, "a": start_ms, "b": end_ms},
        ).all()
        n = len(rows)
        cols = list(zip(*rows, strict=True)) if rows else [()] * 10
        stream_ids = sorted(set(cols[6]))
        code = {s: i for i, s in enumerate(stream_ids)}
        device_of = dict(zip(cols[6], cols[5], strict=True))
        return ReadingTable(
            patient=np.zeros(n, dtype=np.int32),
            time_ms=np.array(cols[1], dtype=np.int64),
            value=np.array(cols[2], dtype=np.float64),
            unit=np.array([0 if u == "mg/dL" else 1 for u in cols[3]], dtype=np.int8),
            flag=np.array(cols[4], dtype=np.int8),
            stream=np.array([code[s] for s in cols[6]], dtype=np.int32),
            session_start_ms=np.array([NO_TIME if v is None else v for v in cols[9]], dtype=np.int64),
            source=np.array(cols[7], dtype=np.int8),
            received=np.array(cols[0], dtype=np.int64),
            ambiguous=np.array([bool(v) for v in cols[8]], dtype=np.bool_),
            patient_ids=(patient.public_id,),
            zones=(patient.tz,),
            stream_patient=np.zeros(len(stream_ids), dtype=np.int32),
            stream_device=tuple(device_of[s] for s in stream_ids),
        )

    def compute(
        self,
        public_id: str,
        window: WindowSpec | None = None,
        policy: OutcomePolicy | None = None,
        *,
        tz: str | None = None,
        save: bool = True,
        include_traces: bool = False,
    ) -> PatientOutcomes:
        window = window or WindowSpec()
        policy = policy or OutcomePolicy()
        with self.store.transaction() as session:
            patient = self.patient(session, public_id)
            if tz:
                check_zone(tz)
            zone = tz or patient.tz
            last = session.scalar(
                select(func.max(Reading.observed_ms)).where(Reading.patient_id == patient.id, Reading.kind == "cgm")
            )
            resolved = resolve_window(window, zone, last)
            start, end = (resolved.start_ms, resolved.end_ms) if resolved else (0, 0)
            if save:
                table, stored = self.load(session, patient, start, end)
            else:  # a view: the engine's table only, read without building the audit records
                table, stored = self.load_table(session, patient, start, end), []
            if tz:
                table = _with_zone(table, zone)
            # The window the engine uses must be the one resolved here (the store may hold later readings).
            spec = WindowSpec(start=start, end=end) if resolved else window
            result = compute_cohort(table, policy, spec)
            report = build_report(result, include_traces=include_traces)
            used = [stored[int(i)] for i in np.sort(result.used_index)] if stored else []
            row, created = (None, False)
            if save and resolved is not None:
                row, created = self._save(
                    session, patient, resolved.start_ms, resolved.end_ms, window, zone, policy, report, used
                )
            return PatientOutcomes(OutcomeReport(policy, window, report.patients), used, row, created)

    def _save(
        self,
        session: Session,
        patient: Patient,
        start_ms: int,
        end_ms: int,
        spec: WindowSpec,
        zone: str,
        policy: OutcomePolicy,
        report: OutcomeReport,
        used: list[StoredReading],
    ) -> tuple[OutcomeWindow, bool]:
        input_digest = digest(used)
        now = datetime.now(UTC)
        same_window = (
            OutcomeWindow.patient_id == patient.id, OutcomeWindow.window_start_ms == start_ms,
            OutcomeWindow.window_end_ms == end_ms, OutcomeWindow.policy_hash == policy.policy_hash,
        )  # fmt: skip
        latest = session.scalar(select(OutcomeWindow).where(*same_window).order_by(OutcomeWindow.version.desc()))
        same = latest is not None and (latest.input_digest, latest.engine_version, latest.tz) == (
            input_digest,
            ENGINE_VERSION,
            zone,
        )
        if latest is not None and same:
            if latest.status != "current":
                latest.status = "current"
                latest.stale_since = None
            return latest, False
        document = dict(report.patients[0].document)
        agp = dict(document.get("agp") or {})
        agp.pop("days", None)  # daily traces are rebuilt from the readings when a report needs them
        document["agp"] = agp
        row = OutcomeWindow(
            patient_id=patient.id, window_start_ms=start_ms, window_end_ms=end_ms, window_spec=spec.as_dict(),
            tz=zone, policy_hash=policy.policy_hash, policy=policy.as_dict(), engine_version=ENGINE_VERSION,
            method=str(policy.method), metrics=json.loads(json.dumps(dict(report.patients[0].metrics))),
            document=json.loads(json.dumps(document)), input_digest=input_digest, readings_used=len(used),
            version=1 if latest is None else latest.version + 1, status="current",
            supersedes_id=None if latest is None else latest.id, created_at=now,
            reason=_why(latest, input_digest, zone),
        )  # fmt: skip
        if latest is not None:
            for earlier in session.scalars(
                select(OutcomeWindow).where(*same_window, OutcomeWindow.status != "superseded")
            ):
                earlier.status = "superseded"
        session.add(row)
        session.flush()
        return row, True

    def recompute_stale(self) -> list[PatientOutcomes]:
        """Write the next version of every stale outcome window, over the same window and policy."""
        with self.store.transaction() as session:
            stale = session.execute(
                select(OutcomeWindow.id, Patient.public_id, OutcomeWindow.window_start_ms, OutcomeWindow.window_end_ms,
                       OutcomeWindow.policy, OutcomeWindow.tz)
                .join(Patient, Patient.id == OutcomeWindow.patient_id)
                .where(OutcomeWindow.status == "stale")
                .order_by(OutcomeWindow.id)
            ).all()  # fmt: skip
        results = []
        for _id, public_id, start_ms, end_ms, policy, _zone in stale:
            # The patient's zone as it is now (a zone change is what made some of these stale).
            results.append(self.compute(public_id, WindowSpec(start=start_ms, end=end_ms), policy_from_dict(policy)))
        return results


def _why(latest: OutcomeWindow | None, input_digest: str, zone: str) -> str:
    """Why a new version of a window exists, in words (kept on the version)."""
    if latest is None:
        return "first computation of this window"
    reasons = []
    if latest.tz != zone:
        reasons.append(f"zone changed from {latest.tz} to {zone}")
    if latest.input_digest != input_digest:
        reasons.append("its readings changed (readings arrived or were reconciled)")
    if latest.engine_version != ENGINE_VERSION:
        reasons.append(f"engine {latest.engine_version} → {ENGINE_VERSION}")
    return "; ".join(reasons) or (latest.stale_reason or "recomputed")


def policy_from_dict(data: dict[str, Any]) -> OutcomePolicy:
    return OutcomePolicy(**data)


def _with_zone(table: ReadingTable, zone: str) -> ReadingTable:
    return replace(table, zones=(zone,))
