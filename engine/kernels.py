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


def _agp(
    p: NDArray[np.int32],
    time_of_day: I64,
    mg: F64,
    bin_ms: int,
    n_bins: int,
    quantiles: F64,
    counts: I64,
    out: F64,
    scratch: F64,
) -> None:
    """Type-7 percentiles of each patient's values per local time-of-day bin, for rows grouped by patient.

    `counts` (patients × bins, zeros) gets the readings of each bin; `out[row, j]` (row = patient × n_bins + bin,
    NaN beforehand) the `quantiles[j]` (in %) of that bin's values, read from the bin's values in ascending order
    at the type-7 positions: h = (m − 1) q, x[⌊h⌋] + (h − ⌊h⌋)(x[⌊h⌋ + 1] − x[⌊h⌋]). Ties are equal values, so
    their order does not matter.

    Per patient the values are put in bin order into `scratch` (as long as the rows), each bin's in ascending
    order: when they are whole numbers within a narrow span (whole mg/dL, as most sensors report), by a counting
    sort by value then a stable one by bin, without a comparison; otherwise by bin, then each bin sorted.
    """
    n = p.shape[0]
    fill = np.empty(n_bins, dtype=np.int64)
    by_value = np.empty(_SPAN, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    bin_of = np.empty(n, dtype=np.int64)
    i = 0
    while i < n:
        base = np.int64(p[i]) * n_bins
        low = math.inf
        high = -math.inf
        whole = True
        j = i
        while j < n and p[j] == p[i]:
            b = time_of_day[j] // bin_ms
            bin_of[j] = b
            counts[base + b] += 1
            x = mg[j]
            whole = whole and x == math.floor(x)
            low = min(low, x)
            high = max(high, x)
            j += 1
        at = 0
        for b in range(n_bins):
            fill[b] = at
            at += counts[base + b]
        counted = whole and high - low < _SPAN  # each bin's values come out sorted
        if counted:
            v0 = np.int64(low)
            span = np.int64(high) - v0 + 1
            by_value[:span] = 0
            for m in range(i, j):
                by_value[np.int64(mg[m]) - v0] += 1
            at = i
            for v in range(span):
                c = by_value[v]
                by_value[v] = at
                at += c
            for m in range(i, j):
                rank = np.int64(mg[m]) - v0
                order[by_value[rank]] = m
                by_value[rank] += 1
            for o in range(i, j):
                m = order[o]
                b = bin_of[m]
                scratch[fill[b]] = mg[m]
                fill[b] += 1
        else:
            for m in range(i, j):
                b = bin_of[m]
                scratch[fill[b]] = mg[m]
                fill[b] += 1
        for b in range(n_bins):
            size = counts[base + b]
            if size == 0:
                continue
            lo = fill[b] - size
            if not counted:
                scratch[lo : lo + size].sort()
            for q in range(quantiles.shape[0]):
                h = (size - 1) * (quantiles[q] / 100.0)
                below = math.floor(h)
                above = min(below + 1, size - 1)
                x_lo = scratch[lo + below]
                x_hi = scratch[lo + above]
                out[base + b, q] = x_lo + (h - below) * (x_hi - x_lo)
        i = j


#: The widest span of whole values `_agp` sorts by counting (glucose in mg/dL spans a few hundred).
_SPAN = 4096


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


def _front(
    p: NDArray[np.int32],
    t: I64,
    s: NDArray[np.int32],
    value: F64,
    unit: NDArray[np.int8],
    session: I64,
    source: NDArray[np.int8],
    received: I64,
    ambiguous: NDArray[np.bool_],
    w_start: I64,
    w_end: I64,
    interval_of: I64,
    warmup_of: I64,
    break_of: I64,
    mmol_code: int,
    mmol_factor: float,
    no_time: int,
    prepared: bool,
    infer: bool,
    reason: NDArray[np.int8],
    group: I64,
    copy_of: I64,
    used: I64,
    mg: F64,
    weight_ms: I64,
    excluded: I64,
    n_ambiguous: I64,
) -> int:
    """The window and the exclusions of docs/outcomes-method.md §4, and the time weights of §7, in two passes over
    a block's rows in (patient, stream, time) order. Returns the number of readings used.

    Per row, `reason` (scratch) becomes -2 outside its patient's window [w_start, w_end), -1 used, or the exclusion:
    0 before its known session start, 1 in that session's warm-up, 2 in an inferred warm-up (a stream's first
    unknown-session reading and each one after a session-break gap start a session), 3 a duplicate (§4.4: within a
    stream a group starts at its earliest reading and takes each later one less than half the interval after it;
    the group keeps one by source precedence, then latest received, then larger value, then earlier time, then
    input order: `engine.dedupe`'s rule). `prepared` rows are all used (an outcome's own raw data).

    Writes, per used reading in order: `used` (its row), `mg` (its value in mg/dL) and `weight_ms` (the time to the
    next used reading of its stream, capped by the nominal interval and its window's end); per row `copy_of`, the row
    kept in its place (itself unless a duplicate); per patient the `excluded` counts by reason and the `n_ambiguous`
    readings inside the window. `group` is scratch. `engine.dedupe.group_winners` is this pass with no window and
    no session, so the store's reconciliation keeps the same reading as the engine.
    """
    n = p.shape[0]
    inf_s = -1
    inf_prev = 0
    inf_anchor = 0
    g_len = 0
    g_s = -1
    g_t0 = 0
    for i in range(n + 1):
        joins = False
        if i < n:
            copy_of[i] = i
            k = p[i]
            ti = t[i]
            if ti < w_start[k] or ti >= w_end[k]:
                reason[i] = -2
                continue
            if ambiguous[i]:
                n_ambiguous[k] += 1
            si = s[i]
            r = -1
            if not prepared:
                start = session[i]
                if start != no_time:
                    if ti < start:
                        r = 0
                    elif ti < start + warmup_of[si]:
                        r = 1
                elif infer:
                    if si != inf_s or ti - inf_prev >= break_of[si]:
                        inf_anchor = ti
                    inf_s = si
                    inf_prev = ti
                    if ti < inf_anchor + warmup_of[si]:
                        r = 2
            reason[i] = r
            if r >= 0:
                excluded[k, r] += 1
                continue
            if prepared:
                continue
            joins = g_len > 0 and si == g_s and 2 * (ti - g_t0) < interval_of[si]
        if joins:
            group[g_len] = i
            g_len += 1
            continue
        if g_len > 1:  # settle the group that ends here: one reading kept
            best = group[0]
            for m in range(1, g_len):
                j = group[m]
                if source[j] != source[best]:
                    better = source[j] < source[best]
                elif received[j] != received[best]:
                    better = received[j] > received[best]
                else:
                    vj = value[j] * mmol_factor if unit[j] == mmol_code else value[j]
                    vb = value[best] * mmol_factor if unit[best] == mmol_code else value[best]
                    better = vj > vb  # equal values: the earlier reading (time, then input order) stays
                if better:
                    best = j
            for m in range(g_len):
                j = group[m]
                copy_of[j] = best
                if j != best:
                    reason[j] = 3
                    excluded[p[j], 3] += 1
        if i < n:
            group[0] = i
            g_len = 1
            g_s = s[i]
            g_t0 = t[i]
    count = 0
    last = -1
    cap = 0
    for i in range(n):
        if reason[i] != -1:
            continue
        if last >= 0:
            to_next = t[i] - t[last] if s[i] == s[last] else cap
            weight_ms[count - 1] = min(to_next, cap)
        used[count] = i
        mg[count] = value[i] * mmol_factor if unit[i] == mmol_code else value[i]
        cap = min(interval_of[s[i]], w_end[p[i]] - t[i])
        count += 1
        last = i
    if last >= 0:
        weight_ms[count - 1] = cap
    return count


class _Compiled:
    agp: Callable[..., None]
    statistics: Callable[[NDArray[np.int32], F64, I64, F64, NDArray[np.bool_], F64, F64], None]
    days: Callable[..., int]
    front: Callable[..., int]


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
    out.agp = jit(_agp, inputs=6)
    out.statistics = jit(_statistics, inputs=6)
    out.days = jit(_days, inputs=10)
    out.front = jit(_front, inputs=19)
    return out
