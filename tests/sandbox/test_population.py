"""A synthetic population (`sandbox --population N`): reproducible, leaves the six people as they were, and varies
the way a care manager's cohort does (the triage a cohort list exists for must have something to find)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import numpy as np
import pytest

from engine import OutcomePolicy, WindowSpec, compute_cohort
from engine.report import build_report
from sandbox.config import DEFAULT_SEED, SandboxConfig
from sandbox.seed import KINDS, PEOPLE, people, population, traces_for
from tests.sandbox.support import NOW
from tests.sandbox.test_glucose_realism import _table


def test_a_population_is_reproducible_and_each_person_keeps_their_place() -> None:
    assert population(40, DEFAULT_SEED)[:10] == population(10, DEFAULT_SEED)
    assert population(10, DEFAULT_SEED) != population(10, DEFAULT_SEED + 1)
    assert [p.key for p in population(3, 1)] == ["c0001", "c0002", "c0003"]
    assert people(0, DEFAULT_SEED) == PEOPLE
    assert people(5, DEFAULT_SEED)[: len(PEOPLE)] == PEOPLE


def test_the_six_peoples_readings_do_not_change_with_a_population() -> None:
    alone = traces_for(PEOPLE, NOW, 14, DEFAULT_SEED)
    beside = traces_for(people(20, DEFAULT_SEED), NOW, 14, DEFAULT_SEED)
    for key, trace in alone.items():
        assert np.array_equal(trace.time_ms, beside[key].time_ms), key
        assert np.array_equal(trace.value, beside[key].value), key


def test_the_population_is_bounded() -> None:
    with pytest.raises(ValueError, match="population"):
        SandboxConfig(population=-1)
    with pytest.raises(ValueError, match="population"):
        SandboxConfig(population=10**6)


def test_three_hundred_people_spread_like_a_clinics_cohort() -> None:
    """Every kind, device and unit appears; the consensus targets (TIR ≥ 70 %, TBR < 4 %, CV ≤ 36 %, wear ≥ 70 %)
    are met by many and missed by some (each flag a cohort list raises has patients to raise it for), and nobody's
    numbers are implausible for a person with diabetes (CV 15–50 %)."""
    persons = population(300, DEFAULT_SEED)
    traces = traces_for(persons, NOW, 14, DEFAULT_SEED)
    assert set(traces) == {p.key for p in persons}
    assert {p.about for p in persons} == {k[0] for k in KINDS}
    assert {p.device for p in persons} == {"dexcom-g6", "dexcom-g7", "libre-2", "libre-3"}
    assert Counter(p.unit for p in persons)["mmol/L"] >= 15
    assert len({p.zone for p in persons}) >= 6
    today = NOW.date()
    result = compute_cohort(_table(list(persons), traces), OutcomePolicy(),
                            WindowSpec(start=today - timedelta(days=14), end=today))  # fmt: skip
    m = [dict(o.metrics) for o in build_report(result).patients]

    def share(test: object) -> float:
        return sum(bool(test(x)) for x in m) / len(m)  # type: ignore[operator]

    assert 0.35 <= share(lambda x: x["time_in_range_pct"] >= 70) <= 0.75
    assert 0.05 <= share(lambda x: x["time_below_70_pct"] > 4) <= 0.3
    assert 0.03 <= share(lambda x: x["time_below_54_pct"] > 1) <= 0.3
    assert 0.05 <= share(lambda x: x["cv_pct"] > 36) <= 0.4
    assert 0.05 <= share(lambda x: x["sensor_active_pct"] < 70) <= 0.3
    assert all(15 <= x["cv_pct"] <= 50 for x in m if x["cv_pct"] is not None)
    last = {p.key: int(traces[p.key].time_ms.max()) for p in persons}
    end = max(last.values())
    assert 0.01 <= sum(end - t >= 3 * 86_400_000 for t in last.values()) / len(last) <= 0.1  # no data for 3 days
