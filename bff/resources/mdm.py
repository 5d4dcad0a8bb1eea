"""HL7 v2 MDM^T02 for one outcome window: the AGP report (PDF) as a clinical document, with its content.

A site that files documents through its interface (`[write] pdf_path = "hl7_mdm"`; Epic's Bridges, Oracle's
OpenEngine) gets the PDF as its own document notification rather than as an OBX in the results message
(ehr-realities.md §3: "MDM^T02 is the document alternative"). `build_mdm(record, pdf)` is pure and deterministic,
like `bff.resources.oru.build_oru`, and is made of the same parts (`bff.resources.hl7_segments`).

Layout (2.5.1, the default, and 2.3; both validated with hl7apy STRICT in the tests)::

    MSH|^~\\&|GLUCOBRIDGE|GLUCOBRIDGE|<app>|<facility>|<when>||MDM^T02^MDM_T02|<MSH-10>|P|2.5.1
    EVN|T02|<when>
    PID|1||<MRN>^^^&<oid>&ISO^MR||<family>^<given>|...
    PV1|1|U
    TXA|1|<document type>|AP|<window end>|||||||||<document number>^GLUCOBRIDGE||||AU||AV
    OBX|1|ED|summary-pdf^CGM summary report (PDF)^GLUCOBRIDGE||^AP^PDF^Base64^<base64>||||||F|||<window end>

Decisions:

- **MSH-10** is `GM` + 18 hex digits of `record.idempotency_key("hl7v2-mdm")`: the same record always gives the same
  control id (a resend is recognisable), another message than its ORU^R01 (which starts with `GB`).
- **TXA-12** (unique document number) names the document of this outcome version; a correction is a new version,
  so a new document (`TXA-17` `AU`: authenticated, the clinician signed it in glucobridge).
- **TXA-2** (document type, a user-defined table 0270) is the site's note type when it names one, else `CGM-AGP`;
  **TXA-3** `AP` (application data, table 0191), as the ED's type of data.
- **PV1-2** is `U` (unknown): glucobridge knows no visit; a site whose interface files documents to an encounter
  creates or finds it (`encounter_policy = "hl7_creates"`).
- **ED**: as in the ORU (`^AP^PDF^Base64^<data>`); hl7apy STRICT reads its components as ST of at most 199
  characters, so the tests validate the structure with a tiny PDF.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from bff.resources.hl7_segments import coded, esc, message_text, msh, pid, ts, ts_ms
from bff.resources.oru import ED_ENCODING, ED_SUBTYPE, ED_TYPE, GLUCOBRIDGE_SYSTEM, PDF_CODE, VERSIONS
from bff.resources.record import OutcomeRecord

MSH10_PREFIX = "GM"
DOCUMENT_PREFIX = "GBD"
DEFAULT_DOCUMENT_TYPE = "CGM-AGP"
_MESSAGE_KEY = "hl7v2-mdm"


@dataclass(frozen=True, slots=True)
class MdmMessage:
    """A built MDM^T02: `text` (segments joined by CR, trailing CR), MSH-10 and the document's number (TXA-12)."""

    text: str
    control_id: str
    document_number: str
    version: str


def message_control_id(record: OutcomeRecord) -> str:
    return MSH10_PREFIX + record.idempotency_key(_MESSAGE_KEY)[:18]


def document_number(record: OutcomeRecord) -> str:
    return DOCUMENT_PREFIX + record.idempotency_key(_MESSAGE_KEY + "-document")[:29]


def build_mdm(
    record: OutcomeRecord,
    pdf: bytes,
    *,
    version: str = "2.5.1",
    document_type: str = DEFAULT_DOCUMENT_TYPE,
    sending: tuple[str, str] = ("GLUCOBRIDGE", "GLUCOBRIDGE"),
    receiving: tuple[str, str] = ("", ""),
    mrn: str | None = None,
    when: datetime | None = None,
) -> MdmMessage:
    """The MDM^T02 carrying `pdf` for one outcome window (see the module docstring). ValueError for an unknown
    version, an empty PDF or document type."""
    if version not in VERSIONS:
        raise ValueError(f"HL7 version {version!r} is not supported (expected one of {', '.join(VERSIONS)})")
    if not pdf:
        raise ValueError("the PDF is empty")
    if not document_type.strip():
        raise ValueError("the document type is empty")
    zone = ZoneInfo(record.tz)
    end = ts_ms(record.window_end_ms, zone)
    stamp = ts(when if when is not None else record.created_at)
    control_id = message_control_id(record)
    number = document_number(record)
    message_type = "MDM^T02^MDM_T02" if version != "2.3" else "MDM^T02"
    data = base64.b64encode(pdf).decode("ascii")
    txa = ["TXA", "1", esc(document_type.strip()), ED_TYPE, end] + [""] * 7 + [f"{number}^{GLUCOBRIDGE_SYSTEM}"]
    txa += ["", "", "", "", "AU", "", "AV"]  # TXA-13..16 empty, TXA-17 completion, TXA-18, TXA-19 availability
    segments: list[list[str]] = [
        msh(sending, receiving, stamp, message_type, control_id, version),
        ["EVN", "T02", stamp],
        pid(record, mrn),
        ["PV1", "1", "U"],
        txa,
        ["OBX", "1", "ED", coded(*PDF_CODE), "", f"^{ED_TYPE}^{ED_SUBTYPE}^{ED_ENCODING}^{data}", "", "", "", "", "",
         "C" if record.is_correction else "F", "", "", end],
    ]  # fmt: skip
    return MdmMessage(message_text(segments), control_id, number, version)


__all__ = ["DEFAULT_DOCUMENT_TYPE", "MdmMessage", "build_mdm", "document_number", "message_control_id"]
