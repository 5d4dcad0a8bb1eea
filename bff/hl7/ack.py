"""Original-mode acknowledgments (HL7 table 0008): building ours, reading a receiver's.

`build_ack(original, code, text, now)` never fails on the original: it reads only the original's MSH (parsed
alone, or when even that fails, MSH-10 split out naively), so a message that is broken further down still gets
its MSA-2. The ACK is always written in the standard separators `|^~\\&`, whatever the original declared: every
value taken from the original is unescaped in the original's encoding and escaped again for the ACK
(`_header`), so a `|` inside an MSH-3 sent with `#` as field separator becomes `\\F\\`, never a field boundary.
python-hl7's `create_ack` lays out the ACK from that re-written header (`bff.hl7._lib.ack_skeleton`); we set
MSH-7 from our clock, MSH-9 per version (`ACK^<trigger>` before 2.4) and MSA-3, one line of at most
`MAX_ACK_TEXT` characters.

`parse_ack(text)` reads a receiver's ACK: MSA-1 (enhanced-mode CA/CE/CR read as AA/AE/AR), MSA-2 and the error
text of MSA-3 and any ERR segments.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from bff.hl7 import _lib
from bff.hl7.message import STANDARD, UTF8_CHARSET, Hl7ParseError, Hl7Segment, parse_message

ACK_CODES: Final = ("AA", "AE", "AR")
MAX_ACK_TEXT: Final = 200
#: Most characters of a value taken from the original into the ACK (MSH-3..6 components, MSA-2).
MAX_ECHO: Final = 200
#: Enhanced-mode commit ACK codes read as their original-mode equivalent (a peer in enhanced mode still tells us
#: whether to resend).
_READ_CODES: Final = {"AA": "AA", "AE": "AE", "AR": "AR", "CA": "AA", "CE": "AE", "CR": "AR"}
_VERSION = re.compile(r"2\.\d{1,2}(\.\d{1,2})?")
_TRIGGER = re.compile(r"[A-Z0-9]{3}")
_ID_CHARACTERS = re.compile(r"[^A-Za-z0-9.\-]")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


class AckError(Exception):
    """An answer came but cannot be used: not an ACK we can read, or the ACK of another message."""

    def __init__(self, message: str, ack_text: str = "") -> None:
        super().__init__(message)
        self.ack_text = ack_text


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # AA, AE or AR
    text: str
    control_id: str  # MSA-2: the MSH-10 acknowledged
    message: str  # the ACK message itself


@dataclass(frozen=True, slots=True)
class _Header:
    """What an ACK takes from the original's MSH, each value escaped for the standard separators."""

    sending: tuple[str, str] = ("", "")  # MSH-3, MSH-4
    receiving: tuple[str, str] = ("", "")  # MSH-5, MSH-6
    control_id: str = ""  # MSH-10 unescaped
    processing: str = "P"
    version: str = "2.5.1"
    trigger: str = "R01"


def _echo(msh: Hl7Segment, n: int) -> str:
    """An HD field (namespace^universal id^type) re-written in the standard separators, each part cut short."""
    parts = [STANDARD.escape_text(c[:MAX_ECHO]) for c in msh.components(n)[:3]]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def _header(original: str) -> _Header:
    first = _LINE_BREAKS.split(original.strip("\x0b\x1c\r\n"), maxsplit=1)[0]
    try:
        message = parse_message(first)
    except Hl7ParseError:
        return _Header(control_id=control_id_guess(original))
    msh = message.msh
    version = message.version if _VERSION.fullmatch(message.version) else "2.5.1"
    processing = message.processing_id if message.processing_id in ("P", "T", "D") else "P"
    event = msh.component(9, 2)
    return _Header(
        sending=(_echo(msh, 3), _echo(msh, 4)),
        receiving=(_echo(msh, 5), _echo(msh, 6)),
        control_id=message.control_id,
        processing=processing,
        version=version,
        trigger=event if _TRIGGER.fullmatch(event) else "R01",
    )


def control_id_guess(text: str) -> str:
    """MSH-10 read naively (split on the 4th character and `^`), for a message whose MSH does not parse."""
    first = _LINE_BREAKS.split(text.strip("\x0b\x1c\r\n"), maxsplit=1)[0].lstrip("\ufeff")
    if not first.startswith("MSH") or len(first) < 4:
        return ""
    fields = first.split(first[3], 10)
    return fields[9].split("^")[0][:MAX_ECHO] if len(fields) > 9 else ""


def ack_text(text: str) -> str:
    """MSA-3: one line, at most `MAX_ACK_TEXT` characters, escaped."""
    return STANDARD.escape_text(" ".join(text.split())[:MAX_ACK_TEXT])


def build_ack(original: str, code: str, text: str, now: datetime) -> Ack:
    """The ACK of `original` (see the module docstring); best effort when it cannot be parsed."""
    if code not in ACK_CODES:
        raise ValueError(f"ACK code {code!r} is not AA, AE or AR")
    header = _header(original)
    control_id = header.control_id[:MAX_ECHO]
    safe_id = _ID_CHARACTERS.sub("", control_id)[:19]
    ack_id = "A" + (safe_id or hashlib.sha256(original.encode("utf-8", "replace")).hexdigest()[:19])
    source = "|".join(("MSH", "^~\\&", *header.sending, *header.receiving, "", "", f"X^{header.trigger}",
                       STANDARD.escape_text(control_id), header.processing, header.version))  # fmt: skip
    application = header.receiving[0] or "GLUCOBRIDGE"
    ack = _lib.ack_skeleton(source, code, ack_id, application, header.receiving[1])
    _lib.assign(ack, "MSH", 7, now.strftime("%Y%m%d%H%M%S") + "+0000")
    if header.version < "2.4":
        _lib.assign(ack, "MSH", 9, f"ACK^{header.trigger}")  # MSG.3 (message structure) came with 2.4
    _lib.assign(ack, "MSA", 3, ack_text(text))
    message = str(ack)
    if not message.isascii():  # a name or a reason beyond ASCII: say the ACK is UTF-8, as our ORU^R01 does
        _lib.assign(ack, "MSH", 18, UTF8_CHARSET)
        message = str(ack)
    return Ack(code, text, control_id, message)


def emergency_ack(code: str, text: str, now: datetime) -> Ack:
    """An ACK that reads nothing of the original: for when building the real one failed (it cannot fail)."""
    stamp = now.strftime("%Y%m%d%H%M%S") + "+0000"
    message = f"MSH|^~\\&|GLUCOBRIDGE||||{stamp}||ACK^R01^ACK|A{stamp}|P|2.5.1\rMSA|{code}||{ack_text(text)}\r"
    return Ack(code, text, "", message)


def parse_ack(text: str) -> Ack:
    """MSA-1 (code), MSA-2 (the acknowledged MSH-10) and MSA-3 plus any ERR text. Raises `AckError`."""
    try:
        message = parse_message(text)
    except Hl7ParseError as exc:
        raise AckError(f"the answer is not an HL7 message: {exc}", text) from exc
    msa = message.segment("MSA")
    if msa is None:
        raise AckError("the answer has no MSA segment", text)
    code = _READ_CODES.get(msa.component(1).strip().upper())
    if code is None:
        raise AckError(f"MSA-1 {msa.component(1)[:20]!r} is not an acknowledgment code (AA, AE, AR)", text)
    parts = [message.encoding.unescape(msa.field(3)).strip()]
    for err in message.segments_named("ERR"):
        # 2.5+: ERR-8 user message, ERR-3 HL7 error code; 2.3/2.4: ERR-1 (error code and location).
        eld = err.subcomponents(1, 4)  # 2.3 ERR-1.4 is a CE: code&text&system
        detail = err.component(8) or err.component(3, 2) or err.component(3) or (eld[1] if len(eld) > 1 else "")
        parts.append(detail.strip() or (eld[0].strip() if eld else ""))
    text_out = "; ".join(dict.fromkeys(p for p in parts if p))
    return Ack(code, text_out, msa.component(2).strip(), message.text)
