"""The capability matrix: what each EHR site can do, from `sites/NAME.toml` plus audited run-time overrides.

`bff.sitefile` reads the file (the one reader of site files, for this matrix and for the SMART client); vendor
defaults come from the vendor's profile (`bff.vendors`). Every key is checked: unknown keys, wrong types and wrong
values are errors naming the file, the table and the key. Every key a site file may hold is below; the block is
itself a valid site file, and tests/capabilities/test_site_keys.py proves what each key does (or that it is
refused). Alternatives are in comments (`or:`); secrets are never in the file, only where to find them.

    version = 1                          # required: the file's own version number (bump it on every change)
    vendor = "epic"                      # epic | oracle | generic | cgm-ig-receiver | hl7v2 (its bff/vendors profile)
    time_zone = "America/Chicago"        # IANA zone of the site's patients when nothing more specific is known

    [smart]                              # the user launch (SMART App Launch), as the site registered the app
    iss = "https://fhir.example.org/api/FHIR/R4"   # the launch's iss must be exactly this
    client_id = "0f7c-prod"              # this site's client id (Epic: one per customer and environment)
    redirect_uri = "https://cgm.example.org/callback"     # default: APP_PUBLIC_URL/callback
    scopes = ["launch", "openid", "fhirUser", "patient/Observation.rs"]   # SMART v1 or v2 syntax
    frame_ancestors = ["https://hyperdrive.example.org"]  # origins allowed to frame the app (CSP)
    client_auth = "private_key_jwt"      # none (public) | client_secret_basic | client_secret_post | private_key_jwt
    private_key_file = "/run/keys/launch.pem"   # or: private_key_env = "NAME" (the PEM in an environment variable)
    kid = "launch-1"                     # the key's id (JWT header; the app's JWKS publishes it)
    alg = "ES384"                        # RS384 | ES384
    jku = "https://cgm.example.org/.well-known/jwks.json"  # sent as the assertion's jku header
    # with client_auth = "client_secret_basic" or "client_secret_post":
    #   client_secret_env = "NAME"       or: client_secret_file = "/run/secrets/site"
    authorization_endpoint = "https://fhir.example.org/oauth2/authorize"   # overrides smart-configuration
    token_endpoint = "https://fhir.example.org/oauth2/token"               # overrides smart-configuration

    [backend]                            # SMART Backend Services; absent keys: the deployment's SMART_BACKEND_*
    client_id = "0f7c-backend-prod"
    key_file = "/run/keys/backend.pem"   # or: key_env = "NAME"
    kid = "backend-1"
    alg = "ES384"                        # RS384 | ES384
    jku = "https://cgm.example.org/.well-known/jwks.json"
    token_endpoint = "https://fhir.example.org/oauth2/token"   # default: [smart] token_endpoint, else discovery
    scopes = ["system/Observation.read", "system/Observation.write"]   # default: the vendor's, for the matrix
    scope_version = "v1"                 # v1 | v2: the syntax of the default scopes (default: the vendor's)

    [fhir]
    version = "R4"                       # R4 | R5
    iss_allow = ["https://fhir-alt.example.org/api/FHIR/R4"]   # further iss values the site launches from
    cgm_ig_receiver = false              # older spelling of vendor = "cgm-ig-receiver" (must agree with vendor)

    [write]
    mode = "full"                        # read_only | flowsheet_only | notes_only | observations | full
    channel = "fhir"                     # fhir | hl7v2 | none
    observation_category = "vital-signs" # vital-signs | laboratory
    note_type = "cgm-summary"            # the site's note type id ("" none); also the MDM^T02 document type
    encounter_policy = "open_visit_lookup"   # launch | open_visit_lookup | hl7_creates | none
    pdf_path = "hl7_mdm"                 # cerner_docref | hl7_ed | hl7_mdm | none (hl7_*: needs [hl7v2])
    flowsheet_system = "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679"   # the code system of the site's row ids
    glucose_unit = "mg/dL"               # the unit glucose concentrations are filed in: mg/dL | mmol/L
    [write.flowsheet_rows]               # metric (a key of engine.catalogue with a code) -> flowsheet row id
    tir = "3040100123"

    [read]                               # which Observations are the site's CGM readings (bff.vendors cgm_search)
    category = "vital-signs"             # vital-signs | laboratory | any (default: the vendor's)
    flowsheet_rows = { "mg/dL" = "3040100100" }   # reading unit -> the site's row id (needs flowsheet_system)

    [hl7v2]                              # needed when write.channel = "hl7v2" or pdf_path is hl7_ed / hl7_mdm
    host = "10.0.0.5"
    port = 2575
    version = "2.5.1"                    # 2.5.1 | 2.3
    sending_facility = "GLUCOBRIDGE"
    receiving_application = "EPIC"
    receiving_facility = "HOSPITAL"

    [bulk]                               # read by the Bulk Data client (bff/bulk)
    available = false
    group_ids = []
    params = {}                          # extra $export parameters (string -> string)
    max_concurrent = 1
    poll_floor_s = 30
    run_window = ""                      # "HH:MM-HH:MM" local to the site, "" any time

    [rate_limit]
    rps = 5.0                            # writes per second to the site (the outbox's token bucket)
    burst = 10
    refresh_min_interval_s = 60          # the least time between two refreshes of one launch (default: vendor's)

    [token]
    expected_lifetime_s = 3600           # assumed when a token response has no expires_in (default: vendor's)

    [corrections]                        # a new outcome version after sign-off (a backfill)
    resign_pp = 5.0                      # a band (TIR, TAR, TBR) moving this many percentage points needs a new
    resign_tbr_pp = 1.0                  #   sign-off; below range is stricter; so is the mean glucose
    resign_mean_mg_dl = 10.0             #   (smaller changes are sent as corrections under the first sign-off)

    [launch]
    encounter_expected = true            # EHR launches carry an encounter; one without is audited (default: vendor's)
    quirks = ["dedupe_59189", "authorize_post"]   # replaces the vendor's list; bff.vendors.QUIRKS says what each does

    [filter]                             # which patients the app may show ([] = no restriction)
    departments = []
    patients = []

Run-time overrides (table `site_overrides`) name a dotted key path (`write.mode`, `write.flowsheet_rows.tir`)
and a JSON value; `CapabilityService` merges them over the file, validates the result before storing, audits
every change, and re-reads files whose modification time changed, so changes need no restart.
"""

from __future__ import annotations

import copy
import enum
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from bff.actors import ReservedActorError, check_actor
from bff.audit import audit
from bff.sitefile import (
    SITE_KEY,
    BackendCaps,
    FhirCaps,
    FhirVersion,
    LaunchCaps,
    RateLimitCaps,
    SiteFileError,
    SmartTable,
    Table,
    normalise_iss,
    parse_backend,
    parse_fhir,
    parse_launch,
    parse_rate_limit,
    parse_smart,
    parse_token,
    parse_vendor,
)
from bff.sitefile import load as _load
from bff.store.db import Store
from bff.store.models import AuditEvent, SiteOverride
from bff.vendors import PROFILES, Vendor, vendor_profile
from engine.catalogue import CATALOGUE, MG_DL, MMOL_L, READING_UNITS


class CapabilityError(SiteFileError):
    """A capability matrix (file or override) that cannot be used; the message names file, table and key."""


class WriteMode(enum.StrEnum):
    READ_ONLY = "read_only"
    FLOWSHEET_ONLY = "flowsheet_only"
    NOTES_ONLY = "notes_only"
    OBSERVATIONS = "observations"
    FULL = "full"


class WriteChannel(enum.StrEnum):
    FHIR = "fhir"
    HL7V2 = "hl7v2"
    NONE = "none"


OBSERVATION_CATEGORIES = ("vital-signs", "laboratory")
READ_CATEGORIES = ("vital-signs", "laboratory", "any")
ENCOUNTER_POLICIES = ("launch", "open_visit_lookup", "hl7_creates", "none")
PDF_PATHS = ("cerner_docref", "hl7_ed", "hl7_mdm", "none")
HL7_VERSIONS = ("2.5.1", "2.3")
#: The access token lifetime each vendor's tokens have (a site's [token] expected_lifetime_s overrides it).
DEFAULT_TOKEN_LIFETIME_S = {vendor.value: profile.token_lifetime_s for vendor, profile in PROFILES.items()}
_SITE_KEY = SITE_KEY
_METRIC = re.compile(r"[a-z0-9][a-z0-9_]{0,63}")
_WINDOW = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")


@dataclass(frozen=True, slots=True)
class Hl7v2Caps:
    host: str = ""
    port: int = 0
    version: str = "2.5.1"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""


@dataclass(frozen=True, slots=True)
class WriteCaps:
    mode: WriteMode = WriteMode.READ_ONLY
    channel: WriteChannel = WriteChannel.NONE
    observation_category: str = "vital-signs"
    note_type: str = ""
    encounter_policy: str = "launch"
    pdf_path: str = "none"
    flowsheet_rows: Mapping[str, str] = field(default_factory=dict)
    flowsheet_system: str = ""
    glucose_unit: str = "mg/dL"

    @property
    def writes(self) -> bool:
        return self.mode is not WriteMode.READ_ONLY


@dataclass(frozen=True, slots=True)
class ReadCaps:
    """Which Observations are the site's CGM sensor readings (`bff.vendors` builds the searches from this)."""

    category: str = "laboratory"  # vital-signs | laboratory | any (no category in the search)
    flowsheet_rows: Mapping[str, str] = field(default_factory=dict)  # unit (mg/dL, mmol/L) -> the site's row id


@dataclass(frozen=True, slots=True)
class BulkCaps:
    available: bool = False
    group_ids: tuple[str, ...] = ()
    params: Mapping[str, str] = field(default_factory=dict)
    max_concurrent: int = 1
    poll_floor_s: int = 30
    run_window: str = ""


@dataclass(frozen=True, slots=True)
class CorrectionCaps:
    resign_pp: float = 5.0
    resign_tbr_pp: float = 1.0
    resign_mean_mg_dl: float = 10.0


@dataclass(frozen=True, slots=True)
class FilterCaps:
    departments: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SiteCapabilities:
    key: str
    version: int
    vendor: Vendor
    fhir: FhirCaps
    write: WriteCaps
    hl7v2: Hl7v2Caps
    bulk: BulkCaps
    rate_limit: RateLimitCaps
    expected_token_lifetime_s: int
    launch: LaunchCaps
    filter: FilterCaps
    corrections: CorrectionCaps = CorrectionCaps()
    iss: str = ""  # the [smart] iss, when the file has one
    time_zone: str = ""  # the IANA zone of the site's patients when nothing more specific is known ("" none)
    read: ReadCaps = ReadCaps()
    backend: BackendCaps = field(default_factory=BackendCaps)
    smart: SmartTable | None = None  # the [smart] table, when the file has one

    def allows_iss(self, iss: str) -> bool:
        """Exactly, as `bff.smart.sites.SiteRegistry.for_iss` (after the same `normalise_iss`)."""
        return normalise_iss(iss) in {i for i in (self.iss, *self.fhir.iss_allow) if i}

    def shows_patient(self, patient_id: str, department: str | None = None) -> bool:
        """Site filtering: whether the app may show this patient (empty lists restrict nothing)."""
        if self.filter.patients and patient_id not in self.filter.patients:
            return False
        return not (self.filter.departments and department not in self.filter.departments)


# --- parsing -------------------------------------------------------------------------------------------------

_TABLES = ("fhir", "write", "read", "hl7v2", "bulk", "rate_limit", "token", "launch", "filter", "corrections",
           "backend")  # fmt: skip
_TOP = frozenset({"version", "vendor", "time_zone", "smart", *_TABLES})
#: Tables and keys that only the site's file may set (registrations and where tokens go), never an override.
_FILE_ONLY = ("smart", "version", "backend")


def _table(where: str, name: str, data: Any) -> Table:
    return Table(where, name, data, CapabilityError)


def parse_capabilities(key: str, data: Mapping[str, Any], *, source: str = "") -> SiteCapabilities:
    """A site's matrix from the parsed contents of its TOML file (pure; `source` names the file in errors)."""
    where = source or f"site {key}"
    if not _SITE_KEY.fullmatch(key):
        raise CapabilityError(f"{where}: site key {key!r} must be 1-64 of a-z, 0-9, '-' and '_'")
    unknown = set(data) - _TOP
    if unknown:
        raise CapabilityError(f"{where}: unknown top-level keys or tables: {', '.join(sorted(unknown))}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CapabilityError(f"{where}: top-level version must be a whole number >= 1, got {version!r}")
    time_zone = data.get("time_zone", "")
    if not isinstance(time_zone, str) or (time_zone and not _is_zone(time_zone)):
        raise CapabilityError(
            f'{where}: top-level time_zone must be an IANA time zone such as "America/Chicago", got {time_zone!r}'
        )
    vendor = parse_vendor(where, data, CapabilityError)
    profile = vendor_profile(vendor)
    launch = parse_launch(where, data.get("launch"), profile, CapabilityError)
    quirks = frozenset(launch.quirks)
    smart = None
    if "smart" in data:
        smart = parse_smart(where, data.get("smart"), quirks=quirks, redirect_required=False, error=CapabilityError)
    iss = smart.iss if smart is not None else ""
    fhir = parse_fhir(where, data.get("fhir"), vendor, CapabilityError)

    t = _table(where, "write", data.get("write"))
    write = WriteCaps(
        mode=WriteMode(t.choice("mode", "read_only", tuple(m.value for m in WriteMode))),
        channel=WriteChannel(t.choice("channel", "none", tuple(c.value for c in WriteChannel))),
        observation_category=t.choice("observation_category", "vital-signs", OBSERVATION_CATEGORIES),
        note_type=t.text("note_type", ""),
        encounter_policy=t.choice("encounter_policy", "launch", ENCOUNTER_POLICIES),
        pdf_path=t.choice("pdf_path", "none", PDF_PATHS),
        flowsheet_rows=t.strings("flowsheet_rows", _METRIC),
        flowsheet_system=t.text("flowsheet_system", ""),
        glucose_unit=t.choice("glucose_unit", MG_DL, (MG_DL, MMOL_L)),
    )
    t.done()
    for name in write.flowsheet_rows:
        if name not in CATALOGUE or CATALOGUE[name].code() is None:
            fileable = ", ".join(m.key for m in CATALOGUE.values() if m.code() is not None)
            raise CapabilityError(f"{where}: [write.flowsheet_rows] {name!r} is not a metric that can be filed "
                                  f"(one of: {fileable})")  # fmt: skip

    t = _table(where, "read", data.get("read"))
    read = ReadCaps(
        category=t.choice("category", profile.reading_category, READ_CATEGORIES),
        flowsheet_rows=t.strings("flowsheet_rows"),
    )
    t.done()
    units = tuple(sorted(set(READING_UNITS.values())))
    for unit in read.flowsheet_rows:
        if unit not in units:
            raise CapabilityError(f"{where}: [read.flowsheet_rows] {unit!r} is not a reading unit "
                                  f"(one of: {', '.join(units)})")  # fmt: skip
    if read.flowsheet_rows and not write.flowsheet_system:
        raise CapabilityError(
            f"{where}: [read] flowsheet_rows need [write] flowsheet_system (the code system of the site's row ids)"
        )

    t = _table(where, "hl7v2", data.get("hl7v2"))
    hl7v2 = Hl7v2Caps(
        host=t.text("host", ""),
        port=t.integer("port", 0),
        version=t.choice("version", "2.5.1", HL7_VERSIONS),
        sending_facility=t.text("sending_facility", ""),
        receiving_application=t.text("receiving_application", ""),
        receiving_facility=t.text("receiving_facility", ""),
    )
    t.done()
    if hl7v2.port > 65535:
        raise CapabilityError(f"{where}: [hl7v2] port must be at most 65535, got {hl7v2.port}")

    t = _table(where, "bulk", data.get("bulk"))
    bulk = BulkCaps(
        available=t.boolean("available", False),
        group_ids=t.words("group_ids"),
        params=t.strings("params"),
        max_concurrent=t.integer("max_concurrent", 1, minimum=1),
        poll_floor_s=t.integer("poll_floor_s", 30, minimum=1),
        run_window=t.text("run_window", ""),
    )
    t.done()
    if bulk.run_window and not _WINDOW.fullmatch(bulk.run_window):
        raise CapabilityError(f"{where}: [bulk] run_window must be HH:MM-HH:MM, got {bulk.run_window!r}")

    rate = parse_rate_limit(where, data.get("rate_limit"), profile, CapabilityError)
    lifetime = parse_token(where, data.get("token"), profile, CapabilityError)
    backend = parse_backend(where, data.get("backend"), quirks=quirks, error=CapabilityError,
                            smart_token_endpoint=smart.token_endpoint if smart else "")  # fmt: skip

    t = _table(where, "filter", data.get("filter"))
    filt = FilterCaps(departments=t.words("departments"), patients=t.words("patients"))
    t.done()

    t = _table(where, "corrections", data.get("corrections"))
    corrections = CorrectionCaps(
        resign_pp=t.number("resign_pp", 5.0),
        resign_tbr_pp=t.number("resign_tbr_pp", 1.0),
        resign_mean_mg_dl=t.number("resign_mean_mg_dl", 10.0),
    )
    t.done()

    _check_consistency(where, write, hl7v2, vendor)
    return SiteCapabilities(
        key=key, version=version, vendor=vendor, fhir=fhir, write=write, hl7v2=hl7v2, bulk=bulk, rate_limit=rate,
        expected_token_lifetime_s=lifetime, launch=launch, filter=filt, corrections=corrections, iss=iss,
        time_zone=time_zone, read=read, backend=backend, smart=smart,
    )  # fmt: skip


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return "/" in name or name == "UTC"


def _check_consistency(where: str, write: WriteCaps, hl7v2: Hl7v2Caps, vendor: Vendor) -> None:
    profile = vendor_profile(vendor)
    if (
        profile.encounter_required
        and write.channel is WriteChannel.FHIR
        and write.encounter_policy in ("none", "hl7_creates")
    ):
        raise CapabilityError(f"{where}: [write] encounter_policy {write.encounter_policy}: {profile.title} files "
                              "FHIR writes to an open encounter only (launch or open_visit_lookup)")  # fmt: skip
    if vendor is Vendor.HL7V2 and write.channel is WriteChannel.FHIR:
        raise CapabilityError(f'{where}: [write] channel fhir: a vendor = "hl7v2" site is written over HL7 v2 only')
    if write.pdf_path in ("hl7_ed", "hl7_mdm") and write.mode is WriteMode.FULL and (not hl7v2.host or not hl7v2.port):
        raise CapabilityError(f"{where}: [write] pdf_path {write.pdf_path} needs [hl7v2] host and port")
    if write.mode is WriteMode.READ_ONLY:
        return
    if write.channel is WriteChannel.NONE:
        raise CapabilityError(f"{where}: [write] channel must not be none when mode is {write.mode.value}")
    if write.channel is WriteChannel.HL7V2 and (not hl7v2.host or not hl7v2.port):
        raise CapabilityError(f"{where}: [hl7v2] host and port are required when [write] channel is hl7v2")
    if write.mode is WriteMode.FLOWSHEET_ONLY and not write.flowsheet_rows:
        raise CapabilityError(
            f"{where}: [write] flowsheet_rows must map at least one metric when mode is flowsheet_only"
        )
    if write.mode is WriteMode.NOTES_ONLY and write.channel is WriteChannel.FHIR and not write.note_type:
        raise CapabilityError(f"{where}: [write] note_type is required when mode is notes_only over FHIR")


def load_file(path: Path) -> dict[str, Any]:
    try:
        return _load(path)
    except SiteFileError as exc:
        raise CapabilityError(str(exc)) from None


# --- overrides -----------------------------------------------------------------------------------------------

_PATH = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z0-9_][a-z0-9_-]*)*")


def check_path(path: str) -> list[str]:
    if not _PATH.fullmatch(path):
        raise CapabilityError(f"override path {path!r} must be dotted keys like write.mode")
    parts = path.split(".")
    if parts[0] in _FILE_ONLY:
        raise CapabilityError(f"override path {path!r}: {parts[0]} is set in the site's file only")
    if parts[0] not in _TOP:
        raise CapabilityError(f"override path {path!r}: unknown table {parts[0]!r}")
    return parts


def apply_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The file's contents with each dotted path set to its value (a deep copy; the input is not changed)."""
    merged = copy.deepcopy(dict(data))
    for path, value in overrides.items():
        parts = check_path(path)
        node = merged
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise CapabilityError(f"override path {path!r}: {part} is not a table")
            node = child
        node[parts[-1]] = copy.deepcopy(value)
    return merged


def effective(key: str, data: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str = "") -> SiteCapabilities:
    """File plus overrides, validated as a whole (errors name the file and say overrides were applied)."""
    where = source or f"site {key}"
    if overrides:
        where += f" (with overrides: {', '.join(sorted(overrides))})"
    return parse_capabilities(key, apply_overrides(data, overrides), source=where)


def lookup(data: Mapping[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def as_dict(caps: SiteCapabilities) -> dict[str, Any]:
    """The effective matrix as plain JSON-able data, in the file's shape."""
    w, b = caps.write, caps.bulk
    return {
        "version": caps.version,
        "vendor": caps.vendor.value,
        "time_zone": caps.time_zone,
        "fhir": {"version": caps.fhir.version.value, "iss_allow": list(caps.fhir.iss_allow),
                 "cgm_ig_receiver": caps.fhir.cgm_ig_receiver},
        "write": {"mode": w.mode.value, "channel": w.channel.value, "observation_category": w.observation_category,
                  "note_type": w.note_type, "encounter_policy": w.encounter_policy, "pdf_path": w.pdf_path,
                  "flowsheet_rows": dict(w.flowsheet_rows), "flowsheet_system": w.flowsheet_system,
                  "glucose_unit": w.glucose_unit},
        "hl7v2": {"host": caps.hl7v2.host, "port": caps.hl7v2.port, "version": caps.hl7v2.version,
                  "sending_facility": caps.hl7v2.sending_facility,
                  "receiving_application": caps.hl7v2.receiving_application,
                  "receiving_facility": caps.hl7v2.receiving_facility},
        "bulk": {"available": b.available, "group_ids": list(b.group_ids), "params": dict(b.params),
                 "max_concurrent": b.max_concurrent, "poll_floor_s": b.poll_floor_s, "run_window": b.run_window},
        "rate_limit": {"rps": caps.rate_limit.rps, "burst": caps.rate_limit.burst,
                       "refresh_min_interval_s": caps.rate_limit.refresh_min_interval_s},
        "token": {"expected_lifetime_s": caps.expected_token_lifetime_s},
        "launch": {"encounter_expected": caps.launch.encounter_expected, "quirks": list(caps.launch.quirks)},
        "read": {"category": caps.read.category, "flowsheet_rows": dict(caps.read.flowsheet_rows)},
        "backend": {"client_id": caps.backend.client_id, "key": caps.backend.key.describe() if caps.backend.key else "",
                    "kid": caps.backend.kid, "alg": caps.backend.alg, "jku": caps.backend.jku,
                    "token_endpoint": caps.backend.token_endpoint,
                    "scopes": list(caps.backend.scopes) if caps.backend.scopes is not None else None,
                    "scope_version": caps.backend.scope_version},
        "filter": {"departments": list(caps.filter.departments), "patients": list(caps.filter.patients)},
        "corrections": {"resign_pp": caps.corrections.resign_pp, "resign_tbr_pp": caps.corrections.resign_tbr_pp,
                        "resign_mean_mg_dl": caps.corrections.resign_mean_mg_dl},
    }  # fmt: skip


# --- the service ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cached:
    mtime_ns: int
    data: dict[str, Any]


def _check_who(who: str, reason: str) -> None:
    if not who.strip() or not reason.strip():
        raise CapabilityError("a change needs who made it and why")
    try:
        check_actor(who)
    except ReservedActorError as exc:
        raise CapabilityError(str(exc)) from None


#: A site's overrides, built once: every view reads them (`CapabilityService.overrides`).
_OVERRIDES = select(SiteOverride.__table__.c.path, SiteOverride.__table__.c.value).where(
    SiteOverride.__table__.c.site_key == bindparam("site")
)


class CapabilityService:
    """Effective matrices: files (re-read when their mtime changes) plus overrides (read on every call)."""

    def __init__(self, store: Store, sites_dir: Path | str, *, now: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.sites_dir = Path(sites_dir)
        self._files: dict[str, _Cached] = {}
        self._effective: dict[str, tuple[tuple[int, str], SiteCapabilities]] = {}
        self._now = now or (lambda: datetime.now(UTC))

    def sites(self) -> list[str]:
        return sorted(p.stem for p in self.sites_dir.glob("*.toml")) if self.sites_dir.is_dir() else []

    def path(self, site: str) -> Path:
        if not _SITE_KEY.fullmatch(site):
            raise CapabilityError(f"site key {site!r} must be 1-64 of a-z, 0-9, '-' and '_'")
        return self.sites_dir / f"{site}.toml"

    def file_data(self, site: str) -> dict[str, Any]:
        path = self.path(site)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            raise CapabilityError(f"no such site {site!r} (no {path})") from None
        cached = self._files.get(site)
        if cached is None or cached.mtime_ns != mtime:
            cached = _Cached(mtime, load_file(path))
            self._files[site] = cached
        return cached.data

    def overrides(self, site: str, session: Session | None = None) -> dict[str, Any]:
        with self.store.joined(session) as s:
            rows = s.connection().execute(_OVERRIDES, {"site": site})
            return {row.path: row.value for row in rows}

    def get(self, site: str, session: Session | None = None) -> SiteCapabilities:
        """The effective matrix, parsed once per change of its file or its overrides (not per request); the
        overrides are read in the caller's transaction when it gives its session."""
        data, overrides = self.file_data(site), self.overrides(site, session)
        key = (self._files[site].mtime_ns, json.dumps(overrides, sort_keys=True, default=str))
        cached = self._effective.get(site)
        if cached is not None and cached[0] == key:
            return cached[1]
        caps = effective(site, data, overrides, source=str(self.path(site)))
        self._effective[site] = (key, caps)
        return caps

    def set(self, site: str, path: str, value: Any, *, who: str, reason: str) -> SiteCapabilities:
        """Validate the matrix with the change, then store and audit it (old and new value). `who` is a person's
        name, or a SystemActor (the worker's degradation); a person may not use a reserved name."""
        _check_who(who, reason)
        check_path(path)
        data = self.file_data(site)
        current = self.overrides(site)
        try:
            caps = effective(site, data, {**current, path: value}, source=str(self.path(site)))
        except CapabilityError as exc:
            audit(self.store, "site.capability.set", outcome="refused", site=site, actor=who, path=path,
                  value=value, reason=reason, error=str(exc))  # fmt: skip
            raise
        old = current[path] if path in current else lookup(data, path)
        with self.store.transaction() as session:
            row = session.scalars(
                select(SiteOverride).where(SiteOverride.site_key == site, SiteOverride.path == path)
            ).one_or_none()
            if row is None:
                session.add(SiteOverride(site_key=site, path=path, value=value, who=who, reason=reason,
                                         set_at=self._now()))  # fmt: skip
            else:
                row.value, row.who, row.reason, row.set_at = value, who, reason, self._now()
        audit(self.store, "site.capability.set", outcome="allowed", site=site, actor=who, path=path, old=old,
              new=value, reason=reason, overridden=path in current)  # fmt: skip
        return caps

    def clear(self, site: str, path: str, *, who: str, reason: str) -> SiteCapabilities:
        """Drop an override (the file's value applies again), if the matrix is still valid without it."""
        _check_who(who, reason)
        current = self.overrides(site)
        if path not in current:
            raise CapabilityError(f"site {site}: {path} is not overridden")
        rest = {k: v for k, v in current.items() if k != path}
        data = self.file_data(site)
        caps = effective(site, data, rest, source=str(self.path(site)))
        with self.store.transaction() as session:
            row = session.scalars(
                select(SiteOverride).where(SiteOverride.site_key == site, SiteOverride.path == path)
            ).one()
            session.delete(row)
        audit(self.store, "site.capability.clear", outcome="allowed", site=site, actor=who, path=path,
              old=current[path], new=lookup(data, path), reason=reason)  # fmt: skip
        return caps

    def history(self, site: str, limit: int = 100) -> list[AuditEvent]:
        """Changes to the site's matrix, newest first (refused attempts included)."""
        with self.store.transaction() as session:
            return list(
                session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.site_key == site, AuditEvent.event.like("site.capability.%"))
                    .order_by(AuditEvent.id.desc())
                    .limit(limit)
                )
            )


__all__ = [
    "CapabilityError",
    "CapabilityService",
    "FhirVersion",
    "SiteCapabilities",
    "Vendor",
    "WriteChannel",
    "WriteMode",
    "apply_overrides",
    "as_dict",
    "effective",
    "parse_capabilities",
]
