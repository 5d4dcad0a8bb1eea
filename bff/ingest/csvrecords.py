"""CSV records with the physical lines they came from: the base of the LibreView and engine CSV parsers.

`csv.reader` alone loses track of where a record was (a quoted field may span lines), stops the whole file at a
field over its limit, and lets one unbalanced quote swallow every line after it into one field. Here each
record comes with its first and last line and its exact text, and every failure is confined to a record:

- a line whose bytes are not UTF-8 makes its record a problem that names the byte and its offset; the line is
  kept as Latin-1 text, so the payload holds every byte as it was (and a Windows-1252 export reads right);
- a line over `MAX_RECORD_BYTES`, a NUL character, a field over `FIELD_LIMIT` (the csv module's own default):
  the record is a problem. (The csv module's limit is raised so that it never stops a record half read: a
  huge field then spoils one record, not the lines after it.);
- a quoted field that runs over line ends is one record when the record has the header's number of fields, no
  line after the first is a whole record on its own (paired quotes, the header's number of fields), and the
  field holds fewer delimiters than a row. Otherwise a quote is unbalanced: it swallowed records. The lines
  before the first whole record are the problem (the first line alone when the lines between are records of
  their own), and reading starts again there; with no whole record among them, all the lines are one problem.
  The same when the field runs over `MAX_RECORD_LINES` lines or `MAX_RECORD_BYTES` characters (nothing grows
  without bound). Fields that must not hold a line break are the parsers' to check (it shows two stray quotes
  that paired up across rows);
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

#: The longest field (characters): the csv module's default limit, checked here on whole records.
FIELD_LIMIT = 131_072
# A record is never longer than MAX_RECORD_BYTES (the reader stops before), so neither is a field: with the csv
# module's limit above that, it never stops in the middle of a record (raising a process-wide limit only widens
# what other readers accept).
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES + 1024))
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
            head = data[: MAX_RECORD_BYTES - 64].decode("utf-8", "replace")
            yield TextLine(line.number, f"{head}… [cut: {line.size:,} bytes in all]", problem)
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
                yield TextLine(number, f"{text[: MAX_RECORD_BYTES - 64]}… [cut: {len(text):,} characters]", problem)
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
                yield self._failed(reason)
            except csv.Error as exc:  # not seen with the limit raised; kept to confine any to its record
                yield self._failed(f"the CSV cannot be read here: {str(exc)[:100]}")

    def _failed(self, reason: str) -> CsvRecord:
        """The record being read cannot be finished (a quoted field runs on too long): see `_broken`."""
        return self._broken(reason)

    def _record(self, fields: list[str]) -> CsvRecord | None:
        taken = self._taken
        if len(taken) == 1 and all(not f.strip() for f in fields):
            return None  # a blank line
        width = self.width
        if (
            len(taken) > 1
            and width is not None
            and (len(fields) != width or self._record_start(taken) or self._holds_a_row(fields, width))
        ):
            return self._broken(_UNBALANCED)
        text = cut("".join(line.text for line in taken).rstrip("\r\n"))
        problem = next((line.problem for line in taken if line.problem), "")
        if not problem and "\x00" in text:
            problem = "the record holds a NUL character"
        if not problem and width is not None and len(fields) != width:
            problem = f"has {len(fields)} fields, the header has {width}"
        if not problem and len(text) > FIELD_LIMIT:
            longest = max(len(f) for f in fields) if fields else 0
            if longest > FIELD_LIMIT:
                problem = f"a field is {longest:,} characters (at most {FIELD_LIMIT:,})"
        return CsvRecord(taken[0].number, taken[-1].number, fields, text, problem)

    def _record_start(self, taken: list[TextLine]) -> int:
        """The first line after the first that is a whole record of its own (0 when none): as many fields as the
        header and its quotes paired. A line of a field over lines is not one: the line that closes the field
        holds an odd number of quotes, and a line inside it holds no record (a record in a note is not told from
        a swallowed one)."""
        for index in range(1, len(taken)):
            text = taken[index].text
            if text.count('"') % 2 == 0 and self._is_record(text):
                return index
        return 0

    def _holds_a_row(self, fields: list[str], width: int) -> bool:
        """Whether a field over lines holds as many delimiters as a whole row: two stray quotes in one column of
        two rows pair up and take in the rest of the one and the start of the other (width - 1 delimiters)."""
        return any(("\n" in f or "\r" in f) and f.count(self.delimiter) >= width - 1 for f in fields)

    def _is_record(self, text: str) -> bool:
        """Whether a line read on its own has as many fields as the header."""
        try:
            fields = next(csv.reader([text], delimiter=self.delimiter), [])
        except csv.Error:
            return False
        return len(fields) == self.width

    def _broken(self, reason: str) -> CsvRecord:
        """The lines read cannot be one record. When a line after the first is a whole record, a quote opened
        before it swallowed it, and reading starts again there; the problem is the first line alone when the
        lines between read as whole records of their own (a quote on the first line took them), else all the
        lines before that record (the first record spans them). With no such line, all the lines read are one
        broken record."""
        taken = self._taken
        self._taken, self._size = [], 0
        split = self._record_start(taken) if self.width is not None else 0
        if split:
            if self._whole_records(taken[1:split]):
                split = 1
            self._pushed.extendleft(reversed(taken[split:]))
            taken = taken[:split]
        text = cut("".join(line.text for line in taken).rstrip("\r\n"))
        problem = next((line.problem for line in taken if line.problem), reason)
        return CsvRecord(taken[0].number, taken[-1].number, [], text, problem)

    def _whole_records(self, lines: list[TextLine]) -> bool:
        """Whether these lines read as records of the header's width (none of them broken)."""
        try:
            return all(
                len(fields) == self.width or all(not f.strip() for f in fields)
                for fields in csv.reader([line.text for line in lines], delimiter=self.delimiter)
            )
        except csv.Error:
            return False
