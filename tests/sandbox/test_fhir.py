"""The FHIR server: metadata per site, search filters and paging, compartments, conditional create, transactions,
$submit-cgm-bundle and structure validation."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from sandbox.seed import PATIENT_TIME_ZONE_EXTENSION, READING_ID_SYSTEM
from tests.sandbox.flows import assertion, backend_token, bearer, launch_token
from tests.sandbox.support import Server

LOINC = "http://loinc.org"


def system_token(http: httpx.Client, server: Server, site: str, scope: str = "system/*.cruds") -> dict[str, str]:
    signed = assertion(server.keys.rsa, "RS384", "test-backend", server.token_url(site))
    response = backend_token(http, site, signed, scope)
    assert response.status_code == 200, response.text
    return bearer(response.json())


def reading(patient_id: str, when: str, value: float = 123, unit: str = "mg/dL") -> dict[str, Any]:
    code = "99504-3" if unit == "mg/dL" else "105272-9"
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def test_metadata_per_site(http: httpx.Client, server: Server) -> None:
    receiver = http.get("/sites/cgm-receiver/fhir/metadata").json()
    assert receiver["instantiates"] == ["http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver"]
    assert receiver["rest"][0]["operation"][0]["name"] == "submit-cgm-bundle"
    oracle = http.get("/sites/oracle-like/fhir/metadata").json()
    assert "instantiates" not in oracle
    assert "operation" not in oracle["rest"][0]
    observation = next(r for r in oracle["rest"][0]["resource"] if r["type"] == "Observation")
    assert {"read", "search-type", "create", "update"} <= {i["code"] for i in observation["interaction"]}
    uris = oracle["rest"][0]["security"]["extension"][0]["extension"]
    assert {u["url"]: u["valueUri"] for u in uris}["token"] == server.token_url("oracle-like")
    # Epic-like answers XML unless JSON is asked for.
    xml = http.get("/sites/epic-like/fhir/metadata")
    assert xml.headers["content-type"].startswith("application/fhir+xml")
    assert xml.text.startswith("<?xml")
    assert '<fhirVersion value="4.0.1"/>' in xml.text
    epic = http.get("/sites/epic-like/fhir/metadata", headers={"Accept": "application/fhir+json"}).json()
    epic_obs = next(r for r in epic["rest"][0]["resource"] if r["type"] == "Observation")
    assert "update" not in {i["code"] for i in epic_obs["interaction"]}
    assert "interaction" not in epic["rest"][0]
    readonly = http.get("/sites/read-only/fhir/metadata").json()
    assert all("create" not in {i["code"] for i in r["interaction"]} for r in readonly["rest"][0]["resource"])


def test_fhir_needs_a_token(http: httpx.Client) -> None:
    response = http.get("/sites/cgm-receiver/fhir/Patient")
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_search_paging_and_code_date_filters(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    headers = system_token(http, server, site)
    pid = server.patient(site, "p3")
    code = quote(f"{LOINC}|99504-3", safe="")
    url = f"/sites/{site}/fhir/Observation?patient={pid}&code={code}&date=ge2026-10-31&date=lt2026-11-02&_count=200"
    first = http.get(url, headers=headers).json()
    assert first["type"] == "searchset"
    total = first["total"]
    assert 500 < total <= 2 * 288  # two local days around the DST change
    seen = []
    page: dict[str, Any] | None = first
    while page is not None:
        seen.extend(e["resource"] for e in page.get("entry", []))
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        page = http.get(following[0], headers=headers).json() if following else None
    assert len(seen) == total == len({r["id"] for r in seen})
    offsets = {r["effectiveDateTime"][-6:] for r in seen}
    assert offsets == {"-04:00", "-05:00"}
    instants = [datetime.fromisoformat(r["effectiveDateTime"]) for r in seen]
    assert min(instants) >= datetime.fromisoformat("2026-10-31T00:00:00+00:00")
    assert max(instants) < datetime.fromisoformat("2026-11-02T00:00:00+00:00")
    assert all(r["subject"]["reference"] == f"Patient/{pid}" for r in seen)
    # The mmol/L code matches only the mmol patient; a wrong system matches nothing.
    mmol = http.get(
        f"/sites/{site}/fhir/Observation", params={"code": f"{LOINC}|105272-9", "_count": 1}, headers=headers
    ).json()
    assert mmol["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{server.patient(site, 'p2')}"
    assert mmol["entry"][0]["resource"]["valueQuantity"]["unit"] == "mmol/L"
    none = http.get(
        f"/sites/{site}/fhir/Observation", params={"code": "http://snomed.info/sct|99504-3"}, headers=headers
    ).json()
    assert none["total"] == 0
    assert "entry" not in none


def test_patients_are_served_with_their_time_zone(http: httpx.Client, server: Server) -> None:
    """Each site serves every Patient with the person's IANA zone in the sandbox's time zone extension."""
    for site, state in server.sandbox.sites.items():
        headers = system_token(http, server, site, "system/Patient.rs")
        bundle = http.get(f"/sites/{site}/fhir/Patient", params={"_count": 50}, headers=headers).json()
        served = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
        for seeded in state.seed.patients:
            zones = [x for x in served[seeded.patient_id]["extension"] if x["url"] == PATIENT_TIME_ZONE_EXTENSION]
            assert zones == [{"url": PATIENT_TIME_ZONE_EXTENSION, "valueCode": seeded.person.zone}], site


def test_search_identifier_category_sort_and_read(http: httpx.Client, server: Server) -> None:
    site = "oracle-like"
    headers = system_token(http, server, site, "system/Observation.rs system/Device.rs system/Patient.rs")
    pid = server.patient(site, "p1")
    latest = http.get(
        f"/sites/{site}/fhir/Observation",
        params={"patient": f"Patient/{pid}", "_sort": "-date", "_count": 1},
        headers=headers,
    ).json()
    newest = latest["entry"][0]["resource"]
    assert newest["id"].startswith("L-")
    record = newest["identifier"][0]
    by_id = http.get(
        f"/sites/{site}/fhir/Observation",
        params={"identifier": f"{READING_ID_SYSTEM}|{record['value']}"},
        headers=headers,
    ).json()
    assert by_id["total"] == 1
    assert by_id["entry"][0]["resource"]["id"] == newest["id"]
    read = http.get(f"/sites/{site}/fhir/Observation/{newest['id']}", headers=headers)
    assert read.status_code == 200
    assert read.json() == newest
    assert read.headers["etag"] == 'W/"1"'
    assert http.get(f"/sites/{site}/fhir/Observation/{newest['id']}/_history/1", headers=headers).status_code == 200
    device = http.get(f"/sites/{site}/fhir/{newest['device']['reference']}", headers=headers).json()
    assert device["deviceName"][0]["name"] == "Dexcom G6" == newest["device"]["display"]
    vitals = http.get(
        f"/sites/{site}/fhir/Observation", params={"category": "vital-signs", "_summary": "count"}, headers=headers
    ).json()
    assert vitals["total"] == 0
    assert "entry" not in vitals
    labs = http.get(
        f"/sites/{site}/fhir/Observation",
        params={"patient": pid, "category": "laboratory", "_count": 0},
        headers=headers,
    ).json()
    assert labs["total"] > 20_000
    assert http.get(f"/sites/{site}/fhir/Observation/L-999", headers=headers).status_code == 404
    empty = http.get(
        f"/sites/{site}/fhir/Observation", params={"patient": server.patient(site, "p4")}, headers=headers
    ).json()
    assert empty["total"] == 0


def test_patient_scoped_token_stays_in_its_compartment(http: httpx.Client, server: Server) -> None:
    site = "read-only"
    mine, other = server.patient(site, "p1"), server.patient(site, "p2")
    token = launch_token(http, server, site, mine, scope="launch openid fhirUser patient/*.rs")
    headers = bearer(token)
    assert http.get(f"/sites/{site}/fhir/Patient/{mine}", headers=headers).status_code == 200
    assert http.get(f"/sites/{site}/fhir/Patient/{other}", headers=headers).status_code == 403
    assert http.get(f"/sites/{site}/fhir/Observation", params={"patient": other}, headers=headers).status_code == 403
    narrowed = http.get(f"/sites/{site}/fhir/Observation", params={"_count": 5}, headers=headers).json()
    assert {e["resource"]["subject"]["reference"] for e in narrowed["entry"]} == {f"Patient/{mine}"}
    others = http.get(
        f"/sites/{site}/fhir/Observation",
        params={"patient": other, "_count": 1},
        headers=system_token(http, server, site),
    ).json()
    foreign = others["entry"][0]["resource"]["id"]
    assert http.get(f"/sites/{site}/fhir/Observation/{foreign}", headers=headers).status_code == 403
    assert http.get(f"/sites/{site}/fhir/Group", headers=headers).status_code == 403
    practitioners = http.get(f"/sites/{site}/fhir/Practitioner", headers=headers).json()
    assert practitioners["total"] == 3
    # Scope letters matter: a read-only (rs) token cannot create.
    create = http.post(f"/sites/{site}/fhir/Observation", json=reading(mine, "2026-11-20T10:00:00Z"), headers=headers)
    assert create.status_code == 403


def test_conditional_create_and_validation(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    headers = system_token(http, server, site)
    pid = server.patient(site, "p4")
    body = reading(pid, "2026-11-20T10:00:00-07:00") | {"identifier": [{"system": "urn:test", "value": "r-1"}]}
    condition = {"If-None-Exist": "identifier=urn:test|r-1"}
    created = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers | condition)
    assert created.status_code == 201, created.text
    location = created.headers["location"]
    assert location.startswith(server.fhir(site) + "/Observation/")
    assert location.endswith("/_history/1")
    assert created.headers["etag"] == 'W/"1"'
    assert created.json()["identifier"] == body["identifier"]
    again = http.post(f"/sites/{site}/fhir/Observation", json=body, headers=headers | condition)
    assert again.status_code == 200
    assert again.json()["id"] == created.json()["id"]
    invalid = http.post(
        f"/sites/{site}/fhir/Observation",
        json={"resourceType": "Observation", "status": "final", "valueQuantity": "high"},
        headers=headers,
    )
    assert invalid.status_code == 400
    assert invalid.json()["issue"][0]["code"] == "structure"
    assert "code" in invalid.json()["issue"][0]["diagnostics"]


def test_transaction_rewrites_urn_uuids(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    headers = system_token(http, server, site)
    pid = server.patient(site, "p1")
    device_urn = "urn:uuid:6f0c1d2e-0000-4000-8000-000000000001"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": device_urn,
                "resource": {
                    "resourceType": "Device",
                    "serialNumber": "TX-1",
                    "patient": {"reference": f"Patient/{pid}"},
                },
                "request": {"method": "POST", "url": "Device"},
            },
            {
                "fullUrl": "urn:uuid:6f0c1d2e-0000-4000-8000-000000000002",
                "resource": reading(pid, "2026-11-21T08:00:00-06:00") | {"device": {"reference": device_urn}},
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        ],
    }
    response = http.post(f"/sites/{site}/fhir", json=bundle, headers=headers)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "201 Created", "200 OK"]
    device_ref = "/".join(entries[0]["response"]["location"].split("/")[-4:-2])
    observation = http.get(entries[1]["response"]["location"].rsplit("/_history", 1)[0], headers=headers).json()
    assert observation["device"]["reference"] == device_ref
    # All or nothing: one bad entry and nothing is stored.
    before = http.get(f"/sites/{site}/fhir/Device", params={"patient": pid, "_summary": "count"}, headers=headers)
    bad = {
        **bundle,
        "entry": [
            bundle["entry"][0],
            {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    assert http.post(f"/sites/{site}/fhir", json=bad, headers=headers).status_code == 400
    after = http.get(f"/sites/{site}/fhir/Device", params={"patient": pid, "_summary": "count"}, headers=headers)
    assert after.json()["total"] == before.json()["total"]


def test_submit_cgm_bundle_keeps_what_it_can(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    headers = system_token(http, server, site)
    pid = server.patient(site, "p6")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": reading(pid, "2026-11-22T09:00:00-07:00"),
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:test|never"},
            },
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Observation", "status": "final"},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    parameters = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bundle}]}
    response = http.post(f"/sites/{site}/fhir/$submit-cgm-bundle", json=parameters, headers=headers)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"].split()[0] for e in result["entry"]] == ["201", "400", "400"]
    assert result["entry"][2]["response"]["outcome"]["issue"][0]["code"] == "structure"
    elsewhere = http.post(
        "/sites/oracle-like/fhir/$submit-cgm-bundle",
        json=bundle,
        headers=system_token(http, server, "oracle-like", "system/Observation.cruds"),
    )
    assert elsewhere.status_code == 404


@pytest.mark.parametrize("site", ["epic-like", "oracle-like"])
def test_vendor_sites_take_no_transactions(http: httpx.Client, server: Server, site: str) -> None:
    scope = "system/Observation.cruds" if site == "oracle-like" else "system/*.cruds"
    response = http.post(
        f"/sites/{site}/fhir",
        json={"resourceType": "Bundle", "type": "transaction", "entry": []},
        headers=system_token(http, server, site, scope),
    )
    assert response.status_code == 400
    assert response.json()["issue"][0]["code"] == "not-supported"
