"""The MLLP feed into the store: HL7 v2 ORU^R01 results, one message, one batch, one ACK.

`MllpListener` serves `bff.hl7.MllpServer` (framing, limits, an ACK for every frame whatever happens) with
`handle_message`, which parses the message with `bff.ingest.hl7v2.Hl7v2Parser`, ingests it as its own batch (in
a worker thread, so the event loop keeps reading) and answers in original acknowledgment mode:

- **AA** every reading of the message was stored (or was already there);
- **AE** the message was read but some results were quarantined (MSA-3 says which and why), or the store
  failed (nothing was stored: send the message again), or glucobridge failed on it (the server's answer);
- **AR** the message was rejected as a whole (not ORU^R01, malformed, no patient, too large): it is kept in
  quarantine with the reason and should not be re-sent unchanged. Input that is not a frame at all is answered
  AR by the server, and the connection closed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import DBAPIError

from bff.hl7 import Ack, MllpLimits, MllpServer, build_ack
from bff.hl7.ack import control_id_guess
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.ingest.records import Feed, FeedItem, FeedProblem, ParseOptions
from bff.store.ingest import Ingestor


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
        limits: MllpLimits | None = None,
        site_zone: str | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.site = site
        self.site_zone = site_zone
        self.options = options or ParseOptions()
        self.patient = patient
        self.clock = clock
        self.server = MllpServer(self.handle_message, limits=limits, clock=clock)

    def handle_message(self, text: str, peer: str = "") -> Ack:
        parser = Hl7v2Parser()
        items: list[FeedItem] = list(parser.parse_text(text, self.options))
        rejected = [p for p in items if isinstance(p, FeedProblem) and _scope(p) == "message"]
        failed = [p for p in items if isinstance(p, FeedProblem) and p not in rejected]
        control_id = control_id_guess(text)
        try:
            report = self.ingestor.ingest_items(
                items, site=self.site, feed=Feed.HL7V2, source_name=f"mllp:{peer}:{control_id}"[:500],
                patient=self.patient, content_sha256=hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
                site_zone=self.site_zone, feed_zone=self.options.input_tz,
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

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self.server.start(host, port)

    async def close(self) -> None:
        await self.server.close()


def _scope(problem: FeedProblem) -> str:
    try:
        scope = json.loads(problem.context).get("scope", "message")
    except (ValueError, AttributeError):
        return "message"
    return str(scope)
