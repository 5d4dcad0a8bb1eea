"""The ORU^R01 of an outcome window: strict HL7 validation (hl7apy) in 2.5.1 and 2.3, plus the checks hl7apy
does not make (table values, numeric NM values, segment order), our own parser, determinism and escaping."""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message as hl7apy_parse
from hl7apy.v2_5_1.tables import TABLES

from bff.hl7 import Hl7Message, parse_message
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.ingest.records import FeedProblem, FeedReading, ParseOptions
from bff.resources.oru import (
    GLUCOBRIDGE_SYSTEM,
    LOCAL_SYSTEM,
    OruMessage,
    build_oru,
    filler_order_number,
    message_control_id,
)
from bff.resources.record import OutcomeRecord
from tests.resources.samples import sample_record

VERSIONS = ("2.5.1", "2.3")
TINY_PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"  # small enough for hl7apy STRICT (see below)
NUMBER = re.compile(r"-?\d+(\.\d+)?")
EXPECTED_CODES = {  # catalogue key -> OBX-3 code
    "tbr_l2": "104642-4",
    "tbr_l1": "104641-6",
    "tir": "97510-2",
    "tar_l1": "104640-8",
    "tar_l2": "104639-0",
    "mean_glucose": "97507-8",
    "gmi": "97506-0",
    "cv": "104638-2",
    "sensor_active": "104637-4",
    "days_of_wear": "104636-6",
    "gri": "gri",
    "hypo_events_l1": "hypo-events-l1",
    "hypo_events_l2": "hypo-events-l2",
}


def table(number: str) -> set[str]:
    return set(TABLES[f"HL7{number}"][1])


def strict(text: str) -> Message:
    """hl7apy STRICT parse with groups, then validate (raises on any error)."""
    message = hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate() is True
    return message


def extra_problems(text: str) -> list[str]:
    """What hl7apy STRICT does not check: table values, NM values, the OBR before its OBXs, OBX-1 sequence."""
    message = parse_message(text)
    problems: list[str] = []
    names = [s.name for s in message.segments]
    if names[:3] != ["MSH", "PID", "OBR"]:
        problems.append(f"expected MSH, PID, OBR first, got {names[:3]}")
    seen_obr = False
    expected_set_id = 1
    for segment in message.segments:
        if segment.name == "OBR":
            seen_obr = True
            if segment.component(25) not in table("0123"):
                problems.append(f"OBR-25 {segment.component(25)!r} not in table 0123")
            if not segment.field(4):
                problems.append("OBR-4 empty")
        elif segment.name == "OBX":
            if not seen_obr:
                problems.append(f"OBX {segment.field(1)} before any OBR")
            if segment.field(1) != str(expected_set_id):
                problems.append(f"OBX-1 {segment.field(1)!r}, expected {expected_set_id}")
            expected_set_id += 1
            value_type, status = segment.component(2), segment.component(11)
            if value_type not in table("0125"):
                problems.append(f"OBX-2 {value_type!r} not in table 0125")
            if status not in table("0085"):
                problems.append(f"OBX-11 {status!r} not in table 0085")
            if segment.field(8) and segment.component(8) not in table("0078"):
                problems.append(f"OBX-8 {segment.component(8)!r} not in table 0078")
            if value_type == "NM" and not NUMBER.fullmatch(segment.field(5)):
                problems.append(f"OBX-5 {segment.field(5)!r} is not a number (OBX-2 NM)")
            if value_type == "ED":
                parts = segment.components(5)
                if len(parts) != 5 or parts[1] not in table("0191") or parts[3] not in table("0299"):
                    problems.append(f"OBX-5 ED components {parts[:4]} do not follow tables 0191/0299")
            if not segment.field(5):
                problems.append(f"OBX {segment.field(1)} has no value")
        elif segment.name == "NTE" and segment.component(2) not in table("0105"):
            problems.append(f"NTE-2 {segment.component(2)!r} not in table 0105")
    return problems


def obx(message: Hl7Message) -> dict[str, Any]:
    """OBX by code (OBX-3.1)."""
    return {s.component(3): s for s in message.segments_named("OBX")}


def with_metrics(record: OutcomeRecord, **changes: Any) -> OutcomeRecord:
    metrics = {**record.metrics, **changes}
    return dataclasses.replace(record, document={**record.document, "metrics": metrics})


def with_document(record: OutcomeRecord, **changes: Any) -> OutcomeRecord:
    return dataclasses.replace(record, document={**record.document, **changes})


CASES: dict[str, tuple[OutcomeRecord, Mapping[str, Any]]] = {
    "sufficient": (sample_record(), {}),
    "pdf": (sample_record(), {"pdf": TINY_PDF}),
    "insufficient": (sample_record(days=7), {}),
    "insufficient-pdf": (sample_record(days=7), {"pdf": TINY_PDF}),
    "correction": (sample_record(corrected=True), {"pdf": TINY_PDF}),
    "mmol": (sample_record(mean_unit="mmol/L"), {}),
    "row-ids": (sample_record(), {"row_ids": {"time_in_range_pct": "3040101", "pdf": "R-9"}, "pdf": TINY_PDF}),
    "receiving": (sample_record(), {"receiving": ("EPIC", "MAIN"), "mrn": "E1234"}),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("case", list(CASES))
def test_messages_validate_strictly_and_pass_the_extra_checks(case: str, version: str) -> None:
    record, kwargs = CASES[case]
    built = build_oru(record, version=version, **kwargs)
    message = strict(built.text)
    assert extra_problems(built.text) == []
    group = "ORU_R01_RESPONSE" if version == "2.3" else "ORU_R01_PATIENT_RESULT"
    assert [c.name for c in message.children] == ["MSH", group]
    patient, order = message.children[1].children
    assert (patient.name, order.name) == ("ORU_R01_PATIENT", "ORU_R01_ORDER_OBSERVATION")
    assert order.children[0].name == "OBR"
    observations = [c for c in order.children if c.name == "ORU_R01_OBSERVATION"]
    assert len(observations) == len(built.observations)
    assert built.text.endswith("\r")
    assert "\n" not in built.text
    assert all(line for line in built.text.split("\r")[:-1])


def test_the_extra_checks_catch_what_strict_validation_misses() -> None:
    text = build_oru(sample_record()).text
    lines = text.split("\r")
    bad_status = text.replace("|||||F|||", "|||||Q|||", 1)
    bad_type = text.replace("OBX|1|NM|", "OBX|1|ZZ|", 1)
    first_value = parse_message(text).segments_named("OBX")[0].field(5)
    not_numeric = text.replace(f"||{first_value}|", "||abc|", 1)
    obr_after = "\r".join([lines[0], lines[1], *lines[3:-1], lines[2], ""])
    for mutated, expected in ((bad_status, "OBX-11 'Q'"), (bad_type, "OBX-2 'ZZ'"), (not_numeric, "not a number"),
                              (obr_after, "before any OBR")):  # fmt: skip
        strict(mutated)  # hl7apy STRICT accepts each of these
        assert any(expected in p for p in extra_problems(mutated)), (expected, extra_problems(mutated))


def test_content_2_5_1() -> None:
    record = sample_record()
    built = build_oru(record)
    message = parse_message(built.text)
    msh = message.msh
    assert msh.field(9) == "ORU^R01^ORU_R01"
    assert (msh.field(3), msh.field(4), msh.field(5), msh.field(6)) == ("GLUCOBRIDGE", "GLUCOBRIDGE", "", "")
    assert msh.field(7) == "20241110120000+0000"  # record.created_at
    assert (message.processing_id, message.version) == ("P", "2.5.1")
    assert message.control_id == built.control_id == message_control_id(record)
    assert len(built.control_id) <= 20
    assert msh.field(15) == msh.field(16) == ""  # original acknowledgment mode
    pid = message.segment("PID")
    assert pid is not None
    assert pid.component(3) == "MRN123456"
    assert pid.subcomponents(3, 4) == ["", "1.2.840.114350.1.13.99", "ISO"]
    assert pid.component(3, 5) == "MR"
    assert pid.field(5) == "Demo^Dana"  # the name as the EHR gives it
    assert pid.field(7) == "19710504"
    anonymous = build_oru(dataclasses.replace(record, family_name=None, given_names=None, birth_date=None))
    unnamed = parse_message(anonymous.text).segment("PID")
    assert unnamed is not None
    assert unnamed.field(5) == "^^^^^^U"  # not known: never an invented name
    obr = message.segment("OBR")
    assert obr is not None
    assert obr.field(4) == "107931-8^CGM summary panel^LN"
    assert obr.field(7) == "20241027000000-0400"  # window start, local time with offset
    assert obr.field(8) == "20241110000000-0500"  # window end (after the DST change)
    assert obr.field(25) == "F"
    assert obr.component(3) == filler_order_number(record)
    assert message.segment("NTE") is None  # sufficient: no comment
    by_code = obx(message)
    assert {k: v.code for k, v in built.observations.items()} == EXPECTED_CODES
    assert set(by_code) == set(EXPECTED_CODES.values())
    for segment in message.segments_named("OBX"):
        assert segment.field(2) == "NM"
        assert segment.field(11) == "F"
        assert segment.field(14) == "20241110000000-0500"
        assert segment.field(8) == ""
    m = record.metrics
    # The catalogue's decimals, each rounded half up once from the engine's value (shown beside each).
    assert by_code["97510-2"].field(5) == "61.2"  # 61.2003…
    assert by_code["97510-2"].field(6) == "%^percent^UCUM"
    assert m["time_below_54_pct"] == pytest.approx(0.80377, abs=1e-5)
    assert by_code["104642-4"].field(5) == "0.8"  # 0.8038
    assert by_code["104641-6"].field(5) == "1.6"  # 1.5658
    assert by_code["104640-8"].field(5) == "32.2"  # 32.2134
    assert by_code["104639-0"].field(5) == "4.2"  # 4.2167
    assert by_code["97507-8"].field(5) == "161"  # 161.4643 mg/dL: whole mg/dL
    assert by_code["97507-8"].field(6) == "mg/dL^mg/dL^UCUM"
    assert by_code["97506-0"].field(5) == "7.2"  # 7.1722
    assert by_code["104638-2"].field(5) == "32.6"  # 32.5657
    assert by_code["104637-4"].field(5) == "96.2"  # 96.2334
    assert (by_code["104636-6"].field(5), by_code["104636-6"].field(6)) == ("14", "d^day^UCUM")
    assert by_code["gri"].field(3) == f"gri^Glycemia Risk Index (Klonoff 2022)^{GLUCOBRIDGE_SYSTEM}"
    assert by_code["gri"].field(5) == "38.7"
    assert (by_code["hypo-events-l1"].field(5), by_code["hypo-events-l2"].field(5)) == ("7", "3")
    assert all(s.component(3, 3) in ("LN", GLUCOBRIDGE_SYSTEM) for s in message.segments_named("OBX"))
    assert built.sufficient


def test_content_2_3() -> None:
    record = sample_record()
    built = build_oru(record, version="2.3")
    message = parse_message(built.text)
    assert message.msh.field(9) == "ORU^R01"  # 2 components in 2.3
    assert message.version == "2.3"
    assert built.control_id == build_oru(record).control_id  # the same logical message
    obr = message.segment("OBR")
    assert obr is not None
    assert obr.field(27) == "1^^^20241027000000-0400^20241110000000-0500"  # required in 2.3
    assert [s.text for s in message.segments_named("OBX")] == [s.text for s in parse_message(
        build_oru(record).text).segments_named("OBX")]  # fmt: skip


def test_tir_is_the_70_180_band_whatever_the_targets() -> None:
    record = with_metrics(sample_record(), time_in_range_pct=80.0)  # as if the targets were another range
    message = parse_message(build_oru(record).text)
    m = record.metrics
    exact = Decimal(100) - Decimal(repr(m["time_below_70_pct"])) - Decimal(repr(m["time_above_180_pct"]))
    expected = exact.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)  # one decimal, half up, once
    assert obx(message)["97510-2"].field(5) == str(expected)


def test_correction() -> None:
    original, corrected = sample_record(), sample_record(corrected=True)
    first, second = build_oru(original), build_oru(corrected, pdf=TINY_PDF)
    assert second.control_id != first.control_id
    assert len(second.control_id) <= 20
    message = parse_message(second.text)
    obr = message.segment("OBR")
    assert obr is not None
    assert obr.field(25) == "C"
    assert {s.field(11) for s in message.segments_named("OBX")} == {"C"}
    assert len(message.segments_named("OBX")) == len(EXPECTED_CODES) + 1
    # the filler order number names the window, so the receiver can match the correction to what it replaces
    first_obr = parse_message(first.text).segment("OBR")
    assert first_obr is not None
    assert obr.field(3) == first_obr.field(3)


def test_insufficient_window_is_flagged_in_nte_and_not_in_obx_8() -> None:
    record = sample_record(days=7)
    built = build_oru(record)
    assert not built.sufficient
    message = parse_message(built.text)
    names = [s.name for s in message.segments]
    assert names[:4] == ["MSH", "PID", "OBR", "NTE"]
    text = "Insufficient data: window of 7 days is shorter than 14 days"
    nte = message.segments_named("NTE")
    assert {n.component(3) for n in nte} == {text}
    assert {n.field(2) for n in nte} == {"L"}
    for i, name in enumerate(names):  # every OBX is followed by the comment
        if name == "OBX":
            assert names[i + 1] == "NTE"
    assert {s.field(8) for s in message.segments_named("OBX")} == {""}
    assert {s.field(11) for s in message.segments_named("OBX")} == {"F"}
    obr = message.segment("OBR")
    assert obr is not None
    assert obr.field(25) == "F"


def test_insufficient_reasons_are_escaped() -> None:
    record = with_document(sample_record(days=7), sufficiency={"sufficient": False,
                           "reasons": ["a|b^c", "d~e\\f&g", "two\nlines"]})  # fmt: skip
    built = build_oru(record)
    strict(built.text)
    assert extra_problems(built.text) == []
    nte = parse_message(built.text).segment("NTE")
    assert nte is not None
    assert nte.component(3) == "Insufficient data: a|b^c; d~e\\f&g; two\nlines"
    assert "\\.br\\" in nte.field(3)


def test_null_metrics_are_left_out() -> None:
    record = with_metrics(sample_record(), gri=None, mean_mg_dl=None, cv_pct=float("nan"), time_below_70_pct=None)
    built = build_oru(record)
    strict(built.text)
    assert extra_problems(built.text) == []
    codes = set(obx(parse_message(built.text)))
    assert codes == set(EXPECTED_CODES.values()) - {"gri", "97507-8", "104638-2", "97510-2"}
    assert set(built.observations) == set(EXPECTED_CODES) - {"gri", "mean_glucose", "cv", "tir"}
    assert [o.set_id for o in built.observations.values()] == list(range(1, len(codes) + 1))


def test_percentages_keep_one_decimal_rounded_half_up_once() -> None:
    # 0.15 → 0.2 (half up on the decimal, not banker's 0.2/binary 0.1499…); 5.0 → "5.0"; 7.05 → 7.1; 32.4468 → 32.4
    record = with_metrics(sample_record(), time_below_54_pct=0.15, time_above_250_pct=5.0, gmi_pct=7.05,
                          time_181_250_pct=32.4468)  # fmt: skip
    by_code = obx(parse_message(build_oru(record).text))
    assert by_code["104642-4"].field(5) == "0.2"
    assert by_code["104639-0"].field(5) == "5.0"
    assert by_code["97506-0"].field(5) == "7.1"
    assert by_code["104640-8"].field(5) == "32.4"


def test_mean_in_mmol_l() -> None:
    record = sample_record(mean_unit="mmol/L")
    built = build_oru(record)
    by_code = obx(parse_message(built.text))
    assert "97507-8" not in by_code
    mean = by_code["105273-7"]
    assert mean.field(6) == "mmol/L^mmol/L^UCUM"
    # 161.4643 mg/dL ÷ 18.0156 = 8.9625 mmol/L → one decimal, half up, once: 9.0
    assert mean.field(5) == "9.0"
    assert built.observations["mean_glucose"].code == "105273-7"


def test_row_ids_replace_the_code_and_keep_ours_as_alternate() -> None:
    built = build_oru(sample_record(), row_ids={"tir": "3040101", "gri": "77|1", "pdf": "R9"},
                      pdf=TINY_PDF)  # fmt: skip
    strict(built.text)
    message = parse_message(built.text)
    by_code = obx(message)
    tir = by_code["3040101"]
    assert tir.components(3) == ["3040101", "Time in range 70-180 mg/dL", LOCAL_SYSTEM, "97510-2",
                                 "Time in range 70-180 mg/dL", "LN"]  # fmt: skip
    assert by_code["77|1"].component(3, 4) == "gri"  # unescaped by our parser
    assert "77\\F\\1^" in by_code["77|1"].field(3)
    assert by_code["R9"].field(2) == "ED"
    assert built.observations["tir"].code == "3040101"
    assert built.observations["tir"].system == LOCAL_SYSTEM
    assert built.observations["cv"].system == "LN"


@pytest.mark.parametrize("version", VERSIONS)
def test_pdf_is_an_ed_obx(version: str) -> None:
    pdf = bytes(range(256)) * 400  # 100 kB, every byte value
    built = build_oru(sample_record(), version=version, pdf=pdf)
    message = parse_message(built.text)
    last = message.segments_named("OBX")[-1]
    assert last.field(2) == "ED"
    assert last.field(3) == f"summary-pdf^CGM summary report (PDF)^{GLUCOBRIDGE_SYSTEM}"
    source, kind, subtype, encoding, data = last.components(5)
    assert (source, kind, subtype, encoding) == ("", "AP", "PDF", "Base64")  # same order in 2.3 and 2.5.1
    assert base64.b64decode(data, validate=True) == pdf
    assert last.field(11) == "F"
    assert built.observations["pdf"].set_id == len(EXPECTED_CODES) + 1
    assert extra_problems(built.text) == []
    # hl7apy STRICT reads the components of a `varies` OBX-5 as ST (at most 199 characters), so a real PDF fails
    # there although OBX-5 has no such limit; the structure is checked with the data shortened.
    strict(built.text.replace(data, data[:100]))


def test_determinism() -> None:
    record = sample_record()
    assert build_oru(record) == build_oru(sample_record())
    assert build_oru(record, pdf=TINY_PDF).text == build_oru(record, pdf=TINY_PDF).text
    later = build_oru(record, when=datetime(2024, 11, 11, 8, 30, 15, tzinfo=UTC))
    assert parse_message(later.text).msh.field(7) == "20241111083015+0000"
    assert later.control_id == build_oru(record).control_id
    other_site = build_oru(sample_record(site="site-b"))
    assert other_site.control_id != build_oru(record).control_id


def test_escaping_and_round_trip_through_our_parser() -> None:
    record = sample_record()
    built = build_oru(record, sending=("GB|APP", "FAC^1"), receiving=("R&X", "R~Y"), mrn="A|B^C\\D")
    strict(built.text)
    message = parse_message(built.text)
    msh = message.msh
    assert [msh.component(n) for n in (3, 4)] == ["GB|APP", "FAC^1"]
    assert msh.field(5) == "R\\T\\X"
    assert msh.component(6) == "R~Y"
    pid = message.segment("PID")
    assert pid is not None
    assert pid.component(3) == "A|B^C\\D"
    assert len(message.segments) == 3 + len(EXPECTED_CODES)
    assert message.message_type == "ORU^R01"
    assert message.control_id == built.control_id
    assert message.text == built.text


def test_non_ascii_declares_utf8() -> None:
    text = build_oru(sample_record(), mrn="MRN-ÅÖ1").text
    assert parse_message(text).msh.field(18) == "UNICODE UTF-8"
    assert parse_message(build_oru(sample_record()).text).msh.field(18) == ""
    strict(text)


def test_our_reading_parser_skips_the_summary() -> None:
    """The ingest parser reads the message as an ORU^R01 with no sensor readings (summary codes are skipped)."""
    built: OruMessage = build_oru(sample_record(), pdf=TINY_PDF)
    parser = Hl7v2Parser()
    items = list(parser.parse_text(built.text, ParseOptions()))
    assert not [i for i in items if isinstance(i, FeedReading | FeedProblem)]
    assert sum(parser.skipped.values()) == len(EXPECTED_CODES) + 1


def test_errors() -> None:
    with pytest.raises(ValueError, match="version"):
        build_oru(sample_record(), version="2.4")
    no_mrn = build_oru(dataclasses.replace(sample_record(), patient_identifiers=())).text
    assert "PID|1||demo-001^^^GLUCOBRIDGE^PI|" in no_mrn  # glucobridge's id, never presented as an MRN
    with pytest.raises(ValueError, match="mrn is empty"):
        build_oru(sample_record(), mrn=" ")
    assert "PID|1||X1^^^^MR|" in build_oru(dataclasses.replace(sample_record(), patient_identifiers=()),
                                           mrn="X1").text  # fmt: skip
