"""The patient's open visit, for sites whose `[write] encounter_policy` is `open_visit_lookup`.

Such a site files results to an open encounter, and its EHR launches do not always carry one (a launch from the
patient list, not from a visit). Before planning, the app searches the patient's Encounters in the statuses the
vendor calls open (`bff.vendors`: R4 in-progress, arrived, triaged, onleave; R5 in-progress) with the
clinician's token. Exactly one open visit is used; none, several, or a failed search leave the plan without an
encounter and a reason, and the plan is refused with it (`bff.broker.plan`): choosing between two open visits is
the clinician's call, made by launching from the right one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bff.vendors import SiteProfile

log = logging.getLogger("glucobridge.encounters")


@dataclass(frozen=True, slots=True)
class VisitLookup:
    """What the search found: `encounter` ("Encounter/123") when exactly one open visit, else the reason."""

    encounter: str | None
    reason: str | None = None


def _open_encounters(body: Any, statuses: set[str]) -> list[str]:
    found = []
    entries = body.get("entry") if isinstance(body, Mapping) else None
    for entry in entries or []:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping) or resource.get("resourceType") != "Encounter":
            continue
        if resource.get("status") in statuses and isinstance(resource.get("id"), str):
            found.append(f"Encounter/{resource['id']}")
    return sorted(set(found))


async def open_visit(http: httpx.AsyncClient, site: SiteProfile, base: str, token: str, patient: str) -> VisitLookup:
    """The patient's one open visit at the site whose FHIR base is `base`, searched with `token`."""
    search = site.open_visit_search(patient)
    statuses = set(dict(search.params)["status"].split(","))
    try:
        response = await http.get(
            search.url(base), headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
        )
    except httpx.HTTPError as exc:
        log.warning("open visit lookup failed at site %s: %s", site.caps.key, type(exc).__name__)
        return VisitLookup(None, f"the search for open visits failed ({type(exc).__name__})")
    if response.status_code != 200:
        return VisitLookup(None, f"the search for open visits answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        return VisitLookup(None, "the search for open visits did not answer JSON")
    found = _open_encounters(body, statuses)
    if not found:
        return VisitLookup(None, "the patient has no open visit at this site")
    if len(found) > 1:
        return VisitLookup(None, f"the patient has {len(found)} open visits, and which one to file to is not clear")
    return VisitLookup(found[0])


__all__ = ["VisitLookup", "open_visit"]
