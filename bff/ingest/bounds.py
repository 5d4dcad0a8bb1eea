"""The bounds every feed parser holds its input to, checked before anything large or deep is built.

A CGM record is small and flat: a Dexcom EGV is about 400 bytes at depth 1, a FHIR Observation a few KB at depth
5, a CSV row a few hundred bytes. Input far outside that is hostile or broken, and must cost a parser no more
than reading past it. So:

| bound | value | beyond it |
| --- | --- | --- |
| JSON nesting of a record (`MAX_DEPTH`) | 64 levels | a problem; deeper levels are read past, never built |
| a record, an NDJSON or CSV line (`MAX_RECORD_BYTES`) | 1 MiB | a problem; its payload is cut to this size |
| a CSV field (the `csv` module's limit) | 131,072 characters | a problem |
| a CSV record over several lines (`MAX_RECORD_LINES`) | 100 lines | an unbalanced quote: its first line is a problem |
| an identifier (`MAX_KEY_CHARS`): record id, serial, patient, device | 256 characters | a problem, never cut |
| a text detail kept (`MAX_TEXT_CHARS`): Dexcom trend, displayTime | 1,024 characters | a problem |
| a year (`bff.ingest.localtime.YEARS`) | 1900–2200 | a problem, found in the raw text |
| a problem's reason (`bff.ingest.records.MAX_REASON_CHARS`) | 300 characters | values in it are `shorten`ed |

An identifier is never cut, because a cut one could match another record's.
A record whose bytes are not UTF-8 (or that holds a NUL character) is a problem that names the byte and its
offset; the parsers keep its payload as text (CSV: the line read as Latin-1, so every byte is kept as is).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

MAX_DEPTH = 64
MAX_RECORD_BYTES = 1 << 20
MAX_RECORD_LINES = 100
MAX_KEY_CHARS = 256
MAX_TEXT_CHARS = 1024
#: How much of a value a reason quotes.
SHOWN_CHARS = 60

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: A number orjson would read differently from `json` (past 64 bits it gives a float, not an int) has a run of 19
#: digits or more; found as a run of zeros once every digit is a zero, in the text's UTF-8 bytes (a 550-byte FHIR
#: resource: 0.5 µs with its encoding, where `str.translate` took 2.9 µs and the regex `\d{19}` 6.3 µs).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)`, cut to about `limit` characters with the full length said ("'xxxx…' (52,428,800 chars)")."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}… ({len(value):,} characters)"
    shown = repr(value)
    return shown if len(shown) <= limit + 2 else shown[:limit] + "…"


def clip(value: object, limit: int = SHOWN_CHARS) -> str:
    """`str(value)` cut to about `limit` characters (for words quoted bare in a reason)."""
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def cut(text: str, limit: int = MAX_RECORD_BYTES) -> str:
    """A payload no longer than `limit` characters, saying so when it was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [cut: {len(text):,} characters in all]"


def too_long(what: str, value: str, limit: int) -> str | None:
    """The reason a kept string is refused, or None when it fits."""
    if len(value) <= limit:
        return None
    return f"{what} is {len(value):,} characters (at most {limit:,}): {shorten(value, 40)}"


def byte_problem(data: bytes, at: int, offset: int) -> str:
    """The reason for bytes that are not UTF-8: which byte, where, and what to do."""
    return (
        f"byte 0x{data[at]:02X} at byte offset {offset + at:,} is not UTF-8: the file was saved in another "
        "encoding (convert it, e.g. iconv -f windows-1252 -t utf-8) or is damaged there"
    )


# MARK: lines


@dataclass(frozen=True, slots=True)
class Line:
    """One physical line of an input: its number (from 1), its byte offset, its bytes (line end included).

    `size` is the line's length in bytes; when it is over the limit, `data` holds only the first `limit` bytes.
    """

    number: int
    offset: int
    data: bytes
    size: int

    @property
    def cut(self) -> bool:
        return self.size > len(self.data)


def read_lines(stream: IO[bytes], limit: int = MAX_RECORD_BYTES, *, split_cr: bool = True) -> Iterator[Line]:
    """The stream's lines (ended by LF or CRLF, and by a lone CR with `split_cr`), each held to `limit` bytes.

    Never more than `limit` bytes are read at once: the rest of a longer line is read past in pieces and counted
    in `Line.size`.
    """
    number, offset = 0, 0
    while True:
        data = stream.readline(limit)
        if not data:
            return
        size = len(data)
        if size >= limit and not data.endswith(b"\n"):
            while True:
                more = stream.readline(limit)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            number += 1
            yield Line(number, offset, data, size)
            offset += size
            continue
        body = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
        if split_cr and b"\r" in body:  # lines ended by a lone CR (old Mac files) inside what LF ended
            for part in _LONE_CR.split(data):
                if part:
                    number += 1
                    yield Line(number, offset, part, len(part))
                    offset += len(part)
            continue
        number += 1
        yield Line(number, offset, data, size)
        offset += size


# MARK: JSON text


_FAILED = object()


def loads_bounded(text: str) -> Any:
    """One JSON value from text already held to `MAX_RECORD_BYTES`, refused (ValueError, with the reason) when it
    is nested deeper than `MAX_DEPTH`, holds a NUL character or a lone surrogate, or is not JSON."""
    value: Any = _FAILED
    if _LONG_RUN not in text.encode("utf-8", "surrogatepass").translate(_DIGITS_AS_ZERO):
        # orjson (several times faster) reads what json reads to the same values, and refuses the rest: what it
        # refuses is read again by json below, for the same reason as always (or a value json accepts: NaN, …).
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(text)
    try:
        if value is _FAILED:
            value = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {str(exc)[:120]}") from None
    if text.count("[") + text.count("{") > MAX_DEPTH and depth_of(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    if "\\u" in text and ("\\u0000" in text or _SURROGATE_ESCAPE.search(text)):
        problem = _text_problem(value)
        if problem:
            raise ValueError(problem)
    return value


#: What `loads_quick` gives for bytes it leaves to `loads_bounded`.
NOT_QUICK: Any = object()


def loads_quick(data: bytes) -> Any:
    """One JSON value from UTF-8 bytes already held to `MAX_RECORD_BYTES`, when it is plainly well-formed: orjson
    reads it (so it is UTF-8 and JSON), it has no digit run of 19 or more, no escape (`\\u`) and is no deeper than
    `MAX_DEPTH`. Then it is the value `loads_bounded` gives for the decoded text, without decoding it; otherwise
    `NOT_QUICK`, and the caller decodes and calls `loads_bounded`, which gives the reason."""
    if b"\\u" in data or _LONG_RUN in data.translate(_DIGITS_AS_ZERO):
        return NOT_QUICK
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return NOT_QUICK
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and depth_of(value) > MAX_DEPTH:
        return NOT_QUICK
    return value


def depth_of(value: Any) -> int:
    """The nesting depth of a built JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return deepest


def _text_problem(value: Any) -> str | None:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            if "\x00" in node:
                return "a string holds a NUL character (\\u0000)"
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate escape (\\ud800-\\udfff): not text"
    return None
