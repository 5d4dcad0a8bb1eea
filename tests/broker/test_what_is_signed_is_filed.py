"""What the clinician signs is what is filed (issue 11): for every vendor path, each value as the review shows it =
as the plan carries it = as the EHR stores it = as it is read back, string for string, in mg/dL and mmol/L views.

Paths: Epic flowsheet rows, Oracle single Observations, a CGM IG receiver ($submit-cgm-bundle), a generic SMART
server in R4 and in R5 (one transaction), and HL7 v2 (ORU^R01 over MLLP: the message as the EHR's interface
received it; MLLP has no read-back). The review's values are those the review page renders (`signed_values`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from app.web.presenters import signed_values
from bff.hl7 import parse_message
from bff.hl7.ack import build_ack
from bff.hl7.mllp import MllpServer
from engine.catalogue import LOINC, METRICS, READING_UNITS, TIMES_IN_RANGES_PANEL, by_code
from tests.broker.conftest import SIGNER, Rig, ingest_site

WHO = "test"
#: (site, matrix overrides) of each vendor path.
PATHS = {
    "epic-flowsheet": ("epic-like", {}),
    "oracle-observations": ("oracle-like", {}),
    "cgm-ig-receiver": ("cgm-receiver", {}),
    # The receiver's server as a generic SMART site (issue 12: cgm-receiver.toml says vendor = "cgm-ig-receiver",
    # where it said vendor = "generic" plus [fhir] cgm_ig_receiver = true; the override follows).
    "generic-r4": ("cgm-receiver", {"vendor": "generic"}),
    "generic-r5": ("cgm-receiver", {"vendor": "generic", "fhir.version": "R5"}),
    "hl7v2": ("hl7-only", {}),
}


def observation_values(resources: list[Mapping[str, Any]]) -> dict[str, str]:
    """LOINC code -> the value's JSON text, for every metric Observation (and Times in Ranges component)."""
    out: dict[str, str] = {}
    for resource in resources:
        if resource.get("resourceType") != "Observation":
            continue
        parts = [resource, *resource.get("component", [])]
        for part in parts:
            quantity = part.get("valueQuantity")
            if not quantity:
                continue
            for coding in part.get("code", {}).get("coding", []):
                if coding.get("system") == LOINC and coding.get("code") not in READING_UNITS:
                    out[str(coding["code"])] = json.dumps(quantity["value"])
    return out


def bundle_resources(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if body.get("resourceType") == "Parameters":
        body = next(p["resource"] for p in body["parameter"] if p.get("resource"))
    if body.get("resourceType") == "Bundle":
        return [e["resource"] for e in body.get("entry", [])]
    return [body]


def oru_values(text: str) -> dict[str, str]:
    out = {}
    for obx in parse_message(text).segments_named("OBX"):
        if obx.field(2) != "NM":
            continue
        for code, system in ((obx.component(3, 1), obx.component(3, 3)), (obx.component(3, 4), obx.component(3, 6))):
            if system == "LN":
                out[code] = obx.field(5)
    return out


def review_values(content: Mapping[str, Any], view_unit: str) -> dict[str, str]:
    """Metric name -> the filed value as the review page shows it (the number, without its unit)."""
    out = {}
    for tile in signed_values(content, view_unit):
        shown = tile.goal.removeprefix("filed as ") if tile.goal.startswith("filed as ") else tile.value
        out[tile.label] = shown.split(" ")[0]
    return out


def read_back_values(rig: Rig, site: str, writes: Any) -> dict[str, str]:
    """Search the EHR over HTTP with the app's system token, the way the outbox reads a write back: each write's
    own read-back search, and for a Bundle its members by the patient."""
    caps = rig.caps(site)
    headers = rig.run(rig.broker._headers(caps))
    base = rig.broker.base(caps)
    resources: list[Mapping[str, Any]] = []
    searches = [(w.readback["type"], dict(w.readback["params"])) for w in writes if w.readback]
    if any(w.kind == "bundle" for w in writes):  # its members, by the metric codes (not the patient's readings)
        loinc = [c.code for m in METRICS for c in m.codes.values() if c.system == LOINC] + [TIMES_IN_RANGES_PANEL.code]
        codes = ",".join(f"{LOINC}|{code}" for code in loinc)
        searches.append(("Observation", {"patient": rig.ehr.patient(site, "p1"), "code": codes, "_count": "100"}))
    for rtype, params in searches:
        found = rig.run(rig.http.get(f"{base}/{rtype}", params=params, headers=headers))
        assert found.status_code == 200, found.text
        resources += [e["resource"] for e in found.json().get("entry", [])]
    return observation_values(resources)


@pytest.fixture(name="oru_inbox")
def fx_oru_inbox(rig: Rig) -> Iterator[list[str]]:
    """The hl7-only site's results interface: keeps every message as received and answers AA."""
    received: list[str] = []

    def handler(text: str, _peer: str) -> Any:
        received.append(text)
        return build_ack(text, "AA", "stored", datetime.now(UTC))

    server = MllpServer(handler)
    _, port = rig.run(server.start("127.0.0.1", 0))
    rig.capabilities.set("hl7-only", "hl7v2.port", port, who=WHO, reason="the test's results interface")
    try:
        yield received
    finally:
        rig.run(server.close())


@pytest.mark.parametrize("view_unit", ["mg/dL", "mmol/L"])
@pytest.mark.parametrize("path", list(PATHS))
def test_review_plan_ehr_and_read_back_carry_the_same_decimal_string(
    rig: Rig, oru_inbox: list[str], path: str, view_unit: str
) -> None:
    site, overrides = PATHS[path]
    rig.ehr.sandbox.sites[site].fhir_version = str(overrides.get("fhir.version", "R4"))  # an R5 server for R5
    for key, value in overrides.items():
        rig.capabilities.set(site, key, value, who=WHO, reason=f"the {path} path")
    # The mmol/L view at a site that files mmol/L; the mixed case (mmol/L view, mg/dL filed) is the next test.
    rig.capabilities.set(site, "write.glucose_unit", view_unit, who=WHO, reason="the unit the site files")
    public = ingest_site(rig.store, rig.ehr, site)["p1"]
    encounter = rig.ehr.encounter(site, "p1")
    review = rig.writeback.review(site, public, encounter=encounter, note_unit=view_unit)
    assert review.refusal is None, review.refusal
    reviewed = review_values(review.content, view_unit)

    planned: dict[str, str] = {}
    for write in review.writes:
        if write.kind == "hl7v2":
            planned |= oru_values(write.message or "")
        elif write.kind in ("flowsheet", "observations", "bundle"):
            planned |= observation_values(bundle_resources(write.body or {}))
    assert planned, [w.kind for w in review.writes]

    signed = rig.writeback.sign(site, public, digest=review.digest, signer=SIGNER, encounter=encounter,
                                note_unit=view_unit)  # fmt: skip
    rig.drain(site)
    assert rig.writeback.status(signed.id).state == "confirmed", rig.writeback.status(signed.id).intents

    if path == "hl7v2":
        (message,) = oru_inbox
        stored = read_back = oru_values(message)
    else:
        stored = observation_values(rig.ehr.created(site, "Observation"))
        read_back = read_back_values(rig, site, review.writes)

    for code, value in planned.items():
        metric, unit = by_code(LOINC, code) or (None, "")
        assert metric is not None, code
        assert stored.get(code) == value, (path, code, stored.get(code), value)
        assert read_back.get(code) == value, (path, code, read_back.get(code), value)
        assert reviewed[metric.name] == value, (path, metric.name, reviewed[metric.name], value, unit)


def test_a_mmol_l_view_at_a_site_that_files_mg_dl_reviews_both_labelled(rig: Rig) -> None:
    public = ingest_site(rig.store, rig.ehr, "oracle-like")["p1"]
    review = rig.writeback.review("oracle-like", public, note_unit="mmol/L")
    mean = next(t for t in signed_values(review.content, "mmol/L") if t.label == "Mean glucose")
    planned = observation_values(
        [w.body for w in review.writes if w.body and w.body.get("resourceType") == "Observation"]
    )
    assert mean.value.endswith(" mmol/L")
    assert mean.goal == f"filed as {planned['97507-8']} mg/dL"  # the site files mg/dL: exactly that string
    assert "105273-7" not in planned
