"""MLLP: framing (`0x0B message 0x1C 0x0D`) and an asyncio server that answers every frame, whatever it holds.

`MllpServer(handler, limits=...)` reads frames and calls `handler(text, peer) -> Ack` for each message in a
worker thread (the event loop keeps reading other connections), then writes the ACK. What it guarantees:

- **Every frame gets one ACK.** An exception in the handler becomes an AE naming the error type (the log gets
  the error type, the control id and where it was raised, never the message's text); a failure to build even
  that becomes a fixed AE (`emergency_ack`). A bad message never costs the connection its next message.
- **Input that is not a frame gets an AR, then the connection is closed**: bytes other than whitespace before the
  start byte 0x0B (the AR names the byte), a frame over `max_frame_bytes` (its buffer is released at once), or
  a frame left unfinished for `idle_timeout_s`. After such an AR the server half-closes and reads and drops what
  the peer still sends for up to `LINGER_S`, so a peer that is still sending can read the AR before the close.
- **Idle and half-open connections are closed** after `idle_timeout_s` without a byte (or without the peer
  reading its ACK).
- **At most `max_connections` connections**: one more is closed as soon as it is accepted (and logged).
- **Bounded memory**: a connection holds at most one frame, in a `bytearray` that grows by appending (linear,
  no copy per read) up to `max_frame_bytes` plus one read; asyncio's reader stops reading from the socket while
  its own buffer is full.

Why not python-hl7's `hl7.mllp` (`start_hl7_server`, `HL7StreamReader.readblock`): its reader checks the start
byte only once it has found an end block, so a sender that never frames (and never sends 0x1C 0x0D) waits until
the limit or for ever, which is the hang this server must not have; it has no idle timeout or connection cap;
`readmessage` decodes strict ASCII and parses with `hl7.parse`, raising on what we must answer. The framing
here is the same MLLP, on asyncio's own StreamReader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bff.hl7.ack import Ack, build_ack, control_id_guess, emergency_ack
from bff.hl7.stream import decode

MLLP_START: Final = b"\x0b"
MLLP_END: Final = b"\x1c\r"
READ_CHUNK: Final = 64 * 1024
#: How long, after an AR that ends a connection, the server keeps reading (and dropping) what the peer sends.
LINGER_S: Final = 1.0
#: Bytes of a refused frame kept to address the AR (its MSH).
_HEAD_BYTES: Final = 4096
_NOT_WHITESPACE = re.compile(rb"[^ \t\r\n]")

log = logging.getLogger("glucobridge.mllp")

Handler = Callable[[str, str], Ack]


def frame(message: str) -> bytes:
    """One message framed for MLLP (UTF-8)."""
    return MLLP_START + message.encode("utf-8") + MLLP_END


@dataclass(frozen=True, slots=True)
class MllpLimits:
    """The server's limits: idle seconds before a connection is closed, concurrent connections, frame bytes."""

    idle_timeout_s: float = 60.0
    max_connections: int = 100
    max_frame_bytes: int = 8 * 2**20

    def __post_init__(self) -> None:
        if not self.idle_timeout_s > 0:
            raise ValueError(f"the idle timeout must be above 0 s, got {self.idle_timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"the connection cap must be at least 1, got {self.max_connections}")
        if self.max_frame_bytes < 1024:
            raise ValueError(f"the frame size limit must be at least 1024 bytes, got {self.max_frame_bytes}")


class _ClosedError(Exception):
    """The connection is over (the peer closed it, it idled out, or it was refused)."""


class MllpServer:
    """The asyncio MLLP server of the module docstring. `start` binds, `close` stops and closes connections."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: MllpLimits | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.handler = handler
        self.limits = limits or MllpLimits()
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections closed at once because of the cap

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._connections)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (0 for any free port); returns the address bound."""
        self._server = await asyncio.start_server(self._accept, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        """Stop listening and close every connection (a message being handled in a thread finishes there)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # MARK: one connection

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer(writer)
        task = asyncio.current_task()
        if task is None or len(self._connections) >= self.limits.max_connections:
            self.refused += 1
            log.warning("MLLP connection from %s closed: %d connections open (limit %d)", peer,
                        len(self._connections), self.limits.max_connections)  # fmt: skip
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, peer)
        except _ClosedError:
            pass
        except (ConnectionError, OSError) as exc:
            log.info("MLLP connection from %s ended: %s", peer, type(exc).__name__)
        except Exception as exc:  # a bug here must end one connection, never the server
            log.error("MLLP connection from %s ended by an internal error %s at %s", peer, type(exc).__name__,
                      _where(exc))  # fmt: skip
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        """The next bytes; raises `_ClosedError` at the end of the stream or after the idle timeout."""
        try:
            data = await asyncio.wait_for(reader.read(READ_CHUNK), self.limits.idle_timeout_s)
        except TimeoutError:
            raise _ClosedError("idle") from None
        if not data:
            raise _ClosedError("end of stream")
        return data

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        limits = self.limits
        buffer = bytearray()
        scan = 1  # where the search for the end of the frame resumes
        while True:
            if not buffer or buffer[0] != MLLP_START[0]:
                start = _NOT_WHITESPACE.search(buffer)
                if start is None:  # nothing, or whitespace between frames
                    buffer.clear()
                    try:
                        buffer += await self._read(reader)
                    except _ClosedError as closed:
                        log.debug("MLLP connection from %s closed (%s)", peer, closed)
                        return
                    continue
                del buffer[: start.start()]
                if buffer[0] != MLLP_START[0]:
                    head = bytes(buffer[:_HEAD_BYTES])
                    buffer.clear()
                    reason = (f"not an MLLP frame: the data starts with byte 0x{head[0]:02X} where the start byte "
                              "0x0B was expected; wrap each message in 0x0B ... 0x1C 0x0D")  # fmt: skip
                    await self._refuse(reader, writer, peer, head, reason)
                    return
            end = buffer.find(MLLP_END, scan)
            if end < 0 and len(buffer) - 1 <= limits.max_frame_bytes:
                scan = max(1, len(buffer) - 1)
                try:
                    buffer += await self._read(reader)
                except _ClosedError as closed:
                    if str(closed) == "idle":
                        head = bytes(buffer[1:_HEAD_BYTES])
                        size = len(buffer) - 1
                        buffer.clear()
                        reason = (f"incomplete frame: no end bytes 0x1C 0x0D after {size} bytes and "
                                  f"{limits.idle_timeout_s:g} s without data")  # fmt: skip
                        await self._refuse(reader, writer, peer, head, reason)
                    else:
                        log.info("MLLP connection from %s closed inside a frame (%d bytes)", peer, len(buffer) - 1)
                    return
                continue
            if end < 0 or end - 1 > limits.max_frame_bytes:
                head = bytes(buffer[1:_HEAD_BYTES])
                buffer.clear()  # released before the answer, whatever the peer does next
                reason = (f"frame too large: over {limits.max_frame_bytes} bytes (the limit); send smaller "
                          "messages")  # fmt: skip
                await self._refuse(reader, writer, peer, head, reason)
                return
            body = bytes(buffer[1:end])
            del buffer[: end + len(MLLP_END)]
            scan = 1
            ack = await asyncio.to_thread(self._answer, body, peer)
            writer.write(frame(ack.message))
            await self._drain(writer)

    def _answer(self, body: bytes, peer: str) -> Ack:
        """The handler's ACK; an AE when the handler fails (in a worker thread)."""
        text = decode(body)
        try:
            ack = self.handler(text, peer)
        except Exception as exc:
            control_id = control_id_guess(text)
            log.error("MLLP message %s from %s: the handler failed with %s at %s; answered AE", control_id or "?",
                      peer, type(exc).__name__, _where(exc))  # fmt: skip
            reason = (f"glucobridge failed on this message (internal error {type(exc).__name__}, logged with its "
                      "control id): take it as not stored and send it again once the cause is fixed")  # fmt: skip
            return self._ack(text, "AE", reason)
        log.info("MLLP message %s from %s: %s", ack.control_id or "?", peer, ack.code)
        return ack

    def _ack(self, original: str, code: str, reason: str) -> Ack:
        try:
            return build_ack(original, code, reason, self.clock())
        except Exception as exc:
            log.error("MLLP: building an ACK failed with %s at %s", type(exc).__name__, _where(exc))
            return emergency_ack(code, reason, datetime.now(UTC))

    async def _refuse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str, head: bytes, reason: str
    ) -> None:
        """Answer AR for input that is not a usable frame, then let the peer read it and close."""
        ack = self._ack(decode(head), "AR", reason)
        log.warning("MLLP connection from %s: AR and close: %s", peer, reason)
        writer.write(frame(ack.message))
        await self._drain(writer)
        if writer.can_write_eof():
            writer.write_eof()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(LINGER_S, self.limits.idle_timeout_s)
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            while (remaining := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(reader.read(READ_CHUNK), remaining):
                    break

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        """Wait until the peer takes the ACK; one that does not read for the idle timeout is closed."""
        try:
            await asyncio.wait_for(writer.drain(), self.limits.idle_timeout_s)
        except TimeoutError:
            raise _ClosedError("the peer does not read its ACKs") from None


def _peer(writer: asyncio.StreamWriter) -> str:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address or "?")


def _where(exc: BaseException) -> str:
    """Where an exception was raised (file:line in function, innermost last), without its message (PHI)."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    return " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}" for f in reversed(frames))
