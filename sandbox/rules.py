"""Write rules: structure validation for every site, then the personality's own rules.

Structure: the resource must parse as its FHIR R4 (R4B model) class in `fhir.resources` (R5 models on a site
switched to R5); otherwise 400 with an OperationOutcome `structure` issue listing the first problems.

epic-like (Epic Observation.Create (Vitals) and DocumentReference.Create (Clinical Notes), ehr-realities.md
§1.6–1.7): Observations file to flowsheet rows only: category `vital-signs`, a row named by its flowsheet id
(`code.coding` system FLOWSHEET_SYSTEM) or by a LOINC code mapped to a row, `status` final, an
`effectiveDateTime`, a numeric `valueQuantity`, a note of at most 254 characters, and an open encounter of the
patient (not finished, not planned). A reading for the same row and instant that exists already is refused with
400 and detail code 59189 "Reading already exists" (a replay is "already written"). Notes: `text/plain`
base64 only, `type` and `context.encounter` required, only the first attachment kept, no dedupe.

oracle-like (Millennium R4 Observation and DocumentReference create, §2): Observations carry exactly one
category, laboratory or vital-signs (422 otherwise), `status` final/amended/corrected, an `effectiveDateTime`
only; `identifier` cannot be set on create and is dropped; modifier extensions are 422. Documents have exactly
one inline attachment of an allowed content type (PDF allowed), `docStatus` final/amended, and a missing required
field (`type`, `context.period.end`, `effectiveDateTime`) is answered with **500** and an OperationOutcome
`required`, as Millennium does.
"""

from __future__ import annotations

import base64
import binascii
import copy
from functools import cache
from typing import Any

import numpy as np
from pydantic import ValidationError

from sandbox.outcome import FhirError
from sandbox.personalities import (
    EPIC_DUPLICATE_READING,
    EPIC_ERROR_SYSTEM,
    FLOWSHEET_ROWS,
    FLOWSHEET_SYSTEM,
    FlowsheetRow,
    WriteMode,
)
from sandbox.runtime import Site
from sandbox.search import date_range_ms, normal_reference, tokens_of, walk

CATEGORY_SYSTEMS = (
    "http://terminology.hl7.org/CodeSystem/observation-category",
    "http://hl7.org/fhir/observation-category",
)
OPEN_ENCOUNTER = frozenset({"in-progress", "arrived", "triaged", "onleave"})
LOINC = "http://loinc.org"
#: Types each write mode may create.
WRITABLE = {
    WriteMode.FLOWSHEET: frozenset({"Observation", "DocumentReference"}),
    WriteMode.LAB_VITALS: frozenset({"Observation", "DocumentReference"}),
}


@cache
def _model(rtype: str, version: str = "R4") -> Any:
    # 0.15 s imports, only when writing; fhir.resources' R5 models are its default package, R4 lives in R4B.
    if version == "R5":
        from fhir.resources import get_fhir_model_class as get_r5  # noqa: PLC0415

        return get_r5(rtype)
    from fhir.resources.R4B import get_fhir_model_class  # noqa: PLC0415

    return get_fhir_model_class(rtype)


def validate_structure(resource: dict[str, Any], version: str = "R4") -> None:
    """400 unless the resource is structurally valid FHIR (R4 or R5, the site's release) for its type."""
    try:
        _model(resource["resourceType"], version).model_validate(resource)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise FhirError(400, "structure", f"invalid {resource['resourceType']}: {problems}") from None
    except (KeyError, ValueError, TypeError) as exc:
        raise FhirError(400, "structure", f"invalid {resource.get('resourceType')}: {exc}") from None


def check_write_allowed(site: Site, rtype: str | None = None) -> None:
    """403 on read-only sites, 405 on hl7-only ones, 405 for a type the site does not take."""
    mode = site.personality.write_mode
    if mode is WriteMode.FORBIDDEN:
        raise FhirError(403, "forbidden", f"{site.personality.title} grants read access only: writes are refused")
    if mode is WriteMode.NOT_ALLOWED:
        raise FhirError(
            405,
            "not-supported",
            f"{site.personality.title} takes results over HL7 v2 (MLLP) only; FHIR writes are not supported",
            headers={"Allow": "GET"},
        )
    allowed = WRITABLE.get(mode)
    if rtype is not None and allowed is not None and rtype not in allowed:
        raise FhirError(
            405, "not-supported", f"{rtype} create is not supported here (only {', '.join(sorted(allowed))})"
        )


def apply_rules(site: Site, resource: dict[str, Any], *, creating: bool = True) -> dict[str, Any]:
    """The resource as the site stores it (possibly changed), or FhirError. Structure is checked first."""
    validate_structure(resource, site.fhir_version)
    mode = site.personality.write_mode
    rtype = resource["resourceType"]
    if mode is WriteMode.FLOWSHEET:
        if rtype == "Observation":
            return _epic_observation(site, resource)
        return _epic_note(site, resource)
    if mode is WriteMode.LAB_VITALS:
        if rtype == "Observation":
            return _oracle_observation(site, resource, creating=creating)
        return _oracle_document(site, resource)
    return resource


# MARK: shared checks


def _subject_patient(site: Site, resource: dict[str, Any], status: int = 400) -> str:
    reference = resource.get("subject", {}).get("reference", "")
    kind, _, rid = normal_reference(reference).partition("/")
    if kind != "Patient" or site.store.read("Patient", rid) is None:
        raise FhirError(
            status,
            "required" if status == 500 else "not-found",
            f"subject must reference an existing Patient (got {reference!r})",
        )
    return rid


def _instant_ms(value: Any, field: str, status: int = 400) -> int:
    if not isinstance(value, str) or "T" not in value:
        raise FhirError(status, "required", f"{field} with a time of day is required")
    try:
        return date_range_ms(value)[0]
    except ValueError:
        raise FhirError(400, "value", f"{field} {value!r} is not a FHIR dateTime") from None


def _base64(data: Any, what: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise FhirError(400, "required", f"{what} needs inline base64 `data`")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise FhirError(400, "value", f"{what} data is not base64") from None


# MARK: epic-like


def _epic_error(diagnostics: str, code: str = "processing", status: int = 400) -> FhirError:
    return FhirError(status, code, diagnostics)


def _flowsheet_row(resource: dict[str, Any]) -> FlowsheetRow:
    pairs = tokens_of(resource.get("code", {}))
    for system, code in pairs:
        if system == FLOWSHEET_SYSTEM:
            row = next((r for r in FLOWSHEET_ROWS if r.row_id == code), None)
            if row is None:
                raise _epic_error(f"flowsheet row {code} does not exist at this organization", "not-found")
            return row
    for system, code in pairs:
        if system == LOINC:
            row = next((r for r in FLOWSHEET_ROWS if r.loinc == code), None)
            if row is not None:
                return row
    raise _epic_error(
        f"no flowsheet row found for the Observation code (give a {FLOWSHEET_SYSTEM} row id or a "
        "LOINC code mapped to a row)",
        "not-found",
    )


def _open_encounter(site: Site, resource: dict[str, Any], patient: str, path: str) -> None:
    """400 unless `path` (e.g. `encounter`, `context.encounter`) references an open encounter of the patient."""
    references = [v.get("reference") for v in walk(resource, path) if isinstance(v, dict)]
    reference = references[0] if references else None
    if not isinstance(reference, str):
        raise _epic_error(f"{path} is required: filing needs an open encounter of the patient", "required")
    kind, _, rid = normal_reference(reference).partition("/")
    encounter = site.store.read("Encounter", rid) if kind == "Encounter" else None
    if encounter is None:
        raise _epic_error(f"encounter {reference!r} not found", "not-found")
    if normal_reference(encounter.get("subject", {}).get("reference", "")) != f"Patient/{patient}":
        raise _epic_error("the encounter belongs to another patient", "business-rule")
    if encounter.get("status") not in OPEN_ENCOUNTER:
        raise _epic_error(
            f"encounter is {encounter.get('status')}: only an open encounter can be filed to", "business-rule"
        )


def _epic_observation(site: Site, resource: dict[str, Any]) -> dict[str, Any]:
    categories = [pair for c in resource.get("category", []) for pair in tokens_of(c)]
    if not any(s in CATEGORY_SYSTEMS and c == "vital-signs" for s, c in categories):
        raise _epic_error(
            "Observation.Create (Vitals) files flowsheet rows only: category vital-signs is required", "business-rule"
        )
    row = _flowsheet_row(resource)
    if resource.get("status") != "final":
        raise _epic_error("status must be final")
    instant = _instant_ms(resource.get("effectiveDateTime"), "effectiveDateTime")
    if "valueQuantity" not in resource or not isinstance(resource["valueQuantity"].get("value"), int | float):
        raise _epic_error(f"flowsheet row {row.row_id} ({row.name}) is numeric: a valueQuantity is required")
    for note in resource.get("note", []):
        if len(note.get("text", "")) > 254:
            raise _epic_error("a flowsheet comment is at most 254 characters")
    patient = _subject_patient(site, resource)
    if site.personality.encounter_required:
        _open_encounter(site, resource, patient, "encounter")
    if _reading_exists(site, patient, row, instant):
        raise FhirError(
            400,
            "duplicate",
            "Reading already exists",
            details=(EPIC_ERROR_SYSTEM, EPIC_DUPLICATE_READING, "Reading already exists"),
        )
    stored = copy.deepcopy(resource)
    if not any(s == FLOWSHEET_SYSTEM for s, _ in tokens_of(stored["code"])):
        stored["code"].setdefault("coding", []).insert(
            0, {"system": FLOWSHEET_SYSTEM, "code": row.row_id, "display": row.name}
        )
    site.filed_readings.add((patient, row.row_id, instant))  # Epic files it now: no conditional create, no rollback
    return stored


def _reading_exists(site: Site, patient: str, row: FlowsheetRow, instant: int) -> bool:
    for block in site.store.blocks:
        if block.patient_id == patient and block.row_id == row.row_id:
            at = int(np.searchsorted(block.trace.time_ms, instant))
            if at < len(block) and int(block.trace.time_ms[at]) == instant:
                return True
    return (patient, row.row_id, instant) in site.filed_readings  # filed through the API (an index, not a scan)


def _epic_note(site: Site, resource: dict[str, Any]) -> dict[str, Any]:
    if resource.get("status") != "current":
        raise _epic_error("status must be current")
    if resource.get("docStatus", "final") not in ("final", "preliminary"):
        raise _epic_error("docStatus must be final (signed) or preliminary (draft)")
    if not resource.get("type"):
        raise _epic_error("type (a note type) is required", "required")
    patient = _subject_patient(site, resource)
    _open_encounter(site, resource, patient, "context.encounter")
    content = resource.get("content", [])
    attachment = content[0].get("attachment", {}) if content else {}
    kind = str(attachment.get("contentType", "")).split(";")[0].strip().lower()
    if kind != "text/plain":
        raise _epic_error(
            f"only text/plain notes can be filed (got {kind or 'no contentType'}); "
            "send PDFs over HL7 (MDM/ORU with ED)",
            "not-supported",
        )
    _base64(attachment.get("data"), "the note")
    stored = copy.deepcopy(resource)
    stored["content"] = stored["content"][:1]  # only the first attachment is saved
    return stored


# MARK: oracle-like


def _oracle_common(resource: dict[str, Any]) -> None:
    if resource.get("modifierExtension"):
        raise FhirError(422, "business-rule", "modifier extensions are not supported")


def _oracle_observation(site: Site, resource: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    _oracle_common(resource)
    categories = resource.get("category", [])
    pairs = [pair for c in categories for pair in tokens_of(c)]
    if len(categories) != 1 or not any(c in ("laboratory", "vital-signs") for _, c in pairs):
        raise FhirError(422, "business-rule", "exactly one category is required: laboratory or vital-signs")
    if resource.get("status") not in ("final", "amended", "corrected"):
        raise FhirError(422, "business-rule", "status must be final, amended or corrected")
    if any(k.startswith("effective") and k != "effectiveDateTime" for k in resource):
        raise FhirError(422, "business-rule", "only effectiveDateTime is supported")
    _instant_ms(resource.get("effectiveDateTime"), "effectiveDateTime", status=500)
    _subject_patient(site, resource)
    stored = copy.deepcopy(resource)
    if creating:
        stored.pop("identifier", None)  # identifier cannot be set on create: silently ignored
    return stored


def _oracle_document(site: Site, resource: dict[str, Any]) -> dict[str, Any]:
    _oracle_common(resource)
    if resource.get("status") != "current":
        raise FhirError(422, "business-rule", "status must be current")
    if resource.get("docStatus") not in ("final", "amended"):
        raise FhirError(422, "business-rule", "docStatus must be final or amended")
    if not resource.get("type"):
        raise FhirError(500, "required", "type is required")
    if not resource.get("context", {}).get("period", {}).get("end"):
        raise FhirError(500, "required", "context.period.end is required")
    content = resource.get("content", [])
    if len(content) != 1:
        raise FhirError(422, "business-rule", "exactly one content is required")
    attachment = content[0].get("attachment", {})
    kind = str(attachment.get("contentType", "")).split(";")[0].strip().lower()
    if kind not in site.personality.document_types:
        raise FhirError(
            422,
            "business-rule",
            f"contentType {kind or '(none)'} is not supported "
            f"(use one of {', '.join(site.personality.document_types)})",
        )
    _base64(attachment.get("data"), "the document")
    _subject_patient(site, resource)
    return resource
