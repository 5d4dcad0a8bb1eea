"""The EHR shell at `/ehr/`: a patient list per site and a chart page that embeds the app in an iframe.

It stands in for Hyperspace/Hyperdrive or PowerChart (ehr-realities.md §1.1–1.2, §2): opening a chart creates
a new single-use launch id (patient, the open encounter if any, the signed-in practitioner) and points an
`<iframe>` at `{app_launch_url}?iss=<site FHIR base>&launch=<id>`. The shell is served from the sandbox's
origin, different from the app's, so the app runs as a third-party frame, as in a real EHR. The side-by-side
page opens two charts at once (Epic shows several patients in tabs of one session; the app must keep them
apart, §1.2 and §4 pain 5). The chart lists what apps wrote back to the patient (flowsheet rows, results,
notes), so a demo can show the write landing in the "EHR"; the hl7-only site lists HL7 v2 messages received.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.response import Redirect, Template

from sandbox.fhir_api import path_param, sandbox_of
from sandbox.runtime import Sandbox, Site
from sandbox.search import tokens_of

AnyRequest = Request[Any, Any, Any]
SMART_STYLE = {
    "color_background": "#f6f7f9",
    "color_error": "#b00020",
    "color_highlight": "#1f6feb",
    "color_modal_backdrop": "",
    "color_success": "#2e7d32",
    "color_text": "#1b1f24",
    "dim_border_radius": "6px",
    "dim_font_size": "14px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "font_family_heading": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
}


def _site(sandbox: Sandbox, key: str) -> Site:
    site = sandbox.site(key)
    if site is None:
        raise NotFoundException(f"no site {key!r}")
    return site


def _practitioner(site: Site, requested: str | None) -> str:
    ids = site.seed.practitioner_ids
    return requested if requested in ids else ids[0]


def _name(resource: dict[str, Any] | None) -> str:
    if not resource:
        return ""
    names = resource.get("name") or [{}]
    return str(names[0].get("text") or " ".join([*names[0].get("given", []), names[0].get("family", "")]))


def patient_rows(site: Site) -> list[dict[str, Any]]:
    blocks = {b.patient_id: b for b in site.store.blocks}
    rows = []
    for seeded in site.seed.patients:
        block = blocks.get(seeded.patient_id)
        rows.append(
            {
                "id": seeded.patient_id,
                "name": seeded.person.name,
                "mrn": seeded.mrn,
                "birth_date": seeded.person.birth_date,
                "gender": seeded.person.gender,
                "about": seeded.person.about,
                "zone": seeded.person.zone,
                "open_encounter": seeded.open_encounter_id is not None,
                "readings": len(block) if block else 0,
                "unit": block.trace.unit if block else "",
            }
        )
    return rows


def written_for(site: Site, patient_id: str) -> list[dict[str, Any]]:
    """What clients wrote to this patient, newest first, as rows for the chart."""
    rows = []
    for rtype, rid in reversed(site.store.written):
        resource = site.store.current[rtype].get(rid)
        if resource is None or site.store.patient_of(resource) != patient_id:
            continue
        row: dict[str, Any] = {"type": rtype, "id": rid, "updated": resource.get("meta", {}).get("lastUpdated", "")}
        if rtype == "Observation":
            code = resource.get("code", {})
            row["what"] = code.get("text") or next(
                (c.get("display") or c.get("code") for c in code.get("coding", [])), ""
            )
            quantity = resource.get("valueQuantity")
            row["value"] = (
                f"{quantity.get('value')} {quantity.get('unit', '')}" if quantity else resource.get("valueString", "")
            )
            row["when"] = resource.get("effectiveDateTime", "")
        elif rtype in ("DocumentReference", "DiagnosticReport"):
            concept = resource.get("type") or resource.get("code") or {}
            row["what"] = concept.get("text") or next((c for _, c in tokens_of(concept)), rtype)
            attachments = [c.get("attachment", {}) for c in resource.get("content", [])] or resource.get(
                "presentedForm", []
            )
            row["value"] = ", ".join(a.get("contentType", "") for a in attachments)
            row["when"] = resource.get("date") or resource.get("effectiveDateTime", "")
            row["view"] = f"/ehr/{site.key}/documents/{rtype}/{rid}" if attachments else ""
        else:
            row["what"], row["value"], row["when"] = rtype, "", ""
        rows.append(row)
    return rows


@get("/", include_in_schema=False)
async def root() -> Redirect:
    return Redirect("/ehr/")


@get("/ehr/")
async def ehr_index(request: AnyRequest) -> Template:
    sandbox = sandbox_of(request)
    sites = [{"site": s, "patients": patient_rows(s)} for s in sandbox.sites.values()]
    return Template("ehr/index.html", context={"sites": sites, "config": sandbox.config})


def _launch_src(sandbox: Sandbox, site: Site, patient_id: str, practitioner: str) -> str:
    seeded = site.patient(patient_id)
    if seeded is None:
        raise NotFoundException(f"no patient {patient_id!r} at {site.key}")
    launch = site.auth.new_launch(patient_id, seeded.open_encounter_id, practitioner, site.now())
    return f"{sandbox.config.app_launch_url}?{urlencode({'iss': site.fhir_base, 'launch': launch})}"


@get("/ehr/{site_key:str}/patients/{patient_id:str}")
async def chart(request: AnyRequest) -> Template:
    site_key = path_param(request, "site_key")
    patient_id = path_param(request, "patient_id")
    practitioner = request.query_params.get("practitioner")
    sandbox = sandbox_of(request)
    site = _site(sandbox, site_key)
    who = _practitioner(site, practitioner)
    src = _launch_src(sandbox, site, patient_id, who)
    seeded = site.patient(patient_id)
    assert seeded is not None
    context = {
        "site": site,
        "patient": seeded,
        "src": src,
        "written": written_for(site, patient_id),
        "practitioner": _name(site.store.read("Practitioner", who)),
        "practitioner_id": who,
        "practitioners": [(pid, _name(site.store.read("Practitioner", pid))) for pid in site.seed.practitioner_ids],
        "encounter": site.store.read("Encounter", seeded.open_encounter_id) if seeded.open_encounter_id else None,
    }
    return Template("ehr/chart.html", context=context)


@get("/ehr/{site_key:str}/side-by-side")
async def side_by_side(request: AnyRequest) -> Template:
    site_key = path_param(request, "site_key")
    left = request.query_params.get("left", "")
    right = request.query_params.get("right", "")
    sandbox = sandbox_of(request)
    site = _site(sandbox, site_key)
    ids = [p.patient_id for p in site.seed.patients]
    left = left or ids[0]
    right = right or ids[1]
    who = _practitioner(site, None)
    panes = [{"patient": site.patient(pid), "src": _launch_src(sandbox, site, pid, who)} for pid in (left, right)]
    return Template("ehr/side_by_side.html", context={"site": site, "panes": panes})


@get("/ehr/{site_key:str}/documents/{rtype:str}/{rid:str}")
async def document(request: AnyRequest) -> Response[bytes]:
    site_key = path_param(request, "site_key")
    rtype = path_param(request, "rtype")
    rid = path_param(request, "rid")
    site = _site(sandbox_of(request), site_key)
    resource = site.store.current.get(rtype, {}).get(rid)
    if resource is None:
        raise NotFoundException(f"no {rtype}/{rid}")
    attachments = [c.get("attachment", {}) for c in resource.get("content", [])] or resource.get("presentedForm", [])
    if not attachments or "data" not in attachments[0]:
        raise NotFoundException("no inline attachment")
    kind = attachments[0].get("contentType", "application/octet-stream")
    return Response(base64.b64decode(attachments[0]["data"]), media_type=kind)


@get("/ehr/smart-style.json")
async def smart_style() -> Response[Any]:
    return Response(SMART_STYLE, media_type="application/json")


ROUTES = [root, ehr_index, chart, side_by_side, document, smart_style]
