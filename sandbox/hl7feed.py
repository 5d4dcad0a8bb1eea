"""The hl7-only site's CGM results interface: its seeded readings as HL7 v2 ORU^R01 messages sent over MLLP.

A hospital without FHIR write or bulk APIs hands CGM readings to a receiving system the way it hands any
results: an outbound ORU^R01 interface of its integration engine (ehr-realities.md §3). `oru_messages` makes one
message per patient and local day, in the order the readings were taken; `send` delivers them over one MLLP
connection in original acknowledgment mode and waits for each ACK before the next message, as an interface
engine's outbound queue does (it never has two messages in flight, so results are filed in order).

What a message holds, field by field (HL7 v2.5.1, the shapes the glucobridge HL7 v2 feed reads):

    MSH|^~\\&|RESULTS|HL7ONLY|GLUCOBRIDGE|GLUCOBRIDGE|<sent>||ORU^R01^ORU_R01|CGM-P1-20261125|P|2.5.1
    PID|1||<MRN>^^^&<site MRN system>&URI^MR||<family>^<given>||<birth date>|<F/M/U>
    OBR|1||CGM-P1-20261125|99504-3^Glucose [Mass/volume] in Interstitial fluid^LN|||<first>|<last>|||...|F
    OBX|1|NM|99504-3^Glucose [Mass/volume] in Interstitial fluid^LN||112|mg/dL^mg/dL^UCUM|||||F|||<time>||||<sn>^<dev>

- MSH-10 (control id) is `CGM-<person>-<local day>`: the same message always has the same id, so sending the
  feed again is idempotent at a receiver that keys results by control id and OBX set id.
- PID-3 is the site's MRN with its assigning authority as a URI (HD universal id, type URI): the same system as
  the `identifier` of the site's FHIR Patient, so a receiver can match the two.
- OBX-14 is the local time with its UTC offset (never a naive time). A reading the sensor reported as LOW or
  HIGH is `SN` with `<` or `>` and the device's bound, as the FHIR Observation has a `comparator`.
- OBX-18 is the sensor's serial and the device's name, as the FHIR Device has them.
- Values are written exactly as the site's FHIR Observations carry them (whole mg/dL; mmol/L as stored), so the
  two doors give the same numbers.

The sandbox is self-contained: nothing here comes from glucobridge's own HL7 code (bff.hl7), so the feed is a
second, independent writer of the format that code reads.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

from sandbox.glucose import DAY_MS, FLAG_HIGH, FLAG_LOW
from sandbox.mllp import END, START, summarize
from sandbox.personalities import Personality
from sandbox.seed import DEVICE_NAMES, READING_CODES, ReadingBlock, SeededPatient, SiteSeed

SENDING_APPLICATION = "RESULTS"
RECEIVING_APPLICATION = "GLUCOBRIDGE"
RECEIVING_FACILITY = "GLUCOBRIDGE"
VERSION = "2.5.1"
#: How long to wait for one ACK: the receiver stores the message's readings before it answers.
ACK_TIMEOUT_S = 60.0
_GENDER = {"female": "F", "male": "M"}


@dataclass(frozen=True, slots=True)
class Oru:
    """One ORU^R01 message of the feed: its control id, patient, the readings it carries and its text."""

    control_id: str
    patient_id: str  # the site's FHIR Patient id (for reports; the message itself names the MRN)
    readings: int
    text: str


def esc(value: str) -> str:
    """HL7 v2 escaping of a value (the standard separators ^~\\& and |)."""
    return (
        value.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def ts(ms: int, offset_min: int) -> str:
    """An HL7 v2 DTM with seconds and the UTC offset: YYYYMMDDHHMMSS+ZZZZ."""
    moment = datetime.fromtimestamp(ms // 1000, timezone(timedelta(minutes=offset_min)))
    sign = "-" if offset_min < 0 else "+"
    hours, minutes = divmod(abs(offset_min), 60)
    return moment.strftime("%Y%m%d%H%M%S") + f"{sign}{hours:02d}{minutes:02d}"


def _value(block: ReadingBlock, index: int) -> tuple[str, str]:
    """(OBX-2, OBX-5): the value as the site's FHIR Observation has it, with a comparator for LOW/HIGH."""
    trace = block.trace
    raw = float(trace.value[index])
    text = str(int(raw)) if trace.unit == "mg/dL" else str(raw)
    flag = int(trace.flag[index])
    if flag == FLAG_LOW:
        return "SN", f"<^{text}"
    if flag == FLAG_HIGH:
        return "SN", f">^{text}"
    return "NM", text


def _pid(patient: SeededPatient, personality: Personality) -> str:
    person = patient.person
    fields = [
        "PID", "1", "", f"{esc(patient.mrn)}^^^&{esc(personality.mrn_system)}&URI^MR", "",
        f"{esc(person.family)}^{esc(person.given)}", "", person.birth_date.replace("-", ""),
        _GENDER.get(person.gender, "U"),
    ]  # fmt: skip
    return "|".join(fields)


def _days(block: ReadingBlock) -> Iterator[tuple[str, int, int]]:
    """(local day YYYYMMDD, first index, end index) of each local day with readings, in order."""
    trace = block.trace
    start = 0
    current = ""
    for index in range(len(trace)):
        local = int(trace.time_ms[index]) + int(trace.offset_min[index]) * 60_000
        day = datetime.fromtimestamp(local // DAY_MS * 86_400, UTC).strftime("%Y%m%d")
        if day != current:
            if current:
                yield current, start, index
            current, start = day, index
    if current:
        yield current, start, len(trace)


def oru_messages(site: SiteSeed, personality: Personality, sent: datetime | None = None) -> Iterator[Oru]:
    """One ORU^R01 per patient and local day with readings: patient by patient, day by day."""
    stamp = (sent or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"
    facility = personality.key.replace("-", "").upper()
    patients = {p.patient_id: p for p in site.patients}
    for block in site.blocks:
        patient = patients[block.patient_id]
        trace = block.trace
        loinc, display = READING_CODES[trace.unit]
        code = f"{loinc}^{esc(display)}^LN"
        unit = f"{esc(trace.unit)}^{esc(trace.unit)}^UCUM"
        device = esc(DEVICE_NAMES[trace.device])
        for day, first, end in _days(block):
            control_id = f"CGM-{block.person.key.upper()}-{day}"
            msh = [
                "MSH", "^~\\&", SENDING_APPLICATION, facility, RECEIVING_APPLICATION, RECEIVING_FACILITY, stamp, "",
                "ORU^R01^ORU_R01", control_id, "P", VERSION,
            ]  # fmt: skip
            first_ts = ts(int(trace.time_ms[first]), int(trace.offset_min[first]))
            last_ts = ts(int(trace.time_ms[end - 1]), int(trace.offset_min[end - 1]))
            obr = ["OBR", "1", "", control_id, code, "", "", first_ts, last_ts, *[""] * 16, "F"]
            segments = ["|".join(msh), _pid(patient, personality), "|".join(obr)]
            for n, index in enumerate(range(first, end), start=1):
                kind, value = _value(block, index)
                serial = esc(trace.sessions[int(trace.session[index])].serial)
                when = ts(int(trace.time_ms[index]), int(trace.offset_min[index]))
                segments.append(
                    f"OBX|{n}|{kind}|{code}||{value}|{unit}|||||F|||{when}||||{serial}^{device}"
                )  # fmt: skip
            yield Oru(control_id, block.patient_id, end - first, "\r".join(segments) + "\r")


@dataclass
class FeedReport:
    """What the receiver answered: messages and readings sent, ACK codes counted, the first non-AA answers."""

    messages: int = 0
    readings: int = 0
    acks: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.messages > 0 and self.acks.get("AA", 0) == self.messages


class FeedError(Exception):
    """The receiver could not be reached, or broke the exchange (no ACK, or an ACK for another message)."""


def _read_frame(connection: socket.socket, buffer: bytearray, timeout_s: float) -> str:
    connection.settimeout(timeout_s)
    while (end := buffer.find(END)) < 0:
        chunk = connection.recv(65536)
        if not chunk:
            raise FeedError("the receiver closed the connection before it acknowledged the message")
        buffer += chunk
    start = buffer.find(START)
    frame = bytes(buffer[start + 1 if start >= 0 else 0 : end])
    del buffer[: end + len(END)]
    return frame.decode("utf-8", errors="replace")


def _msa(ack: str) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of an ACK ('' where absent)."""
    for segment in ack.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA|"):
            parts = segment.split("|")
            return tuple((parts[n] if len(parts) > n else "") for n in (1, 2, 3))  # type: ignore[return-value]
    return "", "", ""


def send(messages: Iterator[Oru], host: str, port: int, *, ack_timeout_s: float = ACK_TIMEOUT_S) -> FeedReport:
    """Send every message over one MLLP connection, each after the previous one's ACK. Raises FeedError."""
    report = FeedReport()
    try:
        connection = socket.create_connection((host, port), timeout=10.0)
    except OSError as exc:
        raise FeedError(f"cannot connect to the receiver at {host}:{port}: {exc.strerror or exc}") from None
    buffer = bytearray()
    with connection:
        for message in messages:
            try:
                connection.sendall(START + message.text.encode("utf-8") + END)
                ack = _read_frame(connection, buffer, ack_timeout_s)
            except TimeoutError:
                raise FeedError(f"no ACK for {message.control_id} within {ack_timeout_s:g} s") from None
            except OSError as exc:
                raise FeedError(f"the connection broke at {message.control_id}: {exc.strerror or exc}") from None
            code, acked, text = _msa(ack)
            if acked != message.control_id:
                named = acked or summarize(ack)["control_id"] or "?"
                raise FeedError(f"the ACK is for {named}, not {message.control_id}")
            report.messages += 1
            report.readings += message.readings
            report.acks[code] = report.acks.get(code, 0) + 1
            if code != "AA" and len(report.problems) < 5:
                report.problems.append(f"{message.control_id}: {code} {text}".strip())
    return report
