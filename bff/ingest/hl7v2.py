"""HL7 v2 ORU^R01 messages carrying CGM sensor readings (OBX with LOINC 99504-3 or 105272-9): the feed's parser.

`bff.hl7` splits files into messages (`iter_messages`) and messages into fields (`parse_message`, on
python-hl7). `Hl7v2Parser` turns each message into readings, one per sensor-reading OBX, or problems. A message
that cannot be used as a whole (not ORU^R01, a version we do not read, no PID-3, unparseable, too large) is one
problem whose payload is the whole message; a problem in one OBX is a problem for that OBX only, whose payload
is a smaller message (MSH, PID, OBR and that OBX) that `parse_quarantined` reads again. Readings carry
`extra["message_control_id"]` and problems carry it in their JSON context (`{"message_control_id": ...,
"message": n, "scope": "message" | "obx"}`), so a caller can ACK each message (AA / AE / AR).

Every reason quotes the input through `bff.hl7.shown` (at most 200 characters). What is refused before any
value is built from it: an OBX-14 year outside `YEARS` (a time like 00010101000000+1400 is not a datetime at
all), a field over `bff.hl7.MAX_FIELD_CHARS` in PID (the message's problem) or in a reading OBX (that OBX's).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import IO

from bff.hl7 import (
    MAX_FIELD_CHARS,
    Hl7Message,
    Hl7ParseError,
    Hl7Segment,
    OversizeMessage,
    iter_messages,
    parse_message,
    shown,
)
from bff.hl7.ack import control_id_guess
from bff.hl7.stream import MAX_MESSAGE_BYTES
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
from engine import EngineError, GlucoseUnit, SensorFlag, parse_unit
from engine.catalogue import READING_UNITS

VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")
READING_CODES = {code: parse_unit(unit) for code, unit in READING_UNITS.items()}
RESULT_STATUSES = ("F", "C", "P")
#: The years an OBX-14 may name; the store refuses times before 2000 or in the future on its own.
YEARS = range(1900, 2201)
_UNITS = {"mg/dl": GlucoseUnit.MG_DL, "mmol/l": GlucoseUnit.MMOL_L}
_COMPARATORS = {"": SensorFlag.NONE, "=": SensorFlag.NONE, "<": SensorFlag.LOW, "<=": SensorFlag.LOW}
_COMPARATORS |= {">": SensorFlag.HIGH, ">=": SensorFlag.HIGH}
_TS = re.compile(r"(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?([+-]\d{4})?$")


# --- readings ----------------------------------------------------------------------------------------------


class _MessageError(ValueError):
    """The whole message cannot be used."""


class _ObxError(ValueError):
    """One OBX cannot become a reading."""


def _check_size(segment: Hl7Segment, error: type[ValueError]) -> None:
    """Raise `error` when the segment could not be split or a field of it is over the field size limit."""
    if segment.problem:
        raise error(segment.problem)
    oversize = segment.oversize_field()
    if oversize is not None:
        n, length = oversize
        raise error(f"{segment.name}-{n} is {length} characters long (limit {MAX_FIELD_CHARS})")


def _patient(pid: Hl7Segment) -> PatientRef:
    _check_size(pid, _MessageError)
    identifier = pid.component(3, 1)
    if not identifier.strip():
        raise _MessageError("PID-3 (patient identifier list) is empty")
    authority = pid.subcomponents(3, 4)
    issuer_name = next((a.strip() for a in authority if a.strip()), "")
    return PatientRef(f"mrn:{issuer_name}" if issuer_name else "mrn", identifier.strip())


def _observation_time(raw: str, resolver: LocalTimeResolver | None, stream_key: str) -> tuple[int, bool, int | None]:
    """(UTC ms, ambiguous local time?, the UTC offset written, as zone evidence: None for none or +0000)."""
    text = raw.strip()
    if not text:
        raise _ObxError("OBX-14 (observation time) is empty")
    match = _TS.match(text)
    if match is None:
        if text.isdigit() and len(text) <= 10:
            raise _ObxError(f"OBX-14 {shown(text)} has no time of day (expected YYYYMMDDHHMM[SS][+/-ZZZZ])")
        raise _ObxError(f"OBX-14 {shown(text)} is not a time YYYYMMDDHHMM[SS[.S]][+/-ZZZZ]")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if int(year) not in YEARS:  # before any datetime is built: year 1 or 9999 plus an offset is no datetime at all
        raise _ObxError(
            f"OBX-14 {shown(text)} is in the year {int(year)}, outside {YEARS.start}-{YEARS.stop - 1}: a device "
            "clock that was never set, or a wrong date format"
        )
    millis = int((fraction or "").ljust(3, "0")[:3])
    try:
        local = naive_local_ms(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), millis)
    except ValueError:
        raise _ObxError(f"OBX-14 {shown(text)} is not a valid date and time") from None
    if offset is not None:
        sign = -1 if offset[0] == "-" else 1
        hours, minutes = int(offset[1:3]), int(offset[3:5])
        if hours > 14 or minutes >= 60:
            raise _ObxError(f"OBX-14 {shown(text)} has an impossible UTC offset {offset}")
        written = sign * (hours * 60 + minutes)
        return local - written * 60_000, False, written or None
    if resolver is None:
        raise _ObxError(f"OBX-14 {shown(text)} has no UTC offset: name its zone with --input-tz")
    try:
        return (*resolver.resolve(local, stream_key), None)
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
            raise _ObxError(f"OBX-5 {shown(obx.field(5))} is a range or ratio, not one value")
    else:
        raise _ObxError(f"OBX-2 value type {shown(value_type)} is not NM or SN")
    if not raw:
        raise _ObxError("OBX-5 (value) is empty")
    flag = _COMPARATORS.get(comparator)
    if flag is None:
        raise _ObxError(f"OBX-5 comparator {shown(comparator)} is not <, <=, > or >=")
    try:
        value = float(raw)
    except ValueError:
        raise _ObxError(f"OBX-5 value {shown(raw)} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise _ObxError(f"OBX-5 value {shown(raw)} must be a finite number above 0")
    return value, flag


def _unit(obx: Hl7Segment, code: str) -> GlucoseUnit:
    text = obx.component(6, 1)
    unit = _UNITS.get(text.strip().lower())
    if unit is None:
        raise _ObxError(f"unknown unit {shown(text)} in OBX-6 (expected mg/dL or mmol/L)")
    expected = READING_CODES[code]
    if unit is not expected:
        raise _ObxError(f"OBX-6 unit {unit.label} does not match OBX-3 {code} ({expected.label})")
    return unit


def _equipment(obx: Hl7Segment) -> tuple[str, str]:
    """(stream, device key) from OBX-18 equipment instance identifiers."""
    stream = ""
    device = ""
    for repetition in range(1, min(len(obx.repetitions(18)), 10) + 1):  # the first ten say it, if any do
        parts = obx.components(18, repetition)
        if not stream:
            stream = next((p.strip() for p in parts[:1] + parts[2:3] if p.strip()), "")
        if not device:
            device = next((k for k in (device_key_for_name(p) for p in parts) if k), "")
        if stream and device:
            break
    return stream, device


def _reading_code(obx: Hl7Segment) -> str | None:
    for first in (1, 4):  # the identifier triplet, then the alternate one
        code = obx.component(3, first).strip()
        system = obx.component(3, first + 2).strip().upper()
        if code in READING_CODES and system in ("LN", "LOINC"):
            return code
    return None


def _is_reading(obx: Hl7Segment) -> bool:
    """Whether an OBX is ours to read: a sensor-reading code, or one we cannot tell (unsplit, OBX-3 too long)."""
    return bool(obx.problem) or len(obx.field(3)) > MAX_FIELD_CHARS or _reading_code(obx) is not None


class Hl7v2Parser:
    """Parser for files of HL7 v2 ORU^R01 messages with CGM sensor-reading OBXs (`Parser` protocol).

    After (or during) a parse: `messages` is the number of messages read, and `skipped` counts OBX segments that
    are not sensor readings ("OBX <code>^<system>").
    """

    feed = Feed.HL7V2

    def __init__(self, *, keep_payload: bool = True, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.keep_payload = keep_payload
        self.max_message_bytes = max_message_bytes
        self.messages = 0
        self.skipped: dict[str, int] = {}

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        self.messages = 0
        self.skipped = {}
        resolver = _resolver(options)
        for number, text in enumerate(iter_messages(stream, max_bytes=self.max_message_bytes), start=1):
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
        if isinstance(text, OversizeMessage):
            reason = f"the message is {text.size} bytes long (limit {self.max_message_bytes}): send it in parts"
            yield FeedProblem(locator, reason, text, _context(control_id_guess(text), number, "message"))
            return
        try:
            message = parse_message(text)
        except Hl7ParseError as exc:
            cid = control_id_guess(text)
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
            if not _is_reading(segment):
                kind = f"OBX {segment.component(3, 1)[:40]}^{segment.component(3, 3)[:40]}"
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                continue
            patient = patients[index]
            if patient is None:  # a reading OBX before any PID was refused by _check_message
                continue
            obx_locator = f"{locator} OBX {ordinal}"
            set_id = segment.component(1, 1).strip() or str(ordinal)
            try:
                _check_size(segment, _ObxError)
                code = _reading_code(segment)
                if code is None:
                    raise _ObxError("OBX-3 is not a sensor reading code")  # not reached: _is_reading checked it
                stream, device = _equipment(segment)
                status = segment.component(11, 1).strip().upper()
                if status not in RESULT_STATUSES:
                    raise _ObxError(f"OBX-11 result status {shown(status)} is not F, C or P")
                value, flag = _value(segment)
                unit = _unit(segment, code)
                time_ms, ambiguous, offset = _observation_time(
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
                utc_offset_min=offset,
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
        raise _MessageError(f"not an ORU^R01 message (MSH-9 is {shown(msh.field(9))})")
    if not message.control_id.strip():
        raise _MessageError("MSH-10 (message control id) is empty")
    if message.version not in VERSIONS:
        raise _MessageError(
            f"MSH-12 version {shown(message.version)} is not accepted (expected 2.3, 2.3.1, 2.4, 2.5 or 2.5.1)"
        )
    out: list[PatientRef | None] = []
    current: PatientRef | None = None
    obx = 0
    for segment in message.segments:
        if segment.name == "PID":
            current = _patient(segment)
        elif segment.name == "OBX":
            obx += 1
            if current is None and _is_reading(segment):
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
