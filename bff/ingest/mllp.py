"""An MLLP listener for HL7 v2 ORU^R01 result feeds: one message, one batch, one ACK.

Frames are `0x0B message 0x1C 0x0D`. Each message is parsed and ingested as its own batch (in a worker thread,
so the event loop keeps reading), then answered in original acknowledgment mode:

- **AA** every reading of the message was stored (or was already there);
- **AE** the message was read but some results were quarantined (MSA-3 says which and why), or the store
  failed (nothing was stored: send the message again);
- **AR** the message was rejected as a whole (not ORU^R01, malformed, no patient): it is kept in quarantine
  with the reason and should not be re-sent unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError

from bff.ingest.hl7v2 import MLLP_END, MLLP_START, Hl7Encoding, Hl7ParseError, Hl7v2Parser, parse_message
from bff.ingest.records import Feed, FeedItem, FeedProblem, ParseOptions
from bff.store.ingest import Ingestor

MAX_FRAME = 16 * 2**20


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # AA, AE or AR
    text: str
    control_id: str
    message: str  # the ACK message itself


def _field(text: str) -> str:
    """MSA-3 text: one line, separators escaped (\\F\\, \\S\\, ...), at most 200 characters before escaping."""
    return Hl7Encoding().escape_text(text.replace("\r", " ").replace("\n", " ")[:200])


def build_ack(original: str, code: str, text: str, now: datetime) -> Ack:
    """An ACK for `original` (best effort when it cannot be parsed: control id and version unknown)."""
    sending_app = sending_facility = receiving_app = receiving_facility = ""
    control_id, processing, version = "", "P", "2.5.1"
    with contextlib.suppress(Hl7ParseError, IndexError):
        message = parse_message(original)
        msh = message.msh
        sending_app, sending_facility = msh.field(3), msh.field(4)
        receiving_app, receiving_facility = msh.field(5), msh.field(6)
        control_id = message.control_id
        processing = message.processing_id or "P"
        version = message.version or "2.5.1"
    stamp = now.strftime("%Y%m%d%H%M%S") + "+0000"
    ack_id = ("A" + control_id)[:20] if control_id else "A" + hashlib.sha256(original.encode()).hexdigest()[:19]
    msg_type = "ACK^R01^ACK" if version >= "2.4" else "ACK^R01"
    segments = [
        f"MSH|^~\\&|{receiving_app or 'GLUCOBRIDGE'}|{receiving_facility}|{sending_app}|{sending_facility}|{stamp}||"
        f"{msg_type}|{ack_id}|{processing}|{version}",
        f"MSA|{code}|{control_id}|{_field(text)}",
    ]
    return Ack(code, text, control_id, "\r".join(segments) + "\r")


def frame(message: str) -> bytes:
    return MLLP_START + message.encode("utf-8") + MLLP_END


class MllpListener:
    """Ingests each framed message and answers with its ACK. `handle_message` is usable without a socket."""

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        site: str,
        options: ParseOptions | None = None,
        patient: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ingestor = ingestor
        self.site = site
        self.options = options or ParseOptions()
        self.patient = patient
        self.clock = clock
        self.server: asyncio.Server | None = None

    def handle_message(self, text: str, peer: str = "") -> Ack:
        parser = Hl7v2Parser()
        items: list[FeedItem] = list(parser.parse_text(text, self.options))
        rejected = [p for p in items if isinstance(p, FeedProblem) and _scope(p) == "message"]
        failed = [p for p in items if isinstance(p, FeedProblem) and p not in rejected]
        control_id = _control_id(text)
        try:
            report = self.ingestor.ingest_items(
                items, site=self.site, feed=Feed.HL7V2, source_name=f"mllp:{peer}:{control_id}"[:500],
                patient=self.patient, content_sha256=hashlib.sha256(text.encode()).hexdigest(),
            )  # fmt: skip
        except DBAPIError as exc:
            return build_ack(
                text, "AE", f"not stored ({type(exc.orig).__name__}): send the message again", self.clock()
            )
        if rejected:
            return build_ack(text, "AR", f"rejected: {rejected[0].reason}", self.clock())
        refused = report.quarantined
        if refused or failed:
            reasons = "; ".join(report.problems[:2])
            return build_ack(text, "AE", f"{refused} result(s) quarantined: {reasons}", self.clock())
        return build_ack(
            text, "AA", f"{report.added} reading(s) stored, {report.already_present} already present", self.clock()
        )

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while True:
                    start = buffer.find(MLLP_START)
                    if start < 0:
                        buffer = b""
                        break
                    end = buffer.find(MLLP_END, start)
                    if end < 0:
                        buffer = buffer[start:]
                        if len(buffer) > MAX_FRAME:
                            buffer = b""  # a runaway frame: drop the connection's buffer
                        break
                    body = buffer[start + 1 : end].decode("utf-8", errors="replace")
                    buffer = buffer[end + len(MLLP_END) :]
                    ack = await asyncio.to_thread(self.handle_message, body, peer)
                    writer.write(frame(ack.message))
                    await writer.drain()
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


def _scope(problem: FeedProblem) -> str:
    try:
        scope = json.loads(problem.context).get("scope", "message")
    except (ValueError, AttributeError):
        return "message"
    return str(scope)


def _control_id(text: str) -> str:
    with contextlib.suppress(Hl7ParseError, IndexError):
        return parse_message(text).control_id
    return ""
