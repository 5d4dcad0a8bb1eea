"""HL7 v2 for glucobridge: reading, writing and moving messages, on python-hl7 (PyPI `hl7`).

- `message`: `parse_message` (python-hl7 splits; we check MSH-1/2, segment names and size limits), the typed
  `Hl7Message`/`Hl7Segment`/`Hl7Encoding`, escaping, `shown` for quoting input in reasons.
- `stream`: `iter_messages` cuts a file or byte stream into messages (MLLP frames, blank lines, MSH).
- `ack`: `build_ack` (python-hl7's `create_ack`, re-written in the standard separators) and `parse_ack`.
- The messages made of an outcome (ORU^R01, MDM^T02 and the segments they share) are outcome artefacts and live with
  the others in `bff.resources` (`oru`, `mdm`, `hl7_segments`): this package knows HL7 v2, not outcomes, so it
  imports nothing of `bff.resources` (tests/test_import_graph.py).
- `mllp`: framing and `MllpServer`, the asyncio server that answers every frame (limits in `MllpLimits`).
- `client`: `MllpClient` and `deliver`, the sending side and its retry policy.

`_lib` is the only module that imports python-hl7 (it has no type hints). The feed-facing reader of ORU^R01
sensor readings is `bff.ingest.hl7v2.Hl7v2Parser`; the MLLP feed into the store is `bff.store.mllp`.
"""

from bff.hl7.ack import Ack, AckError, build_ack, parse_ack
from bff.hl7.client import DeliveryResult, DeliveryStatus, MllpClient, MllpConnectionError, MllpError, deliver
from bff.hl7.message import (
    MAX_FIELD_CHARS,
    Hl7Encoding,
    Hl7Message,
    Hl7ParseError,
    Hl7Segment,
    parse_message,
    shown,
)
from bff.hl7.mllp import MLLP_END, MLLP_START, MllpLimits, MllpServer, frame
from bff.hl7.stream import OversizeMessage, iter_messages

__all__ = [
    "MAX_FIELD_CHARS",
    "MLLP_END",
    "MLLP_START",
    "Ack",
    "AckError",
    "DeliveryResult",
    "DeliveryStatus",
    "Hl7Encoding",
    "Hl7Message",
    "Hl7ParseError",
    "Hl7Segment",
    "MllpClient",
    "MllpConnectionError",
    "MllpError",
    "MllpLimits",
    "MllpServer",
    "OversizeMessage",
    "build_ack",
    "deliver",
    "frame",
    "iter_messages",
    "parse_ack",
    "parse_message",
    "shown",
]
