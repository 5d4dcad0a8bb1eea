"""The vectorised engine against the independent per-patient baseline (bench/baseline.py), on random cohorts.

The baseline was written from docs/outcomes-method.md alone, in plain Python; agreement on thousands of random
cases (irregular times, duplicates across feeds, mixed units, LOW/HIGH, warm-ups, gaps, DST zones, two
devices) is the evidence that the fast path implements the documented rules.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.baseline import baseline_report
from bench.synth import synth_cohort
from engine import (
    GlucoseUnit,
    OutcomePolicy,
    Reading,
    ReadingTable,
    SensorFlag,
    Source,
    WindowSpec,
    compute_cohort,
    compute_outcomes,
)
from engine.report import build_report
from tests.engine.builders import MIN, T0

ZONES = ("UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kolkata")
DEVICES = ("dexcom-g6", "dexcom-g7", "libre-2", "libre-3", "eversense", "")


def assert_same(a: Any, b: Any, path: str = "$") -> None:
    """Equal, with floats compared to 1e-9 relative (sums in another order differ by ulps)."""
    if isinstance(a, float) or isinstance(b, float):
        assert a is not None, f"{path}: {a!r} != {b!r}"
        assert b is not None, f"{path}: {a!r} != {b!r}"
        assert math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict), f"{path}: {b!r} is not an object"
        assert a.keys() == b.keys(), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple), f"{path}: {b!r} is not a list"
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@st.composite
def cohorts(draw: st.DrawFn) -> tuple[ReadingTable, OutcomePolicy, WindowSpec]:
    n_patients = draw(st.integers(1, 3))
    readings: list[Reading] = []
    zones: dict[str, str] = {}
    received = 0
    for p in range(n_patients):
        pid = f"p{p}"
        zones[pid] = draw(st.sampled_from(ZONES))
        for stream in range(draw(st.integers(1, 2))):
            device = draw(st.sampled_from(DEVICES))
            unit = draw(st.sampled_from([GlucoseUnit.MG_DL, GlucoseUnit.MMOL_L]))
            t = T0 + draw(st.integers(-3 * 24 * 60, 3 * 24 * 60)) * MIN
            session = draw(st.one_of(st.none(), st.integers(-600, 600).map(lambda m, t=t: t + m * MIN)))
            for _ in range(draw(st.integers(0, 60))):
                t += draw(st.sampled_from([5, 5, 5, 5, 4, 1, 0, 15, 30, 200])) * MIN + draw(st.integers(-30, 30)) * 1000
                kind = draw(st.integers(0, 20))
                flag = SensorFlag.LOW if kind == 0 else SensorFlag.HIGH if kind == 1 else SensorFlag.NONE
                if unit is GlucoseUnit.MG_DL:
                    value: float | None = float(draw(st.integers(39, 401)))
                else:
                    value = draw(st.integers(20, 250)) / 10
                if flag is not SensorFlag.NONE and device and draw(st.booleans()):
                    value = None
                received += 1
                readings.append(
                    Reading(
                        pid,
                        t,
                        value,
                        unit,
                        flag,
                        device,
                        str(stream),
                        session,
                        draw(st.sampled_from(list(Source))),
                        draw(st.integers(0, 3)),
                    )
                )
    table = ReadingTable.from_records(readings, zones=zones)
    policy = OutcomePolicy(
        method=draw(st.sampled_from(["time", "count"])),
        targets=draw(st.sampled_from(["standard", "older", "pregnancy"])),
        long_gap_min=draw(st.sampled_from([60, 120])),
        agp_bin_min=draw(st.sampled_from([15, 60])),
        agp_smoothing=draw(st.sampled_from(["none", "1-4-1"])),
        infer_sessions=draw(st.booleans()),
    )
    if draw(st.booleans()):
        start = T0 + draw(st.integers(-2 * 24 * 60, 24 * 60)) * MIN
        window = WindowSpec(start=start, end=start + draw(st.integers(60, 5 * 24 * 60)) * MIN)
    else:
        window = WindowSpec(days=draw(st.integers(1, 14)))
    return table, policy, window


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
def test_engine_equals_baseline_on_random_cohorts(case: tuple[ReadingTable, OutcomePolicy, WindowSpec]) -> None:
    table, policy, window = case
    engine = compute_outcomes(table, policy, window, include_traces=True).as_dict()
    baseline = baseline_report(table, policy, window, include_traces=True)
    assert_same(engine, baseline)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts(), st.integers(1, 50))
def test_blocks_do_not_change_results(case: tuple[ReadingTable, OutcomePolicy, WindowSpec], block: int) -> None:
    table, policy, window = case
    whole = build_report(compute_cohort(table, policy, window), include_traces=True).to_json()
    blocked = build_report(compute_cohort(table, policy, window, block_readings=block), include_traces=True)
    assert blocked.to_json() == whole


def test_engine_equals_baseline_on_a_synthetic_cohort() -> None:
    table = synth_cohort(12, 14, seed=7)
    for method in ("time", "count"):
        policy = OutcomePolicy(method=method)  # type: ignore[arg-type]
        assert_same(compute_outcomes(table, policy).as_dict(), baseline_report(table, policy))
    assert np.unique(table.patient).size == 12
