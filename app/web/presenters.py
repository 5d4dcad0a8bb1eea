"""Turn an engine patient document into what the clinician view shows: bands, tiles and Plotly figure specs.

Everything here is display: rounding happens here and nowhere else. Figures are plain dicts (Plotly JSON), built
without plotly's Python objects so a view renders in milliseconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from bff.broker.plan import SIGNED, PlannedWrite, note_bytes
from bff.resources.record import ZONE_WORDS
from engine.bands import BAND_THRESHOLDS
from engine.catalogue import CATALOGUE, CHART_MAX, MG_DL, MMOL_L, Kind, Metric, filed, shown, text
from engine.units import MMOL_L_TO_MG_DL, GlucoseUnit

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

    text: str = ""  # the value as shown (engine.catalogue.shown)

    @property
    def display(self) -> str:
        return self.text


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    goal: str = ""
    note: str = ""  # a second line: "14 of 14 days worn"


@dataclass(frozen=True)
class ZoneView:
    """The zone the outcome's days and AGP are in, and how it is known."""

    name: str
    source: str = "unknown"

    @property
    def label(self) -> str:
        return f"{self.name} ({ZONE_WORDS.get(self.source, self.source)})"

    @property
    def known(self) -> bool:
        return self.source != "unknown"


@dataclass(frozen=True)
class HourRow:
    """One hour of the modal day: the hour's readings over the period, in the display unit (text)."""

    hour: str  # "00:00"
    readings: int
    median: str
    middle: str  # 25th–75th percentile
    outer: str  # 5th–95th percentile


@dataclass(frozen=True)
class DayPanel:
    """One local day of the period: its trace (None: no reading that day) and a one-line summary."""

    date: str  # ISO date
    label: str  # "Mon 23 Nov"
    figure: dict[str, Any] | None
    summary: str


@dataclass(frozen=True)
class DailyPage:
    """One page of the period's daily profiles, oldest first; page 1 holds the most recent days."""

    days: int  # the period (14, 30, 90)
    page: int
    pages: int
    total: int  # local days in the window
    panels: list[DayPanel]
    range_text: str  # "23 Nov – 6 Dec 2026"
    scale_text: str  # the y-scale every chart shares: "0–350 mg/dL"
    #: Each hour's median per panel (a text alternative of the panels): rows of 24 hours, one value per panel.
    hourly: list[tuple[str, list[str]]]

    @property
    def earlier(self) -> int | None:
        return self.page + 1 if self.page < self.pages else None

    @property
    def later(self) -> int | None:
        return self.page - 1 if self.page > 1 else None


@dataclass(frozen=True)
class SummaryView:
    days: int
    has_data: bool
    sufficient: bool
    reasons: list[str]
    bands: list[Band]
    tiles: list[Tile]
    unit: str
    unit_note: str
    agp_figure: dict[str, Any] | None
    excluded_text: str
    zone: ZoneView = ZoneView("UTC")
    period_text: str = ""  # "23 Nov – 6 Dec 2026 (14 days)"
    sufficiency_text: str = ""  # what makes the period sufficient, when it is
    last_reading_text: str = ""  # "6 Dec 2026 23:55, 3 h 12 min ago"
    agp_hours: list[HourRow] = dataclasses.field(default_factory=list)
    agp_summary: str = ""
    daily: DailyPage | None = None
    announcement: str = ""  # the short sentence the live region reads after a period or unit change
    thresholds_text: str = ""  # the consensus thresholds the charts draw: "54, 70, 180, 250 mg/dL"


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def display_unit(document: Mapping[str, Any], preferred: str | None) -> str:
    """The site's or clinician's choice, else the unit most of the patient's readings came in."""
    if preferred in ("mg/dL", "mmol/L"):
        return preferred
    units = document.get("units", {})
    return "mmol/L" if units.get("readings_mmol_l", 0) > units.get("readings_mg_dl", 0) else "mg/dL"


#: The five bands top to bottom: (view key, catalogue key, range in mg/dL, in mmol/L).
BAND_ROWS = (
    ("very_high", "tar_l2", ">250", ">13.9"),
    ("high", "tar_l1", "181–250", "10.1–13.9"),
    ("in_range", "tir", "70–180", "3.9–10.0"),
    ("low", "tbr_l1", "54–69", "3.0–3.8"),
    ("very_low", "tbr_l2", "<54", "<3.0"),
)


def bands(metrics: Mapping[str, Any], unit: str, goals: Mapping[str, str] | None = None) -> list[Band]:
    """The five consensus bands with the values as filed (rounded once) and the target set's goals."""
    goals = goals or {}
    out = []
    for key, metric_key, mg, mmol in BAND_ROWS:
        m = CATALOGUE[metric_key]
        value = filed(m, metrics)
        out.append(Band(key, m.short, f"{mmol if unit == 'mmol/L' else mg} {unit}",
                        float(value) if value is not None else 0.0, BAND_COLOURS[key], goals.get(metric_key, ""),
                        shown(m, metrics)))  # fmt: skip
    return out


def band_goals(document: Mapping[str, Any]) -> dict[str, str]:
    """The goals of the document's target set on the five bands (standard: >70 % in range, <1 % very low …)."""
    targets = document.get("targets") or {}
    standard = list(targets.get("range_mg_dl", (70, 180))) == [70, 180]
    by_source = {"time_above_250_pct": "tar_l2", "time_181_250_pct": "tar_l1", "time_54_69_pct": "tbr_l1",
                 "time_below_54_pct": "tbr_l2"}  # fmt: skip
    if standard:
        by_source["time_in_range_pct"] = "tir"
    out = {}
    for goal in targets.get("goals", ()):
        key = by_source.get(str(goal.get("metric")))
        if key is not None:
            out[key] = f"{goal.get('op')}{float(goal.get('value', 0)):g} %"
    return out


#: Every glucose value the view shows (percentiles, a day's lowest and highest, the consensus thresholds) is a
#: concentration: shown with the catalogue's decimals for one (whole mg/dL, 0.1 mmol/L), rounded once.
GLUCOSE = CATALOGUE["mean_glucose"]


def glucose_text(mg_dl: float | None, unit: str) -> str:
    """A glucose value from mg/dL as a number in `unit` (no unit label), "—" for none."""
    value = filed(GLUCOSE, {GLUCOSE.source: None if mg_dl is None else float(mg_dl)}, unit)
    return "—" if value is None else str(value)


#: The consensus thresholds drawn on every chart (54, 70, 180, 250 mg/dL; 3.0, 3.9, 10.0, 13.9 mmol/L).
THRESHOLDS_MG_DL = BAND_THRESHOLDS[GlucoseUnit.MG_DL]
#: One y-scale for every chart of a unit, the PDF's: 0–350 mg/dL, 0–19.4 mmol/L.
Y_MAX = CHART_MAX  # the PDF's scale too
AGP_OUTER = "#c9dbf0"  # 5–95 %: one hue, three strengths (opaque, so the target band never shows through)
AGP_INNER = "#7aa3d6"  # 25–75 %
AGP_MEDIAN = "#173f7a"
TARGET_FILL = "rgba(58,166,85,0.10)"
TARGET_LINE = "#2e8b47"
OUTER_LINE = "#8a9099"
#: The AGP's curves are smoothed for display over about an hour of the modal day (a triangular kernel of
#: ±60 min over the document's bins); the hourly table gives the unsmoothed hourly percentiles.
SMOOTHING_MIN = 60


def _threshold_value(mg_dl: float, unit: str) -> float:
    """A consensus threshold in `unit`: the published mmol/L value, not a conversion (3.9, not 3.885)."""
    if unit != MMOL_L:
        return mg_dl
    return BAND_THRESHOLDS[GlucoseUnit.MMOL_L][THRESHOLDS_MG_DL.index(mg_dl)]


def _target_range(document: Mapping[str, Any], unit: str) -> tuple[float, float]:
    targets = document.get("targets") or {}
    key, default = ("range_mmol_l", (3.9, 10.0)) if unit == MMOL_L else ("range_mg_dl", (70.0, 180.0))
    low, high = [*list(targets.get(key) or ()), None, None][:2]
    return (_num(low) or default[0], _num(high) or default[1])


def _guides(document: Mapping[str, Any], unit: str, *, labels: bool) -> list[dict[str, Any]]:
    """The target range shaded beneath the data and lines above it: at 54/70/180/250 in the AGP (each named),
    at 70 and 180 in a day's small panel."""
    low, high = _target_range(document, unit)
    shapes: list[dict[str, Any]] = [
        {"type": "rect", "xref": "paper", "x0": 0, "x1": 1, "y0": low, "y1": high, "fillcolor": TARGET_FILL,
         "line": {"width": 0}, "layer": "below"},
    ]  # fmt: skip
    for mg in THRESHOLDS_MG_DL if labels else THRESHOLDS_MG_DL[1:3]:
        y = _threshold_value(mg, unit)
        target = mg in (70.0, 180.0)
        shape: dict[str, Any] = {
            "type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": y, "y1": y, "layer": "above",
            "line": {"color": TARGET_LINE if target else OUTER_LINE, "width": 1.2 if target else 1,
                     "dash": "solid" if target else "dash"},
        }  # fmt: skip
        if labels:
            shape["name"] = f"{glucose_text(mg, unit)} {unit}"
        shapes.append(shape)
    return shapes


def _smoothed(series: Sequence[float | None], bin_minutes: int) -> list[float | None]:
    """Circular triangular smoothing over ±SMOOTHING_MIN minutes, skipping empty bins; an empty bin stays empty."""
    reach = max(1, SMOOTHING_MIN // max(1, bin_minutes))
    n = len(series)
    out: list[float | None] = []
    for i, value in enumerate(series):
        if value is None:
            out.append(None)
            continue
        total = weight = 0.0
        for k in range(-reach, reach + 1):
            neighbour = series[(i + k) % n]
            if neighbour is not None:
                w = reach + 1 - abs(k)
                total += w * neighbour
                weight += w
        out.append(total / weight)
    return out


def agp_figure(agp: Mapping[str, Any], unit: str, document: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The AGP: 5–95 % and 25–75 % bands and the median over the modal day, 3-hourly ticks, the target range and
    the consensus thresholds; drawn at bin centres and wrapped around midnight so 00:00 meets 24:00."""
    minutes: Sequence[int] = agp.get("minute", [])
    if not minutes or not any(n for n in agp.get("n", [])):
        return None
    factor = 1 / MMOL_L_TO_MG_DL if unit == MMOL_L else 1.0
    bin_minutes = int(agp.get("bin_minutes") or 1440 // len(minutes))
    smooth = str(agp.get("smoothing", "none")) == "none"
    centres = [m + bin_minutes / 2 for m in minutes]
    x = [round(m / 60, 3) for m in (centres[-1] - 1440, *centres, centres[0] + 1440)]

    def series(key: str) -> list[float | None]:
        raw = [_num(v) for v in agp.get(key, [])]
        if len(raw) != len(minutes):
            raw = [None] * len(minutes)
        values = _smoothed(raw, bin_minutes) if smooth else raw
        values = [values[-1], *values, values[0]]
        return [None if v is None else round(v * factor, 2) for v in values]

    edge = {"width": 0, "shape": "spline", "smoothing": 0.5}
    hover = "%{y} " + unit + "<extra>%{fullData.name}</extra>"
    traces = [
        {"x": x, "y": series("p95"), "type": "scatter", "mode": "lines", "line": edge, "name": "95 %",
         "hovertemplate": hover, "showlegend": False},
        {"x": x, "y": series("p5"), "type": "scatter", "mode": "lines", "fill": "tonexty", "fillcolor": AGP_OUTER,
         "line": edge, "name": "5–95 %", "legendrank": 3, "hovertemplate": hover.replace("%{fullData.name}", "5 %")},
        {"x": x, "y": series("p75"), "type": "scatter", "mode": "lines", "line": edge, "name": "75 %",
         "hovertemplate": hover, "showlegend": False},
        {"x": x, "y": series("p25"), "type": "scatter", "mode": "lines", "fill": "tonexty", "fillcolor": AGP_INNER,
         "line": edge, "name": "25–75 %", "legendrank": 2,
         "hovertemplate": hover.replace("%{fullData.name}", "25 %")},
        {"x": x, "y": series("p50"), "type": "scatter", "mode": "lines", "name": "Median", "legendrank": 1,
         "line": {"color": AGP_MEDIAN, "width": 2.5, "shape": "spline", "smoothing": 0.5}, "hovertemplate": hover},
    ]  # fmt: skip
    document = document or {}
    shapes = _guides(document, unit, labels=True)
    ticks = [_threshold_value(mg, unit) for mg in THRESHOLDS_MG_DL]
    labels = [glucose_text(mg, unit) for mg in THRESHOLDS_MG_DL]
    return {
        "data": traces,
        "layout": {
            "margin": {"l": 52, "r": 24, "t": 8, "b": 36},
            "height": 340,
            "yaxis": {"title": {"text": unit}, "range": [0, Y_MAX[unit]], "fixedrange": True,
                      "tickvals": [*ticks, Y_MAX[unit]], "ticktext": [*labels, f"{Y_MAX[unit]:g}"],
                      "tickfont": {"size": 11}, "showgrid": False, "zeroline": False},
            "xaxis": {"range": [0, 24], "tickvals": list(range(0, 25, 3)),
                      "ticktext": [f"{h:02d}:00" for h in range(0, 25, 3)], "fixedrange": True,
                      "gridcolor": "#e3e6ea", "zeroline": False},
            "shapes": shapes,
            "legend": {"orientation": "h", "y": -0.14, "traceorder": "normal"},
            "hovermode": "x unified",
            "font": {"size": 12, "color": "#1b1f24"},
            "paper_bgcolor": "#fff",
            "plot_bgcolor": "#fff",
        },
        "config": {"displayModeBar": False, "responsive": True},
    }  # fmt: skip


# MARK: daily traces


def _points(day: Mapping[str, Any]) -> list[tuple[float, float]]:
    """A day's readings (local minute of day, mg/dL), the engine's breaks left out."""
    return [(float(m), float(v)) for m, v in zip(day.get("minute", []), day.get("value", []), strict=False)
            if _num(m) is not None and _num(v) is not None]  # fmt: skip


def sampling_minutes(days: Sequence[Mapping[str, Any]]) -> float:
    """The readings' sampling interval: the median step between consecutive readings of a day (5 min for most
    sensors, 15 for a Libre 1 or 2). The document's traces do not say which device made them; their spacing does."""
    steps = [b[0] - a[0] for day in days for a, b in itertools.pairwise(_points(day)) if b[0] > a[0]]
    return float(np.median(steps)) if steps else 5.0


def bridged(day: Mapping[str, Any], interval_min: float) -> tuple[list[float | None], list[float | None]]:
    """A day's trace (minutes, mg/dL) joined across gaps of up to twice the sampling interval (one or two missed
    readings) and broken (None) beyond: drawing only, nothing is computed from it."""
    minutes: list[float | None] = []
    values: list[float | None] = []
    previous = None
    for minute, value in _points(day):
        if previous is not None and minute - previous > 2 * interval_min:
            minutes.append(None)
            values.append(None)
        minutes.append(minute)
        values.append(value)
        previous = minute
    return minutes, values


def day_figure(minutes: Sequence[float | None], values: Sequence[float | None], unit: str,
               document: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One day's small panel: the trace on the AGP's y-scale, the target range shaded, 00–24 h."""
    factor = 1 / MMOL_L_TO_MG_DL if unit == MMOL_L else 1.0
    hours = [None if m is None else round(m / 60, 3) for m in minutes]
    y = [None if v is None else round(v * factor, 2) for v in values]
    return {
        "data": [{"x": hours, "y": y, "type": "scatter", "mode": "lines", "hoverinfo": "skip",
                  "line": {"color": "#1b1f24", "width": 1.2}}],
        "layout": {
            "margin": {"l": 4, "r": 4, "t": 4, "b": 4},
            "height": 96,
            "showlegend": False,
            "xaxis": {"range": [0, 24], "tickvals": [6, 12, 18], "showticklabels": False, "fixedrange": True,
                      "gridcolor": "#e3e6ea", "zeroline": False},
            "yaxis": {"range": [0, Y_MAX[unit]], "showticklabels": False, "showgrid": False, "fixedrange": True,
                      "zeroline": False},
            "shapes": _guides(document, unit, labels=False),
            "paper_bgcolor": "#fff",
            "plot_bgcolor": "#fff",
        },
        "config": {"displayModeBar": False, "responsive": True, "staticPlot": True},
    }  # fmt: skip


#: Days per page of daily profiles (two weeks, as the consensus AGP report shows them).
DAYS_PER_PAGE = 14
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def day_label(day: date) -> str:
    return f"{WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]}"


def date_text(day: date) -> str:
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def dates_text(first: date, last: date) -> str:
    """The dates as a clinician reads them: 23 Nov – 6 Dec 2026, 28 Dec 2025 – 10 Jan 2026, 6 Dec 2026."""
    if first == last:
        return date_text(first)
    start = f"{first.day} {MONTHS[first.month - 1]}" + (f" {first.year}" if first.year != last.year else "")
    return f"{start} – {date_text(last)}"


def window_dates(window: Mapping[str, Any] | None) -> list[date]:
    """The local dates a window covers (its end is exclusive)."""
    if not window:
        return []
    start = datetime.fromisoformat(str(window["start"]))
    end = datetime.fromisoformat(str(window["end"]))
    last = end.date() - timedelta(days=1) if end.time() == time(0) else end.date()
    return [start.date() + timedelta(days=i) for i in range((last - start.date()).days + 1)]


def _hour_of(minute: float) -> int:
    return min(23, int(minute // 60))


def _day_summary(day: date, points: Sequence[tuple[float, float]], stats: Mapping[str, Any] | None,
                 unit: str) -> str:  # fmt: skip
    if not points:
        return f"{day_label(day)}: no readings"
    stats = stats or {}
    low = min(points, key=lambda p: p[1])
    high = max(points, key=lambda p: p[1])
    parts = [
        f"{_lowered(GLUCOSE.short)} {shown(GLUCOSE, stats, unit)}",
        f"{_lowered(CATALOGUE['tir'].short)} {shown(CATALOGUE['tir'], stats)}",
        f"lowest {glucose_text(low[1], unit)} at {_clock(low[0])}",
        f"highest {glucose_text(high[1], unit)} at {_clock(high[0])}",
        f"{len(points)} readings",
    ]
    return f"{day_label(day)}: " + ", ".join(parts)


def _lowered(label: str) -> str:
    """A catalogue label inside a sentence: "Time CGM active" -> "time CGM active"."""
    return label[:1].lower() + label[1:]


def _clock(minute: float) -> str:
    whole = int(minute)
    return f"{whole // 60:02d}:{whole % 60:02d}"


def daily_page(document: Mapping[str, Any], days: int, unit: str, page: int = 1) -> DailyPage | None:
    """The period's daily profiles, DAYS_PER_PAGE local days a page, page 1 the most recent (a page past the
    last shows the last)."""
    dates = window_dates(document.get("window"))
    if not dates:
        return None
    traces = [d for d in (document.get("agp") or {}).get("days", []) if isinstance(d, Mapping)]
    by_date = {str(d.get("date")): d for d in traces}
    stats = {str(d.get("date")): d for d in document.get("daily", []) if isinstance(d, Mapping)}
    interval = sampling_minutes(traces)  # a day's own spacing when it has enough readings (a sensor changed)
    pages = -(-len(dates) // DAYS_PER_PAGE)
    page = min(max(1, page), pages)
    shown_dates = dates[max(0, len(dates) - page * DAYS_PER_PAGE) : len(dates) - (page - 1) * DAYS_PER_PAGE]
    panels = []
    medians: list[list[str]] = [[] for _ in range(24)]
    for day in shown_dates:
        trace = by_date.get(day.isoformat())
        points = _points(trace) if trace is not None else []
        figure = None
        if points and trace is not None:
            own = sampling_minutes([trace]) if len(points) > 12 else interval
            figure = day_figure(*bridged(trace, own), unit, document)
        panels.append(DayPanel(day.isoformat(), day_label(day), figure,
                               _day_summary(day, points, stats.get(day.isoformat()), unit)))  # fmt: skip
        by_hour: list[list[float]] = [[] for _ in range(24)]
        for minute, value in points:
            by_hour[_hour_of(minute)].append(value)
        for hour, values in enumerate(by_hour):
            medians[hour].append(glucose_text(float(np.median(values)), unit) if values else "—")
    return DailyPage(days, page, pages, len(dates), panels, dates_text(shown_dates[0], shown_dates[-1]),
                     f"0–{Y_MAX[unit]:g} {unit}", [(f"{h:02d}:00", medians[h]) for h in range(24)])  # fmt: skip


def hourly_agp(document: Mapping[str, Any], unit: str) -> list[HourRow]:
    """The AGP's text alternative: each hour of the modal day, its readings' 5th/25th/50th/75th/95th percentiles
    (type 7, as the engine's AGP, docs/outcomes-method.md §10) in the display unit."""
    by_hour: list[list[float]] = [[] for _ in range(24)]
    for day in (document.get("agp") or {}).get("days", []):
        for minute, value in _points(day):
            by_hour[_hour_of(minute)].append(value)
    rows = []
    for hour, values in enumerate(by_hour):
        if not values:
            rows.append(HourRow(f"{hour:02d}:00", 0, "—", "—", "—"))
            continue
        p5, p25, p50, p75, p95 = (float(v) for v in np.percentile(values, [5, 25, 50, 75, 95]))
        rows.append(HourRow(f"{hour:02d}:00", len(values), glucose_text(p50, unit),
                            f"{glucose_text(p25, unit)}–{glucose_text(p75, unit)}",
                            f"{glucose_text(p5, unit)}–{glucose_text(p95, unit)}"))  # fmt: skip
    return rows


def agp_summary(rows: Sequence[HourRow], unit: str) -> str:
    """One line: where the median is lowest and highest over the day."""
    with_data = [r for r in rows if r.readings]
    if not with_data:
        return ""
    low = min(with_data, key=lambda r: Decimal(r.median))
    high = max(with_data, key=lambda r: Decimal(r.median))
    return (f"Hourly median lowest {low.median} {unit} at {low.hour}, highest {high.median} {unit} at "
            f"{high.hour}.")  # fmt: skip


def last_reading(document: Mapping[str, Any]) -> datetime | None:
    """The instant of the last reading used (the document's traces are in local minutes of its zone)."""
    for day in reversed((document.get("agp") or {}).get("days", [])):
        points = _points(day)
        if points:
            local = datetime.fromisoformat(str(day["date"])) + timedelta(minutes=points[-1][0])
            return local.replace(tzinfo=ZoneInfo(str(document.get("tz") or "UTC")))
    return None


def last_reading_text(then: datetime | None, now: datetime) -> str:
    """ "6 Dec 2026 23:55, 3 h 12 min ago" (the local time of the patient's zone), or "" without a reading."""
    return "" if then is None else f"{date_text(then.date())} {then:%H:%M}, {age_text(then, now)}"


def age_text(then: datetime, now: datetime) -> str:
    """How long ago: 4 min ago, 3 h 12 min ago, 2 days ago."""
    minutes = int((now - then).total_seconds() // 60)
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min ago"
    return f"{minutes // 1440} days ago"


def _events_tile(key: str, threshold_mg_dl: float, unit: str, metrics: Mapping[str, Any]) -> Tile:
    """An events tile named as the catalogue names it ("Events <70"), its threshold in the display unit."""
    m = CATALOGUE[key]
    label = m.short.replace(glucose_text(threshold_mg_dl, MG_DL), glucose_text(threshold_mg_dl, unit))
    return Tile(f"{label} {unit}", shown(m, metrics, none="0 events"), note="≥15 min each")


def charts_of(document: Mapping[str, Any], days: int, unit: str, page: int = 1) -> dict[str, Any]:
    """The view's charts and their text alternatives, as JSON: what is worth building once per outcome version
    and display choice (app.web.charts caches it by the outcome's digest)."""
    used = int(document.get("metrics", {}).get("readings_used") or 0)
    if not used:
        return {"agp_figure": None, "agp_hours": [], "daily": None}
    daily = daily_page(document, days, unit, page)
    return {
        "agp_figure": agp_figure(document.get("agp", {}), unit, document),
        "agp_hours": [dataclasses.asdict(h) for h in hourly_agp(document, unit)],
        "daily": None if daily is None else dataclasses.asdict(daily),
    }


def page_entry(summary: SummaryView, html: Mapping[str, str], last: datetime | None) -> dict[str, Any]:
    """The page's cache entry for one outcome version and display choice: the charts' rendered HTML
    (`app.web.app.chart_html`) and the summary's fields (bands, tiles, texts, the daily page's heading and pager),
    so a view neither reads the stored document nor builds them again. The figures' data is in the HTML (their own
    entry serves the chart data API). What depends on the request is not in it: the zone (the patient's, read with
    the outcome) and the last reading's age (its instant is kept, its age is worded per view:
    `summary_of_entry`)."""
    daily = None
    if summary.daily is not None:
        daily = dataclasses.replace(summary.daily, panels=[], hourly=[])
    kept = dataclasses.replace(summary, agp_figure=None, agp_hours=[], daily=daily, last_reading_text="")
    fields = dataclasses.asdict(kept)
    del fields["zone"], fields["last_reading_text"]
    return {"summary": fields, "html": dict(html), "last_reading": None if last is None else last.isoformat()}


def summary_of_entry(entry: Mapping[str, Any], zone: ZoneView, now: datetime | None = None) -> SummaryView:
    """The summary a page entry (`page_entry`) holds, with the patient's zone and the last reading's age now."""
    fields = dict(entry["summary"])
    fields["bands"] = [Band(**b) for b in fields["bands"]]
    fields["tiles"] = [Tile(**t) for t in fields["tiles"]]
    fields["agp_hours"] = [HourRow(**h) for h in fields["agp_hours"]]
    fields["daily"] = _daily_from(fields["daily"])
    last = entry.get("last_reading")
    then = None if last is None else datetime.fromisoformat(str(last))
    return SummaryView(**fields, zone=zone, last_reading_text=last_reading_text(then, now or datetime.now(UTC)))


def _daily_from(data: Mapping[str, Any] | None) -> DailyPage | None:
    if data is None:
        return None
    fields = dict(data)
    fields["panels"] = [DayPanel(**p) for p in data["panels"]]
    fields["hourly"] = [(str(h), list(v)) for h, v in data["hourly"]]
    return DailyPage(**fields)


def summary_view(document: Mapping[str, Any], days: int, unit: str, zone: ZoneView | None = None, *,
                 page: int = 1, now: datetime | None = None,
                 charts: Mapping[str, Any] | None = None) -> SummaryView:  # fmt: skip
    """What the summary shows; `charts` is `charts_of(document, days, unit, page)` when a cache has it."""
    metrics = document.get("metrics", {})
    used = int(metrics.get("readings_used") or 0)
    charts = charts if charts is not None else charts_of(document, days, unit, page)
    dates = window_dates(document.get("window"))  # local dates; the window's end is exclusive
    period_text = f"{dates_text(dates[0], dates[-1])} ({len(dates)} days)" if dates else ""
    units = document.get("units", {})
    unit_note = (
        f"{units.get('readings_mg_dl', 0):,} readings in mg/dL, {units.get('readings_mmol_l', 0):,} in mmol/L; "
        f"converted with {units.get('mmol_l_to_mg_dl', MMOL_L_TO_MG_DL)} mg/dL per mmol/L; bands classified in "
        "each reading's own unit"
    )
    excluded = {k: v for k, v in document.get("excluded", {}).items() if v}
    wear = filed(CATALOGUE["days_of_wear"], metrics)
    active_tile = CATALOGUE["sensor_active"]
    tiles = [
        *(Tile(CATALOGUE[k].short, shown(CATALOGUE[k], metrics, unit), CATALOGUE[k].goal_text(unit))
          for k in ("mean_glucose", "gmi", "cv")),
        Tile(active_tile.short, shown(active_tile, metrics), active_tile.goal_text(),
             f"{CATALOGUE['days_of_wear'].short}: {wear if wear is not None else 0} of {days}"),
        _events_tile("hypo_events_l1", THRESHOLDS_MG_DL[1], unit, metrics),
        _events_tile("hypo_events_l2", THRESHOLDS_MG_DL[0], unit, metrics),
    ]  # fmt: skip
    sufficient = bool(metrics.get("sufficient"))
    active = CATALOGUE["sensor_active"]
    sufficiency_text = (
        f"Sufficient data: {_lowered(active.short)} {shown(active, metrics)} (goal {active.goal_text()})"
        if sufficient else ""
    )  # fmt: skip
    last_text = last_reading_text(last_reading(document) if used else None, now or datetime.now(UTC))
    hours = [HourRow(**h) for h in charts["agp_hours"]]
    if not used:
        announcement = f"No CGM data in the last {days} days."
    else:
        announcement = f"Showing {days} days, {period_text.split(' (', maxsplit=1)[0]}, in {unit}." + (
            "" if sufficient else " Insufficient data."
        )
    return SummaryView(
        days=days,
        has_data=used > 0,
        sufficient=sufficient,
        reasons=list(document.get("sufficiency", {}).get("reasons", [])),
        bands=bands(metrics, unit, band_goals(document)),
        tiles=tiles,
        unit=unit,
        unit_note=unit_note,
        agp_figure=charts["agp_figure"],
        excluded_text=", ".join(f"{k.replace('_', ' ')} {v}" for k, v in excluded.items()) or "none",
        zone=zone or ZoneView(str(document.get("tz") or "UTC")),
        period_text=period_text,
        sufficiency_text=sufficiency_text,
        last_reading_text=last_text,
        agp_hours=hours,
        agp_summary=agp_summary(hours, unit),
        daily=_daily_from(charts["daily"]),
        announcement=announcement,
        thresholds_text=", ".join(glucose_text(mg, unit) for mg in THRESHOLDS_MG_DL) + f" {unit}",
    )


# MARK: write-back review


MODE_LABELS = {
    "read_only": "nothing (read-only)",
    "flowsheet_only": "flowsheet rows only",
    "notes_only": "notes only",
    "observations": "results (Observations)",
    "full": "results, note and report",
}
STATE_LABELS = {
    "awaiting_signoff": "awaiting your signature",
    "deferred": "deferred",
    "queued": "queued",
    "sending": "sending",
    "unknown": "checking with the EHR",
    "confirmed": "confirmed",
    "failed": "failed",
    "cancelled": "cancelled",
    "expanded": "expanded",
}


@dataclass(frozen=True)
class ReviewRow:
    label: str  # what the EHR files it as: "Flowsheet row 3040101010", "LOINC 97510-2"
    name: str  # the clinical name
    value: str
    detail: str = ""  # instant, category, encounter
    summary: str = ""  # the planned request's own one-line summary, when the row is one request


@dataclass(frozen=True)
class ReviewItem:
    kind: str
    request: str  # "POST Observation", "POST (transaction)", "HL7 v2 over MLLP"
    summary: str
    rows: list[ReviewRow]
    text: str | None = None  # the note's text, or the HL7 v2 message
    size_bytes: int | None = None  # a PDF's size
    count: int = 1  # how many requests (flowsheet rows and single Observations are shown as one table)


def signed_values(content: Mapping[str, Any], unit: str) -> list[Tile]:
    """What the clinician signs: each filed value as the EHR will receive it (the same decimal string). A
    concentration viewed in another unit than the site files shows both, labelled."""
    values = content.get("values", {})
    mmol = content.get("values_mmol_l", {})
    filing_unit = content.get("glucose_unit", "mg/dL")
    filed_texts = _filed_texts(content)
    out = []
    for key, as_filed in filed_texts.items():
        m = CATALOGUE[key]
        if m.kind is Kind.CONCENTRATION and unit != filing_unit:
            viewed = _signed_text(m, mmol.get(key) if unit == MMOL_L else values.get(key), unit)
            out.append(Tile(m.name, viewed, f"filed as {as_filed}"))
            continue
        out.append(Tile(m.name, as_filed))
    return out


def _filed_texts(content: Mapping[str, Any]) -> dict[str, str]:
    """Each signed metric's value as it is filed (the decimal string, in the site's unit), in catalogue order."""
    values = content.get("values", {})
    mmol = content.get("values_mmol_l", {})
    filing_unit = content.get("glucose_unit", "mg/dL")
    out = {}
    for key in SIGNED:
        if key not in values:
            continue
        m = CATALOGUE[key]
        if m.kind is Kind.CONCENTRATION:
            out[key] = _signed_text(m, mmol.get(key) if filing_unit == MMOL_L else values.get(key), filing_unit)
        else:
            out[key] = _signed_text(m, values.get(key), "mg/dL")
    return out


def _signed_text(m: Metric, value: str | None, unit: str) -> str:
    return text(m, None if value is None else Decimal(value), unit)


@dataclass(frozen=True)
class ChartEntry:
    """What one part of the plan puts in the chart, and where, in a clinician's words (the requests themselves are
    the integration engineer's: ReviewItem)."""

    kind: str
    what: str  # "8 flowsheet rows (vital signs)"
    where: str  # "in the encounter this app was opened from, dated 7 Dec 2026 00:00 (UTC)"
    values: list[Tile] = dataclasses.field(default_factory=list)  # name and value exactly as filed
    text: str | None = None  # the note, as it will read in the chart


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _dated(instant: Any, tz: str) -> str:
    if not isinstance(instant, str):
        return ""
    try:
        moment = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    except (ValueError, KeyError):
        return ""
    return f", dated {date_text(moment.date())} {moment:%H:%M} ({tz})"


def _encounter_words(has_encounter: bool) -> str:
    if has_encounter:
        return "in the encounter this app was opened from"
    return "in the patient's chart, not in an encounter"


def chart_entries(writes: Sequence[PlannedWrite], content: Mapping[str, Any], tz: str) -> list[ChartEntry]:
    """What the chart will show once signed: rows and results with the values exactly as filed, the note's text,
    the report; consecutive flowsheet rows (or results) are one entry."""
    filed_texts = _filed_texts(content)
    entries: list[ChartEntry] = []
    for write in writes:
        body: Mapping[str, Any] = write.body or {}
        if write.kind in ("flowsheet", "observations"):
            values = [Tile(CATALOGUE[k].name, filed_texts[k]) for k in write.metrics if k in filed_texts]
            last = entries[-1] if entries else None
            if last is not None and last.kind == write.kind:
                entries[-1] = dataclasses.replace(last, values=[*last.values, *values])
                continue
            where = _encounter_words(bool(body.get("encounter"))) + _dated(body.get("effectiveDateTime"), tz)
            category = f" ({write.category.replace('-', ' ')})" if write.category else ""
            entries.append(ChartEntry(write.kind, category, where, values))
            continue
        encounters = (body.get("context") or {}).get("encounter") if isinstance(body.get("context"), Mapping) else None
        if write.kind == "note":
            raw = note_bytes(write)
            note = raw.decode("utf-8", errors="replace") if raw is not None else None
            lines = len(note.splitlines()) if note else 0
            entries.append(ChartEntry("note", f"A clinical note ({_plural(lines, 'line')})",
                                      _encounter_words(bool(encounters)), text=note))  # fmt: skip
        elif write.kind == "pdf":
            entries.append(ChartEntry("pdf", "The one-page AGP report (PDF)", "in the patient's documents"))
        elif write.kind == "bundle":
            what = "The CGM summary with its results, the sensor, the readings and where they came from"
            entries.append(ChartEntry("bundle", what, "in the patient's results, as one submission"))
        elif write.kind == "hl7v2":
            what = "The CGM results" + (" and the AGP report" if "AGP report" in write.summary else "")
            entries.append(ChartEntry("hl7v2", what, "in the patient's results, through the site's results interface"))
    counted = {"flowsheet": "flowsheet row", "observations": "result"}
    order = {CATALOGUE[k].name: i for i, k in enumerate(SIGNED)}
    return [dataclasses.replace(e, what=_plural(len(e.values), counted[e.kind]) + e.what,
                                values=sorted(e.values, key=lambda v: order.get(v.label, len(order))))
            if e.kind in counted else e for e in entries]  # fmt: skip


def _quantity(resource: Mapping[str, Any]) -> str:
    """The value exactly as the request carries it (its JSON text) with its unit."""
    quantity = resource.get("valueQuantity") or {}
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    unit = str(quantity.get("unit") or quantity.get("code") or "")
    shown_unit = {"d": "days", "{events}": "events", "{score}": ""}.get(unit, unit)
    return f"{json.dumps(value)} {shown_unit}".rstrip()


def _observation_row(resource: Mapping[str, Any], *, flowsheet: bool) -> ReviewRow:
    code = resource.get("code") or {}
    codings = [c for c in code.get("coding", []) if isinstance(c, Mapping)]
    first = codings[0] if codings else {}
    loinc = next((c for c in codings if c.get("system") == "http://loinc.org"), None)
    if flowsheet:
        label = f"Flowsheet row {first.get('code', '?')}"
    elif loinc is not None:
        label = f"LOINC {loinc.get('code')}"
    else:
        label = str(first.get("code", ""))
    name = str(code.get("text") or first.get("display") or "")
    details = []
    if resource.get("effectiveDateTime"):
        details.append(str(resource["effectiveDateTime"]))
    categories = [c.get("code") for item in resource.get("category", []) for c in item.get("coding", [])]
    if categories:
        details.append(", ".join(str(c) for c in categories))
    encounter = (resource.get("encounter") or {}).get("reference")
    if encounter:
        details.append(str(encounter))
    if resource.get("status") == "corrected" or resource.get("note"):
        details.append("correction")
    return ReviewRow(label, name, _quantity(resource), " · ".join(details))


def _attachment_size(resource: Mapping[str, Any]) -> int | None:
    for content in resource.get("content", []):
        attachment = content.get("attachment") or {}
        if isinstance(attachment.get("size"), int):
            return int(attachment["size"])
        data = attachment.get("data")
        if isinstance(data, str):
            return len(data) * 3 // 4 - data[-2:].count("=")
    return None


def _bundle_rows(body: Mapping[str, Any]) -> list[ReviewRow]:
    bundle = body
    if body.get("resourceType") == "Parameters":  # $submit-cgm-bundle wraps the Bundle
        bundle = next((p.get("resource") for p in body.get("parameter", []) if p.get("resource")), {}) or {}
    rows = []
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Observation" and "valueQuantity" in resource:
            rows.append(_observation_row(resource, flowsheet=False))
    return rows


def _bundle_contents(body: Mapping[str, Any]) -> str:
    bundle = body
    if body.get("resourceType") == "Parameters":
        bundle = next((p.get("resource") for p in body.get("parameter", []) if p.get("resource")), {}) or {}
    counts: dict[str, int] = {}
    for entry in bundle.get("entry", []):
        kind = str((entry.get("resource") or {}).get("resourceType", "?"))
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))


def review_items(writes: Sequence[PlannedWrite]) -> list[ReviewItem]:
    """The planned requests as the clinician reviews them: what, where, and every value each carries.

    Consecutive flowsheet rows (or single Observations) are one table, one row per request."""
    items: list[ReviewItem] = []
    for write in writes:
        body: Mapping[str, Any] = write.body or {}
        if write.kind in ("flowsheet", "observations"):
            row = dataclasses.replace(
                _observation_row(body, flowsheet=write.kind == "flowsheet"), summary=write.summary
            )
            last = items[-1] if items else None
            if last is not None and last.kind == write.kind:
                items[-1] = dataclasses.replace(last, rows=[*last.rows, row], count=last.count + 1)
            else:
                items.append(ReviewItem(write.kind, f"{write.method} {write.path}", "", [row]))
            continue
        rows: list[ReviewRow] = []
        text = None
        size = None
        if write.channel == "hl7v2":
            request = "HL7 v2 ORU^R01 over MLLP"
            text = (write.message or "").replace("\r", "\n").strip()
        else:
            request = f"{write.method} {write.path or '(transaction)'}"
        if write.kind == "bundle":
            rows = _bundle_rows(body)
            contents = _bundle_contents(body)
            text = f"Resources: {contents}" if contents else None
        elif write.kind == "note":
            raw = note_bytes(write)
            text = raw.decode("utf-8", errors="replace") if raw is not None else None
        elif write.kind == "pdf":
            size = _attachment_size(body)
        items.append(ReviewItem(write.kind, request, write.summary, rows, text, size))
    return [_titled(item) for item in items]


def _titled(item: ReviewItem) -> ReviewItem:
    if item.kind == "flowsheet":
        return dataclasses.replace(item, summary=f"{item.count} flowsheet row{'s' if item.count != 1 else ''}",
                                   request=f"{item.request}, one per row")  # fmt: skip
    if item.kind == "observations":
        return dataclasses.replace(item, summary=f"{item.count} result{'s' if item.count != 1 else ''} (Observations)",
                                   request=f"{item.request}, one per result")  # fmt: skip
    return item


def local_window(window: tuple[int, int], tz: str) -> str:
    """A window's first and last local day (the end is exclusive)."""
    zone = ZoneInfo(tz)
    start = datetime.fromtimestamp(window[0] / 1000, zone).date()
    last = (datetime.fromtimestamp(window[1] / 1000, zone) - timedelta(microseconds=1)).date()
    return f"{dates_text(start, last)} ({(last - start).days + 1} days, {tz})"


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
