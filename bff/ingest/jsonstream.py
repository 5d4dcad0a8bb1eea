"""The items of one list in a top-level JSON object (Dexcom's `records`, a Bundle's `entry`), streamed and bounded.

ijson's C backend tokenises the input (`basic_parse`: no path prefixes, so each token costs the same at any
depth) and the items are built here, one at a time, within `bff.ingest.bounds`: an item nested deeper than
`MAX_DEPTH` or larger than `MAX_RECORD_BYTES` is not built past that point but read past, and comes out with
its `problem` set and the part built so far as its value (strings in it cut to `MAX_TEXT_CHARS`).

The bytes are checked as UTF-8 before the tokeniser sees them: a byte that is not UTF-8 inside an item makes
that item a problem (naming the byte and its offset) and is read as U+FFFD; anywhere else the input is refused.
An escape of half a surrogate pair (`\\udfff`) is handled the same way (the tokeniser would fail on it for the
whole input, or read it as "?"); a string holding a NUL makes its item a problem too. JSON the tokeniser cannot
read (a missing bracket, an integer past 64 bits, a raw control character) refuses the input: it cannot resume
after it.

`stream_list` yields, in input order: a `TopField` for each top-level member other than the list (the value
for a scalar, `CONTAINER` for an object or list, which is read past, not built), `LIST_START` when the list
opens, and a `JsonItem` per element. Whole-input failures raise `JsonInputError`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, Final

import ijson  # type: ignore[import-untyped]

from bff.ingest.bounds import MAX_DEPTH, MAX_RECORD_BYTES, MAX_TEXT_CHARS, byte_problem

CHUNK = 16 * 1024
CONTAINER: Final = object()  # a top-level member that is an object or a list (read past, not built)
LIST_START: Final = object()  # the list opened
_REPLACEMENT = "\ufffd".encode()
_SCALARS = frozenset(("string", "number", "boolean", "null"))
_TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep (a glucose record is nearly flat): read past, not built"
_TOO_BIG = f"over {MAX_RECORD_BYTES:,} bytes (1 MiB): read past, not built; the payload is its start"
_NUL = "a string holds a NUL character (\\u0000)"
_STRING_FAST_LIMIT = 64 * 1024  # longer strings take the slow path, which cuts those over MAX_RECORD_BYTES


class JsonInputError(ValueError):
    """The input as a whole cannot be read. `kind`: "syntax" (not JSON), "shape" (not the expected object) or
    "encoding" (a byte that is not UTF-8 outside the list's items)."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class TopField:
    name: str
    value: Any  # the scalar, or CONTAINER


@dataclass(frozen=True, slots=True)
class JsonItem:
    number: int  # its place in the list, from 1
    value: Any  # the item; when `problem` is set, the part built before it was read past
    problem: str = ""


class _Builder:
    """Turns basic_parse events into top fields and bounded items."""

    __slots__ = (
        "depth", "frozen", "in_list", "item_depth", "key", "keys", "list_key", "number", "out", "problem", "root",
        "size", "skip_depth", "stack", "started", "taint",
    )  # fmt: skip

    def __init__(self, list_key: str) -> None:
        self.list_key = list_key
        self.out: list[Any] = []
        self.depth = 0  # 1 inside the top-level object
        self.key = ""  # the current top-level member
        self.skip_depth = 0  # levels of a top-level container being read past
        self.in_list = False
        self.started = False
        self.number = 0
        self.taint = ""  # a problem found in bytes before the next item's value was complete
        self._reset()

    def _reset(self) -> None:
        self.item_depth = 0  # levels of the current item open (0: between items)
        self.stack: list[Any] = []  # the containers being built (shorter than item_depth below a cut)
        self.keys: list[Any] = []
        self.root: Any = None
        self.size = 0
        self.problem = ""
        self.frozen = False  # too big: nothing more of the item is built

    def mark(self, reason: str) -> None:
        """A problem in the bytes just read: the current item's, or the next one's when between items."""
        if self.item_depth:
            self.problem = self.problem or reason
        else:
            self.taint = self.taint or reason

    def feed(self, events: list[tuple[str, Any]]) -> None:
        i, count = 0, len(events)
        while i < count:
            if self.item_depth and not self.frozen and len(self.stack) == self.item_depth:
                i = self._build_scalars(events, i)
                if i >= count:
                    break
            event, value = events[i]
            i += 1
            if self.item_depth:
                self._item_event(event, value)
            elif self.in_list:
                self._list_event(event, value)
            elif self.skip_depth:
                if event in {"start_map", "start_array"}:
                    self.skip_depth += 1
                elif event in {"end_map", "end_array"}:
                    self.skip_depth -= 1
            else:
                self._top_event(event, value)

    def _build_scalars(self, events: list[tuple[str, Any]], i: int) -> int:
        """The hot path: keys and plain scalars into the container being built, until anything else comes.

        Returns the index of the first event it left (containers, a NUL, a huge string, the size limit) to
        `_item_event`.
        """
        top = self.stack[-1]
        in_list = type(top) is list
        key = self.keys[-1]
        size = self.size
        count = len(events)
        while i < count:
            event, value = events[i]
            if event in {"map_key", "string"}:
                if "\x00" in value or len(value) > _STRING_FAST_LIMIT:
                    break
                size += len(value) + 3
                if event == "map_key":
                    key = value
                    i += 1
                    continue
            elif event in {"number", "boolean", "null"}:
                size += 8
            else:
                break
            if size > MAX_RECORD_BYTES:
                break
            if in_list:
                top.append(value)
            else:
                top[key] = value
            i += 1
        if not in_list:
            self.keys[-1] = key
        self.size = size
        return i

    def _top_event(self, event: str, value: Any) -> None:
        if self.depth == 0:
            if event != "start_map":
                raise JsonInputError(f"the top level is a JSON {event}", kind="shape")
            self.depth = 1
        elif event == "map_key":
            self.key = value
        elif event == "end_map":
            self.depth = 0
        elif self.key == self.list_key:
            if event != "start_array":
                raise JsonInputError(f"'{self.list_key}' is not a list", kind="shape")
            self.in_list = self.started = True
            self.out.append(LIST_START)
        elif event in _SCALARS:
            self.out.append(TopField(self.key, value))
        else:
            self.out.append(TopField(self.key, CONTAINER))
            self.skip_depth = 1

    def _list_event(self, event: str, value: Any) -> None:
        if event == "end_array":
            self.in_list = False
            return
        self.number += 1
        self.problem, self.taint = self.taint, ""
        if event in _SCALARS:
            self._emit(self._string(value) if event == "string" else value)
            return
        self.root = {} if event == "start_map" else []
        self.stack.append(self.root)
        self.keys.append(None)
        self.item_depth = 1
        self.size = 2

    def _item_event(self, event: str, value: Any) -> None:
        if event in {"end_map", "end_array"}:
            self.item_depth -= 1
            if self.item_depth < len(self.stack):
                self.stack.pop()
                self.keys.pop()
            if self.item_depth == 0:
                self._emit(self.root)
            return
        building = not self.frozen and len(self.stack) == self.item_depth
        if event in {"start_map", "start_array"}:
            self.item_depth += 1
            if not building:
                return
            if self.item_depth > MAX_DEPTH:  # this branch is read past; its siblings are still built
                self.problem = self.problem or _TOO_DEEP
                return
            child: Any = {} if event == "start_map" else []
            self._add(child)
            self.stack.append(child)
            self.keys.append(None)
            self.size += 2
            return
        if not building:
            return
        if event == "map_key":
            self.keys[-1] = self._string(value)
            self.size += len(value) + 3
        elif event == "string":
            value = self._string(value)
            self.size += len(value) + 2
            self._add(value)
        else:
            self.size += 8
            self._add(value)
        if self.size > MAX_RECORD_BYTES:
            self._too_big()

    def _too_big(self) -> None:
        self.frozen = True
        if not self.problem.startswith("over "):
            self.problem = _TOO_BIG

    def _string(self, value: str) -> str:
        if "\x00" in value:
            self.problem = self.problem or _NUL
        if len(value) > MAX_RECORD_BYTES:
            self._too_big()
            return value[:MAX_TEXT_CHARS] + f"… [cut: {len(value):,} characters in all]"
        return value

    def _add(self, value: Any) -> None:
        top = self.stack[-1]
        if type(top) is list:
            top.append(value)
        else:
            top[self.keys[-1]] = value

    def _emit(self, value: Any) -> None:
        self.out.append(JsonItem(self.number, value, self.problem))
        self._reset()


def stream_list(
    stream: IO[bytes], list_key: str, *, prelude_limit: int, chunk_size: int = CHUNK
) -> Iterator[TopField | JsonItem | object]:
    """See the module docstring. `prelude_limit`: bytes within which the list must open (else JsonInputError)."""
    events: Any = ijson.sendable_list()
    coro = ijson.basic_parse_coro(events, use_float=True)
    builder = _Builder(list_key)
    decode = codecs.utf_8_decode
    offset = 0  # bytes of the input handed to the tokeniser so far
    pending = b""  # the start of a UTF-8 sequence cut by the chunk's end

    def send(data: bytes | None) -> Iterator[Any]:
        """Tokenise `data` (None: the end of the input); build what its tokens complete."""
        failure: JsonInputError | None = None
        try:
            if data is None:
                coro.close()
            elif data:
                coro.send(data)
        except ijson.JSONError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failure = JsonInputError(detail[:160], kind="syntax")
        except (ValueError, OverflowError) as exc:
            failure = JsonInputError(f"{type(exc).__name__}: {str(exc)[:120]}", kind="syntax")
        builder.feed(events)  # the tokens before a failure still count (records read whole before it)
        del events[:]
        yield from builder.out
        builder.out.clear()
        if failure is not None:
            raise failure

    while True:
        chunk = stream.read(chunk_size)
        data = pending + chunk if pending else chunk
        final = not chunk
        end = len(data) if final else _held_back(data)
        start = 0  # data[:start] is sent; offset counts the input's bytes before data[start]
        while True:
            try:
                _, used = decode(data[start:end], "strict", final)
                bad_at, bad_end = -1, -1
            except UnicodeDecodeError as bad:
                used, bad_at, bad_end = bad.start, start + bad.start, start + bad.end
            escape = _bad_escape(data, start, start + used)
            if escape >= 0:  # an unpaired surrogate escape: the tokeniser would fail on it, or read it as "?"
                yield from send(data[start:escape])
                offset += escape - start
                reason = f"a string holds an unpaired surrogate escape ({data[escape : escape + 6].decode()}): not text"
                if not builder.in_list:
                    raise JsonInputError(reason, kind="encoding")
                builder.mark(reason)
                yield from send(b"\\ufffd")
                offset += 6
                start = escape + 6
                continue
            yield from send(data[start : start + used])
            offset += used
            start += used
            if bad_at < 0:
                break
            reason = byte_problem(data, bad_at, offset - bad_at)
            if not builder.in_list:
                raise JsonInputError(reason, kind="encoding")
            builder.mark(reason)
            yield from send(_REPLACEMENT)
            offset += bad_end - bad_at
            start = bad_end
        pending = data[start:]
        if final:
            break
        if not builder.started and offset > prelude_limit:
            raise JsonInputError(f"no '{list_key}' list in the first {prelude_limit:,} bytes", kind="shape")
    yield from send(None)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_LOW_ESCAPE = re.compile(rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
#: Bytes kept back at a chunk's end so that an escape pair (12 bytes) is never cut.
_TAIL = 12


def _held_back(data: bytes) -> int:
    """Where to stop sending a chunk: before its last bytes, and so that no escape or escape pair (12 bytes) and no
    run of backslashes before one is cut (the run tells an escape from an escaped backslash)."""
    end = max(len(data) - _TAIL, 0)
    floor = max(end - 4096, 0)  # thousands of backslashes are garbage: an escape's parity may be misread there
    while end > floor:
        backslash = data.rfind(b"\\", max(end - _TAIL + 1, 0), end)
        if backslash < 0:
            break
        end = backslash
    return end


def _bad_escape(data: bytes, start: int, end: int) -> int:
    """The position of the first surrogate escape in data[start:end] that is not half of a pair, or -1."""
    position = start
    while (found := _SURROGATE_ESCAPE.search(data, position, min(end + _TAIL, len(data)))) is not None:
        at = found.start()
        if at >= end:
            return -1
        backslashes = 0
        while at - backslashes - 1 >= 0 and data[at - backslashes - 1] == 0x5C:
            backslashes += 1
        if backslashes % 2:  # "\\\\ud800": an escaped backslash, then text
            position = at + 1
            continue
        if data[at + 3] in b"89abAB" and _LOW_ESCAPE.match(data, at + 6):
            position = at + 12  # a pair: one character
            continue
        return at
    return -1
