"""HL7 v2 ORU^R01 messages carrying CGM sensor readings (OBX with LOINC 99504-3 or 105272-9).

`parse_message(text)` is the pure part: it splits a message into segments, fields, repetitions, components and
subcomponents on the separators the message declares in MSH-1/MSH-2, and undoes escape sequences. It is meant to
be reused (MLLP listener, ACKs). `iter_messages(stream)` cuts a file into messages: MLLP frames (0x0B … 0x1C
0x0D), blank lines or a new MSH segment separate them; segments end in CR, LF or CRLF.

`Hl7v2Parser` turns each message into readings, one per sensor-reading OBX, or problems. A message that cannot
be used as a whole (not ORU^R01, a version we do not read, no PID-3, unparseable) is one problem whose payload
is the whole message; a problem in one OBX is a problem for that OBX only, whose payload is a smaller message
(MSH, PID, OBR and that OBX) that `parse_quarantined` reads again. Readings carry
`extra["message_control_id"]` and problems carry it in their JSON context (`{"message_control_id": ...,
"message": n, "scope": "message" | "obx"}`), so a caller can ACK each message (AA / AE / AR).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from bff.ingest.fhir_feed import device_key_for_name
from bff.ingest.localtime import LocalTimeResolver, naive_local_ms
from bff.ingest.records import (
    Feed,
    FeedFormatError,
    FeedItem,
    FeedProblem,
    FeedReading,
    ParseOptions,
    PatientRef,
)
from engine import EngineError, GlucoseUnit, SensorFlag

MLLP_START = b"\x0b"
MLLP_END = b"\x1c\r"
VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
READING_CODES = {"99504-3": GlucoseUnit.MG_DL, "105272-9": GlucoseUnit.MMOL_L}
RESULT_STATUSES = ("F", "C", "P")
_UNITS = {"mg/dl": GlucoseUnit.MG_DL, "mmol/l": GlucoseUnit.MMOL_L}
_COMPARATORS = {"": SensorFlag.NONE, "=": SensorFlag.NONE, "<": SensorFlag.LOW, "<=": SensorFlag.LOW}
_COMPARATORS |= {">": SensorFlag.HIGH, ">=": SensorFlag.HIGH}
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}$")
_TS = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?([+-]\d{4})?$")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
CHUNK = 64 * 1024


class Hl7ParseError(ValueError):
    """A message that cannot be split into segments and fields; the message names the segment or field."""


# --- the message model -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hl7Encoding:
    """The separators a message declares: MSH-1 (field) and MSH-2 (component, repetition, escape, subcomponent)."""

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
        """Undo escape sequences: \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\ (hex), \\.br\\ (line break).

        Highlighting (\\H\\, \\N\\) is dropped; other sequences (\\Cxxyy\\, \\Mxxyyzz\\, \\Z..\\) are kept as written.
        """
        esc = self.escape
        if not esc or esc not in text:
            return text
        out: list[str] = []
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            if ch != esc:
                out.append(ch)
                i += 1
                continue
            end = text.find(esc, i + 1)
            if end < 0:
                out.append(text[i:])
                break
            out.append(self._sequence(text[i + 1 : end], text[i : end + 1]))
            i = end + 1
        return "".join(out)

    def _sequence(self, code: str, raw: str) -> str:
        simple = {"F": self.field, "S": self.component, "T": self.subcomponent, "R": self.repetition, "E": self.escape}
        if code in simple:
            return simple[code]
        if code in ("H", "N"):
            return ""
        if code in (".br", ".sp"):
            return "\n"
        if code[:1] == "X" and len(code) > 1 and len(code) % 2 == 1:
            try:
                data = bytes.fromhex(code[1:])
            except ValueError:
                return raw
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data.decode("latin-1")
        return raw

    def escape_text(self, text: str) -> str:
        """Escape the separators in `text` (for building a field, e.g. an ACK's MSA-3 or ERR text)."""
        if not self.escape:
            return text
        codes = {self.field: "F", self.component: "S", self.repetition: "R", self.escape: "E"}
        if self.subcomponent:
            codes[self.subcomponent] = "T"
        if not any(c in text for c in codes):
            return text
        return "".join(f"{self.escape}{codes[c]}{self.escape}" if c in codes else c for c in text)


@dataclass(frozen=True, slots=True)
class Hl7Segment:
    """One segment. `fields[i]` is the raw text of field i (`fields[0]` is the name); for MSH, `fields[1]` is the
    field separator and `fields[2]` the encoding characters, so MSH-n is `fields[n]` as for every segment."""

    name: str
    fields: tuple[str, ...]
    encoding: Hl7Encoding

    @property
    def text(self) -> str:
        """The segment as written (without its terminator)."""
        if self.name == "MSH":
            return self.encoding.field.join(("MSH", self.fields[2], *self.fields[3:]))
        return self.encoding.field.join(self.fields)

    def field(self, n: int) -> str:
        """Field n, raw (escapes and separators as written); "" when absent."""
        return self.fields[n] if 0 <= n < len(self.fields) else ""

    def repetitions(self, n: int) -> list[str]:
        raw = self.field(n)
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return raw.split(self.encoding.repetition) if raw else []

    def components(self, n: int, repetition: int = 1) -> list[str]:
        """The components of field n (its `repetition`-th repetition, 1-based), unescaped."""
        reps = self.repetitions(n)
        if not 1 <= repetition <= len(reps):
            return []
        if self.name == "MSH" and n in (1, 2):
            return [reps[0]]
        return [self.encoding.unescape(c) for c in reps[repetition - 1].split(self.encoding.component)]

    def component(self, n: int, component: int = 1, repetition: int = 1) -> str:
        """Component `component` (1-based) of field n, unescaped (subcomponents left joined); "" when absent."""
        raw = self.fields[n] if 0 <= n < len(self.fields) else ""
        if not raw or component < 1 or repetition < 1:
            return ""
        if self.name == "MSH" and n in (1, 2):
            return raw if component == 1 and repetition == 1 else ""
        encoding = self.encoding
        if encoding.repetition in raw:
            reps = raw.split(encoding.repetition)
            if repetition > len(reps):
                return ""
            raw = reps[repetition - 1]
        elif repetition > 1:
            return ""
        if encoding.component in raw:
            parts = raw.split(encoding.component)
            if component > len(parts):
                return ""
            raw = parts[component - 1]
        elif component > 1:
            return ""
        return encoding.unescape(raw)

    def subcomponents(self, n: int, component: int = 1, repetition: int = 1) -> list[str]:
        reps = self.repetitions(n)
        if not 1 <= repetition <= len(reps):
            return []
        parts = reps[repetition - 1].split(self.encoding.component)
        if not 1 <= component <= len(parts):
            return []
        raw = parts[component - 1]
        pieces = raw.split(self.encoding.subcomponent) if self.encoding.subcomponent else [raw]
        return [self.encoding.unescape(p) for p in pieces]


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
        for segment in self.segments:
            if segment.name == name:
                return segment
        return None

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


def _encoding(first: str) -> tuple[Hl7Encoding, str, tuple[str, ...]]:
    """The encoding an MSH segment declares, MSH-2 as written, and the fields from MSH-3 on."""
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
        or any(c.isalnum() or c.isspace() for c in characters)
    )
    if invalid:
        raise Hl7ParseError(f"MSH-2 encoding characters {characters!r} are invalid (expected e.g. ^~\\&)")
    padded = characters[:4].ljust(4, " ")
    encoding = Hl7Encoding(
        field=field,
        component=padded[0],
        repetition=padded[1],
        escape=padded[2].strip(),
        subcomponent=padded[3].strip(),
    )
    rest = tuple(first[end + 1 :].split(field)) if end >= 0 else ()
    return encoding, characters, rest


def parse_message(text: str) -> Hl7Message:
    """Split one HL7 v2 message. Raises `Hl7ParseError` naming the segment or field that is wrong.

    MLLP framing bytes around the message are ignored; segments may end in CR (the standard), LF or CRLF; blank
    lines are ignored. The first segment must be MSH.
    """
    body = text.strip("\x0b\x1c\r\n")
    lines = [line for line in _LINE_BREAKS.split(body) if line.strip()]
    if not lines:
        raise Hl7ParseError("empty message: no MSH segment")
    first = lines[0].lstrip("\ufeff")
    if not first.startswith("MSH"):
        raise Hl7ParseError(f"no MSH segment: the message starts with {first[:20]!r}")
    encoding, characters, rest = _encoding(first)
    fs = encoding.field
    segments = [Hl7Segment("MSH", ("MSH", fs, characters, *rest), encoding)]
    for number, line in enumerate(lines[1:], start=2):
        name = line[:3]
        if not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != fs):
            raise Hl7ParseError(f"segment {number} {line[:20]!r} does not start with a segment name and {fs!r}")
        if name == "MSH":
            raise Hl7ParseError(f"segment {number} is a second MSH: one message at a time")
        segments.append(Hl7Segment(name, tuple(line.split(fs)), encoding))
    return Hl7Message("\r".join(lines) + "\r", encoding, tuple(segments))


# --- cutting a file into messages --------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def iter_messages(stream: IO[bytes]) -> Iterator[str]:
    """The messages of a file or byte stream, as text with segments ending in CR (batch FHS/BHS/BTS/FTS dropped).

    A message ends at an MLLP end byte (0x1C), an MLLP start byte (0x0B), a blank line, a new MSH segment or the
    end of the input. Only one message is held at a time.
    """
    current: list[bytes] = []
    pending = b""
    separators = re.compile(rb"(\r\n|\r|\n|\x0b|\x1c)")

    def flush() -> Iterator[str]:
        if current:
            yield _decode(b"\r".join(current) + b"\r")
            current.clear()

    while True:
        chunk = stream.read(CHUNK)
        data = pending + chunk
        if chunk and data.endswith(b"\r"):
            data, pending = data[:-1], b"\r"  # a CRLF may be cut between two chunks
        else:
            pending = b""
        pieces = separators.split(data)
        tail = pieces.pop() if chunk else b""  # the last piece may be an unfinished line
        if chunk:
            pending = tail + pending
        elif tail:
            pieces.append(tail)
        for piece in pieces:
            if piece in (b"\x0b", b"\x1c"):
                yield from flush()
            elif piece in (b"\r\n", b"\r", b"\n"):
                continue
            elif not piece.strip():
                yield from flush()  # a blank line
            elif piece[:3] == b"MSH":
                yield from flush()
                current.append(piece)
            elif piece[:3] in _BATCH_SEGMENTS:
                yield from flush()
            else:
                current.append(piece)
        if not chunk:
            break
    yield from flush()


# --- readings ----------------------------------------------------------------------------------------------


class _MessageError(ValueError):
    """The whole message cannot be used."""


class _ObxError(ValueError):
    """One OBX cannot become a reading."""


def _control_id_guess(text: str) -> str:
    """MSH-10 read naively, for the context of a message that did not parse."""
    first = _LINE_BREAKS.split(text.strip("\x0b\x1c\r\n"), maxsplit=1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3])
    return fields[9].split("^")[0] if len(fields) > 9 else ""


def _patient(pid: Hl7Segment) -> PatientRef:
    identifier = pid.component(3, 1)
    if not identifier.strip():
        raise _MessageError("PID-3 (patient identifier list) is empty")
    authority = pid.subcomponents(3, 4)
    issuer_name = next((a.strip() for a in authority if a.strip()), "")
    return PatientRef(f"mrn:{issuer_name}" if issuer_name else "mrn", identifier.strip())


def _observation_time(raw: str, resolver: LocalTimeResolver | None, stream_key: str) -> tuple[int, bool]:
    text = raw.strip()
    if not text:
        raise _ObxError("OBX-14 (observation time) is empty")
    match = _TS.match(text)
    if match is None:
        if text.isdigit() and len(text) <= 10:
            raise _ObxError(f"OBX-14 {text!r} has no time of day (expected YYYYMMDDHHMM[SS][+/-ZZZZ])")
        raise _ObxError(f"OBX-14 {text!r} is not a time YYYYMMDDHHMM[SS[.S]][+/-ZZZZ]")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    millis = int((fraction or "").ljust(3, "0")[:3])
    try:
        local = naive_local_ms(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), millis)
    except ValueError:
        raise _ObxError(f"OBX-14 {text!r} is not a valid date and time") from None
    if offset is not None:
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes >= 60:
            raise _ObxError(f"OBX-14 {text!r} has an impossible UTC offset {offset}")
        return local - sign * (hours * 60 + minutes) * 60_000, False
    if resolver is None:
        raise _ObxError(f"OBX-14 {text!r} has no UTC offset: name its zone with --input-tz")
    try:
        return resolver.resolve(local, stream_key)
    except EngineError as exc:
        raise _ObxError(f"OBX-14: {exc.message}") from None


def _value(obx: Hl7Segment) -> tuple[float, SensorFlag]:
    value_type = obx.component(2, 1).strip().upper()
    if value_type == "NM":
        raw = obx.component(5, 1).strip()
        comparator = ""
    elif value_type == "SN":
        parts = obx.components(5)
        comparator = parts[0].strip() if parts else ""
        raw = parts[1].strip() if len(parts) > 1 else ""
        if any(p.strip() for p in parts[2:]):
            raise _ObxError(f"OBX-5 {obx.field(5)!r} is a range or ratio, not one value")
    else:
        raise _ObxError(f"OBX-2 value type {value_type!r} is not NM or SN")
    if not raw:
        raise _ObxError("OBX-5 (value) is empty")
    flag = _COMPARATORS.get(comparator)
    if flag is None:
        raise _ObxError(f"OBX-5 comparator {comparator!r} is not <, <=, > or >=")
    try:
        value = float(raw)
    except ValueError:
        raise _ObxError(f"OBX-5 value {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise _ObxError(f"OBX-5 value {raw!r} must be a finite number above 0")
    return value, flag


def _unit(obx: Hl7Segment, code: str) -> GlucoseUnit:
    text = obx.component(6, 1)
    unit = _UNITS.get(text.strip().lower())
    if unit is None:
        raise _ObxError(f"unknown unit {text!r} in OBX-6 (expected mg/dL or mmol/L)")
    expected = READING_CODES[code]
    if unit is not expected:
        raise _ObxError(f"OBX-6 unit {unit.label} does not match OBX-3 {code} ({expected.label})")
    return unit


def _equipment(obx: Hl7Segment) -> tuple[str, str]:
    """(stream, device key) from OBX-18 equipment instance identifiers."""
    stream = ""
    device = ""
    for repetition in range(1, len(obx.repetitions(18)) + 1):
        parts = obx.components(18, repetition)
        if not stream:
            stream = next((p.strip() for p in parts[:1] + parts[2:3] if p.strip()), "")
        if not device:
            device = next((k for k in (device_key_for_name(p) for p in parts) if k), "")
    return stream, device


def _reading_code(obx: Hl7Segment) -> str | None:
    for first in (1, 4):  # the identifier triplet, then the alternate one
        code = obx.component(3, first).strip()
        system = obx.component(3, first + 2).strip().upper()
        if code in READING_CODES and system in ("LN", "LOINC"):
            return code
    return None


class Hl7v2Parser:
    """Parser for files of HL7 v2 ORU^R01 messages with CGM sensor-reading OBXs (`Parser` protocol).

    After (or during) a parse: `messages` is the number of messages read, and `skipped` counts OBX segments that
    are not sensor readings ("OBX <code>^<system>").
    """

    feed = Feed.HL7V2

    def __init__(self, *, keep_payload: bool = True) -> None:
        self.keep_payload = keep_payload
        self.messages = 0
        self.skipped: dict[str, int] = {}

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        self.messages = 0
        self.skipped = {}
        resolver = _resolver(options)
        for number, text in enumerate(iter_messages(stream), start=1):
            self.messages = number
            yield from self._message(text, number, resolver)

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        """Read a quarantined message (or the smaller message of one OBX) again."""
        number, obx = 1, 1
        try:
            given = json.loads(context) if context.strip() else {}
        except ValueError:
            given = {}
        if isinstance(given, dict):
            number = given["message"] if isinstance(given.get("message"), int) else 1
            obx = given["obx"] if isinstance(given.get("obx"), int) else 1  # keeps locators and fallback keys
        return self._message(payload, number, _resolver(options), first_obx=obx)

    def parse_text(self, text: str, options: ParseOptions, number: int = 1) -> Iterator[FeedItem]:
        """The items of one message given as text (e.g. from an MLLP frame)."""
        return self._message(text, number, _resolver(options))

    def _message(
        self, text: str, number: int, resolver: LocalTimeResolver | None, first_obx: int = 1
    ) -> Iterator[FeedItem]:
        locator = f"message {number}"
        try:
            message = parse_message(text)
        except Hl7ParseError as exc:
            cid = _control_id_guess(text)
            yield FeedProblem(locator, str(exc), text, _context(cid, number, "message"))
            return
        cid = message.control_id
        try:
            patients = _check_message(message)
        except _MessageError as exc:
            patient = next((p for p in _patients_or_none(message) if p is not None), None)
            yield FeedProblem(locator, str(exc), message.text, _context(cid, number, "message"), patient)
            return
        version = message.version
        sender = f"{message.msh.field(3)}^{message.msh.field(4)}"  # MSH-3 ^ MSH-4, raw: the control id's issuer
        header = [message.msh]
        pid: Hl7Segment | None = None
        obr: Hl7Segment | None = None
        ordinal = first_obx - 1
        for index, segment in enumerate(message.segments):
            if segment.name == "PID":
                pid, obr = segment, None
                continue
            if segment.name == "OBR":
                obr = segment
                continue
            if segment.name != "OBX":
                continue
            ordinal += 1
            code = _reading_code(segment)
            if code is None:
                kind = f"OBX {segment.component(3, 1)}^{segment.component(3, 3)}"
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                continue
            patient = patients[index]
            if patient is None:  # a reading OBX before any PID was refused by _check_message
                continue
            obx_locator = f"{locator} OBX {ordinal}"
            set_id = segment.component(1, 1).strip() or str(ordinal)
            stream, device = _equipment(segment)
            try:
                status = segment.component(11, 1).strip().upper()
                if status not in RESULT_STATUSES:
                    raise _ObxError(f"OBX-11 result status {status!r} is not F, C or P")
                value, flag = _value(segment)
                unit = _unit(segment, code)
                time_ms, ambiguous = _observation_time(
                    segment.component(14, 1), resolver, f"{patient.issuer}|{patient.value}|{stream}"
                )
            except _ObxError as exc:
                small = [*header, *(s for s in (pid, obr) if s is not None), segment]
                payload = "\r".join(s.text for s in small) + "\r"
                context = _context(cid, number, "obx", ordinal)
                yield FeedProblem(obx_locator, str(exc), payload, context, patient)
                continue
            extra = {"message_control_id": cid, "obx_set_id": set_id, "result_status": status, "hl7_version": version}
            yield FeedReading(
                patient=patient,
                time_ms=time_ms,
                value=value,
                unit=unit,
                flag=flag,
                device=device,
                stream=stream,
                record_key=f"{cid}|{set_id}",
                sender=sender,
                ambiguous=ambiguous,
                locator=obx_locator,
                payload=segment.text if self.keep_payload else "",
                extra=extra,
            )


def _patients_or_none(message: Hl7Message) -> list[PatientRef | None]:
    """The patient of each segment (from the latest PID before it), None where there is none or it is unusable."""
    out: list[PatientRef | None] = []
    current: PatientRef | None = None
    for segment in message.segments:
        if segment.name == "PID":
            try:
                current = _patient(segment)
            except _MessageError:
                current = None
        out.append(current)
    return out


def _check_message(message: Hl7Message) -> list[PatientRef | None]:
    """Message-level checks; returns the patient of each segment (the latest PID's). Raises `_MessageError`."""
    msh = message.msh
    if msh.component(9, 1).upper() != "ORU" or msh.component(9, 2).upper() != "R01":
        raise _MessageError(f"not an ORU^R01 message (MSH-9 is {msh.field(9)!r})")
    if not message.control_id.strip():
        raise _MessageError("MSH-10 (message control id) is empty")
    if message.version not in VERSIONS:
        raise _MessageError(
            f"MSH-12 version {message.version!r} is not accepted (expected 2.3, 2.3.1, 2.4, 2.5 or 2.5.1)"
        )
    out: list[PatientRef | None] = []
    current: PatientRef | None = None
    obx = 0
    for segment in message.segments:
        if segment.name == "PID":
            current = _patient(segment)
        elif segment.name == "OBX":
            obx += 1
            if current is None and _reading_code(segment) is not None:
                raise _MessageError(f"no PID segment before OBX {obx}")
        out.append(current)
    if current is None:
        raise _MessageError("no PID segment")
    return out


def _context(control_id: str, number: int, scope: str, obx: int | None = None) -> str:
    context: dict[str, object] = {"message_control_id": control_id, "message": number, "scope": scope}
    if obx is not None:
        context["obx"] = obx
    return json.dumps(context, separators=(",", ":"))


def _resolver(options: ParseOptions) -> LocalTimeResolver | None:
    if not options.input_tz:
        return None
    try:
        return LocalTimeResolver(options.input_tz)
    except EngineError as exc:
        raise FeedFormatError(exc.message) from None
