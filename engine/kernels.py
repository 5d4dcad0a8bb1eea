"""Compiled per-reading loops of the batch path (numba), for steps whose numpy form needs a sort or many passes.

Each kernel is one sequential pass in reading order with the same floating-point operations, in the same order,
as the numpy code it replaced (no fast-math, no reassociation), so its results are bit-for-bit those of that
code; tests/engine/test_batch_kernels.py holds them to a plain reference. numba is imported, and the kernels compiled
(or loaded from numba's on-disk cache), on first use, so importing the engine stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]


def _agp_percentiles(row: I64, counts: I64, rank: I64, values: F64, quantiles: F64, out: F64) -> None:
    """Type-7 percentiles of each row's values: `out[r, j]` for `quantiles[j]` (in %) of the readings in row r.

    `rank` is each reading's index into `values` (the distinct values, ascending); `counts` the readings per row.
    Two stable counting sorts (by rank, then by row) leave each row's ranks in ascending order without a
    comparison; the order statistics are then read at the type-7 positions exactly as `numpy.percentile` would.
    """
    n = row.shape[0]
    n_rows = counts.shape[0]
    at = np.zeros(values.shape[0] + 1, dtype=np.int64)
    for i in range(n):
        at[rank[i] + 1] += 1
    for k in range(values.shape[0]):
        at[k + 1] += at[k]
    by_rank = np.empty(n, dtype=np.int64)
    for i in range(n):
        k = rank[i]
        by_rank[at[k]] = i
        at[k] += 1
    start = np.empty(n_rows + 1, dtype=np.int64)
    start[0] = 0
    for r in range(n_rows):
        start[r + 1] = start[r] + counts[r]
    fill = start[:-1].copy()
    ranked = np.empty(n, dtype=np.int64)
    for j in range(n):
        i = by_rank[j]
        r = row[i]
        ranked[fill[r]] = rank[i]
        fill[r] += 1
    for r in range(n_rows):
        m = counts[r]
        if m == 0:
            continue
        lo = start[r]
        for j in range(quantiles.shape[0]):
            h = (m - 1) * (quantiles[j] / 100.0)
            below = math.floor(h)
            above = min(below + 1, m - 1)
            x_lo = values[ranked[lo + below]]
            x_hi = values[ranked[lo + above]]
            out[r, j] = x_lo + (h - below) * (x_hi - x_lo)


def _statistics(
    p: NDArray[np.int32],
    mg: F64,
    n_used: I64,
    r_table: F64,
    high_table: NDArray[np.bool_],
    f_untabled: F64,
    out: F64,
) -> None:
    """Per patient (rows grouped by patient, in reading order): mean, SD, LBGI and HBGI into `out[:, 0..3]`.

    Every sum is added in reading order, in a local accumulator per patient. A whole value up to 1000 mg/dL
    (values are above 0) takes its risk r = 10 f² from the tables; any other takes f from `f_untabled` (computed
    by numpy beforehand, for exactly those values; empty when every value is tabled). A patient without readings
    gets NaN throughout (0 / 0).
    """
    for k in range(n_used.shape[0]):
        if n_used[k] == 0:
            out[k, 0] = math.nan
            out[k, 1] = math.nan
            out[k, 2] = math.nan
            out[k, 3] = math.nan
    n = p.shape[0]
    i = 0
    while i < n:
        k = p[i]
        j = i
        total = 0.0
        while j < n and p[j] == k:
            total += mg[j]
            j += 1
        count = j - i
        mean = total / count
        squares = 0.0
        low = 0.0
        high = 0.0
        for m in range(i, j):
            x = mg[m]
            dev = x - mean
            squares += dev * dev
            if x <= 1000.0 and x == math.floor(x):
                w = np.int64(x)
                if high_table[w]:
                    high += r_table[w]
                else:
                    low += r_table[w]
            else:
                f = f_untabled[m]
                if f > 0:
                    high += 10.0 * f * f
                else:
                    low += 10.0 * f * f
        out[k, 0] = mean
        out[k, 1] = math.sqrt(squares / (count - 1)) if count >= 2 else math.nan
        lbgi = low / count
        out[k, 2] = lbgi
        out[k, 3] = math.nan if math.isnan(lbgi) else high / count
        i = j


def _days(
    p: NDArray[np.int32],
    t: I64,
    local: I64,
    weight_ms: I64,
    weight: F64,
    band: NDArray[np.int8],
    target: NDArray[np.int8],
    mg: F64,
    day_ms: int,
    day_from_ms: int,
    time_of_day: I64,
    per_day: I64,
    day_num: I64,
    by_day: F64,
    day_mg: F64,
) -> int:
    """Local days, the weighted classes of each day and the activity union, in one pass over rows grouped by
    patient (each patient's rows in time order). Returns the number of days, or -1 when a patient's local date
    steps back (a DST change at midnight): the caller groups the days by sorting then.

    Returns -2, having stopped, when there are more days than `day_num` has room for (the caller's bound is wrong).

    Writes each reading's `time_of_day`; per day d: `per_day[d]` = (patient, readings, active ms, daytime
    readings), `day_num[d]` (local days since 1970-01-01), `by_day[d, c]` the summed weights of class c =
    (daytime × 5 + band) × 3 + target class, daytime being `time_of_day` ≥ `day_from_ms`, and `day_mg[d]` the
    summed values. Weights and times are whole numbers, so those sums are exact in any order; `day_mg` is added
    in reading order.
    """
    n = p.shape[0]
    d = -1
    covered = 0
    # The current day's sums, kept in locals and written when the day ends; a class's weights are summed over each
    # run of readings of that class first (whole numbers: the same sums in any order).
    readings = active = daytime_readings = 0
    mg_sum = 0.0
    run_class = -1
    run_weight = 0.0
    for i in range(n):
        dn = local[i] // day_ms
        tod = local[i] - dn * day_ms
        time_of_day[i] = tod
        new_patient = i == 0 or p[i] != p[i - 1]
        if new_patient or dn != day_num[d]:
            if not new_patient and dn < day_num[d]:
                return -1
            if d >= 0:
                per_day[d, 1], per_day[d, 2], per_day[d, 3], day_mg[d] = readings, active, daytime_readings, mg_sum
                by_day[d, run_class] += run_weight
            if d + 1 >= day_num.shape[0]:
                return -2
            d += 1
            day_num[d] = dn
            per_day[d, 0] = p[i]
            for c in range(by_day.shape[1]):
                by_day[d, c] = 0.0
            readings = active = daytime_readings = 0
            mg_sum = 0.0
            run_class = -1
            run_weight = 0.0
        start = t[i]
        end = start + weight_ms[i]
        if new_patient:
            covered = start
        active += max(end - max(covered, start), 0)
        covered = max(covered, end)
        daytime = 1 if tod >= day_from_ms else 0
        readings += 1
        daytime_readings += daytime
        cls = (daytime * 5 + band[i]) * 3 + target[i]
        if cls != run_class:
            if run_class >= 0:
                by_day[d, run_class] += run_weight
            run_class = cls
            run_weight = weight[i]
        else:
            run_weight += weight[i]
        mg_sum += mg[i]
    if d >= 0:
        per_day[d, 1], per_day[d, 2], per_day[d, 3], day_mg[d] = readings, active, daytime_readings, mg_sum
        by_day[d, run_class] += run_weight
    return d + 1


class _Compiled:
    agp_percentiles: Callable[[I64, I64, I64, F64, F64, F64], None]
    statistics: Callable[[NDArray[np.int32], F64, I64, F64, NDArray[np.bool_], F64, F64], None]
    days: Callable[..., int]


def warm() -> None:
    """Compile every kernel (or load it from numba's cache) with the types the batch path gives it, by computing
    one small cohort: `make setup` and the container build run it, so no process pays the compile at its first
    outcome (seconds of CPU each, in every process at once when the cache is cold)."""
    from engine.cohort import compute_cohort  # noqa: PLC0415 - engine.cohort imports this module
    from engine.readings import Reading, ReadingTable  # noqa: PLC0415 - only here
    from engine.units import GlucoseUnit  # noqa: PLC0415 - only here

    start = 1_704_067_200_000  # 2024-01-01T00:00:00Z
    readings = [Reading(patient_id=f"p{k}", time_ms=start + i * 300_000, value=90.0 + i + k * 0.5,
                        unit=GlucoseUnit.MG_DL) for k in range(2)
                for i in range(24)]  # fmt: skip
    compute_cohort(ReadingTable.from_records(readings))


def _read_only(a: Any) -> Any:
    """An array as a read-only view (no copy); anything else as it is."""
    if not isinstance(a, np.ndarray) or not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


@cache
def compiled() -> _Compiled:
    """The kernels, compiled by numba (cached on disk beside this file, or in numba's user cache).

    numba compiles one machine-code version per kind of argument, and an array's kind includes whether it is
    writable. The batch path's inputs are sometimes the table's frozen columns and sometimes copies, so every input
    is passed as a read-only view: one version per kernel, which `warm()` compiles ahead.
    """
    import numba  # noqa: PLC0415 - imported on first use: ~0.3 s that importing the engine should not pay

    def jit(fn: Callable[..., Any], inputs: int) -> Any:
        machine = numba.njit(cache=True, nogil=True, error_model="numpy")(fn)

        def call(*args: Any) -> Any:
            return machine(*(_read_only(a) if i < inputs else a for i, a in enumerate(args)))

        call.dispatcher = machine  # type: ignore[attr-defined]  # numba's own, for its compiled signatures
        return call

    out = _Compiled()
    out.agp_percentiles = jit(_agp_percentiles, inputs=5)
    out.statistics = jit(_statistics, inputs=6)
    out.days = jit(_days, inputs=10)
    return out
