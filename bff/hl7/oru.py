"""HL7 v2 ORU^R01 for one outcome window: the CGM summary as one OBR (107931-8) with one OBX per metric.

`build_oru(record)` is pure and deterministic: the same record (and arguments) gives the same bytes, including
MSH-7 (from `record.created_at` unless `when` is given) and MSH-10 (from the record's idempotency key).

Layout (versions 2.5.1, the default, and 2.3; both are validated with hl7apy STRICT in the tests)::

    MSH|^~\\&|GLUCOBRIDGE|GLUCOBRIDGE|<app>|<facility>|<when>||ORU^R01^ORU_R01|<MSH-10>|P|2.5.1
    PID|1||<MRN>^^^&<oid>&ISO^MR||^^^^^^U
    OBR|1||<filler id>^GLUCOBRIDGE|107931-8^CGM summary panel^LN|||<window start>|<window end>|...|<when>|||F
                                                              (2.3 adds OBR-27 `1^^^<start>^<end>`, required there)
    NTE|1|L|Insufficient data: <reasons>                      (only for an insufficient window)
    OBX|1|NM|104642-4^Time in very low range <54 mg/dL^LN||0.80|%^percent^UCUM|||||F|||<window end>
    NTE|1|L|Insufficient data: <reasons>                      (after each OBX, only when insufficient)
    ...
    OBX|n|ED|summary-pdf^CGM summary report (PDF)^GLUCOBRIDGE||^AP^PDF^Base64^<base64>||||||F|||<window end>

Decisions (see also the comments where they are applied):

- **MSH-10** is `GB` + the first 18 hex digits of `record.idempotency_key("hl7v2-oru")` (20 characters): the same
  record always gives the same MSH-10 (whatever the version, PDF or row ids: it is the same logical message), so a
  resend after a lost ACK or an AE fix is recognisable; a correction is a new version, so its MSH-10 differs.
- **Values**: OBX-5 is a string with a fixed number of decimals (2 for percentages and mmol/L, 1 for mg/dL and
  GRI, 0 for days and event counts), rounded half up. 97510-2 is the consensus 70–180 mg/dL band (100 − below 70 −
  above 180), like the FHIR side, even when the policy's targets use another range. Null metrics are left out.
- **Row ids**: `row_ids[metric key]` becomes OBX-3 `<row id>^<display>^L^<our code>^<display>^<our system>`.
- **OBR-3** (filler order number) does *not* include the version: it names the outcome window, so that a
  correction (OBR-25/OBX-11 `C`) can be matched by the receiver with the result it replaces (HL7 matches
  corrections on the order numbers and OBX-3).
- **Acknowledgment mode**: MSH-15/MSH-16 are left empty, which means original mode (AA/AE/AR), the mode
  `bff.hl7.client` and our own listener speak.
- **Insufficient window**: OBR-25/OBX-11 stay `F` (nothing better will follow, so it is not preliminary), an NTE
  after the OBR says "Insufficient data: <reasons>" and the same NTE follows every OBX, because flowsheet
  interfaces file OBX values one by one and keep only their own comments. OBX-8 (abnormal flags, table 0078) is
  *not* used for this: every code there says something about the value against its reference range (L, H, A, …);
  "A" would raise abnormal-result alerts about the patient when the issue is the amount of data.
- **ED** (the PDF): ED has the same five components in 2.3 and 2.5.1 (source application, type of data, data
  subtype, encoding, data). Type of data comes from HL7 table 0191, whose code for binary application data in
  both versions is `AP` ("application" was only valid in 2.3.1, and `application^pdf` as MIME type/subtype is the
  2.7+ layout with table 0834), so OBX-5 is `^AP^PDF^Base64^<base64>`. (`PDF` is the usual ED.3 value though
  2.5.1's table 0291 does not list it.) hl7apy STRICT reads the components of OBX-5 (type `varies`) as ST, at most
  199 characters, so it rejects any real PDF: the tests validate the structure with the data shortened.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

from bff.hl7.build import coded, esc_ft, message_text, msh, pid, ts, ts_ms
from bff.resources.record import OutcomeRecord
from engine.units import MMOL_L_TO_MG_DL

#: OBX-3/OBR-4 coding system of glucobridge's own codes (the FHIR side uses `record.CODESYSTEM` for the same codes).
GLUCOBRIDGE_SYSTEM = "GLUCOBRIDGE"
LOINC = "LN"
UCUM = "UCUM"
#: Coding system of a site's own code (a flowsheet row id), HL7 table 0396 "L" (local general code).
LOCAL_SYSTEM = "L"
VERSIONS = ("2.5.1", "2.3")
PANEL = ("107931-8", "CGM summary panel", LOINC)
#: The `row_ids` key of the PDF OBX (the metric keys are those of `record.metrics`).
PDF_KEY = "pdf"
PDF_CODE = ("summary-pdf", "CGM summary report (PDF)", GLUCOBRIDGE_SYSTEM)
#: ED type of data (HL7 table 0191, 2.3 to 2.6) and subtype for a PDF.
ED_TYPE, ED_SUBTYPE, ED_ENCODING = "AP", "PDF", "Base64"
MSH10_PREFIX = "GB"
_MESSAGE_KEY = "hl7v2-oru"

PERCENT = ("%", "percent", UCUM)
MG_DL = ("mg/dL", "mg/dL", UCUM)
MMOL_L = ("mmol/L", "mmol/L", UCUM)
DAYS = ("d", "day", UCUM)
EVENTS = ("{events}", "events", UCUM)
SCORE = ("{score}", "score", UCUM)


@dataclass(frozen=True, slots=True)
class MetricCode:
    """How one metric of `record.metrics` becomes an OBX: its code, unit and number of decimals."""

    key: str
    code: str
    display: str
    system: str
    unit: tuple[str, str, str] | None
    decimals: int


#: The OBX order: the times in ranges (as in the IG's TIR panel), then the other summary measures, then ours.
METRICS: tuple[MetricCode, ...] = (
    MetricCode("time_below_54_pct", "104642-4", "Time in very low range <54 mg/dL", LOINC, PERCENT, 2),
    MetricCode("time_54_69_pct", "104641-6", "Time in low range 54-69 mg/dL", LOINC, PERCENT, 2),
    MetricCode("time_in_range_pct", "97510-2", "Time in range 70-180 mg/dL", LOINC, PERCENT, 2),  # _in_range_70_180
    MetricCode("time_181_250_pct", "104640-8", "Time in high range 181-250 mg/dL", LOINC, PERCENT, 2),
    MetricCode("time_above_250_pct", "104639-0", "Time in very high range >250 mg/dL", LOINC, PERCENT, 2),
    MetricCode("mean_mg_dl", "97507-8", "Mean glucose", LOINC, MG_DL, 1),  # 105273-7 in mmol/L, see _mean
    MetricCode("gmi_pct", "97506-0", "Glucose management indicator", LOINC, PERCENT, 2),
    MetricCode("cv_pct", "104638-2", "Coefficient of variation of glucose", LOINC, PERCENT, 2),
    MetricCode("sensor_active_pct", "104637-4", "Percentage of time CGM active", LOINC, PERCENT, 2),
    MetricCode("days_of_wear", "104636-6", "Days of CGM wear", LOINC, DAYS, 0),
    MetricCode("gri", "gri", "Glycemia Risk Index", GLUCOBRIDGE_SYSTEM, SCORE, 1),
    MetricCode("hypo_events_l1", "hypo-events-l1", "Level 1 hypoglycemia events", GLUCOBRIDGE_SYSTEM, EVENTS, 0),
    MetricCode("hypo_events_l2", "hypo-events-l2", "Level 2 hypoglycemia events", GLUCOBRIDGE_SYSTEM, EVENTS, 0),
)
MEAN_MMOL_L = MetricCode("mean_mg_dl", "105273-7", "Mean glucose", LOINC, MMOL_L, 2)


@dataclass(frozen=True, slots=True)
class OruObservation:
    """One OBX of the message: which metric it carries and how (for matching ACKs and resends to metrics)."""

    set_id: int
    value_type: str  # NM or ED
    code: str
    system: str  # LN, GLUCOBRIDGE or the site's (L) when a row id was used
    value: str  # OBX-5 as sent (for ED: the data only, not the whole ED)
    unit: str  # OBX-6.1, "" when none


@dataclass(frozen=True, slots=True)
class OruMessage:
    """A built ORU^R01: `text` (segments joined by CR, with a trailing CR), MSH-10 and the OBX of each metric."""

    text: str
    control_id: str
    version: str
    observations: Mapping[str, OruObservation]  # metric key (or PDF_KEY) -> its OBX
    sufficient: bool


def message_control_id(record: OutcomeRecord) -> str:
    """MSH-10 of the record's message: 20 characters, the same for the same record, new for a new version."""
    return MSH10_PREFIX + record.idempotency_key(_MESSAGE_KEY)[:18]


def filler_order_number(record: OutcomeRecord) -> str:
    """OBR-3: names the outcome window (not the version), so a correction refers to the result it replaces."""
    basis = f"{record.site}|{record.patient_id}|{record.window_start_ms}|{record.window_end_ms}"
    return "GBW" + hashlib.sha256(basis.encode()).hexdigest()[:29]


def build_oru(
    record: OutcomeRecord,
    *,
    version: str = "2.5.1",
    row_ids: Mapping[str, str] | None = None,
    pdf: bytes | None = None,
    sending: tuple[str, str] = ("GLUCOBRIDGE", "GLUCOBRIDGE"),
    receiving: tuple[str, str] = ("", ""),
    mrn: str | None = None,
    when: datetime | None = None,
) -> OruMessage:
    """The ORU^R01 of one outcome window (see the module docstring for the layout and the decisions).

    `row_ids` maps a metric key of `record.metrics` (or `PDF_KEY`) to the site's flowsheet row id, which then
    becomes OBX-3 (coding system `L`, the LOINC or glucobridge code kept as the alternate identifier).
    `mrn` overrides the first of `record.patient_identifiers` for PID-3. Raises ValueError for an unknown version
    or when there is no MRN.
    """
    if version not in VERSIONS:
        raise ValueError(f"HL7 version {version!r} is not supported (expected one of {', '.join(VERSIONS)})")
    rows = dict(row_ids or {})
    correction = record.is_correction
    status = "C" if correction else "F"
    zone = ZoneInfo(record.tz)
    start = ts_ms(record.window_start_ms, zone)
    end = ts_ms(record.window_end_ms, zone)
    stamp = ts(when if when is not None else record.created_at)
    control_id = message_control_id(record)
    insufficient = None if record.sufficient else _insufficient_text(record)

    segments: list[list[str]] = []
    message_type = "ORU^R01^ORU_R01" if version != "2.3" else "ORU^R01"  # 2.3's MSH-9 (CM_MSG) has 2 components
    segments.append(msh(sending, receiving, stamp, message_type, control_id, version))
    segments.append(pid(record, mrn))
    obr = ["OBR", "1", "", f"{filler_order_number(record)}^{GLUCOBRIDGE_SYSTEM}", coded(*PANEL), "", "", start, end]
    obr += [""] * 13 + [stamp, "", "", status]  # OBR-22 status change time, OBR-25 result status
    if version == "2.3":
        # OBR-27 quantity/timing is required in 2.3 (deprecated for TQ1 in 2.5): one service over the window.
        obr += ["", f"1^^^{start}^{end}"]
    segments.append(obr)
    if insufficient is not None:
        segments.append(["NTE", "1", "L", insufficient])

    observations: dict[str, OruObservation] = {}

    def add_obx(key: str, value_type: str, code: tuple[str, str, str], value: str, unit: tuple[str, str, str] | None,
                data: str) -> None:  # fmt: skip
        set_id = len(observations) + 1
        row = rows.get(key)
        obx3 = coded(row, code[1], LOCAL_SYSTEM, *code) if row else coded(*code)  # the row id, ours as alternate
        obx6 = coded(*unit) if unit else ""
        segments.append(["OBX", str(set_id), value_type, obx3, "", value, obx6, "", "", "", "", status, "", "", end])
        if insufficient is not None:
            segments.append(["NTE", "1", "L", insufficient])
        observations[key] = OruObservation(set_id, value_type, row or code[0], LOCAL_SYSTEM if row else code[2],
                                           data, unit[0] if unit else "")  # fmt: skip

    for metric, value in _values(record):
        add_obx(metric.key, "NM", (metric.code, metric.display, metric.system), value, metric.unit, value)
    if pdf is not None:
        data = base64.b64encode(pdf).decode("ascii")  # A-Z a-z 0-9 + / =: nothing to escape
        add_obx(PDF_KEY, "ED", PDF_CODE, f"^{ED_TYPE}^{ED_SUBTYPE}^{ED_ENCODING}^{data}", None, data)

    text = message_text(segments)  # MSH-18 says UTF-8 when the text goes beyond ASCII
    return OruMessage(text, control_id, version, MappingProxyType(observations), insufficient is None)


def _values(record: OutcomeRecord) -> list[tuple[MetricCode, str]]:
    """(metric, OBX-5) for each metric with a value; null (no data) and non-finite values are left out."""
    out: list[tuple[MetricCode, str]] = []
    metrics = record.metrics
    for listed in METRICS:
        metric, number = listed, _number(metrics.get(listed.key))
        if listed.key == "time_in_range_pct":
            number = _in_range_70_180(metrics)
        elif listed.key == "mean_mg_dl":
            metric, number = _mean(record, number)
        if number is None:
            continue
        out.append((metric, _format(number, metric.decimals)))
    return out


def _in_range_70_180(metrics: Mapping[str, Any]) -> float | None:
    """LOINC 97510-2 is the consensus 70–180 mg/dL band, whatever range the policy's targets use (the engine's
    `time_in_range_pct` is against the targets); same formula as `bff.resources.fhir.in_range_70_180`."""
    below, above = _number(metrics.get("time_below_70_pct")), _number(metrics.get("time_above_180_pct"))
    if below is None or above is None:
        return None
    return max(0.0, 100.0 - below - above)


def _mean(record: OutcomeRecord, number: float | None) -> tuple[MetricCode, float | None]:
    """The mean glucose in the site's unit: 97507-8 in mg/dL or 105273-7 in mmol/L."""
    if record.mean_unit.lower() != "mmol/l":
        return METRICS[5], number
    factor = _number(record.document.get("units", {}).get("mmol_l_to_mg_dl")) or MMOL_L_TO_MG_DL
    return MEAN_MMOL_L, None if number is None else number / factor


def _number(raw: Any) -> float | None:
    if raw is None or isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    value = float(raw)
    return value if math.isfinite(value) else None


def _format(value: float, decimals: int) -> str:
    """A fixed number of decimals, rounded half up from the shortest repr (65.005 -> "65.01", 14 -> "14")."""
    quantum = Decimal(1).scaleb(-decimals)
    text = format(Decimal(repr(value)).quantize(quantum, rounding=ROUND_HALF_UP), "f")
    return "0" if decimals == 0 and text in ("-0", "0") else text


def _insufficient_text(record: OutcomeRecord) -> str:
    sufficiency = record.document.get("sufficiency") or {}
    reasons = [str(r) for r in sufficiency.get("reasons") or [] if str(r).strip()]
    return esc_ft("Insufficient data: " + ("; ".join(reasons) if reasons else "not enough CGM data in the window"))
