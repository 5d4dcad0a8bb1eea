"""An MLLP client for sending HL7 v2 messages (e.g. `bff.resources.oru.build_oru`) and the delivery policy.

`MllpClient.send(message)` frames one message (0x0B … 0x1C 0x0D), sends it, reads one framed ACK and reads
MSA-1/2/3 with `bff.hl7.ack.parse_ack`. The connection is kept for the next message and closed after any
error, so an ACK that arrives late can never be read as the answer to a later message. The answer is read into
a `bytearray` (no copy per read) and refused beyond `MAX_ACK` bytes.

python-hl7's own client (`hl7.client.MLLPClient`) sends once and returns whatever one `recv` gives: no deadline,
no reassembly of an ACK that arrives in pieces, no check that it is an ACK of this message, so it is not used.

`deliver(client, message)` is the policy (original acknowledgment mode, HL7 table 0008):

- **AA** accepted: done.
- **AE** application error: *not* retried blindly. The error text (MSA-3, ERR) goes back to the caller, who may
  fix the cause (a mapping, the patient) and call again; a resend of the same logical message keeps its MSH-10.
- **AR** rejected: never retried automatically (the same message would be rejected again).
- **timeout or connection error before the ACK**: the message may or may not have been processed, so it is sent
  again, unchanged (same MSH-10; the receiver is idempotent), on a new connection, with exponential backoff, up to
  `max_attempts` attempts in all.
- **an ACK for another message** (MSA-2 is not our MSH-10) or an ACK that cannot be read: a protocol error,
  reported, not retried (something is wrong with the peer or the link, and resending would not tell us more).

Blocking sockets: run it in a worker thread (`asyncio.to_thread`) from async code.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from bff.hl7.ack import Ack, AckError, parse_ack
from bff.hl7.message import Hl7ParseError, parse_message
from bff.hl7.mllp import MLLP_END, MLLP_START, frame
from bff.hl7.stream import decode

MAX_ACK = 1 * 2**20
CHUNK = 65536


class MllpError(Exception):
    """Sending one message failed."""


class MllpConnectionError(MllpError):
    """No ACK: the connection could not be opened, broke, or the ACK did not come in time. Safe to resend."""


class DeliveryStatus(StrEnum):
    ACCEPTED = "accepted"  # AA
    ERROR = "error"  # AE: the caller may fix and send again (same MSH-10)
    REJECTED = "rejected"  # AR: do not send again unchanged
    UNDELIVERED = "undelivered"  # no ACK after max_attempts attempts
    PROTOCOL_ERROR = "protocol_error"  # an ACK for another message, or an unreadable one


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try: its number (1-based), what came back ("AA", "AE", "AR", "connection", "protocol") and why."""

    number: int
    outcome: str
    detail: str


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    status: DeliveryStatus
    control_id: str  # MSH-10 of the message sent
    ack: Ack | None  # the last ACK read, if any
    attempts: tuple[Attempt, ...]
    error: str = ""  # for the caller: MSA-3/ERR text, or the connection/protocol problem

    @property
    def delivered(self) -> bool:
        return self.status is DeliveryStatus.ACCEPTED


class MllpClient:
    """A blocking MLLP connection to one receiver; reconnects on the next `send` after an error."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def send(self, message: str) -> Ack:
        """Send one message and return its ACK (`Ack.code` AA, AE or AR; `control_id` = MSA-2).

        Raises `MllpConnectionError` when no ACK came (resend), `AckError` when the answer is not a readable ACK
        or MSA-2 is not the message's MSH-10, and ValueError when `message` itself has no MSH-10.
        """
        control_id = _control_id(message)
        try:
            try:
                sock = self._connect()
                sock.sendall(frame(message))
                raw = self._read_frame(sock)
            except OSError as exc:  # refused, reset, socket.timeout (TimeoutError)
                raise MllpConnectionError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
            ack = parse_ack(raw)
            if ack.control_id != control_id:
                raise AckError(f"the ACK is for message {ack.control_id!r}, not {control_id!r} (MSA-2)", raw)
        except (MllpError, AckError):
            self.close()
            raise
        return ack

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        return self._sock

    def _read_frame(self, sock: socket.socket) -> str:
        """One framed message; bytes before the start byte are ignored. Within `timeout_s` in all."""
        deadline = time.monotonic() + self.timeout_s
        buffer = bytearray()
        while True:
            start = buffer.find(MLLP_START)
            if start >= 0:
                end = buffer.find(MLLP_END, start)
                if end >= 0:
                    return decode(bytes(buffer[start + 1 : end]))
            if len(buffer) > MAX_ACK:
                raise AckError(f"no ACK frame in the first {MAX_ACK} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MllpConnectionError(f"no ACK within {self.timeout_s:g} s")
            sock.settimeout(remaining)
            chunk = sock.recv(CHUNK)
            if not chunk:
                raise MllpConnectionError("the connection was closed before the ACK")
            buffer += chunk


def deliver(
    client: MllpClient,
    message: str,
    *,
    max_attempts: int = 5,
    on_error: Callable[[Attempt], None] | None = None,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """Send `message` with the policy of the module docstring. Never raises for delivery problems.

    `on_error` is called with every attempt that did not end in AA (for logging or alerting), before any wait.
    Waits between connection attempts: `backoff_s`, then doubled each time, at most `max_backoff_s`.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    control_id = _control_id(message)
    attempts: list[Attempt] = []

    def done(status: DeliveryStatus, ack: Ack | None, error: str) -> DeliveryResult:
        return DeliveryResult(status, control_id, ack, tuple(attempts), error)

    def record(attempt: Attempt) -> None:
        attempts.append(attempt)
        if attempt.outcome != "AA" and on_error is not None:
            on_error(attempt)

    for number in range(1, max_attempts + 1):
        try:
            ack = client.send(message)
        except MllpConnectionError as exc:
            record(Attempt(number, "connection", str(exc)))
            if number < max_attempts:
                sleep(min(max_backoff_s, backoff_s * 2 ** (number - 1)))
            continue
        except AckError as exc:
            record(Attempt(number, "protocol", str(exc)))
            return done(DeliveryStatus.PROTOCOL_ERROR, None, str(exc))
        record(Attempt(number, ack.code, ack.text))
        if ack.code == "AA":
            return done(DeliveryStatus.ACCEPTED, ack, "")
        if ack.code == "AE":
            return done(DeliveryStatus.ERROR, ack, ack.text or "application error (AE) without a reason")
        return done(DeliveryStatus.REJECTED, ack, ack.text or "rejected (AR) without a reason")
    last = attempts[-1].detail if attempts else ""
    return done(DeliveryStatus.UNDELIVERED, None, f"no ACK after {max_attempts} attempt(s): {last}")


def _control_id(message: str) -> str:
    try:
        control_id = parse_message(message).control_id.strip()
    except Hl7ParseError as exc:
        raise ValueError(f"not an HL7 message: {exc}") from exc
    if not control_id:
        raise ValueError("the message has no MSH-10 (message control id)")
    return control_id
