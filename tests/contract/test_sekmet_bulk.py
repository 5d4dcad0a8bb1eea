"""Contract: glucobridge's Bulk Data client (bff.bulk) against sekmet-fhir's `$export` over real HTTP.

sekmet 0.1.1 implements Bulk Data (Group, Patient and system `$export`, `_type`, `_since`, `_typeFilter`; 202 with
Content-Location, polls with X-Progress and Retry-After, a manifest with `requiresAccessToken: true`, NDJSON files
behind the token, DELETE). Two patients with CGM readings and a Group are loaded with a transaction; a Group
export then fills an empty store with each reading once and the Patients' names; a second export sends the
`_since` watermark and adds nothing; a Patient-level export of everything adds nothing either.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from bff.broker.broker import backend_token_source
from bff.bulk import BulkClient, BulkRunner, Level
from bff.capabilities import CapabilityService
from bff.smart.backend import BackendAuth
from bff.store.db import Store
from bff.store.models import BulkJob, Patient, Reading
from tests.contract.conftest import BackendClient
from tests.peers.sekmet import SekmetServer

READINGS = 150  # per patient, every 5 minutes


def _bundle() -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    members = []
    start = datetime(2026, 11, 20, tzinfo=UTC)
    for number, family in enumerate(("Okafor", "Lindqvist")):
        patient = f"urn:uuid:{uuid.uuid4()}"
        members.append({"entity": {"reference": patient}})
        entries.append({"fullUrl": patient, "request": {"method": "POST", "url": "Patient"}, "resource": {
            "resourceType": "Patient", "name": [{"use": "official", "family": family, "given": ["Ada"]}],
            "birthDate": "1980-02-0" + str(number + 1),
            "identifier": [{"type": {"coding": [{"code": "MR"}]}, "system": "urn:test:mrn", "value": f"MRN{number}"}],
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/tz-code", "valueCode": "America/Denver"}],
        }})  # fmt: skip
        for i in range(READINGS):
            moment = (start + timedelta(minutes=5 * i)).isoformat()
            entries.append({"request": {"method": "POST", "url": "Observation"}, "resource": {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
                "subject": {"reference": patient}, "effectiveDateTime": moment,
                "valueQuantity": {"value": 90 + (i * 7 + number * 13) % 120, "unit": "mg/dL",
                                  "system": "http://unitsofmeasure.org", "code": "mg/dL"},
                "device": {"display": "Dexcom G6"},
            }})  # fmt: skip
    group = {"resourceType": "Group", "type": "person", "actual": True, "name": "CGM cohort", "member": members}
    entries.append({"request": {"method": "POST", "url": "Group"}, "resource": group})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_bulk_export_from_sekmet_fills_the_store_once(
    sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient], sqlite_store: Store, tmp_path: Path
) -> None:
    client = sekmet_clients["rs384"]

    async def scenario() -> list[Any]:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
            auth = BackendAuth(client.client_id, client.pem, client.kid, client.alg, http=http)
            token = await auth.token(sekmet.base_url, ("system/*.cruds",))
            loaded = await http.post(sekmet.base_url, json=_bundle(), headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})  # fmt: skip
            assert loaded.status_code == 200, loaded.text
            group = next(e["response"]["location"] for e in loaded.json()["entry"]
                         if "Group/" in e["response"]["location"]).split("/")[-3]  # fmt: skip
            sites = tmp_path / "sites"
            sites.mkdir()
            (sites / "sekmet.toml").write_text(
                f'version = 1\nvendor = "generic"\ntime_zone = "America/Chicago"\n[smart]\niss = "{sekmet.base_url}"\n'
                f'client_id = "gb"\nscopes = ["launch", "openid", "fhirUser", "patient/Observation.read"]\n'
                f'[bulk]\navailable = true\ngroup_ids = ["{group}"]\npoll_floor_s = 1\n'
            )
            bulk = BulkClient(http, backend_token_source(auth), forget_token=auth.forget)
            events: list[str] = []
            runner = BulkRunner(sqlite_store, CapabilityService(sqlite_store, sites), bulk, work_dir=tmp_path / "w",
                                on_event=events.append)  # fmt: skip
            first = await runner.start("sekmet")
            second = await runner.start("sekmet")
            everything = await runner.start("sekmet", level=Level.PATIENT, full=True)
            return [first, second, everything, events]

    first, second, everything, events = asyncio.run(scenario())
    assert [r.state for r in first] == ["complete"], events
    assert first[0].added == 2 * READINGS
    assert [r.state for r in second] == ["complete"], events
    assert second[0].added == 0
    assert [r.state for r in everything] == ["complete"], events
    assert everything[0].added == 0
    assert everything[0].already_present >= 2 * READINGS
    with sqlite_store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == 2 * READINGS
        assert session.scalar(select(func.count(func.distinct(Reading.reading_key)))) == 2 * READINGS
        patients = list(session.scalars(select(Patient)))
        kickoffs = [j.kickoff_url for j in session.scalars(select(BulkJob).order_by(BulkJob.id))]
    assert sorted(p.family_name or "" for p in patients) == ["Lindqvist", "Okafor"]
    assert {(p.tz, p.tz_source) for p in patients} == {("America/Denver", "ehr")}
    assert "_since=" not in kickoffs[0]
    assert "_since=" in kickoffs[1]
    assert any("in progress" in e for e in events)
