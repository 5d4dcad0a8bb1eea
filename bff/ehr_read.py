"""Reads from the EHR in the clinician's launch context (with the user's token, kept in the BFF)."""

from __future__ import annotations

import logging
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from bff.smart import SmartClient, SmartError

log = logging.getLogger("glucobridge.ehr")


def _name(patient: dict[str, Any]) -> str:
    names = patient.get("name") or []
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    if official.get("text"):
        return str(official["text"])
    given = " ".join(official.get("given") or [])
    return f"{given} {official.get('family', '')}".strip() or "Unnamed patient"


def _identifiers(patient: dict[str, Any]) -> list[str]:
    out = []
    for identifier in patient.get("identifier") or []:
        system, value = identifier.get("system"), identifier.get("value")
        if isinstance(system, str) and isinstance(value, str) and value and "\n" not in system + value:
            out.append(f"{system}|{value}")
    return out[:20]


def _name_parts(patient: dict[str, Any]) -> tuple[str, str]:
    names = patient.get("name") or []
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    return str(official.get("family") or ""), " ".join(str(g) for g in official.get("given") or [])


def _mrn(patient: dict[str, Any]) -> str:
    for identifier in patient.get("identifier") or []:
        codes = [c.get("code") for c in (identifier.get("type") or {}).get("coding", [])]
        if "MR" in codes:
            return str(identifier.get("value", ""))
    return ""


#: Extensions a Patient resource may carry its IANA time zone in (FHIR core `tz-code`, the extensions pack's
#: `timezone`); EHRs that state a patient's zone use one of these.
ZONE_EXTENSIONS = (
    "http://hl7.org/fhir/StructureDefinition/tz-code",
    "http://hl7.org/fhir/StructureDefinition/timezone",
)


def patient_zone(patient: dict[str, Any]) -> str | None:
    """The patient's IANA zone when the Patient resource states one (and it is a real zone); else None."""
    for extension in patient.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") in ZONE_EXTENSIONS:
            value = extension.get("valueCode") or extension.get("valueString")
            if isinstance(value, str) and _is_zone(value):
                return value
    return None


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return "/" in name


def person_display(resource: dict[str, Any]) -> str | None:
    """A Practitioner (or Person) as a clinician is named in a chart: "Dana Smith, MD" (prefix dropped, suffixes
    and qualification codes kept); None when the resource names nobody."""
    names = [n for n in resource.get("name") or [] if isinstance(n, dict)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else None)
    if official is None:
        return None
    text = official.get("text")
    core = str(text) if text else " ".join([*(official.get("given") or []), official.get("family") or ""]).strip()
    if not core:
        return None
    credentials = [str(x) for x in official.get("suffix") or [] if x]
    for qualification in resource.get("qualification") or []:
        code = (qualification or {}).get("code") or {}
        label = next((c.get("code") for c in code.get("coding") or [] if c.get("code")), None) or code.get("text")
        if label and str(label) not in credentials and str(label) not in core:
            credentials.append(str(label))
    return ", ".join([core, *credentials]) if credentials else core


async def fhir_user_display(smart: SmartClient, http: httpx.AsyncClient, handle: str) -> str | None:
    """The launch's fhirUser as the EHR names them, read with the clinician's token; None when it cannot be read
    (then the sign-off records the fhirUser reference only)."""
    try:
        context = await smart.launch(handle)
        if not context.fhir_user:
            return None
        token = await smart.access_token(handle)
        reference = context.fhir_user
        url = reference if reference.startswith("http") else f"{context.iss.rstrip('/')}/{reference}"
        response = await http.get(url, headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
    except (SmartError, httpx.HTTPError) as exc:
        log.warning("fhirUser unavailable: %s", type(exc).__name__)
        return None
    if response.status_code != 200:
        log.warning("fhirUser unavailable: HTTP %s", response.status_code)
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return person_display(body) if isinstance(body, dict) else None


async def patient_banner(smart: SmartClient, http: httpx.AsyncClient, handle: str) -> dict[str, str] | None:
    """Name, birth date, sex and MRN for the banner the EHR asked the app to show; None when it cannot be read."""
    try:
        context = await smart.launch(handle)
        if not context.patient:
            return None
        token = await smart.access_token(handle)
        response = await http.get(
            f"{context.iss.rstrip('/')}/Patient/{context.patient}",
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        )
    except (SmartError, httpx.HTTPError) as exc:
        log.warning("patient banner unavailable: %s", type(exc).__name__)
        return None
    if response.status_code != 200:
        log.warning("patient banner unavailable: HTTP %s", response.status_code)
        return None
    patient = response.json()
    return patient_demographics(patient) if isinstance(patient, dict) else None


def patient_demographics(patient: dict[str, Any]) -> dict[str, str]:
    """What a FHIR Patient resource says of the patient, as the store keeps it (`PatientOutcomesView.remember`):
    names, birth date, sex, MRN, the `tz-code` zone and every identifier. Read at launch and from Bulk Data files."""
    family, given = _name_parts(patient)
    return {
        "name": _name(patient),
        "family": family,
        "given": given,
        "birth_date": str(patient.get("birthDate", "")),
        "gender": str(patient.get("gender", "")),
        "mrn": _mrn(patient),
        "time_zone": patient_zone(patient) or "",
        # Every identifier the EHR gives the patient ("system|value" per line): how a patient fed by another
        # door of the same site (an HL7 v2 results interface keyed by MRN) is found for this FHIR Patient.
        "identifiers": "\n".join(_identifiers(patient)),
    }
