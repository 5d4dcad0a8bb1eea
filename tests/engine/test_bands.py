"""Band boundaries in each unit, mixed units, LOW/HIGH and target sets: docs/outcomes-method.md §5–6."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Band, GlucoseUnit, OutcomePolicy, SensorFlag, classify_bands, classify_target, target_set
from tests.engine.builders import MIN, T0, one, series, window

MG, MMOL = GlucoseUnit.MG_DL, GlucoseUnit.MMOL_L
VL, L, IN, H, VH = Band.VERY_LOW, Band.LOW, Band.IN_RANGE, Band.HIGH, Band.VERY_HIGH


@pytest.mark.parametrize(
    ("unit", "values", "bands"),
    [
        (MG, [53.9, 54, 69.9, 70, 180, 180.1, 250, 250.1], [VL, L, L, IN, IN, H, H, VH]),
        (MMOL, [2.9, 3.0, 3.8, 3.9, 10.0, 10.1, 13.9, 14.0], [VL, L, L, IN, IN, H, H, VH]),
    ],
)
def test_band_boundaries_in_the_readings_own_unit(unit: GlucoseUnit, values: list[float], bands: list[int]) -> None:
    v = np.array(values)
    got = classify_bands(v, np.full(v.size, unit, dtype=np.int8), np.zeros(v.size, dtype=np.int8))
    assert got.tolist() == bands


def test_ten_mmol_is_in_range_although_it_converts_above_180() -> None:
    # 10.0 mmol/L x 18.0156 = 180.156 mg/dL, which would be "> 180" after conversion.
    got = classify_bands(np.array([10.0]), np.array([MMOL], dtype=np.int8), np.zeros(1, dtype=np.int8))
    assert got.tolist() == [IN]


def test_flags_force_the_extreme_bands_whatever_the_value() -> None:
    v = np.array([60.0, 200.0])
    flags = np.array([SensorFlag.LOW, SensorFlag.HIGH], dtype=np.int8)
    assert classify_bands(v, np.zeros(2, dtype=np.int8), flags).tolist() == [VL, VH]


def test_percentages_of_eight_boundary_readings_both_methods() -> None:
    readings = series([53, 54, 69, 70, 180, 181, 250, 251])
    spec = window(T0, T0 + 60 * MIN)
    for method in ("time", "count"):
        m = one(readings, OutcomePolicy(method=method), spec).metrics
        # 8 readings, each weighing 5 min (time) or 1 (count).
        assert m["time_below_54_pct"] == 12.5
        assert m["time_54_69_pct"] == 25.0
        assert m["time_below_70_pct"] == 37.5
        assert m["time_in_range_pct"] == 25.0
        assert m["time_181_250_pct"] == 25.0
        assert m["time_above_250_pct"] == 12.5
        assert m["time_above_180_pct"] == 37.5
        total = sum(
            float(m[k])
            for k in (
                "time_below_54_pct",
                "time_54_69_pct",
                "time_in_range_pct",
                "time_181_250_pct",
                "time_above_250_pct",
            )
        )
        assert total == 100.0


def test_mixed_units_classify_separately_and_convert_for_the_mean() -> None:
    readings = series([100], unit=MG) + series([10.0, 10.1, 3.0], unit=MMOL, start=T0 + 5 * MIN)
    out = one(readings, OutcomePolicy(method="count"), window(T0, T0 + 60 * MIN))
    m = out.metrics
    assert m["time_in_range_pct"] == 50.0  # 100 mg/dL and 10.0 mmol/L
    assert m["time_181_250_pct"] == 25.0  # 10.1 mmol/L
    assert m["time_54_69_pct"] == 25.0  # 3.0 mmol/L
    # (100 + 10.0*18.0156 + 10.1*18.0156 + 3.0*18.0156) / 4 = (100 + 180.156 + 181.95756 + 54.0468) / 4
    assert m["mean_mg_dl"] == pytest.approx(129.04009, abs=1e-9)
    units = out.document["units"]
    assert units == {"canonical": "mg/dL", "mmol_l_to_mg_dl": 18.0156, "readings_mg_dl": 1, "readings_mmol_l": 3}


def test_low_and_high_count_in_the_extreme_bands_and_in_the_mean_at_the_bound() -> None:
    readings = series([None, 100, None, 100], flags={0: SensorFlag.LOW, 2: SensorFlag.HIGH})
    out = one(readings, OutcomePolicy(method="count"), window(T0, T0 + 60 * MIN))
    m = out.metrics
    assert m["time_below_54_pct"] == 25.0
    assert m["time_above_250_pct"] == 25.0
    assert m["time_in_range_pct"] == 50.0
    assert m["mean_mg_dl"] == 160.0  # (40 + 100 + 400 + 100) / 4: the Dexcom G6 bounds
    assert out.document["flags"]["sensor_low"] == 1
    assert out.document["flags"]["sensor_high"] == 1


def test_low_with_its_reported_bound_uses_that_bound() -> None:
    readings = series([39, 101], flags={0: SensorFlag.LOW}, device="")
    m = one(readings, OutcomePolicy(method="count"), window(T0, T0 + 60 * MIN)).metrics
    assert m["mean_mg_dl"] == 70.0
    assert m["time_below_54_pct"] == 50.0


def test_pregnancy_targets_move_the_range_but_not_the_literal_bands() -> None:
    readings = series([62, 63, 140, 141])
    out = one(readings, OutcomePolicy(method="count", targets="pregnancy"), window(T0, T0 + 60 * MIN))
    m = out.metrics
    assert m["time_below_target_pct"] == 25.0
    assert m["time_in_range_pct"] == 50.0
    assert m["time_above_target_pct"] == 25.0
    # The consensus bands keep their names: 62 and 63 are 54–69, 140 and 141 are 70–180.
    assert m["time_54_69_pct"] == 50.0
    assert m["time_above_180_pct"] == 0.0
    assert m["time_181_250_pct"] == 0.0
    assert [g["metric"] for g in out.document["targets"]["goals"]] == [
        "time_in_range_pct",
        "time_below_target_pct",
        "time_below_54_pct",
        "time_above_target_pct",
    ]
    assert out.document["targets"]["range_mg_dl"] == [63.0, 140.0]


def test_pregnancy_target_in_mmol() -> None:
    v = np.array([3.4, 3.5, 7.8, 7.9])
    got = classify_target(v, np.full(4, MMOL, dtype=np.int8), np.zeros(4, dtype=np.int8), target_set("pregnancy"))
    assert got.tolist() == [0, 1, 1, 2]


def test_older_goals_are_the_high_risk_goals() -> None:
    readings = series([100] * 9 + [60])  # TIR 90 %, below 70 = 10 %
    out = one(readings, OutcomePolicy(method="count", targets="older"), window(T0, T0 + 60 * MIN))
    goals = {g["metric"]: (g["op"], g["value"], g["met"]) for g in out.document["targets"]["goals"]}
    assert goals == {
        "time_in_range_pct": (">", 50.0, True),
        "time_below_70_pct": ("<", 1.0, False),
        "time_above_250_pct": ("<", 10.0, True),
    }
