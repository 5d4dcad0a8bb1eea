"""A one-page PDF AGP report (US Letter portrait) of one outcome window, in the consensus AGP layout.

Header (patient, window, zone, version / correction badge), an INSUFFICIENT DATA banner when the window is not
sufficient, glucose statistics with goals, the Time in Ranges stacked bar, the AGP percentile chart and the
daily glucose profiles, and a provenance footer.

Drawn with matplotlib's object API (no pyplot, no GUI backend) into its PDF backend with the 14 standard PDF
fonts (Helvetica: nothing embedded, nothing downloaded), so the file is small and quick to make. It is
deterministic: no creation date, no random ids, fixed layout, so the same record gives byte-identical bytes.
Text is kept to Windows-1252 (ASCII plus the en dash), which the standard fonts can show.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch, Rectangle

from bff.resources.note import (
    bands,
    check_unit,
    conversion,
    format_glucose,
    format_pct,
    insufficiency_reasons,
    local_window,
    policy_number,
    target_name,
    target_range,
)
from bff.resources.record import OutcomeRecord
from engine.catalogue import CATALOGUE, CHART_MAX

__all__ = ["BAND_COLORS", "MAX_DAILY_PANELS", "agp_report_pdf"]

#: Consensus Time-in-Ranges colours.
BAND_COLORS: Mapping[str, str] = {
    "very_high": "#E4741C",  # dark orange
    "high": "#F9BE26",  # orange-yellow
    "in_range": "#3AA655",  # green
    "low": "#E0342C",  # red
    "very_low": "#8E1B16",  # dark red
}
#: AGP chart colours: 5-95 band light, 25-75 band darker, median line, target band.
AGP_OUTER = "#BDD3EE"
AGP_INNER = "#5B8CC9"
AGP_MEDIAN = "#173F7A"
TARGET_FILL = "#E3F3E6"
TARGET_LINE = "#3AA655"
HEADER_FILL = "#E9ECEF"
INK = "#1F2328"
MUTED = "#5F6670"
ALERT = "#B3261E"
#: Daily profiles: at most two rows of seven panels (the last 14 local dates of a longer window).
MAX_DAILY_PANELS = 14
PANELS_PER_ROW = 7
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
PAGE = (8.5, 11.0)  # US Letter, inches
Y_MAX_MG_DL = CHART_MAX["mg/dL"]
Y_MAX_MMOL_L = CHART_MAX["mmol/L"]

#: rcParams (set per report with rc_context) are process-global: one report is drawn at a time.
_LOCK = threading.Lock()


def agp_report_pdf(
    record: OutcomeRecord, *, unit: str = "mg/dL", traces: Sequence[Mapping[str, Any]] | None = None
) -> bytes:
    """The one-page AGP report of `record` as PDF bytes; glucose values in `unit` ("mg/dL" or "mmol/L").

    `traces` are daily traces as in the document's `agp.days` (`{"date", "minute": [...], "value": [...]}`, mg/dL,
    `None` at breaks); without them the document's `agp.days` are used when present, and otherwise each day's
    panel shows its Time in Ranges bar and mean glucose.
    """
    check_unit(unit)
    if traces is None:
        agp = record.document.get("agp") or {}
        days = agp.get("days") if isinstance(agp, Mapping) else None
        traces = days if isinstance(days, Sequence) else None
    with (
        _LOCK,
        _quiet_fonts(),
        mpl.rc_context(
            {
                "pdf.use14corefonts": True,  # Helvetica from the reader: no font embedded, text stays extractable
                "pdf.compression": 6,
                "font.family": "sans-serif",
                "font.sans-serif": ["Helvetica"],
                "font.weight": "medium",  # Helvetica's AFM weight ("normal" logs a fallback each time)
                "axes.unicode_minus": False,
                "text.usetex": False,
                "text.parse_math": False,  # a "$" in an id is text, not mathtext
            }
        ),
    ):
        fig = Figure(figsize=PAGE)
        _Page(fig, record, unit, traces).draw()
        out = io.BytesIO()
        fig.savefig(out, format="pdf", metadata=_metadata(record))
    return out.getvalue()


def _metadata(record: OutcomeRecord) -> dict[str, Any]:
    return {
        "Title": _latin(f"AGP report {record.patient_id} v{record.version}"),
        "Author": "glucobridge",
        "Subject": "Ambulatory Glucose Profile",
        "Creator": f"glucobridge engine {record.engine_version}",
        "Producer": "glucobridge",
        "CreationDate": None,  # no dates and no ids: byte-identical output
        "ModDate": None,
    }


@contextmanager
def _quiet_fonts() -> Iterator[None]:
    """matplotlib logs a font-weight fallback for the standard fonts on some lookups: not news, not logged."""
    logger = logging.getLogger("matplotlib.font_manager")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _latin(text: str) -> str:
    """What the standard PDF fonts can show (Windows-1252); anything else becomes '?'."""
    text = text.replace("\u2264", "<=").replace("\u2265", ">=").replace("\u2014", "-")
    return text.encode("cp1252", "replace").decode("cp1252")


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _day_label(day: date) -> str:
    return f"{WEEKDAYS[day.weekday()]} {MONTHS[day.month - 1]} {day.day}"


class _Page:
    """Lays out the page top-down in figure coordinates (0..1, origin bottom left)."""

    LEFT = 0.055
    RIGHT = 0.945

    def __init__(
        self, fig: Figure, record: OutcomeRecord, unit: str, traces: Sequence[Mapping[str, Any]] | None
    ) -> None:
        self.fig = fig
        self.record = record
        self.unit = unit
        self.factor = conversion(record)
        self.y_max = Y_MAX_MG_DL if unit == "mg/dL" else Y_MAX_MMOL_L
        self.traces = traces
        self.width = self.RIGHT - self.LEFT

    # --- helpers -------------------------------------------------------------------------------------------
    def text(self, x: float, y: float, s: str, **kw: Any) -> None:
        kw.setdefault("color", INK)
        kw.setdefault("fontsize", 8)
        self.fig.text(x, y, _latin(s), **kw)

    def glucose(self, mg_dl: float) -> float:
        return mg_dl if self.unit == "mg/dL" else mg_dl / self.factor

    def limit(self, mg_dl: float) -> str:
        return f"{mg_dl:g}" if self.unit == "mg/dL" else f"{mg_dl / self.factor:.1f}"

    def section(self, y_top: float, title: str, x0: float | None = None, x1: float | None = None) -> float:
        """A grey section bar with its title; returns the y below it."""
        x0 = self.LEFT if x0 is None else x0
        x1 = self.RIGHT if x1 is None else x1
        h = 0.02
        self.fig.patches.append(
            Rectangle((x0, y_top - h), x1 - x0, h, transform=self.fig.transFigure, color=HEADER_FILL, lw=0)
        )
        self.text(x0 + 0.008, y_top - h / 2, title.upper(), fontsize=8.5, fontweight="bold", va="center")
        return y_top - h

    # --- page ----------------------------------------------------------------------------------------------
    def draw(self) -> None:
        y = self.header(0.975)
        if not self.record.sufficient:
            y = self.banner(y - 0.008)
        y_top_row = y - 0.012
        self.statistics(y_top_row, self.LEFT, 0.485)
        y_after = self.time_in_ranges(y_top_row, 0.515, self.RIGHT)
        y = self.agp(y_after - 0.015, 0.215)
        self.daily(y - 0.02, 0.052)
        self.footer()

    def header(self, y: float) -> float:
        r = self.record
        self.text(self.LEFT, y, "AGP Report: Continuous Glucose Monitoring", fontsize=14, fontweight="bold", va="top")
        first, last, days = local_window(r)
        self.text(
            self.LEFT,
            y - 0.027,
            f"{r.patient_text}    {first} to {last} ({days:g} days)    Time zone {r.zone_text}",
            fontsize=9,
            va="top",
        )
        if r.prior is not None:
            badge, color = f"CORRECTION  v{r.version} replaces v{r.prior.version}", ALERT
        else:
            badge, color = f"Version {r.version}", MUTED
        self.text(
            self.RIGHT,
            y - 0.002,
            badge,
            fontsize=9,
            fontweight="bold",
            color="white",
            ha="right",
            va="top",
            bbox={"boxstyle": "round,pad=0.35", "facecolor": color, "edgecolor": color},
        )
        y_rule = y - 0.042
        self.fig.add_artist(
            Rectangle((self.LEFT, y_rule), self.width, 0.0012, transform=self.fig.transFigure, color=INK, lw=0)
        )
        return y_rule

    def banner(self, y_top: float) -> float:
        reasons = insufficiency_reasons(self.record)
        h = 0.034 + 0.014 * len(reasons)
        self.fig.patches.append(
            FancyBboxPatch(
                (self.LEFT, y_top - h),
                self.width,
                h,
                boxstyle="round,pad=0,rounding_size=0.006",
                transform=self.fig.transFigure,
                facecolor="#FDECEA",
                edgecolor=ALERT,
                lw=1.5,
            )
        )
        self.text(
            self.LEFT + 0.015,
            y_top - 0.008,
            "INSUFFICIENT DATA - not a complete picture",
            fontsize=12,
            fontweight="bold",
            color=ALERT,
            va="top",
        )
        for i, reason in enumerate(reasons):
            self.text(self.LEFT + 0.025, y_top - 0.03 - 0.014 * i, f"- {reason}", fontsize=8.5, color=ALERT, va="top")
        return y_top - h

    def statistics(self, y_top: float, x0: float, x1: float) -> float:
        r, m = self.record, self.record.metrics
        y = self.section(y_top, "Glucose statistics and targets", x0, x1)
        _, _, days = local_window(r)
        mean, cv = _num(m.get("mean_mg_dl")), _num(m.get("cv_pct"))
        name = target_name(r)
        lo, hi = target_range(r)
        goal = CATALOGUE["cv"].goal
        assert goal is not None
        cv_goal = f"goal {CATALOGUE['cv'].goal_text()}"
        if cv is not None:
            cv_goal += " (met)" if goal.met(cv) else " (NOT met)"
        l1, l2 = m.get("hypo_events_l1"), m.get("hypo_events_l2")
        minutes = policy_number(r, "hypo_min_minutes", 15)
        rows: list[tuple[str, str, str]] = [
            ("Test period", f"{days:g} days", ""),  # the dates are in the header
            ("% time CGM is active", format_pct(_num(m.get("sensor_active_pct"))), ""),
            ("Days with CGM data", str(m.get("days_of_wear", "n/a")), f"{m.get('readings_used', 'n/a')} readings"),
            ("Average glucose", format_glucose(mean, self.unit), ""),
            ("Glucose Management Indicator (GMI)", format_pct(_num(m.get("gmi_pct"))), ""),
            ("Glucose variability (CV)", format_pct(cv), cv_goal),
            (
                f"Hypo events >= {minutes:g} min, L1 / L2",
                f"{l1 if l1 is not None else 'n/a'} / {l2 if l2 is not None else 'n/a'}",
                f"< {self.limit(70)} / < {self.limit(54)} {self.unit}",
            ),
            ("Targets", name, f"{self.limit(lo)}-{self.limit(hi)} {self.unit}"),
        ]
        row_h = 0.0215
        y -= 0.006
        for i, (label, value, note) in enumerate(rows):
            yc = y - row_h * (i + 0.5)
            self.text(x0 + 0.006, yc, label, fontsize=8, va="center")
            self.text(x0 + 0.255, yc, value, fontsize=9, fontweight="bold", va="center")
            if note:
                self.text(x1 - 0.004, yc, note, fontsize=7, color=MUTED, va="center", ha="right")
            if i < len(rows) - 1:
                self.fig.add_artist(
                    Rectangle(
                        (x0, y - row_h * (i + 1)), x1 - x0, 0.0006, transform=self.fig.transFigure, color="#D0D4D9"
                    )
                )
        return y - row_h * len(rows)

    def time_in_ranges(self, y_top: float, x0: float, x1: float) -> float:
        y = self.section(y_top, "Time in ranges", x0, x1)
        h = 0.18
        ax = self.fig.add_axes((x0, y - 0.008 - h, x1 - x0, h))
        ax.set_axis_off()
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        all_rows = bands(self.record)
        five = [b for b in all_rows if b.group == "band"]  # very high .. very low
        order = list(zip(("very_low", "low", "in_range", "high", "very_high"), reversed(five), strict=True))
        values = [max(0.0, b.value or 0.0) for _, b in order]
        total = sum(values)
        bar_x, bar_w, bar_y0, bar_h = 0.03, 0.11, 0.02, 0.96
        if total <= 0:
            ax.add_patch(Rectangle((bar_x, bar_y0), bar_w, bar_h, facecolor="white", edgecolor=MUTED, lw=0.8))
            ax.text(bar_x + bar_w / 2, 0.5, "no data", ha="center", va="center", fontsize=7, color=MUTED, rotation=90)
            mids = [bar_y0 + bar_h * (i + 0.5) / 5 for i in range(5)]
        else:
            # A segment above 0 keeps a visible minimum height (drawing only; the labels give the numbers).
            heights = [0.0 if v <= 0 else max(v / total, 0.012) for v in values]
            scale = 1.0 / sum(heights)
            mids, bottom = [], bar_y0
            for (key, _), hgt in zip(order, heights, strict=True):
                seg = hgt * scale * bar_h
                if seg > 0:
                    ax.add_patch(Rectangle((bar_x, bottom), bar_w, seg, facecolor=BAND_COLORS[key], lw=0.6,
                                           edgecolor="white"))  # fmt: skip
                mids.append(bottom + seg / 2)
                bottom += seg
        slots = [0.07, 0.27, 0.5, 0.73, 0.93]
        x_label, x_range, x_value = 0.2, 0.46, 0.98
        for (key, band), mid, slot in zip(order, mids, slots, strict=True):
            ax.plot([bar_x + bar_w + 0.005, 0.17, x_label - 0.01], [mid, slot, slot], color="#9AA1A9", lw=0.6)
            ax.text(x_label, slot, band.label, fontsize=9, fontweight="bold", va="center", color=INK)
            ax.text(x_range, slot, _latin(band.range_label(self.unit)), fontsize=7.5, va="center", color=MUTED)
            ax.text(x_value, slot, format_pct(band.value), fontsize=10, fontweight="bold", va="center", ha="right",
                    color=BAND_COLORS[key] if key != "high" else "#B7860B")  # fmt: skip
            if band.goal is not None:
                ax.text(x_label, slot - 0.065, self.goal_text(band.goal_label(), band.met_label()), fontsize=6.5,
                        va="center", color=self.goal_color(band.met_label()))  # fmt: skip
        # The sums with goals (High + very high, Low + very low, and a non-standard target range) below the bar.
        y_next = y - 0.008 - h - 0.006
        extras = [b for b in all_rows if b.group != "band" and (b.goal is not None or b.group == "target")]
        for b in extras:
            goal = self.goal_text(b.goal_label(), b.met_label()) if b.goal is not None else ""
            self.text(x0 + 0.006, y_next, f"{b.label} ({_latin(b.range_label(self.unit))})", fontsize=7.5,
                      va="top")  # fmt: skip
            self.text(x0 + 0.2, y_next, format_pct(b.value), fontsize=7.5, fontweight="bold", va="top")
            self.text(x0 + 0.265, y_next, goal, fontsize=7, va="top", color=self.goal_color(b.met_label()))
            y_next -= 0.0145
        return y_next

    @staticmethod
    def goal_text(goal: str, met: str) -> str:
        return f"Goal: {goal}   {met}" if goal else ""

    @staticmethod
    def goal_color(met: str) -> str:
        return {"met": "#2E7D32", "NOT MET": ALERT}.get(met, MUTED)

    def agp(self, y_top: float, h: float) -> float:
        title = "Ambulatory Glucose Profile (AGP)"
        y = self.section(y_top, title)
        if not self.record.sufficient:
            self.text(self.RIGHT - 0.008, y + 0.01, "insufficient data: interpret with caution", fontsize=7.5,
                      color=ALERT, fontweight="bold", ha="right", va="center")  # fmt: skip
        self.text(
            self.LEFT,
            y - 0.006,
            "Glucose percentiles by time of day over the report period, as if they all occurred in one day.",
            fontsize=7,
            color=MUTED,
            va="top",
        )
        ax = self.fig.add_axes((self.LEFT + 0.04, y - 0.02 - h, self.width - 0.1, h))
        self.agp_axes(ax)
        return y - 0.02 - h - 0.025

    def agp_axes(self, ax: Axes) -> None:
        agp = self.record.document.get("agp") or {}
        minutes = [float(v) for v in agp.get("minute", ())] if isinstance(agp, Mapping) else []
        bin_min = float(agp.get("bin_minutes", 15)) if isinstance(agp, Mapping) else 15.0
        series: dict[str, list[float]] = {}
        for q in ("p5", "p25", "p50", "p75", "p95"):
            raw = agp.get(q, ()) if isinstance(agp, Mapping) else ()
            series[q] = [math.nan if _num(v) is None else self.glucose(float(v)) for v in raw]
        lo, hi = (self.glucose(v) for v in target_range(self.record))
        ax.set_xlim(0, 1440)
        ax.set_ylim(0, self.y_max)
        ax.axhspan(lo, hi, color=TARGET_FILL, lw=0, zorder=0)
        for v in (lo, hi):
            ax.axhline(v, color=TARGET_LINE, lw=1.0, zorder=1)
        for hour in range(3, 24, 3):
            ax.axvline(hour * 60, color="#D6DADF", lw=0.5, zorder=0.5)
        for v in (self.glucose(54), self.glucose(250)):
            ax.axhline(v, color="#C7CCD2", lw=0.6, ls=(0, (3, 3)), zorder=0.5)
        ok = len(minutes) > 0 and all(len(s) == len(minutes) for s in series.values())
        has_data = ok and any(not math.isnan(v) for v in series["p50"])
        if has_data:
            # Percentiles stand for their bin: drawn at bin centres, wrapped around midnight so 00:00 meets 24:00.
            x = [minutes[-1] + bin_min / 2 - 1440, *(m + bin_min / 2 for m in minutes), minutes[0] + bin_min / 2 + 1440]
            s = {q: [v[-1], *v, v[0]] for q, v in series.items()}
            ax.fill_between(x, s["p5"], s["p95"], color=AGP_OUTER, lw=0, zorder=2)
            ax.fill_between(x, s["p25"], s["p75"], color=AGP_INNER, lw=0, zorder=3)
            ax.plot(x, s["p50"], color=AGP_MEDIAN, lw=1.8, zorder=4)
            self.percentile_labels(ax, {q: v[-1] for q, v in s.items()})
        else:
            ax.text(720, self.y_max * 0.8, "No glucose data in this window", ha="center", va="center", fontsize=10,
                    color=MUTED, zorder=5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 3})  # fmt: skip
        marks = list(target_range(self.record))  # labelled: the target range, and 54 / 250 where there is room
        marks += [v for v in (54.0, 250.0) if all(abs(v - w) >= 12.0 for w in marks)]
        marks.sort()
        ticks = [self.glucose(v) for v in marks] + [self.y_max]
        ax.set_yticks(ticks, labels=[self.limit(v) for v in marks] + [f"{self.y_max:g}"])
        ax.set_xticks(range(0, 1441, 180), labels=[f"{h:02d}:00" for h in range(0, 25, 3)])
        ax.tick_params(labelsize=7.5, length=2.5, colors=INK)
        ax.set_ylabel(self.unit, fontsize=8)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
        ax.spines["left"].set_color("#8A9099")
        ax.spines["bottom"].set_color("#8A9099")

    def percentile_labels(self, ax: Axes, ends: Mapping[str, float]) -> None:
        """95 %, 75 %, 50 %, 25 %, 5 % at the right edge, spread apart so they never overlap."""
        items = sorted(((v, q) for q, v in ends.items() if not math.isnan(v)), key=lambda t: (t[0], t[1]))
        gap = self.y_max * 0.06
        placed: list[float] = []
        for v, _ in items:
            placed.append(max(v, placed[-1] + gap) if placed else max(v, gap * 0.3))
        overflow = (placed[-1] - self.y_max * 0.98) if placed else 0.0
        if overflow > 0:
            placed = [p - overflow for p in placed]
            for i in range(len(placed) - 2, -1, -1):
                placed[i] = min(placed[i], placed[i + 1] - gap)
        for (v, q), yl in zip(items, placed, strict=True):
            ax.annotate(
                f"{q[1:]}%",
                xy=(1440, v),
                xytext=(1440 + 40, yl),
                textcoords="data",
                fontsize=7,
                fontweight="bold" if q == "p50" else "medium",
                color=AGP_MEDIAN if q == "p50" else MUTED,
                va="center",
                annotation_clip=False,
                arrowprops={"arrowstyle": "-", "color": "#9AA1A9", "lw": 0.5, "shrinkA": 0, "shrinkB": 0},
            )

    def daily(self, y_top: float, y_bottom: float) -> None:
        y = self.section(y_top, "Daily glucose profiles")
        dates = self.window_dates()
        shown = dates[-MAX_DAILY_PANELS:]
        note = "Each panel is one local day (midnight to midnight)"
        if len(dates) > len(shown):
            note += f"; the last {len(shown)} of {len(dates)} days are shown"
        by_date = {str(t.get("date")): t for t in self.traces or () if isinstance(t, Mapping)}
        daily = {str(d.get("date")): d for d in self.record.document.get("daily", ()) if isinstance(d, Mapping)}
        note += (
            "; green band: target range." if by_date else "; no traces in this record: bar = that day's time in ranges."
        )
        self.text(self.LEFT, y - 0.006, note, fontsize=7, color=MUTED, va="top")
        rows = max(1, math.ceil(len(shown) / PANELS_PER_ROW))
        top = y - 0.022
        gap_x, gap_y, label_h = 0.006, 0.012, 0.013
        panel_w = (self.width - gap_x * (PANELS_PER_ROW - 1)) / PANELS_PER_ROW
        panel_h = min(0.1, (top - y_bottom - rows * (label_h + gap_y)) / rows)
        for i, day in enumerate(shown):
            row, col = divmod(i, PANELS_PER_ROW)
            x = self.LEFT + col * (panel_w + gap_x)
            y_label = top - row * (panel_h + label_h + gap_y)
            self.text(x + 0.002, y_label, _day_label(day), fontsize=7, fontweight="bold", va="top")
            ax = self.fig.add_axes((x, y_label - label_h - panel_h, panel_w, panel_h))
            key = day.isoformat()
            if by_date:
                self.day_trace(ax, by_date.get(key))
            else:
                self.day_summary(ax, daily.get(key))

    def window_dates(self) -> list[date]:
        zone = ZoneInfo(self.record.tz)
        start = datetime.fromtimestamp(self.record.window_start_ms / 1000, tz=zone).date()
        end = datetime.fromtimestamp((self.record.window_end_ms - 1) / 1000, tz=zone).date()
        return [start + timedelta(days=i) for i in range((end - start).days + 1)]

    def day_trace(self, ax: Axes, trace: Mapping[str, Any] | None) -> None:
        lo, hi = (self.glucose(v) for v in target_range(self.record))
        ax.set_xlim(0, 1440)
        ax.set_ylim(0, self.y_max)
        ax.axhspan(lo, hi, color=TARGET_FILL, lw=0, zorder=0)
        for v in (lo, hi):
            ax.axhline(v, color=TARGET_LINE, lw=0.5, zorder=1)
        ax.axvline(720, color="#D6DADF", lw=0.4, zorder=0.5)
        self.frame(ax)
        if trace is None:
            ax.text(720, self.y_max / 2, "no data", ha="center", va="center", fontsize=6.5, color=MUTED)
            return
        xs = [math.nan if _num(v) is None else float(v) for v in trace.get("minute", ())]
        ys = [math.nan if _num(v) is None else min(self.glucose(float(v)), self.y_max) for v in trace.get("value", ())]
        if len(xs) != len(ys) or not xs:
            ax.text(720, self.y_max / 2, "no data", ha="center", va="center", fontsize=6.5, color=MUTED)
            return
        above = [v if v > hi else hi for v in ys]
        below = [v if v < lo else lo for v in ys]
        ax.fill_between(xs, hi, above, color=BAND_COLORS["high"], lw=0, zorder=2)
        ax.fill_between(xs, below, lo, color=BAND_COLORS["low"], lw=0, zorder=2)
        ax.plot(xs, ys, color=INK, lw=0.5, zorder=3)

    def day_summary(self, ax: Axes, day: Mapping[str, Any] | None) -> None:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        self.frame(ax)
        if day is None:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=6.5, color=MUTED)
            return
        keys = [
            ("very_low", "time_below_54_pct"),
            ("low", "time_54_69_pct"),
            ("in_range", "time_in_range_pct"),
            ("high", "time_181_250_pct"),
            ("very_high", "time_above_250_pct"),
        ]
        values = [max(0.0, _num(day.get(k)) or 0.0) for _, k in keys]
        if target_range(self.record) != (70.0, 180.0):  # keep the five literal bands (see note.bands)
            values[2] = max(0.0, 100.0 - values[0] - values[1] - values[3] - values[4])
        total = sum(values) or 1.0
        bottom, x0, w = 0.08, 0.08, 0.2
        for (color, _), v in zip(keys, values, strict=True):
            seg = 0.84 * v / total
            if seg > 0:
                ax.add_patch(Rectangle((x0, bottom), w, seg, facecolor=BAND_COLORS[color], lw=0))
            bottom += seg
        mean = _num(day.get("mean_mg_dl"))
        mean_text = format_glucose(mean, self.unit).replace(" ", "\n", 1)
        ax.text(0.64, 0.68, mean_text, ha="center", va="center", fontsize=7.5, fontweight="bold", color=INK,
                linespacing=1.1)  # fmt: skip
        ax.text(0.64, 0.22, f"TIR\n{format_pct(values[2])}", ha="center", va="center", fontsize=6.5,
                color=MUTED, linespacing=1.1)  # fmt: skip

    @staticmethod
    def frame(ax: Axes) -> None:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#B8BEC5")
            spine.set_linewidth(0.6)

    def footer(self) -> None:
        r = self.record
        parts = [
            f"glucobridge engine {r.engine_version}",
            f"method {r.method}",
            f"policy {r.policy_hash[:12]}",
            f"input {r.input_digest[:12]}",
            f"outcome version {r.version}",
        ]
        if r.prior is not None:
            parts.append(f"CORRECTION of version {r.prior.version}")
        self.fig.add_artist(
            Rectangle((self.LEFT, 0.034), self.width, 0.0008, transform=self.fig.transFigure, color="#B8BEC5", lw=0)
        )
        self.text(self.LEFT, 0.022, "  |  ".join(parts), fontsize=7, color=MUTED, va="center")
        self.text(self.RIGHT, 0.022, "page 1 of 1", fontsize=7, color=MUTED, va="center", ha="right")
