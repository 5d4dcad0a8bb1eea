"""The engine's CSV format (`glucobridge outcomes INPUT.csv`).

Header: `patient_id,time,value,unit` plus optional `device,session_id,session_start,source,record_id,tz` (`tz`:
the patient's IANA zone, which the feed then states: days, nights and the AGP are local to it).
`time` and `session_start` are ISO 8601 with an offset; a naive time is accepted only when the caller names the
zone it was recorded in (`input_tz`). `unit` is mg/dL or mmol/L in any letter case. `value` is a number, or a
sensor's out-of-range mark: `LOW`/`LO`/`HIGH`/`HI` (the device's bound) or `<N` / `>N` (the bound given).

Rows are numbered as lines of the file (the header is line 1), so an error points at what to fix; a record
whose quoted field spans lines is "rows 4–5". The text is split into records by `bff.ingest.csvrecords` (bytes
that are not UTF-8, a NUL, an unbalanced quote, a field over the csv module's limit, a wrong number of fields:
each is an error of its row), and every field is held to 64 characters (`patient_id` to 128, `record_id` and
`session_id` to 256) and every year to 1900–2200 before the engine sees it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import IO

import numpy as np

from bff.ingest.csvrecords import CsvRecord, CsvRecords, lines_from_bytes, lines_from_text
from bff.ingest.localtime import iso_year_problem, offset_evidence
from engine import (
    EngineError,
    GlucoseUnit,
    Reading,
    SensorFlag,
    Source,
    device_profile,
    localize,
    parse_unit,
)
from engine.timezones import check_zone

REQUIRED = ("patient_id", "time", "value", "unit")
OPTIONAL = ("device", "session_id", "session_start", "source", "record_id", "tz")
#: The longest each field may be (characters); any other field: FIELD_LIMIT.
FIELD_LIMITS = {"patient_id": 128, "record_id": 256, "session_id": 256}
FIELD_LIMIT = 64
_EPOCH_NAIVE = datetime(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class RowError:
    """A row that could not be read: its line number in the file (and its last, when it spans lines), and what is
    wrong with it."""

    row: int
    problem: str
    last: int = 0

    def __str__(self) -> str:
        where = f"rows {self.row}–{self.last}" if self.last > self.row else f"row {self.row}"
        return f"{where}: {self.problem}"


@dataclass(slots=True)
class CsvParse:
    readings: list[Reading] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # file line of each reading
    record_ids: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    zones: list[str] = field(default_factory=list)  # the `tz` column of each reading ("" when not given)
    offsets: list[int | None] = field(default_factory=list)  # the UTC offset its time was written with (evidence)


class CsvFormatError(ValueError):
    """The file as a whole cannot be read (header problems)."""


@dataclass(slots=True)
class _Pending:
    """A row whose time (or session start) was naive and waits for localisation in the input zone."""

    position: int
    time_local_ms: int | None
    session_local_ms: int | None


_ONE_MS = datetime(1970, 1, 1, 0, 0, 0, 1000) - _EPOCH_NAIVE
_EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)  # an aware time minus it: exact, by the two UTC offsets


def _ms(moment: datetime) -> int:
    """Milliseconds since the epoch: UTC for an aware time, on the naive local axis for a naive one."""
    delta = moment - _EPOCH_NAIVE if moment.tzinfo is None else moment - _EPOCH_UTC
    return delta // _ONE_MS


def _parse_time(text: str, what: str) -> datetime:
    year = iso_year_problem(text)
    if year:
        raise ValueError(f"{what} {text.strip()!r}: {year}")
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 date-time (e.g. 2024-03-01T08:05:00-05:00)") from None


def _parse_value(text: str) -> tuple[float | None, SensorFlag]:
    raw = text.strip()
    upper = raw.upper()
    if upper in ("LOW", "LO"):
        return None, SensorFlag.LOW
    if upper in ("HIGH", "HI"):
        return None, SensorFlag.HIGH
    flag = SensorFlag.NONE
    if raw[:1] in "<>" and raw:
        flag = SensorFlag.LOW if raw[0] == "<" else SensorFlag.HIGH
        raw = raw[1:].strip()
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"value {text!r} is not a number (or LOW/HIGH, <N, >N)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"value {text!r} must be a finite number above 0")
    return value, flag


def parse_engine_csv(lines: Iterable[str], *, input_tz: str | None = None) -> CsvParse:
    """Parse CSV text (a text file's lines). Header problems raise CsvFormatError; row problems are collected in
    `errors`."""
    return _parse(CsvRecords(lines_from_text(lines)), input_tz)


def read_engine_csv(stream: IO[bytes], *, input_tz: str | None = None) -> CsvParse:
    """Parse CSV bytes (UTF-8; a row whose bytes are not is an error of that row), as `parse_engine_csv`."""
    return _parse(CsvRecords(lines_from_bytes(stream)), input_tz)


def _parse(records: CsvRecords, input_tz: str | None) -> CsvParse:
    if input_tz is not None:
        check_zone(input_tz)
    rows = iter(records)
    header = read_header(next(rows, None))
    records.width = len(header)
    return parse_engine_rows(header, rows, input_tz=input_tz)


def read_header(first: CsvRecord | None) -> list[str]:
    """The header (lower-cased column names) from the first record; CsvFormatError when it is not one."""
    if first is None:
        raise CsvFormatError("the file is empty: expected a header patient_id,time,value,unit")
    if first.problem:
        raise CsvFormatError(f"row {first.first}: {first.problem}")
    header = [h.strip().lower() for h in first.fields]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CsvFormatError(f"row 1: missing column(s) {', '.join(missing)} (header needs {','.join(REQUIRED)})")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        optional = ",".join(OPTIONAL)
        shown = ", ".join(name[:FIELD_LIMIT] for name in unknown[:5])
        raise CsvFormatError(f"row 1: unknown column(s) {shown}; optional columns are {optional}")
    if len(set(header)) != len(header):
        raise CsvFormatError("row 1: a column is named twice")
    return header


def parse_engine_rows(header: list[str], records: Iterable[CsvRecord], *, input_tz: str | None = None) -> CsvParse:
    """The readings of the records after the header; each record's problem is a RowError of its first line."""
    col = {name: i for i, name in enumerate(header)}
    out = CsvParse()
    pending: list[_Pending] = []
    for record in records:
        line_no = record.first
        if record.problem:
            out.errors.append(RowError(line_no, record.problem, record.last))
            continue
        try:
            if record.last != line_no:  # no field of this format may hold a line break
                _no_line_break(header, record.fields)
            reading, waiting, zone, offset = _row(record.fields, col, header, line_no, input_tz)
        except (ValueError, EngineError) as exc:
            out.errors.append(RowError(line_no, str(exc), record.last))
            continue
        if waiting is not None:
            waiting.position = len(out.readings)
            pending.append(waiting)
        out.readings.append(reading)
        out.rows.append(line_no)
        out.record_ids.append(record.fields[col["record_id"]].strip() if "record_id" in col else "")
        out.zones.append(zone)
        out.offsets.append(offset)
    if pending:
        assert input_tz is not None
        _localize_pending(out, pending, input_tz)
    return out


def _no_line_break(header: list[str], row: list[str]) -> None:
    for name, text in zip(header, row, strict=False):
        if "\n" in text or "\r" in text:
            raise ValueError(f"{name} holds a line break (an unbalanced quote?): {text[:40]!r}")


def _row(
    row: list[str], col: dict[str, int], header: list[str], line_no: int, input_tz: str | None
) -> tuple[Reading, _Pending | None, str, int | None]:
    if len(row) != len(header):
        raise ValueError(f"has {len(row)} fields, the header has {len(header)}")
    if max(map(len, row)) > FIELD_LIMIT:  # the common row has only short fields: one cheap test
        for name, text in zip(header, row, strict=True):
            limit = FIELD_LIMITS.get(name, FIELD_LIMIT)
            if len(text) > limit and len(text.strip()) > limit:
                raise ValueError(f"{name} is {len(text.strip()):,} characters (at most {limit})")

    def get(name: str) -> str:
        return row[col[name]].strip() if name in col else ""

    patient = get("patient_id")
    if not patient:
        raise ValueError("patient_id is empty")
    unit: GlucoseUnit = parse_unit(get("unit"))
    value, flag = _parse_value(get("value"))
    device = device_profile(get("device")).key
    if value is None and device_profile(device).bound(unit, high=flag is SensorFlag.HIGH) is None:
        raise ValueError(
            f"{flag.name} without a device: add the device column, or write the bound the sensor reported "
            f"(e.g. {'<40' if flag is SensorFlag.LOW else '>400'})"
        )
    source = Source.parse(get("source")) if get("source") else Source.FILE
    waiting: _Pending | None = None
    moment = _parse_time(get("time"), "time")
    zone = get("tz")
    if zone:
        check_zone(zone)
    time_ms = 0
    if moment.tzinfo is None:
        if input_tz is None:
            raise ValueError(f"time {get('time')!r} has no UTC offset: add one, or name its zone with --input-tz")
        waiting = _Pending(0, _ms(moment), None)
    else:
        time_ms = _ms(moment)
    session_ms: int | None = None
    if get("session_start"):
        start = _parse_time(get("session_start"), "session_start")
        if start.tzinfo is None:
            if input_tz is None:
                raise ValueError("session_start has no UTC offset: add one, or name its zone with --input-tz")
            waiting = waiting or _Pending(0, None, None)
            waiting.session_local_ms = _ms(start)
        else:
            session_ms = _ms(start)
    reading = Reading(
        patient_id=patient,
        time_ms=time_ms,
        value=value,
        unit=unit,
        flag=flag,
        device=device,
        session_start_ms=session_ms,
        source=source,
        received=line_no,
    )
    return reading, waiting, zone, offset_evidence(moment) if moment.tzinfo is not None else None


def _localize_pending(out: CsvParse, pending: list[_Pending], zone: str) -> None:
    """Place naive times on the UTC line; a non-existent local time is an error for its row."""
    times = [p for p in pending if p.time_local_ms is not None]
    bad: set[int] = set()
    while times:
        local = np.array([p.time_local_ms for p in times], dtype=np.int64)
        streams: dict[tuple[str, str], int] = {}
        codes = np.array(
            [
                streams.setdefault((out.readings[p.position].patient_id, out.readings[p.position].device), len(streams))
                for p in times
            ],
            dtype=np.int32,
        )
        try:
            utc, ambiguous = localize(local, zone, codes)
        except EngineError as exc:
            if exc.index is None:
                raise
            failed = times[exc.index]
            bad.add(failed.position)
            out.errors.append(RowError(out.rows[failed.position], exc.message))
            times = [p for p in times if p is not failed]
            continue
        for p, instant, amb in zip(times, utc.tolist(), ambiguous.tolist(), strict=True):
            out.readings[p.position] = replace(out.readings[p.position], time_ms=instant, ambiguous=amb)
        break
    for p in pending:
        if p.session_local_ms is None or p.position in bad:
            continue
        try:
            utc, _ = localize(np.array([p.session_local_ms], dtype=np.int64), zone)
        except EngineError as exc:
            bad.add(p.position)
            out.errors.append(RowError(out.rows[p.position], f"session_start: {exc.message}"))
            continue
        out.readings[p.position] = replace(out.readings[p.position], session_start_ms=int(utc[0]))
    if bad:
        keep = [i for i in range(len(out.readings)) if i not in bad]
        out.readings = [out.readings[i] for i in keep]
        out.rows = [out.rows[i] for i in keep]
        out.record_ids = [out.record_ids[i] for i in keep]
        out.zones = [out.zones[i] for i in keep]
        out.offsets = [out.offsets[i] for i in keep]
        out.errors.sort(key=lambda e: e.row)
