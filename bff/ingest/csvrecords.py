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

from bff.ingest.bounds import MAX_RECORD_BYTES, MAX_RECORD_LINES, byte_problem, cut

#: The longest field (characters): the csv module's default limit, checked here on whole records.
FIELD_LIMIT = 131_072
# A record is never longer than MAX_RECORD_BYTES (the reader stops before), so neither is a field: with the csv
# module's limit above that, it never stops in the middle of a record (raising a process-wide limit only widens
# what other readers accept).
csv.field_size_limit(max(csv.field_size_limit(), MAX_RECORD_BYTES + 1024))
_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")
_UNBALANCED = 'unbalanced quote: a field opened with " runs into the lines after it'


@dataclass(slots=True)
class TextLine:
    """A physical line whose bytes cannot be used as they are: its text (line end kept) and why.

    Line sources yield a plain `str` for every other line (the common case costs no object).
    """

    text: str
    problem: str


Line = str | TextLine


def lines_from_bytes(stream: IO[bytes]) -> Iterator[Line]:
    """The stream's lines (ended by LF, CRLF or a lone CR) decoded as UTF-8, a leading BOM dropped, each held to
    MAX_RECORD_BYTES; a line that is not UTF-8 or too long comes as a TextLine with the reason."""
    readline = stream.readline
    offset = 0
    first = True
    while True:
        data = readline(MAX_RECORD_BYTES)
        if not data:
            return
        size = len(data)
        start = offset
        offset += size
        if first:
            first = False
            if data.startswith(_BOM):
                data, start = data[3:], start + 3
        if size >= MAX_RECORD_BYTES and data[-1:] != b"\n":  # over-long: read past the rest of the line
            while more := readline(MAX_RECORD_BYTES):
                size += len(more)
                offset += len(more)
                if more[-1:] == b"\n":
                    break
            problem = f"the line is {size:,} bytes: over the {MAX_RECORD_BYTES:,} a record may have"
            head = data[: MAX_RECORD_BYTES - 64].decode("utf-8", "replace")
            yield TextLine(f"{head}… [cut: {size:,} bytes in all]", problem)
            continue
        lone_cr = b"\r" in data and data.find(b"\r") != len(data) - 2
        parts = _LONE_CR.split(data) if lone_cr else [data]  # lone CRs end lines too (old Mac files)
        for part in parts:
            if not part:
                continue
            try:
                yield part.decode("utf-8")
            except UnicodeDecodeError as bad:
                yield TextLine(part.decode("latin-1"), byte_problem(part, bad.start, start))
            start += len(part)


def lines_from_text(lines: Iterable[str]) -> Iterator[Line]:
    """Text already decoded (a text file, a quarantined payload), as physical lines (LF, CRLF or CR ended)."""
    first = True
    for chunk in lines:
        body = chunk.rstrip("\r\n")
        for part in _LINE.findall(chunk) if "\n" in body or "\r" in body else (chunk,):
            text = part
            if first:
                first = False
                text = part.removeprefix("\ufeff")
            if len(text) > MAX_RECORD_BYTES:
                problem = f"the line is {len(text):,} characters: over the {MAX_RECORD_BYTES:,} a record may have"
                yield TextLine(f"{text[: MAX_RECORD_BYTES - 64]}… [cut: {len(text):,} characters]", problem)
            else:
                yield text


def line_text(line: Line) -> str:
    return line if type(line) is str else line.text  # type: ignore[union-attr]


@dataclass(slots=True)
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
    """The records of a CSV text, in order (see the module docstring). Set `width` once the header is known.

    `lines` yields the physical lines (`lines_from_bytes`, `lines_from_text`); `number` is how many of them were
    read before (their numbers go on from there).
    """

    def __init__(
        self, lines: Iterator[Line], delimiter: str = ",", width: int | None = None, *, number: int = 0
    ) -> None:
        self.lines = lines
        self.delimiter = delimiter
        self.width = width
        self._number = number
        self._pushed: deque[tuple[int, Line]] = deque()
        self._taken: list[tuple[int, Line]] = []
        self._size = 0

    def _feed(self) -> Iterator[str]:
        pushed, taken, source = self._pushed, self._taken, self.lines
        while True:
            if pushed:
                number, line = pushed.popleft()
            else:
                found = next(source, None)
                if found is None:
                    return
                self._number += 1
                number, line = self._number, found
            text = line if type(line) is str else line.text  # type: ignore[union-attr]
            taken.append((number, line))
            self._size += len(text)
            if len(taken) > 1 and (len(taken) > MAX_RECORD_LINES or self._size > MAX_RECORD_BYTES):
                raise _OverrunError
            yield text

    def _clear(self) -> None:
        self._taken.clear()
        self._size = 0

    def __iter__(self) -> Iterator[CsvRecord]:
        while True:
            self._clear()
            reader = csv.reader(self._feed(), delimiter=self.delimiter)
            try:
                for fields in reader:
                    record = self._record(fields)
                    self._clear()
                    if record is not None:
                        yield record
                if not self._pushed:  # lines given back after the reader reached the end are read again
                    return
            except _OverrunError:
                reason = f"{_UNBALANCED} (past {MAX_RECORD_LINES} lines or {MAX_RECORD_BYTES:,} characters)"
                yield self._broken(reason)
            except csv.Error as exc:  # not seen with the limit raised; kept to confine any to its record
                yield self._broken(f"the CSV cannot be read here: {str(exc)[:100]}")

    def _record(self, fields: list[str]) -> CsvRecord | None:
        taken = self._taken
        width = self.width
        if len(taken) == 1:
            number, line = taken[0]
            if type(line) is str:
                if not fields or (not fields[0].strip() and all(not f.strip() for f in fields)):
                    return None  # a blank line, or one of empty fields: no record
                text, problem = line.rstrip("\r\n"), ""
            else:
                text, problem = line.text.rstrip("\r\n"), line.problem  # type: ignore[union-attr]
            first = last = number
        else:
            if width is not None and (
                len(fields) != width or self._record_start(taken) or self._holds_a_row(fields, width)
            ):
                return self._broken(_UNBALANCED)
            first, last = taken[0][0], taken[-1][0]
            text = cut("".join(line_text(line) for _, line in taken).rstrip("\r\n"))
            problem = next((line.problem for _, line in taken if type(line) is not str), "")  # type: ignore[union-attr]
        if not problem and "\x00" in text:
            problem = "the record holds a NUL character"
        if not problem and width is not None and len(fields) != width:
            problem = f"has {len(fields)} fields, the header has {width}"
        if not problem and len(text) > FIELD_LIMIT:
            longest = max(len(f) for f in fields) if fields else 0
            if longest > FIELD_LIMIT:
                problem = f"a field is {longest:,} characters (at most {FIELD_LIMIT:,})"
        return CsvRecord(first, last, fields, text, problem)

    def _record_start(self, taken: list[tuple[int, Line]]) -> int:
        """The first line after the first that is a whole record of its own (0 when none): as many fields as the
        header and its quotes paired. A line of a field over lines is not one: the line that closes the field
        holds an odd number of quotes, and a line inside it holds no record (a record in a note is not told from
        a swallowed one)."""
        for index in range(1, len(taken)):
            text = line_text(taken[index][1])
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
        taken = list(self._taken)
        self._clear()
        split = self._record_start(taken) if self.width is not None else 0
        if split:
            if self._whole_records(taken[1:split]):
                split = 1
            self._pushed.extendleft(reversed(taken[split:]))
            taken = taken[:split]
        text = cut("".join(line_text(line) for _, line in taken).rstrip("\r\n"))
        problem = next((line.problem for _, line in taken if type(line) is not str), reason)  # type: ignore[union-attr]
        return CsvRecord(taken[0][0], taken[-1][0], [], text, problem)

    def _whole_records(self, lines: list[tuple[int, Line]]) -> bool:
        """Whether these lines read as records of the header's width (none of them broken)."""
        try:
            return all(
                len(fields) == self.width or all(not f.strip() for f in fields)
                for fields in csv.reader([line_text(line) for _, line in lines], delimiter=self.delimiter)
            )
        except csv.Error:
            return False
