"""The two methods, window clipping, activity, days and DST: docs/outcomes-method.md §3, §7, §9."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from engine import OutcomePolicy, WindowSpec
from tests.engine.builders import HOUR, MIN, T0, at, one, series, window


def test_time_method_caps_each_reading_at_the_nominal_interval_and_the_window_end() -> None:
    # t=0 100, t=5 200, t=30 50 (a 25-minute hole), t=33 100; window [0, 36 min); Dexcom G6: 5 min.
    readings = series([100], start=T0) + series([200], start=T0 + 5 * MIN) + series([50], start=T0 + 30 * MIN)
    readings += series([100], start=T0 + 33 * MIN)
    spec = window(T0, T0 + 36 * MIN)
    m = one(readings, OutcomePolicy(method="time"), spec).metrics
    # weights: 5 (next in 5), 5 (next in 25, capped), 3 (next in 3), 3 (last: 5 clipped to window end) = 16 min
    assert m["time_in_range_pct"] == 100.0 * 8 / 16
    assert m["time_181_250_pct"] == 100.0 * 5 / 16
    assert m["time_below_54_pct"] == 100.0 * 3 / 16
    assert m["sensor_active_pct"] == 100.0 * 16 / 36
    c = one(readings, OutcomePolicy(method="count"), spec).metrics
    assert (c["time_in_range_pct"], c["time_181_250_pct"], c["time_below_54_pct"]) == (50.0, 25.0, 25.0)


def test_gaps_add_no_time() -> None:
    # Two hours of readings in range, a 6-hour hole, one reading high: the hole does not count for the high one.
    readings = series([100] * 24) + series([300], start=T0 + 8 * HOUR)
    m = one(readings, spec=window(T0, T0 + 10 * HOUR)).metrics
    assert m["time_above_250_pct"] == 100.0 * 5 / (24 * 5 + 5)


def test_two_devices_overlap_counts_once_for_activity() -> None:
    a = series([100] * 12, device="dexcom-g6")  # 0..55 min, covers [0, 60)
    b = series([200] * 12, device="libre-3", start=T0 + 30 * MIN)  # 30..85 min, covers [30, 90)
    out = one(a + b, spec=window(T0, T0 + 120 * MIN))
    m = out.metrics
    assert m["readings_used"] == 24  # no de-duplication across streams
    assert m["time_in_range_pct"] == 50.0
    assert m["time_181_250_pct"] == 50.0
    assert m["sensor_active_pct"] == 100.0 * 90 / 120  # the union [0, 90)
    assert out.document["excluded"]["duplicate"] == 0
    assert out.document["gaps"] == []  # the tail 90..120 is 30 min < 2 h


def test_libre_historic_readings_weigh_fifteen_minutes() -> None:
    readings = series([100, 100, 60, 100], device="libre-2", step_min=15)
    m = one(readings, spec=window(T0, T0 + 2 * HOUR)).metrics
    assert m["time_54_69_pct"] == 25.0
    assert m["sensor_active_pct"] == 100.0 * 60 / 120


def test_default_window_is_14_local_days_ending_with_the_last_reading_day_across_dst() -> None:
    # Last reading 2024-03-10 12:00 New York (the spring-forward day).
    readings = series([100], start=at("2024-03-10T12:00:00-04:00"))
    out = one(readings, zone="America/New_York")
    assert out.document["window"] == {
        "start": "2024-02-26T00:00:00-05:00",
        "end": "2024-03-11T00:00:00-04:00",
        "days": 14.0,
    }
    # Elapsed 14 x 24 - 1 hours; the one reading covers 5 minutes of it.
    assert out.metrics["sensor_active_pct"] == 100.0 * 5 / (335 * 60)


def test_days_option_changes_the_default_window() -> None:
    readings = series([100], start=at("2024-03-10T12:00:00Z"))
    out = one(readings, spec=WindowSpec(days=7))
    assert out.document["window"]["start"] == "2024-03-04T00:00:00+00:00"
    assert out.metrics["sufficient"] is False
    assert out.document["sufficiency"]["reasons"][0] == "window of 7 days is shorter than 14 days"


@pytest.mark.parametrize(
    ("first_day", "dst_day", "first_midnight", "readings_that_day", "elapsed_hours"),
    [
        (date(2024, 3, 9), "2024-03-10", "2024-03-09T00:00:00-05:00", 276, 71),  # spring forward: 23 h
        (date(2024, 11, 2), "2024-11-03", "2024-11-02T00:00:00-04:00", 300, 73),  # fall back: 25 h
    ],
)
def test_dst_days_are_days_of_23_and_25_hours(
    first_day: date, dst_day: str, first_midnight: str, readings_that_day: int, elapsed_hours: int
) -> None:
    spec = WindowSpec(start=first_day, end=first_day + timedelta(days=3))
    n = elapsed_hours * 12  # every 5 minutes of the three local days
    out = one(series([120] * n, start=at(first_midnight)), spec=spec, zone="America/New_York")
    daily = {x["date"]: x["readings"] for x in out.document["daily"]}
    assert daily[dst_day] == readings_that_day
    assert sorted(daily.values()) == sorted([288, 288, readings_that_day])
    assert out.document["window"]["days"] == 3.0
    assert out.metrics["sensor_active_pct"] == 100.0
    assert out.metrics["days_of_wear"] == 3


def test_night_and_day_periods_use_local_time() -> None:
    # 05:55 and 06:00 local in New York (UTC-5 in January): one night reading low, one day reading high.
    readings = series([60], start=at("2024-01-10T05:55:00-05:00")) + series(
        [200], start=at("2024-01-10T06:00:00-05:00")
    )
    out = one(
        readings,
        OutcomePolicy(method="count"),
        window(at("2024-01-10T00:00:00-05:00"), at("2024-01-11T00:00:00-05:00")),
        zone="America/New_York",
    )
    periods = out.document["periods"]
    assert periods["night"]["readings"] == 1
    assert periods["night"]["time_54_69_pct"] == 100.0
    assert periods["day"]["time_181_250_pct"] == 100.0


def test_sufficiency_needs_14_days_and_70_percent_active() -> None:
    start = at("2024-03-01T00:00:00Z")
    full = series([110] * (14 * 288), start=start)
    out = one(full, spec=window(start, start + 14 * 24 * HOUR))
    assert out.metrics["sufficient"] is True
    assert out.metrics["sensor_active_pct"] == 100.0
    # Keep 69 % of the readings: the first 69 % of the window.
    part = full[: int(14 * 288 * 0.69)]
    out = one(part, spec=window(start, start + 14 * 24 * HOUR))
    assert out.metrics["sufficient"] is False
    assert out.document["sufficiency"]["reasons"] == ["sensor active 69.0 % of the window, below 70 %"]


def test_out_of_order_input_gives_the_same_document() -> None:
    readings = series([100, 60, 60, 60, 250, 300, 120]) + series([90, 95], device="libre-3", start=T0 + 2 * MIN)
    spec = window(T0, T0 + HOUR)
    forward = one(readings, spec=spec, include_traces=True).document
    backward = one(readings[::-1], spec=spec, include_traces=True).document
    assert forward == backward
    assert forward["metrics"]["readings_used"] == 9
