"""Contract: the write path (plan → sign-off → outbox worker → broker) against sekmet-fhir, a FHIR server nobody on
this team wrote. A generic SMART R4 site: one transaction Bundle with conditional creates and a Provenance, sent
with a Backend Services token taken through discovery; a lost answer is reconciled by reading back from sekmet."""

from __future__ import annotations

import asyncio
import io
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bff.broker.broker import Broker, backend_token_source
from bff.capabilities import CapabilityService
from bff.clinical import PatientOutcomesView
from bff.ingest.registry import parser_for
from bff.outbox import queue
from bff.outbox.worker import OutboxWorker, WorkerConfig
from bff.smart.backend import BackendAuth
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.writeback import WritebackService
from sandbox.faultproxy import FaultProxy
from tests.contract.conftest import BackendClient
from tests.peers.sekmet import SekmetServer

SITE = """version = 1
vendor = "generic"

[smart]
iss = "{iss}"
client_id = "{client}"
scopes = ["launch", "openid", "fhirUser", "patient/Observation.read"]

[fhir]
version = "R4"

[write]
mode = "full"
channel = "fhir"
observation_category = "laboratory"
note_type = "cgm-summary"
encounter_policy = "none"

[rate_limit]
rps = 20.0
burst = 20
"""


def readings(patient: str, days: int = 14) -> bytes:
    """Two weeks of 5-minute CGM Observations with a daily swing (the shape the FHIR feed ingests)."""
    end = datetime(2026, 11, 25, tzinfo=UTC)
    lines = []
    for k in range(days * 288):
        at = end - timedelta(minutes=5 * k)
        value = round(140 + 70 * math.sin(k / 288 * 2 * math.pi) + (k % 7) * 3)
        lines.append(orjson.dumps({
            "resourceType": "Observation", "id": f"r{k}", "status": "final",
            "identifier": [{"system": "https://example.org/cgm", "value": f"{patient}-{k}"}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
            "subject": {"reference": f"Patient/{patient}"}, "effectiveDateTime": at.isoformat(),
            "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        }))  # fmt: skip
    return b"\n".join(lines)


def setup(store: Store, tmp_path: Path, iss: str, client: BackendClient, http: httpx.AsyncClient) -> tuple[
        WritebackService, OutboxWorker, str]:  # fmt: skip
    sites = tmp_path / "sites"
    sites.mkdir(exist_ok=True)
    (sites / "sekmet.toml").write_text(SITE.format(iss=iss, client=client.client_id))
    capabilities = CapabilityService(store, sites)
    auth = BackendAuth(client.client_id, client.pem, client.kid, client.alg, http=http)
    broker = Broker(http, backend_token_source(auth), timeout_s=1.5)
    writeback = WritebackService(store, capabilities)
    worker = OutboxWorker(store, capabilities, broker, writeback=writeback,
                          config=WorkerConfig(unknown_recheck_s=0.0, backoff_base_s=0.05, retry_min_s=0.0))  # fmt: skip
    return writeback, worker, iss


async def create_patient(http: httpx.AsyncClient, auth: BackendAuth, base: str) -> str:
    token = await auth.token(base, ["system/*.cruds"])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    body = {"resourceType": "Patient", "name": [{"family": "Test"}]}
    response = await http.post(f"{base}/Patient", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.headers["location"].split("/Patient/")[1].split("/")[0])


async def search(http: httpx.AsyncClient, auth: BackendAuth, base: str, query: str) -> list[dict[str, Any]]:
    token = await auth.token(base, ["system/*.cruds"])
    response = await http.get(f"{base}/{query}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


def test_sign_off_to_sekmet_writes_once_with_provenance(
    sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient], sqlite_store: Store, tmp_path: Path
) -> None:
    client = sekmet_clients["es384"]
    proxy = FaultProxy(sekmet.root).start()
    try:
        iss = proxy.url + sekmet.base_url.removeprefix(sekmet.root)

        async def scenario() -> None:
            async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
                auth = BackendAuth(client.client_id, client.pem, client.kid, client.alg, http=http)
                patient = await create_patient(http, auth, sekmet.base_url)
                Ingestor(sqlite_store).ingest(parser_for("fhir"), io.BytesIO(readings(patient)), site="sekmet",
                                              source_name="feed.ndjson", site_zone="America/Chicago")  # fmt: skip
                public = PatientOutcomesView(sqlite_store).public_id("sekmet", patient)
                assert public is not None
                writeback, worker, _ = setup(sqlite_store, tmp_path, iss, client, http)
                review = writeback.review("sekmet", public)
                assert review.refusal is None, review.refusal
                assert [w.kind for w in review.writes] == ["bundle", "note"]
                # The first answer is lost after sekmet committed the transaction: read back, never resent.
                proxy.add_rule({"match": {"method": "POST"}, "action": "hang_after_commit", "seconds": 3, "times": 1})
                view = writeback.sign("sekmet", public, digest=review.digest, signer="Practitioner/1")
                await worker.drain(["sekmet"], timeout_s=30)
                view = writeback.status(view.id)
                assert view.state == "confirmed", [(i.kind, i.state, i.last_error) for i in view.intents]
                attempts = [a.outcome for i in view.intents for a in queue.attempts_of(sqlite_store, i.id)]
                assert "unknown" in attempts
                assert len([e for e in proxy.journal(writes=True) if e.forwarded]) == 2  # bundle + note, once each
                summary = await search(http, auth, sekmet.base_url,
                                       f"Observation?patient={patient}&code=http://loinc.org|107931-8")  # fmt: skip
                assert len(summary) == 1
                provenance = await search(
                    http, auth, sekmet.base_url, f"Provenance?target=Observation/{summary[0]['id']}"
                )
                assert len(provenance) == 1
                documents = await search(http, auth, sekmet.base_url, f"DocumentReference?patient={patient}")
                kinds = sorted(d["type"]["coding"][0]["code"] for d in documents)
                assert len(kinds) == 2, kinds  # the note and the raw readings, once each
                assert kinds.count("cgm-summary") == 1, kinds

        asyncio.run(scenario())
    finally:
        proxy.stop()
