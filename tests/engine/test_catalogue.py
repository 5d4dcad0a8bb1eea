"""The metric catalogue: one rounding, from the canonical value, to a decimal string that survives a JSON round trip.

Each case states its arithmetic. The issue this answers: TAR 181–250 of 32.4468 % was shown as 32.4 %, planned as
32.5 % (32.4468 → 32.45 → 32.5, rounded twice) and stored as 32.45 %; a mean of 167.58 mg/dL was signed as 168
and filed as 167.58; a plain SMART server received 122.69834490122798 mg/dL.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.catalogue import (
    BANDS,
    CATALOGUE,
    GLUCOBRIDGE_CODES,
    LOINC,
    METRICS,
    MMOL_L,
    as_json_number,
    by_code,
    canonical,
    filed,
    metric,
    text,
)


def test_a_value_is_rounded_once_from_the_canonical_value() -> None:
    # 32.4468 → one decimal, half up → 32.4 (never 32.4468 → 32.45 → 32.5).
    assert filed(metric("tar_l1"), {"time_181_250_pct": 32.4468}) == Decimal("32.4")
    # 65.05 → 65.1: half up on the shortest repr of the float, not on its binary value (65.04999…).
    assert filed(metric("tbr_l1"), {"time_54_69_pct": 65.05}) == Decimal("65.1")
    # 167.58 mg/dL → whole mg/dL → 168.
    assert filed(metric("mean_glucose"), {"mean_mg_dl": 167.58}) == Decimal("168")


def test_mmol_l_is_converted_from_the_canonical_mg_dl_then_rounded_once() -> None:
    # 122.69834490122798 mg/dL ÷ 18.0156 = 6.81067… mmol/L → 6.8.
    assert filed(metric("mean_glucose"), {"mean_mg_dl": 122.69834490122798}, MMOL_L) == Decimal("6.8")
    # 153.5 mg/dL ÷ 18.0156 = 8.52039… → 8.5; not 154 mg/dL → 8.548… → 8.5 by way of a rounded mg/dL.
    assert filed(metric("mean_glucose"), {"mean_mg_dl": 153.5}, MMOL_L) == Decimal("8.5")
    assert filed(metric("mean_glucose"), {"mean_mg_dl": 153.5}) == Decimal("154")


def test_time_in_range_is_the_consensus_band_whatever_the_targets() -> None:
    # 100 − 12.34 (below 70) − 20.01 (above 180) = 67.65 → 67.7 (the policy's own target range is not used).
    metrics = {"time_below_70_pct": 12.34, "time_above_180_pct": 20.01, "time_in_range_pct": 99.0}
    assert canonical(metric("tir"), metrics) == Decimal("67.65")
    assert filed(metric("tir"), metrics) == Decimal("67.7")


def test_missing_or_non_finite_values_are_none_never_zero() -> None:
    assert filed(metric("gmi"), {}) is None
    assert filed(metric("gmi"), {"gmi_pct": float("nan")}) is None
    assert filed(metric("tir"), {"time_below_70_pct": 3.0}) is None
    assert text(metric("gmi"), None) == "—"


def test_text_names_the_unit_as_a_clinician_reads_it() -> None:
    assert text(metric("tir"), Decimal("73.6")) == "73.6 %"
    assert text(metric("mean_glucose"), Decimal("168")) == "168 mg/dL"
    assert text(metric("mean_glucose"), Decimal("9.3"), MMOL_L) == "9.3 mmol/L"
    assert text(metric("days_of_wear"), Decimal("14")) == "14 days"
    assert text(metric("gri"), Decimal("41.2")) == "41.2"


def test_goals_in_each_unit() -> None:
    assert metric("tir").goal_text() == ">70 %"
    assert metric("tbr_l2").goal_text() == "<1 %"
    assert metric("cv").goal_text() == "≤36 %"
    assert metric("mean_glucose").goal_text() == "<154 mg/dL"
    assert metric("mean_glucose").goal_text(MMOL_L) == "<8.6 mmol/L"  # as published, not 154 ÷ 18.0156 = 8.5


@given(st.decimals(min_value=0, max_value=1000, places=1, allow_nan=False, allow_infinity=False))
def test_one_decimal_survives_a_json_round_trip_as_the_same_string(value: Decimal) -> None:
    text_in = str(value)
    number = as_json_number(value)
    assert json.dumps(number) == text_in
    assert str(json.loads(json.dumps(number))) == text_in


@given(st.integers(min_value=0, max_value=100_000))
def test_whole_numbers_stay_whole(value: int) -> None:
    assert json.dumps(as_json_number(Decimal(value))) == str(value)


def test_two_decimals_are_refused_because_their_trailing_zero_would_be_lost() -> None:
    with pytest.raises(ValueError, match="more than one decimal"):
        as_json_number(Decimal("32.40"))


def test_every_metric_files_at_most_one_decimal_in_every_unit() -> None:
    for m in METRICS:
        for places in m.decimals.values():
            assert 0 <= places <= 1, m.key


def test_codes_are_unique_and_found_back() -> None:
    seen: set[tuple[str, str]] = set()
    for m in METRICS:
        for slot, code in m.codes.items():
            assert (code.system, code.code) not in seen
            seen.add((code.system, code.code))
            assert by_code(code.system, code.code) == (m, slot or "mg/dL")
    assert by_code(LOINC, "97506-0") == (CATALOGUE["gmi"], "mg/dL")
    assert by_code(LOINC, "105273-7") == (CATALOGUE["mean_glucose"], MMOL_L)
    assert by_code(GLUCOBRIDGE_CODES, "gri") == (CATALOGUE["gri"], "mg/dL")
    assert by_code(LOINC, "0000-0") is None


def test_the_five_bands_are_the_igs_times_in_ranges_in_order() -> None:
    codes = [metric(k).code() for k in BANDS]
    assert [c.code for c in codes if c] == ["104642-4", "104641-6", "97510-2", "104640-8", "104639-0"]
