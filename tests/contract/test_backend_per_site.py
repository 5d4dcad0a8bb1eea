"""Contract: SMART Backend Services per site, two sites with two different registrations, over real HTTP.

Hospital A is the sandbox's oracle-like site, where the app is registered (at that site only) as
`gb-hospital-a` with its own ES384 key; hospital B is sekmet-fhir (PyPI), where the app is `gb-reader`, a client
that may only read. Each site's file names its client id, key file, kid and alg in `[backend]`; no deployment
default is configured. `SiteBackends` gets each a token from the endpoint its discovery names, with the scopes
its vendor profile gives for its matrix: hospital A in SMART v1 syntax, each listed (Oracle takes no wildcards);
hospital B, read-only, v2 read scopes (the old default `system/*.cruds` was refused by such a client). Each token
reads at its own site only, and the reader cannot write.
"""

from __future__ import annotations

import asyncio
import base64
import json
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwk

from bff.broker.broker import scopes_for
from bff.capabilities import SiteCapabilities, parse_capabilities
from bff.smart import SiteBackends, SmartSettings
from bff.smart.errors import BackendAuthError
from sandbox import ClientRegistration, SandboxConfig, create_app
from sandbox.runtime import Sandbox
from tests.contract.conftest import BackendClient
from tests.peers.sekmet import SekmetServer
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, free_port, serve_in_thread

CLIENT_A = "gb-hospital-a"


@dataclass
class SandboxEhr:
    base: str
    sandbox: Sandbox
    key: jwk.ECKey


@pytest.fixture(scope="module", name="hospital_a")
def fx_hospital_a() -> Iterator[SandboxEhr]:
    key = jwk.ECKey.generate_key("P-384", parameters={"kid": "hospital-a-1"})
    client = ClientRegistration(CLIENT_A, "GlucoBridge at hospital A", jwks={"keys": [key.as_dict(private=False)]},
                                backend=True, sites=("oracle-like",))  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = SandboxConfig.local(public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,),
                                 backend_jwks_url=None, extra_clients=(client,), now=NOW, days=14,
                                 sites=("oracle-like", "epic-like"))  # fmt: skip
    app = create_app(config)
    with serve_in_thread(app, port):
        yield SandboxEhr(base, app.state.sandbox, key)


def site(key: str, text: str) -> SiteCapabilities:
    return parse_capabilities(key, tomllib.loads(text), source=f"sites/{key}.toml")


def hospital_a_file(ehr: SandboxEhr, tmp_path: Path) -> str:
    pem = tmp_path / "hospital-a.pem"
    pem.write_bytes(ehr.key.as_pem(private=True))
    return f"""version = 1
vendor = "oracle"
[smart]
iss = "{ehr.base}/sites/oracle-like/fhir"
client_id = "gb-launch-a"
scopes = ["launch", "openid", "fhirUser", "patient/Observation.read"]
[write]
mode = "observations"
channel = "fhir"
observation_category = "laboratory"
[backend]
client_id = "{CLIENT_A}"
key_file = "{pem}"
kid = "hospital-a-1"
alg = "ES384"
"""


def hospital_b_file(server: SekmetServer, client: BackendClient, tmp_path: Path) -> str:
    pem = tmp_path / "hospital-b.pem"
    pem.write_bytes(client.pem)
    return f"""version = 1
vendor = "generic"
[smart]
iss = "{server.base_url}"
client_id = "gb-launch-b"
scopes = ["launch", "openid", "fhirUser", "patient/Observation.rs"]
[backend]
client_id = "{client.client_id}"
key_file = "{pem}"
kid = "{client.kid}"
alg = "{client.alg}"
"""


def claims_of(access_token: str) -> dict[str, Any]:
    """sekmet's access tokens are JWTs (HS256, its own secret): their claims, unverified, for the test only."""
    payload = access_token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def test_two_sites_two_client_ids_each_token_from_its_own_registration(
    hospital_a: SandboxEhr, sekmet: SekmetServer, sekmet_clients: dict[str, BackendClient], tmp_path: Path
) -> None:
    a = site("hospital-a", hospital_a_file(hospital_a, tmp_path))
    b = site("hospital-b", hospital_b_file(sekmet, sekmet_clients["reader"], tmp_path))
    assert scopes_for(a) == ("system/Patient.read", "system/Observation.read", "system/Observation.write")
    assert scopes_for(b) == ("system/Patient.rs", "system/Observation.rs")

    async def scenario() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=20.0, trust_env=False) as http:
            backends = SiteBackends(SmartSettings(), http=http)  # no SMART_BACKEND_* key: each site's own
            token_a = await backends.token(a, scopes_for(a))
            token_b = await backends.token(b, scopes_for(b))
            patient = hospital_a.sandbox.sites["oracle-like"].seed.patients[0].patient_id

            def bearer(token: str) -> dict[str, str]:
                return {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}

            return {
                "token_a": token_a,
                "token_b": token_b,
                "read_a": await http.get(
                    f"{a.iss}/Observation", params={"patient": patient, "_count": "1"}, headers=bearer(token_a)
                ),
                "read_b": await http.get(f"{b.iss}/Patient", params={"_count": "1"}, headers=bearer(token_b)),
                "b_at_a": await http.get(f"{a.iss}/Patient/{patient}", headers=bearer(token_b)),
                "write_b": await http.post(
                    f"{b.iss}/Patient", json={"resourceType": "Patient"}, headers=bearer(token_b)
                ),
                "jwks": backends.jwks(),
            }

    got = asyncio.run(scenario())
    grant = hospital_a.sandbox.sites["oracle-like"].auth.access[got["token_a"]]
    assert grant.client_id == CLIENT_A
    assert grant.scope == "system/Patient.read system/Observation.read system/Observation.write"
    assert claims_of(got["token_b"])["client_id"] == "gb-reader"
    assert claims_of(got["token_b"])["scope"] == "system/Patient.rs system/Observation.rs"
    assert got["read_a"].status_code == 200, got["read_a"].text
    assert got["read_b"].status_code == 200, got["read_b"].text
    assert got["b_at_a"].status_code == 401  # hospital B's token means nothing at hospital A
    assert got["write_b"].status_code == 403  # the reader reads only
    assert {k["kid"] for k in got["jwks"]["keys"]} == {"hospital-a-1", sekmet_clients["reader"].kid}


def test_a_client_registered_at_another_site_gets_no_token(hospital_a: SandboxEhr, tmp_path: Path) -> None:
    """The same registration pointed at the sandbox's epic-like site, where it is not registered."""
    text = hospital_a_file(hospital_a, tmp_path).replace("/sites/oracle-like/", "/sites/epic-like/")
    epic = site("hospital-a-epic", text.replace('vendor = "oracle"', 'vendor = "generic"'))

    async def scenario() -> BackendAuthError:
        async with httpx.AsyncClient(timeout=20.0, trust_env=False) as http:
            with pytest.raises(BackendAuthError) as refused:
                await SiteBackends(SmartSettings(), http=http).token(epic, scopes_for(epic))
            return refused.value

    refused = asyncio.run(scenario())
    assert (refused.status_code, refused.error, refused.site_key) == (401, "invalid_client", "hospital-a-epic")
    assert CLIENT_A in (refused.description or "")
