"""Turn an engine patient document into what the clinician view shows: bands, tiles and Plotly figure specs.

Everything here is display: rounding happens here and nowhere else. Figures are plain dicts (Plotly JSON), built
without plotly's Python objects so a view renders in milliseconds.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from bff.broker.plan import SIGNED, PlannedWrite, note_bytes
from bff.resources.record import ZONE_WORDS
from engine.catalogue import CATALOGUE, MMOL_L, Kind, Metric, filed, shown, text
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

    text: str = ""  # the value as shown (engine.catalogue.shown)

    @property
    def display(self) -> str:
        return self.text


@dataclass(frozen=True)
class Tile:
    label: str
    value: str
    goal: str = ""


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
    zone: ZoneView = ZoneView("UTC")


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


def summary_view(document: Mapping[str, Any], days: int, unit: str, zone: ZoneView | None = None) -> SummaryView:
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
    low1, low2 = ("3.9", "3.0") if unit == "mmol/L" else ("70", "54")
    events = (f"{shown(CATALOGUE['hypo_events_l1'], metrics, none='0')} (<{low1}) · "
              f"{shown(CATALOGUE['hypo_events_l2'], metrics, none='0')} (<{low2})")  # fmt: skip
    wear = filed(CATALOGUE["days_of_wear"], metrics)
    tiles = [
        *(Tile(CATALOGUE[k].short, shown(CATALOGUE[k], metrics, unit), CATALOGUE[k].goal_text(unit))
          for k in ("mean_glucose", "gmi", "cv", "sensor_active")),
        Tile(CATALOGUE["days_of_wear"].short, f"{wear if wear is not None else 0} of {days}"),
        Tile("Hypoglycaemia events", events),
    ]  # fmt: skip
    agp = document.get("agp", {})
    return SummaryView(
        days=days,
        has_data=used > 0,
        sufficient=bool(metrics.get("sufficient")),
        reasons=list(document.get("sufficiency", {}).get("reasons", [])),
        window_text=window_text,
        bands=bands(metrics, unit, band_goals(document)),
        tiles=tiles,
        unit=unit,
        unit_note=unit_note,
        agp_figure=agp_figure(agp, unit) if used else None,
        daily_figure=daily_figure(agp.get("days", []), unit) if used else None,
        excluded_text=", ".join(f"{k.replace('_', ' ')} {v}" for k, v in excluded.items()) or "none",
        zone=zone or ZoneView(str(document.get("tz") or "UTC")),
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
    out = []
    for key in SIGNED:
        if key not in values:
            continue
        m = CATALOGUE[key]
        if m.kind is Kind.CONCENTRATION:
            as_filed = _signed_text(m, mmol.get(key) if filing_unit == MMOL_L else values.get(key), filing_unit)
            if unit != filing_unit:
                viewed = _signed_text(m, mmol.get(key) if unit == MMOL_L else values.get(key), unit)
                out.append(Tile(m.name, viewed, f"filed as {as_filed}"))
                continue
            out.append(Tile(m.name, as_filed))
            continue
        out.append(Tile(m.name, _signed_text(m, values.get(key), "mg/dL")))
    return out


def _signed_text(m: Metric, value: str | None, unit: str) -> str:
    return text(m, None if value is None else Decimal(value), unit)


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
    return f"{start.isoformat()} to {last.isoformat()} ({(last - start).days + 1} days, {tz})"


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
