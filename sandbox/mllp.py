"""An ACK-only MLLP listener: the HL7 v2 result interface of the hl7-only site (ehr-realities.md §3).

It stands in for an Epic Bridges / Cerner OpenEngine inbound ORU^R01 interface: each frame
(`0x0B message 0x1C 0x0D`) is answered in original acknowledgment mode with `MSA|AA|<MSH-10>` (or the code
given with `--ack`, to rehearse AE/AR handling); MSH-3..6 are swapped into the ACK's MSH and MSH-11/12 echoed.
Nothing is parsed beyond MSH, PID-3 and counting OBX segments, which are reported to `on_message` (the
shell lists them for the hl7-only site). It is self-contained on purpose: a site's listener is not our
ingestion (bff.ingest.mllp), only something to send to.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

START, END = b"\x0b", b"\x1c\r"
MAX_FRAME = 16 * 2**20


def _fields(segment: str) -> list[str]:
    return segment.split("|")


def summarize(message: str) -> dict[str, Any]:
    """MSH type, control id, version, PID-3 and the OBX count of a message (empty strings when absent)."""
    segments = [s for s in message.replace("\n", "\r").split("\r") if s]
    msh = _fields(segments[0]) if segments and segments[0].startswith("MSH") else []
    pid = next((_fields(s) for s in segments if s.startswith("PID")), [])

    def field(values: list[str], n: int) -> str:
        return values[n] if len(values) > n else ""

    # MSH-1 is the separator itself, so MSH-n is at index n - 1 of the split.
    return {
        "sending_app": field(msh, 2),
        "sending_facility": field(msh, 3),
        "receiving_app": field(msh, 4),
        "receiving_facility": field(msh, 5),
        "type": field(msh, 8),
        "control_id": field(msh, 9),
        "processing": field(msh, 10) or "P",
        "version": field(msh, 11) or "2.5.1",
        "patient": field(pid, 3).split("^")[0],
        "obx": sum(1 for s in segments if s.startswith("OBX")),
    }


def build_ack(message: str, code: str = "AA", now: datetime | None = None) -> str:
    info = summarize(message)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S") + "+0000"
    text = {"AA": "accepted", "AE": "application error (sandbox)", "AR": "rejected (sandbox)"}.get(code, "")
    msh = [
        "MSH", "^~\\&", info["receiving_app"] or "SANDBOX-EHR", info["receiving_facility"], info["sending_app"],
        info["sending_facility"], stamp, "", "ACK^R01^ACK", "ACK" + info["control_id"][:17], info["processing"],
        info["version"],
    ]  # fmt: skip
    return "|".join(msh) + "\r" + f"MSA|{code}|{info['control_id']}|{text}\r"


class AckListener:
    """Answers every framed message with an ACK; `on_message(summary)` is told about each one."""

    def __init__(self, code: str = "AA", on_message: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.code = code
        self.on_message = on_message
        self.server: asyncio.Server | None = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while (start := buffer.find(START)) >= 0 and (end := buffer.find(END, start)) >= 0:
                    message = buffer[start + 1 : end].decode("utf-8", errors="replace")
                    buffer = buffer[end + len(END) :]
                    summary = summarize(message)
                    summary |= {"ack": self.code, "received": datetime.now(UTC).isoformat(timespec="seconds")}
                    if self.on_message is not None:
                        self.on_message(summary)
                    writer.write(START + build_ack(message, self.code).encode() + END)
                    await writer.drain()
                if len(buffer) > MAX_FRAME:
                    buffer = b""
        except (ConnectionResetError, BrokenPipeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                await writer.wait_closed()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._connection, host, port)
        address = self.server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def serve(host: str, port: int, code: str = "AA") -> None:
    """Run a listener until cancelled, printing one line per message."""

    def report(summary: dict[str, Any]) -> None:
        print(
            f"{summary['received']} {summary['type'] or '?'} {summary['control_id'] or '-'} "
            f"PID-3={summary['patient'] or '-'} OBX={summary['obx']} → {code}",
            flush=True,
        )

    listener = AckListener(code, report)
    bound_host, bound_port = await listener.start(host, port)
    print(f"MLLP listener at {bound_host}:{bound_port} (ACK {code})", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await listener.close()
