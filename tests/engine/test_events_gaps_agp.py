"""Hypoglycaemia events, long gaps and the AGP: docs/outcomes-method.md §10."""

from __future__ import annotations

import pytest

from engine import OutcomePolicy
from tests.engine.builders import HOUR, MIN, T0, at, one, series, window


def events(values: list[float], *, start: int = T0, extra: list[tuple[int, list[float]]] | None = None) -> dict:
    readings = series(values, start=start)
    for offset_min, more in extra or []:
        readings += series(more, start=start + offset_min * MIN)
    out = one(readings, spec=window(T0, T0 + 6 * HOUR))
    return {
        "l1": [(e["start"][11:16], e["minutes"]) for e in out.document["events"]["hypo_l1"]],
        "l2": [(e["start"][11:16], e["minutes"]) for e in out.document["events"]["hypo_l2"]],
        "counts": (out.metrics["hypo_events_l1"], out.metrics["hypo_events_l2"]),
    }


def test_an_event_needs_15_minutes_below_and_ends_after_15_minutes_at_or_above_70() -> None:
    got = events([50, 60, 100, 200, 300, 65, 60, 55, 52, 100, 110, 120, 130])
    # 50, 60 is only 10 minutes; 65..52 (00:25–00:45) is 20 minutes; recovery starts at 00:45.
    assert got["l1"] == [("00:25", 20.0)]
    assert got["l2"] == []  # 52 alone, 50 alone: 5 minutes each
    assert got["counts"] == (1, 0)


def test_a_short_recovery_does_not_end_an_event() -> None:
    got = events([60, 60, 60, 100, 60, 60, 100, 100, 100])
    # 15 min below, 5 min above (too short), 10 min below, then 15 min above from 00:30.
    assert got["l1"] == [("00:00", 30.0)]


def test_level_2_events_end_only_at_or_above_70() -> None:
    got = events([50, 50, 50, 60, 60, 60, 50, 100, 100, 100])
    # < 54 for 15 min opens level 2; 54–69 is neither below nor recovered; recovery at 00:35.
    assert got["l2"] == [("00:00", 35.0)]
    assert got["l1"] == [("00:00", 35.0)]
    assert got["counts"] == (1, 1)


def test_a_data_break_ends_an_event_at_the_last_reading() -> None:
    # 15 min below, a 30-minute hole (> short_gap of 15 min), 15 min below again: two events.
    got = events([60, 60, 60], extra=[(40, [60, 60, 60])])
    assert got["l1"] == [("00:00", 15.0), ("00:40", 15.0)]


def test_an_event_running_to_the_end_of_data_ends_there() -> None:
    got = events([100, 60, 60, 60, 60])
    assert got["l1"] == [("00:05", 20.0)]


def test_long_gaps_are_listed_and_short_ones_are_not() -> None:
    readings = series([100] * 13) + series([100] * 13, start=T0 + 4 * HOUR)  # 0..60 min, 240..300 min
    readings += series([100] * 3, start=T0 + 330 * MIN)  # after a 25-minute hole
    out = one(readings, spec=window(T0, T0 + 6 * HOUR))
    assert out.document["gaps"] == [
        {"start": "2024-03-01T01:00:00+00:00", "end": "2024-03-01T04:00:00+00:00", "minutes": 180.0}
    ]
    # 29 readings x 5 minutes of activity, none for the holes.
    assert out.metrics["sensor_active_pct"] == 100.0 * 29 * 5 / 360


def test_gaps_at_the_window_edges_are_listed() -> None:
    readings = series([100] * 12, start=T0 + 3 * HOUR)  # 03:00–03:55, covering to 04:00
    out = one(readings, spec=window(T0, T0 + 7 * HOUR))
    assert out.document["gaps"] == [
        {"start": "2024-03-01T00:00:00+00:00", "end": "2024-03-01T03:00:00+00:00", "minutes": 180.0},
        {"start": "2024-03-01T04:00:00+00:00", "end": "2024-03-01T07:00:00+00:00", "minutes": 180.0},
    ]


def test_the_tail_gap_starts_where_the_latest_reading_coverage_ends_in_any_stream() -> None:
    # A Libre 2 (15-minute record) reading at 01:00 covers to 01:15; the last reading, a Dexcom G6 (5 min) at
    # 01:08, covers only to 01:13. The data end at 01:15, so the tail gap runs 01:15-04:00 (165 minutes).
    readings = series([100], start=T0 + 1 * HOUR, device="libre-2", stream="libre")
    readings += series([100], start=T0 + 68 * MIN, device="dexcom-g6", stream="g6")
    out = one(readings, spec=window(T0 + 1 * HOUR, T0 + 4 * HOUR))
    assert out.document["gaps"] == [
        {"start": "2024-03-01T01:15:00+00:00", "end": "2024-03-01T04:00:00+00:00", "minutes": 165.0}
    ]


def test_long_gap_threshold_is_inclusive_and_a_policy_setting() -> None:
    readings = series([100]) + series([100], start=T0 + 2 * HOUR)
    assert len(one(readings, spec=window(T0, T0 + 2 * HOUR + 5 * MIN)).document["gaps"]) == 1
    short = one(readings, OutcomePolicy(long_gap_min=180), window(T0, T0 + 2 * HOUR + 5 * MIN))
    assert short.document["gaps"] == []


def test_agp_percentiles_are_type_7_by_local_time_of_day() -> None:
    # One reading a day at 08:00 UTC on four days: 100, 200, 300, 400.
    readings = []
    for day, value in enumerate([100, 200, 300, 400]):
        readings += series([value], start=T0 + day * 24 * HOUR + 8 * HOUR)
    agp = one(readings, spec=window(T0, T0 + 4 * 24 * HOUR)).document["agp"]
    b = 8 * 4  # the 08:00–08:15 bin
    assert agp["n"][b] == 4
    # h = 3p: p5 -> 100 + 0.15 * 100; p25 -> 100 + 0.75 * 100; p50 -> 200 + 0.5 * 100; ...
    assert [agp[k][b] for k in ("p5", "p25", "p50", "p75", "p95")] == pytest.approx([115, 175, 250, 325, 385])
    assert agp["p50"][b - 1] is None
    assert agp["n"][b - 1] == 0
    assert agp["minute"][b] == 480


def test_agp_bins_follow_the_patients_zone() -> None:
    readings = series([150], start=at("2024-01-10T08:00:00-05:00"))
    agp = one(readings, zone="America/New_York").document["agp"]
    assert agp["n"].index(1) == 8 * 4


def test_agp_one_four_one_smoothing_is_circular_and_skips_empty_neighbours() -> None:
    readings = series([100], start=T0 + 8 * HOUR) + series([200], start=T0 + 8 * HOUR + 15 * MIN)
    readings += series([50], start=T0 + 23 * HOUR + 45 * MIN) + series([150], start=T0)
    agp = one(readings, OutcomePolicy(agp_smoothing="1-4-1"), window(T0, T0 + 24 * HOUR)).document["agp"]
    assert agp["p50"][32] == pytest.approx((4 * 100 + 200) / 5)
    assert agp["p50"][33] == pytest.approx((100 + 4 * 200) / 5)
    assert agp["p50"][0] == pytest.approx((50 + 4 * 150) / 5)  # wraps to 23:45
    assert agp["p50"][95] == pytest.approx((150 + 4 * 50) / 5)
    assert agp["p50"][40] is None


def test_daily_traces_break_where_readings_are_more_than_short_gap_apart() -> None:
    readings = series([100, 110]) + series([120], start=T0 + 25 * MIN)  # 5 min then 20 min apart
    out = one(readings, spec=window(T0, T0 + HOUR), include_traces=True)
    (day,) = out.document["agp"]["days"]
    assert day["minute"] == [0.0, 5.0, None, 25.0]
    assert day["value"] == [100.0, 110.0, None, 120.0]
