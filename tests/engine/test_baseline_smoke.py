"""Smoke tests of the plain per-patient baseline (bench/baseline.py) and the synthetic cohort (bench/synth.py).

The expected numbers are worked out by hand from docs/outcomes-method.md.
"""

from __future__ import annotations

import math
import statistics
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pytest

from bench.baseline import BAND_KEYS, baseline_report
from bench.synth import synth_cohort
from engine.policy import OutcomePolicy
from engine.readings import NO_TIME, Reading, ReadingTable, SensorFlag, Source
from engine.units import GlucoseUnit
from engine.windows import WindowSpec

MIN = 60_000
T0 = int(datetime(2024, 1, 10, 12, 0, tzinfo=UTC).timestamp()) * 1000
MG = GlucoseUnit.MG_DL
MMOL = GlucoseUnit.MMOL_L


def reading(minute: float, value: float | None, **kw: Any) -> Reading:
    kw.setdefault("unit", MG)
    return Reading(patient_id=kw.pop("patient_id", "p1"), time_ms=T0 + int(minute * MIN), value=value, **kw)


def patients(report: dict[str, object]) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], report["patients"])


def only_patient(records: list[Reading], policy: OutcomePolicy | None = None, **kw: Any) -> dict[str, Any]:
    (patient,) = patients(baseline_report(ReadingTable.from_records(records), policy or OutcomePolicy(), **kw))
    return patient


# Four readings, one per band below 250; the second comes 3 minutes after the first (not a duplicate: ≥ 2.5 min),
# so the first weighs 3 minutes and the others 5.
FOUR = [reading(0, 50), reading(3, 60), reading(8, 100), reading(13, 200)]


def test_four_bands_time_method() -> None:
    p = only_patient(FOUR)
    m = p["metrics"]
    total = 18
    assert m["time_below_54_pct"] == 100.0 * 3 / total
    assert m["time_54_69_pct"] == 100.0 * 5 / total
    assert m["time_below_70_pct"] == 100.0 * 8 / total
    assert m["time_in_range_pct"] == 100.0 * 5 / total
    assert m["time_181_250_pct"] == 100.0 * 5 / total
    assert m["time_above_250_pct"] == 0.0
    assert m["time_above_180_pct"] == 100.0 * 5 / total
    assert m["time_below_target_pct"] == m["time_below_70_pct"]
    assert m["time_above_target_pct"] == m["time_above_180_pct"]
    assert m["readings_used"] == 4
    assert m["days_of_wear"] == 1
    assert m["mean_mg_dl"] == 102.5
    assert m["sd_mg_dl"] == pytest.approx(statistics.stdev([50, 60, 100, 200]), rel=1e-15)
    assert m["cv_pct"] == pytest.approx(100 * statistics.stdev([50, 60, 100, 200]) / 102.5, rel=1e-15)
    assert m["gmi_pct"] == 3.31 + 0.02392 * 102.5
    assert m["gri"] == 100.0  # 3.0·16.7 + 2.4·27.8 + 0.8·27.8 > 100
    assert m["gri_zone"] == "E"
    assert m["hypo_events_l1"] == 0  # 8 minutes below 70 is not an event
    # 18 active minutes in a 14-day window.
    assert m["sensor_active_pct"] == 100.0 * 18 * MIN / (14 * 86_400_000)
    assert m["sufficient"] is False
    assert p["sufficiency"]["reasons"] == ["sensor active 0.1 % of the window, below 70 %"]
    assert p["window"] == {"start": "2023-12-28T00:00:00+00:00", "end": "2024-01-11T00:00:00+00:00", "days": 14.0}
    # Gaps: from the window start to the first reading, and from the last reading's end to the window end.
    assert [(g["start"], g["end"]) for g in p["gaps"]] == [
        ("2023-12-28T00:00:00+00:00", "2024-01-10T12:00:00+00:00"),
        ("2024-01-10T12:18:00+00:00", "2024-01-11T00:00:00+00:00"),
    ]
    assert p["gaps"][1]["minutes"] == 11 * 60 + 42
    assert p["daily"] == [
        {"date": "2024-01-10", "readings": 4, "active_minutes": 18.0, "mean_mg_dl": 102.5}
        | {k: m[k] for k in BAND_KEYS}
    ]
    assert p["periods"]["night"]["readings"] == 0
    assert p["periods"]["night"]["time_in_range_pct"] is None
    assert p["periods"]["day"]["readings"] == 4
    # LBGI / HBGI by hand.
    fs = [1.509 * (math.log(g) ** 1.084 - 5.381) for g in (50, 60, 100, 200)]
    assert m["lbgi"] == pytest.approx(sum(10 * f * f for f in fs if f < 0) / 4, rel=1e-12)
    assert m["hbgi"] == pytest.approx(sum(10 * f * f for f in fs if f > 0) / 4, rel=1e-12)
    goals = {g["metric"]: g["met"] for g in p["targets"]["goals"]}
    assert goals == {
        "time_in_range_pct": False,
        "time_below_70_pct": False,
        "time_below_54_pct": False,
        "time_above_180_pct": False,
        "time_above_250_pct": True,
    }


def test_four_bands_count_method() -> None:
    p = only_patient(FOUR, OutcomePolicy(method="count"))  # type: ignore[arg-type]
    m = p["metrics"]
    assert (m["time_below_54_pct"], m["time_54_69_pct"], m["time_in_range_pct"], m["time_181_250_pct"]) == (
        25.0,
        25.0,
        25.0,
        25.0,
    )
    assert m["time_below_70_pct"] == 50.0
    # Activity still uses time weights.
    assert m["sensor_active_pct"] == 100.0 * 18 * MIN / (14 * 86_400_000)


@pytest.mark.parametrize(
    ("pair", "kept"),
    [
        # source precedence beats everything
        (({"value": 100, "source": Source.FILE, "received": 9}, {"value": 120, "source": Source.FHIR}), 120),
        # same source: the latest received
        (({"value": 100, "received": 2}, {"value": 130, "received": 1}), 100),
        # same source and received: the larger value
        (({"value": 100}, {"value": 110}), 110),
    ],
)
def test_duplicate_pair(pair: tuple[dict[str, Any], dict[str, Any]], kept: float) -> None:
    first, second = pair
    p = only_patient([reading(0, **first), reading(2, **second)])  # 2 min apart: < 5 / 2
    assert p["excluded"] == {"before_session_start": 0, "warm_up": 0, "warm_up_inferred": 0, "duplicate": 1}
    assert p["metrics"]["readings_used"] == 1
    assert p["metrics"]["mean_mg_dl"] == kept
    assert p["metrics"]["sd_mg_dl"] is None


def test_low_high_and_mmol_bands() -> None:
    records = [
        reading(0, None, flag=SensorFlag.LOW, device="dexcom-g6"),  # bound 40 mg/dL
        reading(5, 350, flag=SensorFlag.HIGH, device="dexcom-g6"),  # very high, whatever the value
        reading(0, 10.0, unit=MMOL, stream="b"),  # in range in its own unit (180.16 mg/dL)
        reading(5, 10.1, unit=MMOL, stream="b"),  # high
    ]
    p = only_patient(records, OutcomePolicy(method="count"))  # type: ignore[arg-type]
    m = p["metrics"]
    assert p["flags"] == {"sensor_low": 1, "sensor_high": 1, "ambiguous_local_time": 0}
    assert p["units"]["readings_mg_dl"] == 2
    assert p["units"]["readings_mmol_l"] == 2
    assert m["time_below_54_pct"] == 25.0
    assert m["time_in_range_pct"] == 25.0
    assert m["time_181_250_pct"] == 25.0
    assert m["time_above_250_pct"] == 25.0
    assert m["mean_mg_dl"] == pytest.approx((40 + 350 + 10.0 * 18.0156 + 10.1 * 18.0156) / 4, rel=1e-15)
    # Two streams overlap completely: 10 active minutes, not 20.
    assert p["daily"][0]["active_minutes"] == 10.0


def test_hypo_event_and_recovery() -> None:
    values = [60] * 4 + [100] * 2 + [65] * 2 + [100] * 4  # 20 min below, 10 min up (too short), 10 below, 20 up
    p = only_patient([reading(5 * k, v) for k, v in enumerate(values)])
    (event,) = p["events"]["hypo_l1"]
    assert event == {"start": "2024-01-10T12:00:00+00:00", "end": "2024-01-10T12:40:00+00:00", "minutes": 40.0}
    assert p["events"]["hypo_l2"] == []
    assert p["metrics"]["hypo_events_l1"] == 1


def test_warm_up_and_session_start() -> None:
    start = T0 + 60 * MIN
    records = [
        reading(0, 100, device="dexcom-g6", session_start_ms=start),  # before the session start
        reading(65, 100, device="dexcom-g6", session_start_ms=start),  # in the 2 h warm-up
        reading(185, 120, device="dexcom-g6", session_start_ms=start),  # used
    ]
    p = only_patient(records)
    assert p["excluded"] == {"before_session_start": 1, "warm_up": 1, "warm_up_inferred": 0, "duplicate": 0}
    assert p["metrics"]["mean_mg_dl"] == 120.0


def test_short_window_and_patient_without_readings() -> None:
    base = ReadingTable.from_records([reading(0, 100)])
    table = ReadingTable(
        patient=base.patient,
        time_ms=base.time_ms,
        value=base.value,
        unit=base.unit,
        flag=base.flag,
        stream=base.stream,
        session_start_ms=np.full(1, NO_TIME, dtype=np.int64),
        source=base.source,
        received=base.received,
        ambiguous=base.ambiguous,
        patient_ids=("p1", "p2"),
        zones=("UTC", "Europe/Berlin"),
        stream_patient=base.stream_patient,
        stream_device=base.stream_device,
    )
    report = baseline_report(table, window=WindowSpec(days=7))
    p1, p2 = patients(report)
    assert p1["window"]["days"] == 7.0
    assert p1["sufficiency"]["reasons"][0] == "window of 7 days is shorter than 14 days"
    assert p2["window"] is None
    assert p2["sufficiency"] == {"sufficient": False, "reasons": ["no readings"]}
    assert p2["metrics"]["time_in_range_pct"] is None
    assert p2["metrics"]["readings_used"] == 0
    assert p2["agp"]["n"] == [0] * 96
    assert p2["agp"]["p50"] == [None] * 96
    # An explicit window gives p2 a window with no reading used: one gap, the whole window.
    explicit = baseline_report(table, window=WindowSpec(start=T0 - 86_400_000, end=T0 + 86_400_000))
    q2 = patients(explicit)[1]
    assert q2["sufficiency"]["reasons"] == [
        "window of 2 days is shorter than 14 days",
        "no readings used in the window",
    ]
    assert [g["minutes"] for g in q2["gaps"]] == [2 * 1440.0]
    assert q2["metrics"]["sensor_active_pct"] == 0.0


def test_synth_cohort_sorted_and_deterministic() -> None:
    table = synth_cohort(5, 2, seed=7)
    assert table.n_patients == 5
    assert len(table) > 5 * 2 * 200
    order = np.lexsort((table.time_ms, table.stream, table.patient))
    assert np.array_equal(order, np.arange(len(table)))
    again = synth_cohort(5, 2, seed=7)
    for name in ("patient", "time_ms", "value", "unit", "flag", "stream", "source", "received"):
        assert np.array_equal(getattr(table, name), getattr(again, name)), name
    assert (table.zones, table.stream_device) == (again.zones, again.stream_device)
    other = synth_cohort(5, 2, seed=8)
    assert len(other) != len(table) or not np.array_equal(other.value, table.value)
    report = baseline_report(table, include_traces=True)
    assert len(patients(report)) == 5
