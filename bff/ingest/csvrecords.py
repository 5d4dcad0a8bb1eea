"""CSV records with the physical lines they came from: the base of the LibreView and engine CSV parsers.

`csv.reader` alone loses track of where a record was (a quoted field may span lines), stops the whole file at a
field over its limit, and lets one unbalanced quote swallow every line after it into one field. Here each
record comes with its first and last line and its exact text, and every failure is confined to a record:

- a line whose bytes are not UTF-8 makes its record a problem that names the byte and its offset; the line is
  kept as Latin-1 text, so the payload holds every byte as it was (and a Windows-1252 export reads right);
- a line over `MAX_RECORD_BYTES`, a NUL character, a field over the `csv` module's limit: the record is a problem;
- a quoted field that runs over line ends is one record when the record has the header's number of fields and
  none of the lines inside the field is a whole record on its own; otherwise the quote is unbalanced: the
  record's first line is a problem and reading starts again on the line after it. The same when the field runs
  over `MAX_RECORD_LINES` lines or `MAX_RECORD_BYTES` characters (so nothing grows without bound);
- a record with another number of fields than the header is a problem (when the width is known).

Blank lines (and lines of empty fields) are no records and are passed over.
"""

from __future__ import annotations

import csv
import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from bff.ingest.bounds import MAX_RECORD_BYTES, MAX_RECORD_LINES, byte_problem, cut, read_lines

_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_UNBALANCED = 'unbalanced quote: a field opened with " runs into the lines after it'


@dataclass(frozen=True, slots=True)
class TextLine:
    """A physical line as text (line end kept), and why its bytes cannot be used ("" when they can)."""

    number: int
    text: str
    problem: str = ""


def lines_from_bytes(stream: IO[bytes]) -> Iterator[TextLine]:
    """The stream's lines decoded as UTF-8 (a leading BOM dropped), each held to MAX_RECORD_BYTES."""
    for line in read_lines(stream):
        data = line.data
        offset = line.offset
        if line.number == 1 and data.startswith(_BOM):
            data, offset = data[3:], offset + 3
        if line.cut:
            problem = f"the line is {line.size:,} bytes: over the {MAX_RECORD_BYTES:,} a record may have"
            yield TextLine(line.number, data.decode("latin-1") + " …", problem)
            continue
        try:
            yield TextLine(line.number, data.decode("utf-8"))
        except UnicodeDecodeError as bad:
            yield TextLine(line.number, data.decode("latin-1"), byte_problem(data, bad.start, offset))


def lines_from_text(lines: Iterable[str]) -> Iterator[TextLine]:
    """Text already decoded (a text file, a quarantined payload), as physical lines (LF, CRLF or CR ended)."""
    number = 0
    for chunk in lines:
        body = chunk.rstrip("\r\n")
        for part in _LINE.findall(chunk) if "\n" in body or "\r" in body else (chunk,):
            number += 1
            text = part[1:] if number == 1 and part.startswith("\ufeff") else part
            if len(text) > MAX_RECORD_BYTES:
                problem = f"the line is {len(text):,} characters: over the {MAX_RECORD_BYTES:,} a record may have"
                yield TextLine(number, text[:MAX_RECORD_BYTES] + " …", problem)
            else:
                yield TextLine(number, text)


@dataclass(frozen=True, slots=True)
class CsvRecord:
    first: int  # its first physical line
    last: int  # its last physical line
    fields: list[str]
    text: str  # the record as in the file (its lines, without the last line end), cut to MAX_RECORD_BYTES
    problem: str = ""  # why it cannot be read ("" when it can)

    @property
    def locator(self) -> str:
        return f"line {self.first}" if self.first == self.last else f"lines {self.first}–{self.last}"


class _OverrunError(Exception):
    """A quoted field ran over MAX_RECORD_LINES lines or MAX_RECORD_BYTES characters."""


class CsvRecords:
    """The records of a CSV text, in order (see the module docstring). Set `width` once the header is known."""

    def __init__(self, lines: Iterator[TextLine], delimiter: str = ",", width: int | None = None) -> None:
        self.lines = lines
        self.delimiter = delimiter
        self.width = width
        self._pushed: deque[TextLine] = deque()
        self._taken: list[TextLine] = []
        self._size = 0

    def _feed(self) -> Iterator[str]:
        while True:
            if self._pushed:
                line = self._pushed.popleft()
            else:
                found = next(self.lines, None)
                if found is None:
                    return
                line = found
            self._taken.append(line)
            self._size += len(line.text)
            if len(self._taken) > MAX_RECORD_LINES or self._size > MAX_RECORD_BYTES:
                raise _OverrunError
            yield line.text

    def __iter__(self) -> Iterator[CsvRecord]:
        while True:
            self._taken, self._size = [], 0
            reader = csv.reader(self._feed(), delimiter=self.delimiter)
            try:
                for fields in reader:
                    record = self._record(fields)
                    self._taken, self._size = [], 0
                    if record is not None:
                        yield record
                if not self._pushed:  # lines given back after the reader reached the end are read again
                    return
            except _OverrunError:
                reason = f"{_UNBALANCED} (past {MAX_RECORD_LINES} lines or {MAX_RECORD_BYTES:,} characters)"
                yield self._first_line_only(reason)
            except csv.Error as exc:  # e.g. a field over the csv module's limit
                yield self._first_line_only(f"the CSV cannot be read here: {str(exc)[:100]}")

    def _record(self, fields: list[str]) -> CsvRecord | None:
        taken = self._taken
        if len(taken) == 1 and all(not f.strip() for f in fields):
            return None  # a blank line
        width = self.width
        if (
            len(taken) > 1
            and width is not None
            and (len(fields) != width or any(self._is_record(line.text) for line in taken[1:]))
        ):
            return self._first_line_only(_UNBALANCED)
        text = cut("".join(line.text for line in taken).rstrip("\r\n"))
        problem = next((line.problem for line in taken if line.problem), "")
        if not problem and "\x00" in text:
            problem = "the record holds a NUL character"
        if not problem and width is not None and len(fields) != width:
            problem = f"has {len(fields)} fields, the header has {width}"
        return CsvRecord(taken[0].number, taken[-1].number, fields, text, problem)

    def _is_record(self, text: str) -> bool:
        """Whether a line read on its own is a whole record (as many fields as the header)."""
        try:
            fields = next(csv.reader([text], delimiter=self.delimiter), [])
        except csv.Error:
            return False
        return len(fields) == self.width

    def _first_line_only(self, reason: str) -> CsvRecord:
        """The record read so far cannot be one: its first line is the problem; reading goes on after it."""
        taken = self._taken
        self._taken, self._size = [], 0
        self._pushed.extendleft(reversed(taken[1:]))
        line = taken[0]
        return CsvRecord(line.number, line.number, [], line.text.rstrip("\r\n"), line.problem or reason)
