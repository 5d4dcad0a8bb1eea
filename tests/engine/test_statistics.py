"""Mean, SD, CV, GMI, GRI, LBGI/HBGI from the readings used: docs/outcomes-method.md §8."""

from __future__ import annotations

import pytest

from engine import OutcomePolicy
from engine.report import gri_zone
from tests.engine.builders import MIN, T0, one, series, window


def test_hand_computed_statistics() -> None:
    out = one(series([50, 100, 150, 200]), OutcomePolicy(method="count"), window(T0, T0 + 60 * MIN))
    m = out.metrics
    assert m["mean_mg_dl"] == 125.0
    # deviations -75, -25, 25, 75: (5625 + 625 + 625 + 5625) / 3 = 4166.67; sqrt = 64.5497...
    assert m["sd_mg_dl"] == pytest.approx(64.54972243679029, rel=1e-12)
    assert m["cv_pct"] == pytest.approx(51.63977794943223, rel=1e-12)
    assert m["gmi_pct"] == pytest.approx(3.31 + 0.02392 * 125, rel=1e-12)  # 6.30
    # GRI = 3.0 * 25 (<54) + 2.4 * 0 + 1.6 * 0 (>250) + 0.8 * 25 (181–250) = 95 -> zone E
    assert m["gri"] == pytest.approx(95.0, rel=1e-12)
    assert m["gri_zone"] == "E"
    # r(g) = 10 f², f = 1.509 ((ln g)^1.084 − 5.381): r(50) = 22.50045, r(100) = 0.48205 (f < 0);
    # r(150) = 2.88565, r(200) = 11.60475 (f > 0). LBGI = (22.50045 + 0.48205) / 4; HBGI = (2.88565 + 11.60475) / 4.
    assert m["lbgi"] == pytest.approx((22.50044545257435 + 0.48205112540885015) / 4, rel=1e-12)
    assert m["hbgi"] == pytest.approx((2.8856539156766288 + 11.604748122963338) / 4, rel=1e-12)


def test_statistics_are_by_count_even_with_the_time_method() -> None:
    # A 25-minute gap after the first reading does not weigh the mean.
    readings = series([100], start=T0) + series([200, 200], start=T0 + 30 * MIN)
    m = one(readings, OutcomePolicy(method="time"), window(T0, T0 + 60 * MIN)).metrics
    assert m["mean_mg_dl"] == pytest.approx(500 / 3, rel=1e-12)


def test_single_reading_has_no_sd_or_cv() -> None:
    m = one(series([120]), spec=window(T0, T0 + 60 * MIN)).metrics
    assert m["sd_mg_dl"] is None
    assert m["cv_pct"] is None
    assert m["mean_mg_dl"] == 120.0


def test_gri_is_capped_at_100() -> None:
    m = one(series([40, 45]), OutcomePolicy(method="count"), window(T0, T0 + 60 * MIN)).metrics
    assert m["gri"] == 100.0  # 3.0 * 100 = 300 -> 100


@pytest.mark.parametrize(
    ("gri", "zone"), [(0.0, "A"), (20.0, "A"), (20.01, "B"), (40.0, "B"), (60.0, "C"), (80.0, "D"), (80.1, "E")]
)
def test_gri_zones(gri: float, zone: str) -> None:
    assert gri_zone(gri) == zone


def test_no_readings_gives_nulls_and_insufficient() -> None:
    out = one(series([100], start=T0 - 10 * MIN), spec=window(T0, T0 + 60 * MIN))
    m = out.metrics
    assert m["readings_used"] == 0
    for key in ("time_in_range_pct", "mean_mg_dl", "sd_mg_dl", "gmi_pct", "gri", "lbgi"):
        assert m[key] is None
    assert m["sensor_active_pct"] == 0.0
    assert m["sufficient"] is False
    assert out.document["gaps"] == [
        {"start": "2024-03-01T00:00:00+00:00", "end": "2024-03-01T01:00:00+00:00", "minutes": 60.0}
    ]
