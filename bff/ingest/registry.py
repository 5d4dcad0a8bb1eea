"""The parser of each feed."""

from __future__ import annotations

from bff.ingest.csv_feed import CsvParser
from bff.ingest.dexcom import DexcomParser
from bff.ingest.fhir_feed import FhirParser
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.ingest.libreview import LibreViewParser
from bff.ingest.records import Feed, Parser


def parser_for(feed: Feed | str, *, keep_payload: bool = False) -> Parser:
    """The feed's parser. Readings carry their raw text only with `keep_payload` (problems always do)."""
    kind = Feed(feed)
    parsers: dict[Feed, type[Parser]] = {
        Feed.DEXCOM: DexcomParser,
        Feed.LIBREVIEW: LibreViewParser,
        Feed.FHIR: FhirParser,
        Feed.HL7V2: Hl7v2Parser,
        Feed.CSV: CsvParser,
    }
    return parsers[kind](keep_payload=keep_payload)  # type: ignore[call-arg]
