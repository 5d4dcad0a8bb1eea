"""The engine's CSV format as a store feed: rows become FeedReadings; bad rows go to quarantine with the header.

Records come from `bff.ingest.csvrecords` with their physical lines: a problem's locator is "line 7" or, for a
record whose quoted field spans lines, "lines 7–9", and its payload is the whole record as it was in the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import IO

from bff.ingest.csvrecords import CsvRecord, CsvRecords, lines_from_bytes, lines_from_text
from bff.ingest.engine_csv import CsvFormatError, parse_engine_rows, read_header
from bff.ingest.records import Feed, FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions, PatientRef
from engine import EngineError
from engine.timezones import check_zone

#: Records parsed together (naive times are placed on the UTC line a chunk at a time).
CHUNK_RECORDS = 20_000


class CsvParser:
    """`patient_id` is glucobridge's own patient id; `record_id` (optional) is the record key."""

    feed = Feed.CSV

    def __init__(self, *, keep_payload: bool = True) -> None:
        self.keep_payload = keep_payload

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        yield from self._records(CsvRecords(lines_from_bytes(stream)), options)

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        yield from self._records(CsvRecords(lines_from_text([context + "\n", payload + "\n"])), options)

    def _records(self, records: CsvRecords, options: ParseOptions) -> Iterator[FeedItem]:
        if options.input_tz is not None:
            try:
                check_zone(options.input_tz)
            except EngineError as exc:
                raise FeedFormatError(exc.message) from None
        rows = iter(records)
        first = next(rows, None)
        try:
            header = read_header(first)
        except CsvFormatError as exc:
            raise FeedFormatError(str(exc)) from None
        records.width = len(header)
        context = first.text if first is not None else ""
        while chunk := list(islice(rows, CHUNK_RECORDS)):
            yield from self._chunk(header, context, chunk, options)

    def _chunk(
        self, header: list[str], context: str, chunk: Iterable[CsvRecord], options: ParseOptions
    ) -> Iterator[FeedItem]:
        records = list(chunk)
        try:
            parsed = parse_engine_rows(header, records, input_tz=options.input_tz)
        except CsvFormatError as exc:
            raise FeedFormatError(str(exc)) from None
        errors = {e.row: e.problem for e in parsed.errors}
        by_row = dict(
            zip(
                parsed.rows,
                zip(parsed.readings, parsed.record_ids, parsed.zones, parsed.offsets, strict=True),
                strict=True,
            )
        )
        patients: dict[str, PatientRef] = {}  # one reference per patient of the chunk, not one per row
        for record in records:
            if record.first in errors:
                yield FeedProblem(record.locator, errors[record.first], record.text, context=context)
                continue
            reading, record_id, zone, offset = by_row[record.first]
            patient = patients.get(reading.patient_id)
            if patient is None:
                patient = patients[reading.patient_id] = PatientRef("glucobridge", reading.patient_id)
            yield FeedReading(
                patient=patient, time_ms=reading.time_ms, value=reading.value,
                unit=reading.unit, flag=reading.flag, device=reading.device, record_key=record_id,
                session_start_ms=reading.session_start_ms,
                session_key=f"start:{reading.session_start_ms}" if reading.session_start_ms is not None else "",
                ambiguous=reading.ambiguous, locator=record.locator, utc_offset_min=offset, zone=zone,
                payload=record.text if self.keep_payload else "",
            )  # fmt: skip
