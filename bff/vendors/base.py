"""What a vendor profile is: the rules one EHR vendor (or one kind of site) imposes, as data plus a few methods.

A profile owns everything that differs between vendors and is not the site's own choice:

- **launch**: the token lifetime to assume when a token response has no `expires_in`, the launch quirks that are on
  unless the site's file lists its own (`QUIRKS`), whether an EHR launch is expected to carry an encounter, the
  least time between two refreshes of one launch;
- **read rules**: which Observations are CGM sensor readings (the catalogue's LOINC codes, plus a site's
  flowsheet rows) and the FHIR searches that fetch them (`cgm_search`);
- **write rules**: the shape the results take (`ResultsShape`), whether writes need an open encounter, whether a
  note needs the site's note type, whether transaction Bundles are taken, the Encounter statuses of an open visit;
- **Backend Services**: the default system scopes (in SMART v1 or v2 syntax) for what the site's matrix allows;
- **retry quirks**: answers that mean "already there" (Epic's 59189) or "refused" (Oracle's 500 `required`).

Profiles never read files and do no I/O. The site's file chooses the vendor (`vendor = "epic"`) and may override
the defaults a profile gives (the quirks, `[launch] encounter_expected`, `[rate_limit] refresh_min_interval_s`,
`[token] expected_lifetime_s`, `[backend] scopes`); `bff.vendors.profile_for(caps)` binds a profile to a site.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlencode

from engine.catalogue import LOINC, READING_UNITS

OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


# MARK: what a profile reads of a site's matrix

# The capability matrix (bff.capabilities.SiteCapabilities) is built from these profiles, so they cannot import it:
# they read it through these views of the parts they use, which SiteCapabilities satisfies (mypy checks it where
# the matrix is passed in). An enum of the matrix is read as its text value (a StrEnum is a str).


class _Valued(Protocol):
    @property
    def value(self) -> str: ...


class _WriteView(Protocol):
    @property
    def mode(self) -> _Valued: ...
    @property
    def channel(self) -> _Valued: ...
    @property
    def writes(self) -> bool: ...
    @property
    def flowsheet_system(self) -> str: ...
    @property
    def encounter_policy(self) -> str: ...


class _ReadView(Protocol):
    @property
    def category(self) -> str: ...
    @property
    def flowsheet_rows(self) -> Mapping[str, str]: ...


class _FhirView(Protocol):
    @property
    def version(self) -> _Valued: ...


class _LaunchView(Protocol):
    @property
    def quirks(self) -> tuple[str, ...]: ...


class _BackendView(Protocol):
    @property
    def scopes(self) -> tuple[str, ...] | None: ...
    @property
    def scope_version(self) -> str: ...


class SiteMatrix(Protocol):
    """What a vendor profile reads of a site's effective capability matrix."""

    @property
    def key(self) -> str: ...
    @property
    def vendor(self) -> Vendor: ...
    @property
    def write(self) -> _WriteView: ...
    @property
    def read(self) -> _ReadView: ...
    @property
    def fhir(self) -> _FhirView: ...
    @property
    def launch(self) -> _LaunchView: ...
    @property
    def backend(self) -> _BackendView: ...


class Vendor(StrEnum):
    """The `vendor` of a site file: which profile applies."""

    EPIC = "epic"
    ORACLE = "oracle"
    GENERIC = "generic"
    CGM_IG_RECEIVER = "cgm-ig-receiver"
    HL7V2 = "hl7v2"


class ResultsShape(StrEnum):
    """How an outcome's results are written (`bff.broker.plan` has one builder per shape)."""

    FLOWSHEET_ROWS = "flowsheet_rows"  # one vital-signs Observation per mapped flowsheet row, one create each
    SINGLE_OBSERVATIONS = "single_observations"  # one Observation per metric, one create each
    TRANSACTION = "transaction"  # one transaction Bundle, conditional creates on our identifiers
    CGM_SUBMISSION = "cgm_submission"  # the CGM IG's `$submit-cgm-bundle`
    HL7_ORU = "hl7_oru"  # one ORU^R01 over MLLP


#: Every launch/retry quirk a site may list in `[launch] quirks`, and what it does. Any other name is refused.
QUIRKS: Mapping[str, str] = {
    "dedupe_59189": 'a 400 whose OperationOutcome has detail code 59189 ("reading already exists", Epic) confirms '
    "the write instead of failing it",
    "no_wildcard_scopes": "wildcard scopes (`*`) are never requested: a site file listing one is refused and "
    "Backend Services scopes are listed per resource (Oracle Health)",
    "required_field_500": "a 500 whose OperationOutcome issue code is `required` (a missing field, Oracle Health) "
    "is a refusal (failed), not an unknown outcome",
    "authorize_post": "an EHR launch is sent to authorize as a form POST when the server offers `authorize-post` "
    "(Epic advises it: launch tokens can make the URL too long); without it, POST only for a URL over 2000 characters",
}

#: Quirk names that once meant something and are now how every site is treated: refused, with the reason.
ALWAYS_ON: Mapping[str, str] = {
    "need_patient_banner_string": 'need_patient_banner is read as a JSON boolean or the string "true"/"false" at '
    "every site (Epic sends a string)",
    "refresh_keeps_refresh_token": "a refresh answer without a new refresh token keeps the old one at every site "
    "(Oracle Health sends none)",
}

#: The catalogue's CGM sensor reading codes, as (system, code) -> unit.
READING_CODES: Mapping[tuple[str, str], str] = {(LOINC, code): unit for code, unit in READING_UNITS.items()}

_V1_OPS = {"rs": "read", "crs": "write", "c": "write"}
_RESOURCE_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]*)\.([a-z*]+)(\?\S*)?")


def scope_syntax_ok(scope: str) -> bool:
    """Whether a resource scope is well-formed SMART v1 (`.read`, `.write`, `.*`) or v2 (`.cruds` letters in
    order, once each, optionally `?query`). Scopes without a `/` (openid, launch, offline_access) are not checked."""
    if "/" not in scope or scope.startswith("launch/"):
        return True
    match = _RESOURCE_SCOPE.fullmatch(scope)
    if match is None:
        return False
    ops, query = match.group(3), match.group(4)
    if ops in ("read", "write", "*"):
        return query is None
    return bool(ops) and ops == "".join(c for c in "cruds" if c in ops) and len(set(ops)) == len(ops)


def has_wildcard(scope: str) -> bool:
    match = _RESOURCE_SCOPE.fullmatch(scope)
    return match is not None and (match.group(2) == "*" or match.group(3) == "*")


def system_scopes(
    reads: Sequence[str], creates: Sequence[str], version: str, updates: Sequence[str] = ()
) -> tuple[str, ...]:
    """`system/` scopes to read (and search) `reads`, to create (and read back) `creates`, and also to update
    `updates` (a transaction's PUTs), in SMART v1 or v2 syntax."""
    out: dict[str, None] = {}
    written = [*creates, *(t for t in updates if t not in creates)]
    for rtype in reads:
        if rtype not in written:
            out[f"system/{rtype}.{'read' if version == 'v1' else 'rs'}"] = None
    for rtype in written:
        if version == "v1":
            out[f"system/{rtype}.read"] = None
            out[f"system/{rtype}.write"] = None
        else:
            out[f"system/{rtype}.{'crus' if rtype in updates else 'crs'}"] = None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class FhirSearch:
    """One FHIR search to run against the site's FHIR base: `GET {base}/{resource_type}?{params}`."""

    resource_type: str
    params: tuple[tuple[str, str], ...]

    def query(self) -> str:
        """The query string, every value percent-encoded (`code=http%3A%2F%2Floinc.org%7C99504-3`)."""
        return urlencode(self.params)

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}/{self.resource_type}?{self.query()}"


def _fhir_instant(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("cgm_search needs an aware datetime")
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _patient_id(patient: str) -> str:
    return patient.removeprefix("Patient/")


@dataclass(frozen=True, slots=True)
class VendorProfile:
    """One vendor's rules (see the module docstring). The defaults are those of a generic SMART R4 server."""

    vendor: Vendor
    title: str
    # --- launch ---
    token_lifetime_s: int = 3600
    quirks: frozenset[str] = frozenset()
    encounter_expected: bool = False
    refresh_min_interval_s: int = 0
    # --- reads ---
    reading_category: str = "laboratory"
    # --- writes ---
    results: ResultsShape = ResultsShape.TRANSACTION
    encounter_required: bool = False  # a write needs an open encounter of the patient
    note_needs_type: bool = False  # in `full` mode the note is written only when the site names its note type
    takes_transactions: bool = True
    takes_submission: bool = False  # `$submit-cgm-bundle`
    observations_are_flowsheet_rows: bool = False  # every Observation written must name a mapped row
    pdf_path: str = "none"  # how the vendor takes the AGP PDF when the site says nothing else (`site probe`)
    open_encounter_statuses: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"R4": ("in-progress", "arrived", "triaged", "onleave"), "R5": ("in-progress",)}
    )
    # --- Backend Services ---
    backend_scope_version: str = "v2"
    backend_scopes_needed: bool = True  # False: the EHR grants by registration and wants no scope (Epic)
    # --- `glucobridge site probe`: a CapabilityStatement whose software/publisher matches names this vendor ---
    probe_pattern: str = ""

    def __post_init__(self) -> None:
        unknown = self.quirks - set(QUIRKS)
        if unknown:
            raise ValueError(f"profile {self.vendor}: unknown quirks {sorted(unknown)}")

    # MARK: reads

    def reading_codes(self, caps: SiteMatrix) -> dict[tuple[str, str], str]:
        """Every (system, code) that makes an Observation a CGM sensor reading at this site -> its unit: the
        catalogue's LOINC codes, plus the site's reading rows (`[read] flowsheet_rows`, unit -> row id)."""
        codes = dict(READING_CODES)
        system = caps.write.flowsheet_system
        if system:
            for unit, row in caps.read.flowsheet_rows.items():
                codes[(system, row)] = unit
        return codes

    def cgm_search(self, caps: SiteMatrix, patient: str, since: datetime) -> tuple[FhirSearch, ...]:
        """The searches that fetch a patient's CGM sensor readings taken at or after `since` (aware)."""
        codes = ",".join(f"{system}|{code}" for system, code in self.reading_codes(caps))
        params = [("patient", _patient_id(patient)), ("code", codes), ("date", f"ge{_fhir_instant(since)}")]
        category = caps.read.category
        if category != "any":
            params.insert(1, ("category", f"{OBSERVATION_CATEGORY}|{category}"))
        return (FhirSearch("Observation", tuple(params)),)

    def open_visit_search(self, caps: SiteMatrix, patient: str) -> FhirSearch:
        """The search for a patient's open visits (`[write] encounter_policy = "open_visit_lookup"`)."""
        statuses = self.open_encounter_statuses.get(caps.fhir.version.value) or self.open_encounter_statuses["R4"]
        return FhirSearch("Encounter", (("patient", _patient_id(patient)), ("status", ",".join(statuses))))

    # MARK: Backend Services

    def backend_scopes(self, caps: SiteMatrix) -> tuple[str, ...]:
        """The system scopes a Backend Services token asks for at this site: `[backend] scopes` when the file
        lists them, else what the matrix needs (reads; creates only when the site is written over FHIR)."""
        if caps.backend.scopes is not None:
            return caps.backend.scopes
        if not self.backend_scopes_needed:
            return ()
        version = caps.backend.scope_version or self.backend_scope_version
        reads = ["Patient", "Observation"]
        if caps.write.encounter_policy == "open_visit_lookup":
            reads.append("Encounter")
        creates: list[str] = []
        updates: list[str] = []
        if caps.write.writes and caps.write.channel.value == "fhir":
            creates, updates = self.written_types(caps)
            bundles = self.results in (ResultsShape.TRANSACTION, ResultsShape.CGM_SUBMISSION)
            if bundles and caps.write.mode.value != "notes_only" and "no_wildcard_scopes" not in caps.launch.quirks:
                # A transaction (or a submission) is one POST to the base that writes several types, and servers
                # check it against `*` (sekmet-fhir does): ask for the wildcard where the site takes wildcards.
                return ("system/*.read", "system/*.write") if version == "v1" else ("system/*.crus",)
        return system_scopes(reads, creates, version, updates)

    def written_types(self, caps: SiteMatrix) -> tuple[list[str], list[str]]:
        """The resource types a FHIR write to this site creates, and those it also updates (PUT in a transaction),
        for the default Backend Services scopes."""
        mode = caps.write.mode.value
        creates: list[str] = []
        updates: list[str] = []
        if mode != "notes_only":
            creates.append("Observation")
        if mode in ("notes_only", "full"):
            creates.append("DocumentReference")
        if mode != "notes_only" and self.results in (ResultsShape.TRANSACTION, ResultsShape.CGM_SUBMISSION):
            creates += ["Device", "Provenance"]
            if "DocumentReference" not in creates:
                creates.append("DocumentReference")  # the raw readings travel as a document
            if mode == "full":
                creates.append("DiagnosticReport")
            if self.results is ResultsShape.TRANSACTION:
                updates += ["Binary", "Provenance"]  # PUT with our ids: a resend changes nothing
        return creates, updates


def answer_is_duplicate(quirks: Collection[str], status: int | None, body: Any) -> bool:
    """Whether an error answer means the write is already there (quirk `dedupe_59189`: Epic's 400 with detail code
    59189, "Reading already exists")."""
    return "dedupe_59189" in quirks and status == 400 and _has_detail_code(body, "59189")


def answer_is_refusal(quirks: Collection[str], status: int | None, body: Any) -> bool:
    """Whether a 500 is in fact a refusal, certain not to have been applied (quirk `required_field_500`: Oracle
    Health answers a missing required field with 500 and an OperationOutcome issue `required`)."""
    return "required_field_500" in quirks and status == 500 and _has_issue_code(body, "required")


def _issues(body: Any) -> list[Mapping[str, Any]]:
    if not isinstance(body, Mapping) or body.get("resourceType", "OperationOutcome") != "OperationOutcome":
        return []
    issues = body.get("issue")
    return [i for i in issues if isinstance(i, Mapping)] if isinstance(issues, list) else []


def _has_detail_code(body: Any, code: str) -> bool:
    for issue in _issues(body):
        details = issue.get("details")
        codings = details.get("coding") if isinstance(details, Mapping) else None
        if isinstance(codings, list) and any(
            isinstance(c, Mapping) and str(c.get("code", "")) == code for c in codings
        ):
            return True
    return False


def _has_issue_code(body: Any, code: str) -> bool:
    return any(issue.get("code") == code for issue in _issues(body))


__all__ = [
    "ALWAYS_ON",
    "OBSERVATION_CATEGORY",
    "QUIRKS",
    "READING_CODES",
    "FhirSearch",
    "ResultsShape",
    "Vendor",
    "VendorProfile",
    "answer_is_duplicate",
    "answer_is_refusal",
    "has_wildcard",
    "scope_syntax_ok",
    "system_scopes",
]
