"""HL7 v2 ORU^R01: the message splitter, the file splitter, readings per OBX, problems per message or OBX."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bff.hl7 import MLLP_END, MLLP_START, Hl7Encoding, Hl7ParseError, iter_messages, parse_message
from bff.hl7 import stream as hl7_stream
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.ingest.records import Feed, FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions, PatientRef
from engine import GlucoseUnit, SensorFlag

FEEDS = Path(__file__).parent.parent / "fixtures" / "feeds"
NEW_YORK = ParseOptions(input_tz="America/New_York")
RIVERA = PatientRef("mrn:UCH", "MRN123456")
DOE = PatientRef("mrn:GENHOSP", "00098765")
MG, MMOL = GlucoseUnit.MG_DL, GlucoseUnit.MMOL_L
MSH = r"MSH|^~\&|CGMHUB|GLUCOBRIDGE|EPIC|UCH|20240502103000-0400||ORU^R01^ORU_R01|C1|P|2.5.1"
PID = "PID|1||MRN1^^^UCH^MR||Rivera^Jamie"
LOINC_MG = "99504-3^Glucose [Mass/volume] in Interstitial fluid^LN"


def utc(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


def parse_file(options: ParseOptions, parser: Hl7v2Parser | None = None) -> list[FeedItem]:
    with (FEEDS / "hl7v2_oru_r01.hl7").open("rb") as stream:
        return list((parser or Hl7v2Parser()).parse(stream, options))


def parse_segments(*segments: str, options: ParseOptions = NEW_YORK) -> list[FeedItem]:
    return list(Hl7v2Parser().parse(io.BytesIO(("\r".join(segments) + "\r").encode()), options))


def summary(items: list[FeedItem]) -> list[tuple[Any, ...]]:
    return [
        (i.locator, i.time_ms, i.value, i.unit, i.flag, i.device, i.stream, i.record_key, i.patient, i.ambiguous)
        if isinstance(i, FeedReading)
        else (i.locator, i.reason, i.patient)
        for i in items
    ]


# --- parse_message -----------------------------------------------------------------------------------------


def test_parse_message_fields_components_and_escapes() -> None:
    text = (
        "MSH|^~\\&|APP|FAC|EHR|HOSP|20240101||ORU^R01^ORU_R01|X1|P|2.5.1\r"
        "NTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\g\\.br\\h\\H\\i\\N\\j~rep2^c2&s2\r"
    )
    message = parse_message(text)
    assert [s.name for s in message.segments] == ["MSH", "NTE"]
    assert message.msh.fields[:4] == ("MSH", "|", "^~\\&", "APP")
    assert message.msh.field(9) == "ORU^R01^ORU_R01"
    assert (message.message_type, message.control_id, message.processing_id, message.version) == (
        "ORU^R01",
        "X1",
        "P",
        "2.5.1",
    )
    nte = message.segment("NTE")
    assert nte is not None
    assert nte.component(3) == "a|b^c&d~e\\fAg\nhij"
    assert nte.components(3, 2) == ["rep2", "c2&s2"]
    assert nte.subcomponents(3, 2, 2) == ["c2", "s2"]
    assert nte.component(3, 5) == ""
    assert nte.component(30) == ""
    assert message.msh.text == "MSH|^~\\&|APP|FAC|EHR|HOSP|20240101||ORU^R01^ORU_R01|X1|P|2.5.1"
    assert message.text == text


def test_parse_message_with_other_separators_and_line_ends() -> None:
    text = "\x0bMSH#$*!@#A#B#C#D#2024##ORU$R01#Z9#T#2.3\nPID#1##M7$$$AUTH\r\nOBX#1#NM#99504-3$Glucose$LN##5!F!6\x1c\r"
    message = parse_message(text)
    assert message.encoding == Hl7Encoding(field="#", component="$", repetition="*", escape="!", subcomponent="@")
    assert (message.message_type, message.control_id, message.version) == ("ORU^R01", "Z9", "2.3")
    obx = message.segments_named("OBX")[0]
    assert obx.components(3) == ["99504-3", "Glucose", "LN"]
    assert obx.component(5) == "5#6"
    assert [s.name for s in message.segments] == ["MSH", "PID", "OBX"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty message: no MSH segment"),
        ("PID|1||X\r", "no MSH segment: the message starts with 'PID|1||X'"),
        ("MSH", "MSH-1 (field separator) missing"),
        ("MSHA^~\\&|X", "MSH-1 field separator 'A' is not a separator character"),
        ("MSH|^^\\&|A", "MSH-2 encoding characters '^^\\\\&' are invalid (expected e.g. ^~\\&)"),
        ("MSH|^|A", "MSH-2 encoding characters '^' are invalid (expected e.g. ^~\\&)"),
        ("MSH|^~\\&|A\rpid|1\r", "segment 2 'pid|1' does not start with a segment name and '|'"),
        ("MSH|^~\\&|A\rPID1|1\r", "segment 2 'PID1|1' does not start with a segment name and '|'"),
        ("MSH|^~\\&|A\rMSH|^~\\&|B\r", "segment 2 is a second MSH: one message at a time"),
    ],
)
def test_parse_message_errors(text: str, message: str) -> None:
    with pytest.raises(Hl7ParseError) as caught:
        parse_message(text)
    assert str(caught.value) == message


def test_escape_text_round_trips() -> None:
    encoding = Hl7Encoding()
    escaped = encoding.escape_text("a|b^c~d\\e&f")
    assert escaped == "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f"
    assert encoding.unescape(escaped) == "a|b^c~d\\e&f"
    assert encoding.escape_text("plain") == "plain"


# --- iter_messages -----------------------------------------------------------------------------------------


def test_iter_messages_separators() -> None:
    one = f"{MSH}\r{PID}\r"
    data = (
        MLLP_START + one.encode() + MLLP_END
        + MLLP_START + one.replace("C1", "C2").encode() + MLLP_END
        + b"FHS|^~\\&\rBHS|^~\\&\r" + one.replace("C1", "C3").replace("\r", "\r\n").encode()
        + b"\r\n" + one.replace("C1", "C4").replace("\r", "\n").encode()
        + one.replace("C1", "C5").encode() + b"BTS|1\rFTS|1\r"
    )  # fmt: skip
    messages = list(iter_messages(io.BytesIO(data)))
    assert [parse_message(m).control_id for m in messages] == ["C1", "C2", "C3", "C4", "C5"]
    assert all(m == one.replace("C1", m.split("|")[9]) for m in messages)


def test_iter_messages_across_chunk_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (FEEDS / "hl7v2_oru_r01.hl7").read_bytes()
    whole = list(iter_messages(io.BytesIO(data)))
    assert len(whole) == 3
    for size in (1, 2, 3, 7, 64):
        monkeypatch.setattr(hl7_stream, "CHUNK", size)
        assert list(iter_messages(io.BytesIO(data))) == whole


# --- the parser --------------------------------------------------------------------------------------------


def test_file_with_three_messages() -> None:
    parser = Hl7v2Parser()
    items = parse_file(NEW_YORK, parser)
    assert summary(items) == [
        ("message 1 OBX 1", utc("2024-05-02T14:05:00Z"), 112.0, MG, SensorFlag.NONE, "dexcom-g6", "8GR5XY",
         "MSG00001|1", RIVERA, False),
        ("message 1 OBX 2", utc("2024-05-02T14:10:00Z"), 40.0, MG, SensorFlag.LOW, "dexcom-g6", "8GR5XY",
         "MSG00001|2", RIVERA, False),
        ("message 1 OBX 3", "OBX-6 unit mmol/L does not match OBX-3 99504-3 (mg/dL)", RIVERA),
        ("message 1 OBX 5", utc("2024-05-02T14:20:00.250Z"), 131.0, MG, SensorFlag.NONE, "dexcom-g6", "8GR5XY",
         "MSG00001|5", RIVERA, False),
        ("message 1 OBX 6", "OBX-11 result status 'D' is not F, C or P", RIVERA),
        ("message 2 OBX 1", utc("2024-03-10T06:45:00Z"), 6.4, MMOL, SensorFlag.NONE, "libre-2", "0M00A1B2C3D",
         "MSG00002|1", DOE, False),  # no offset: 01:45 EST
        ("message 2 OBX 2",
         "OBX-14: local time 2024-03-10T02:15:00 does not exist in America/New_York (skipped by a daylight-saving "
         "change)", DOE),
        ("message 2 OBX 3", utc("2024-03-10T07:05:00Z"), 5.9, MMOL, SensorFlag.NONE, "libre-2", "0M00A1B2C3D",
         "MSG00002|3", DOE, False),  # 03:05 EDT
        ("message 2 OBX 4", utc("2024-03-10T07:10:00Z"), 22.2, MMOL, SensorFlag.HIGH, "libre-2", "0M00A1B2C3D",
         "MSG00002|4", DOE, False),
        ("message 2 OBX 5", "unknown unit 'mg' in OBX-6 (expected mg/dL or mmol/L)", DOE),
        ("message 3", "MSH-2 encoding characters '^^\\\\&' are invalid (expected e.g. ^~\\&)", None),
    ]  # fmt: skip
    assert parser.messages == 3
    assert parser.skipped == {"OBX 97507-8^LN": 1}
    first = items[0]
    assert isinstance(first, FeedReading)
    assert dict(first.extra) == {
        "message_control_id": "MSG00001",
        "obx_set_id": "1",
        "result_status": "F",
        "hl7_version": "2.5.1",
    }
    assert first.payload.startswith("OBX|1|NM|99504-3^")


def test_items_can_be_grouped_by_message_for_acks() -> None:
    control_ids = []
    for item in parse_file(NEW_YORK):
        if isinstance(item, FeedReading):
            control_ids.append(("reading", item.extra["message_control_id"]))
        else:
            context = json.loads(item.context)
            control_ids.append((context["scope"], context["message_control_id"]))
    assert control_ids == [
        ("reading", "MSG00001"), ("reading", "MSG00001"), ("obx", "MSG00001"), ("reading", "MSG00001"),
        ("obx", "MSG00001"), ("reading", "MSG00002"), ("obx", "MSG00002"), ("reading", "MSG00002"),
        ("reading", "MSG00002"), ("obx", "MSG00002"), ("message", "MSG00003"),
    ]  # fmt: skip


def test_without_input_tz_offsetless_times_are_problems() -> None:
    items = parse_file(ParseOptions())
    message_2 = [(i.locator, i.reason) for i in items if isinstance(i, FeedProblem) and "message 2" in i.locator]
    assert message_2[:2] == [
        ("message 2 OBX 1", "OBX-14 '202403100145' has no UTC offset: name its zone with --input-tz"),
        ("message 2 OBX 2", "OBX-14 '202403100215' has no UTC offset: name its zone with --input-tz"),
    ]
    assert sum(isinstance(i, FeedReading) for i in items) == 3  # message 1 has offsets


def test_quarantined_obx_reads_again_once_fixed() -> None:
    parser = Hl7v2Parser()
    problem = next(i for i in parse_file(NEW_YORK) if isinstance(i, FeedProblem) and i.locator == "message 2 OBX 5")
    assert problem.payload.split("\r")[:-1] == [
        r"MSH|^~\&|LIBREHUB|CLINIC|EHR|GENHOSP|202403100130||ORU^R01|MSG00002|P|2.3",
        "PID|||00098765^^^GENHOSP||Doe^Alex",
        "OBR|1|||105272-9^Glucose [Moles/volume] in Interstitial fluid^LN",
        "OBX|5|NM|105272-9^Glucose [Moles/volume] in Interstitial fluid^LN||5.5|mg|||||F|||202403100315||||"
        "0M00A1B2C3D^FreeStyle Libre 2",
    ]
    assert json.loads(problem.context) == {"message_control_id": "MSG00002", "message": 2, "scope": "obx", "obx": 5}
    (again,) = parser.parse_quarantined(problem.payload, problem.context, NEW_YORK)
    assert isinstance(again, FeedProblem)
    assert again.reason == problem.reason
    fixed = problem.payload.replace("||5.5|mg|", "||5.5|mmol/L|")
    (reading,) = parser.parse_quarantined(fixed, problem.context, NEW_YORK)
    assert isinstance(reading, FeedReading)
    assert (reading.locator, reading.time_ms, reading.value, reading.record_key, reading.patient) == (
        "message 2 OBX 5",
        utc("2024-03-10T03:15:00-04:00"),
        5.5,
        "MSG00002|5",
        DOE,
    )


def test_quarantined_message_reads_again_once_fixed() -> None:
    problem = next(i for i in parse_file(NEW_YORK) if isinstance(i, FeedProblem) and i.locator == "message 3")
    assert problem.payload.startswith("MSH|^^\\&|")
    assert json.loads(problem.context) == {"message_control_id": "MSG00003", "message": 3, "scope": "message"}
    fixed = problem.payload.replace("MSH|^^\\&|", "MSH|^~\\&|")
    (reading,) = Hl7v2Parser().parse_quarantined(fixed, problem.context, NEW_YORK)
    assert isinstance(reading, FeedReading)
    assert (reading.locator, reading.time_ms, reading.value, reading.record_key, reading.patient) == (
        "message 3 OBX 1",
        utc("2024-05-02T14:55:00Z"),
        99.0,
        "MSG00003|1",
        PatientRef("mrn:UCH", "MRN555"),
    )


def test_parse_text_for_one_framed_message() -> None:
    frame = (MLLP_START + f"{MSH}\r{PID}\rOBX|1|NM|{LOINC_MG}||120|mg/dL|||||F|||20240502100500+0000".encode()
             + MLLP_END).decode()  # fmt: skip
    (reading,) = Hl7v2Parser().parse_text(frame, ParseOptions(), number=7)
    assert isinstance(reading, FeedReading)
    assert (reading.locator, reading.time_ms, reading.record_key) == (
        "message 7 OBX 1",
        utc("2024-05-02T10:05:00Z"),
        "C1|1",
    )


@pytest.mark.parametrize(
    ("segments", "reason"),
    [
        ((MSH.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"), PID),
         "not an ORU^R01 message (MSH-9 is 'ADT^A01^ADT_A01')"),
        ((MSH.replace("|C1|", "||"), PID), "MSH-10 (message control id) is empty"),
        ((MSH.replace("|2.5.1", "|2.6"), PID),
         "MSH-12 version '2.6' is not accepted (expected 2.3, 2.3.1, 2.4, 2.5 or 2.5.1)"),
        ((MSH, f"OBX|1|NM|{LOINC_MG}||120|mg/dL|||||F|||20240502100500-0400"), "no PID segment before OBX 1"),
        ((MSH, "OBR|1"), "no PID segment"),
        ((MSH, "PID|1||^^^UCH^MR||Rivera^Jamie"), "PID-3 (patient identifier list) is empty"),
    ],
)  # fmt: skip
def test_message_level_problems(segments: tuple[str, ...], reason: str) -> None:
    (problem,) = parse_segments(*segments)
    assert isinstance(problem, FeedProblem)
    assert (problem.locator, problem.reason) == ("message 1", reason)
    assert problem.payload == "\r".join(segments) + "\r"
    assert json.loads(problem.context)["scope"] == "message"


def obx(value_type: str = "NM", value: str = "120", unit: str = "mg/dL", status: str = "F",
        time: str = "20240502100500-0400", equipment: str = "", code: str = LOINC_MG) -> str:  # fmt: skip
    return f"OBX|1|{value_type}|{code}||{value}|{unit}|||||{status}|||{time}||||{equipment}"


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (obx(value_type="ST"), "OBX-2 value type 'ST' is not NM or SN"),
        (obx(value_type=""), "OBX-2 value type '' is not NM or SN"),
        (obx(value=""), "OBX-5 (value) is empty"),
        (obx(value="high"), "OBX-5 value 'high' is not a number"),
        (obx(value="<40"), "OBX-5 value '<40' is not a number"),
        (obx(value="0"), "OBX-5 value '0' must be a finite number above 0"),
        (obx(value_type="SN", value="^70^-^90"), "OBX-5 '^70^-^90' is a range or ratio, not one value"),
        (obx(value_type="SN", value="<>^40"), "OBX-5 comparator '<>' is not <, <=, > or >="),
        (obx(unit=""), "unknown unit '' in OBX-6 (expected mg/dL or mmol/L)"),
        (obx(unit="mg/dL/min"), "unknown unit 'mg/dL/min' in OBX-6 (expected mg/dL or mmol/L)"),
        (obx(status=""), "OBX-11 result status '' is not F, C or P"),
        (obx(status="W"), "OBX-11 result status 'W' is not F, C or P"),
        (obx(time=""), "OBX-14 (observation time) is empty"),
        (obx(time="20240502"), "OBX-14 '20240502' has no time of day (expected YYYYMMDDHHMM[SS][+/-ZZZZ])"),
        (obx(time="2024-05-02T10:05"), "OBX-14 '2024-05-02T10:05' is not a time YYYYMMDDHHMM[SS[.S]][+/-ZZZZ]"),
        (obx(time="20240230100500"), "OBX-14 '20240230100500' is not a valid date and time"),
        (obx(time="202405021005+2500"), "OBX-14 '202405021005+2500' has an impossible UTC offset +2500"),
    ],
)
def test_obx_problems(segment: str, reason: str) -> None:
    (problem,) = parse_segments(MSH, PID, segment)
    assert isinstance(problem, FeedProblem)
    assert (problem.locator, problem.reason, problem.patient) == (
        "message 1 OBX 1",
        reason,
        PatientRef("mrn:UCH", "MRN1"),
    )
    assert problem.payload == f"{MSH}\r{PID}\r{segment}\r"


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        (obx(value_type="SN", value="=^120"), (120.0, SensorFlag.NONE, "", "")),
        (obx(value_type="SN", value=">=^400"), (400.0, SensorFlag.HIGH, "", "")),
        (obx(time="202405021005", equipment="SN9^^Dexcom G7"), (120.0, SensorFlag.NONE, "SN9", "dexcom-g7")),
        (obx(time="20240502100500.1234-0400", equipment="^^urn:dev:77"), (120.0, SensorFlag.NONE, "urn:dev:77", "")),
        (obx(equipment="T1~x^dexcom-g6"), (120.0, SensorFlag.NONE, "T1", "dexcom-g6")),
        (obx(code="99504-3^Glucose^L"), None),  # a local coding system: not our LOINC reading
    ],
)  # fmt: skip
def test_obx_variants(segment: str, expected: tuple[Any, ...] | None) -> None:
    items = parse_segments(MSH, PID, segment)
    if expected is None:
        assert items == []
        return
    (reading,) = items
    assert isinstance(reading, FeedReading)
    assert (reading.value, reading.flag, reading.stream, reading.device) == expected


def test_obx_alternate_coding_and_time_zones() -> None:
    alternate = "OBX|1|NM|GLU^Sensor glucose^L^99504-3^Glucose^LN||120|mg/dL|||||F|||20240502100500.1234+0530"
    no_offset = obx(time="202411030130")
    again = obx(time="202411030110")
    items = parse_segments(MSH, PID, alternate, no_offset, again)
    assert [(i.time_ms, i.ambiguous) for i in items if isinstance(i, FeedReading)] == [
        (utc("2024-05-02T10:05:00.123+05:30"), False),
        (utc("2024-11-03T01:30:00-04:00"), True),
        (utc("2024-11-03T01:10:00-05:00"), True),  # the clock went back: the second 01:xx
    ]


def test_several_patients_in_one_message() -> None:
    items = parse_segments(MSH, PID, obx(), "PID|2||MRN2||Doe^Alex", obx(value="130"))
    assert [(i.patient, i.value) for i in items if isinstance(i, FeedReading)] == [
        (PatientRef("mrn:UCH", "MRN1"), 120.0),
        (PatientRef("mrn", "MRN2"), 130.0),
    ]


def test_unknown_zone_is_a_format_error() -> None:
    with pytest.raises(FeedFormatError, match="unknown time zone 'Nowhere'"):
        list(Hl7v2Parser().parse(io.BytesIO(b""), ParseOptions(input_tz="Nowhere")))


def test_parser_protocol_attributes() -> None:
    assert Hl7v2Parser.feed is Feed.HL7V2


# --- what is refused before a value is built from it ---------------------------------------------------------


@pytest.mark.parametrize(
    ("time", "year"),
    [("00010101000000+1400", 1), ("99991231235959-1200", 9999), ("00010101000000", 1), ("18991231235959+0000", 1899),
     ("22010101000000+0000", 2201)],
)  # fmt: skip
def test_obx_14_years_outside_1900_2200_are_the_obx_problem(time: str, year: int) -> None:
    (problem,) = parse_segments(MSH, PID, obx(time=time))
    assert isinstance(problem, FeedProblem)
    assert problem.locator == "message 1 OBX 1"
    assert problem.reason == (
        f"OBX-14 {time!r} is in the year {year}, outside 1900-2200: a device clock that was never set, or a wrong "
        "date format"
    )
    assert json.loads(problem.context)["scope"] == "obx"


def test_the_first_and_last_plausible_years_are_read() -> None:
    items = parse_segments(MSH, PID, obx(time="19000101000000+1400"), obx(time="22001231235959-1200"))
    assert [i.time_ms for i in items if isinstance(i, FeedReading)] == [
        utc("1899-12-31T10:00:00Z"),
        utc("2201-01-01T11:59:59Z"),
    ]  # the store refuses both (before 2000, in the future); the parser only refuses what is not a time


def test_an_oversize_obx_value_is_that_obx_problem_with_a_short_reason() -> None:
    huge = "1" * (10 * 2**20)  # as one MLLP message (parse_text); a file refuses a message this large whole
    text = "\r".join([MSH, PID, obx(value=huge), obx(value="99")]) + "\r"
    problem, reading = Hl7v2Parser().parse_text(text, NEW_YORK)
    assert isinstance(problem, FeedProblem)
    assert (problem.locator, problem.reason) == ("message 1 OBX 1", "OBX-5 is 10485760 characters long (limit 65536)")
    assert isinstance(reading, FeedReading)
    assert reading.value == 99.0


def test_an_oversize_pid_field_is_the_message_problem() -> None:
    (problem,) = parse_segments(MSH, "PID|1||MRN1^^^UCH^MR||" + "N" * 70_000, obx())
    assert isinstance(problem, FeedProblem)
    assert (problem.locator, problem.reason) == ("message 1", "PID-5 is 70000 characters long (limit 65536)")


def test_an_obx_with_too_many_separators_is_that_obx_problem() -> None:
    nested = obx(equipment="~".join(["SN^^dexcom-g6&x"] * 4000))
    problem, reading = parse_segments(MSH, PID, nested, obx())
    assert isinstance(problem, FeedProblem)
    assert problem.locator == "message 1 OBX 1"
    assert re.fullmatch(r"OBX has \d+ separators \(limit 10000\)", problem.reason)
    assert isinstance(reading, FeedReading)


def test_nested_repetitions_under_the_limit_are_read() -> None:
    equipment = "~".join(["^^"] * 50 + ["SN7^^Dexcom G7"])
    (reading,) = parse_segments(MSH, PID, obx(equipment=equipment))
    assert isinstance(reading, FeedReading)
    assert (reading.stream, reading.device) == ("", "")  # only the first ten repetitions are looked at


def test_input_quoted_in_reasons_is_cut_to_200_characters() -> None:
    (problem,) = parse_segments(MSH, PID, obx(value="x" * 5000))
    assert isinstance(problem, FeedProblem)
    assert problem.reason == f"OBX-5 value {'x' * 200!r}... (5000 characters) is not a number"
    (message,) = parse_segments(MSH.replace("2.5.1", "9" * 1000), PID)
    assert isinstance(message, FeedProblem)
    assert len(message.reason) < 300


def test_a_message_over_the_size_limit_in_a_file_is_refused_and_the_next_read() -> None:
    big = "\r".join([MSH, PID, *[obx(value=str(100 + n)) for n in range(100)]]) + "\r"
    small = "\r".join([MSH.replace("|C1|", "|C2|"), PID, obx()]) + "\r"
    parser = Hl7v2Parser(max_message_bytes=4096)
    problem, reading = parser.parse(io.BytesIO((big + small).encode()), NEW_YORK)
    assert isinstance(problem, FeedProblem)
    assert problem.locator == "message 1"
    assert problem.reason == f"the message is {len(big)} bytes long (limit 4096): send it in parts"
    assert problem.payload == big[: len(problem.payload)]  # its head, for a person to see
    assert json.loads(problem.context)["message_control_id"] == "C1"
    assert isinstance(reading, FeedReading)
    assert reading.record_key == "C2|1"
