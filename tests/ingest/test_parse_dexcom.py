"""Dexcom API v3 /egvs responses: readings, problems, quarantine retry, and streaming."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bff.ingest.dexcom import DexcomParser
from bff.ingest.records import Feed, FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions, PatientRef
from engine import GlucoseUnit, SensorFlag

FEEDS = Path(__file__).parent.parent / "fixtures" / "feeds"
USER = PatientRef("dexcom-user", "b3f3c9a2-6c55-4b8d-9a0e-5f2d7c1e8a41")
CONTEXT = '{"userId":"b3f3c9a2-6c55-4b8d-9a0e-5f2d7c1e8a41","recordVersion":"3.0"}'


def utc(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


def parse_file(name: str, parser: DexcomParser | None = None) -> list[FeedItem]:
    with (FEEDS / name).open("rb") as stream:
        return list((parser or DexcomParser()).parse(stream, ParseOptions()))


def parse_bytes(data: bytes) -> list[FeedItem]:
    return list(DexcomParser().parse(io.BytesIO(data), ParseOptions()))


def test_mg_dl_response() -> None:
    items = parse_file("dexcom_egvs_mgdl.json")
    readings = [i for i in items if isinstance(i, FeedReading)]
    summary = [
        (r.locator, r.time_ms, r.value, r.unit, r.flag, r.device, r.stream, r.record_key, r.patient) for r in readings
    ]
    mg = GlucoseUnit.MG_DL
    assert summary == [
        ("record 1", utc("2024-03-01T13:05:00Z"), 112.0, mg, SensorFlag.NONE, "dexcom-g6", "8GR5XY",
         "2f1d6a0e-0001-4c4b-9d8e-6c2f0a1b3c01", USER),
        ("record 2", utc("2024-03-01T13:10:00Z"), 118.0, mg, SensorFlag.NONE, "dexcom-g6", "8GR5XY",
         "2f1d6a0e-0002-4c4b-9d8e-6c2f0a1b3c02", USER),
        ("record 3", utc("2024-03-01T13:15:00Z"), 40.0, mg, SensorFlag.LOW, "dexcom-g6", "8GR5XY",
         "2f1d6a0e-0003-4c4b-9d8e-6c2f0a1b3c03", USER),
        ("record 4", utc("2024-03-01T13:20:00Z"), 400.0, mg, SensorFlag.HIGH, "dexcom-g6", "8GR5XY",
         "2f1d6a0e-0004-4c4b-9d8e-6c2f0a1b3c04", USER),
        ("record 5", utc("2024-03-01T13:25:00Z"), 131.0, mg, SensorFlag.NONE, "dexcom-g6", "8GR5XY",
         "2f1d6a0e-0005-4c4b-9d8e-6c2f0a1b3c05", USER),
        ("record 6", utc("2024-03-01T13:27:12Z"), 136.0, mg, SensorFlag.NONE, "dexcom-g7", "J2Q4N8",
         "7a9c1e55-0006-4f00-8a7e-0d4b2c6e9f06", USER),
        ("record 9", utc("2024-03-01T13:40:00Z"), 150.0, mg, SensorFlag.NONE, "", "PRO123",
         "c0ffee00-0009-4a4a-8b8b-111122223333", USER),
    ]  # fmt: skip
    assert dict(readings[0].extra) == {
        "system_time_offset": "+00:00",
        "displayTime": "2024-03-01T08:05:00-05:00",
        "trend": "flat",
        "trendRate": "-0.3",
        "transmitterGeneration": "g6",
        "transmitterTicks": "5083200",
        "displayDevice": "iOS",
    }
    # A receiver record: no offsets anywhere, systemTime taken as UTC and marked so.
    assert dict(readings[4].extra) == {
        "system_time_offset": "none",
        "displayTime": "2024-03-01T08:24:31",
        "trend": "singleUp",
        "trendRate": "2.1",
        "transmitterGeneration": "g6",
        "transmitterTicks": "5084400",
        "displayDevice": "receiver",
    }
    assert "trendRate" not in readings[2].extra  # null trendRate is left out
    assert json.loads(readings[0].payload)["recordId"] == "2f1d6a0e-0001-4c4b-9d8e-6c2f0a1b3c01"
    assert not any(r.ambiguous for r in readings)


def test_mg_dl_response_problems() -> None:
    problems = [i for i in parse_file("dexcom_egvs_mgdl.json") if isinstance(i, FeedProblem)]
    assert [(p.locator, p.reason, p.context, p.patient) for p in problems] == [
        (
            "record 7",
            "unknown unit 'unknown': Dexcom gave no glucose unit (expected mg/dL or mmol/L)",
            CONTEXT,
            USER,
        ),
        ("record 8", "systemTime missing", CONTEXT, USER),
    ]
    assert json.loads(problems[0].payload)["recordId"] == "7a9c1e55-0007-4f00-8a7e-0d4b2c6e9f07"


def test_mmol_response() -> None:
    readings = [i for i in parse_file("dexcom_egvs_mmol.json") if isinstance(i, FeedReading)]
    assert [(r.time_ms, r.value, r.unit, r.flag, r.device, r.stream) for r in readings] == [
        (utc("2024-06-10T06:00:00Z"), 6.2, GlucoseUnit.MMOL_L, SensorFlag.NONE, "dexcom-g6", "8HX2K7"),
        (utc("2024-06-10T06:05:00Z"), 5.9, GlucoseUnit.MMOL_L, SensorFlag.NONE, "dexcom-g6", "8HX2K7"),
        (utc("2024-06-10T06:10:00Z"), 2.2, GlucoseUnit.MMOL_L, SensorFlag.LOW, "dexcom-g6", "8HX2K7"),
    ]
    assert {r.patient for r in readings} == {PatientRef("dexcom-user", "e8d1a0b7-2f4c-4e8e-b1a3-9c7d5e3f1a22")}


def test_keep_payload_false_leaves_readings_without_payload() -> None:
    items = parse_file("dexcom_egvs_mgdl.json", DexcomParser(keep_payload=False))
    assert all(i.payload == "" for i in items if isinstance(i, FeedReading))
    assert all(i.payload for i in items if isinstance(i, FeedProblem))


def test_quarantined_record_reads_again_once_fixed() -> None:
    parser = DexcomParser()
    problem = next(i for i in parse_file("dexcom_egvs_mgdl.json") if isinstance(i, FeedProblem))
    again = list(parser.parse_quarantined(problem.payload, problem.context, ParseOptions()))
    assert [(type(i).__name__, getattr(i, "reason", "")) for i in again] == [("FeedProblem", problem.reason)]
    fixed = problem.payload.replace('"unit":"unknown"', '"unit":"mg/dL"')
    (reading,) = parser.parse_quarantined(fixed, problem.context, ParseOptions())
    assert isinstance(reading, FeedReading)
    assert (reading.time_ms, reading.value, reading.device, reading.stream, reading.record_key, reading.patient) == (
        utc("2024-03-01T13:32:12Z"),
        139.0,
        "dexcom-g7",
        "J2Q4N8",
        "7a9c1e55-0007-4f00-8a7e-0d4b2c6e9f07",
        USER,
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"systemTime": "2024-03-01T13:05:00Z", "value": 100, "unit": "mg/dL"}, "recordId missing"),
        ({"recordId": "r", "systemTime": "yesterday", "value": 100, "unit": "mg/dL"},
         "systemTime 'yesterday' is not an ISO 8601 date-time"),
        ({"recordId": "r", "systemTime": "2024-03-01", "value": 100, "unit": "mg/dL"},
         "systemTime '2024-03-01' has no time of day"),
        ({"recordId": "r", "systemTime": "2024-03-01T13:05:00Z", "value": None, "unit": "mg/dL"},
         "value None is not a number"),
        ({"recordId": "r", "systemTime": "2024-03-01T13:05:00Z", "value": "100", "unit": "mg/dL"},
         "value '100' is not a number"),
        ({"recordId": "r", "systemTime": "2024-03-01T13:05:00Z", "value": 0, "unit": "mg/dL"},
         "value 0 must be a finite number above 0"),
        ({"recordId": "r", "systemTime": "2024-03-01T13:05:00Z", "value": 100, "unit": "mg/dl/min"},
         "unknown unit 'mg/dl/min': Dexcom gave no glucose unit (expected mg/dL or mmol/L)"),
        ({"recordId": "r", "systemTime": "2024-03-01T13:05:00Z", "value": 100},
         "unknown unit None: Dexcom gave no glucose unit (expected mg/dL or mmol/L)"),
        ({"recordId": "r", "systemTime": "2024-03-01T13:05:00Z", "value": 100, "unit": "mg/dL", "status": "bad"},
         "unknown status 'bad' (expected ok, low, high or unknown)"),
        ([1, 2], "record is a JSON list, not an object"),
    ],
)  # fmt: skip
def test_malformed_records(record: object, reason: str) -> None:
    body = {"recordType": "egv", "recordVersion": "3.0", "userId": "u1", "records": [record]}
    (problem,) = parse_bytes(json.dumps(body).encode())
    assert isinstance(problem, FeedProblem)
    assert problem.reason == reason
    assert problem.locator == "record 1"
    assert json.loads(problem.payload) == record
    assert json.loads(problem.context) == {"userId": "u1", "recordVersion": "3.0"}


def test_user_id_after_the_records_does_not_attribute_them() -> None:
    body = b'{"recordType":"egv","records":[{"recordId":"r1","systemTime":"2024-03-01T13:05:00Z","value":99,'
    body += b'"unit":"mg/dL"}],"userId":"late-user"}'
    (reading,) = parse_bytes(body)
    assert isinstance(reading, FeedReading)
    assert reading.patient is None
    assert reading.device == ""
    assert reading.stream == ""


def test_offsets_on_system_time_are_honoured() -> None:
    body = {"recordType": "egv", "records": [
        {"recordId": "a", "systemTime": "2024-03-01T08:05:00-05:00", "value": 99, "unit": "MG/DL"},
        {"recordId": "b", "systemTime": "2024-03-01T13:10:00.250Z", "value": 98, "unit": "mg/dL", "status": "unknown"},
    ]}  # fmt: skip
    a, b = parse_bytes(json.dumps(body).encode())
    assert isinstance(a, FeedReading)
    assert isinstance(b, FeedReading)
    assert (a.time_ms, a.extra["system_time_offset"]) == (utc("2024-03-01T13:05:00Z"), "-05:00")
    assert (b.time_ms, b.extra["system_time_offset"], b.extra["status"]) == (
        utc("2024-03-01T13:10:00Z") + 250,
        "+00:00",
        "unknown",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a Dexcom EGV response: invalid JSON"),
        (b"[]", "not a Dexcom EGV response: the top level is a JSON start_array"),
        (b'{"recordType":"calibration","records":[]}',
         "not a Dexcom EGV response: recordType is 'calibration' (expected 'egv')"),
        (b'{"unit":"mg/dL","rateUnit":"mg/dL/min","egvs":[]}',
         "a Dexcom API v2 response ('egvs'): only v3 /egvs responses are read"),
        (b'{"recordType":"egv","userId":"u"}', "not a Dexcom EGV response: no 'records' list"),
        (b'{"recordType":"egv","records":{"a":1}}', "not a Dexcom EGV response: 'records' is not a list"),
        (b'{"records":[{"eventType":"carbs","value":40}]}',
         "not a Dexcom EGV response: no recordType, and the first record has no systemTime"),
        (b'{"resourceType":"Bundle","entry":[]}', "not a Dexcom EGV response: no 'records' list"),
    ],
)  # fmt: skip
def test_not_an_egv_response(data: bytes, message: str) -> None:
    with pytest.raises(FeedFormatError) as caught:
        parse_bytes(data)
    assert str(caught.value).startswith(message)


def test_truncated_json_after_some_records() -> None:
    record = '{"recordId":"r%d","systemTime":"2024-03-01T13:05:00Z","value":99,"unit":"mg/dL"}'
    body = '{"recordType":"egv","userId":"u","records":[' + ",".join(record % i for i in range(3)) + ',{"recordId":'
    parser = DexcomParser()
    seen: list[FeedItem] = []
    with pytest.raises(FeedFormatError, match=r"^invalid JSON after record 3: "):
        seen.extend(parser.parse(io.BytesIO(body.encode()), ParseOptions()))
    assert len(seen) == 3


def test_parser_protocol_attributes() -> None:
    assert DexcomParser.feed is Feed.DEXCOM


_STREAMING_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    from bff.ingest.dexcom import DexcomParser
    from bff.ingest.records import FeedReading, ParseOptions

    N = 200_000

    class Generated(io.RawIOBase):
        def __init__(self, parts):
            self.parts, self.buffer, self.size = iter(parts), b"", 0
        def readable(self):
            return True
        def readinto(self, out):
            while not self.buffer:
                self.buffer = next(self.parts, b"")
                if not self.buffer:
                    return 0
            n = min(len(out), len(self.buffer))
            out[:n], self.buffer = self.buffer[:n], self.buffer[n:]
            self.size += n
            return n

    def parts(n):
        yield b'{"recordType":"egv","recordVersion":"3.0","userId":"u-1","records":['
        batch = []
        for i in range(n):
            record = {"recordId": "rec-%08d" % i, "systemTime": "2024-03-%02dT%02d:%02d:00+00:00" % (
                1 + i // 1440 % 28, i // 60 % 24, i % 60), "displayTime": "2024-03-01T03:05:00-05:00",
                "transmitterId": "8GR5XY", "transmitterTicks": 5083200 + 300 * i, "value": 70 + i % 200,
                "status": "ok", "trend": "flat", "trendRate": 0.1, "unit": "mg/dL", "rateUnit": "mg/dL/min",
                "displayDevice": "iOS", "transmitterGeneration": "g6"}
            batch.append(("," if i else "") + json.dumps(record, separators=(",", ":")))
            if len(batch) == 1000:
                yield "".join(batch).encode()
                batch = []
        yield "".join(batch).encode() + b"]}"

    def peak_kb():  # this process's own high-water mark (ru_maxrss would carry the pytest worker's over exec)
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    list(DexcomParser().parse(Generated(parts(2000)), ParseOptions()))  # warm up
    before = peak_kb()
    source = Generated(parts(N))
    count = sum(isinstance(item, FeedReading) for item in DexcomParser().parse(io.BufferedReader(source),
                                                                            ParseOptions()))
    print(json.dumps({"count": count, "size": source.size, "growth_kb": peak_kb() - before}))
    """
)


@pytest.mark.slow
def test_parsing_streams_a_200k_record_response() -> None:
    """200,000 records (about 66 MB) go through without the process's peak memory growing with the input."""
    done = subprocess.run(
        [sys.executable, "-c", _STREAMING_SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(done.stdout)
    assert result["count"] == 200_000
    assert result["size"] > 60_000_000
    assert result["growth_kb"] * 1024 < result["size"] / 6, result
