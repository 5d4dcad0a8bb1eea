"""The batch path: every patient of a flat table at once, with vectorised segment reductions.

`compute_cohort` is the one implementation of docs/outcomes-method.md; a single patient is a cohort of one.
It returns a columnar `CohortResult` (numpy arrays indexed by patient, plus flat ragged tables for gaps,
events and days); `engine.report` turns it into per-patient outcomes and canonical JSON.

No Python loop here runs per reading or per patient, except over the readings of ambiguous local hours (done
before, in `engine.timezones.localize`): the per-reading passes are numpy operations or compiled loops
(`engine.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.bands import BAND_THRESHOLDS
from engine.devices import device_profile
from engine.kernels import compiled
from engine.policy import Method, OutcomePolicy, Smoothing
from engine.readings import NO_TIME, ReadingTable
from engine.timezones import DAY_MS, local_midnight_ms, span_offsets_ms, to_local_ms, zone_rules
from engine.units import MMOL_L_TO_MG_DL, GlucoseUnit
from engine.windows import WindowSpec, resolve_window

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
MIN_MS = 60_000
N_BANDS = 5
PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)
EXCLUSION_REASONS = ("before_session_start", "warm_up", "warm_up_inferred", "duplicate")
_BANDS_MG = np.array(BAND_THRESHOLDS[GlucoseUnit.MG_DL])
_BANDS_MMOL = np.array(BAND_THRESHOLDS[GlucoseUnit.MMOL_L])
_NO_ROWS = np.zeros(0, dtype=np.int64)  # the table is already in canonical order: a used reading's row is lo + i
_BIG = np.int64(1) << np.int64(40)  # > any span of times within one patient (about 35 years in ms)


@dataclass(frozen=True, eq=False)
class CohortResult:
    """Columnar outcomes. Arrays of length P are indexed by patient; ragged tables carry a `patient` column."""

    table: ReadingTable
    policy: OutcomePolicy
    window_spec: WindowSpec
    has_window: NDArray[np.bool_]
    window_start: I64
    window_end: I64
    window_days: F64
    band_weight: F64  # (P, 5) summed weights per consensus band (ms for time, counts for count)
    target_weight: F64  # (P, 3) below / in / above the target range
    period_weight: F64  # (P, 2, 5) night / day bands
    period_target_weight: F64  # (P, 2, 3)
    period_readings: I64  # (P, 2)
    readings_used: I64
    readings_mg_dl: I64
    readings_mmol_l: I64
    sensor_low: I64
    sensor_high: I64
    ambiguous: I64
    excluded: I64  # (P, 4) in EXCLUSION_REASONS order
    mean_mg_dl: F64
    sd_mg_dl: F64
    lbgi: F64
    hbgi: F64
    active_ms: I64
    days_of_wear: I64
    gap_patient: NDArray[np.int32]
    gap_start: I64
    gap_end: I64
    event_patient: NDArray[np.int32]
    event_level: NDArray[np.int8]
    event_start: I64
    event_end: I64
    day_patient: NDArray[np.int32]
    day_number: I64  # local date as days since 1970-01-01
    day_readings: I64
    day_active_ms: I64
    day_mean_mg_dl: F64
    day_band_weight: F64  # (D, 5)
    day_target_weight: F64  # (D, 3)
    agp_n: I64  # (P, bins)
    agp: F64  # (P, bins, 5)
    # The readings used, in merged (patient, time) order, for traces and for the audit trail.
    used_index: I64  # positions in `table`
    used_weight_ms: I64

    @property
    def n_patients(self) -> int:
        return self.table.n_patients


# MARK: ordering and segments


def _canonical_order(table: ReadingTable) -> I64 | None:
    """None when the table is already sorted by (patient, stream, time); otherwise the sorting permutation."""
    p, s, t = table.patient, table.stream, table.time_ms
    if compiled().ordered(p, s, t):
        return None
    return np.lexsort((t, s, p)).astype(np.int64)


def _starts(*keys: NDArray[np.integer]) -> NDArray[np.bool_]:
    """True where any key differs from the previous element (and at 0)."""
    n = keys[0].shape[0]
    out = np.zeros(n, dtype=np.bool_)
    if n:
        out[0] = True
        for key in keys:
            out[1:] |= key[1:] != key[:-1]
    return out


# MARK: windows


def _local_times(zones: list[str], zone_code: NDArray[np.int32], patient: NDArray[np.int32], times: I64) -> I64:
    """Local wall-clock ms of each instant in its patient's zone (`patient` indexes `zone_code`).

    Readings are grouped by patient; a patient whose span holds no zone transition gets one offset, so only the
    readings of patients whose data cross a DST change are looked up one by one.
    """
    if len(zones) == 1:
        return to_local_ms(zones[0], times)
    n = times.shape[0]
    if n == 0:
        return times.copy()
    starts = _starts(patient)
    firsts = np.flatnonzero(starts)
    lasts = np.append(firsts[1:] - 1, n - 1)
    pats = patient[firsts]
    offset = np.zeros(zone_code.shape[0], dtype=np.int64)
    crossing = np.zeros(zone_code.shape[0], dtype=np.bool_)
    for z, zone in enumerate(zones):
        sel = zone_code[pats] == z
        if sel.any():
            off, constant = span_offsets_ms(zone, times[firsts[sel]], times[lasts[sel]])
            offset[pats[sel]] = off
            crossing[pats[sel]] = ~constant
    local = times + offset[patient]
    if crossing.any():
        idx = np.flatnonzero(crossing[patient])
        sub_zone = zone_code[patient[idx]]
        for z, zone in enumerate(zones):
            part = idx[sub_zone == z]
            if part.size:
                local[part] = to_local_ms(zone, times[part])
    return local


def _windows(
    table: ReadingTable,
    spec: WindowSpec,
    zone_code: NDArray[np.int32],
    zones: list[str],
    last_ms: I64,
    has_rows: NDArray[np.bool_],
) -> tuple[NDArray[np.bool_], I64, I64, F64]:
    n_p = table.n_patients
    start = np.zeros(n_p, dtype=np.int64)
    end = np.zeros(n_p, dtype=np.int64)
    days = np.zeros(n_p, dtype=np.float64)
    if spec.explicit:
        for z, zone in enumerate(zones):
            window = resolve_window(spec, zone, None)
            assert window is not None
            mask = zone_code == z
            start[mask], end[mask], days[mask] = window.start_ms, window.end_ms, window.days
        return np.ones(n_p, dtype=np.bool_), start, end, days
    patients = np.flatnonzero(has_rows).astype(np.int32)
    last_local = _local_times(zones, zone_code, patients, last_ms[patients])
    last_day = last_local // DAY_MS
    first_day = last_day - (spec.days - 1)
    for z, zone in enumerate(zones):
        sel = zone_code[patients] == z
        if not sel.any():
            continue
        for which, target in ((first_day, start), (last_day + 1, end)):
            wanted = which[sel]
            unique, inverse = np.unique(wanted, return_inverse=True)
            instants = np.array([local_midnight_ms(zone, _date_of(int(d))) for d in unique.tolist()], dtype=np.int64)
            target[patients[sel]] = instants[inverse]
    local_start = _local_times(zones, zone_code, patients, start[patients])
    local_end = _local_times(zones, zone_code, patients, end[patients])
    days[patients] = (local_end - local_start) / DAY_MS
    return has_rows.copy(), start, end, days


def _date_of(day_number: int) -> date:
    return date(1970, 1, 1) + timedelta(days=day_number)


# MARK: the computation


def _rules_over(zones: list[str], has_window: NDArray[np.bool_], w_start: I64, w_end: I64) -> tuple[I64, I64, I64]:
    """The zones' rules over every window: readings outside their patient's window are never used, so never
    placed in local time."""
    if not has_window.any():
        return zone_rules(zones, 0, 0)
    return zone_rules(zones, int(w_start[has_window].min()), int(w_end[has_window].max()))


#: Readings per block: patients are computed in blocks of about this many readings, so temporaries stay small
#: (cache- and allocator-friendly) and peak memory does not grow with the cohort beyond the inputs and results.
BLOCK_READINGS = 1 << 17


@dataclass(frozen=True, eq=False)
class _Shared:
    """What every block needs: the policy, the sorted key columns, the per-stream device table, the windows."""

    table: ReadingTable
    policy: OutcomePolicy
    order: I64 | None
    prepared: bool
    p: NDArray[np.int32]
    t: I64
    s: NDArray[np.int32]
    zones: list[str]
    zone_code: NDArray[np.int32]
    interval_of: I64
    warmup_of: I64
    break_of: I64
    has_window: NDArray[np.bool_]
    w_start: I64
    w_end: I64
    zone_rules: tuple[I64, I64, I64]  # engine.timezones.zone_rules over the table's times
    used_index: I64  # room for every row: each block writes its used readings' positions after the last block's
    used_weight_ms: I64


def compute_cohort(
    table: ReadingTable,
    policy: OutcomePolicy | None = None,
    window: WindowSpec | None = None,
    *,
    block_readings: int = BLOCK_READINGS,
    prepared: bool = False,
) -> CohortResult:
    """Compute every patient's outcomes (docs/outcomes-method.md), vectorised over blocks of patients.

    `block_readings` only tunes speed and memory: the results do not depend on it. `prepared` says the table
    already holds only readings used (as an outcome's raw-data NDJSON does): the exclusions of §4 are not applied
    again, so recomputing from them reproduces the metrics.
    """
    policy = policy or OutcomePolicy()
    window = window or WindowSpec()
    n_p = table.n_patients
    order = _canonical_order(table)
    p = table.patient if order is None else table.patient[order]
    t = table.time_ms if order is None else table.time_ms[order]
    s = table.stream if order is None else table.stream[order]
    zones = sorted(set(table.zones))
    zone_code = np.array([zones.index(z) for z in table.zones], dtype=np.int32)

    # Windows, for all patients at once.
    bounds = np.searchsorted(p, np.arange(n_p + 1, dtype=p.dtype), side="left").astype(np.int64)
    has_rows = bounds[1:] > bounds[:-1]
    last_ms = np.zeros(n_p, dtype=np.int64)
    if p.size:
        p_start = bounds[:-1][has_rows]
        last_ms[has_rows] = np.maximum.reduceat(t, p_start)
    has_window, w_start, w_end, w_days = _windows(table, window, zone_code, zones, last_ms, has_rows)

    profiles = [device_profile(k) for k in table.stream_device]
    shared = _Shared(
        table=table,
        policy=policy,
        order=order,
        prepared=prepared,
        p=p,
        t=t,
        s=s,
        zones=zones,
        zone_code=zone_code,
        interval_of=np.array([d.interval_ms for d in profiles], dtype=np.int64),
        warmup_of=np.array([d.warmup_ms for d in profiles], dtype=np.int64),
        break_of=np.array([d.session_break_ms or np.iinfo(np.int64).max for d in profiles], dtype=np.int64),
        has_window=has_window,
        w_start=w_start,
        w_end=w_end,
        zone_rules=_rules_over(zones, has_window, w_start, w_end),
        used_index=np.empty(t.shape[0], dtype=np.int64),
        used_weight_ms=np.empty(t.shape[0], dtype=np.int64),
    )
    parts: list[_Part] = []
    pa = used = 0
    while True:  # at least one block, so an empty table still has the shape of a result
        pb = int(np.searchsorted(bounds, bounds[pa] + block_readings, side="right")) - 1
        pb = min(max(pb, pa + 1), n_p)
        parts.append(_block(shared, pa, pb, int(bounds[pa]), int(bounds[pb]), used))
        used += parts[-1].n_used
        pa = pb
        if pa >= n_p:
            break
    return _combine(shared, parts, w_days, window, used)


@dataclass(frozen=True, eq=False)
class _Part:
    """One block's results: per-patient arrays (local to the block) and ragged tables with global patients."""

    per_patient: dict[str, NDArray[Any]]
    ragged: dict[str, NDArray[Any]]
    n_used: int  # the used readings it wrote to the shared `used_index` and `used_weight_ms`


_PER_PATIENT = (
    "band_weight",
    "target_weight",
    "period_weight",
    "period_target_weight",
    "period_readings",
    "readings_used",
    "readings_mg_dl",
    "readings_mmol_l",
    "sensor_low",
    "sensor_high",
    "ambiguous",
    "excluded",
    "mean_mg_dl",
    "sd_mg_dl",
    "lbgi",
    "hbgi",
    "active_ms",
    "days_of_wear",
    "agp_n",
    "agp",
)
_RAGGED = (
    "gap_patient",
    "gap_start",
    "gap_end",
    "event_patient",
    "event_level",
    "event_start",
    "event_end",
    "day_patient",
    "day_number",
    "day_readings",
    "day_active_ms",
    "day_mean_mg_dl",
    "day_band_weight",
    "day_target_weight",
)


def _combine(shared: _Shared, parts: list[_Part], w_days: F64, window: WindowSpec, used: int) -> CohortResult:
    fields: dict[str, Any] = {"used_index": shared.used_index[:used], "used_weight_ms": shared.used_weight_ms[:used]}
    for name in _PER_PATIENT:
        fields[name] = np.concatenate([part.per_patient[name] for part in parts])
    for name in _RAGGED:
        fields[name] = np.concatenate([part.ragged[name] for part in parts])
    return CohortResult(
        table=shared.table,
        policy=shared.policy,
        window_spec=window,
        has_window=shared.has_window,
        window_start=shared.w_start,
        window_end=shared.w_end,
        window_days=w_days,
        **fields,
    )


def _block(sh: _Shared, pa: int, pb: int, lo: int, hi: int, used: int) -> _Part:
    """Outcomes of patients [pa, pb), whose readings are rows [lo, hi) of the sorted columns; the positions and
    weights of its used readings go to the shared arrays from `used` on."""
    policy, table = sh.policy, sh.table
    n_b = pb - pa
    p = sh.p[lo:hi] - np.int32(pa)
    t = sh.t[lo:hi]
    s = sh.s[lo:hi]
    w_start, w_end = sh.w_start[pa:pb], sh.w_end[pa:pb]

    # The window, the exclusions (§4) and the time weights (§7, the next reading of the same stream, capped by the
    # nominal interval and the window end), in one compiled pass (`engine.kernels._front`).
    rows = None if sh.order is None else sh.order[lo:hi]

    def column(a: NDArray[Any]) -> NDArray[Any]:  # contiguous (one compiled version of the kernel)
        return np.ascontiguousarray(a[lo:hi]) if rows is None else a[rows]

    value, unit = column(table.value), column(table.unit)
    n = hi - lo
    reason = np.empty(n, dtype=np.int8)
    excluded = np.zeros((n_b, len(EXCLUSION_REASONS)), dtype=np.int64)
    ambiguous = np.zeros(n_b, dtype=np.int64)
    kernels = compiled()
    kernels.front(
        p, t, s, value, unit, column(table.session_start_ms), column(table.source), column(table.received),
        column(table.ambiguous), w_start, w_end, sh.interval_of, sh.warmup_of, sh.break_of,
        int(GlucoseUnit.MMOL_L), MMOL_L_TO_MG_DL, int(NO_TIME), sh.prepared, policy.infer_sessions,
        reason, np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64), excluded, ambiguous,
    )  # fmt: skip

    # The used readings, with their time weights (§7), bands and target classes (engine.bands' rules, compiled) and
    # per-patient counts, in one pass.
    position, weight_ms = sh.used_index[used : used + n], sh.used_weight_ms[used : used + n]
    p_u, t_u, s_u = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int32)
    mg, band, target = np.empty(n), np.empty(n, dtype=np.int8), np.empty(n, dtype=np.int8)
    counts = np.zeros((n_b, 4), dtype=np.int64)  # readings, in mmol/L, LOW flags, HIGH flags
    m = kernels.emit(
        reason, _NO_ROWS if rows is None else rows, lo, p, t, s, value, unit, column(table.flag), w_end,
        sh.interval_of, int(GlucoseUnit.MMOL_L), MMOL_L_TO_MG_DL, _BANDS_MG, _BANDS_MMOL,
        np.array([policy.target.low_mg_dl, policy.target.high_mg_dl]),
        np.array([policy.target.low_mmol_l, policy.target.high_mmol_l]),
        position, p_u, t_u, s_u, mg, weight_ms, band, target, counts,
    )  # fmt: skip
    in_time_order, m = m >= 0, abs(m)
    p, t, s, position, weight_ms = p_u[:m], t_u[:m], s_u[:m], position[:m], weight_ms[:m]
    mg, band, target = mg[:m], band[:m], target[:m]

    # Merged (patient, time) order across streams, for activity, gaps, events, days and the AGP.
    if not in_time_order:
        merged = np.lexsort((s, t, p)).astype(np.int64)
        p, t, s = p[merged], t[merged], s[merged]
        weight_ms[:], position[:] = weight_ms[merged], position[merged]  # in place: they are the shared arrays
        band, target, mg = band[merged], target[merged], mg[merged]

    n_used = counts[:, 0].copy()
    mean, sd, lbgi, hbgi = _statistics(p, mg, n_used)

    # Local days (§9, §10) and the activity union (§9). One weighted count per (local day, night/day, band, target
    # class) gives the bands, the target classes and the periods of the days and, summed over each patient's days,
    # of the patients. The weights are whole numbers (ms, or 1 per reading), so these sums are exact in any order.
    days = _days(p, t, weight_ms, policy.method is Method.TIME, band, target, mg, w_end - w_start,
                 sh.zone_code[pa:], sh.zone_rules, policy.agp_bin_min * MIN_MS)  # fmt: skip
    slot, day_patient, day_num = days.slot, days.patient, days.number
    day_readings, day_active_ms, day_mg, by_day = days.readings, days.active_ms, days.mg_sum, days.by_class
    n_days = day_num.shape[0]
    by_class = np.zeros((n_b, 2, N_BANDS, 3))
    day_band_weight, day_target_weight = np.empty((n_days, N_BANDS)), np.empty((n_days, 3))
    kernels.class_sums(by_day.reshape(n_days, 30), day_patient, by_class.reshape(n_b, 30), day_band_weight,
                       day_target_weight)  # fmt: skip
    band_weight = by_class.sum(axis=(1, 3))
    target_weight = by_class.sum(axis=(1, 2))
    period_weight = by_class.sum(axis=3)
    period_target_weight = by_class.sum(axis=2)
    active_ms = np.bincount(day_patient, weights=day_active_ms, minlength=n_b).astype(np.int64)
    day_time_readings = np.bincount(day_patient, weights=days.daytime_readings, minlength=n_b).astype(np.int64)
    period_readings = np.stack([n_used - day_time_readings, day_time_readings], axis=1)

    readings_mmol = counts[:, 1].copy()
    (gap_p, gap_s, gap_e), (ev_p, ev_l, ev_s, ev_e) = _episodes(
        n_used, t, weight_ms, s, sh.interval_of, band, sh.has_window[pa:pb], w_start, w_end, policy
    )
    agp_n, agp = _agp(p, mg, slot, n_b, policy)
    offset = np.int32(pa)
    return _Part(
        per_patient={
            "band_weight": band_weight,
            "target_weight": target_weight,
            "period_weight": period_weight,
            "period_target_weight": period_target_weight,
            "period_readings": period_readings,
            "readings_used": n_used,
            "readings_mg_dl": n_used - readings_mmol,
            "readings_mmol_l": readings_mmol,
            "sensor_low": counts[:, 2].copy(),
            "sensor_high": counts[:, 3].copy(),
            "ambiguous": ambiguous,
            "excluded": excluded,
            "mean_mg_dl": mean,
            "sd_mg_dl": sd,
            "lbgi": lbgi,
            "hbgi": hbgi,
            "active_ms": active_ms,
            "days_of_wear": np.bincount(day_patient, minlength=n_b).astype(np.int64),
            "agp_n": agp_n,
            "agp": agp,
        },
        ragged={
            "gap_patient": gap_p + offset,
            "gap_start": gap_s,
            "gap_end": gap_e,
            "event_patient": ev_p + offset,
            "event_level": ev_l,
            "event_start": ev_s,
            "event_end": ev_e,
            "day_patient": day_patient.astype(np.int32) + offset,
            "day_number": day_num.astype(np.int64),
            "day_readings": day_readings,
            "day_active_ms": day_active_ms,
            "day_mean_mg_dl": day_mg / np.maximum(day_readings, 1),
            "day_band_weight": day_band_weight,
            "day_target_weight": day_target_weight,
        },
        n_used=m,
    )


#: Local time from which a reading counts as daytime (§10: night is 00:00–06:00).
DAYTIME_FROM_MS = 6 * 60 * MIN_MS


@dataclass(frozen=True, eq=False)
class _Days:
    """A block's local days: per reading its AGP slot (local time of day // bin); per day (grouped by patient, in
    date order) its patient, date number, readings, active ms, summed values, weights by class (D, 2, N_BANDS, 3)
    and daytime readings."""

    slot: NDArray[np.int32]
    patient: NDArray[np.int32]
    number: I64
    readings: I64
    active_ms: I64
    mg_sum: F64
    by_class: F64
    daytime_readings: I64


def _days(
    p: NDArray[np.int32],
    t: I64,
    weight_ms: I64,
    by_time: bool,
    band: NDArray[np.int8],
    target: NDArray[np.int8],
    mg: F64,
    window_ms: I64,
    zone_of: NDArray[np.int32],
    rules: tuple[I64, I64, I64],
    bin_ms: int,
) -> _Days:
    """The compiled pass (`engine.kernels`); where a patient's local date steps back (a DST change at midnight),
    the days are grouped by sorting instead (`_days_by_sorting`), with the same results. `zone_of` gives each
    patient's zone in `rules` (`engine.timezones.zone_rules`)."""
    n = p.shape[0]
    # A window of w ms covers at most w / day + 2 local dates (its ends, and a DST hour); readings lie inside it.
    capacity = min(n, int((window_ms // DAY_MS + 3).sum())) + 1
    slot = np.empty(n, dtype=np.int32)
    per_day = np.empty((capacity, 4), dtype=np.int64)
    number = np.empty(capacity, dtype=np.int64)
    by_class = np.empty((capacity, 2 * N_BANDS * 3))
    mg_sum = np.empty(capacity)
    n_days = compiled().days(p, t, weight_ms, by_time, band, target, mg, zone_of, *rules, DAYTIME_FROM_MS, bin_ms,
                             slot, per_day, number, by_class, mg_sum)  # fmt: skip
    if n_days < 0:
        return _days_by_sorting(p, t, weight_ms, by_time, band, target, mg, zone_of, rules, bin_ms)
    return _Days(slot, per_day[:n_days, 0].astype(np.int32), number[:n_days], per_day[:n_days, 1],
                 per_day[:n_days, 2], mg_sum[:n_days], by_class[:n_days].reshape(n_days, 2, N_BANDS, 3),
                 per_day[:n_days, 3])  # fmt: skip


def _local_by_rules(p: NDArray[np.int32], t: I64, zone_of: NDArray[np.int32], rules: tuple[I64, I64, I64]) -> I64:
    """Local wall-clock ms of each instant from its patient's zone rules (`engine.timezones.zone_rules`), by a
    search per zone: `_days_by_sorting`'s, where the compiled pass steps over the transitions."""
    rule_start, transitions, offsets = rules
    zone = zone_of[p]
    local = t.copy()
    for z in np.unique(zone).tolist():
        rows = np.flatnonzero(zone == z)
        lo, hi = int(rule_start[z]), int(rule_start[z + 1])
        k = np.searchsorted(transitions[lo:hi], t[rows], side="right") - 1
        local[rows] += offsets[lo:hi][k]
    return local


def _days_by_sorting(
    p: NDArray[np.int32],
    t: I64,
    weight_ms: I64,
    by_time: bool,
    band: NDArray[np.int8],
    target: NDArray[np.int8],
    mg: F64,
    zone_of: NDArray[np.int32],
    rules: tuple[I64, I64, I64],
    bin_ms: int,
) -> _Days:
    """`_days` in numpy, grouping each patient's readings by local date with a sort: for local dates that step back."""
    weight = weight_ms.astype(np.float64) if by_time else np.ones(p.shape[0])
    local = _local_by_rules(p, t, zone_of, rules)
    p64 = p.astype(np.int64)
    day_number = local // DAY_MS
    time_of_day = local - day_number * DAY_MS
    uniq, inverse = np.unique(np.stack([p64, day_number]), axis=1, return_inverse=True)
    day_group = inverse.reshape(-1).astype(np.int64)
    n_days = uniq.shape[1]
    day_readings = np.bincount(day_group, minlength=n_days).astype(np.int64)
    period = time_of_day >= DAYTIME_FROM_MS
    cls = (period.view(np.int8) * np.int8(N_BANDS) + band) * np.int8(3) + target  # 0..29: int8 suffices
    by_day = np.bincount(day_group * 30 + cls, weights=weight, minlength=n_days * 30).astype(np.float64)
    # Activity: union of [t, t + w) over all streams (§9); each patient's times are offset into a range of its own.
    n_used = np.bincount(p64, minlength=int(p64.max()) + 1 if p.size else 0).astype(np.int64)
    seg = _Segments(n_used)
    seg_base = p64 * _BIG - seg.spread(seg.firsts(t)) if p.size else p64
    s_adj = t + seg_base
    e_adj = s_adj + weight_ms
    covered_before = np.empty_like(e_adj)
    if e_adj.size:
        covered_before[0] = s_adj[0]
        np.maximum.accumulate(e_adj[:-1], out=covered_before[1:])
    np.maximum(covered_before, s_adj, out=covered_before)
    contribution = np.maximum(e_adj - covered_before, 0)
    day_active_ms = np.bincount(day_group, weights=contribution, minlength=n_days).astype(np.int64)
    day_mg: F64 = np.bincount(day_group, weights=mg, minlength=n_days).astype(np.float64)  # in reading order
    daytime = np.bincount(day_group, weights=period, minlength=n_days).astype(np.int64)
    slot = (time_of_day // bin_ms).astype(np.int32)
    return _Days(slot, uniq[0].astype(np.int32), uniq[1].astype(np.int64), day_readings, day_active_ms,
                 day_mg, by_day.reshape(n_days, 2, N_BANDS, 3), daytime)  # fmt: skip


def _risk(mg: F64) -> F64:
    """Kovatchev's signed risk f(g) = 1.509 ((ln g)^1.084 − 5.381), g in mg/dL."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out: F64 = 1.509 * (np.log(mg) ** 1.084 - 5.381)
    return out


#: f(g) for whole mg/dL values 0..1000 (most sensors report whole mg/dL): one look-up instead of log and power.
_RISK_TABLE = _risk(np.arange(1001, dtype=np.float64))
_R_TABLE = 10.0 * _RISK_TABLE * _RISK_TABLE
_R_LOW = np.where(_RISK_TABLE > 0, 0.0, _R_TABLE)  # r = 10 f² where f ≤ 0 (LBGI's terms), else 0
_R_HIGH = np.where(_RISK_TABLE > 0, _R_TABLE, 0.0)  # where f > 0 (HBGI's)


class _Segments:
    """Rows grouped in consecutive segments (a block's patients), given each segment's length, some maybe 0."""

    def __init__(self, lengths: I64) -> None:
        self.lengths = lengths
        self.nonempty = np.flatnonzero(lengths)
        self.starts = (np.cumsum(lengths) - lengths)[self.nonempty]

    def firsts(self, values: NDArray[Any]) -> NDArray[Any]:
        """Each non-empty segment's first value."""
        out: NDArray[Any] = values[self.starts]
        return out

    def spread(self, per_segment: NDArray[Any]) -> NDArray[Any]:
        """A value per row from one per segment (all segments, or the non-empty ones only)."""
        if per_segment.shape[0] == self.lengths.shape[0]:
            return np.repeat(per_segment, self.lengths)
        return np.repeat(per_segment, self.lengths[self.nonempty])


def _statistics(p: NDArray[np.int32], mg: F64, n_used: I64) -> tuple[F64, F64, F64, F64]:
    """Mean, SD, LBGI and HBGI per patient (`engine.kernels`: every sum added in reading order, so every result is
    the same to the last bit whatever the batch layout). The risk of a value the kernel's tables do not hold (not a
    whole number up to 1000 mg/dL) is numpy's, computed here for those values only."""
    f_untabled = np.zeros(0)
    untabled = np.empty(mg.shape[0], dtype=np.int64)
    untabled = untabled[: compiled().untabled(mg, untabled)]  # as the kernel tells them apart
    if untabled.size:
        f_untabled = np.empty(mg.shape[0])  # the kernel reads only the untabled positions
        f_untabled[untabled] = _risk(mg[untabled])
    out = np.empty((n_used.shape[0], 4))
    compiled().statistics(p, mg, n_used, _R_LOW, _R_HIGH, f_untabled, out)
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3]


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
    policy: OutcomePolicy,
) -> tuple[tuple[NDArray[np.int32], I64, I64], tuple[NDArray[np.int32], NDArray[np.int8], I64, I64]]:
    """§10 gaps (interior steps ≥ the long gap, the window edges; a patient with no reading: the whole window),
    in (patient, start) order, and hypoglycaemia events at level 1 (< 70) and level 2 (< 54), in (patient, level,
    start) order (`engine.kernels._episodes`)."""
    n, n_p = t.shape[0], n_used.shape[0]
    gp, gs, ge = np.empty(n + 2 * n_p, dtype=np.int32), np.empty(n + 2 * n_p, np.int64), np.empty(n + 2 * n_p, np.int64)
    ep, el = np.empty(2 * n, dtype=np.int32), np.empty(2 * n, dtype=np.int8)
    es, ee = np.empty(2 * n, dtype=np.int64), np.empty(2 * n, dtype=np.int64)
    g, e = compiled().episodes(
        n_used, t, weight_ms, s, interval_of, band, has_window, w_start, w_end, policy.long_gap_min * MIN_MS,
        policy.short_gap_min * MIN_MS, policy.hypo_min_minutes * MIN_MS, policy.hypo_recovery_minutes * MIN_MS,
        gp, gs, ge, ep, el, es, ee, np.empty((2, n), dtype=np.int64), np.empty((2, n), dtype=np.int64),
    )  # fmt: skip
    return (gp[:g].copy(), gs[:g].copy(), ge[:g].copy()), (ep[:e].copy(), el[:e].copy(), es[:e].copy(), ee[:e].copy())


def _agp(p: NDArray[np.int32], mg: F64, slot: NDArray[np.int32], n_p: int, policy: OutcomePolicy) -> tuple[I64, F64]:
    """§10 AGP percentiles per patient and local time-of-day bin (type 7), optionally 1-4-1 smoothed
    (`engine.kernels._agp`: each bin's values sorted, per patient)."""
    n_bins = 1440 // policy.agp_bin_min
    out = np.full((n_p * n_bins, len(PERCENTILES)), np.nan)
    counts = np.zeros(n_p * n_bins, dtype=np.int64)
    if p.size:
        compiled().agp(p, slot, mg, n_bins, np.array(PERCENTILES), MMOL_L_TO_MG_DL, counts, out,
                       np.empty(p.shape[0]))  # fmt: skip
    agp = out.reshape(n_p, n_bins, len(PERCENTILES))
    if policy.agp_smoothing is Smoothing.ONE_FOUR_ONE:
        agp = _smooth_141(agp)
    return counts.reshape(n_p, n_bins), agp


def _smooth_141(agp: F64) -> F64:
    prev = np.roll(agp, 1, axis=1)
    nxt = np.roll(agp, -1, axis=1)
    total = 4.0 * agp + np.nan_to_num(prev) + np.nan_to_num(nxt)
    weights = 4.0 + (~np.isnan(prev)) + (~np.isnan(nxt))
    smoothed: F64 = total / weights
    smoothed[np.isnan(agp)] = np.nan
    return smoothed
