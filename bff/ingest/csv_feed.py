"""The engine's CSV format as a store feed: rows become FeedReadings; bad rows go to quarantine with the header."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, NoReturn

from bff.ingest.engine_csv import CsvFormatError, parse_engine_csv
from bff.ingest.records import Feed, FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions, PatientRef

CHUNK_LINES = 20_000


class CsvParser:
    """`patient_id` is glucobridge's own patient id; `record_id` (optional) is the record key."""

    feed = Feed.CSV

    def __init__(self, *, keep_payload: bool = True) -> None:
        self.keep_payload = keep_payload

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        header = text.readline()
        if not header.strip():
            raise_format("the file is empty: expected a header patient_id,time,value,unit")
        first_line = 2
        while True:
            lines = []
            for _ in range(CHUNK_LINES):
                line = text.readline()
                if not line:
                    break
                lines.append(line)
            if not lines:
                return
            yield from self._chunk(header, lines, first_line, options)
            first_line += len(lines)

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        yield from self._chunk(context, [payload if payload.endswith("\n") else payload + "\n"], 2, options)

    def _chunk(self, header: str, lines: list[str], first_line: int, options: ParseOptions) -> Iterator[FeedItem]:
        try:
            parsed = parse_engine_csv([header, *lines], input_tz=options.input_tz)
        except CsvFormatError as exc:
            raise_format(str(exc))
        offset = first_line - 2
        errors = {e.row: e.problem for e in parsed.errors}
        by_row = dict(zip(parsed.rows, zip(parsed.readings, parsed.record_ids, strict=True), strict=True))
        for index, line in enumerate(lines):
            row = index + 2
            locator = f"line {row + offset}"
            if row in errors:
                yield FeedProblem(locator, errors[row], line.rstrip("\r\n"), context=header.rstrip("\r\n"))
                continue
            if row not in by_row:
                continue  # a blank line
            reading, record_id = by_row[row]
            yield FeedReading(
                patient=PatientRef("glucobridge", reading.patient_id), time_ms=reading.time_ms, value=reading.value,
                unit=reading.unit, flag=reading.flag, device=reading.device, record_key=record_id,
                session_start_ms=reading.session_start_ms,
                session_key=f"start:{reading.session_start_ms}" if reading.session_start_ms is not None else "",
                ambiguous=reading.ambiguous, locator=locator,
                payload=line.rstrip("\r\n") if self.keep_payload else "",
            )  # fmt: skip


def raise_format(message: str) -> NoReturn:
    raise FeedFormatError(message)
