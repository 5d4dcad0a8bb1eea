"""The clinician view's presenter on hand-made engine documents: the AGP's guides and scale, the daily panels and
their paging, the trace gap rule, the hourly tables, the last reading's age, the review's clinical words.

No app and no browser: `app.web.presenters` turns a document into what the templates show.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from markupsafe import Markup

from app.web.presenters import (
    DAYS_PER_PAGE,
    Y_MAX,
    age_text,
    bridged,
    chart_entries,
    daily_page,
    last_reading,
    sampling_minutes,
    signed_values,
    summary_view,
)
from bff.broker.plan import PlannedWrite

START = datetime(2026, 3, 1)


def document(days: int, step_min: float = 5.0, *, tz: str = "America/Chicago", gap_day: int | None = None,
             gap: tuple[float, float] = (600.0, 625.0)) -> dict[str, Any]:  # fmt: skip
    """A document of `days` local days with a reading every `step_min` minutes (120 mg/dL, 60 at 03:00-04:00),
    and on `gap_day` no reading strictly inside `gap` (minutes of the day)."""
    traces = []
    for d in range(days):
        minutes = [m * step_min for m in range(int(1440 // step_min))]
        if d == gap_day:
            minutes = [m for m in minutes if not gap[0] < m < gap[1]]
        traces.append({"date": (START + timedelta(days=d)).date().isoformat(), "minute": minutes,
                       "value": [60.0 if 180 <= m < 240 else 120.0 for m in minutes]})  # fmt: skip
    daily = [{"date": t["date"], "mean_mg_dl": 115.0, "time_below_70_pct": 4.2, "time_above_180_pct": 0.0}
             for t in traces]  # fmt: skip
    bins = list(range(0, 1440, 15))
    return {
        "tz": tz,
        "window": {"start": f"{START.date()}T00:00:00-06:00",
                   "end": f"{(START + timedelta(days=days)).date()}T00:00:00-06:00", "days": float(days)},
        "metrics": {"readings_used": sum(len(t["minute"]) for t in traces), "sufficient": True,
                    "time_below_70_pct": 4.2, "time_above_180_pct": 0.0, "mean_mg_dl": 115.0,
                    "sensor_active_pct": 99.0, "days_of_wear": days},
        "sufficiency": {"sufficient": True, "reasons": []},
        "targets": {"range_mg_dl": [70.0, 180.0], "range_mmol_l": [3.9, 10.0], "goals": []},
        "units": {"readings_mg_dl": 1, "readings_mmol_l": 0},
        "daily": daily,
        "agp": {"unit": "mg/dL", "bin_minutes": 15, "smoothing": "none", "minute": bins, "n": [days] * len(bins),
                **{f"p{q}": [60.0 if 180 <= m < 240 else 100.0 + q for m in bins] for q in (5, 25, 50, 75, 95)},
                "days": traces},
    }  # fmt: skip


# MARK: the AGP


@pytest.mark.parametrize(("unit", "lines"), [("mg/dL", [54.0, 70.0, 180.0, 250.0]), ("mmol/L", [3.0, 3.9, 10.0, 13.9])])
def test_the_agp_has_3_hourly_ticks_the_consensus_lines_and_the_pdf_scale(unit: str, lines: list[float]) -> None:
    view = summary_view(document(14), 14, unit)
    figure = view.agp_figure
    assert figure is not None
    layout = figure["layout"]
    assert layout["xaxis"]["tickvals"] == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert layout["xaxis"]["ticktext"][0] == "00:00"
    assert layout["xaxis"]["ticktext"][-1] == "24:00"
    drawn = [s["y0"] for s in layout["shapes"] if s["type"] == "line"]
    assert drawn == lines
    assert [s["name"] for s in layout["shapes"] if s["type"] == "line"] == [f"{t} {unit}" for t in
                                                                          layout["yaxis"]["ticktext"][:4]]  # fmt: skip
    assert layout["yaxis"]["range"] == [0, Y_MAX[unit]]
    assert [t["name"] for t in figure["data"] if t.get("showlegend", True)] == ["5–95 %", "25–75 %", "Median"]
    # 96 bins drawn at their centres, wrapped so 00:00 meets 24:00
    assert len(figure["data"][0]["x"]) == 98
    assert view.thresholds_text == ", ".join(layout["yaxis"]["ticktext"][:4]) + f" {unit}"


def test_the_agp_curves_are_smoothed_for_display_and_the_table_is_not() -> None:
    view = summary_view(document(14), 14, "mg/dL")
    assert view.agp_figure is not None
    median = view.agp_figure["data"][4]["y"][1:-1]
    assert 60.0 < median[12] < 150.0  # 03:00, inside the low hour, pulled up by its neighbours
    hours = {h.hour: h for h in view.agp_hours}
    assert hours["03:00"].median == "60"  # the table: the hour's own readings
    assert hours["12:00"].median == "120"
    assert hours["12:00"].readings == 14 * 12
    assert view.agp_summary == "Hourly median lowest 60 mg/dL at 03:00, highest 120 mg/dL at 00:00."


# MARK: daily panels


@pytest.mark.parametrize("days", [14, 30, 90])
def test_the_daily_panels_cover_every_day_of_the_period_across_pages(days: int) -> None:
    doc = document(days)
    first = daily_page(doc, days, "mg/dL")
    assert first is not None
    pages = [daily_page(doc, days, "mg/dL", n) for n in range(1, first.pages + 1)]
    dates = [p.date for page in reversed(pages) if page for p in page.panels]
    assert len(dates) == days == len(set(dates))
    assert dates == sorted(dates)
    assert all(len(page.panels) == DAYS_PER_PAGE for page in pages[:-1] if page)
    assert first.panels[-1].date == (START + timedelta(days=days - 1)).date().isoformat()  # page 1: the latest
    assert first.earlier == (2 if days > DAYS_PER_PAGE else None)
    assert first.later is None
    assert daily_page(doc, days, "mg/dL", 99) == pages[-1]  # past the end: the earliest days


def test_every_chart_has_the_same_y_scale_per_unit() -> None:
    for unit in ("mg/dL", "mmol/L"):
        view = summary_view(document(30), 30, unit)
        assert view.agp_figure is not None
        assert view.daily is not None
        ranges = {tuple(view.agp_figure["layout"]["yaxis"]["range"])}
        ranges |= {tuple(p.figure["layout"]["yaxis"]["range"]) for p in view.daily.panels if p.figure}
        assert ranges == {(0, Y_MAX[unit])}


def test_a_day_without_readings_is_a_panel_that_says_so() -> None:
    doc = document(14)
    doc["agp"]["days"] = [t for t in doc["agp"]["days"] if t["date"] != "2026-03-05"]
    page = daily_page(doc, 14, "mg/dL")
    assert page is not None
    assert len(page.panels) == 14
    empty = next(p for p in page.panels if p.date == "2026-03-05")
    assert empty.figure is None
    assert empty.summary == "Thu 5 Mar: no readings"
    assert [values[4] for _, values in page.hourly] == ["—"] * 24
    full = page.panels[0]
    assert full.summary.startswith("Sun 1 Mar: mean glucose 115 mg/dL, in range 95.8 %, lowest 60 at 03:00")


# MARK: the trace gap rule: bridged up to twice the sampling interval


@pytest.mark.parametrize(("step", "gap", "joined"), [
    (5.0, (600.0, 610.0), True),  # one 5-min reading missing: 10 min, joined
    (5.0, (600.0, 615.0), False),  # two missing: 15 min, broken
    (15.0, (600.0, 630.0), True),  # Libre 2: one 15-min reading missing, 30 min, joined
    (15.0, (600.0, 645.0), False),  # two missing: 45 min, broken
])  # fmt: skip
def test_traces_are_joined_across_gaps_up_to_twice_the_sampling_interval(step: float, gap: tuple[float, float],
                                                                          joined: bool) -> None:  # fmt: skip
    doc = document(2, step, gap_day=0, gap=gap)
    traces = doc["agp"]["days"]
    assert sampling_minutes(traces) == step
    minutes, values = bridged(traces[0], step)
    assert (None in minutes) is not joined
    assert minutes.count(None) == values.count(None)
    assert None not in bridged(traces[1], step)[0]


def test_the_engines_libre_breaks_at_15_min_are_joined() -> None:
    """A Libre 2 day as the engine documents it: a None wherever two readings are more than 15 min apart."""
    day = {"date": "2026-03-01", "minute": [12.05, 27.05, None, 42.08, 57.05, None, 72.08],
           "value": [100.0, 104.0, None, 108.0, 110.0, None, 111.0]}  # fmt: skip
    assert bridged(day, sampling_minutes([day])) == ([12.05, 27.05, 42.08, 57.05, 72.08],
                                                     [100.0, 104.0, 108.0, 110.0, 111.0])  # fmt: skip


# MARK: the period, the zone, the last reading


def test_the_view_says_the_period_in_local_dates_and_how_old_the_last_reading_is() -> None:
    now = datetime(2026, 3, 15, 8, 30, tzinfo=UTC)  # 03:30 CDT, 3 h 35 min after 23:55 on 14 Mar
    view = summary_view(document(14), 14, "mg/dL", now=now)
    assert view.period_text == "1 Mar – 14 Mar 2026 (14 days)"
    assert view.last_reading_text == "14 Mar 2026 23:55, 3 h 35 min ago"
    assert view.announcement == "Showing 14 days, 1 Mar – 14 Mar 2026, in mg/dL."
    assert view.sufficiency_text == "Sufficient data: time CGM active 99.0 % (goal ≥70 %)"
    assert age_text(now - timedelta(days=3, hours=1), now) == "3 days ago"
    assert age_text(now - timedelta(seconds=20), now) == "just now"


# MARK: the review's clinical words


def test_the_review_says_what_appears_in_the_chart_with_the_filed_decimals() -> None:
    content = {"glucose_unit": "mg/dL", "values": {"tir": "73.6", "mean_glucose": "152", "gmi": "6.9"},
               "values_mmol_l": {"mean_glucose": "8.4"}}  # fmt: skip

    def row(key: str) -> PlannedWrite:
        body = {"resourceType": "Observation", "effectiveDateTime": "2026-03-15T05:00:00Z",
                "encounter": {"reference": "Encounter/e1"}}  # fmt: skip
        return PlannedWrite("flowsheet", "fhir", "POST", "Observation", (key,), f"row {key}", body,
                            category="vital-signs")  # fmt: skip

    entries = chart_entries([row("mean_glucose"), row("tir"), row("gmi")], content, "America/Chicago")
    assert len(entries) == 1
    entry = entries[0]
    assert entry.what == "3 flowsheet rows (vital signs)"
    assert entry.where == "in the encounter this app was opened from, dated 15 Mar 2026 00:00 (America/Chicago)"
    assert [(v.label, v.value) for v in entry.values] == [
        ("Time in range 70-180 mg/dL", "73.6 %"), ("Mean glucose", "152 mg/dL"),
        ("Glucose management indicator", "6.9 %")]  # fmt: skip
    signed = {t.label: t for t in signed_values(content, "mmol/L")}
    assert signed["Mean glucose"].value == "8.4 mmol/L"
    assert signed["Mean glucose"].goal == "filed as 152 mg/dL"


@pytest.mark.parametrize(("unit", "labels"), [("mg/dL", ["Events <70 mg/dL", "Events <54 mg/dL"]),
                                              ("mmol/L", ["Events <3.9 mmol/L", "Events <3.0 mmol/L"])])  # fmt: skip
def test_the_event_tiles_are_named_in_the_display_unit(unit: str, labels: list[str]) -> None:
    tiles = summary_view(document(14), 14, unit).tiles
    assert [t.label for t in tiles[-2:]] == labels
    assert [t.value for t in tiles[-2:]] == ["0 events", "0 events"]


def test_each_day_is_joined_by_its_own_sampling_interval() -> None:
    """A patient who moved from a Libre 2 to a 5-minute sensor: the Libre day keeps its 30-minute rule."""
    doc = document(14, 5.0)
    libre = document(1, 15.0, gap_day=0, gap=(600.0, 630.0))["agp"]["days"][0]  # one 15-min reading missing
    doc["agp"]["days"][0] = libre
    page = daily_page(doc, 14, "mg/dL")
    assert page is not None
    libre_panel = page.panels[0].figure
    assert libre_panel is not None
    assert None not in libre_panel["data"][0]["x"]


# MARK: the cached chart HTML


@pytest.mark.parametrize("days", [14, 30])
def test_the_page_is_the_same_with_the_chart_html_rendered_once_and_cached(days: int) -> None:
    """The AGP and daily-profile HTML is rendered once per outcome version and display choice and cached with the
    charts (app.web.app.chart_html); the summary and the daily fragment come out byte for byte the same whether
    that HTML is there or the templates include the partials themselves, and it holds no launch or token."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: PLC0415

    from app.web.app import TEMPLATES, _static_url, _tojson, chart_html  # noqa: PLC0415
    from app.web.presenters import ZoneView, page_entry, summary_of_entry, summary_view  # noqa: PLC0415

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    env.globals["static"] = _static_url
    env.policies["json.dumps_function"] = _tojson
    doc = document(days, gap_day=2)
    summary = summary_view(doc, days, "mg/dL", ZoneView("America/Chicago", "ehr"), page=1)
    assert summary.daily is not None
    context = {"summary": summary, "base": "/v/HANDLE/patients/p1/", "unit_query": "", "csrf_token": "TOKEN",
               "outcome_freshness": "", "ehr_read": {}, "ehr_read_status": None, "engine_version": "1",
               "method": "time", "poll": False}  # fmt: skip
    html = chart_html(env, summary)
    assert set(html) == {"agp", "daily"}
    assert all("HANDLE" not in part and "TOKEN" not in part for part in html.values())
    assert "data-figure=" in html["agp"]
    assert html["daily"].count("day-panel") == len(summary.daily.panels)
    # The page's cache entry: the HTML, the summary's fields and the daily pager, without the figures' data (in
    # the HTML) or the document; through JSON, as Redis keeps it, and read back with the zone and the age now.
    now = datetime(2026, 3, 20, 12, tzinfo=UTC)
    entry = orjson.loads(orjson.dumps(page_entry(summary, html, last_reading(doc))))
    assert entry["summary"]["agp_figure"] is None
    assert entry["summary"]["daily"]["panels"] == []
    assert entry["summary"]["daily"]["hourly"] == []
    assert "zone" not in entry["summary"]
    assert all("HANDLE" not in part and "TOKEN" not in part for part in entry["html"].values())
    from_entry = summary_of_entry(entry, ZoneView("America/Chicago", "ehr"), now)
    assert from_entry.last_reading_text == summary_view(doc, days, "mg/dL", page=1, now=now).last_reading_text
    summary = dataclasses.replace(summary, last_reading_text=from_entry.last_reading_text)
    context["summary"] = summary
    for name in ("patient/_summary.html", "patient/_daily.html"):
        included = env.get_template(name).render(**context, chart_html=None)
        cached = env.get_template(name).render(**context, chart_html={k: Markup(v) for k, v in html.items()})
        assert cached == included, name
        light = env.get_template(name).render(
            **{**context, "summary": from_entry}, chart_html={k: Markup(v) for k, v in entry["html"].items()}
        )
        assert light == included, name


@pytest.mark.parametrize("unit", ["mg/dL", "mmol/L"])
@pytest.mark.parametrize("days", [14, 30, 90])
def test_a_page_entry_gives_back_the_summary_the_document_gives(unit: str, days: int) -> None:
    """What a view reads from the cache (the entry through JSON) is the summary built from the stored document,
    field for field, but for the figures' data and the daily panels (rendered into the entry's HTML)."""
    from app.web.presenters import ZoneView, page_entry, summary_of_entry  # noqa: PLC0415

    now = datetime(2026, 6, 1, 8, 30, tzinfo=UTC)
    zone = ZoneView("America/Chicago", "ehr")
    for doc in (document(days, gap_day=1), {"metrics": {"readings_used": 0}}):
        summary = summary_view(doc, days, unit, zone, page=2 if days == 90 else 1, now=now)
        last = last_reading(doc) if summary.has_data else None
        back = summary_of_entry(orjson.loads(orjson.dumps(page_entry(summary, {"agp": "<div></div>"}, last))), zone,
                                now)  # fmt: skip
        daily = None if summary.daily is None else dataclasses.replace(summary.daily, panels=[], hourly=[])
        assert back == dataclasses.replace(summary, agp_figure=None, agp_hours=[], daily=daily)
