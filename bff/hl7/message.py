"""One HL7 v2 message: its separators, its segments and their fields; fields are split by python-hl7.

`parse_message(text)` checks what python-hl7 does not (MSH-1 and MSH-2 are separators, every segment starts with
a name, one MSH), bounds the message, and cuts it into segments (CR, LF or CRLF) and fields (MSH-1), as
`hl7.parse` would. `Hl7Segment` has each field as written (`field(n)`); a field is split into repetitions,
components and subcomponents by python-hl7 when it is read (`component(n, c, r)`, unescaped), not before: see
`bff.hl7._lib` for why not the whole message at once.

Limits (an input can be hostile or broken; a limit is a problem a person can read, never an exception):

- `MAX_SEGMENTS` segments and `MAX_MESSAGE_SEPARATORS` separators in a message, `MAX_SEGMENT_SEPARATORS` in a
  segment: every separator is an object once split, so these bound the memory a message can cost. An OBX over
  the segment limit is kept unsplit with `problem` set (that OBX's problem, not the message's); any other
  segment over it makes the message unreadable.
- `MAX_FIELD_CHARS` characters in a field of MSH (checked here) or of a segment a reader uses (`oversize_field`).
- `shown(text)` is how any text from a message appears in a reason: quoted, at most `SHOWN_CHARS` characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from bff.hl7 import _lib

MAX_SEGMENTS: Final = 50_000
MAX_SEGMENT_SEPARATORS: Final = 10_000
MAX_MESSAGE_SEPARATORS: Final = 500_000
MAX_FIELD_CHARS: Final = 64 * 1024
SHOWN_CHARS: Final = 200
#: MSH-18 (table 0211) of a message we write with text beyond ASCII; we send UTF-8.
UTF8_CHARSET: Final = "UNICODE UTF-8"

_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}$")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


class Hl7ParseError(ValueError):
    """A message that cannot be split into segments and fields; the message names the segment or field."""


def shown(text: str, limit: int = SHOWN_CHARS) -> str:
    """`text` quoted for a reason or a log line, cut to `limit` characters (the length said when cut)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


@dataclass(frozen=True, slots=True)
class Hl7Encoding:
    """The separators a message declares: MSH-1 (field) and MSH-2 (component, repetition, escape, subcomponent).

    An escape or subcomponent character left out of MSH-2 is "": nothing is escaped, nothing is a subcomponent.
    """

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def characters(self) -> str:
        """MSH-2 as written."""
        return f"{self.component}{self.repetition}{self.escape}{self.subcomponent}"

    def unescape(self, text: str) -> str:
        """Undo escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\ (UTF-8, else Latin-1 bytes), \\.br\\ (a line
        feed). Highlighting (\\H\\, \\N\\) is dropped; \\Cxxyy\\, \\Mxxyyzz\\, \\Z..\\ and unterminated sequences stay
        as written."""
        return _lib.unescape(text, self.field, self.component, self.repetition, self.escape, self.subcomponent)

    def escape_text(self, text: str) -> str:
        """`text` with the separators and the escape character escaped (\\F\\ \\S\\ \\R\\ \\E\\ \\T\\), line breaks as
        \\.br\\ and other control characters as \\Xhh\\; characters beyond ASCII are kept (UTF-8)."""
        return _lib.escape(text, self.field, self.component, self.repetition, self.escape, self.subcomponent)


#: The separators glucobridge writes (and every ACK uses).
STANDARD: Final = Hl7Encoding()


class Hl7Segment:
    """One segment. `fields[i]` is the raw text of field i (`fields[0]` is the name); for MSH, `fields[1]` is the
    field separator and `fields[2]` the encoding characters, so MSH-n is `fields[n]` as for every segment.

    A field is split into repetitions, components and subcomponents by python-hl7 when read.
    A segment over `MAX_SEGMENT_SEPARATORS` is not split: `problem` says why, and it has no fields but its name.
    """

    __slots__ = ("encoding", "fields", "name", "problem", "text")

    def __init__(self, name: str, text: str, encoding: Hl7Encoding, fields: tuple[str, ...], problem: str = "") -> None:
        self.name = name
        self.text = text  # as written, without its terminator
        self.encoding = encoding
        self.fields = fields
        self.problem = problem

    def __repr__(self) -> str:
        return f"Hl7Segment({self.name!r}, {len(self.text)} characters)"

    def field(self, n: int) -> str:
        """Field n, raw (escapes and separators as written); "" when absent."""
        fields = self.fields
        return fields[n] if 0 <= n < len(fields) else ""

    def oversize_field(self) -> tuple[int, int] | None:
        """(n, length) of the first field longer than `MAX_FIELD_CHARS`, or None."""
        if len(self.text) <= MAX_FIELD_CHARS:
            return None
        return next(((n, len(f)) for n, f in enumerate(self.fields) if len(f) > MAX_FIELD_CHARS), None)

    def _plain(self, n: int, raw: str) -> bool:
        """Whether field n has nothing to split: no repetition, component or subcomponent separator (or it is
        MSH-1/MSH-2, one part as written)."""
        e = self.encoding
        if self.name == "MSH" and n in (1, 2):
            return True
        return not (e.component in raw or e.repetition in raw or (e.subcomponent and e.subcomponent in raw))

    def _split(self, n: int) -> tuple[_lib.Repetition, ...]:
        """Field n split by python-hl7 (short fields cached there); () when empty or absent. Nothing is kept on
        the segment, so a large field costs memory only while it is read."""
        raw = self.field(n)
        if not raw:
            return ()
        if self._plain(n, raw):
            return ((raw, ((raw, (raw,)),)),)
        e = self.encoding
        return _lib.split_field(raw, e.field, e.component, e.repetition, e.escape, e.subcomponent)

    def _unescape(self, n: int, text: str) -> str:
        return text if self.name == "MSH" and n in (1, 2) else self.encoding.unescape(text)

    def repetitions(self, n: int) -> list[str]:
        """The repetitions of field n, raw; [] when the field is empty or absent."""
        return [raw for raw, _ in self._split(n)]

    def components(self, n: int, repetition: int = 1) -> list[str]:
        """The components of field n (its `repetition`-th repetition, 1-based), unescaped."""
        reps = self._split(n)
        if not 1 <= repetition <= len(reps):
            return []
        return [self._unescape(n, raw) for raw, _ in reps[repetition - 1][1]]

    def component(self, n: int, component: int = 1, repetition: int = 1) -> str:
        """Component `component` (1-based) of field n, unescaped (subcomponents left joined); "" when absent."""
        raw = self.field(n)
        if raw and self._plain(n, raw):
            return self._unescape(n, raw) if component == 1 and repetition == 1 else ""
        reps = self._split(n)
        if not 1 <= repetition <= len(reps) or component < 1:
            return ""
        parts = reps[repetition - 1][1]
        return self._unescape(n, parts[component - 1][0]) if component <= len(parts) else ""

    def subcomponents(self, n: int, component: int = 1, repetition: int = 1) -> list[str]:
        """The subcomponents of a component, unescaped; [] when the component is absent."""
        reps = self._split(n)
        if not 1 <= repetition <= len(reps) or component < 1:
            return []
        parts = reps[repetition - 1][1]
        if component > len(parts):
            return []
        raw, subs = parts[component - 1]
        if not self.encoding.subcomponent:
            return [self._unescape(n, raw)]
        return [self._unescape(n, sub) for sub in subs]


@dataclass(frozen=True, slots=True)
class Hl7Message:
    """A parsed message: its text (segments joined by CR), its encoding and its segments in order."""

    text: str
    encoding: Hl7Encoding
    segments: tuple[Hl7Segment, ...]

    @property
    def msh(self) -> Hl7Segment:
        return self.segments[0]

    def segment(self, name: str) -> Hl7Segment | None:
        """The first segment with that name, or None."""
        return next((s for s in self.segments if s.name == name), None)

    def segments_named(self, name: str) -> list[Hl7Segment]:
        return [s for s in self.segments if s.name == name]

    @property
    def message_type(self) -> str:
        """MSH-9 message code and trigger event, e.g. "ORU^R01" (the structure, component 3, left out)."""
        code, event = self.msh.component(9, 1), self.msh.component(9, 2)
        return f"{code}^{event}" if event else code

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self.msh.component(10, 1)

    @property
    def processing_id(self) -> str:
        """MSH-11 (P, T or D)."""
        return self.msh.component(11, 1)

    @property
    def version(self) -> str:
        """MSH-12 version id, e.g. "2.5.1"."""
        return self.msh.component(12, 1)


def _encoding(first: str) -> tuple[Hl7Encoding, str, int]:
    """The encoding an MSH segment declares, MSH-2 as written, and where MSH-3 starts (-1 when there is none)."""
    if len(first) < 4:
        raise Hl7ParseError("MSH-1 (field separator) missing")
    field = first[3]
    if field.isalnum() or field.isspace():
        raise Hl7ParseError(f"MSH-1 field separator {field!r} is not a separator character")
    end = first.find(field, 4)
    characters = first[4:] if end < 0 else first[4:end]
    invalid = (
        not 2 <= len(characters) <= 5
        or len(set(characters + field)) != len(characters) + 1
        or any(c.isalnum() or c.isspace() or c in (_lib.NO_ESCAPE, _lib.NO_SUBCOMPONENT) for c in characters)
    )
    if invalid:
        raise Hl7ParseError(f"MSH-2 encoding characters {shown(characters, 20)} are invalid (expected e.g. ^~\\&)")
    padded = characters[:4].ljust(4, " ")
    encoding = Hl7Encoding(
        field=field,
        component=padded[0],
        repetition=padded[1],
        escape=padded[2].strip(),
        subcomponent=padded[3].strip(),
    )
    return encoding, characters, end + 1 if end >= 0 else -1


def parse_message(text: str) -> Hl7Message:
    """Split one HL7 v2 message. Raises `Hl7ParseError` naming the segment or field that is wrong or too large.

    MLLP framing bytes around the message are ignored; segments may end in CR (the standard), LF or CRLF; blank
    lines are ignored. The first segment must be MSH.
    """
    body = text.strip("\x0b\x1c\r\n")
    lines = [line for line in _LINE_BREAKS.split(body) if line.strip()]
    if not lines:
        raise Hl7ParseError("empty message: no MSH segment")
    if len(lines) > MAX_SEGMENTS:
        raise Hl7ParseError(f"the message has {len(lines)} segments (limit {MAX_SEGMENTS}): send it in parts")
    lines[0] = first = lines[0].lstrip("\ufeff")
    if not first.startswith("MSH"):
        raise Hl7ParseError(f"no MSH segment: the message starts with {first[:20]!r}")
    encoding, characters, rest = _encoding(first)
    fs = encoding.field
    separators = [c for c in (fs, encoding.component, encoding.repetition, encoding.subcomponent) if c]
    problems: dict[int, str] = {}
    total = 0
    for number, line in enumerate(lines, start=1):
        name = line[:3]
        if number > 1 and (not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != fs)):
            raise Hl7ParseError(f"segment {number} {line[:20]!r} does not start with a segment name and {fs!r}")
        if number > 1 and name == "MSH":
            raise Hl7ParseError(f"segment {number} is a second MSH: one message at a time")
        count = sum(line.count(c) for c in separators)
        total += count
        if count > MAX_SEGMENT_SEPARATORS:
            if name != "OBX":
                raise Hl7ParseError(
                    f"segment {number} ({name}) has {count} separators (limit {MAX_SEGMENT_SEPARATORS})"
                )
            problems[number - 1] = f"OBX has {count} separators (limit {MAX_SEGMENT_SEPARATORS})"
    if total > MAX_MESSAGE_SEPARATORS:
        raise Hl7ParseError(f"the message has {total} separators (limit {MAX_MESSAGE_SEPARATORS}): send it in parts")
    segments = [
        Hl7Segment("MSH", first, encoding, ("MSH", fs, characters, *(first[rest:].split(fs) if rest >= 0 else ())))
    ]
    for index in range(1, len(lines)):
        line = lines[index]
        problem = problems.get(index, "")
        segments.append(
            Hl7Segment(line[:3], line, encoding, (line[:3],) if problem else tuple(line.split(fs)), problem)
        )
    oversize = segments[0].oversize_field()
    if oversize is not None:
        raise Hl7ParseError(f"MSH-{oversize[0]} is {oversize[1]} characters long (limit {MAX_FIELD_CHARS})")
    return Hl7Message("\r".join(lines) + "\r", encoding, tuple(segments))
