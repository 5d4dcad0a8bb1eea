"""FHIR CGM sensor-reading Observations in a Bundle or NDJSON: checks, devices, patients, retry, streaming."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bff.ingest.fhir_feed import FhirParser, device_key_for_name
from bff.ingest.records import Feed, FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions, PatientRef
from engine import GlucoseUnit, SensorFlag

FEEDS = Path(__file__).parent.parent / "fixtures" / "feeds"
IG = Path("/work/shared/reference/cgm-ig")
PAT42 = PatientRef("fhir", "Patient/pat-42")
P77 = PatientRef("fhir", "Patient/p-77")
READINGS = "https://cgmhub.example.org/readings"
MG, MMOL = GlucoseUnit.MG_DL, GlucoseUnit.MMOL_L


def utc(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


def parse_file(name: str, parser: FhirParser | None = None) -> list[FeedItem]:
    with (FEEDS / name).open("rb") as stream:
        return list((parser or FhirParser()).parse(stream, ParseOptions()))


def parse_bytes(data: bytes, parser: FhirParser | None = None) -> list[FeedItem]:
    return list((parser or FhirParser()).parse(io.BytesIO(data), ParseOptions()))


def summary(items: list[FeedItem]) -> list[tuple[Any, ...]]:
    return [
        (i.locator, i.time_ms, i.value, i.unit, i.flag, i.device, i.stream, i.record_key, i.patient)
        if isinstance(i, FeedReading)
        else (i.locator, i.reason, i.patient)
        for i in items
    ]


class OneWay(io.RawIOBase):
    """A stream that cannot seek (a pipe), built from byte parts."""

    def __init__(self, parts: Iterator[bytes] | list[bytes]) -> None:
        self.parts = iter(parts)
        self.buffer = b""
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, out: Any) -> int:
        while not self.buffer:
            self.buffer = next(self.parts, b"")
            if not self.buffer:
                return 0
        n = min(len(out), len(self.buffer))
        out[:n], self.buffer = self.buffer[:n], self.buffer[n:]
        self.size += n
        return n


def test_bundle() -> None:
    parser = FhirParser()
    items = parse_file("fhir_bundle.json", parser)
    assert summary(items) == [
        ("entry 2", utc("2024-05-02T14:15:00Z"), 120.0, MG, SensorFlag.NONE, "dexcom-g6", "Device/cgm-g6-1",
         f"{READINGS}|cgm-r1", PAT42),  # the Device entry comes later in the Bundle
        ("entry 3", utc("2024-05-02T14:20:00Z"), 6.7, MMOL, SensorFlag.NONE, "libre-2", "Device/libre-77",
         f"{READINGS}|cgm-r2", PatientRef("id:urn:oid:1.2.840.114350", "E1234")),
        ("entry 4", utc("2024-05-02T14:25:00Z"), 40.0, MG, SensorFlag.LOW, "dexcom-g6", "Device/cgm-g6-1",
         f"{READINGS}|cgm-r3", PAT42),
        ("entry 5", "unit mmol/L does not match code 99504-3 (mg/dL)", PAT42),
        ("entry 7", "entered-in-error: not a reading", PAT42),
        ("entry 8", "effectiveDateTime '2024-05-02T10:40:00' has no UTC offset", PAT42),
        ("entry 10", "no value (dataAbsentReason=error)", PAT42),
        ("entry 11", "effectiveDateTime '2024-05-02' has no time of day", PAT42),
        ("entry 12", utc("2024-05-02T14:55:00.500Z"), 126.0, MG, SensorFlag.NONE, "", "", "Observation/cgm-r9",
         PAT42),  # subject is the Patient entry's urn:uuid
    ]  # fmt: skip
    assert parser.skipped == {"Patient": 1, "Device": 1, "CGM summary Observation": 1}
    assert parser.input_format == "bundle"
    first = items[0]
    assert isinstance(first, FeedReading)
    assert dict(first.extra) == {"status": "final", "effectiveDateTime": "2024-05-02T10:15:00-04:00"}
    assert json.loads(first.payload)["id"] == "cgm-r1"
    problem = items[3]
    assert isinstance(problem, FeedProblem)
    assert json.loads(problem.payload)["id"] == "cgm-r4"
    assert json.loads(problem.context) == {
        "format": "bundle",
        "fullUrl": "https://cgmhub.example.org/fhir/Observation/cgm-r4",
        "patient": ["fhir", "Patient/pat-42"],
    }


def test_bundle_from_a_pipe_knows_only_the_devices_before() -> None:
    data = (FEEDS / "fhir_bundle.json").read_bytes()
    items = list(FhirParser().parse(io.BufferedReader(OneWay([data[:1000], data[1000:]])), ParseOptions()))
    readings = [i for i in items if isinstance(i, FeedReading)]
    assert [(r.record_key, r.device) for r in readings] == [
        (f"{READINGS}|cgm-r1", ""),  # Device/cgm-g6-1 comes later: not known on a stream that cannot seek
        (f"{READINGS}|cgm-r2", "libre-2"),
        (f"{READINGS}|cgm-r3", ""),
        ("Observation/cgm-r9", ""),
    ]
    assert readings[-1].patient == PAT42  # the Patient entry came first


def test_ndjson() -> None:
    parser = FhirParser()
    items = parse_file("fhir_readings.ndjson", parser)
    assert summary(items) == [
        ("line 2", utc("2024-06-10T06:00:00Z"), 6.2, MMOL, SensorFlag.NONE, "libre-3", "Device/libre3-9",
         f"{READINGS}|n1", P77),
        ("line 3", utc("2024-06-10T06:05:00Z"), 111.0, MG, SensorFlag.NONE, "libre-3", "Device/libre3-9",
         "Observation/n2", P77),
        ("line 4", utc("2024-06-10T06:10:00Z"), 27.8, MMOL, SensorFlag.HIGH, "libre-3", "Device/libre3-9",
         f"{READINGS}|n3", P77),
        ("line 6", "unknown unit 'mg' (expected mg/dL or mmol/L)", P77),
        ("line 7", "entered-in-error: not a reading", P77),
        ("line 8", "effectiveDateTime '2024-06-10T08:25:00' has no UTC offset", P77),
        ("line 9", "invalid JSON: Expecting property name enclosed in double quotes: line 1 column 136 (char 135)",
         None),
        ("line 11", utc("2024-06-10T06:30:00Z"), 5.5, MMOL, SensorFlag.NONE, "", "", f"{READINGS}|n8", P77),
    ]  # fmt: skip
    assert parser.skipped == {"Device": 1, "Patient": 1}
    assert parser.input_format == "ndjson"
    lines = (FEEDS / "fhir_readings.ndjson").read_text().splitlines()
    assert [i.payload for i in items if isinstance(i, FeedProblem)] == [lines[5], lines[6], lines[7], lines[8]]
    assert items[0].payload == lines[1]


def test_quarantined_resource_reads_again_once_fixed() -> None:
    parser = FhirParser()
    items = parse_file("fhir_bundle.json")
    missing_zone = next(i for i in items if isinstance(i, FeedProblem) and "UTC offset" in i.reason)
    (again,) = parser.parse_quarantined(missing_zone.payload, missing_zone.context, ParseOptions())
    assert isinstance(again, FeedProblem)
    assert again.reason == missing_zone.reason
    fixed = missing_zone.payload.replace('"2024-05-02T10:40:00"', '"2024-05-02T10:40:00-04:00"')
    (reading,) = parser.parse_quarantined(fixed, missing_zone.context, ParseOptions())
    assert isinstance(reading, FeedReading)
    assert (reading.time_ms, reading.value, reading.record_key, reading.patient) == (
        utc("2024-05-02T14:40:00Z"),
        133.0,
        f"{READINGS}|cgm-r6",
        PAT42,
    )


def test_quarantined_resource_keeps_its_resolved_device_and_patient() -> None:
    resource = {
        "resourceType": "Observation", "id": "x1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": "urn:uuid:0d9e"}, "device": {"reference": "urn:uuid:dev-1"},
        "effectiveDateTime": "2024-05-02T10:00:00Z", "valueQuantity": {"value": 101, "code": "mg/dL"},
    }  # fmt: skip
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "77"}]}
    device = {"resourceType": "Device", "deviceName": [{"name": "Dexcom G7", "type": "user-friendly-name"}]}
    bad = dict(resource, status="registered")
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:0d9e", "resource": patient},
        {"fullUrl": "urn:uuid:dev-1", "resource": device},
        {"fullUrl": "urn:uuid:obs-1", "resource": bad},
    ]}  # fmt: skip
    (problem,) = parse_bytes(json.dumps(bundle).encode())
    assert isinstance(problem, FeedProblem)
    assert problem.reason == "status 'registered' is not a result (expected final, amended, corrected or preliminary)"
    assert problem.patient == PatientRef("id:urn:mrn", "77")
    (reading,) = FhirParser().parse_quarantined(json.dumps(resource), problem.context, ParseOptions())
    assert isinstance(reading, FeedReading)
    assert (reading.patient, reading.device, reading.stream, reading.record_key) == (
        PatientRef("id:urn:mrn", "77"),
        "dexcom-g7",
        "urn:uuid:dev-1",
        "Observation/x1",
    )


def observation(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-05-02T10:00:00Z",
        "valueQuantity": {"value": 101, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }  # fmt: skip
    for key, value in changes.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]}},
         "code is not a CGM sensor reading (LOINC 99504-3 or 105272-9): http://loinc.org|2339-0"),
        ({"code": {"coding": [{"code": "99504-3"}]}},
         "code is not a CGM sensor reading (LOINC 99504-3 or 105272-9): |99504-3"),
        ({"code": {"text": "glucose"}}, "code is not a CGM sensor reading (LOINC 99504-3 or 105272-9): no coding"),
        ({"status": None}, "status missing (expected final, amended, corrected or preliminary)"),
        ({"code": {"coding": [{"system": "http://loinc.org", "code": {"x": 1}}]}},
         "code is not a CGM sensor reading (LOINC 99504-3 or 105272-9): http://loinc.org|{'x': 1}"),
        ({"status": ["final"]},
         "status ['final'] is not a result (expected final, amended, corrected or preliminary)"),
        ({"status": "cancelled"},
         "status 'cancelled' is not a result (expected final, amended, corrected or preliminary)"),
        ({"valueQuantity": None}, "no value: valueQuantity missing"),
        ({"valueQuantity": None, "valueString": "101"}, "value is valueString, not a valueQuantity"),
        ({"valueQuantity": None, "dataAbsentReason": {"text": "sensor warm-up"}},
         "no value (dataAbsentReason=sensor warm-up)"),
        ({"valueQuantity": {"value": "101", "code": "mg/dL"}}, "valueQuantity.value '101' is not a number"),
        ({"valueQuantity": {"value": -5, "code": "mg/dL"}}, "valueQuantity.value -5 must be a finite number above 0"),
        ({"valueQuantity": {"value": 101, "unit": "%", "code": "%"}}, "unknown unit '%' (expected mg/dL or mmol/L)"),
        ({"valueQuantity": {"value": 101}}, "unknown unit None (expected mg/dL or mmol/L)"),
        ({"valueQuantity": {"value": 101, "code": "mg/dL", "comparator": "ad"}},
         "comparator 'ad' is not <, <=, > or >="),
        ({"effectiveDateTime": None}, "effectiveDateTime missing"),
        ({"effectiveDateTime": None, "effectivePeriod": {"start": "2024-05-02T10:00:00Z"}},
         "effectiveDateTime missing (an effectivePeriod is not a reading time)"),
        ({"effectiveDateTime": "2024-05"}, "effectiveDateTime '2024-05' has no time of day"),
        ({"effectiveDateTime": "2024-05-02T25:00:00Z"},
         "effectiveDateTime '2024-05-02T25:00:00Z' is not a FHIR dateTime"),
        ({"subject": {"reference": "Group/g1"}}, "subject 'Group/g1' is not a Patient reference"),
        ({"subject": {"reference": "urn:uuid:nowhere"}},
         "subject 'urn:uuid:nowhere' does not resolve to a Patient in the input"),
        ({"subject": {"display": "J. Rivera"}}, "subject has neither a reference nor an identifier"),
    ],
)  # fmt: skip
def test_observation_checks(changes: dict[str, Any], reason: str) -> None:
    (problem,) = parse_bytes((json.dumps(observation(**changes)) + "\n").encode())
    assert isinstance(problem, FeedProblem)
    assert (problem.locator, problem.reason) == ("line 1", reason)


def test_accepted_variants() -> None:
    lines = [
        observation(id="a", status="corrected", valueQuantity={"value": 5.5, "unit": "mmol/l"},
                    code={"coding": [{"system": "http://loinc.org", "code": "105272-9"}]}),
        observation(id="b", effectiveDateTime=None, effectiveInstant="2024-05-02T10:05:00.123+00:00"),
        observation(id="c", valueQuantity={"value": 400, "code": "mg/dL", "comparator": ">="},
                    device={"display": "Dexcom G6", "identifier": {"value": "8GR5XY"}}),
        observation(id="d", subject={"reference": "https://ehr.example.org/fhir/Patient/p1/_history/2"},
                    identifier=[{"value": "no-system"}]),
        {"resourceType": "OperationOutcome", "issue": []},
    ]  # fmt: skip
    parser = FhirParser()
    items = parse_bytes("\n".join(json.dumps(x) for x in lines).encode(), parser)
    p1 = PatientRef("fhir", "Patient/p1")
    assert summary(items) == [
        ("line 1", utc("2024-05-02T10:00:00Z"), 5.5, MMOL, SensorFlag.NONE, "", "", "Observation/a", p1),
        ("line 2", utc("2024-05-02T10:05:00.123Z"), 101.0, MG, SensorFlag.NONE, "", "", "Observation/b", p1),
        ("line 3", utc("2024-05-02T10:00:00Z"), 400.0, MG, SensorFlag.HIGH, "dexcom-g6", "8GR5XY", "Observation/c",
         p1),
        ("line 4", utc("2024-05-02T10:00:00Z"), 101.0, MG, SensorFlag.NONE, "", "", "|no-system", p1),
    ]  # fmt: skip
    assert parser.skipped == {"OperationOutcome": 1}


def test_a_bundle_inside_the_input_is_a_problem() -> None:
    inner = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation()}]}
    text = json.dumps(observation()) + "\n" + json.dumps(inner) + "\n"
    first, second = parse_bytes(text.encode())
    assert isinstance(first, FeedReading)
    assert isinstance(second, FeedProblem)
    assert (second.locator, second.reason) == (
        "line 2",
        "a Bundle inside the input: send each Bundle as an input of its own",
    )


def test_missing_subject_leaves_the_patient_to_the_caller() -> None:
    (reading,) = parse_bytes(json.dumps(observation(subject=None)).encode())
    assert isinstance(reading, FeedReading)
    assert reading.patient is None


def test_ig_examples_read() -> None:
    """The CGM IG's own sensor-reading examples and submission Bundle."""
    mass = (IG / "Observation-cgmSensorReadingMassPerVolumeExample.json").read_text()
    molar = (IG / "Observation-cgmSensorReadingMolesPerVolumeExample.json").read_text()
    ndjson = json.dumps(json.loads(mass)) + "\n" + json.dumps(json.loads(molar)) + "\n"
    items = parse_bytes(ndjson.encode())
    patient = PatientRef("fhir", "Patient/patientExample")
    assert summary(items) == [
        ("line 1", utc("2024-05-02T10:15:00Z"), 120.0, MG, SensorFlag.NONE, "", "",
         "Observation/cgmSensorReadingMassPerVolumeExample", patient),
        ("line 2", utc("2024-05-02T10:30:00Z"), 6.7, MMOL, SensorFlag.NONE, "", "",
         "Observation/cgmSensorReadingMolesPerVolumeExample", patient),
    ]  # fmt: skip
    parser = FhirParser()
    items = parse_bytes((IG / "Bundle-cgmDataSubmissionBundle.json").read_bytes(), parser)
    assert [(i.locator, i.value) for i in items if isinstance(i, FeedReading)] == [("entry 9", 120.0)]
    assert not [i for i in items if isinstance(i, FeedProblem)]
    assert parser.skipped == {"DiagnosticReport": 1, "CGM summary Observation": 7}


def test_one_line_bundle_is_a_bundle() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": observation()}]}
    parser = FhirParser()
    (reading,) = parse_bytes(json.dumps(bundle).encode(), parser)
    assert isinstance(reading, FeedReading)
    assert (parser.input_format, reading.locator) == ("bundle", "entry 1")


def test_bundle_entry_without_resource_and_empty_bundle() -> None:
    bundle = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"response": {"status": "201"}}]}
    (problem,) = parse_bytes(json.dumps(bundle, indent=1).encode())
    assert isinstance(problem, FeedProblem)
    assert (problem.locator, problem.reason, problem.payload) == (
        "entry 1",
        "entry has no resource",
        '{"response":{"status":"201"}}',
    )
    assert parse_bytes(b'{\n  "resourceType": "Bundle",\n  "type": "collection"\n}\n') == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the input is empty: expected a FHIR Bundle or NDJSON of resources"),
        (b"  \n", "the input is empty: expected a FHIR Bundle or NDJSON of resources"),
        (b"[1, 2]", "not a FHIR Bundle or NDJSON of resources: the input does not start with '{'"),
        (b"patient_id,time,value,unit\n", "not a FHIR Bundle or NDJSON of resources: the input does not start"),
        (b'{"a": 1}\n{"b": 2}\n', "not a FHIR Bundle or NDJSON of resources: the first object has no resourceType"),
        (b'{\n "resourceType": "Observation",\n "status": "final"\n}',
         "a single Observation resource, not a Bundle or NDJSON of resources"),
        (b'{\n "recordType": "egv",\n "records": []\n}', "not a FHIR Bundle or NDJSON of resources: no resourceType"),
        (b'{\n "resourceType": "Bundle",\n "entry": {}\n}', "not a FHIR Bundle: 'entry' is not a list"),
        (b'{\n "resourceType": "Bundle",\n "entrx": [{"resource": {}}]\n}',
         "not a FHIR Bundle: unknown element 'entrx' (a Bundle has entry, id, identifier, implicitRules, issues"),
        (b'{\n "resourceType": "Bundle",\n "entry": [ {"resource": ', "invalid JSON in the Bundle after entry 0"),
    ],
)  # fmt: skip
def test_not_fhir(data: bytes, message: str) -> None:
    with pytest.raises(FeedFormatError) as caught:
        parse_bytes(data)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Dexcom G6", "dexcom-g6"), ("dexcom-g6", "dexcom-g6"), ("DEXCOM G7 15 Day CGM", "dexcom-g7"),
        ("Dexcom G6+", "dexcom-g6"), ("Dexcom ONE+", ""), ("FreeStyle Libre 2", "libre-2"),
        ("FreeStyle Libre 2 Plus", "libre-2"), ("FreeStyle Libre 3", "libre-3"), ("Libre3", "libre-3"),
        ("FreeStyle Libre", "libre-1"), ("FreeStyle Libre 14 day", "libre-1"), ("FreeStyle LibreLink", ""),
        ("FreeStyle Libre Pro", ""), ("Guardian Sensor 3", "guardian-3"), ("Guardian 4 Sensor", "guardian-4"),
        ("Eversense E3", "eversense"), ("Acme CGM System", ""), ("", ""),
    ],
)  # fmt: skip
def test_device_names(name: str, key: str) -> None:
    assert device_key_for_name(name) == key


def _ndjson_lines(n: int) -> Iterator[bytes]:
    template = (
        '{"resourceType":"Observation","id":"o%d","status":"final","identifier":[{"system":"urn:bench","value":'
        '"o%d"}],"code":{"coding":[{"system":"http://loinc.org","code":"99504-3"}]},"subject":{"reference":'
        '"Patient/p1"},"effectiveDateTime":"2024-03-01T%02d:%02d:00Z","valueQuantity":{"value":%d,"unit":"mg/dL",'
        '"system":"http://unitsofmeasure.org","code":"mg/dL"},"device":{"reference":"Device/d1","display":'
        '"Dexcom G6"}}\n'
    )
    batch: list[bytes] = []
    for i in range(n):
        batch.append((template % (i, i, i // 60 % 24, i % 60, 70 + i % 200)).encode())
        if len(batch) == 40:
            yield b"".join(batch)
            batch = []
    yield b"".join(batch)


def _bundle_parts(n: int) -> Iterator[bytes]:
    yield b'{"resourceType":"Bundle","type":"collection","entry":['
    for i, part in enumerate(_ndjson_lines(n)):
        entries = b",".join(b'{"resource":' + line + b"}" for line in part.splitlines())
        yield (b"," if i and entries else b"") + entries
    yield b"]}"


@pytest.mark.parametrize(
    ("kind", "parts", "count"), [("ndjson", _ndjson_lines, 20_000), ("bundle", _bundle_parts, 10_000)]
)
def test_parsing_streams(kind: str, parts: Any, count: int) -> None:
    """Peak traced memory stays a small fraction of the input (about 8 MB of NDJSON, 4 MB of Bundle)."""
    source = OneWay(parts(count))
    parser = FhirParser(keep_payload=False)
    tracemalloc.start()
    try:
        readings = sum(
            isinstance(item, FeedReading) for item in parser.parse(io.BufferedReader(source), ParseOptions())
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (parser.input_format, readings) == (kind, count)
    assert peak < source.size / 5, (peak, source.size)


def test_parser_protocol_attributes() -> None:
    assert FhirParser.feed is Feed.FHIR
