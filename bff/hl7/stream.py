"""Cutting a file or byte stream of HL7 v2 into messages, one message in memory at a time.

A message ends at an MLLP end byte (0x1C), an MLLP start byte (0x0B), a blank line, a new MSH segment or the
end of the input; segments end in CR, LF or CRLF; batch segments (FHS, BHS, BTS, FTS) are dropped. The input is
read in `CHUNK`s and each line is joined once (no copying that grows with the line), so a file with a line of a
gigabyte costs its reading time, not quadratic copies.

A message longer than `MAX_MESSAGE_BYTES` is not kept whole: it comes out as an `OversizeMessage`, its first
`OVERSIZE_HEAD_BYTES` bytes as text and its size in bytes, for the reader to refuse with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Final

CHUNK = 64 * 1024
MAX_MESSAGE_BYTES: Final = 8 * 2**20
OVERSIZE_HEAD_BYTES: Final = 64 * 1024
_SEPARATORS = re.compile(rb"(\r\n|\r|\n|\x0b|\x1c)")
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_FRAMING = (b"\x0b", b"\x1c")


class OversizeMessage(str):
    """The head of a message that was too long to read (its text is the first bytes only); `size` in bytes."""

    size: int

    def __new__(cls, head: str, size: int) -> OversizeMessage:
        made = super().__new__(cls, head)
        made.size = size
        return made


def decode(data: bytes) -> str:
    """HL7 v2 bytes as text: UTF-8, or Latin-1 (ISO 8859/1, the usual legacy charset) when they are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


class _Message:
    """The segments of the message being read, and its size; beyond the limit only the size grows."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[bytes] = []
        self.size = 0

    def add(self, line: bytes, length: int) -> None:
        self.size += length + 1
        if self.size <= self.limit:
            self.lines.append(line)
        elif sum(len(x) for x in self.lines) < OVERSIZE_HEAD_BYTES:
            self.lines.append(line[:OVERSIZE_HEAD_BYTES])

    def flush(self) -> Iterator[str]:
        if not self.lines:
            return
        text = decode(b"\r".join(self.lines) + b"\r")
        if self.size > self.limit:
            yield OversizeMessage(text[:OVERSIZE_HEAD_BYTES], self.size)
        else:
            yield text
        self.lines = []
        self.size = 0


def iter_messages(stream: IO[bytes], *, max_bytes: int = MAX_MESSAGE_BYTES) -> Iterator[str]:
    """The messages of a file or byte stream, as text with segments ending in CR (see the module docstring)."""
    message = _Message(max_bytes)
    line: list[bytes] = []  # the pieces of the line being read
    length = 0  # its length (pieces beyond the message limit are counted, not kept)
    carry = b""

    def end_line() -> Iterator[str]:
        nonlocal line, length
        text, size = b"".join(line), length
        line, length = [], 0
        if not text.strip():
            yield from message.flush()  # a blank line
        elif text[:3] == b"MSH":
            yield from message.flush()
            message.add(text, size)
        elif text[:3] in _BATCH_SEGMENTS:
            yield from message.flush()
        else:
            message.add(text, size)

    while True:
        chunk = stream.read(CHUNK)
        data = carry + chunk if carry else chunk
        carry = b""
        if chunk and data.endswith(b"\r"):
            data, carry = data[:-1], b"\r"  # a CRLF may be cut between two chunks
        pieces = _SEPARATORS.split(data)
        for index, piece in enumerate(pieces):
            if index % 2:  # a separator ends the line
                yield from end_line()
                if piece in _FRAMING:
                    yield from message.flush()
            elif piece:
                if length + message.size <= max_bytes or length < OVERSIZE_HEAD_BYTES:
                    line.append(piece)
                length += len(piece)
        if not chunk:
            break
    if line:
        yield from end_line()
    yield from message.flush()
