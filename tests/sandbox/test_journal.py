"""The per-site request journal (sandbox.journal): every FHIR request with what was answered, writes only, clearing,
refusals the router or a personality produced, Bundle summaries, and the body still reaching the handler."""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import pytest

from sandbox.journal import summarise
from sandbox.personalities import FLOWSHEET_SYSTEM
from tests.sandbox.support import Clock, Server
from tests.sandbox.test_fhir import reading, system_token
from tests.sandbox.test_writes import flowsheet_row


def journal(http: httpx.Client, site: str, **params: str) -> list[dict[str, object]]:
    response = http.get(f"/sandbox/sites/{site}/journal", params=params)
    assert response.status_code == 200, response.text
    entries: list[dict[str, object]] = response.json()
    return entries


def clear(http: httpx.Client, site: str) -> None:
    assert http.delete(f"/sandbox/sites/{site}/journal").status_code == 204


def test_records_every_fhir_request_with_its_answer(http: httpx.Client, server: Server, clock: Clock) -> None:
    site = "epic-like"
    clear(http, site)
    assert journal(http, site) == []
    headers = system_token(http, server, site)  # the token endpoint is not FHIR: not journaled
    pid = server.patient(site, "p6")
    clock.offset += 120  # the journal tells the sandbox's time
    assert http.get(f"/sites/{site}/fhir/metadata", params={"_format": "json"}).status_code == 200
    assert http.get(f"/sites/{site}/fhir/Patient/{pid}", headers=headers).status_code == 200
    row = flowsheet_row(pid, server.open_encounter(site, pid), "2026-11-26T07:13:00-05:00", 64.0)
    created = http.post(f"/sites/{site}/fhir/Observation", json=row, headers=headers)
    assert created.status_code == 201, created.text  # the body was replayed to the handler
    lab = http.post(f"/sites/{site}/fhir/Observation", json=reading(pid, "2026-11-26T07:13:00-05:00"), headers=headers)
    assert lab.status_code >= 400  # epic-like takes flowsheet rows only
    assert http.patch(f"/sites/{site}/fhir/Observation", json={}, headers=headers).status_code == 405  # router
    assert http.get(f"/sites/{site}/fhir/Observation").status_code == 401

    entries = journal(http, site)
    first = int(str(entries[0]["seq"]))  # seq counts over the server's life: clearing does not reset it
    assert [(e["seq"], e["method"], e["path"], e["status"]) for e in entries] == [
        (first, "GET", f"/sites/{site}/fhir/metadata", 200),
        (first + 1, "GET", f"/sites/{site}/fhir/Patient/{pid}", 200),
        (first + 2, "POST", f"/sites/{site}/fhir/Observation", 201),
        (first + 3, "POST", f"/sites/{site}/fhir/Observation", lab.status_code),
        (first + 4, "PATCH", f"/sites/{site}/fhir/Observation", 405),
        (first + 5, "GET", f"/sites/{site}/fhir/Observation", 401),
    ]
    assert entries[0]["query"] == "_format=json"
    assert entries[0]["resource_type"] is None
    written, refused = entries[2], entries[3]
    assert written["resource_type"] == "Observation"
    assert written["category"] == ["vital-signs"]
    assert written["codes"] == [{"system": FLOWSHEET_SYSTEM, "code": "3040101010"}]
    assert written["location"] == created.headers["location"]
    assert refused["category"] == ["laboratory"]
    assert refused["codes"] == [{"system": "http://loinc.org", "code": "99504-3"}]
    assert refused["location"] is None
    when = datetime.fromisoformat(str(written["time"]))
    assert abs(when.timestamp() - clock()) < 30
    assert when - datetime.fromisoformat(str(entries[0]["time"])) < timedelta(seconds=30)

    writes = journal(http, site, writes="1")
    assert [(e["seq"], e["method"]) for e in writes] == [(first + 2, "POST"), (first + 3, "POST"), (first + 4, "PATCH")]


def test_sites_have_their_own_journals(http: httpx.Client, server: Server) -> None:
    clear(http, "read-only")
    clear(http, "cgm-receiver")
    headers = system_token(http, server, "read-only")
    pid = server.patient("read-only", "p1")
    refused = http.post("/sites/read-only/fhir/Observation", json=reading(pid, "2026-11-20T10:00:00Z"), headers=headers)
    assert refused.status_code == 403
    (entry,) = journal(http, "read-only", writes="1")
    assert (entry["status"], entry["resource_type"], entry["category"]) == (403, "Observation", ["laboratory"])
    assert journal(http, "cgm-receiver") == []

    clear(http, "read-only")
    assert journal(http, "read-only") == []


def test_bundle_entries_are_summarised(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    clear(http, site)
    headers = system_token(http, server, site)
    pid = server.patient(site, "p4")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    assert http.post(f"/sites/{site}/fhir", json=bundle, headers=headers).status_code == 200
    (entry,) = journal(http, site)
    assert entry["resource_type"] == "Bundle"
    assert entry["entries"] == [
        {"method": "GET", "url": f"Patient/{pid}", "resource_type": None},
        {"method": "POST", "url": "Observation", "resource_type": "Observation"},
    ]


def test_unknown_site(http: httpx.Client) -> None:
    assert http.get("/sandbox/sites/nowhere/journal").status_code == 404
    assert http.delete("/sandbox/sites/nowhere/journal").status_code == 404
    assert http.get("/sites/nowhere/fhir/metadata").status_code == 404  # not journaled anywhere, no error


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", None),
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"no": "type"}', None),
        (b'{"resourceType": "Patient", "name": [{"family": "Q"}]}', "Patient"),
    ],
)
def test_summarise_odd_bodies(body: bytes, expected: str | None) -> None:
    summary = summarise(body)
    assert summary.resource_type == expected
    assert (summary.category, summary.codes) == ((), ())


def test_summarise_observation_with_several_categories() -> None:
    body = (
        b'{"resourceType": "Observation", "category": [{"coding": [{"code": "laboratory"}]}, '
        b'{"coding": [{"system": "s", "code": "cgm"}, {"display": "no code"}]}], '
        b'"code": {"coding": [{"system": "http://loinc.org", "code": "97510-2"}, {"code": "local"}]}}'
    )
    summary = summarise(body)
    assert summary.category == ("laboratory", "cgm")
    assert summary.codes == ({"system": "http://loinc.org", "code": "97510-2"}, {"system": "", "code": "local"})
