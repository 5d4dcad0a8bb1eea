"""Per-patient outcomes and canonical JSON (docs/outcomes-method.md §13) from a columnar CohortResult."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.cohort import EXCLUSION_REASONS, MIN_MS, PERCENTILES, CohortResult, compute_cohort
from engine.policy import OutcomePolicy
from engine.readings import ReadingTable
from engine.timezones import DAY_MS, isoformat_local, to_local_ms
from engine.units import MMOL_L_TO_MG_DL, GlucoseUnit
from engine.version import ENGINE_VERSION
from engine.windows import WindowSpec

PCT_KEYS = (
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
METRIC_KEYS = (
    *PCT_KEYS,
    "mean_mg_dl",
    "sd_mg_dl",
    "cv_pct",
    "gmi_pct",
    "gri",
    "gri_zone",
    "lbgi",
    "hbgi",
    "sensor_active_pct",
    "days_of_wear",
    "readings_used",
    "hypo_events_l1",
    "hypo_events_l2",
    "sufficient",
)
MetricValue = float | int | bool | str | None


def _pct(part: float, total: float) -> float | None:
    return None if total <= 0 else 100.0 * part / total


def band_percentages(bands: Sequence[float], target: Sequence[float]) -> dict[str, float | None]:
    """The nine percentage keys from summed weights of the 5 consensus bands and the 3 target classes."""
    vlow, low, _, high, vhigh = (float(x) for x in bands)
    total = float(sum(float(x) for x in bands))
    return {
        "time_below_54_pct": _pct(vlow, total),
        "time_54_69_pct": _pct(low, total),
        "time_below_70_pct": _pct(vlow + low, total),
        "time_in_range_pct": _pct(float(target[1]), total),
        "time_181_250_pct": _pct(high, total),
        "time_above_250_pct": _pct(vhigh, total),
        "time_above_180_pct": _pct(high + vhigh, total),
        "time_below_target_pct": _pct(float(target[0]), total),
        "time_above_target_pct": _pct(float(target[2]), total),
    }


def gri_zone(gri: float | None) -> str | None:
    if gri is None:
        return None
    for limit, zone in ((20.0, "A"), (40.0, "B"), (60.0, "C"), (80.0, "D")):
        if gri <= limit:
            return zone
    return "E"


def _num(x: float) -> float | None:
    value = float(x)
    return value if math.isfinite(value) else None


def _minutes(ms: int) -> float:
    return int(ms) / MIN_MS


@dataclass(frozen=True, eq=False)
class PatientOutcome:
    """One patient's outcomes: `metrics` (the keys of §7–9) and `document`, the full JSON object of §13."""

    patient_id: str
    metrics: Mapping[str, MetricValue]
    document: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class OutcomeReport:
    """The engine's answer for a table: version, method, policy, and one PatientOutcome per patient."""

    policy: OutcomePolicy
    window: WindowSpec
    patients: tuple[PatientOutcome, ...]

    @property
    def engine_version(self) -> str:
        return ENGINE_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine_version": ENGINE_VERSION,
            "method": str(self.policy.method),
            "policy": self.policy.as_dict(),
            "policy_hash": self.policy.policy_hash,
            "window": self.window.as_dict(),
            "patients": [dict(p.document) for p in self.patients],
        }

    def to_json(self) -> str:
        return canonical_json(self.as_dict())


def _clean(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, no insignificant whitespace, shortest float repr, non-finite as null."""
    return json.dumps(_clean(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _Ragged:
    """Row ranges per patient of a table sorted by patient."""

    def __init__(self, patient: NDArray[np.int32], n_patients: int) -> None:
        counts = np.bincount(patient, minlength=n_patients)
        self.bounds = np.concatenate(([0], np.cumsum(counts))).tolist()

    def rows(self, i: int) -> range:
        return range(self.bounds[i], self.bounds[i + 1])


def build_report(result: CohortResult, *, include_traces: bool = False) -> OutcomeReport:
    return OutcomeReport(result.policy, result.window_spec, tuple(iter_patients(result, include_traces=include_traces)))


def iter_patients(result: CohortResult, *, include_traces: bool = False) -> list[PatientOutcome]:
    table = result.table
    gaps = _Ragged(result.gap_patient, result.n_patients)
    events = _Ragged(result.event_patient, result.n_patients)
    days = _Ragged(result.day_patient, result.n_patients)
    used_patient = table.patient[result.used_index] if result.used_index.size else np.zeros(0, np.int32)
    used = _Ragged(used_patient.astype(np.int32), result.n_patients)
    return [
        _patient(result, i, gaps.rows(i), events.rows(i), days.rows(i), used.rows(i) if include_traces else None)
        for i in range(result.n_patients)
    ]


def _patient(
    result: CohortResult, i: int, gap_rows: range, event_rows: range, day_rows: range, trace_rows: range | None
) -> PatientOutcome:
    table, policy = result.table, result.policy
    zone = table.zones[i]
    target = policy.target
    n_used = int(result.readings_used[i])
    metrics: dict[str, MetricValue] = dict(band_percentages(result.band_weight[i], result.target_weight[i]))
    mean = _num(result.mean_mg_dl[i]) if n_used else None
    sd = _num(result.sd_mg_dl[i]) if n_used else None
    gri: float | None = None
    if n_used:
        m = metrics
        raw = (
            3.0 * _f(m["time_below_54_pct"])
            + 2.4 * _f(m["time_54_69_pct"])
            + 1.6 * _f(m["time_above_250_pct"])
            + 0.8 * _f(m["time_181_250_pct"])
        )
        gri = min(100.0, raw)
    duration = int(result.window_end[i] - result.window_start[i])
    active_pct = 100.0 * int(result.active_ms[i]) / duration if result.has_window[i] and duration > 0 else None
    n_events = np.bincount(result.event_level[event_rows.start : event_rows.stop], minlength=3)
    metrics.update(
        mean_mg_dl=mean,
        sd_mg_dl=sd,
        cv_pct=None if sd is None or mean is None else 100.0 * sd / mean,
        gmi_pct=None if mean is None else 3.31 + 0.02392 * mean,
        gri=gri,
        gri_zone=gri_zone(gri),
        lbgi=_num(result.lbgi[i]) if n_used else None,
        hbgi=_num(result.hbgi[i]) if n_used else None,
        sensor_active_pct=active_pct,
        days_of_wear=int(result.days_of_wear[i]),
        readings_used=n_used,
        hypo_events_l1=int(n_events[1]),
        hypo_events_l2=int(n_events[2]),
    )
    reasons: list[str] = []
    window_doc: dict[str, Any] | None = None
    if result.has_window[i]:
        w_days = float(result.window_days[i])
        window_doc = {
            "start": isoformat_local(zone, int(result.window_start[i])),
            "end": isoformat_local(zone, int(result.window_end[i])),
            "days": w_days,
        }
        if w_days < policy.sufficient_days:
            reasons.append(f"window of {w_days:g} days is shorter than {policy.sufficient_days} days")
    if n_used == 0:
        reasons.append("no readings used in the window" if result.has_window[i] else "no readings")
    elif active_pct is not None and active_pct < policy.sufficient_active_pct:
        reasons.append(f"sensor active {active_pct:.1f} % of the window, below {policy.sufficient_active_pct:g} %")
    metrics["sufficient"] = not reasons
    ordered = {k: metrics[k] for k in METRIC_KEYS}

    def span(start: int, end: int) -> dict[str, Any]:
        return {
            "start": isoformat_local(zone, start),
            "end": isoformat_local(zone, end),
            "minutes": _minutes(end - start),
        }

    agp_doc: dict[str, Any] = {
        "unit": "mg/dL",
        "bin_minutes": policy.agp_bin_min,
        "smoothing": str(policy.agp_smoothing),
        "minute": list(range(0, 1440, policy.agp_bin_min)),
        "n": result.agp_n[i].tolist(),
    }
    for k, q in enumerate(PERCENTILES):
        agp_doc[f"p{q:g}"] = [_num(x) for x in result.agp[i, :, k].tolist()]
    if trace_rows is not None:
        agp_doc["days"] = _traces(result, trace_rows, zone)
    document: dict[str, Any] = {
        "patient_id": table.patient_ids[i],
        "tz": zone,
        "window": window_doc,
        "metrics": ordered,
        "targets": {
            "name": target.name,
            "range_mg_dl": [target.low_mg_dl, target.high_mg_dl],
            "range_mmol_l": [target.low_mmol_l, target.high_mmol_l],
            "goals": [
                {"metric": g.metric, "op": g.op, "value": g.value, "met": g.met(_opt(ordered[g.metric]))}
                for g in target.goals
            ],
        },
        "sufficiency": {"sufficient": not reasons, "reasons": reasons},
        "excluded": {r: int(result.excluded[i, k]) for k, r in enumerate(EXCLUSION_REASONS)},
        "flags": {
            "sensor_low": int(result.sensor_low[i]),
            "sensor_high": int(result.sensor_high[i]),
            "ambiguous_local_time": int(result.ambiguous[i]),
        },
        "units": {
            "canonical": "mg/dL",
            "mmol_l_to_mg_dl": MMOL_L_TO_MG_DL,
            "readings_mg_dl": int(result.readings_mg_dl[i]),
            "readings_mmol_l": int(result.readings_mmol_l[i]),
        },
        "gaps": [span(int(result.gap_start[g]), int(result.gap_end[g])) for g in gap_rows],
        "events": {
            f"hypo_l{level}": [
                span(int(result.event_start[e]), int(result.event_end[e]))
                for e in event_rows
                if int(result.event_level[e]) == level
            ]
            for level in (1, 2)
        },
        "periods": {
            name: {
                **band_percentages(result.period_weight[i, k], result.period_target_weight[i, k]),
                "readings": int(result.period_readings[i, k]),
            }
            for k, name in enumerate(("night", "day"))
        },
        "daily": [
            {
                "date": (date(1970, 1, 1) + timedelta(days=int(result.day_number[d]))).isoformat(),
                "readings": int(result.day_readings[d]),
                "active_minutes": _minutes(int(result.day_active_ms[d])),
                "mean_mg_dl": _num(result.day_mean_mg_dl[d]),
                **band_percentages(result.day_band_weight[d], result.day_target_weight[d]),
            }
            for d in day_rows
        ],
        "agp": agp_doc,
    }
    return PatientOutcome(table.patient_ids[i], MappingProxyType(ordered), MappingProxyType(document))


def _f(x: MetricValue) -> float:
    return float(x) if isinstance(x, int | float) else 0.0


def _opt(x: MetricValue) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


def _traces(result: CohortResult, rows: range, zone: str) -> list[dict[str, Any]]:
    """Daily traces in mg/dL by local minute of day, with None at breaks longer than short_gap (§10)."""
    table = result.table
    idx = result.used_index[rows.start : rows.stop]
    if idx.size == 0:
        return []
    t = table.time_ms[idx]
    mg = table.value[idx] * np.where(table.unit[idx] == GlucoseUnit.MMOL_L, MMOL_L_TO_MG_DL, 1.0)
    local = to_local_ms(zone, t)
    short = result.policy.short_gap_min * MIN_MS
    day = local // DAY_MS
    minute = (local % DAY_MS) / MIN_MS
    # A day starts where the local date changes; inside a day a break longer than short_gap is a None.
    starts = np.flatnonzero(np.r_[True, day[1:] != day[:-1]])
    ends = np.r_[starts[1:], day.size]
    breaks = np.r_[False, np.diff(t) > short]
    out: list[dict[str, Any]] = []
    epoch = date(1970, 1, 1)
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        minutes, values = minute[a:b].tolist(), mg[a:b].tolist()
        cuts = (np.flatnonzero(breaks[a + 1 : b]) + 1).tolist()
        for cut in reversed(cuts):  # from the end, so earlier positions stay put
            minutes.insert(cut, None)
            values.insert(cut, None)
        out.append({"date": (epoch + timedelta(days=int(day[a]))).isoformat(), "minute": minutes, "value": values})
    return out


def compute_outcomes(
    table: ReadingTable,
    policy: OutcomePolicy | None = None,
    window: WindowSpec | None = None,
    *,
    include_traces: bool = False,
) -> OutcomeReport:
    """The engine's entry point: outcomes for every patient of `table` (docs/outcomes-method.md)."""
    return build_report(compute_cohort(table, policy, window), include_traces=include_traces)
