"""An MLLP server served by an event loop in a thread, and plain-socket helpers to talk to it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable

from bff.hl7 import MLLP_END, MLLP_START, Hl7Encoding, frame, parse_message


class Background:
    """Runs a server (anything with async `start(host, port)` and `close()`) on its own loop in a thread."""

    def __init__(self, server: object) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        start: Callable[[str, int], Awaitable[tuple[str, int]]] = server.start  # type: ignore[attr-defined]
        _, self.port = asyncio.run_coroutine_threadsafe(start("127.0.0.1", 0), self.loop).result(10)

    def call(self, fn: Callable[[], object]) -> object:
        """`fn()` run on the server's loop (to read its state without racing it)."""

        async def run() -> object:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        close: Callable[[], Awaitable[None]] = self.server.close  # type: ignore[attr-defined]
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def connect(port: int, timeout: float = 20) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_frame(sock: socket.socket) -> str | None:
    """One framed answer, or None when the connection closes first. Reads byte by byte, so that the ACK of a
    pipelined message that follows is left for the next call (ACKs are short)."""
    buffer = bytearray()
    while not buffer.endswith(MLLP_END):
        try:
            chunk = sock.recv(1)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buffer += chunk
    assert buffer.startswith(MLLP_START), bytes(buffer[:20])
    return bytes(buffer[1 : -len(MLLP_END)]).decode()


def exchange(sock: socket.socket, *messages: str) -> list[str]:
    """Send each message framed and read its ACK (failing when the connection closes without one)."""
    acks = []
    for message in messages:
        sock.sendall(frame(message))
        ack = read_frame(sock)
        assert ack is not None, "the connection closed without an ACK"
        acks.append(ack)
    return acks


def msa(ack: str) -> tuple[str, str, str]:
    """MSA-1, MSA-2 and MSA-3 (MSA-2 and MSA-3 unescaped) of an ACK."""
    segment = parse_message(ack).segment("MSA")
    assert segment is not None
    encoding = Hl7Encoding()
    return segment.field(1), encoding.unescape(segment.field(2)), encoding.unescape(segment.field(3))


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes the connection within `seconds` (data that comes first is read and dropped)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False
