"""MDM^T02 (the AGP report as a document over HL7 v2, `pdf_path = "hl7_mdm"`): strict structure, content, the plan
and the guard."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from bff.broker.guard import WriteRefusedError, check
from bff.broker.plan import WriteContext, plan_writes
from bff.capabilities import parse_capabilities
from bff.hl7 import parse_message
from bff.resources.mdm import build_mdm, document_number, message_control_id
from bff.resources.oru import build_oru
from tests.resources.samples import sample_record

TINY_PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"  # small enough for hl7apy STRICT (ED as ST)
SITE: dict[str, Any] = {
    "version": 1, "vendor": "epic", "time_zone": "America/Chicago",
    "write": {"mode": "full", "channel": "hl7v2", "encounter_policy": "hl7_creates", "pdf_path": "hl7_mdm",
              "note_type": "CGM-REPORT"},
    "hl7v2": {"host": "127.0.0.1", "port": 2575, "receiving_application": "EPIC", "receiving_facility": "HOSP"},
}  # fmt: skip


@pytest.mark.parametrize("version", ["2.5.1", "2.3"])
def test_the_message_validates_strictly(version: str) -> None:
    text = build_mdm(sample_record(), TINY_PDF, version=version).text
    message = hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    names = [s.name for s in message.children]
    assert names[:5] == ["MSH", "EVN", "PID", "PV1", "TXA"]
    assert "OBX" in names[5]  # 2.5.1 groups it (MDM_T02_OBXNTE_SUPPGRP); 2.3 does not


def test_content() -> None:
    record = sample_record()
    built = build_mdm(record, TINY_PDF, document_type="CGM-REPORT", receiving=("EPIC", "HOSP"))
    message = parse_message(built.text)
    msh = message.segment("MSH")
    assert (msh.field(9), msh.field(10)) == ("MDM^T02^MDM_T02", built.control_id)
    assert built.control_id == message_control_id(record) != build_oru(record).control_id
    txa = message.segment("TXA")
    assert (txa.field(2), txa.field(3), txa.field(17), txa.field(19)) == ("CGM-REPORT", "AP", "AU", "AV")
    assert txa.field(12) == f"{document_number(record)}^GLUCOBRIDGE"
    obx = message.segment("OBX")
    assert obx.field(2) == "ED"
    assert base64.b64decode(obx.field(5).split("^")[4]) == TINY_PDF
    assert obx.field(11) == "F"
    assert build_mdm(record, TINY_PDF).text == build_mdm(record, TINY_PDF).text  # deterministic
    corrected = build_mdm(sample_record(corrected=True), TINY_PDF)
    assert parse_message(corrected.text).segment("OBX").field(11) == "C"
    assert corrected.control_id != built.control_id


def test_refusals() -> None:
    with pytest.raises(ValueError, match="not supported"):
        build_mdm(sample_record(), TINY_PDF, version="2.7")
    with pytest.raises(ValueError, match="empty"):
        build_mdm(sample_record(), b"")


def test_pdf_path_hl7_mdm_plans_an_oru_and_an_mdm_and_the_guard_lets_only_that_through() -> None:
    caps = parse_capabilities("hl7-site", SITE)
    writes = plan_writes(caps, sample_record(), WriteContext(pdf=TINY_PDF))
    assert [(w.kind, w.channel) for w in writes] == [("hl7v2", "hl7v2"), ("pdf", "hl7v2")]
    oru, mdm = writes
    assert "MDM^T02" in (mdm.message or "").split("\r")[0]
    assert "OBX|1|ED" not in (oru.message or "")  # the PDF travels as its own document, not in the results
    for write in writes:
        check(caps, write)
    hl7_ed = parse_capabilities("hl7-site", {**SITE, "write": {**SITE["write"], "pdf_path": "hl7_ed"}})
    with pytest.raises(WriteRefusedError, match="does not take the PDF as an MDM"):
        check(hl7_ed, mdm)
