"""Personality write rules: read-only 403, hl7-only 405, epic-like flowsheet rows with 59189 on a replayed
reading and no conditional create, oracle-like dropping client identifiers, PDF documents and If-Match."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from sandbox.personalities import EPIC_DUPLICATE_READING, FLOWSHEET_SYSTEM
from tests.sandbox.flows import bearer, launch_token
from tests.sandbox.support import Server
from tests.sandbox.test_fhir import reading, system_token

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
WRITE_SCOPE = (
    "launch openid fhirUser patient/Observation.read patient/Observation.write patient/DocumentReference.write"
)


def flowsheet_row(patient_id: str, encounter_id: str | None, when: str, value: float = 71.5) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}],
        "code": {"coding": [{"system": FLOWSHEET_SYSTEM, "code": "3040101010"}], "text": "CGM time in range"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }
    if encounter_id:
        body["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return body


def note(patient_id: str, encounter_id: str | None, content_type: str = "text/plain") -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}], "text": "CGM summary"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "content": [
            {"attachment": {"contentType": content_type, "data": base64.b64encode(b"TIR 71.5 % over 14 days").decode()}}
        ],
        "context": {"period": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-25T00:00:00Z"}},
    }
    if encounter_id:
        body["context"]["encounter"] = [{"reference": f"Encounter/{encounter_id}"}]
    return body


def issue(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    first: dict[str, Any] = body["issue"][0]
    return first


def test_read_only_site_refuses_writes(http: httpx.Client, server: Server) -> None:
    site = "read-only"
    headers = system_token(http, server, site)
    response = http.post(
        f"/sites/{site}/fhir/Observation",
        json=reading(server.patient(site, "p1"), "2026-11-20T10:00:00Z"),
        headers=headers,
    )
    assert response.status_code == 403
    assert issue(response)["code"] == "forbidden"
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": []}
    assert http.post(f"/sites/{site}/fhir", json=bundle, headers=headers).status_code == 403
    assert http.get(f"/sites/{site}/fhir/Observation", params={"_count": 1}, headers=headers).status_code == 200


def test_hl7_only_site_answers_405(http: httpx.Client, server: Server) -> None:
    site = "hl7-only"
    headers = system_token(http, server, site)
    response = http.post(
        f"/sites/{site}/fhir/Observation",
        json=reading(server.patient(site, "p1"), "2026-11-20T10:00:00Z"),
        headers=headers,
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "GET"
    assert "HL7 v2" in issue(response)["diagnostics"]


def test_epic_like_flowsheet_write_and_replay_59189(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    pid = server.patient(site, "p2")
    encounter = server.open_encounter(site, pid)
    token = launch_token(http, server, site, pid, scope=WRITE_SCOPE)
    assert token["encounter"] == encounter
    headers = bearer(token) | {"If-None-Exist": "code=x"}  # ignored: no conditional create
    body = flowsheet_row(pid, token["encounter"], "2026-11-26T09:00:00-05:00")
    created = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers)
    assert created.status_code == 201, created.text
    replay = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers)
    assert replay.status_code == 400
    assert issue(replay)["details"]["coding"][0]["code"] == EPIC_DUPLICATE_READING
    # The same row at another instant is a new reading.
    later = flowsheet_row(pid, token["encounter"], "2026-11-26T10:00:00-05:00", 72.0)
    assert http.post(f"/sites/{site}/fhir/Observation", json=later, headers=headers).status_code == 201


def test_epic_like_replayed_seed_reading_is_59189(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    pid = server.patient(site, "p1")
    headers = system_token(http, server, site)
    seeded = http.get(f"/sites/{site}/fhir/Observation", params={"patient": pid, "_count": 1}, headers=headers).json()
    existing = seeded["entry"][0]["resource"]
    body = {k: v for k, v in existing.items() if k not in ("id", "meta", "identifier")}
    body["encounter"] = {"reference": f"Encounter/{server.open_encounter(site, pid)}"}
    body["code"] = {"coding": [c for c in body["code"]["coding"] if c["system"] == "http://loinc.org"]}  # LOINC → row
    response = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers)
    assert response.status_code == 400
    assert issue(response)["details"]["coding"][0]["code"] == "59189"


def test_epic_like_refusals(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    headers = system_token(http, server, site)
    pid = server.patient(site, "p1")
    encounter = server.open_encounter(site, pid)
    lab = reading(pid, "2026-11-26T08:00:00-06:00") | {"encounter": {"reference": f"Encounter/{encounter}"}}
    assert (
        "vital-signs" in issue(http.post(f"/sites/{site}/fhir/Observation", json=lab, headers=headers))["diagnostics"]
    )
    no_visit = server.patient(site, "p5")  # no open encounter
    finished = http.get(f"/sites/{site}/fhir/Encounter", params={"patient": no_visit}, headers=headers).json()
    closed = finished["entry"][0]["resource"]["id"]
    response = http.post(
        f"/sites/{site}/fhir/Observation",
        json=flowsheet_row(no_visit, closed, "2026-11-26T08:00:00-08:00"),
        headers=headers,
    )
    assert response.status_code == 400
    assert "open encounter" in issue(response)["diagnostics"]
    pdf = http.post(
        f"/sites/{site}/fhir/DocumentReference", json=note(pid, encounter, "application/pdf"), headers=headers
    )
    assert pdf.status_code == 400
    assert "text/plain" in issue(pdf)["diagnostics"]
    device = http.post(f"/sites/{site}/fhir/Device", json={"resourceType": "Device"}, headers=headers)
    assert device.status_code == 405


def test_epic_like_notes_have_no_dedupe(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    pid = server.patient(site, "p6")
    token = launch_token(http, server, site, pid, scope=WRITE_SCOPE)
    headers = bearer(token) | {"If-None-Exist": "identifier=urn:test|note-1"}
    first = http.post(f"/sites/{site}/fhir/DocumentReference", json=note(pid, token["encounter"]), headers=headers)
    second = http.post(f"/sites/{site}/fhir/DocumentReference", json=note(pid, token["encounter"]), headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    # The shell shows what was written, and serves the note.
    chart = http.get(f"/ehr/{site}/patients/{pid}")
    assert "CGM summary" in chart.text
    view = http.get(f"/ehr/{site}/documents/DocumentReference/{first.json()['id']}")
    assert view.headers["content-type"].startswith("text/plain")
    assert view.text.startswith("TIR 71.5")


def test_oracle_like_drops_identifiers(http: httpx.Client, server: Server) -> None:
    site = "oracle-like"
    headers = system_token(http, server, site, "system/Observation.cruds")
    pid = server.patient(site, "p1")
    body = reading(pid, "2026-11-20T10:00:00-06:00") | {"identifier": [{"system": "urn:test", "value": "tir-1"}]}
    condition = {"If-None-Exist": "identifier=urn:test|tir-1"}
    first = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers | condition)
    assert first.status_code == 201, first.text
    assert "identifier" not in first.json()
    stored = http.get(first.headers["location"].rsplit("/_history", 1)[0], headers=headers).json()
    assert "identifier" not in stored
    second = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers | condition)
    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (
            {
                "category": [
                    {"coding": [{"system": CATEGORY, "code": "laboratory"}]},
                    {"coding": [{"system": CATEGORY, "code": "vital-signs"}]},
                ]
            },
            422,
        ),
        ({"category": [{"coding": [{"system": CATEGORY, "code": "survey"}]}]}, 422),
        ({"effectiveDateTime": None}, 500),
        ({"modifierExtension": [{"url": "urn:x", "valueBoolean": True}]}, 422),
    ],
)
def test_oracle_like_observation_rules(http: httpx.Client, server: Server, change: dict[str, Any], status: int) -> None:
    site = "oracle-like"
    headers = system_token(http, server, site, "system/Observation.cruds")
    body = reading(server.patient(site, "p2"), "2026-11-20T10:00:00-05:00") | change
    body = {k: v for k, v in body.items() if v is not None}
    response = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers)
    assert response.status_code == status, response.text


def test_oracle_like_documents_and_updates(http: httpx.Client, server: Server) -> None:
    site = "oracle-like"
    headers = system_token(http, server, site, "system/DocumentReference.cruds system/Observation.cruds")
    pid = server.patient(site, "p3")
    pdf = http.post(f"/sites/{site}/fhir/DocumentReference", json=note(pid, None, "application/pdf"), headers=headers)
    assert pdf.status_code == 201, pdf.text
    missing = note(pid, None, "application/pdf")
    del missing["context"]["period"]["end"]
    response = http.post(f"/sites/{site}/fhir/DocumentReference", json=missing, headers=headers)
    assert response.status_code == 500
    assert issue(response)["code"] == "required"
    # Update needs If-Match; a stale version is 409.
    created = http.post(
        f"/sites/{site}/fhir/Observation", json=reading(pid, "2026-11-20T11:00:00-05:00"), headers=headers
    )
    stored = created.json()
    url = f"/sites/{site}/fhir/Observation/{stored['id']}"
    changed = stored | {"status": "corrected", "identifier": [{"system": "urn:test", "value": "later"}]}
    assert http.put(url, json=changed, headers=headers).status_code == 412
    updated = http.put(url, json=changed, headers=headers | {"If-Match": 'W/"1"'})
    assert updated.status_code == 200
    assert updated.json()["meta"]["versionId"] == "2"
    assert updated.json()["identifier"][0]["value"] == "later"  # identifier can be set on update
    assert http.put(url, json=changed, headers=headers | {"If-Match": 'W/"1"'}).status_code == 409
