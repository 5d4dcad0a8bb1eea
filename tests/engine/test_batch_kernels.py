"""The batch engine's exact kernels against plain code: the compiled AGP percentiles against the type-7 formula on
each bin's sorted values, the compiled statistics against a plain loop in reading order, the duplicate rule (the
exclusion pass's, as `group_winners` gives it to the store) against a plain walk over each stream."""

from __future__ import annotations

import dataclasses
import math
from datetime import date, timedelta
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import (
    GlucoseUnit,
    ReadingTable,
    SensorFlag,
    WindowSpec,
    classify_bands,
    classify_target,
    compute_cohort,
    group_winners,
    target_set,
)
from engine.cohort import _BANDS_MG, _BANDS_MMOL, _NO_ROWS, PERCENTILES, _days, _days_by_sorting, _risk, _statistics
from engine.kernels import compiled, warm
from engine.timezones import DAY_MS
from engine.units import MMOL_L_TO_MG_DL
from tests.engine.builders import HOUR as HOUR_MS
from tests.engine.builders import at, series

values = st.one_of(
    st.integers(1, 450).map(float),
    st.integers(10, 250).map(lambda x: x / 10 * 18.0156),
    st.floats(1e-3, 1e7, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 65535.0, 65536.0, 65536.5, 70000.0, 1e12]),
)


rows_and_values = st.integers(1, 6).flatmap(
    lambda n_rows: st.lists(st.tuples(st.integers(0, n_rows - 1), values), min_size=0, max_size=120).map(
        lambda pairs: (n_rows, pairs)
    )
)


#: Values as mmol/L sensors give them: tenths of a mmol/L, converted (the AGP kernel's counting sort takes these),
#: with now and then one value off that grid (so the patient's bins are sorted by comparison instead).
mmol_values = st.one_of(
    st.integers(10, 250).map(lambda x: x / 10 * MMOL_L_TO_MG_DL),
    st.integers(10, 250).map(lambda x: x / 10 * MMOL_L_TO_MG_DL),
    st.integers(10, 250).map(lambda x: x / 10 * MMOL_L_TO_MG_DL),
    st.integers(100, 2500).map(lambda x: x / 100 * MMOL_L_TO_MG_DL),
    st.integers(1, 450).map(float),
)
mmol_rows = st.integers(1, 3).flatmap(
    lambda n_rows: st.lists(st.tuples(st.integers(0, n_rows - 1), mmol_values), min_size=0, max_size=60).map(
        lambda pairs: (n_rows, pairs)
    )
)


@settings(max_examples=200, deadline=None)
@given(rows_and_values | mmol_rows, st.integers(1, 4))
def test_agp_kernel_gives_the_type_7_percentiles_of_each_bin(case: tuple[int, list[tuple[int, float]]],
                                                            n_bins: int) -> None:  # fmt: skip
    """Each (patient, bin)'s type-7 percentiles, bit for bit the method's formula (docs/outcomes-method.md §10) on
    that bin's values sorted: h = (n − 1) q, x[⌊h⌋] + (h − ⌊h⌋)(x[⌊h⌋ + 1] − x[⌊h⌋]). (numpy.percentile writes the
    same interpolation differently for h's fraction ≥ 0.5, so it may differ in the last bit.) A patient's values
    are sorted by counting (whole mg/dL, or tenths of a mmol/L converted) or by comparison (anything else)."""
    n_p, pairs = case
    pairs = sorted(pairs, key=lambda pair: pair[0])  # rows grouped by patient; times of day in any order
    p = np.array([k for k, _ in pairs], dtype=np.int32)
    mg = np.array([v for _, v in pairs], dtype=np.float64)
    slot = np.array([(i * 7919) % n_bins for i in range(len(pairs))], dtype=np.int32)
    counts = np.zeros(n_p * n_bins, dtype=np.int64)
    out = np.full((n_p * n_bins, len(PERCENTILES)), np.nan)
    compiled().agp(p, slot, mg, n_bins, np.array(PERCENTILES), MMOL_L_TO_MG_DL, counts, out, np.empty(p.shape[0]))
    row = p.astype(np.int64) * n_bins + slot
    assert counts.tolist() == np.bincount(row, minlength=n_p * n_bins).tolist()
    for r in range(n_p * n_bins):
        mine = mg[row == r]
        if mine.size == 0:
            assert np.isnan(out[r]).all()
            continue
        x = sorted(float(v) for v in mine)
        for j, q in enumerate(PERCENTILES):
            h = (len(x) - 1) * (q / 100.0)
            below = math.floor(h)
            above = min(below + 1, len(x) - 1)
            assert out[r, j] == x[below] + (h - below) * (x[above] - x[below])
        assert np.allclose(out[r], np.percentile(mine, PERCENTILES), rtol=1e-12)


@settings(max_examples=200, deadline=None)
@given(rows_and_values)
def test_statistics_kernel_gives_plain_sums_in_reading_order(case: tuple[int, list[tuple[int, float]]]) -> None:
    """Mean, SD, LBGI and HBGI per patient against a plain loop over each patient's readings in order."""
    n_p, pairs = case
    pairs = sorted(pairs, key=lambda pair: pair[0])  # the batch path groups rows by patient
    p = np.array([r for r, _ in pairs], dtype=np.int32)
    mg = np.array([v for _, v in pairs], dtype=np.float64)
    n_used = np.bincount(p, minlength=n_p).astype(np.int64)
    mean, sd, lbgi, hbgi = _statistics(p, mg, n_used)
    for k in range(n_p):
        mine = [float(v) for v in mg[p == k]]
        if not mine:
            assert np.isnan([mean[k], sd[k], lbgi[k], hbgi[k]]).all()
            continue
        total = 0.0
        for v in mine:
            total += v
        m = total / len(mine)
        squares = 0.0
        low = high = 0.0
        for v in mine:
            squares += (v - m) * (v - m)
            f = float(_risk(np.array([v]))[0])
            if f > 0:
                high += 10.0 * f * f
            else:
                low += 10.0 * f * f
        assert mean[k] == m
        assert (np.isnan(sd[k]) and len(mine) < 2) or sd[k] == math.sqrt(squares / (len(mine) - 1))
        # f is undefined below 1 mg/dL (NaN): then neither index exists.
        expected_high = math.nan if math.isnan(low) else high / len(mine)
        assert np.array_equal([lbgi[k], hbgi[k]], [low / len(mine), expected_high], equal_nan=True)


# MARK: the used readings


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([53.9, 54.0, 69.9, 70.0, 140.0, 180.0, 180.1, 250.0, 250.1, 2.9, 3.0, 3.9,
                                           10.0, 10.1, 13.9, 14.0, 3.5, 7.8, 7.9]) | values,
                          st.sampled_from([GlucoseUnit.MG_DL, GlucoseUnit.MMOL_L]),
                          st.sampled_from([SensorFlag.NONE, SensorFlag.LOW, SensorFlag.HIGH])), max_size=40),
       st.sampled_from(["standard", "pregnancy", "older"]))  # fmt: skip
def test_the_used_readings_pass_classifies_as_engine_bands(rows: list[tuple[float, int, int]], targets: str) -> None:
    """`_emit` classifies each reading inline; its bands, target classes, mg/dL values and counts are those of
    `engine.bands` (the rule, with its hand-computed tests) for every unit, flag and target set."""
    n = len(rows)
    value = np.array([v for v, _, _ in rows], dtype=np.float64)
    unit = np.array([u for _, u, _ in rows], dtype=np.int8)
    flag = np.array([f for _, _, f in rows], dtype=np.int8)
    target = target_set(targets)
    outs = (np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n, np.int64), np.empty(n, np.int32), np.empty(n),
            np.empty(n, np.int64), np.empty(n, np.int8), np.empty(n, np.int8))  # fmt: skip
    counts = np.zeros((1, 4), dtype=np.int64)
    written = compiled().emit(
        np.full(n, -1, dtype=np.int8), _NO_ROWS, 0, np.zeros(n, np.int32), np.arange(n, dtype=np.int64) * 300_000,
        np.zeros(n, np.int32), value, unit, flag, np.array([10**15]), np.array([300_000]), int(GlucoseUnit.MMOL_L),
        MMOL_L_TO_MG_DL, _BANDS_MG, _BANDS_MMOL, np.array([target.low_mg_dl, target.high_mg_dl]),
        np.array([target.low_mmol_l, target.high_mmol_l]), *outs, counts,
    )  # fmt: skip
    assert written == n
    position, _, _, _, mg, _, band, aim = outs
    assert position.tolist() == list(range(n))
    assert band.tolist() == classify_bands(value, unit, flag).tolist()
    assert aim.tolist() == classify_target(value, unit, flag, target).tolist()
    assert mg.tolist() == np.where(unit == GlucoseUnit.MMOL_L, value * MMOL_L_TO_MG_DL, value).tolist()
    is_mmol, low, high = unit == GlucoseUnit.MMOL_L, flag == SensorFlag.LOW, flag == SensorFlag.HIGH
    assert counts.tolist() == [[n, int(is_mmol.sum()), int(low.sum()), int(high.sum())]] if n else [[0, 0, 0, 0]]


# MARK: local days


def _block(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    """A block as `_days` sees it: rows grouped by patient, each patient's times ascending, in a zone of its own
    whose offset changes at up to two instants (as `engine.timezones.zone_rules` gives them)."""
    n_p = draw(st.integers(1, 4))
    offsets = st.sampled_from([-5 * HOUR_MS, -4 * HOUR_MS, 0, HOUR_MS, 330 * 60_000, 13 * HOUR_MS])
    p, t, w = [], [], []
    rule_start, transitions, offset_of = [0], [], []
    for k in range(n_p):
        changes = sorted(draw(st.lists(st.integers(0, 5 * DAY_MS), max_size=2, unique=True)))
        transitions += [np.iinfo(np.int64).min, *changes]
        offset_of += [draw(offsets) for _ in range(len(changes) + 1)]
        rule_start.append(len(transitions))
        n = draw(st.integers(0, 40))
        time = draw(st.integers(0, 3 * DAY_MS))
        for _ in range(n):
            time += draw(st.sampled_from([0, 60_000, 300_000, 900_000, 7 * HOUR_MS]))
            p.append(k)
            t.append(time)
            w.append(draw(st.sampled_from([0, 60_000, 300_000])))
    n = len(p)
    band = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    target = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    mg = draw(st.lists(values, min_size=n, max_size=n))
    rules = (np.array(rule_start, np.int64), np.array(transitions, np.int64), np.array(offset_of, np.int64))
    return (np.array(p, np.int32), np.array(t, np.int64), np.array(w, np.int64), np.array(band, np.int8),
            np.array(target, np.int8), np.array(mg, np.float64), rules, n_p)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.composite(_block)(), st.booleans(), st.sampled_from([5, 15, 60]))
def test_days_kernel_gives_the_days_of_grouping_by_sorting(block: tuple[Any, ...], by_time: bool, bin_min: int) -> None:
    """The compiled pass over a block's local times and days and the numpy grouping by sort (with a search per
    zone for the offsets) agree exactly on every field, the AGP slots included, whether or not a patient's local
    date steps back at an offset change."""
    p, t, w, band, target, mg, rules, n_p = block
    window_ms = np.full(int(n_p), 5 * DAY_MS, dtype=np.int64)
    zone_of = np.arange(n_p, dtype=np.int32)
    fast = _days(p, t, w, by_time, band, target, mg, window_ms, zone_of, rules, bin_min * 60_000)
    sorted_ = _days_by_sorting(p, t, w, by_time, band, target, mg, zone_of, rules, bin_min * 60_000)
    for field in dataclasses.fields(fast):
        a, b = getattr(fast, field.name), getattr(sorted_, field.name)
        assert a.dtype == b.dtype, field.name
        assert np.array_equal(a, b), field.name


def test_local_dates_that_step_back_at_midnight_are_grouped_by_date() -> None:
    """America/Santiago left summer time at 00:00 on 7 April 2024: local time went back to 23:00 on the 6th, so a
    patient's local dates step back (6, 7, 6, 7). The days are grouped by date all the same: 6 April holds 25 hours
    of readings (288 + 12 = 300 at 5 minutes), and each day's statistics are its own readings'."""
    start = at("2024-04-06T00:00:00-03:00")
    readings = series([100.0] * (25 * 12) + [200.0] * (24 * 12), start=start)
    table = ReadingTable.from_records(readings, default_zone="America/Santiago")
    spec = WindowSpec(start=start, end=at("2024-04-08T00:00:00-04:00"))
    result = compute_cohort(table, window=spec)
    assert [date(1970, 1, 1) + timedelta(days=int(d)) for d in result.day_number] == [date(2024, 4, 6),
                                                                                       date(2024, 4, 7)]  # fmt: skip
    assert result.day_readings.tolist() == [300, 288]
    assert result.day_mean_mg_dl.tolist() == [100.0, 200.0]
    assert result.day_active_ms.tolist() == [25 * HOUR_MS, 24 * HOUR_MS]
    assert result.days_of_wear.tolist() == [2]


def test_warming_compiles_every_kernel_with_the_types_the_batch_path_uses() -> None:
    """`warm()` (make setup, the container build) leaves nothing to compile at a process's first real cohort: the
    cohort adds no new signature to any kernel."""
    from bench.synth import synth_cohort  # noqa: PLC0415 - the bench's generator, for a realistic cohort

    warm()
    kernels = compiled()
    names = ("agp", "statistics", "days", "front", "ordered", "emit", "episodes", "class_sums", "untabled")
    before = {name: list(getattr(kernels, name).dispatcher.signatures) for name in names}
    assert all(len(sigs) == 1 for sigs in before.values()), before
    compute_cohort(synth_cohort(5, 3, seed=7))
    assert {name: list(getattr(kernels, name).dispatcher.signatures) for name in names} == before


# MARK: duplicates


def _plain_winners(t: list[int], stream: list[int], interval: int, source: list[int], received: list[int],
                   value: list[float]) -> list[int]:  # fmt: skip
    """§4.4 walked plainly: within a stream, a group is its earliest reading and every later one less than half the
    interval after it; the group keeps the reading first by (source, latest received, larger value, time, order)."""
    winner = list(range(len(t)))
    i = 0
    while i < len(t):
        group = [i]
        while (i + len(group) < len(t) and stream[i + len(group)] == stream[i]
               and 2 * (t[i + len(group)] - t[i]) < interval):  # fmt: skip
            group.append(i + len(group))
        best = min(group, key=lambda g: (source[g], -received[g], -value[g], t[g], g))
        for g in group:
            winner[g] = best
        i += len(group)
    return winner


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 40), st.integers(0, 3), st.integers(0, 3),
                          st.sampled_from([90.0, 91.0, 100.5])), max_size=60))  # fmt: skip
def test_the_duplicate_rule_keeps_the_reading_a_plain_walk_keeps(rows: list[tuple[int, int, int, int, float]]) -> None:
    """Readings seconds apart (a 300 s interval: 150 s groups), sources and receipt times that tie often."""
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    stream = [r[0] for r in rows]
    t = [r[1] * 20_000 for r in rows]
    source, received, value = [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows]
    got = group_winners(np.array(t, np.int64), np.array(stream, np.int32), np.full(len(rows), 300_000, np.int64),
                        np.array(source, np.int8), np.array(received, np.int64), np.array(value))  # fmt: skip
    assert got.tolist() == _plain_winners(t, stream, 300_000, source, received, value)
