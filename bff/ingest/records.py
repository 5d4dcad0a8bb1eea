"""What every feed parser yields, and what the store takes: readings as delivered, or problems to quarantine.

A parser turns one input (a file, a message) into an iterator of `FeedReading` and `FeedProblem`, in input
order, streaming: it never holds the whole input. It checks the *format* (malformed HL7 v2, invalid FHIR,
unknown units, unreadable times); checks that need the store or the clock (impossible timestamps, values a
sensor cannot report, patient identity) happen in `bff.ingest.validate` and the store.

Every problem carries the raw `payload` of its record and the `context` needed to read it again (a CSV
header, a LibreView metadata block, a Dexcom response's user and unit), so `glucobridge quarantine retry`
can re-parse it with `Parser.parse_quarantined` once the cause is fixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Protocol

from engine import GlucoseUnit, SensorFlag, Source, parse_unit
from engine.immutable import immutable


class Feed(StrEnum):
    DEXCOM = "dexcom"
    LIBREVIEW = "libreview"
    FHIR = "fhir"
    HL7V2 = "hl7v2"
    CSV = "csv"

    @property
    def source(self) -> Source:
        """The engine's precedence class of this feed (FHIR, then vendor API, then HL7 v2, then file)."""
        return {
            Feed.FHIR: Source.FHIR,
            Feed.DEXCOM: Source.VENDOR,
            Feed.HL7V2: Source.HL7V2,
            Feed.LIBREVIEW: Source.FILE,
            Feed.CSV: Source.FILE,
        }[self]


@immutable
class PatientRef:
    """A patient key as a feed gives it, always qualified by its issuer (e.g. `mrn`, `fhir`, `dexcom-user`).

    The store scopes issuers to the site (`site:<SITE>:mrn`), so an MRN at one site never matches another's.
    """

    issuer: str
    value: str


@immutable
class FeedReading:
    """One glucose reading as a feed delivered it, before the store resolves patient and device."""

    patient: PatientRef | None  # None when the input does not say (then the caller's --patient is used)
    time_ms: int  # UTC instant, ms since the epoch
    value: float | None  # in `unit`; None only for a LOW/HIGH reading of a device with known bounds
    unit: GlucoseUnit
    flag: SensorFlag = SensorFlag.NONE
    device: str = ""  # device key of engine.devices ("" unknown)
    stream: str = ""  # device stream label (transmitter id, sensor serial); "" when the feed has none
    record_key: str = ""  # the feed's own id for the record (recordId, Observation id, ...); "" when none
    sender: str = ""  # who issued `record_key` (HL7 v2: MSH-3^MSH-4; Dexcom: the account); "" = the site itself
    session_key: str = ""  # sensor session id when the feed has one
    session_start_ms: int | None = None
    ambiguous: bool = False  # the time came from an ambiguous local time (resolved by order)
    utc_offset_min: int | None = None  # the UTC offset the feed wrote the time with (None: UTC "Z" or no offset)
    zone: str = ""  # the patient's IANA zone when the feed states it (an engine CSV `tz` column)
    locator: str = ""  # where in the input: "line 12", "entry 3", "message 5 OBX 2"
    payload: str = ""  # the raw record, kept for audit
    extra: Mapping[str, str] = field(default_factory=dict)  # feed details kept as given (displayTime, trend, ...)


#: A problem's reason is a sentence, never a value: longer ones are cut here (parsers quote values shortened).
MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class FeedProblem:
    """A record that cannot become a reading. It goes to quarantine with a reason a person can act on.

    The reason is held to `MAX_REASON_CHARS`. A NUL character, which no database text column takes, is written
    as the four characters `\\x00` in every field (the reason says when the record held one).
    """

    locator: str
    reason: str
    payload: str
    context: str = ""
    patient: PatientRef | None = None

    def __post_init__(self) -> None:
        reason = self.reason if len(self.reason) <= MAX_REASON_CHARS else self.reason[: MAX_REASON_CHARS - 1] + "…"
        object.__setattr__(self, "reason", reason)
        for name in ("locator", "reason", "payload", "context"):
            text = getattr(self, name)
            if "\x00" in text:
                object.__setattr__(self, name, text.replace("\x00", "\\x00"))


FeedItem = FeedReading | FeedProblem


class FeedFormatError(ValueError):
    """The input as a whole cannot be read (wrong format, missing header, a needed option not given).

    Raised before any record is yielded when possible; the CLI prints it as one line and exits with code 2.
    """


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """What a parser may need besides the bytes.

    `input_tz`: the IANA zone of floating local times (LibreView, HL7 v2 without offsets, naive CSV times).
    `date_order`: for locale-formatted dates ("mdy", "dmy", "ymd"); None means detect it from the input.
    """

    input_tz: str | None = None
    date_order: str | None = None


class Parser(Protocol):
    """A feed's parser. Both methods stream: items come out in input order as they are read."""

    feed: Feed

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]: ...

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        """Read one quarantined record again (after its cause was fixed)."""
        ...


def reading_to_json(reading: FeedReading) -> str:
    """A reading as JSON, for quarantine when it failed a check after parsing (time, value, patient)."""
    return json.dumps(
        {
            "patient": None if reading.patient is None else [reading.patient.issuer, reading.patient.value],
            "time_ms": reading.time_ms,
            "value": reading.value,
            "unit": reading.unit.label,
            "flag": reading.flag.name,
            "device": reading.device,
            "stream": reading.stream,
            "record_key": reading.record_key,
            "sender": reading.sender,
            "session_key": reading.session_key,
            "session_start_ms": reading.session_start_ms,
            "ambiguous": reading.ambiguous,
            "utc_offset_min": reading.utc_offset_min,
            "zone": reading.zone,
            "locator": reading.locator,
            "raw": reading.payload,
            "extra": dict(reading.extra),
        },
        sort_keys=True,
    )


def reading_from_json(text: str) -> FeedReading:
    data = json.loads(text)
    patient = data.get("patient")
    return FeedReading(
        patient=None if patient is None else PatientRef(patient[0], patient[1]),
        time_ms=int(data["time_ms"]),
        value=None if data["value"] is None else float(data["value"]),
        unit=parse_unit(data["unit"]),
        flag=SensorFlag[data["flag"]],
        device=data["device"],
        stream=data["stream"],
        record_key=data["record_key"],
        sender=data.get("sender", ""),
        session_key=data.get("session_key", ""),
        session_start_ms=data.get("session_start_ms"),
        ambiguous=bool(data.get("ambiguous", False)),
        utc_offset_min=data.get("utc_offset_min"),
        zone=str(data.get("zone", "")),
        locator=data.get("locator", ""),
        payload=data.get("raw", ""),
        extra=data.get("extra", {}),
    )


def replay_then_read(buffered: list[bytes], stream: IO[bytes], size: int) -> Iterator[bytes]:
    """The bytes a parser already looked at (then forgotten), followed by the rest of the stream in chunks."""
    yield from buffered
    buffered.clear()
    while chunk := stream.read(size):
        yield chunk
