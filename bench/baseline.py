"""A plain, per-patient, per-reading implementation of docs/outcomes-method.md.

It is written from the method document only (not from the vectorised engine) and serves two purposes: the
baseline `make bench` times the engine against, and an oracle for differential tests. Everything is computed
with Python lists, integers and `math`; local times come from `zoneinfo`, one reading at a time.

Choices the document leaves open are marked "Choice:" next to the code that makes them.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from engine.devices import device_profile
from engine.policy import Method, OutcomePolicy, Smoothing, target_set
from engine.readings import NO_TIME, ReadingTable, SensorFlag
from engine.timezones import isoformat_local
from engine.units import MMOL_L_TO_MG_DL
from engine.version import ENGINE_VERSION
from engine.windows import Window, WindowSpec, resolve_window

__all__ = ["BAND_KEYS", "baseline_report"]

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
_NIGHT_END_MS = 6 * HOUR_MS

# Bands (§5) and target-range position.
VERY_LOW, LOW, IN_RANGE, HIGH, VERY_HIGH = 0, 1, 2, 3, 4
BELOW_TARGET, IN_TARGET, ABOVE_TARGET = 0, 1, 2

#: The nine percentage keys of §7.
BAND_KEYS = (
    "time_below_54_pct",
    "time_54_69_pct",
    "time_below_70_pct",
    "time_in_range_pct",
    "time_181_250_pct",
    "time_above_250_pct",
    "time_above_180_pct",
    "time_below_target_pct",
    "time_above_target_pct",
)

_STAT_KEYS = ("mean_mg_dl", "sd_mg_dl", "cv_pct", "gmi_pct", "gri", "gri_zone", "lbgi", "hbgi")
_EXCLUSION_KEYS = ("before_session_start", "warm_up", "warm_up_inferred", "duplicate")
_NO_TIME = int(NO_TIME)
_PERCENTILES = (("p5", 0.05), ("p25", 0.25), ("p50", 0.50), ("p75", 0.75), ("p95", 0.95))


@dataclass(slots=True)
class _Row:
    """One reading of one patient, with everything derived from it."""

    index: int  # position in the table (final tie-break)
    t: int
    stream: int
    value: float  # as given, in its own unit
    unit: int  # 0 mg/dL, 1 mmol/L
    flag: int
    source: int
    received: int
    session_start: int
    ambiguous: bool
    interval: int = 0  # nominal interval of the stream's device (ms)
    mg: float = 0.0  # value in mg/dL
    band: int = 0
    target: int = 0
    w: int = 0  # time weight (ms)
    local_date: date | None = None
    ms_of_day: int = 0


# --------------------------------------------------------------------------------------------------- bands


def _band(row: _Row) -> int:
    if row.flag == SensorFlag.LOW:
        return VERY_LOW
    if row.flag == SensorFlag.HIGH:
        return VERY_HIGH
    v = row.value
    very_low, low_hi, in_hi, high_hi = (54.0, 70.0, 180.0, 250.0) if row.unit == 0 else (3.0, 3.9, 10.0, 13.9)
    if v < very_low:
        band = VERY_LOW
    elif v < low_hi:
        band = LOW
    elif v <= in_hi:
        band = IN_RANGE
    elif v <= high_hi:
        band = HIGH
    else:
        band = VERY_HIGH
    return band


def _target_position(row: _Row, lo_mg: float, hi_mg: float, lo_mmol: float, hi_mmol: float) -> int:
    if row.flag == SensorFlag.LOW:
        return BELOW_TARGET
    if row.flag == SensorFlag.HIGH:
        return ABOVE_TARGET
    lo, hi = (lo_mg, hi_mg) if row.unit == 0 else (lo_mmol, hi_mmol)
    if row.value < lo:
        return BELOW_TARGET
    if row.value > hi:
        return ABOVE_TARGET
    return IN_TARGET


def _percentages(rows: list[_Row], method: Method) -> dict[str, float | None]:
    """The nine percentage keys from exact integer weight sums (§7)."""
    band_sum = [0, 0, 0, 0, 0]
    target_sum = [0, 0, 0]
    total = 0
    for r in rows:
        weight = 1 if method is Method.COUNT else r.w
        band_sum[r.band] += weight
        target_sum[r.target] += weight
        total += weight
    if total == 0:
        return dict.fromkeys(BAND_KEYS)

    def pct(part: int) -> float:
        return 100.0 * part / total

    return {
        "time_below_54_pct": pct(band_sum[VERY_LOW]),
        "time_54_69_pct": pct(band_sum[LOW]),
        "time_below_70_pct": pct(band_sum[VERY_LOW] + band_sum[LOW]),
        "time_in_range_pct": pct(target_sum[IN_TARGET]),
        "time_181_250_pct": pct(band_sum[HIGH]),
        "time_above_250_pct": pct(band_sum[VERY_HIGH]),
        "time_above_180_pct": pct(band_sum[HIGH] + band_sum[VERY_HIGH]),
        "time_below_target_pct": pct(target_sum[BELOW_TARGET]),
        "time_above_target_pct": pct(target_sum[ABOVE_TARGET]),
    }


# --------------------------------------------------------------------------------------------------- statistics


def _mean(values: list[float]) -> float | None:
    # Choice: math.fsum (the correctly rounded sum), so the mean does not depend on the order of the readings.
    return math.fsum(values) / len(values) if values else None


def _gri_zone(gri: float) -> str:
    for limit, zone in ((20.0, "A"), (40.0, "B"), (60.0, "C"), (80.0, "D")):
        if gri <= limit:
            return zone
    return "E"


def _risk(g: float) -> float:
    """Kovatchev's r(g) with its sign: negative on the low side. NaN when ln g < 0 (g < 1 mg/dL)."""
    ln = math.log(g)
    if ln < 0:
        # Choice: (ln g)^1.084 is not real for g < 1 mg/dL; the risk indices become undefined (null).
        return math.nan
    f = 1.509 * (math.pow(ln, 1.084) - 5.381)
    r = 10.0 * f * f
    return -r if f < 0 else r


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _statistics(rows: list[_Row], pcts: dict[str, float | None]) -> dict[str, object]:
    out: dict[str, object] = dict.fromkeys(_STAT_KEYS)
    values = [r.mg for r in rows]
    n = len(values)
    mean = _mean(values)
    if mean is None:
        return out
    out["mean_mg_dl"] = mean
    out["gmi_pct"] = 3.31 + 0.02392 * mean
    if n >= 2:
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        out["sd_mg_dl"] = sd
        out["cv_pct"] = 100.0 * sd / mean
    v_low, low = pcts["time_below_54_pct"], pcts["time_54_69_pct"]
    v_high, high = pcts["time_above_250_pct"], pcts["time_181_250_pct"]
    if v_low is not None and low is not None and v_high is not None and high is not None:
        gri = min(100.0, 3.0 * v_low + 2.4 * low + 1.6 * v_high + 0.8 * high)
        out["gri"] = gri
        out["gri_zone"] = _gri_zone(gri)
    risks = [_risk(v) for v in values]
    lbgi = math.fsum(-r for r in risks if r < 0) / n
    hbgi = math.fsum(r for r in risks if r > 0) / n
    if any(math.isnan(r) for r in risks):
        lbgi = hbgi = math.nan
    out["lbgi"] = _finite(lbgi)
    out["hbgi"] = _finite(hbgi)
    return out


# --------------------------------------------------------------------------------------------------- exclusions


def _exclude(rows: list[_Row], table: ReadingTable, policy: OutcomePolicy, excluded: dict[str, int]) -> list[_Row]:
    """§4 steps 1–4 on the readings in the window; returns the readings used, in table order."""
    kept: list[_Row] = []
    for r in rows:
        if r.session_start != _NO_TIME:
            if r.t < r.session_start:
                excluded["before_session_start"] += 1
                continue
            if r.t < r.session_start + device_profile(table.stream_device[r.stream]).warmup_ms:
                excluded["warm_up"] += 1
                continue
        kept.append(r)

    by_stream: dict[int, list[_Row]] = {}
    for r in kept:
        by_stream.setdefault(r.stream, []).append(r)

    if policy.infer_sessions:
        dropped: set[int] = set()
        for stream, stream_rows in by_stream.items():
            profile = device_profile(table.stream_device[stream])
            # Choice: sessions are inferred from the stream's in-window readings without a known session start,
            # all of them (a reading excluded as warm-up still ends a gap).
            unknown = sorted((r for r in stream_rows if r.session_start == _NO_TIME), key=lambda r: (r.t, r.index))
            session_start: int | None = None
            previous: int | None = None
            for r in unknown:
                if previous is None or (
                    profile.session_break_ms is not None and r.t - previous >= profile.session_break_ms
                ):
                    session_start = r.t
                previous = r.t
                assert session_start is not None
                if r.t < session_start + profile.warmup_ms:
                    dropped.add(r.index)
        if dropped:
            excluded["warm_up_inferred"] += len(dropped)
            by_stream = {s: [r for r in rs if r.index not in dropped] for s, rs in by_stream.items()}

    used: list[_Row] = []
    for stream_rows in by_stream.values():
        ordered = sorted(stream_rows, key=lambda r: (r.t, r.index))
        groups: list[list[_Row]] = []
        group_start = 0
        for r in ordered:
            # t − t_group_start < interval / 2, in integers.
            if groups and 2 * (r.t - group_start) < r.interval:
                groups[-1].append(r)
            else:
                groups.append([r])
                group_start = r.t
        for group in groups:
            # Precedence: source (fhir first), latest received, larger value, earlier time.
            # Choice: "larger value" compares mg/dL (a stream may carry both units); last tie-break: table order.
            best = min(group, key=lambda r: (r.source, -r.received, -r.mg, r.t, r.index))
            used.append(best)
            excluded["duplicate"] += len(group) - 1
    used.sort(key=lambda r: r.index)
    return used


# --------------------------------------------------------------------------------------------------- time


def _assign_weights(used: list[_Row], end_ms: int) -> None:
    by_stream: dict[int, list[_Row]] = {}
    for r in used:
        by_stream.setdefault(r.stream, []).append(r)
    for stream_rows in by_stream.values():
        stream_rows.sort(key=lambda r: r.t)
        for k, r in enumerate(stream_rows):
            w = min(r.interval, end_ms - r.t)
            if k + 1 < len(stream_rows):
                w = min(w, stream_rows[k + 1].t - r.t)
            r.w = w


def _active_shares(merged: list[_Row]) -> list[int]:
    """Each reading's share of the union of [t, t + w) (§9), in merged order.

    Choice: a reading's share is the part of its interval not covered by readings earlier in the merged order
    (time, then stream index), so overlapping streams credit the overlap to the earlier-starting reading.
    """
    shares: list[int] = []
    covered = -(2**63)
    for r in merged:
        end = r.t + r.w
        shares.append(max(0, end - max(r.t, covered)))
        covered = max(covered, end)
    return shares


def _interval(start: int, end: int, zone: str) -> dict[str, object]:
    return {
        "start": isoformat_local(zone, start),
        "end": isoformat_local(zone, end),
        "minutes": (end - start) / MINUTE_MS,
    }


def _gaps(merged: list[_Row], win: Window, policy: OutcomePolicy, zone: str) -> list[dict[str, object]]:
    long_gap = policy.long_gap_min * MINUTE_MS
    if not merged:
        return [_interval(win.start_ms, win.end_ms, zone)]
    gaps: list[dict[str, object]] = []
    if merged[0].t - win.start_ms >= long_gap:
        gaps.append(_interval(win.start_ms, merged[0].t, zone))
    for a, b in itertools.pairwise(merged):
        # The doc: an interval between consecutive readings, from t to t_next.
        if b.t - a.t >= long_gap:
            gaps.append(_interval(a.t, b.t, zone))
    # The data end where the coverage of the readings ends: the latest t + w of any reading (with several
    # streams, an earlier reading of a 15-minute sensor may cover past the last reading of a 5-minute one).
    last_end = max(r.t + r.w for r in merged)
    if win.end_ms - last_end >= long_gap:
        gaps.append(_interval(last_end, win.end_ms, zone))
    return gaps


# --------------------------------------------------------------------------------------------------- events


@dataclass(slots=True)
class _Run:
    state: int
    first_t: int
    duration: int
    last_end: int
    break_after: bool = False


_BELOW, _NEUTRAL, _RECOVERED = 0, 1, 2


def _state(r: _Row, level: int) -> int:
    if level == 1:
        return _BELOW if r.band in (VERY_LOW, LOW) else _RECOVERED
    if r.band == VERY_LOW:
        return _BELOW
    return _NEUTRAL if r.band == LOW else _RECOVERED


def _hypo_events(merged: list[_Row], level: int, policy: OutcomePolicy) -> list[tuple[int, int]]:
    short_gap = policy.short_gap_min * MINUTE_MS
    runs: list[_Run] = []
    previous: _Row | None = None
    for r in merged:
        state = _state(r, level)
        broken = previous is not None and r.t - previous.t > max(short_gap, previous.interval)
        if runs and broken:
            runs[-1].break_after = True
        if not runs or broken or runs[-1].state != state:
            runs.append(_Run(state, r.t, 0, 0))
        runs[-1].duration += r.w
        runs[-1].last_end = r.t + r.w
        previous = r
    if runs:
        runs[-1].break_after = True  # the end of data

    start_ms = policy.hypo_min_minutes * MINUTE_MS
    recovery_ms = policy.hypo_recovery_minutes * MINUTE_MS
    events: list[tuple[int, int]] = []
    open_at: int | None = None
    for run in runs:
        if open_at is None:
            if run.state == _BELOW and run.duration >= start_ms:
                open_at = run.first_t
        elif run.state == _RECOVERED and run.duration >= recovery_ms:
            events.append((open_at, run.first_t))
            open_at = None
            continue
        if open_at is not None and run.break_after:
            events.append((open_at, run.last_end))
            open_at = None
    return events


# --------------------------------------------------------------------------------------------------- AGP


def _type7(sorted_values: list[float], p: float) -> float:
    n = len(sorted_values)
    h = (n - 1) * p
    lo = math.floor(h)
    if lo + 1 >= n:
        return sorted_values[lo]
    return sorted_values[lo] + (h - lo) * (sorted_values[lo + 1] - sorted_values[lo])


def _smooth_141(series: list[float | None]) -> list[float | None]:
    n = len(series)
    out: list[float | None] = []
    for i, cur in enumerate(series):
        if cur is None:
            out.append(None)
            continue
        prev, nxt = series[(i - 1) % n], series[(i + 1) % n]
        if prev is not None and nxt is not None:
            out.append((prev + 4.0 * cur + nxt) / 6.0)
        elif prev is not None:
            out.append((prev + 4.0 * cur) / 5.0)
        elif nxt is not None:
            out.append((4.0 * cur + nxt) / 5.0)
        else:
            out.append(cur)
    return out


def _agp(merged: list[_Row], policy: OutcomePolicy) -> dict[str, object]:
    n_bins = 1440 // policy.agp_bin_min
    bin_ms = policy.agp_bin_min * MINUTE_MS
    bins: list[list[float]] = [[] for _ in range(n_bins)]
    for r in merged:
        bins[r.ms_of_day // bin_ms].append(r.mg)
    out: dict[str, object] = {
        "unit": "mg/dL",
        "bin_minutes": policy.agp_bin_min,
        "smoothing": str(policy.agp_smoothing),
        "minute": [k * policy.agp_bin_min for k in range(n_bins)],
        "n": [len(b) for b in bins],
    }
    for b in bins:
        b.sort()
    for key, p in _PERCENTILES:
        series: list[float | None] = [_type7(b, p) if b else None for b in bins]
        if policy.agp_smoothing is Smoothing.ONE_FOUR_ONE:
            series = _smooth_141(series)
        out[key] = series
    return out


def _traces(merged: list[_Row], policy: OutcomePolicy) -> list[dict[str, object]]:
    short_gap = policy.short_gap_min * MINUTE_MS
    by_date: dict[date, list[_Row]] = {}
    for r in merged:
        assert r.local_date is not None
        by_date.setdefault(r.local_date, []).append(r)
    days: list[dict[str, object]] = []
    for day in sorted(by_date):
        minutes: list[float | None] = []
        values: list[float | None] = []
        previous: _Row | None = None
        for r in by_date[day]:
            if previous is not None and r.t - previous.t > short_gap:
                minutes.append(None)
                values.append(None)
            minutes.append(r.ms_of_day / MINUTE_MS)
            values.append(r.mg)
            previous = r
        days.append({"date": day.isoformat(), "minute": minutes, "value": values})
    return days


# --------------------------------------------------------------------------------------------------- report


def _metrics_block(
    pcts: dict[str, float | None],
    stats: dict[str, object],
    active_pct: float | None,
    days_of_wear: int,
    readings_used: int,
    hypo_l1: int,
    hypo_l2: int,
    sufficient: bool,
) -> dict[str, object]:
    metrics: dict[str, object] = dict(pcts)
    metrics.update(stats)
    metrics.update(
        {
            "sensor_active_pct": active_pct,
            "days_of_wear": days_of_wear,
            "readings_used": readings_used,
            "hypo_events_l1": hypo_l1,
            "hypo_events_l2": hypo_l2,
            "sufficient": sufficient,
        }
    )
    return metrics


def _targets_block(policy: OutcomePolicy, metrics: dict[str, object]) -> dict[str, object]:
    ts = target_set(policy.targets)
    goals = []
    for goal in ts.goals:
        actual = metrics[goal.metric]
        assert actual is None or isinstance(actual, float)
        goals.append({"metric": goal.metric, "op": goal.op, "value": goal.value, "met": goal.met(actual)})
    return {
        "name": ts.name,
        "range_mg_dl": [ts.low_mg_dl, ts.high_mg_dl],
        "range_mmol_l": [ts.low_mmol_l, ts.high_mmol_l],
        "goals": goals,
    }


def _period(rows: list[_Row], method: Method) -> dict[str, object]:
    block: dict[str, object] = dict(_percentages(rows, method))
    block["readings"] = len(rows)
    return block


def _empty_agp(policy: OutcomePolicy, include_traces: bool) -> dict[str, object]:
    agp = _agp([], policy)
    if include_traces:
        agp["days"] = []
    return agp


def _patient_without_window(
    patient_id: str, zone: str, policy: OutcomePolicy, include_traces: bool
) -> dict[str, object]:
    metrics = _metrics_block(dict.fromkeys(BAND_KEYS), dict.fromkeys(_STAT_KEYS), None, 0, 0, 0, 0, False)
    return {
        "patient_id": patient_id,
        "tz": zone,
        "window": None,
        "metrics": metrics,
        "targets": _targets_block(policy, metrics),
        "sufficiency": {"sufficient": False, "reasons": ["no readings"]},
        "excluded": dict.fromkeys(_EXCLUSION_KEYS, 0),
        "flags": {"sensor_low": 0, "sensor_high": 0, "ambiguous_local_time": 0},
        "units": {"canonical": "mg/dL", "mmol_l_to_mg_dl": MMOL_L_TO_MG_DL, "readings_mg_dl": 0, "readings_mmol_l": 0},
        "gaps": [],
        "events": {"hypo_l1": [], "hypo_l2": []},
        "periods": {"night": _period([], policy.method), "day": _period([], policy.method)},
        "daily": [],
        "agp": _empty_agp(policy, include_traces),
    }


def _patient_report(
    patient_id: str,
    zone: str,
    rows: list[_Row],
    table: ReadingTable,
    policy: OutcomePolicy,
    spec: WindowSpec,
    include_traces: bool,
) -> dict[str, object]:
    last = max((r.t for r in rows), default=None)
    win = resolve_window(spec, zone, last)
    if win is None:
        return _patient_without_window(patient_id, zone, policy, include_traces)
    tz = ZoneInfo(zone)
    ts = target_set(policy.targets)

    in_window = [r for r in rows if win.start_ms <= r.t < win.end_ms]
    for r in in_window:
        r.interval = device_profile(table.stream_device[r.stream]).interval_ms
        r.mg = r.value * MMOL_L_TO_MG_DL if r.unit == 1 else r.value
    excluded = dict.fromkeys(_EXCLUSION_KEYS, 0)
    used = _exclude(in_window, table, policy, excluded)
    _assign_weights(used, win.end_ms)
    for r in used:
        r.band = _band(r)
        r.target = _target_position(r, ts.low_mg_dl, ts.high_mg_dl, ts.low_mmol_l, ts.high_mmol_l)
        seconds, millis = divmod(r.t, 1000)
        local = datetime.fromtimestamp(seconds, tz)
        r.local_date = local.date()
        r.ms_of_day = ((local.hour * 60 + local.minute) * 60 + local.second) * 1000 + millis
    # Choice: the merged series is ordered by time, then stream index (ties only across streams).
    merged = sorted(used, key=lambda r: (r.t, r.stream))

    pcts = _percentages(merged, policy.method)
    stats = _statistics(merged, pcts)
    shares = _active_shares(merged)
    active_ms = sum(shares)
    active_pct = 100.0 * active_ms / win.duration_ms
    dates = sorted({r.local_date for r in merged if r.local_date is not None})
    events_l1 = _hypo_events(merged, 1, policy)
    events_l2 = _hypo_events(merged, 2, policy)

    reasons: list[str] = []
    if win.days < policy.sufficient_days:
        reasons.append(f"window of {win.days:g} days is shorter than {policy.sufficient_days} days")
    if not merged:
        reasons.append("no readings used in the window")
    elif active_pct < policy.sufficient_active_pct:
        reasons.append(f"sensor active {active_pct:.1f} % of the window, below {policy.sufficient_active_pct:g} %")
    sufficient = not reasons

    metrics = _metrics_block(
        pcts, stats, active_pct, len(dates), len(merged), len(events_l1), len(events_l2), sufficient
    )

    daily: list[dict[str, object]] = []
    by_date: dict[date, list[int]] = {}
    for k, r in enumerate(merged):
        assert r.local_date is not None
        by_date.setdefault(r.local_date, []).append(k)
    for day in dates:
        day_rows = [merged[k] for k in by_date[day]]
        entry: dict[str, object] = {
            "date": day.isoformat(),
            "readings": len(day_rows),
            "active_minutes": sum(shares[k] for k in by_date[day]) / MINUTE_MS,
            "mean_mg_dl": _mean([r.mg for r in day_rows]),
        }
        entry.update(_percentages(day_rows, policy.method))
        daily.append(entry)

    agp = _agp(merged, policy)
    if include_traces:
        agp["days"] = _traces(merged, policy)

    return {
        "patient_id": patient_id,
        "tz": zone,
        "window": {
            "start": isoformat_local(zone, win.start_ms),
            "end": isoformat_local(zone, win.end_ms),
            "days": win.days,
        },
        "metrics": metrics,
        "targets": _targets_block(policy, metrics),
        "sufficiency": {"sufficient": sufficient, "reasons": reasons},
        "excluded": excluded,
        "flags": {
            "sensor_low": sum(1 for r in merged if r.flag == SensorFlag.LOW),
            "sensor_high": sum(1 for r in merged if r.flag == SensorFlag.HIGH),
            "ambiguous_local_time": sum(1 for r in in_window if r.ambiguous),
        },
        "units": {
            "canonical": "mg/dL",
            "mmol_l_to_mg_dl": MMOL_L_TO_MG_DL,
            "readings_mg_dl": sum(1 for r in merged if r.unit == 0),
            "readings_mmol_l": sum(1 for r in merged if r.unit == 1),
        },
        "gaps": _gaps(merged, win, policy, zone),
        "events": {
            "hypo_l1": [_interval(a, b, zone) for a, b in events_l1],
            "hypo_l2": [_interval(a, b, zone) for a, b in events_l2],
        },
        "periods": {
            "night": _period([r for r in merged if r.ms_of_day < _NIGHT_END_MS], policy.method),
            "day": _period([r for r in merged if r.ms_of_day >= _NIGHT_END_MS], policy.method),
        },
        "daily": daily,
        "agp": agp,
    }


def baseline_report(
    table: ReadingTable,
    policy: OutcomePolicy = OutcomePolicy(),  # noqa: B008 - frozen, immutable default
    window: WindowSpec = WindowSpec(),  # noqa: B008 - frozen, immutable default
    *,
    include_traces: bool = False,
) -> dict[str, object]:
    """The outcomes report of every patient in `table` (§13), computed per patient and per reading."""
    patient = table.patient.tolist()
    time_ms = table.time_ms.tolist()
    value = table.value.tolist()
    unit = table.unit.tolist()
    flag = table.flag.tolist()
    stream = table.stream.tolist()
    session = table.session_start_ms.tolist()
    source = table.source.tolist()
    received = table.received.tolist()
    ambiguous = table.ambiguous.tolist()

    rows_by_patient: list[list[_Row]] = [[] for _ in range(table.n_patients)]
    for i in range(len(time_ms)):
        rows_by_patient[patient[i]].append(
            _Row(
                index=i,
                t=time_ms[i],
                stream=stream[i],
                value=value[i],
                unit=unit[i],
                flag=flag[i],
                source=source[i],
                received=received[i],
                session_start=session[i],
                ambiguous=ambiguous[i],
            )
        )

    patients = [
        _patient_report(pid, table.zones[p], rows_by_patient[p], table, policy, window, include_traces)
        for p, pid in enumerate(table.patient_ids)
    ]
    return {
        "engine_version": ENGINE_VERSION,
        "method": str(policy.method),
        "policy": policy.as_dict(),
        "policy_hash": policy.policy_hash,
        "window": window.as_dict(),
        "patients": patients,
    }
