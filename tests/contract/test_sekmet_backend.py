"""Contract: glucobridge's SMART Backend Services client (bff.smart.backend) against sekmet-fhir over real HTTP.

System tokens with RS384 and ES384 assertions made by `BackendAuth`, the token endpoint taken from sekmet's
smart-configuration; reads and searches; an outcome Observation plus a Provenance targeting it, read back by
identifier, by code and date, and by target; a replayed `jti` refused; a read-only client refused on create.

sekmet's smart-configuration has no `code_challenge_methods_supported` (it does no App Launch): discovery accepts
that for a Backend Services only server. Some tests get their tokens through the parts of our client that
`token()` uses (`BackendAuth.assertion(token_endpoint)` and `bff.smart.tokens.request_token`) to see each step.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from bff.smart.backend import ASSERTION_TYPE, BackendAuth
from bff.smart.discovery import WELL_KNOWN
from bff.smart.errors import BackendAuthError
from bff.smart.tokens import TokenResponse, request_token
from tests.contract.conftest import BackendClient
from tests.peers.sekmet import SekmetServer

T = TypeVar("T")
LOINC = "http://loinc.org"
TIR = "97510-2"
INTENT_SYSTEM = "urn:glucobridge:write-intent"
MRN_SYSTEM = "urn:glucobridge:test-mrn"


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
            return await scenario(http)

    return asyncio.run(main())


def backend_auth(client: BackendClient, http: httpx.AsyncClient) -> BackendAuth:
    return BackendAuth(client.client_id, client.pem, client.kid, client.alg, http=http)


async def token_endpoint(http: httpx.AsyncClient, server: SekmetServer) -> str:
    """From smart-configuration, never built (test-peers.md: `aud` is compared as a string)."""
    response = await http.get(server.base_url + WELL_KNOWN)
    assert response.status_code == 200, response.text
    endpoint: str = response.json()["token_endpoint"]
    return endpoint


def token_form(assertion: str, scope: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scope,
    }


async def system_token(http: httpx.AsyncClient, server: SekmetServer, client: BackendClient) -> TokenResponse:
    endpoint = await token_endpoint(http, server)
    assertion = backend_auth(client, http).assertion(endpoint)
    return await request_token(http, endpoint, token_form(assertion, client.scopes), BackendAuthError)


def bearer(token: TokenResponse) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.access_token}", "Accept": "application/fhir+json"}


def location_id(response: httpx.Response, rtype: str) -> str:
    """The id in a `Location` of the form {base}/{type}/{id}/_history/{vid}."""
    parts = response.headers["location"].split("/")
    assert parts[-4] == rtype, response.headers["location"]
    assert parts[-2] == "_history"
    return parts[-3]


def patient(mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
        "name": [{"family": "Quinn", "given": ["Avery"]}],
        "birthDate": "1984-03-02",
    }


def tir_observation(patient_id: str, intent: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": INTENT_SYSTEM, "value": intent}],
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}
        ],
        "code": {"coding": [{"system": LOINC, "code": TIR, "display": "Glucose in range"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectivePeriod": {"start": "2026-11-11T00:00:00Z", "end": "2026-11-25T00:00:00Z"},
        "issued": "2026-11-25T10:00:00Z",
        "valueQuantity": {"value": 71.5, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"},
    }


def provenance(observation_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"Observation/{observation_id}"}],
        "recorded": "2026-11-25T10:00:01Z",
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "assembler",
                        }
                    ]
                },
                "who": {"display": "glucobridge"},
            }
        ],
        "entity": [{"role": "source", "what": {"identifier": {"system": "urn:glucobridge:readings", "value": "x"}}}],
    }


# MARK: discovery and tokens


def test_smart_configuration(sekmet: SekmetServer) -> None:
    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        document: dict[str, Any] = (await http.get(sekmet.base_url + WELL_KNOWN)).json()
        return document

    document = run(scenario)
    assert document["token_endpoint"] == f"{sekmet.root}/auth/token"
    assert document["grant_types_supported"] == ["client_credentials"]
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    assert {"RS384", "ES384"} <= set(document["token_endpoint_auth_signing_alg_values_supported"])
    assert "code_challenge_methods_supported" not in document  # no user launch: discovery must not insist on PKCE


def test_backend_auth_token_through_discovery(sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient]) -> None:
    async def scenario(http: httpx.AsyncClient) -> str:
        return await backend_auth(sekmet_clients["rs384"], http).token(sekmet.base_url, ["system/*.cruds"])

    assert run(scenario)


@pytest.mark.parametrize("name", ["rs384", "es384"])
def test_system_token(name: str, sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient]) -> None:
    client = sekmet_clients[name]

    async def scenario(http: httpx.AsyncClient) -> tuple[TokenResponse, int, int]:
        token = await system_token(http, sekmet, client)
        allowed = await http.get(f"{sekmet.base_url}/Patient", params={"_count": "1"}, headers=bearer(token))
        anonymous = await http.get(f"{sekmet.base_url}/Patient", params={"_count": "1"})
        return token, allowed.status_code, anonymous.status_code

    token, allowed, anonymous = run(scenario)
    assert token.expires_in == 3600
    assert token.scopes == ("system/*.cruds",)
    assert (allowed, anonymous) == (200, 401)


def test_replayed_jti_is_refused(sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient]) -> None:
    client = sekmet_clients["es384"]

    async def scenario(http: httpx.AsyncClient) -> tuple[TokenResponse, BackendAuthError, TokenResponse]:
        endpoint = await token_endpoint(http, sekmet)
        auth = backend_auth(client, http)
        assertion = auth.assertion(endpoint)
        first = await request_token(http, endpoint, token_form(assertion, client.scopes), BackendAuthError)
        with pytest.raises(BackendAuthError) as replay:
            await request_token(http, endpoint, token_form(assertion, client.scopes), BackendAuthError)
        fresh = auth.assertion(endpoint)  # a new jti works again
        again = await request_token(http, endpoint, token_form(fresh, client.scopes), BackendAuthError)
        return first, replay.value, again

    first, refused, again = run(scenario)
    assert first.access_token
    assert again.access_token
    assert refused.status_code == 401
    assert refused.error == "invalid_client"
    assert "jti" in (refused.description or "")


# MARK: reads and writes


def test_create_read_and_search_a_patient(sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient]) -> None:
    mrn = f"MRN-{uuid.uuid4().hex[:10]}"

    async def scenario(http: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        headers = bearer(await system_token(http, sekmet, sekmet_clients["rs384"]))
        created = await http.post(f"{sekmet.base_url}/Patient", json=patient(mrn), headers=headers)
        read = await http.get(f"{sekmet.base_url}/Patient/{location_id(created, 'Patient')}", headers=headers)
        found = await http.get(
            f"{sekmet.base_url}/Patient", params={"identifier": f"{MRN_SYSTEM}|{mrn}"}, headers=headers
        )
        return created, read, found

    created, read, found = run(scenario)
    assert created.status_code == 201, created.text
    assert created.headers["etag"] == 'W/"1"'
    assert created.headers["location"].startswith(sekmet.base_url + "/Patient/")
    assert read.status_code == 200
    assert read.json()["identifier"] == [{"system": MRN_SYSTEM, "value": mrn}]
    assert read.json()["id"] == created.json()["id"]
    bundle = found.json()
    assert (bundle["resourceType"], bundle["type"], bundle["total"]) == ("Bundle", "searchset", 1)
    assert bundle["entry"][0]["resource"]["id"] == created.json()["id"]


def test_write_observation_with_provenance(sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient]) -> None:
    intent = f"intent-{uuid.uuid4().hex[:12]}"

    async def scenario(http: httpx.AsyncClient) -> dict[str, httpx.Response]:
        headers = bearer(await system_token(http, sekmet, sekmet_clients["es384"]))
        base = sekmet.base_url
        person = await http.post(f"{base}/Patient", json=patient(f"MRN-{intent}"), headers=headers)
        pid = location_id(person, "Patient")
        observation = await http.post(f"{base}/Observation", json=tir_observation(pid, intent), headers=headers)
        oid = location_id(observation, "Observation")
        prov = await http.post(f"{base}/Provenance", json=provenance(oid), headers=headers)
        code = f"{LOINC}|{TIR}"
        return {
            "observation": observation,
            "provenance": prov,
            "by_identifier": await http.get(
                f"{base}/Observation", params={"identifier": f"{INTENT_SYSTEM}|{intent}"}, headers=headers
            ),
            "by_code_and_date": await http.get(
                f"{base}/Observation",
                params={"patient": pid, "code": code, "date": "ge2026-11-11"},
                headers=headers,
            ),
            "outside_dates": await http.get(
                f"{base}/Observation",
                params={"patient": pid, "code": code, "date": "ge2026-11-26"},
                headers=headers,
            ),
            "by_target": await http.get(f"{base}/Provenance", params={"target": f"Observation/{oid}"}, headers=headers),
            "revinclude": await http.get(
                f"{base}/Observation", params={"_id": oid, "_revinclude": "Provenance:target"}, headers=headers
            ),
        }

    answers = run(scenario)
    observation, prov = answers["observation"], answers["provenance"]
    assert observation.status_code == 201, observation.text
    assert prov.status_code == 201, prov.text
    assert "/Provenance/" in prov.headers["location"]
    oid = observation.json()["id"]
    assert prov.json()["target"] == [{"reference": f"Observation/{oid}"}]
    for key in ("by_identifier", "by_code_and_date"):
        bundle = answers[key].json()
        assert bundle["total"] == 1, (key, bundle)
        assert bundle["entry"][0]["resource"]["id"] == oid
    assert answers["outside_dates"].json()["total"] == 0
    assert [e["resource"]["id"] for e in answers["by_target"].json()["entry"]] == [prov.json()["id"]]
    included = [e["resource"]["resourceType"] for e in answers["revinclude"].json()["entry"]]
    assert included == ["Observation", "Provenance"]


def test_read_only_scopes_cannot_create(sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient]) -> None:
    async def scenario(http: httpx.AsyncClient) -> tuple[TokenResponse, httpx.Response, httpx.Response]:
        token = await system_token(http, sekmet, sekmet_clients["reader"])
        read = await http.get(f"{sekmet.base_url}/Observation", params={"_count": "1"}, headers=bearer(token))
        create = await http.post(
            f"{sekmet.base_url}/Observation", json=tir_observation("none", "refused"), headers=bearer(token)
        )
        return token, read, create

    token, read, create = run(scenario)
    assert token.scopes == ("system/*.read",)
    assert read.status_code == 200
    assert create.status_code == 403
    outcome = create.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "forbidden"
