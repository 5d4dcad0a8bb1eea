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
- **Values**: OBX-5 is the metric's filed decimal from `engine.catalogue` (rounded once, half up, from the
  canonical value: whole mg/dL, one decimal for percentages, mmol/L and GRI, whole days and event counts), the
  same string the clinician reviewed. 97510-2 is the consensus 70–180 mg/dL band (100 − below 70 − above 180),
  like the FHIR side, even when the policy's targets use another range. Null metrics are left out.
- **Row ids**: `row_ids[catalogue key]` becomes OBX-3 `<row id>^<display>^L^<our code>^<display>^<our system>`.
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
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo

from bff.resources.hl7_segments import coded, esc_ft, message_text, msh, pid, ts, ts_ms
from bff.resources.record import OutcomeRecord
from engine import catalogue
from engine.catalogue import BANDS, SUMMARY_PANEL, filed, metric

#: OBX-3/OBR-4 coding system of glucobridge's own codes (the FHIR side uses `record.CODESYSTEM` for the same codes).
GLUCOBRIDGE_SYSTEM = "GLUCOBRIDGE"
LOINC = "LN"
UCUM = "UCUM"
#: Coding system of a site's own code (a flowsheet row id), HL7 table 0396 "L" (local general code).
LOCAL_SYSTEM = "L"
VERSIONS = ("2.5.1", "2.3")
PANEL = (SUMMARY_PANEL.code, SUMMARY_PANEL.display, SUMMARY_PANEL.hl7_system)
#: The `row_ids` key of the PDF OBX (the metric keys are those of engine.catalogue).
PDF_KEY = "pdf"
PDF_CODE = ("summary-pdf", "CGM summary report (PDF)", GLUCOBRIDGE_SYSTEM)
#: ED type of data (HL7 table 0191, 2.3 to 2.6) and subtype for a PDF.
ED_TYPE, ED_SUBTYPE, ED_ENCODING = "AP", "PDF", "Base64"
MSH10_PREFIX = "GB"
_MESSAGE_KEY = "hl7v2-oru"


#: The OBX order (catalogue keys): the five bands (as in the IG's Times in Ranges panel), then every other catalogue
#: metric that has a code, in catalogue order (a new coded metric is sent without touching this module).
def obx_order() -> tuple[str, ...]:
    return (*BANDS, *(m.key for m in catalogue.METRICS if m.codes and m.key not in BANDS))


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

    `row_ids` maps a catalogue metric key (or `PDF_KEY`) to the site's flowsheet row id, which then
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

    for key, code, unit, value in _values(record):
        add_obx(key, "NM", code, value, unit, value)
    if pdf is not None:
        data = base64.b64encode(pdf).decode("ascii")  # A-Z a-z 0-9 + / =: nothing to escape
        add_obx(PDF_KEY, "ED", PDF_CODE, f"^{ED_TYPE}^{ED_SUBTYPE}^{ED_ENCODING}^{data}", None, data)

    text = message_text(segments)  # MSH-18 says UTF-8 when the text goes beyond ASCII
    return OruMessage(text, control_id, version, MappingProxyType(observations), insufficient is None)


def _values(record: OutcomeRecord) -> list[tuple[str, tuple[str, str, str], tuple[str, str, str], str]]:
    """(key, OBX-3, OBX-6, OBX-5) for each metric with a value, OBX-5 the catalogue's filed decimal (rounded once);
    null (no data) and non-finite values are left out. Concentrations in `record.mean_unit`."""
    out = []
    for key in obx_order():
        m = metric(key)
        value = filed(m, record.metrics, record.mean_unit)
        code = m.code(record.mean_unit)
        if value is None or code is None:
            continue
        unit = m.unit(record.mean_unit)
        out.append((key, (code.code, code.display, code.hl7_system), (unit.ucum, unit.hl7_text, UCUM), str(value)))
    return out


def _insufficient_text(record: OutcomeRecord) -> str:
    sufficiency = record.document.get("sufficiency") or {}
    reasons = [str(r) for r in sufficiency.get("reasons") or [] if str(r).strip()]
    return esc_ft("Insufficient data: " + ("; ".join(reasons) if reasons else "not enough CGM data in the window"))
