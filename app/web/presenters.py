"""Turn an engine patient document into what the clinician view shows: bands, tiles and Plotly figure specs.

Everything here is display: rounding happens here and nowhere else. Figures are plain dicts (Plotly JSON), built
without plotly's Python objects so a view renders in milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from bff.resources.fhir import in_range_70_180
from engine.units import MMOL_L_TO_MG_DL

BAND_COLOURS = {
    "very_high": "#e8702a",
    "high": "#f6c342",
    "in_range": "#3aa655",
    "low": "#d64541",
    "very_low": "#8b1a1a",
}


@dataclass(frozen=True)
class Band:
    key: str
    label: str
    range_text: str
    pct: float
    colour: str
    goal: str

    @property
    def display(self) -> str:
        if self.pct > 0 and self.pct < 0.05:
            return "<0.1 %"
        return f"{self.pct:.1f} %"


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    goal: str = ""


@dataclass(frozen=True)
class SummaryView:
    days: int
    has_data: bool
    sufficient: bool
    reasons: list[str]
    window_text: str
    bands: list[Band]
    tiles: list[Tile]
    unit: str
    unit_note: str
    agp_figure: dict[str, Any] | None
    daily_figure: dict[str, Any] | None
    excluded_text: str


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _glucose(mg: float | None, unit: str) -> str:
    if mg is None:
        return "—"
    return f"{mg / MMOL_L_TO_MG_DL:.1f} mmol/L" if unit == "mmol/L" else f"{mg:.0f} mg/dL"


def display_unit(document: Mapping[str, Any], preferred: str | None) -> str:
    """The site's or clinician's choice, else the unit most of the patient's readings came in."""
    if preferred in ("mg/dL", "mmol/L"):
        return preferred
    units = document.get("units", {})
    return "mmol/L" if units.get("readings_mmol_l", 0) > units.get("readings_mg_dl", 0) else "mg/dL"


def bands(metrics: Mapping[str, Any], unit: str) -> list[Band]:
    in_range = in_range_70_180(metrics)
    mm = unit == "mmol/L"
    rows = [
        ("very_high", "Very high", ">13.9" if mm else ">250", _num(metrics.get("time_above_250_pct")), "<5 %"),
        ("high", "High", "10.1–13.9" if mm else "181–250", _num(metrics.get("time_181_250_pct")), ""),
        ("in_range", "In range", "3.9–10.0" if mm else "70–180", in_range, ">70 %"),
        ("low", "Low", "3.0–3.8" if mm else "54–69", _num(metrics.get("time_54_69_pct")), ""),
        ("very_low", "Very low", "<3.0" if mm else "<54", _num(metrics.get("time_below_54_pct")), "<1 %"),
    ]
    return [Band(k, label, f"{r} {unit}", pct or 0.0, BAND_COLOURS[k], goal) for k, label, r, pct, goal in rows]


def _pct(value: Any, digits: int = 1) -> str:
    number = _num(value)
    return "—" if number is None else f"{number:.{digits}f} %"


def agp_figure(agp: Mapping[str, Any], unit: str) -> dict[str, Any] | None:
    minutes: Sequence[int] = agp.get("minute", [])
    if not any(n for n in agp.get("n", [])):
        return None
    factor = 1 / MMOL_L_TO_MG_DL if unit == "mmol/L" else 1.0
    x = [f"{m // 60:02d}:{m % 60:02d}" for m in minutes]

    def series(key: str) -> list[float | None]:
        return [None if v is None else round(v * factor, 2) for v in agp.get(key, [])]

    low, high = (3.9, 10.0) if unit == "mmol/L" else (70, 180)
    line = {"shape": "spline", "smoothing": 0.6}
    traces = [
        {"x": x, "y": series("p95"), "type": "scatter", "mode": "lines", "line": {"width": 0, **line},
         "hoverinfo": "skip", "showlegend": False},
        {"x": x, "y": series("p5"), "type": "scatter", "mode": "lines", "fill": "tonexty",
         "fillcolor": "rgba(66,133,244,0.18)", "line": {"width": 0, **line}, "name": "5–95 %"},
        {"x": x, "y": series("p75"), "type": "scatter", "mode": "lines", "line": {"width": 0, **line},
         "hoverinfo": "skip", "showlegend": False},
        {"x": x, "y": series("p25"), "type": "scatter", "mode": "lines", "fill": "tonexty",
         "fillcolor": "rgba(66,133,244,0.45)", "line": {"width": 0, **line}, "name": "25–75 %"},
        {"x": x, "y": series("p50"), "type": "scatter", "mode": "lines",
         "line": {"color": "#1a3d7c", "width": 2.5, **line}, "name": "Median"},
    ]  # fmt: skip
    return {
        "data": traces,
        "layout": {
            "margin": {"l": 44, "r": 8, "t": 8, "b": 36},
            "height": 280,
            "yaxis": {"title": {"text": unit}, "range": [0, 19.4 if unit == "mmol/L" else 350], "fixedrange": True},
            "xaxis": {"nticks": 9, "fixedrange": True},
            "shapes": [{"type": "rect", "xref": "paper", "x0": 0, "x1": 1, "y0": low, "y1": high,
                        "fillcolor": "rgba(58,166,85,0.12)", "line": {"width": 0}, "layer": "below"}],
            "legend": {"orientation": "h", "y": -0.18},
            "font": {"size": 12},
        },
        "config": {"displayModeBar": False, "responsive": True},
    }  # fmt: skip


def daily_figure(days: Sequence[Mapping[str, Any]], unit: str) -> dict[str, Any] | None:
    if not days:
        return None
    factor = 1 / MMOL_L_TO_MG_DL if unit == "mmol/L" else 1.0
    traces = []
    for day in days[-14:]:
        values = [None if v is None else round(v * factor, 2) for v in day["value"]]
        hours = [None if m is None else round(m / 60, 3) for m in day["minute"]]
        traces.append({"x": hours, "y": values, "type": "scatter", "mode": "lines", "name": day["date"],
                       "line": {"width": 1}, "opacity": 0.7})  # fmt: skip
    return {
        "data": traces,
        "layout": {"margin": {"l": 44, "r": 8, "t": 8, "b": 36}, "height": 240, "showlegend": False,
                   "xaxis": {"range": [0, 24], "dtick": 3, "title": {"text": "hour"}, "fixedrange": True},
                   "yaxis": {"title": {"text": unit}, "fixedrange": True}},
        "config": {"displayModeBar": False, "responsive": True},
    }  # fmt: skip


def summary_view(document: Mapping[str, Any], days: int, unit: str) -> SummaryView:
    metrics = document.get("metrics", {})
    used = int(metrics.get("readings_used") or 0)
    window = document.get("window")
    window_text = ""
    if window is not None:  # the end is exclusive: show the last day the window covers
        last_day = (date.fromisoformat(window["end"][:10]) - timedelta(days=1)).isoformat()
        window_text = f"{window['start'][:10]} to {last_day} ({window['days']:g} days)"
    units = document.get("units", {})
    unit_note = (
        f"{units.get('readings_mg_dl', 0):,} readings in mg/dL, {units.get('readings_mmol_l', 0):,} in mmol/L; "
        f"converted with {units.get('mmol_l_to_mg_dl', MMOL_L_TO_MG_DL)} mg/dL per mmol/L; bands classified in "
        "each reading's own unit"
    )
    excluded = {k: v for k, v in document.get("excluded", {}).items() if v}
    mean_goal = "<154 mg/dL" if unit == "mg/dL" else "<8.6 mmol/L"
    events = f"{metrics.get('hypo_events_l1', 0)} (<70) · {metrics.get('hypo_events_l2', 0)} (<54)"
    tiles = [
        Tile("Mean glucose", _glucose(_num(metrics.get("mean_mg_dl")), unit), mean_goal),
        Tile("GMI", _pct(metrics.get("gmi_pct")), "<7 %"),
        Tile("Glucose variability (CV)", _pct(metrics.get("cv_pct")), "≤36 %"),
        Tile("Time CGM active", _pct(metrics.get("sensor_active_pct")), "≥70 %"),
        Tile("Days of wear", f"{metrics.get('days_of_wear', 0)} of {days}"),
        Tile("Hypoglycaemia events", events),
    ]  # fmt: skip
    agp = document.get("agp", {})
    return SummaryView(
        days=days,
        has_data=used > 0,
        sufficient=bool(metrics.get("sufficient")),
        reasons=list(document.get("sufficiency", {}).get("reasons", [])),
        window_text=window_text,
        bands=bands(metrics, unit),
        tiles=tiles,
        unit=unit,
        unit_note=unit_note,
        agp_figure=agp_figure(agp, unit) if used else None,
        daily_figure=daily_figure(agp.get("days", []), unit) if used else None,
        excluded_text=", ".join(f"{k.replace('_', ' ')} {v}" for k, v in excluded.items()) or "none",
    )
