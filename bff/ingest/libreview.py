"""LibreView CSV exports (Abbott FreeStyle Libre), streamed row by row.

The file has metadata rows, then a header row `Device,Serial Number,Device Timestamp,Record Type,Historic Glucose
mg/dL,Scan Glucose mg/dL,...` (units in the column names), then one row per record. `Device Timestamp` is local
"floating" time in a locale format: MM-DD-YYYY, DD-MM-YYYY or YYYY-MM-DD (separators `-`, `/` or `.`), with or
without seconds, 24-hour or AM/PM. The day/month order comes from `ParseOptions.date_order`, else from a bounded
look-ahead (a day above 12, or a day that rolls over at midnight); times are placed in `ParseOptions.input_tz`.

Record type 0 (historic) and 1 (scan) are readings; the other known types (2 strip glucose, 3 ketone, 4 insulin,
5 food, 6 notes and time changes) are counted in `LibreViewParser.skipped` and not yielded. Any other record
type is a problem, never a skip. Row problems carry the row as CSV text and, as context, the header line
followed by `date_order=<mdy|dmy|ymd>` on a second line when the file's order was known, so
`parse_quarantined` can read them again without guessing the dates.

Rows come from `bff.ingest.csvrecords` with their physical lines: bytes that are not UTF-8, a NUL, a field over
the csv module's limit, a wrong number of fields or an unbalanced quote make a row a problem (an unbalanced
quote never swallows the rows after it), and a Notes field spread over lines keeps its row whole ("lines 7–8").
The fields a reading keeps are held to `MAX_KEY_CHARS` (Device, Serial Number) and the Device Timestamp to 64
characters, its year to 1900–2200.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import IO

from bff.ingest.bounds import MAX_KEY_CHARS, shorten, too_long
from bff.ingest.csvrecords import CsvRecord, CsvRecords, Line, TextLine, line_text, lines_from_bytes, lines_from_text
from bff.ingest.fhir_feed import device_key_for_name
from bff.ingest.localtime import LocalTimeResolver, naive_local_ms
from bff.ingest.records import Feed, FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions
from engine import DEVICES, EngineError, GlucoseUnit, SensorFlag, device_profile, parse_unit

#: How many metadata rows may come before the header row.
MAX_METADATA_ROWS = 50
#: How many data rows may be read ahead (and held) to find the day/month order.
LOOKAHEAD_ROWS = 5000
DATE_ORDERS = ("mdy", "dmy", "ymd")
NO_TZ = "LibreView times are local: name their zone with --input-tz"

#: Record types that are not CGM readings, by the name counted in `skipped`.
SKIPPED_TYPES = {
    "2": "strip glucose",
    "3": "ketone",
    "4": "insulin",
    "5": "food",
    "6": "note or time change",
}
_TIMESTAMP = re.compile(
    r"\s*(\d{1,4})[-/.](\d{1,2})[-/.](\d{1,4})[ T]+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*(?:([AaPp])\.?[Mm]\.?)?\s*$"
)
_LIBRE_BOUNDS = DEVICES["libre-2"]
#: A Device Timestamp longer than this is not one (and is not handed to the pattern above).
STAMP_CHARS = 64


@dataclass(frozen=True, slots=True)
class _Columns:
    names: list[str]
    free_text: frozenset[int]  # the columns that may hold line breaks
    device: int
    serial: int
    timestamp: int
    record_type: int
    historic: int | None
    historic_name: str
    historic_unit: GlucoseUnit
    scan: int | None
    scan_name: str
    scan_unit: GlucoseUnit
    width: int


class _RecordError(ValueError):
    """A row that cannot become a reading; the message is the quarantine reason."""


class _UnknownOrderError(ValueError):
    """A DD-MM / MM-DD date when the order is not known."""


def _columns(header: list[str]) -> _Columns:
    names = [h.strip().lstrip("\ufeff") for h in header]
    lower = [n.lower() for n in names]

    def find(name: str) -> int:
        try:
            return lower.index(name.lower())
        except ValueError:
            raise FeedFormatError(
                f"the LibreView header has no '{name}' column (expected Device,Serial Number,Device Timestamp,"
                "Record Type,Historic Glucose mg/dL,...)"
            ) from None

    def glucose(prefix: str) -> tuple[int | None, str, GlucoseUnit]:
        for i, n in enumerate(lower):
            if n.startswith(prefix):
                unit_text = names[i][len(prefix) :].strip()
                try:
                    return i, names[i], parse_unit(unit_text)
                except EngineError:
                    raise FeedFormatError(
                        f"column '{names[i]}' has unknown unit {unit_text!r}: expected mg/dL or mmol/L"
                    ) from None
        return None, "", GlucoseUnit.MG_DL

    historic, historic_name, historic_unit = glucose("historic glucose")
    scan, scan_name, scan_unit = glucose("scan glucose")
    if historic is None and scan is None:
        raise FeedFormatError("the LibreView header has no 'Historic Glucose' or 'Scan Glucose' column")
    return _Columns(
        names=names,
        free_text=frozenset(i for i, n in enumerate(lower) if n == "notes" or n.startswith("non-numeric")),
        device=find("Device"),
        serial=find("Serial Number"),
        timestamp=find("Device Timestamp"),
        record_type=find("Record Type"),
        historic=historic,
        historic_name=historic_name,
        historic_unit=historic_unit,
        scan=scan,
        scan_name=scan_name,
        scan_unit=scan_unit,
        width=len(names),
    )


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    return max(counts, key=lambda d: counts[d])


def _local_ms(text: str, order: str | None) -> int:
    """The naive local time of a Device Timestamp; `_UnknownOrderError` when it needs an order not yet known."""
    match = _TIMESTAMP.match(text) if len(text) <= STAMP_CHARS else None
    if match is None:
        raise _RecordError(f"Device Timestamp {shorten(text)} is not a date and time (e.g. 03-10-2024 14:05)")
    p1, p2, p3, hh, mm, ss, ampm = match.groups()
    if len(p1) == 4:
        year, month, day = int(p1), int(p2), int(p3)
    elif len(p3) != 4:
        raise _RecordError(f"Device Timestamp {text!r} has no four-digit year")
    elif order == "mdy":
        year, month, day = int(p3), int(p1), int(p2)
    elif order == "dmy":
        year, month, day = int(p3), int(p2), int(p1)
    elif order == "ymd":
        raise _RecordError(f"Device Timestamp {text!r} does not match the date order ymd")
    else:
        raise _UnknownOrderError(text)
    hour = int(hh)
    if ampm is not None:
        if not 1 <= hour <= 12:
            raise _RecordError(f"Device Timestamp {text!r}: hour {hour} with AM/PM")
        hour = hour % 12 + (12 if ampm in "Pp" else 0)
    try:
        return naive_local_ms(year, month, day, hour, int(mm), int(ss or 0))
    except ValueError as exc:
        if str(exc).startswith("year "):
            raise _RecordError(f"Device Timestamp {text!r}: {exc}") from None
        used = order or "ymd"
        raise _RecordError(f"Device Timestamp {text!r} is not a valid date and time (date order {used})") from None


def _value(text: str, column: str, unit: GlucoseUnit) -> tuple[float | None, SensorFlag]:
    raw = text.strip()
    if not raw:
        raise _RecordError(f"no glucose value in '{column}'")
    if len(raw) > STAMP_CHARS:
        raise _RecordError(f"'{column}' value {shorten(raw)} is not a number (or LO/HI)")
    upper = raw.upper()
    if upper in ("LO", "LOW"):
        return None, SensorFlag.LOW
    if upper in ("HI", "HIGH"):
        return None, SensorFlag.HIGH
    try:
        value = float(raw.replace(",", ".") if "," in raw and "." not in raw else raw)
    except ValueError:
        raise _RecordError(f"'{column}' value {raw!r} is not a number (or LO/HI)") from None
    if not math.isfinite(value) or value <= 0:
        raise _RecordError(f"'{column}' value {raw!r} must be a finite number above 0")
    return value, SensorFlag.NONE


def _field(fields: list[str], index: int) -> str:
    return fields[index].strip() if index < len(fields) else ""


def _detect_order(rows: Iterator[CsvRecord], cols: _Columns) -> tuple[str | None, list[CsvRecord]]:
    """Read ahead (at most LOOKAHEAD_ROWS) until the dates show their day/month order.

    Evidence: a first field above 12 (a day: dmy) or a second one above 12 (mdy); or, between consecutive rows
    of a serial number, one field up by one and the other unchanged while the clock wrapped past midnight (that
    field is the day). Returns the order (None when no row needed one) and the rows read.
    """
    held: list[CsvRecord] = []
    votes: set[str] = set()  # at most one: the loop returns on the first
    example = ""  # the first date that could be either order
    previous: dict[str, tuple[int, int, int]] = {}
    for row in rows:
        held.append(row)
        stamp = _field(row.fields, cols.timestamp)
        match = _TIMESTAMP.match(stamp) if len(stamp) <= STAMP_CHARS else None
        if match is not None and len(match.group(1)) <= 2 and len(match.group(3)) == 4:
            a, b = int(match.group(1)), int(match.group(2))
            if a > 12 >= b:
                votes.add("dmy")
            elif b > 12 >= a:
                votes.add("mdy")
            else:
                example = example or match.group(0).strip()
                hour = int(match.group(4)) % 12 if match.group(7) else int(match.group(4))
                hour += 12 if (match.group(7) or "a") in "Pp" else 0
                minutes = hour * 60 + int(match.group(5))
                serial = _field(row.fields, cols.serial)
                before = previous.get(serial)
                if before is not None:
                    pa, pb, pminutes = before
                    wrapped = (minutes < pminutes and (a, b) > (pa, pb)) or (minutes > pminutes and (a, b) < (pa, pb))
                    if wrapped and a == pa and abs(b - pb) == 1:
                        votes.add("mdy")
                    elif wrapped and b == pb and abs(a - pa) == 1:
                        votes.add("dmy")
                previous[serial] = (a, b, minutes)
        if votes:  # the first evidence decides; a later row that contradicts it is a row problem
            return votes.pop(), held
        if len(held) >= LOOKAHEAD_ROWS:
            break
    if example:
        raise FeedFormatError(
            f"the Device Timestamps (e.g. {example!r}) could be MM-DD-YYYY or "
            "DD-MM-YYYY: name the order with --date-order mdy or --date-order dmy"
        )
    return None, held


def _date_order(given: str | None) -> str | None:
    order = given.strip().lower() if given else None
    if order is not None and order not in DATE_ORDERS:
        raise FeedFormatError(f"unknown date order {given!r}: use mdy, dmy or ymd")
    return order


class LibreViewParser:
    """Parser for LibreView CSV exports (`Parser` protocol).

    After (or during) a parse, `skipped` counts the rows that are not CGM readings by kind ("strip glucose",
    "ketone", "insulin", "food", "note or time change", "record type N"), `metadata` holds the raw metadata
    lines above the header, and `date_order` the order used ("mdy", "dmy", "ymd" or None when no date needed one).
    """

    feed = Feed.LIBREVIEW

    def __init__(self, *, keep_payload: bool = True) -> None:
        self.keep_payload = keep_payload
        self.skipped: dict[str, int] = {}
        self.metadata: list[str] = []
        self.date_order: str | None = None

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        self.skipped = {}
        self.metadata = []
        resolver, order = self._options(options)
        yield from self._parse(lines_from_bytes(stream), resolver, order)

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        """Read one row again: `context` is the header line (then `date_order=...` when the file's order was
        known), `payload` the row as CSV text. `options.date_order`, when given, wins over the context's."""
        resolver, order = self._options(options)
        header, _, rest = context.partition("\n")
        if order is None and rest.startswith("date_order="):
            order = _date_order(rest[len("date_order=") :])
        lines = [header.rstrip("\r") + "\n", payload.rstrip("\r\n") + "\n"]
        self.skipped = {}
        return self._parse(lines_from_text(lines), resolver, order)

    @staticmethod
    def _options(options: ParseOptions) -> tuple[LocalTimeResolver, str | None]:
        if not options.input_tz:
            raise FeedFormatError(NO_TZ)
        try:
            resolver = LocalTimeResolver(options.input_tz)
        except EngineError as exc:
            raise FeedFormatError(exc.message) from None
        return resolver, _date_order(options.date_order)

    def _parse(self, lines: Iterator[Line], resolver: LocalTimeResolver, order: str | None) -> Iterator[FeedItem]:
        header_line = ""
        number = 0
        for line in lines:
            number += 1
            text = line_text(line)
            lowered = text.lower()
            if "device timestamp" in lowered and "record type" in lowered:
                if isinstance(line, TextLine):
                    raise FeedFormatError(f"line {number}, the header: {line.problem}")
                header_line = text.rstrip("\r\n").lstrip("\ufeff")
                break
            self.metadata.append(text.rstrip("\r\n")[:MAX_KEY_CHARS])
            if number >= MAX_METADATA_ROWS:
                break
        if not header_line:
            raise FeedFormatError(
                "no LibreView header row (Device,Serial Number,Device Timestamp,Record Type,Historic Glucose "
                f"mg/dL,...) in the first {number} lines"
            )
        delimiter = _delimiter(header_line)
        names = next(csv.reader([header_line], delimiter=delimiter))
        cols = _columns(names)
        rows: Iterable[CsvRecord] = CsvRecords(lines, delimiter, width=len(names), number=number)
        if order is None:
            order, held = _detect_order(iter(rows), cols)
            rows = chain(held, rows)
        self.date_order = order
        context = header_line if order is None else f"{header_line}\ndate_order={order}"
        for row in rows:
            item = self._row(row, cols, context, resolver, order)
            if item is not None:
                yield item

    def _row(
        self, row: CsvRecord, cols: _Columns, context: str, resolver: LocalTimeResolver, order: str | None
    ) -> FeedItem | None:
        fields, raw, locator = row.fields, row.text, row.locator
        if row.problem:
            return FeedProblem(locator, row.problem, raw, context)
        record_type = _field(fields, cols.record_type)
        if record_type == "0":
            kind, column, name, unit = "historic", cols.historic, cols.historic_name, cols.historic_unit
        elif record_type == "1":
            kind, column, name, unit = "scan", cols.scan, cols.scan_name, cols.scan_unit
        elif record_type in SKIPPED_TYPES:
            skipped = SKIPPED_TYPES[record_type]
            self.skipped[skipped] = self.skipped.get(skipped, 0) + 1
            return None
        else:
            reason = (
                f"Record Type {shorten(record_type, 20)} is not one LibreView writes (0 historic, 1 scan, "
                "2 strip glucose, 3 ketone, 4 insulin, 5 food, 6 note or time change)"
            )
            return FeedProblem(locator, reason, raw, context)
        serial = _field(fields, cols.serial)
        stamp = _field(fields, cols.timestamp)
        device_name = _field(fields, cols.device)
        try:
            for what, given in (("Serial Number", serial), ("Device", device_name)):
                problem = too_long(what, given, MAX_KEY_CHARS)
                if problem:
                    raise _RecordError(problem)
            if row.first != row.last:  # only free text (Notes, Non-numeric ...) may hold a line break
                for index, given in enumerate(fields):
                    if index not in cols.free_text and ("\n" in given or "\r" in given):
                        raise _RecordError(f"'{cols.names[index]}' holds a line break (an unbalanced quote?)")
            if column is None:
                raise _RecordError(f"a {kind} record, but the header has no {kind.capitalize()} Glucose column")
            value, flag = _value(_field(fields, column), name, unit)
            try:
                local = _local_ms(stamp, order)
            except _UnknownOrderError:
                raise _RecordError(
                    f"Device Timestamp {stamp!r} could be MM-DD-YYYY or DD-MM-YYYY: name the order with --date-order"
                ) from None
            try:
                time_ms, ambiguous = resolver.resolve(local, serial)
            except EngineError as exc:
                raise _RecordError(exc.message) from None
        except _RecordError as bad:
            return FeedProblem(locator, str(bad), raw, context)
        device = device_key_for_name(device_name)
        extra = {"record_type": kind, "device_timestamp": stamp}
        if value is None and device_profile(device).bound(unit, high=flag is SensorFlag.HIGH) is None:
            # Every FreeStyle Libre reports LO/HI at 40/500 mg/dL, so the bound holds for an unnamed Libre too.
            value = _LIBRE_BOUNDS.bound(unit, high=flag is SensorFlag.HIGH)
            extra["value_from"] = "libre bound"
        return FeedReading(
            patient=None,
            time_ms=time_ms,
            value=value,
            unit=unit,
            flag=flag,
            device=device,
            stream=serial,
            # The same wall time happens twice in a fall-back hour: the instant tells the two readings apart.
            record_key=f"{serial}|{stamp}|{record_type}" + (f"|{time_ms}" if ambiguous else ""),
            ambiguous=ambiguous,
            locator=locator,
            payload=raw if self.keep_payload else "",
            extra=extra,
        )
