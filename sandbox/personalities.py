"""Site personalities: the vendor behaviours a site reproduces, as data.

Each site runs the same code; what differs is one `Personality`. The behaviours come from
/work/shared/reference/ehr-realities.md (sections named on each field) and are simulated, not copied: the ids,
OIDs, codes and texts are shaped like the vendors' but are the sandbox's own, except Epic's documented
"reading already exists" code 59189 and flowsheet OID.

- **epic-like**, Epic on FHIR (§1): `aud` required, PKCE S256 only, `need_patient_banner` the string "false",
  long opaque tokens, granted scopes in v1 spelling, flowsheet-only Observation writes with an open encounter,
  59189 on a replayed reading, no conditional create, no transactions, no updates, text/plain notes only,
  metadata as XML unless JSON is asked for.
- **oracle-like**, Oracle Health Millennium R4 (§2): `aud` required, no wildcard scopes, 570 s tokens, refresh
  without a new refresh token (and throttled under 60 s), Observation writes only laboratory/vital-signs with
  one category, client identifiers dropped on create, PDF DocumentReference, update with If-Match (409 when
  stale), a missing required field answered 500.
- **read-only**: a site that granted reads only (§6 `writeback_mode`): every write is 403.
- **hl7-only**: a site whose write channel is HL7 v2 (§3): FHIR reads only, writes 405; results go to the MLLP
  listener. Its CGM readings reach apps through its outbound results interface, as ORU^R01 over MLLP
  (`results_feed`, sandbox.hl7feed).
- **cgm-receiver**: a HL7 CGM IG data receiver (§5.2): `$submit-cgm-bundle`, conditional create, identifiers
  kept, transactions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class WriteMode(StrEnum):
    OPEN = "open"  # any supported type, structure-validated
    FLOWSHEET = "flowsheet"  # epic-like: vital-signs flowsheet rows and text notes
    LAB_VITALS = "lab-vitals"  # oracle-like: laboratory/vital-signs Observations and documents
    FORBIDDEN = "forbidden"  # read-only: 403
    NOT_ALLOWED = "not-allowed"  # hl7-only: 405


class IdStyle(StrEnum):
    EPIC = "epic"  # "eAb3...3": opaque, mixed case
    NUMERIC = "numeric"  # "12724066"
    UUID = "uuid"


#: Epic's flowsheet-row id system (the OID in Epic's sandbox examples, ehr-realities.md §1.6).
FLOWSHEET_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679"
#: Epic's OperationOutcome detail code for "Reading already exists" (§1.6, [3p] sandbox notes).
EPIC_DUPLICATE_READING = "59189"
EPIC_ERROR_SYSTEM = "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369"


@dataclass(frozen=True, slots=True)
class FlowsheetRow:
    """A flowsheet row the epic-like site has built, and the LOINC code mapped to it."""

    row_id: str
    name: str
    loinc: str
    unit: str


#: The rows the epic-like site "built" for CGM (each site hands over its own row ids, §1.6).
FLOWSHEET_ROWS = (
    FlowsheetRow("3040101001", "CGM sensor glucose", "99504-3", "mg/dL"),
    FlowsheetRow("3040101002", "CGM sensor glucose (mmol/L)", "105272-9", "mmol/L"),
    FlowsheetRow("3040101010", "CGM time in range 70-180 (%)", "97510-2", "%"),
    FlowsheetRow("3040101011", "CGM time below range 54-69 (%)", "104641-6", "%"),  # TBR L1 (IG timeInLow)
    FlowsheetRow("3040101012", "CGM time below range <54 (%)", "104642-4", "%"),  # TBR L2 (IG timeInVeryLow)
    FlowsheetRow("3040101013", "CGM time above range 181-250 (%)", "104640-8", "%"),
    FlowsheetRow("3040101014", "CGM time above range >250 (%)", "104639-0", "%"),
    FlowsheetRow("3040101015", "CGM mean glucose", "97507-8", "mg/dL"),
    FlowsheetRow("3040101016", "CGM mean glucose (mmol/L)", "105273-7", "mmol/L"),
    FlowsheetRow("3040101017", "CGM glucose management indicator (%)", "97506-0", "%"),
    FlowsheetRow("3040101018", "CGM coefficient of variation (%)", "104638-2", "%"),
    FlowsheetRow("3040101019", "CGM days of wear", "104636-6", "d"),
    FlowsheetRow("3040101020", "CGM sensor active time (%)", "104637-4", "%"),
)


@dataclass(frozen=True, slots=True)
class Personality:
    """How one site behaves. Field comments name the ehr-realities.md section each behaviour comes from."""

    key: str
    title: str
    vendor: str  # the EHR this one imitates, shown in the shell and the CapabilityStatement
    software_version: str
    id_style: IdStyle
    mrn_system: str
    # --- SMART (§1.1, §1.3, §2) ---
    aud_required: bool = False
    wildcard_scopes: bool = True  # Oracle: wildcard scopes are refused (§2)
    scopes_in_v1_spelling: bool = False  # Epic grants in v1 spelling whatever was asked (§1.3)
    token_ttl_s: int = 3600  # Epic about 3600 s (§1.1), Oracle 570 s (§2)
    refresh_rotates: bool = True  # a new refresh token each refresh; the old one stops working
    refresh_min_interval_s: int = 0  # Oracle: refreshing more than once a minute "may result in throttling" (§2)
    banner_as_string: bool = False  # Epic's tutorial returns need_patient_banner as the string "false" (§1.1)
    absolute_fhir_user: bool = False  # Epic's fhirUser is an absolute URL; others answer Practitioner/<id>
    long_tokens: bool = False  # Epic: launch tokens and codes may be long JWTs; never truncate (§1.1)
    authorize_post: bool = False  # Epic: POST-based authorize for EHR launches (§1.1)
    # --- FHIR (§1.6, §1.7, §2, §5.2) ---
    write_mode: WriteMode = WriteMode.OPEN
    conditional_create: bool = True  # Epic: none; If-None-Exist is ignored and the resource created (§1.6)
    transactions: bool = True  # Epic: no batch/transaction (§1.6)
    updates: bool = True  # Epic: no update/delete/patch on the write APIs (§1.6)
    if_match_required: bool = False  # Oracle: update needs If-Match (§2)
    stale_update_status: int = 412  # Oracle answers a stale If-Match with 409 (§2)
    keeps_identifiers: bool = True  # Oracle: identifier cannot be set on create; dropped (§2)
    encounter_required: bool = False  # Epic: writes need an open encounter of the patient (§1.6, §1.7)
    metadata_xml_by_default: bool = False  # Epic: metadata is XML unless JSON is asked for (§1.1)
    cgm_receiver: bool = False  # CGM IG: $submit-cgm-bundle, `instantiates` cgm-data-receiver (§5.2)
    reading_category: str = "laboratory"  # category of the seeded CGM readings (CGM IG: laboratory)
    document_types: tuple[str, ...] = ("application/pdf", "text/plain")
    # --- how the site's CGM readings reach an app (§3) ---
    #: "fhir": read or exported as Observations; "hl7v2": sent as ORU^R01 over MLLP by the site's results
    #: interface (`python -m sandbox hl7-feed`). `make demo` loads each site this way (app.demo.SITE_FEEDS).
    results_feed: str = "fhir"

    @property
    def writes(self) -> bool:
        return self.write_mode not in (WriteMode.FORBIDDEN, WriteMode.NOT_ALLOWED)


PERSONALITIES: dict[str, Personality] = {
    p.key: p
    for p in (
        Personality(
            key="epic-like",
            title="Epic-like health system",
            vendor="Epic",
            software_version="November 2024 (simulated)",
            id_style=IdStyle.EPIC,
            mrn_system="urn:oid:1.2.840.114350.1.13.999.2.7.5.737384.14",
            aud_required=True,
            scopes_in_v1_spelling=True,
            token_ttl_s=3600,
            refresh_rotates=True,
            banner_as_string=True,
            absolute_fhir_user=True,
            long_tokens=True,
            authorize_post=True,
            write_mode=WriteMode.FLOWSHEET,
            conditional_create=False,
            transactions=False,
            updates=False,
            encounter_required=True,
            metadata_xml_by_default=True,
            reading_category="vital-signs",
            document_types=("text/plain",),
        ),
        Personality(
            key="oracle-like",
            title="Oracle-Health-like medical center",
            vendor="Oracle Health Millennium",
            software_version="R4 2024.05 (simulated)",
            id_style=IdStyle.NUMERIC,
            mrn_system="urn:oid:2.16.840.1.113883.3.999.6.1",
            aud_required=True,
            wildcard_scopes=False,
            token_ttl_s=570,
            refresh_rotates=False,
            refresh_min_interval_s=60,
            write_mode=WriteMode.LAB_VITALS,
            conditional_create=True,
            transactions=False,
            if_match_required=True,
            stale_update_status=409,
            keeps_identifiers=False,
            document_types=(
                "application/pdf",
                "text/plain",
                "text/html",
                "text/rtf",
                "text/richtext",
                "application/xml",
                "application/xhtml+xml",
            ),
        ),
        Personality(
            key="read-only",
            title="Read-only clinic",
            vendor="generic FHIR R4",
            software_version="1.0 (simulated)",
            id_style=IdStyle.UUID,
            mrn_system="https://sandbox.glucobridge.example/read-only/mrn",
            write_mode=WriteMode.FORBIDDEN,
        ),
        Personality(
            key="hl7-only",
            title="HL7-v2-only hospital",
            vendor="generic FHIR R4 + HL7 v2 interface",
            software_version="1.0 (simulated)",
            id_style=IdStyle.UUID,
            mrn_system="https://sandbox.glucobridge.example/hl7-only/mrn",
            write_mode=WriteMode.NOT_ALLOWED,
            results_feed="hl7v2",
        ),
        Personality(
            key="cgm-receiver",
            title="CGM IG data receiver",
            vendor="HL7 CGM IG receiver",
            software_version="1.0 (simulated)",
            id_style=IdStyle.UUID,
            mrn_system="https://sandbox.glucobridge.example/cgm-receiver/mrn",
            cgm_receiver=True,
        ),
    )
}


def personality(site: str) -> Personality:
    """The personality of a site key; unknown keys raise KeyError naming the known ones."""
    try:
        return PERSONALITIES[site]
    except KeyError:
        raise KeyError(f"unknown site {site!r}: use one of {', '.join(PERSONALITIES)}") from None
