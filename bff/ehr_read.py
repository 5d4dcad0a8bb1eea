"""Reads from the EHR in the clinician's launch context (with the user's token, kept in the BFF)."""

from __future__ import annotations

import logging
from typing import Any

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


def _mrn(patient: dict[str, Any]) -> str:
    for identifier in patient.get("identifier") or []:
        codes = [c.get("code") for c in (identifier.get("type") or {}).get("coding", [])]
        if "MR" in codes:
            return str(identifier.get("value", ""))
    return ""


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
    return {
        "name": _name(patient),
        "birth_date": str(patient.get("birthDate", "")),
        "gender": str(patient.get("gender", "")),
        "mrn": _mrn(patient),
    }
