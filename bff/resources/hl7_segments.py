"""What every message glucobridge writes is made of: escaped values, coded elements, times, MSH and PID.

The builders (`bff.resources.oru` for ORU^R01, `bff.resources.mdm` for MDM^T02) are pure: the same record and
arguments give the same text. Every message is written in the standard separators (`|^~\\&`) with segments ending
in CR; a message with text beyond ASCII says so in MSH-18 (`UNICODE UTF-8`, table 0211) and is sent as UTF-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from bff.hl7.message import STANDARD, UTF8_CHARSET
from bff.resources.record import OutcomeRecord

# PID-5 is required by hl7apy in both versions (2.3: PID-5 1..1; STRICT 2.5.1 fails on an empty PID-5). When the
# EHR has told glucobridge the patient's name (a launch reads the Patient), PID-5 carries it; otherwise glucobridge
# does not know the name and must not invent one: a made-up name could be displayed or,
# worse, used for patient matching, and the HL7 null `""` would tell the receiver to *delete* the name it has.
# So PID-5 carries only the name type code (XPN-7, table 0200 "U" unspecified): present, but with no name in it.
PLACEHOLDER_NAME = "^^^^^^U"


def esc(text: str) -> str:
    """Text for a field or component: separators escaped, line breaks as spaces (ST has no line breaks)."""
    return STANDARD.escape_text(" ".join(text.splitlines()))


def esc_ft(text: str) -> str:
    """Formatted text (FT, e.g. NTE-3): separators escaped, line breaks as \\.br\\."""
    return "\\.br\\".join(STANDARD.escape_text(line) for line in text.splitlines())


def coded(*components: str) -> str:
    """A coded element (CE/CWE) or any composite: its components escaped and joined by `^`."""
    return "^".join(esc(c) for c in components)


def ts(moment: datetime) -> str:
    """HL7 TS/DTM to the second with its UTC offset; a naive datetime is taken as UTC."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    aware = aware.astimezone(UTC)
    fraction = f".{aware.microsecond // 1000:03d}" if aware.microsecond // 1000 else ""
    return aware.strftime("%Y%m%d%H%M%S") + fraction + "+0000"


def ts_ms(ms: int, zone: ZoneInfo) -> str:
    """An instant (ms since the epoch) in a zone's local time with its offset, e.g. 20241027000000-0400."""
    local = datetime.fromtimestamp(ms // 1000, tz=UTC).astimezone(zone)
    fraction = f".{ms % 1000:03d}" if ms % 1000 else ""
    return local.strftime("%Y%m%d%H%M%S") + fraction + local.strftime("%z")


def msh(
    sending: tuple[str, str], receiving: tuple[str, str], when: str, message_type: str, control_id: str, version: str
) -> list[str]:
    """MSH-0..12 (MSH-11 processing id P); `message_type` is written as given (its `^` are separators)."""
    return ["MSH", "^~\\&", esc(sending[0]), esc(sending[1]), esc(receiving[0]), esc(receiving[1]), when, "",
            message_type, control_id, "P", version]  # fmt: skip


def patient_identifier(record: OutcomeRecord, mrn: str | None) -> str:
    """PID-3 (CX): `<id>^^^<assigning authority>^MR`; the authority from the identifier system when known."""
    if mrn is not None:
        if not mrn.strip():
            raise ValueError("mrn is empty")
        return f"{esc(mrn.strip())}^^^^MR"
    if not record.patient_identifiers:
        # No site identifier known (e.g. data from glucobridge's own CSV): glucobridge's patient id, typed PI
        # (patient internal identifier, table 0203) under the GLUCOBRIDGE authority, never passed off as an MRN.
        return f"{esc(record.patient_id)}^^^GLUCOBRIDGE^PI"
    system, value = record.patient_identifiers[0]
    if not value.strip():
        raise ValueError("the record's first patient identifier is empty")
    authority = ""
    if system.startswith("urn:oid:"):
        authority = f"&{esc(system.removeprefix('urn:oid:'))}&ISO"
    elif system:
        authority = f"&{esc(system)}&URI"
    return f"{esc(value.strip())}^^^{authority}^MR"


def pid(record: OutcomeRecord, mrn: str | None) -> list[str]:
    """PID-0..7: set id 1, the identifier of `patient_identifier`, the name as the EHR gives it (family^given, or
    the placeholder when it is not known: never an invented name) and the birth date when known."""
    name = PLACEHOLDER_NAME
    if record.family_name or record.given_names:
        name = f"{esc(record.family_name or '')}^{esc(record.given_names or '')}"
    birth = (record.birth_date or "").replace("-", "")
    fields = ["PID", "1", "", patient_identifier(record, mrn), "", name]
    if len(birth) == 8 and birth.isdigit():
        fields += ["", birth]
    return fields


def trim(fields: Sequence[str]) -> list[str]:
    """Fields without trailing empty ones."""
    end = len(fields)
    while end > 1 and not fields[end - 1]:
        end -= 1
    return list(fields[:end])


def message_text(segments: list[list[str]]) -> str:
    """The message: each segment's fields (trailing empty ones dropped) joined by `|`, ending in CR.

    The first segment must be the MSH (as `msh` gives it: item k is MSH-(k+1), the field separator being
    implied); when any field goes beyond ASCII, MSH-18 says UTF-8.
    """
    if not all(field.isascii() for fields in segments for field in fields):
        header = segments[0]
        header += [""] * (17 - len(header))
        header.append(UTF8_CHARSET)  # item 17: MSH-18
    return "".join("|".join(trim(fields)) + "\r" for fields in segments)
