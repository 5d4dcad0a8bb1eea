"""A plain-text clinical note of one outcome window, for an EHR note (Epic takes plain text only).

The note is pure ASCII, at most 80 characters a line, so it reads the same in any monospace note viewer; the
numbers are rounded for display only (the stored document keeps them unrounded). Same record, same text.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bff.resources.record import OutcomeRecord
from engine.catalogue import CATALOGUE, percent_text, shown
from engine.units import MMOL_L_TO_MG_DL

__all__ = [
    "INSUFFICIENT_HEADLINE",
    "MMOL_L_TO_MG_DL",
    "UNITS",
    "Band",
    "bands",
    "format_glucose",
    "format_pct",
    "insufficiency_reasons",
    "local_window",
    "outcome_note",
    "target_name",
    "target_range",
]

#: mg/dL per mmol/L (docs/outcomes-method.md §8); the document's `units.mmol_l_to_mg_dl` wins when present.
UNITS = ("mg/dL", "mmol/L")
WIDTH = 80
TITLE = "CGM summary (glucobridge)"
#: The line an insufficient window's note leads with (ASCII: "--" for the dash).
INSUFFICIENT_HEADLINE = "INSUFFICIENT DATA -- not a complete picture:"


def format_pct(value: float | None) -> str:
    """A percentage for display: 1 decimal rounded half up once (engine.catalogue), "<0.1 %" for a value above 0
    that would round to 0.0."""
    return percent_text(value, none="n/a")


def conversion(record: OutcomeRecord) -> float:
    units = record.document.get("units") or {}
    factor = units.get("mmol_l_to_mg_dl") if isinstance(units, Mapping) else None
    return float(factor) if isinstance(factor, int | float) and factor > 0 else MMOL_L_TO_MG_DL


def check_unit(unit: str) -> str:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, not {unit!r}")
    return unit


def format_glucose(mg_dl: float | None, unit: str) -> str:
    """A glucose value from mg/dL as the catalogue files the mean: whole mg/dL, or mmol/L with 1 decimal, each
    rounded once from the mg/dL value."""
    return shown(CATALOGUE["mean_glucose"], {"mean_mg_dl": mg_dl}, check_unit(unit), none="n/a")


def _local(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=zone)


def local_window(record: OutcomeRecord) -> tuple[str, str, float]:
    """(first local date or date-time, last local date or date-time (inclusive), days).

    A window that starts and ends at local midnight (every default and date window) shows as dates, the last
    one inclusive; otherwise both ends show with their time of day (the end then exclusive, as stored).
    """
    zone = ZoneInfo(record.tz)
    start, end = _local(record.window_start_ms, zone), _local(record.window_end_ms, zone)
    window = record.document.get("window") or {}
    days = window.get("days") if isinstance(window, Mapping) else None
    if not isinstance(days, int | float):
        days = (end.replace(tzinfo=None) - start.replace(tzinfo=None)) / timedelta(days=1)
    at_midnight = all((d.hour, d.minute, d.second, d.microsecond) == (0, 0, 0, 0) for d in (start, end))
    if at_midnight:
        return start.date().isoformat(), (end.date() - timedelta(days=1)).isoformat(), float(days)
    return start.strftime("%Y-%m-%d %H:%M"), end.strftime("%Y-%m-%d %H:%M"), float(days)


@dataclass(frozen=True)
class Band:
    """One row of the time-in-ranges table: a band (or a sum of bands) with its goal, if any."""

    key: str  # the metric key
    label: str
    range_mg_dl: str
    range_mmol_l: str
    value: float | None
    goal: Mapping[str, Any] | None = None
    group: str = "band"  # "band": one of the five; "sum": a sum of two bands; "target": the target set's range

    def range_label(self, unit: str) -> str:
        return self.range_mg_dl if unit == "mg/dL" else self.range_mmol_l

    def goal_label(self) -> str:
        if self.goal is None:
            return ""
        return f"{self.goal.get('op', '')}{float(self.goal.get('value', 0.0)):g} %"

    def met_label(self) -> str:
        if self.goal is None:
            return ""
        met = self.goal.get("met")
        return "n/a" if met is None else ("met" if met else "NOT MET")


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def bands(record: OutcomeRecord) -> list[Band]:
    """The five consensus bands, top (very high) to bottom (very low), each pair followed by its sum; then, for
    a target set whose range is not 70-180 mg/dL (`pregnancy`), the target-range rows (`group="target"`).

    The five bands always use their literal ranges (§5): with a non-standard range `time_in_range_pct` is the
    target range, so "in range" 70-180 is derived as 100 - <70 - >180. A goal is shown on the row of its metric;
    any goal on a metric not shown is added at the end, so no goal is ever dropped.
    """
    m = record.metrics
    targets = record.document.get("targets") or {}
    goals: dict[str, Mapping[str, Any]] = {}
    for goal in targets.get("goals", ()) if isinstance(targets, Mapping) else ():
        if isinstance(goal, Mapping) and isinstance(goal.get("metric"), str):
            goals.setdefault(goal["metric"], goal)
    lo, hi = target_range(record)
    lo_mmol, hi_mmol = (float(x) for x in targets.get("range_mmol_l", (3.9, 10.0)))
    standard_range = (lo, hi) == (70.0, 180.0)
    below70, above180 = _num(m.get("time_below_70_pct")), _num(m.get("time_above_180_pct"))
    if standard_range:
        in_range = _num(m.get("time_in_range_pct"))
    else:
        in_range = None if below70 is None or above180 is None else max(0.0, 100.0 - below70 - above180)

    def row(key: str, label: str, mg: str, mmol: str, group: str = "band", value: float | None = None) -> Band:
        v = _num(m.get(key)) if value is None else value
        return Band(key, label, mg, mmol, v, goals.pop(key, None), group)

    rows = [
        row("time_above_250_pct", "Very high", ">250 mg/dL", ">13.9 mmol/L"),
        row("time_181_250_pct", "High", "181-250 mg/dL", "10.1-13.9 mmol/L"),
        row("time_above_180_pct", "High + very high", ">180 mg/dL", ">10.0 mmol/L", "sum"),
        Band("in_range_70_180", "In range", "70-180 mg/dL", "3.9-10.0 mmol/L", in_range)
        if not standard_range
        else row("time_in_range_pct", "In range", "70-180 mg/dL", "3.9-10.0 mmol/L"),
        row("time_54_69_pct", "Low", "54-69 mg/dL", "3.0-3.8 mmol/L"),
        row("time_below_54_pct", "Very low", "<54 mg/dL", "<3.0 mmol/L"),
        row("time_below_70_pct", "Low + very low", "<70 mg/dL", "<3.9 mmol/L", "sum"),
    ]
    if not standard_range:
        lo_s, hi_s, lo_ms, hi_ms = f"{lo:g}", f"{hi:g}", f"{lo_mmol:.1f}", f"{hi_mmol:.1f}"
        rows += [
            row("time_above_target_pct", "Above target", f">{hi_s} mg/dL", f">{hi_ms} mmol/L", "target"),
            row("time_in_range_pct", "In target", f"{lo_s}-{hi_s} mg/dL", f"{lo_ms}-{hi_ms} mmol/L", "target"),
            row("time_below_target_pct", "Below target", f"<{lo_s} mg/dL", f"<{lo_ms} mmol/L", "target"),
        ]
    for key in sorted(goals):  # a goal on a metric not shown above (a future target set)
        rows.append(row(key, key.removesuffix("_pct").replace("_", " "), "", "", "target"))
    return rows


def target_range(record: OutcomeRecord) -> tuple[float, float]:
    """The target set's range in mg/dL (70-180 unless the document says otherwise)."""
    targets = record.document.get("targets") or {}
    found = targets.get("range_mg_dl") if isinstance(targets, Mapping) else None
    lo, hi = (float(x) for x in (found or (70.0, 180.0)))
    return lo, hi


def target_name(record: OutcomeRecord) -> str:
    targets = record.document.get("targets") or {}
    return str(targets.get("name", "standard")) if isinstance(targets, Mapping) else "standard"


def _wrap(text: str, indent: str = "", first: str | None = None) -> list[str]:
    return textwrap.wrap(
        text,
        width=WIDTH,
        initial_indent=indent if first is None else first,
        subsequent_indent=indent,
        break_long_words=True,
        break_on_hyphens=False,
    ) or [first or indent]


def _ascii(text: str) -> str:
    """Reasons and ids come from elsewhere: keep the note ASCII whatever they hold."""
    replaced = text.replace("\u2013", "-").replace("\u2014", "--").replace("\u2264", "<=").replace("\u2265", ">=")
    return replaced.encode("ascii", "replace").decode("ascii")


def outcome_note(record: OutcomeRecord, *, unit: str = "mg/dL", signer: str | None = None) -> str:
    """The note for one outcome window, in `unit` ("mg/dL" or "mmol/L") for glucose values; ends with a newline.
    `signer`: the clinician who reviews and signs it, as the EHR names them."""
    check_unit(unit)
    m = record.metrics
    lines: list[str] = [TITLE, "=" * len(TITLE)]

    first, last, days = local_window(record)
    lines += _wrap(_ascii(f"Patient:   {record.patient_text}"), " " * 11, "")
    lines += _wrap(_ascii(f"Period:    {first} to {last} ({days:g} days)"), " " * 11, "")
    lines += _wrap(_ascii(f"Time zone: {record.zone_text}"), " " * 11, "")
    if signer:
        lines += _wrap(_ascii(f"Signed:    reviewed and signed by {signer}"), " " * 11, "")
    if record.prior is not None:
        lines.append(f"Status:    CORRECTION of version {record.prior.version} (this is version {record.version})")
    if record.sufficient:
        need_days = policy_number(record, "sufficient_days", 14)
        need_active = policy_number(record, "sufficient_active_pct", 70)
        lines.append(f"Data:      sufficient (>= {need_days:g} days, sensor active >= {need_active:g} %)")
    else:
        lines += ["", "*" * WIDTH, INSUFFICIENT_HEADLINE]
        for reason in insufficiency_reasons(record):
            lines += _wrap(_ascii(reason), "    ", "  - ")
        lines += ["  Interpret the numbers below with caution.", "*" * WIDTH, ""]
    wear, readings = _count(m.get("days_of_wear")), _count(m.get("readings_used"))
    active = format_pct(_num(m.get("sensor_active_pct")))
    lines += _wrap(
        f"Wear:      {wear} of {days:g} days with data, sensor active {active}, {readings} readings", " " * 11, ""
    )

    lines += ["", *_tir_lines(record, unit)]
    lines += ["", *_glucose_lines(record, unit)]

    lines += ["", "--"]
    lines += _wrap(
        _ascii(
            f"glucobridge engine {record.engine_version} | method {record.method} | policy {record.policy_hash[:12]}"
        )
    )
    provenance = f"input {record.input_digest[:12]} | outcome version {record.version}"
    if record.prior is not None:
        provenance += f" | CORRECTION of version {record.prior.version}"
    lines += _wrap(_ascii(provenance))
    return "\n".join(lines) + "\n"


def _tir_lines(record: OutcomeRecord, unit: str) -> list[str]:
    out = [
        _ascii(f"Time in ranges ({target_name(record)} targets)"),
        f"  {'band':<20}{'range':<17}{'time':>8}   {'goal':<8}{'status'}",
    ]
    in_target = False
    for band in bands(record):
        if band.group == "target" and not in_target:
            out.append(_ascii(f"  Target range ({target_name(record)})"))
            in_target = True
        label = f"  {band.label:<20}" if band.group == "band" else f"    {band.label:<18}"
        goal = band.goal_label()
        tail = f"   {goal:<8}{band.met_label()}" if goal else ""
        out.append(_ascii(f"{label}{band.range_label(unit):<17}{format_pct(band.value):>8}{tail}".rstrip()))
    return out


def _glucose_lines(record: OutcomeRecord, unit: str) -> list[str]:
    m = record.metrics
    mean, gmi, cv = _num(m.get("mean_mg_dl")), _num(m.get("gmi_pct")), _num(m.get("cv_pct"))
    cv_goal = CATALOGUE["cv"].goal
    assert cv_goal is not None
    cv_status = "n/a" if cv is None else ("met" if cv_goal.met(cv) else "NOT MET")
    lvl1, lvl2 = ("70 mg/dL", "54 mg/dL") if unit == "mg/dL" else ("3.9 mmol/L", "3.0 mmol/L")
    minutes = policy_number(record, "hypo_min_minutes", 15)
    return [
        "Glucose",
        f"  {'Mean glucose':<20}{format_glucose(mean, unit)}",
        f"  {'GMI':<20}{format_pct(gmi)}",
        f"  {'CV (variability)':<20}{format_pct(cv)}   (stable {cv_goal.comparator} {cv_goal.value:g} %: {cv_status})",
        f"  Hypoglycaemia events (each >= {minutes:g} min)",
        f"    {'level 1, below ' + lvl1:<28}{_count(m.get('hypo_events_l1'))}",
        f"    {'level 2, below ' + lvl2:<28}{_count(m.get('hypo_events_l2'))}",
    ]


def _count(value: object) -> str:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else "n/a"


def insufficiency_reasons(record: OutcomeRecord) -> list[str]:
    """Why the window is not sufficient (the engine's reasons); empty when it is sufficient."""
    if record.sufficient:
        return []
    sufficiency = record.document.get("sufficiency") or {}
    reasons = [str(r) for r in sufficiency.get("reasons", ())] if isinstance(sufficiency, Mapping) else []
    return reasons or ["the engine marked this window insufficient"]


def policy_number(record: OutcomeRecord, key: str, default: float) -> float:
    value = record.policy.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
