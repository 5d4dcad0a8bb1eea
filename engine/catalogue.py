"""The metric catalogue: what each outcome metric is, in one place.

Data only (plus the one rounding). Every reader and writer of a metric takes its key, name, unit, decimals, codes,
profile and goal from here: the FHIR R4/R5 resources, the ORU^R01 message, the note, the PDF, the clinician view,
the CLI, the broker's plans (flowsheet rows and single Observations) and `verify`. Adding a metric touches this
file, the engine that computes it, and their tests.

**One rounding.** `filed(metric, metrics, unit)` turns the engine's canonical value (full precision, mg/dL for
concentrations) into the decimal that is shown for review, put in the plan and its digest, filed, read back and
verified: rounded half up, once, from the canonical value, to the metric's decimals in that unit. Nothing rounds
a rounded value again. `as_json_number` gives the JSON number whose text is exactly that decimal (every metric
files at most one decimal, so an EHR that stores the number and gives it back as JSON keeps the string: a second
decimal would lose its trailing zero, 32.40 coming back as 32.4). The HL7 CGM IG's Times in Ranges profile asks
for "at least two decimal places of precision" in its description, though its own example files integers; we
file one, so that what the clinician signs is what comes back (docs/outcomes-method.md).

Codes: LOINC for everything the CGM IG profiles (hl7.fhir.uv.cgm 1.0.0); glucobridge's own code system for what
it has no code for (GRI, hypoglycaemia events). Goals: the international consensus (Battelino et al., Diabetes
Care 2019;42:1593) for adults with type 1 or type 2 diabetes on the standard 70–180 mg/dL targets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any

from engine.units import MMOL_L_TO_MG_DL

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
GLUCOBRIDGE_CODES = "https://glucobridge.example/fhir/CodeSystem/glucobridge"
IG_PROFILES = "http://hl7.org/fhir/uv/cgm/StructureDefinition"
#: HL7 v2 coding system names (table 0396) of the two code systems.
HL7_SYSTEMS = {LOINC: "LN", GLUCOBRIDGE_CODES: "GLUCOBRIDGE"}

MG_DL = "mg/dL"
MMOL_L = "mmol/L"


class Condition(StrEnum):
    GLUCOSE = "glucose"


class Kind(StrEnum):
    PERCENT = "percent"  # a share of time or readings, %
    CONCENTRATION = "concentration"  # a glucose concentration: mg/dL canonical, mmol/L by conversion
    DAYS = "days"
    COUNT = "count"  # events
    SCORE = "score"  # a unitless index


@dataclass(frozen=True, slots=True)
class Unit:
    """A unit as each channel writes it."""

    label: str  # as a clinician reads it: "%", "mg/dL", "mmol/L", "days", "events", ""
    ucum: str  # UCUM code (FHIR Quantity.code, HL7 OBX-6.1)
    fhir_text: str  # FHIR Quantity.unit (the CGM IG fixes "mg/dl", "mmol/l", "days", "%")
    hl7_text: str  # HL7 OBX-6.2


PERCENT = Unit("%", "%", "%", "percent")
UNIT_MG_DL = Unit(MG_DL, "mg/dL", "mg/dl", "mg/dL")
UNIT_MMOL_L = Unit(MMOL_L, "mmol/L", "mmol/l", "mmol/L")
DAYS = Unit("days", "d", "days", "day")
EVENTS = Unit("events", "{events}", "{events}", "events")
SCORE = Unit("", "{score}", "{score}", "score")


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str
    display: str

    @property
    def hl7_system(self) -> str:
        return HL7_SYSTEMS[self.system]


@dataclass(frozen=True, slots=True)
class Goal:
    """A consensus goal: `comparator` value, e.g. > 70 %. `text` is how the view and the note state it."""

    comparator: str  # "<", "<=", ">", ">="
    value: float  # in the metric's canonical unit (mg/dL for concentrations)
    value_mmol_l: float | None = None  # a concentration goal as published in mmol/L (not a conversion)

    def met(self, value: float) -> bool:
        return {
            "<": value < self.value,
            "<=": value <= self.value,
            ">": value > self.value,
            ">=": value >= self.value,
        }[self.comparator]


@dataclass(frozen=True, slots=True)
class Metric:
    """One outcome metric.

    `key` is the catalogue's (and the sites' `[write.flowsheet_rows]`) name for it; `source` the engine's metrics
    key it is read from (`in_70_180` is derived: 100 − below 70 − above 180, the consensus band whatever targets
    the policy used). `codes` and `decimals` are per unit system for concentrations (mg/dL, mmol/L) and under
    the key "" for the rest. A metric without a code is shown but never filed.
    """

    key: str
    condition: Condition
    name: str
    short: str
    kind: Kind
    source: str
    decimals: Mapping[str, int]
    codes: Mapping[str, Code] = field(default_factory=dict)
    profiles: Mapping[str, str] = field(default_factory=dict)
    goal: Goal | None = None
    higher_is_better: bool | None = None  # None: no direction (days, a band that is neither good nor bad alone)

    def unit(self, unit: str = MG_DL) -> Unit:
        if self.kind is Kind.CONCENTRATION:
            return UNIT_MMOL_L if unit == MMOL_L else UNIT_MG_DL
        return {Kind.PERCENT: PERCENT, Kind.DAYS: DAYS, Kind.COUNT: EVENTS, Kind.SCORE: SCORE}[self.kind]

    def _slot(self, unit: str) -> str:
        return (MMOL_L if unit == MMOL_L else MG_DL) if self.kind is Kind.CONCENTRATION else ""

    def code(self, unit: str = MG_DL) -> Code | None:
        return self.codes.get(self._slot(unit))

    def profile(self, unit: str = MG_DL) -> str | None:
        return self.profiles.get(self._slot(unit))

    def places(self, unit: str = MG_DL) -> int:
        return self.decimals[self._slot(unit)]

    def goal_text(self, unit: str = MG_DL) -> str:
        if self.goal is None:
            return ""
        value = Decimal(repr(self.goal.value))
        if self.kind is Kind.CONCENTRATION and unit == MMOL_L:
            published = self.goal.value_mmol_l
            value = (
                Decimal(repr(published))
                if published is not None
                else _quantize(Decimal(repr(self.goal.value)) / Decimal(repr(MMOL_L_TO_MG_DL)), self.places(unit))
            )
        shown = format(value.normalize(), "f")  # as published: ">70 %", "<8.6 mmol/L"
        symbol = {"<": "<", "<=": "≤", ">": ">", ">=": "≥"}[self.goal.comparator]
        label = self.unit(unit).label
        return f"{symbol}{shown} {label}".rstrip()


def _loinc(code: str, display: str) -> Code:
    return Code(LOINC, code, display)


def _own(code: str, display: str) -> Code:
    return Code(GLUCOBRIDGE_CODES, code, display)


ONE = {"": 1}
WHOLE = {"": 0}

METRICS: tuple[Metric, ...] = (
    Metric("tir", Condition.GLUCOSE, "Time in range 70-180 mg/dL", "In range", Kind.PERCENT, "in_70_180", ONE,
           {"": _loinc("97510-2", "Time in range 70-180 mg/dL")}, goal=Goal(">", 70.0), higher_is_better=True),
    Metric("tbr_l1", Condition.GLUCOSE, "Time below range 54-69 mg/dL", "Low", Kind.PERCENT, "time_54_69_pct", ONE,
           {"": _loinc("104641-6", "Time below range 54-69 mg/dL")}, higher_is_better=False),
    Metric("tbr_l2", Condition.GLUCOSE, "Time below range <54 mg/dL", "Very low", Kind.PERCENT,
           "time_below_54_pct", ONE, {"": _loinc("104642-4", "Time below range <54 mg/dL")},
           goal=Goal("<", 1.0), higher_is_better=False),
    Metric("tar_l1", Condition.GLUCOSE, "Time above range 181-250 mg/dL", "High", Kind.PERCENT,
           "time_181_250_pct", ONE, {"": _loinc("104640-8", "Time above range 181-250 mg/dL")},
           higher_is_better=False),
    Metric("tar_l2", Condition.GLUCOSE, "Time above range >250 mg/dL", "Very high", Kind.PERCENT,
           "time_above_250_pct", ONE, {"": _loinc("104639-0", "Time above range >250 mg/dL")},
           goal=Goal("<", 5.0), higher_is_better=False),
    Metric("tbr", Condition.GLUCOSE, "Time below range <70 mg/dL", "Below range", Kind.PERCENT,
           "time_below_70_pct", ONE, goal=Goal("<", 4.0), higher_is_better=False),
    Metric("tar", Condition.GLUCOSE, "Time above range >180 mg/dL", "Above range", Kind.PERCENT,
           "time_above_180_pct", ONE, goal=Goal("<", 25.0), higher_is_better=False),
    Metric("mean_glucose", Condition.GLUCOSE, "Mean glucose", "Mean glucose", Kind.CONCENTRATION, "mean_mg_dl",
           {MG_DL: 0, MMOL_L: 1},
           {MG_DL: _loinc("97507-8", "Mean glucose [Mass/volume]"),
            MMOL_L: _loinc("105273-7", "Mean glucose [Moles/volume]")},
           {MG_DL: f"{IG_PROFILES}/cgm-summary-mean-glucose-mass-per-volume",
            MMOL_L: f"{IG_PROFILES}/cgm-summary-mean-glucose-moles-per-volume"},
           goal=Goal("<", 154.0, 8.6), higher_is_better=False),  # the mean of GMI 7 % (ADA: 154 mg/dL, 8.6 mmol/L)
    Metric("gmi", Condition.GLUCOSE, "Glucose management indicator", "GMI", Kind.PERCENT, "gmi_pct", ONE,
           {"": _loinc("97506-0", "Glucose management indicator")}, {"": f"{IG_PROFILES}/cgm-summary-gmi"},
           goal=Goal("<", 7.0), higher_is_better=False),
    Metric("cv", Condition.GLUCOSE, "Coefficient of variation of glucose", "Glucose variability (CV)",
           Kind.PERCENT, "cv_pct", ONE, {"": _loinc("104638-2", "Coefficient of variation of glucose")},
           {"": f"{IG_PROFILES}/cgm-summary-coefficient-of-variation"}, goal=Goal("<=", 36.0),
           higher_is_better=False),
    Metric("sd", Condition.GLUCOSE, "Standard deviation of glucose", "SD", Kind.CONCENTRATION, "sd_mg_dl",
           {MG_DL: 0, MMOL_L: 1}, higher_is_better=False),
    Metric("lbgi", Condition.GLUCOSE, "Low blood glucose index", "LBGI", Kind.SCORE, "lbgi", ONE,
           higher_is_better=False),
    Metric("hbgi", Condition.GLUCOSE, "High blood glucose index", "HBGI", Kind.SCORE, "hbgi", ONE,
           higher_is_better=False),
    Metric("days_of_wear", Condition.GLUCOSE, "Days of CGM wear", "Days of wear", Kind.DAYS, "days_of_wear", WHOLE,
           {"": _loinc("104636-6", "Days of CGM wear")}, {"": f"{IG_PROFILES}/cgm-summary-days-of-wear"}),
    Metric("sensor_active", Condition.GLUCOSE, "Percentage of time CGM active", "Time CGM active", Kind.PERCENT,
           "sensor_active_pct", ONE, {"": _loinc("104637-4", "Percentage of time CGM active")},
           {"": f"{IG_PROFILES}/cgm-summary-sensor-active-percentage"}, goal=Goal(">=", 70.0),
           higher_is_better=True),
    Metric("gri", Condition.GLUCOSE, "Glycemia Risk Index (Klonoff 2022)", "GRI", Kind.SCORE, "gri", ONE,
           {"": _own("gri", "Glycemia Risk Index (Klonoff 2022)")}, higher_is_better=False),
    Metric("hypo_events_l1", Condition.GLUCOSE, "Level 1 hypoglycaemia events (<70 mg/dL, >=15 min)",
           "Events <70", Kind.COUNT, "hypo_events_l1", WHOLE,
           {"": _own("hypo-events-l1", "Level 1 hypoglycaemia events (<70 mg/dL, >=15 min)")},
           higher_is_better=False),
    Metric("hypo_events_l2", Condition.GLUCOSE, "Level 2 hypoglycaemia events (<54 mg/dL, >=15 min)",
           "Events <54", Kind.COUNT, "hypo_events_l2", WHOLE,
           {"": _own("hypo-events-l2", "Level 2 hypoglycaemia events (<54 mg/dL, >=15 min)")},
           higher_is_better=False),
)  # fmt: skip
CATALOGUE: Mapping[str, Metric] = {m.key: m for m in METRICS}

#: The five consensus bands, very low to very high (the CGM IG's Times in Ranges components, in its order).
BANDS = ("tbr_l2", "tbr_l1", "tir", "tar_l1", "tar_l2")

#: Panels and readings: the codes that group metrics or carry raw sensor readings (not metrics themselves).
SUMMARY_PANEL = _loinc("107931-8", "CGM summary panel")
TIMES_IN_RANGES_PANEL = _loinc("106793-3", "Times in glucose ranges")
READING_MG_DL = _loinc("99504-3", "Glucose [Mass/volume] in Interstitial fluid")
READING_MMOL_L = _loinc("105272-9", "Glucose [Moles/volume] in Interstitial fluid")
#: The one glucose scale of every chart (the IDC AGP's): 0 to this, per unit (the PDF and the web view).
CHART_MAX = {MG_DL: 350.0, MMOL_L: 19.4}
#: The LOINC code of a CGM sensor reading -> the unit it carries.
READING_UNITS: Mapping[str, str] = {READING_MG_DL.code: MG_DL, READING_MMOL_L.code: MMOL_L}
#: The summary panel's code in the IG's ballot drafts (still sent by early adopters).
DRAFT_SUMMARY_PANEL = _loinc("104643-2", "CGM summary panel (IG ballot draft)")
#: Every LOINC code of an outcome (a metric or a panel): an Observation with one is a summary, not a reading.
SUMMARY_CODES = frozenset(
    {c.code for m in METRICS for c in m.codes.values() if c.system == LOINC}
    | {SUMMARY_PANEL.code, TIMES_IN_RANGES_PANEL.code, DRAFT_SUMMARY_PANEL.code}
)
#: The IG profiles of the panels and of the readings.
SUMMARY_PROFILE = f"{IG_PROFILES}/cgm-summary"
TIMES_IN_RANGES_PROFILE = f"{IG_PROFILES}/cgm-summary-times-in-ranges"
PDF_PROFILE = f"{IG_PROFILES}/cgm-summary-pdf"
READING_PROFILES = {
    MG_DL: f"{IG_PROFILES}/cgm-sensor-reading-mass-per-volume",
    MMOL_L: f"{IG_PROFILES}/cgm-sensor-reading-moles-per-volume",
}


def metric(key: str) -> Metric:
    try:
        return CATALOGUE[key]
    except KeyError:
        raise KeyError(f"no metric {key!r} in the catalogue (known: {', '.join(CATALOGUE)})") from None


def by_code(system: str, code: str) -> tuple[Metric, str] | None:
    """The metric (and unit system) a code stands for; None for a code the catalogue does not know."""
    for m in METRICS:
        for slot, c in m.codes.items():
            if c.system == system and c.code == code:
                return m, (slot or MG_DL)
    return None


def canonical(metric: Metric, metrics: Mapping[str, Any]) -> Decimal | None:
    """The engine's value at full precision (mg/dL for concentrations) as an exact decimal of its shortest repr;
    a derived value is computed in decimal arithmetic (100 − 12.34 − 20.01 is 67.65, not 67.64999999999999)."""
    if metric.source == "in_70_180":
        below, above = _finite(metrics.get("time_below_70_pct")), _finite(metrics.get("time_above_180_pct"))
        if below is None or above is None:
            return None
        return max(Decimal(0), Decimal(100) - below - above)
    return _finite(metrics.get(metric.source))


def filed(metric: Metric, metrics: Mapping[str, Any], unit: str = MG_DL) -> Decimal | None:
    """The value as it is reviewed, filed, read back and verified: rounded once, half up, in `unit`."""
    exact = canonical(metric, metrics)
    if exact is None:
        return None
    if metric.kind is Kind.CONCENTRATION and unit == MMOL_L:
        exact = exact / Decimal(repr(MMOL_L_TO_MG_DL))
    return _quantize(exact, metric.places(unit))


def text(metric: Metric, value: Decimal | None, unit: str = MG_DL) -> str:
    """The value with its unit as a clinician reads it: "73.6 %", "168 mg/dL", "14 days", "—" for none."""
    if value is None:
        return "—"
    label = metric.unit(unit).label
    return f"{value} {label}".rstrip()


def shown(metric: Metric, metrics: Mapping[str, Any], unit: str = MG_DL, none: str = "—") -> str:
    """The value as the view, the note and the PDF show it: the filed decimal with its unit, except a share of
    time above 0 that files as 0.0, which reads "<0.1 %" (a clinician must see that there was some)."""
    value = filed(metric, metrics, unit)
    if value is None:
        return none
    if metric.kind is Kind.PERCENT and value == 0 and (canonical(metric, metrics) or 0) > 0:
        return "<0.1 %"
    return text(metric, value, unit)


def percent_text(value: Any, none: str = "—") -> str:
    """A percentage that is not a catalogue metric (a target set's own band): one decimal, half up, once."""
    finite = _finite(value)
    if finite is None:
        return none
    rounded = _quantize(finite, 1)
    return "<0.1 %" if rounded == 0 and finite > 0 else f"{rounded} %"


def as_json_number(value: Decimal) -> int | float:
    """The JSON number whose text is exactly `str(value)` (at most one decimal: see the module docstring)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    if exponent >= 0:
        return int(value)
    if exponent < -1:
        raise ValueError(f"{value} has more than one decimal: its JSON number would not keep the string")
    return float(value)


def _quantize(value: Decimal, places: int) -> Decimal:
    result = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return result if result != 0 else abs(result)  # never "-0.0"


def _finite(raw: Any) -> Decimal | None:
    if raw is None or isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return Decimal(repr(value)) if math.isfinite(value) else None
