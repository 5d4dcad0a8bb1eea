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

from engine.timezones import DAY_MS

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]


def _agp(
    p: NDArray[np.int32],
    slot: NDArray[np.int32],
    mg: F64,
    n_bins: int,
    quantiles: F64,
    mmol_factor: float,
    counts: I64,
    out: F64,
    scratch: F64,
) -> None:
    """Type-7 percentiles of each patient's values per local time-of-day bin (`slot`, from `_days`), for rows
    grouped by patient.

    `counts` (patients × bins, zeros) gets the readings of each bin; `out[row, j]` (row = patient × n_bins + bin,
    NaN beforehand) the `quantiles[j]` (in %) of that bin's values, read from the bin's values in ascending order
    at the type-7 positions: h = (m − 1) q, x[⌊h⌋] + (h − ⌊h⌋)(x[⌊h⌋ + 1] − x[⌊h⌋]). Ties are equal values, so
    their order does not matter.

    Per patient the values are put in bin order into `scratch` (as long as the rows), each bin's in ascending
    order: when they are whole numbers of a step within a narrow span (whole mg/dL, or 0.1 mmol/L converted by
    `mmol_factor`, as sensors report), by a counting sort by that number then a stable one by bin, without a
    comparison; otherwise by bin, then each bin sorted.
    """
    n = p.shape[0]
    fill = np.empty(n_bins, dtype=np.int64)
    by_value = np.empty(_SPAN, dtype=np.int64)
    order = np.empty(n, dtype=np.int32)  # a patient's slots in value order
    key = np.empty(n, dtype=np.int64)  # each value's number of steps (from the patient's lowest)
    per_tenth = 10.0 / mmol_factor
    i = 0
    while i < n:
        base = np.int64(p[i]) * n_bins
        low = math.inf
        high = -math.inf
        whole = True
        j = i
        while j < n and p[j] == p[i]:
            counts[base + slot[j]] += 1
            x = mg[j]
            whole = whole and x == math.floor(x)
            low = min(low, x)
            high = max(high, x)
            j += 1
        at = 0
        for b in range(n_bins):
            fill[b] = at
            at += counts[base + b]
        # Each bin's values come out sorted when every value is a whole number of some step (1 mg/dL, or 0.1 mmol/L
        # converted: (k / 10) × `mmol_factor`, exactly as the conversion gives it) within a narrow span: a counting
        # sort by that number then a stable one by bin.
        counted = whole and high - low < _SPAN
        k0 = np.int64(low) if counted else np.int64(0)
        on_grid = False
        if not whole:
            k_low = np.int64(1) << 62
            k_high = -k_low
            on_grid = True
            for m in range(i, j):
                x = mg[m]
                steps = x * per_tenth
                k = np.int64(math.floor(steps + 0.5)) if steps < 1e15 else np.int64(0)  # the nearest step; checked
                if (k / 10.0) * mmol_factor != x:
                    on_grid = False
                    break
                key[m] = k
                k_low = min(k_low, k)
                k_high = max(k_high, k)
            on_grid = on_grid and bool(k_high - k_low < _SPAN)
            counted = on_grid
            k0 = k_low
        if counted:
            span = (np.int64(high) if whole else k_high) - k0 + 1
            by_value[:span] = 0
            for m in range(i, j):
                r = (np.int64(mg[m]) if whole else key[m]) - k0
                key[m] = r
                by_value[r] += 1
            at = i
            for v in range(span):
                c = by_value[v]
                by_value[v] = at
                at += c
            for m in range(i, j):  # the slots in value order; a value is its bucket's
                r = key[m]
                order[by_value[r]] = slot[m]
                by_value[r] += 1
            start = i
            for v in range(span):  # by_value[v] is now where bucket v ends
                x = float(k0 + v) if whole else ((k0 + v) / 10.0) * mmol_factor
                for o in range(start, by_value[v]):
                    b = order[o]
                    scratch[fill[b]] = x
                    fill[b] += 1
                start = by_value[v]
        else:
            for m in range(i, j):
                b = slot[m]
                scratch[fill[b]] = mg[m]
                fill[b] += 1
        for b in range(n_bins):
            size = counts[base + b]
            if size == 0:
                continue
            lo = fill[b] - size
            if not counted:  # a bin holds a reading a day: an insertion sort beats a general one at this size
                for u in range(lo + 1, lo + size):
                    x = scratch[u]
                    v = u - 1
                    while v >= lo and scratch[v] > x:
                        scratch[v + 1] = scratch[v]
                        v -= 1
                    scratch[v + 1] = x
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
    r_low: F64,
    r_high: F64,
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
                low += r_low[w]  # r or 0.0: adding 0.0 to a sum that started at +0.0 changes nothing
                high += r_high[w]
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
    weight_ms: I64,
    by_time: bool,
    band: NDArray[np.int8],
    target: NDArray[np.int8],
    mg: F64,
    zone_of: NDArray[np.int32],
    rule_start: I64,
    transitions: I64,
    offsets: I64,
    day_from_ms: int,
    bin_ms: int,
    slot: NDArray[np.int32],
    per_day: I64,
    day_num: I64,
    by_day: F64,
    day_mg: F64,
) -> int:
    """Local times, local days, the weighted classes of each day and the activity union, in one pass over rows
    grouped by patient (each patient's rows in time order). Returns the number of days, or -1 when a patient's
    local date steps back (a DST change at midnight): the caller groups the days by sorting then.

    Returns -2, having stopped, when there are more days than `day_num` has room for (the caller's bound is wrong).

    A reading's local time is its instant plus its zone's offset: `zone_of[p]` names the patient's zone, whose
    transition instants and the offset in force from each are `transitions`/`offsets[rule_start[z]:rule_start[z +
    1]]` (`engine.timezones.zone_rules`; the first transition is the int64 minimum). A patient's first offset is
    found by binary search, each next by stepping over the transitions passed (searching again if time steps back).

    Writes each reading's AGP `slot` (its local time of day // `bin_ms`); per day d: `per_day[d]` = (patient,
    readings, active ms, daytime readings), `day_num[d]` (local days since 1970-01-01), `by_day[d, c]` the summed
    weights of class c = (daytime × 5 + band) × 3 + target class, daytime being a time of day ≥ `day_from_ms`, and
    `day_mg[d]` the summed values. A reading weighs its `weight_ms` when `by_time`, else 1. Weights and times are
    whole numbers, so those sums are exact in any order; `day_mg` is added in reading order.
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
    per_ms = 1.0 / bin_ms  # a slot by multiplying, corrected to the exact quotient (a division costs ~40 cycles)
    k = rules_end = 0
    for i in range(n):
        ti = t[i]
        new_patient = i == 0 or p[i] != p[i - 1]
        if new_patient or ti < t[i - 1]:
            z = zone_of[p[i]]
            low, rules_end = rule_start[z], rule_start[z + 1]  # the last transition at or before ti: binary search
            high = rules_end
            while high - low > 1:
                mid = (low + high) // 2
                if transitions[mid] <= ti:
                    low = mid
                else:
                    high = mid
            k = low
        while k + 1 < rules_end and transitions[k + 1] <= ti:
            k += 1
        local = ti + offsets[k]
        dn = local // DAY_MS  # a constant to the compiler: a multiplication, not a division
        tod = local - dn * DAY_MS
        q = int(tod * per_ms)  # 0 ≤ tod < a day: the float product is within one of tod // bin_ms
        if q * bin_ms > tod:
            q -= 1
        elif (q + 1) * bin_ms <= tod:
            q += 1
        slot[i] = q
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
        w = float(weight_ms[i]) if by_time else 1.0
        if cls != run_class:
            if run_class >= 0:
                by_day[d, run_class] += run_weight
            run_class = cls
            run_weight = w
        else:
            run_weight += w
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
    excluded: I64,
    n_ambiguous: I64,
) -> None:
    """The window and the exclusions of docs/outcomes-method.md §4 in one pass over a block's rows in (patient,
    stream, time) order; `_emit` then takes the readings used.

    Per row, `reason` becomes -2 outside its patient's window [w_start, w_end), -1 used, or the exclusion:
    0 before its known session start, 1 in that session's warm-up, 2 in an inferred warm-up (a stream's first
    unknown-session reading and each one after a session-break gap start a session), 3 a duplicate (§4.4: within a
    stream a group starts at its earliest reading and takes each later one less than half the interval after it;
    the group keeps one by source precedence, then latest received, then larger value, then earlier time, then
    input order: `engine.dedupe`'s rule). `prepared` rows are all used (an outcome's own raw data).

    Writes per row `copy_of`, the row kept in its place (itself unless a duplicate); per patient the `excluded`
    counts by reason and the `n_ambiguous` readings inside the window. `group` is scratch.
    `engine.dedupe.group_winners` is this pass with no window and no session, so the store's reconciliation keeps
    the same reading as the engine.
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


def _ordered(p: NDArray[np.int32], s: NDArray[np.int32], t: I64) -> bool:
    """Whether the rows are in (patient, stream, time) order (ties allowed)."""
    for i in range(1, p.shape[0]):
        if p[i] != p[i - 1]:
            if p[i] < p[i - 1]:
                return False
        elif s[i] != s[i - 1]:
            if s[i] < s[i - 1]:
                return False
        elif t[i] < t[i - 1]:
            return False
    return True


def _emit(
    reason: NDArray[np.int8],
    rows: I64,
    lo: int,
    p: NDArray[np.int32],
    t: I64,
    s: NDArray[np.int32],
    value: F64,
    unit: NDArray[np.int8],
    flag: NDArray[np.int8],
    w_end: I64,
    interval_of: I64,
    mmol_code: int,
    mmol_factor: float,
    bands_mg: F64,
    bands_mmol: F64,
    target_mg: F64,
    target_mmol: F64,
    position: I64,
    p_out: NDArray[np.int32],
    t_out: I64,
    s_out: NDArray[np.int32],
    mg: F64,
    weight_ms: I64,
    band: NDArray[np.int8],
    target: NDArray[np.int8],
    counts: I64,
) -> int:
    """The readings `_front` left used (`reason` -1), in order, with their time weights (§7) and classes (§5), in
    one pass. Returns how many; negative (minus that) when they are not in (patient, time) order, a patient's
    streams interleaving: the caller merges them.

    Writes per used reading its `position` (its row in the table: `rows[i]`, or `lo + i` when `rows` is empty),
    patient, time, stream, value in mg/dL, `weight_ms` (the time to the next used reading of its
    stream, capped by the nominal interval and its window's end), band and target class (`engine.bands`: in the
    reading's own unit; a LOW flag is very low and below target, a HIGH flag very high and above); per patient
    `counts[k]` += (readings, readings in mmol/L, LOW flags, HIGH flags).
    """
    # Scalars, not arrays, in the loop: assigning an array variable there costs a reference count per reading.
    g0, g1, g2, g3 = bands_mg[0], bands_mg[1], bands_mg[2], bands_mg[3]
    l0, l1, l2, l3 = bands_mmol[0], bands_mmol[1], bands_mmol[2], bands_mmol[3]
    tg0, tg1, tl0, tl1 = target_mg[0], target_mg[1], target_mmol[0], target_mmol[1]
    ordered = True
    count = 0
    cap = 0
    held = -1  # the patient whose counts are summed in locals (rows are grouped by patient)
    n_all = n_mmol = n_low = n_high = 0
    for i in range(reason.shape[0]):
        if reason[i] != -1:
            continue
        pk = p[i]
        tk = t[i]
        sk = s[i]
        if pk != held:
            if held >= 0:
                counts[held, 0] += n_all
                counts[held, 1] += n_mmol
                counts[held, 2] += n_low
                counts[held, 3] += n_high
            held = pk
            n_all = n_mmol = n_low = n_high = 0
        if count > 0:
            to_next = tk - t_out[count - 1] if sk == s_out[count - 1] else cap
            weight_ms[count - 1] = min(to_next, cap)
            if pk == p_out[count - 1] and tk < t_out[count - 1]:
                ordered = False
        position[count] = rows[i] if rows.shape[0] else lo + i
        p_out[count] = pk
        t_out[count] = tk
        s_out[count] = sk
        cap = min(interval_of[sk], w_end[pk] - tk)
        v = value[i]
        mmol = unit[i] == mmol_code
        if mmol:
            mg[count] = v * mmol_factor
            b = (v >= l0) + (v >= l1) + (v > l2) + (v > l3)
            c = (v >= tl0) + (v > tl1)
        else:
            mg[count] = v
            b = (v >= g0) + (v >= g1) + (v > g2) + (v > g3)
            c = (v >= tg0) + (v > tg1)
        f = flag[i]
        n_all += 1
        n_mmol += mmol
        if f == 1:
            b = 0
            c = 0
            n_low += 1
        elif f == 2:
            b = 4
            c = 2
            n_high += 1
        band[count] = b
        target[count] = c
        count += 1
    if count > 0:
        weight_ms[count - 1] = cap
        counts[held, 0] += n_all
        counts[held, 1] += n_mmol
        counts[held, 2] += n_low
        counts[held, 3] += n_high
    return count if ordered else -count


def _episodes(
    n_used: I64,
    t: I64,
    weight_ms: I64,
    s: NDArray[np.int32],
    interval_of: I64,
    band: NDArray[np.int8],
    has_window: NDArray[np.bool_],
    w_start: I64,
    w_end: I64,
    long_gap_ms: int,
    short_gap_ms: int,
    min_ms: int,
    recovery_ms: int,
    gap_p: NDArray[np.int32],
    gap_s: I64,
    gap_e: I64,
    ev_p: NDArray[np.int32],
    ev_level: NDArray[np.int8],
    ev_s: I64,
    ev_e: I64,
    held_s: I64,
    held_e: I64,
) -> tuple[int, int]:
    """§10 gaps and hypoglycaemia events of each patient, in one pass over rows grouped by patient, each patient's
    in time order. Returns (gaps, events) written: gaps in (patient, start) order (room for n + 2 × patients),
    events in (patient, level, start) order (room for 2n; `held_s`/`held_e`, 2 × n, hold a patient's events of each
    level until its readings end).

    Gaps: a patient with a window and no reading, the whole window; otherwise the lead from the window start to the
    first reading, each interior step, and the tail from the end of the readings' time (the latest t + weight) to
    the window end, when ≥ `long_gap_ms`.

    Events, at level 1 (< 70 mg/dL) and level 2 (< 54): a patient's readings split into segments where a step
    exceeds max(short gap, the earlier reading's stream interval); within a segment, runs of one state: 0 below
    the level's bound, 1 between (level 2 only: 54–69), 2 at or above 70; a run's duration is its summed weights.
    An event opens at a run of state 0 lasting ≥ `min_ms` when none is open, and ends at the start of the next run
    of state 2 lasting ≥ `recovery_ms` in its segment, else at the end of the segment's last reading (its time +
    weight).
    """
    g = 0
    e = 0
    i = 0
    state, first, duration = np.empty(2, np.int64), np.empty(2, np.int64), np.empty(2, np.int64)
    events, open_at = np.empty(2, np.int64), np.empty(2, np.int64)
    for k in range(n_used.shape[0]):
        m = n_used[k]
        if m == 0:
            if has_window[k]:
                gap_p[g], gap_s[g], gap_e[g] = k, w_start[k], w_end[k]
                g += 1
            continue
        j = i + m
        if t[i] - w_start[k] >= long_gap_ms:
            gap_p[g], gap_s[g], gap_e[g] = k, w_start[k], t[i]
            g += 1
        last_end = t[i] + weight_ms[i]
        # Per level (index 0: level 1, 1: level 2), the current run's state (0 below the level's bound, 1 between:
        # level 2 only, 54–69; 2 at or above 70), first reading and duration, the patient's events so far (start,
        # end) and the open one (-1: none).
        for lv in range(2):
            state[lv] = 2 if band[i] >= 2 else (band[i] if lv == 1 else 0)
            first[lv] = i
            duration[lv] = weight_ms[i]
            events[lv] = 0
            open_at[lv] = -1
        for r in range(i + 1, j + 1):
            brk = True
            if r < j:
                step = t[r] - t[r - 1]
                if step >= long_gap_ms:
                    gap_p[g], gap_s[g], gap_e[g] = k, t[r - 1], t[r]
                    g += 1
                last_end = max(last_end, t[r] + weight_ms[r])
                brk = step > max(short_gap_ms, interval_of[s[r - 1]])
            for lv in range(2):
                now = (2 if band[r] >= 2 else (band[r] if lv == 1 else 0)) if r < j else -1
                if not brk and now == state[lv]:
                    duration[lv] += weight_ms[r]
                    continue
                # the run ends
                if state[lv] == 0 and duration[lv] >= min_ms and open_at[lv] < 0:
                    open_at[lv] = events[lv]
                    held_s[lv, events[lv]] = t[first[lv]]
                    events[lv] += 1
                elif state[lv] == 2 and duration[lv] >= recovery_ms and open_at[lv] >= 0:
                    held_e[lv, open_at[lv]] = t[first[lv]]
                    open_at[lv] = -1
                if brk and open_at[lv] >= 0:
                    held_e[lv, open_at[lv]] = t[r - 1] + weight_ms[r - 1]
                    open_at[lv] = -1
                if r < j:
                    state[lv], first[lv], duration[lv] = now, r, weight_ms[r]
        if w_end[k] - last_end >= long_gap_ms:
            gap_p[g], gap_s[g], gap_e[g] = k, last_end, w_end[k]
            g += 1
        for lv in range(2):
            for h in range(events[lv]):
                ev_p[e], ev_level[e], ev_s[e], ev_e[e] = k, lv + 1, held_s[lv, h], held_e[lv, h]
                e += 1
        i = j
    return g, e


def _class_sums(by_day: F64, day_patient: NDArray[np.int32], by_patient: F64, day_band: F64, day_target: F64) -> None:
    """From each day's weights by class c = (period × 5 + band) × 3 + target class (`_days`): its weights by band and
    by target class, and each patient's weights by class (days grouped by patient; `by_patient` zeros beforehand).
    The weights are whole numbers, so these sums are exact in any order."""
    for d in range(by_day.shape[0]):
        k = day_patient[d]
        for c in range(by_day.shape[1]):
            w = by_day[d, c]
            by_patient[k, c] += w
        for band in range(5):
            day_band[d, band] = (
                by_day[d, band * 3]
                + by_day[d, band * 3 + 1]
                + by_day[d, band * 3 + 2]
                + (by_day[d, 15 + band * 3] + by_day[d, 16 + band * 3] + by_day[d, 17 + band * 3])
            )
        for aim in range(3):
            total = 0.0
            for band in range(5):
                total += by_day[d, band * 3 + aim] + by_day[d, 15 + band * 3 + aim]
            day_target[d, aim] = total


def _untabled(mg: F64, out: I64) -> int:
    """The positions of the values outside `_statistics`' risk tables (not a whole number up to 1000 mg/dL) into
    `out`; returns how many."""
    count = 0
    for i in range(mg.shape[0]):
        x = mg[i]
        if x > 1000.0 or x != math.floor(x):
            out[count] = i
            count += 1
    return count


class _Compiled:
    agp: Callable[..., None]
    statistics: Callable[[NDArray[np.int32], F64, I64, F64, F64, F64, F64], None]
    days: Callable[..., int]
    front: Callable[..., None]
    ordered: Callable[..., bool]
    emit: Callable[..., int]
    episodes: Callable[..., tuple[int, int]]
    untabled: Callable[[F64, I64], int]
    class_sums: Callable[..., None]


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
    out.days = jit(_days, inputs=11)
    out.front = jit(_front, inputs=19)
    out.ordered = jit(_ordered, inputs=3)
    out.emit = jit(_emit, inputs=17)
    out.episodes = jit(_episodes, inputs=13)
    out.untabled = jit(_untabled, inputs=1)
    out.class_sums = jit(_class_sums, inputs=2)
    return out
