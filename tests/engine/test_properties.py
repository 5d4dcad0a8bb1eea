"""Properties of the engine that must hold for any input (hypothesis)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from engine import (
    MMOL_L_TO_MG_DL,
    GlucoseUnit,
    OutcomePolicy,
    Reading,
    ReadingTable,
    WindowSpec,
    compute_outcomes,
)
from tests.engine.builders import MIN, T0

BANDS = ("time_below_54_pct", "time_54_69_pct", "time_in_range_pct", "time_181_250_pct", "time_above_250_pct")
PCTS = (*BANDS, "time_below_70_pct", "time_above_180_pct", "time_below_target_pct", "time_above_target_pct")
SPEC = WindowSpec(start=T0, end=T0 + 3 * 24 * 60 * MIN)


@st.composite
def patient_readings(draw: st.DrawFn, unit: GlucoseUnit | None = None) -> list[Reading]:
    readings = []
    t = T0 + draw(st.integers(0, 600)) * MIN
    device = draw(st.sampled_from(["dexcom-g6", "libre-2", ""]))
    for i in range(draw(st.integers(1, 150))):
        t += draw(st.sampled_from([5, 5, 5, 5, 3, 15, 45, 150])) * MIN + draw(st.integers(-20, 20)) * 1000
        u = unit if unit is not None else draw(st.sampled_from(list(GlucoseUnit)))
        value = float(draw(st.integers(40, 400))) if u is GlucoseUnit.MG_DL else draw(st.integers(22, 222)) / 10
        readings.append(Reading("p", t, value, u, device=device, received=i))
    return readings


def pcts(readings: list[Reading], policy: OutcomePolicy | None = None, zone: str = "UTC") -> dict[str, object]:
    table = ReadingTable.from_records(readings, default_zone=zone)
    m = compute_outcomes(table, policy, SPEC).patients[0].metrics
    return {k: m[k] for k in PCTS}


@settings(max_examples=150, deadline=None)
@given(patient_readings(), st.randoms(use_true_random=False), st.sampled_from(["time", "count"]))
def test_input_order_does_not_change_the_output(readings: list[Reading], rnd: random.Random, method: str) -> None:
    policy = OutcomePolicy(method=method)  # type: ignore[arg-type]
    shuffled = readings[:]
    rnd.shuffle(shuffled)
    a = compute_outcomes(ReadingTable.from_records(readings), policy, SPEC).to_json()
    b = compute_outcomes(ReadingTable.from_records(shuffled), policy, SPEC).to_json()
    assert a == b


@settings(max_examples=150, deadline=None)
@given(patient_readings(), st.sampled_from(["time", "count"]))
def test_duplicated_input_does_not_change_the_percentages(readings: list[Reading], method: str) -> None:
    policy = OutcomePolicy(method=method)  # type: ignore[arg-type]
    assert pcts(readings + readings, policy) == pcts(readings, policy)


@settings(max_examples=150, deadline=None)
@given(patient_readings(), st.sampled_from(["America/New_York", "Asia/Kathmandu", "Pacific/Chatham"]))
def test_display_zone_does_not_change_the_percentages(readings: list[Reading], zone: str) -> None:
    assert pcts(readings, zone=zone) == pcts(readings, zone="UTC")


@settings(max_examples=150, deadline=None)
@given(patient_readings(unit=GlucoseUnit.MG_DL), st.sampled_from(["time", "count"]))
def test_unit_round_trip_at_reporting_precision_does_not_change_the_percentages(
    readings: list[Reading], method: str
) -> None:
    # mg/dL -> mmol/L -> mg/dL with the engine's factor, back at the sensor's precision (integer mg/dL).
    policy = OutcomePolicy(method=method)  # type: ignore[arg-type]
    back = [replace(r, value=float(round(float(r.value or 0) / MMOL_L_TO_MG_DL * MMOL_L_TO_MG_DL))) for r in readings]
    assert pcts(back, policy) == pcts(readings, policy)


@settings(max_examples=150, deadline=None)
@given(patient_readings(), st.sampled_from(["time", "count"]), st.sampled_from(["standard", "pregnancy"]))
def test_bands_sum_to_100_and_combined_bands_add_up(readings: list[Reading], method: str, targets: str) -> None:
    p = pcts(readings, OutcomePolicy(method=method, targets=targets))  # type: ignore[arg-type]
    values = {k: float(v) for k, v in p.items()}  # type: ignore[arg-type]
    if targets == "standard":  # time_in_range_pct is the 70–180 band only under the standard and older sets
        assert math.isclose(sum(values[k] for k in BANDS), 100.0, rel_tol=1e-12)
    assert math.isclose(
        values["time_below_70_pct"],
        values["time_below_54_pct"] + values["time_54_69_pct"],
        rel_tol=1e-12,
        abs_tol=1e-12,
    )
    assert math.isclose(
        values["time_below_target_pct"] + values["time_in_range_pct"] + values["time_above_target_pct"],
        100.0,
        rel_tol=1e-12,
    )


@settings(max_examples=50, deadline=None)
@given(patient_readings())
def test_identical_input_gives_byte_identical_json(readings: list[Reading]) -> None:
    a = compute_outcomes(ReadingTable.from_records(readings), window=SPEC, include_traces=True).to_json()
    b = compute_outcomes(ReadingTable.from_records(list(readings)), window=SPEC, include_traces=True).to_json()
    assert a == b
