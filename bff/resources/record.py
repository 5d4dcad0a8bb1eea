"""`OutcomeRecord`: everything an outcome artefact is built from, independent of the database.

The FHIR, HL7 v2, note and PDF builders take an OutcomeRecord and nothing else, so they are pure and testable;
`bff.resources.load` makes one from a stored outcome window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bff.store.rawdata import RawDigest
from engine.catalogue import GLUCOBRIDGE_CODES

#: glucobridge's own CodeSystem (published in docs/codesystem-glucobridge.md; the catalogue's code system).
CODESYSTEM = GLUCOBRIDGE_CODES
#: Business identifiers of the resources glucobridge writes.
IDENTIFIER_SYSTEM = "https://glucobridge.example/fhir/NamingSystem/outcome-resource"


#: How a zone is known, in words (bff.store.zones).
ZONE_WORDS = {
    "cli": "set by an integration engineer",
    "ehr": "from the EHR",
    "feed": "stated by the feed",
    "site": "the site's default",
    "inferred": "inferred from the readings' UTC offsets",
    "unknown": "NOT KNOWN: days and times are UTC",
}


def idempotency_key(site: str, patient_id: str, metric: str, start_ms: int, end_ms: int, version: int) -> str:
    basis = f"{site}|{patient_id}|{metric}|{start_ms}|{end_ms}|v{version}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PriorVersion:
    """The outcome version a correction replaces."""

    version: int
    input_digest: str


@dataclass(frozen=True)
class OutcomeRecord:
    """One outcome window, as stored: what it says (`document`), what it was computed from, where it goes.

    `document` is the engine's patient document (docs/outcomes-method.md §13); `readings_ndjson` is the
    canonical NDJSON of exactly the readings used and `input_digest` its SHA-256. A record made from a materialized
    standard outcome names its raw data without holding it: `readings_ndjson` None and `raw` its stored digest
    (such a record builds artefacts that reference the raw data, never ones that carry it).
    """

    site: str
    patient_id: str  # glucobridge public id
    window_start_ms: int
    window_end_ms: int
    tz: str
    version: int
    engine_version: str
    policy: Mapping[str, Any]
    policy_hash: str
    method: str
    document: Mapping[str, Any]
    readings_ndjson: bytes | None
    input_digest: str
    created_at: datetime
    prior: PriorVersion | None = None
    patient_reference: str | None = None  # e.g. "Patient/123" at the site, when known
    patient_identifiers: tuple[tuple[str, str], ...] = ()  # (system, value) pairs
    device_key: str = ""  # the CGM model of the readings used (the main one)
    mean_unit: str = "mg/dL"  # the site's preference for the mean glucose Observation
    organization: str = "glucobridge"
    tz_source: str = "unknown"  # how the zone is known (bff.store.zones): cli | ehr | feed | site | inferred | unknown
    patient_name: str | None = None  # as the EHR or the feed names the patient
    family_name: str | None = None  # its parts, for HL7 v2 PID-5
    given_names: str | None = None
    birth_date: str | None = None  # YYYY-MM-DD
    mrn: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    raw: RawDigest | None = None  # given when readings_ndjson is None

    def __post_init__(self) -> None:
        if self.readings_ndjson is None:
            if self.raw is None:
                raise ValueError("a record without its readings' NDJSON needs their digest (raw)")
            actual = self.raw.sha256
        else:
            actual = hashlib.sha256(self.readings_ndjson).hexdigest()
        if actual != self.input_digest:
            raise ValueError(f"readings_ndjson has SHA-256 {actual}, the record says {self.input_digest}")

    @property
    def raw_digest(self) -> RawDigest:
        """The SHA-256, SHA-1 and size of the readings' canonical NDJSON."""
        if self.raw is not None:
            return self.raw
        assert self.readings_ndjson is not None  # __post_init__
        return RawDigest.of(self.readings_ndjson)

    @property
    def ndjson(self) -> bytes:
        """The readings' canonical NDJSON; a record that only names them cannot carry them."""
        if self.readings_ndjson is None:
            raise ValueError(f"the record of patient {self.patient_id} names its raw data ({self.input_digest}) "
                             "but does not hold it: build artefacts that reference it")  # fmt: skip
        return self.readings_ndjson

    @property
    def zone_text(self) -> str:
        """The zone with how it is known, for a clinician: "America/Chicago (from the EHR)"."""
        return f"{self.tz} ({ZONE_WORDS.get(self.tz_source, self.tz_source)})"

    @property
    def patient_text(self) -> str:
        """The patient as the chart names them: "Avery Quinn, born 1968-04-02, MRN 884422" (or glucobridge's id)."""
        if not self.patient_name:
            return f"glucobridge patient {self.patient_id} (name not known)"
        parts = [self.patient_name]
        if self.birth_date:
            parts.append(f"born {self.birth_date}")
        if self.mrn:
            parts.append(f"MRN {self.mrn}")
        return ", ".join(parts)

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.document["metrics"]  # type: ignore[no-any-return]

    @property
    def sufficient(self) -> bool:
        return bool(self.metrics.get("sufficient"))

    @property
    def is_correction(self) -> bool:
        return self.prior is not None

    def idempotency_key(self, metric: str, version: int | None = None) -> str:
        """Deterministic per (site, patient, metric, window, version): the basis of business identifiers."""
        v = self.version if version is None else version
        return idempotency_key(self.site, self.patient_id, metric, self.window_start_ms, self.window_end_ms, v)

    def identifier_value(self, metric: str, version: int | None = None) -> str:
        """The business identifier of a resource; `version` names an earlier version's (what a correction replaces)."""
        return f"gb-{self.idempotency_key(metric, version)}"

    @property
    def recorded(self) -> datetime:
        return self.created_at.astimezone(UTC)
