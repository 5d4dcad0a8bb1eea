"""Warm-up, clock errors and duplicates: docs/outcomes-method.md §4."""

from __future__ import annotations

from engine import GlucoseUnit, OutcomePolicy, Reading, SensorFlag, Source
from tests.engine.builders import HOUR, MIN, T0, one, series, window

G6_WARMUP_READINGS = 24  # 2 h of 5-minute readings


def test_known_session_start_excludes_clock_errors_and_the_warm_up() -> None:
    # Readings every 5 min over 4 h; the sensor session started at T0 + 1 h.
    readings = series([100] * 49, session_start=T0 + HOUR)
    out = one(readings, spec=window(T0, T0 + 5 * HOUR))
    excluded = out.document["excluded"]
    assert excluded["before_session_start"] == 12  # 0..55 min: before the start, a clock error
    assert excluded["warm_up"] == G6_WARMUP_READINGS  # [60, 180) min: includes the reading at the start itself
    assert out.metrics["readings_used"] == 49 - 12 - 24  # 180..240 min


def test_warm_up_ends_exactly_at_start_plus_warm_up() -> None:
    start = T0 + HOUR
    readings = series([100], start=start + 2 * HOUR - 1, session_start=start)
    readings += series([100], start=start + 2 * HOUR, session_start=start)
    out = one(readings, spec=window(T0, T0 + 5 * HOUR))
    assert out.document["excluded"]["warm_up"] == 1
    assert out.metrics["readings_used"] == 1


def test_warm_up_depends_on_the_device() -> None:
    # Dexcom G7 warms up for 30 minutes: 6 readings of 5 minutes.
    readings = series([100] * 12, device="dexcom-g7", session_start=T0)
    out = one(readings, spec=window(T0, T0 + 2 * HOUR))
    assert out.document["excluded"]["warm_up"] == 6


def test_without_a_known_start_nothing_is_excluded_by_default() -> None:
    readings = series([100] * 49) + series([100] * 37, start=T0 + 7 * HOUR)
    out = one(readings, spec=window(T0, T0 + 11 * HOUR))
    assert out.document["excluded"] == {"before_session_start": 0, "warm_up": 0, "warm_up_inferred": 0, "duplicate": 0}


def test_inferred_sessions_exclude_the_first_warm_up_and_after_a_session_break() -> None:
    # 0..4 h, then a 3-hour hole (>= the G6 session-break gap of 2 h), then 7..10 h.
    readings = series([100] * 49) + series([100] * 37, start=T0 + 7 * HOUR)
    out = one(readings, OutcomePolicy(infer_sessions=True), window(T0, T0 + 11 * HOUR))
    assert out.document["excluded"]["warm_up_inferred"] == 2 * G6_WARMUP_READINGS
    assert out.metrics["readings_used"] == 49 + 37 - 48


def test_duplicates_keep_one_reading_by_source_then_latest_received() -> None:
    # Dexcom G6: half the 5-minute interval is 2.5 minutes; groups are anchored at their first reading.
    def r(minute: float, value: float, source: Source, received: int) -> Reading:
        return Reading(
            "p1",
            T0 + round(minute * MIN),
            value,
            GlucoseUnit.MG_DL,
            SensorFlag.NONE,
            "dexcom-g6",
            source=source,
            received=received,
        )

    readings = [
        r(0, 100, Source.FILE, 0),
        r(1, 110, Source.FHIR, 1),  # FHIR wins the first group {0, 1, 2}
        r(2, 120, Source.HL7V2, 2),
        r(3, 130, Source.FILE, 3),  # 3 - 0 >= 2.5: a new group {3, 5}
        r(5, 140, Source.FILE, 4),  # same source: the later received wins
        r(10, 150, Source.FILE, 5),
    ]
    out = one(readings, OutcomePolicy(method="count"), window(T0, T0 + HOUR))
    assert out.document["excluded"]["duplicate"] == 3
    assert out.metrics["readings_used"] == 3
    assert out.metrics["mean_mg_dl"] == (110 + 140 + 150) / 3


def test_duplicate_ties_go_to_the_larger_value_in_mg_dl() -> None:
    readings = [
        Reading("p1", T0, 6.0, GlucoseUnit.MMOL_L, device="dexcom-g6", received=1),  # 108.09 mg/dL
        Reading("p1", T0 + 1000, 107.0, GlucoseUnit.MG_DL, device="dexcom-g6", received=1),
    ]
    out = one(readings, spec=window(T0, T0 + HOUR))
    assert out.document["units"]["readings_mmol_l"] == 1
    assert out.document["excluded"]["duplicate"] == 1


def test_exact_re_delivery_is_one_reading() -> None:
    once = series([100, 150, 200])
    twice = one(once + once, spec=window(T0, T0 + HOUR))
    single = one(once, spec=window(T0, T0 + HOUR))
    assert twice.document["excluded"]["duplicate"] == 3
    assert twice.metrics == single.metrics


def test_readings_of_two_streams_are_never_duplicates_of_each_other() -> None:
    a = series([100, 100], device="dexcom-g6", stream="A")
    b = series([200, 200], device="dexcom-g6", stream="B")
    out = one(a + b, OutcomePolicy(method="count"), window(T0, T0 + HOUR))
    assert out.document["excluded"]["duplicate"] == 0
    assert out.metrics["time_in_range_pct"] == 50.0
