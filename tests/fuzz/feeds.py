"""Valid CGM feeds built record by record, so a test can change one field of one record and know every record.

Records are dicts (Dexcom, FHIR) or lists of fields (LibreView, the engine CSV). Any value may be `Raw(bytes)`:
those bytes go into the file exactly where the value goes (JSON: the value itself, quotes included; CSV: the
field's text, never quoted), for bytes that are not UTF-8, deep nesting or an unbalanced quote. Other CSV text
is quoted as a CSV writer would, so a multi-line value stays one record.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from bff.ingest.records import ParseOptions, Parser
from bff.ingest.registry import parser_for

START = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=5)
NEW_YORK_WINTER = timezone(timedelta(hours=-5))


@dataclass(frozen=True)
class Raw:
    """Bytes put into a file as they are, where a value goes."""

    data: bytes


def deep(depth: int) -> Raw:
    """A JSON value nested `depth` lists deep."""
    return Raw(b"[" * depth + b"]" * depth)


def _json_bytes(document: Any) -> bytes:
    raws: list[bytes] = []

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.data)
            return f"@@raw-{len(raws) - 1}@@"
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    data = json.dumps(swap(document)).encode()
    for i, raw in enumerate(raws):
        data = data.replace(f'"@@raw-{i}@@"'.encode(), raw)
    return data


def _csv_field(value: str | Raw) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if any(c in value for c in ',"\r\n'):
        return b'"' + value.replace('"', '""').encode() + b'"'
    return value.encode()


def _csv_bytes(lines: list[list[str | Raw]]) -> bytes:
    return b"".join(b",".join(_csv_field(f) for f in line) + b"\n" for line in lines)


def iso(i: int) -> str:
    return (START + i * STEP).isoformat()


# MARK: Dexcom


def dexcom_records(n: int) -> list[dict[str, Any]]:
    return [_dexcom_record(i) for i in range(n)]


def _dexcom_record(i: int) -> dict[str, Any]:
    return {
        "recordId": f"rec-{i:05d}", "systemTime": iso(i),
        "displayTime": (START + i * STEP).astimezone(NEW_YORK_WINTER).isoformat(), "transmitterId": "8GR5XY",
        "transmitterTicks": 5_083_200 + 300 * i, "value": 80 + (i * 7) % 150, "status": "ok", "trend": "flat",
        "trendRate": 0.1, "unit": "mg/dL", "rateUnit": "mg/dL/min", "displayDevice": "iOS",
        "transmitterGeneration": "g6",
    }  # fmt: skip


def dexcom_file(records: list[Any]) -> bytes:
    return _json_bytes({"recordType": "egv", "recordVersion": "3.0", "userId": "u-fuzz", "records": records})


# MARK: FHIR


def fhir_observations(n: int) -> list[dict[str, Any]]:
    return [_observation(i) for i in range(n)]


def _observation(i: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": f"obs-{i}", "status": "final",
        "identifier": [{"system": "urn:test:cgm", "value": f"obs-{i}"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": "Patient/fuzz-1"}, "effectiveDateTime": iso(i).replace("+00:00", "Z"),
        "valueQuantity": {"value": 80 + (i * 7) % 150, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                          "code": "mg/dL"},
        "device": {"reference": "Device/g6-1", "display": "Dexcom G6"},
    }  # fmt: skip


def fhir_bundle(resources: list[Any]) -> bytes:
    entries = [{"fullUrl": f"urn:uuid:entry-{i}", "resource": r} for i, r in enumerate(resources)]
    return _json_bytes({"resourceType": "Bundle", "type": "collection", "entry": entries})


def fhir_ndjson(resources: list[Any]) -> bytes:
    return b"".join(_json_bytes(r) + b"\n" for r in resources)


# MARK: LibreView

LIBRE_HEADER = [
    "Device", "Serial Number", "Device Timestamp", "Record Type", "Historic Glucose mg/dL", "Scan Glucose mg/dL",
    "Non-numeric Rapid-Acting Insulin", "Rapid-Acting Insulin (units)", "Non-numeric Food", "Carbohydrates (grams)",
    "Carbohydrates (servings)", "Non-numeric Long-Acting Insulin", "Long-Acting Insulin Value (units)", "Notes",
    "Strip Glucose mg/dL", "Ketone mmol/L", "Meal Insulin (units)", "Correction Insulin (units)",
    "User Change Insulin (units)",
]  # fmt: skip
LIBRE_COLUMN = {name: i for i, name in enumerate(LIBRE_HEADER)}
#: The physical line of the first data row (a metadata line, then the header).
LIBRE_FIRST_LINE = 3


def libreview_rows(n: int) -> list[list[str | Raw]]:
    """n rows, 15 minutes apart from 2024-03-13 (New York local time, month first): historic readings, a scan
    every 7th, a note every 10th."""
    rows: list[list[str | Raw]] = []
    for i in range(n):
        row: list[str | Raw] = [""] * len(LIBRE_HEADER)
        stamp = datetime(2024, 3, 13, 0, 0) + timedelta(minutes=15 * i)
        row[0], row[1], row[2] = "FreeStyle Libre 2", "0M00FUZZ01", stamp.strftime("%m-%d-%Y %I:%M %p")
        if i % 10 == 9:
            row[3], row[LIBRE_COLUMN["Notes"]] = "6", f"note {i}"
        elif i % 7 == 6:
            row[3], row[5] = "1", str(90 + i % 100)
        else:
            row[3], row[4] = "0", str(80 + (i * 7) % 150)
        rows.append(row)
    return rows


def libreview_file(rows: list[list[str | Raw]]) -> bytes:
    metadata: list[str | Raw] = ["Glucose Data", "Generated on", "03-02-2024 9:14 AM UTC", "Generated by", "Fuzz"]
    return _csv_bytes([metadata, list(LIBRE_HEADER), *rows])


# MARK: the engine's CSV

ENGINE_HEADER = ["patient_id", "time", "value", "unit", "device", "record_id"]
ENGINE_COLUMN = {name: i for i, name in enumerate(ENGINE_HEADER)}


def engine_rows(n: int) -> list[list[str | Raw]]:
    return [["P-fuzz", iso(i), str(80 + (i * 7) % 150), "mg/dL", "dexcom-g6", f"r-{i}"] for i in range(n)]


def engine_file(rows: list[list[str | Raw]]) -> bytes:
    return _csv_bytes([list(ENGINE_HEADER), *rows])


# MARK: one description per feed

UTC_OPTIONS = ParseOptions()


@dataclass(frozen=True)
class FeedCase:
    """How to build, parse and ingest one feed, and where its records' times are."""

    name: str
    feed: str  # the CLI's --feed
    records: Callable[[int], list[Any]]
    file: Callable[[list[Any]], bytes]
    time_path: tuple[str | int, ...]  # where a record's time is
    first_line: int  # the locator of record 0: its line, or its number for "record"/"entry"
    unit: str  # "record", "entry" or "line"
    options: ParseOptions = UTC_OPTIONS
    cli_args: tuple[str, ...] = ()
    year_1: str = "0001-01-01T00:00:00+14:00"
    year_9999: str = "9999-12-31T23:59:59-14:00"

    def parser(self) -> Parser:
        return parser_for(self.feed, keep_payload=True)

    def locator(self, index: int) -> str:
        return f"{self.unit} {self.first_line + index}"

    def skipped_in(self, records: list[Any]) -> int:
        """How many of these records the parser counts as skipped (known non-reading types)."""
        if self.name != "libreview":
            return 0
        return sum(1 for r in records if isinstance(r[3], str) and r[3] in {"2", "3", "4", "5", "6"})


def with_value(records: list[Any], index: int, path: tuple[str | int, ...], value: Any) -> list[Any]:
    """The records with the value at `path` in record `index` replaced (the others shared, that one copied)."""
    changed = copy.deepcopy(records[index])
    target = changed
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return [*records[:index], changed, *records[index + 1 :]]


NEW_YORK = ParseOptions(input_tz="America/New_York")
CASES = {
    case.name: case
    for case in (
        FeedCase("dexcom", "dexcom", dexcom_records, dexcom_file, ("systemTime",), 1, "record",
                 cli_args=("--patient", "P-fuzz")),
        FeedCase("fhir-bundle", "fhir", fhir_observations, fhir_bundle, ("effectiveDateTime",), 1, "entry"),
        FeedCase("fhir-ndjson", "fhir", fhir_observations, fhir_ndjson, ("effectiveDateTime",), 1, "line"),
        FeedCase("libreview", "libreview", libreview_rows, libreview_file, (2,), LIBRE_FIRST_LINE, "line",
                 options=NEW_YORK, cli_args=("--patient", "P-fuzz", "--input-tz", "America/New_York"),
                 year_1="01-01-0001 12:00 AM", year_9999="12-31-9999 11:59 PM"),
        FeedCase("csv", "csv", engine_rows, engine_file, (1,), 2, "line"),
    )
}  # fmt: skip
