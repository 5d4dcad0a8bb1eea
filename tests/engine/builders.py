"""Small builders for hand-computed engine cases."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from engine import GlucoseUnit, OutcomePolicy, Reading, ReadingTable, SensorFlag, Source, WindowSpec, compute_outcomes
from engine.report import PatientOutcome

MIN = 60_000
HOUR = 60 * MIN
#: 2024-03-01T00:00:00Z
T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)


def at(iso: str) -> int:
    """ms since the epoch for an ISO instant with offset."""
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def series(
    values: Sequence[float | None],
    *,
    start: int = T0,
    step_min: float = 5,
    unit: GlucoseUnit = GlucoseUnit.MG_DL,
    patient: str = "p1",
    device: str = "dexcom-g6",
    stream: str = "",
    source: Source = Source.FILE,
    session_start: int | None = None,
    flags: dict[int, SensorFlag] | None = None,
) -> list[Reading]:
    flags = flags or {}
    return [
        Reading(
            patient_id=patient,
            time_ms=start + round(i * step_min * MIN),
            value=v,
            unit=unit,
            flag=flags.get(i, SensorFlag.NONE),
            device=device,
            stream=stream,
            session_start_ms=session_start,
            source=source,
            received=i,
        )
        for i, v in enumerate(values)
    ]


def window(start: int, end: int) -> WindowSpec:
    return WindowSpec(start=start, end=end)


def one(
    readings: Sequence[Reading],
    policy: OutcomePolicy | None = None,
    spec: WindowSpec | None = None,
    zone: str = "UTC",
    include_traces: bool = False,
) -> PatientOutcome:
    table = ReadingTable.from_records(readings, default_zone=zone)
    report = compute_outcomes(table, policy, spec, include_traces=include_traces)
    assert len(report.patients) == 1
    return report.patients[0]
