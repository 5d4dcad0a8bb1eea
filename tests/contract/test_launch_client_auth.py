"""Contract: the user launch with each kind of client authentication a hospital hands out, over real HTTP.

glucobridge's SMART client (`bff.smart.SmartClient`, on authlib) against the sandbox EHR (uvicorn on a free port),
each site built from a site file as an integration engineer writes it: a public client (PKCE only), a client
secret in a Basic header, a client secret in the body, and a signed JWT assertion (private_key_jwt). Each one
launches from the shell's chart, redeems its code, reads the patient with its token and refreshes it, all with the
authentication its registration requires; a wrong secret is refused with the EHR's own words kept. The POST
authorize request and per-site registrations are checked too.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwk

from bff.smart import (
    FernetCipher,
    MemoryLaunchStore,
    SiteRegistry,
    SmartClient,
    SmartConfigError,
    TokenExchangeError,
    utc_now,
)
from bff.smart.sites import site_from_mapping
from sandbox import ClientRegistration, SandboxConfig, create_app
from sandbox.config import BASIC_CLIENT_ID, BASIC_SECRET, JWT_CLIENT_ID, POST_CLIENT_ID, POST_SECRET
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, Clock, free_port, serve_in_thread

T = TypeVar("T")
SITE = "epic-like"
KID = "launch-es384"
ORACLE_ONLY = "gb-oracle-prod"


@dataclass
class Ehr:
    base: str
    key: jwk.ECKey
    clock: Clock  # the sandbox's: real time plus an offset the tests move, with the app's (MovableClock)
    patients: list[str] = field(default_factory=list)

    def fhir(self, site: str = SITE) -> str:
        return f"{self.base}/sites/{site}/fhir"


@dataclass
class MovableClock:
    """The app's clock, moved with the sandbox's (the EHR checks assertion times against its own)."""

    ehr: Clock | None = None

    def __call__(self) -> datetime:
        return utc_now() + timedelta(seconds=self.ehr.offset if self.ehr is not None else 0.0)


@pytest.fixture(scope="module", name="ehr")
def fx_ehr() -> Iterator[Ehr]:
    key = jwk.ECKey.generate_key("P-384", parameters={"kid": KID})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clock = Clock()
    oracle_only = ClientRegistration(ORACLE_ONLY, "GlucoBridge at the Oracle site", redirect_uris=(REDIRECT,),
                                     secret="s3cret", sites=("oracle-like",))  # fmt: skip
    config = SandboxConfig.local(
        public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,), backend_jwks_url=None,
        backend_jwks={"keys": [key.as_dict(private=False)]}, extra_clients=(oracle_only,), now=NOW, days=14,
        auto_approve=True, sites=(SITE, "oracle-like"), clock=clock,
    )  # fmt: skip
    app = create_app(config)
    with serve_in_thread(app, port):
        sandbox = app.state.sandbox
        yield Ehr(base, key, clock, [p.patient_id for p in sandbox.sites[SITE].seed.patients])


def run(scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=20.0, trust_env=False) as http:
            return await scenario(http)

    return asyncio.run(main())


def site_file(ehr: Ehr, kind: str, tmp_path: Path, *, site: str = SITE, quirks: str = '["dedupe_59189"]') -> str:
    """A site's file as an integration engineer writes it for each kind of registration (secrets by reference);
    the authorize request is a redirect unless the quirks say authorize_post (Epic's default, tested below)."""
    smart = {
        "none": 'client_id = "glucobridge"',
        "client_secret_basic": f'client_id = "{BASIC_CLIENT_ID}"\nclient_auth = "client_secret_basic"\n'
                               'client_secret_env = "GB_EPIC_SECRET"',
        "client_secret_post": f'client_id = "{POST_CLIENT_ID}"\nclient_auth = "client_secret_post"\n'
                              f'client_secret_file = "{tmp_path / "post-secret"}"',
        "private_key_jwt": f'client_id = "{JWT_CLIENT_ID}"\nclient_auth = "private_key_jwt"\n'
                           f'private_key_file = "{tmp_path / "launch.pem"}"\nkid = "{KID}"\nalg = "ES384"',
    }[kind]  # fmt: skip
    (tmp_path / "post-secret").write_text(POST_SECRET + "\n")
    (tmp_path / "launch.pem").write_bytes(ehr.key.as_pem(private=True))
    launch = f"\n[launch]\nquirks = {quirks}\n"
    return f"""version = 1
vendor = "epic"
[smart]
iss = "{ehr.fhir(site)}"
{smart}
scopes = ["launch", "openid", "fhirUser", "online_access", "patient/Patient.read", "patient/Observation.read"]
{launch}"""


def registry(text: str) -> SiteRegistry:
    return SiteRegistry([site_from_mapping(SITE, tomllib.loads(text), default_redirect_uri=REDIRECT)])


def client_for(ehr: Ehr, http: httpx.AsyncClient, text: str, clock: MovableClock, secret: str = BASIC_SECRET
               ) -> SmartClient:  # fmt: skip
    return SmartClient(registry(text), http, MemoryLaunchStore(), FernetCipher([FernetCipher.generate_key()]), clock,
                       environ={"GB_EPIC_SECRET": secret})  # fmt: skip


async def chart(http: httpx.AsyncClient, ehr: Ehr, patient: str, site: str = SITE) -> tuple[str, str]:
    """The iss and launch the shell's chart page hands to the app."""
    page = await http.get(f"{ehr.base}/ehr/{site}/patients/{patient}")
    assert page.status_code == 200, page.text
    src = page.text.split('<iframe class="app"', 1)[1].split('src="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    query = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    return query["iss"], query["launch"]


def code_and_state(answer: httpx.Response) -> tuple[str, str]:
    assert answer.status_code in (302, 303), answer.text
    got = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["location"]).query).items()}
    assert "code" in got, got
    return got["code"], got["state"]


@pytest.mark.parametrize("kind", ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"])
def test_a_user_launch_with_each_kind_of_client_authentication(ehr: Ehr, tmp_path: Path, kind: str) -> None:
    clock = MovableClock(ehr.clock)

    async def scenario(http: httpx.AsyncClient) -> None:
        client = client_for(ehr, http, site_file(ehr, kind, tmp_path), clock)
        iss, launch = await chart(http, ehr, ehr.patients[0])
        redirect = await client.begin(iss, launch)
        assert redirect.method == "GET"
        code, state = code_and_state(await http.get(redirect.url))
        done = await client.complete(state, code)
        assert done.patient == ehr.patients[0]
        first = await client.access_token(done.handle)
        read = await http.get(f"{iss}/Patient/{done.patient}", headers={"Authorization": f"Bearer {first}"})
        assert read.status_code == 200, read.text
        ehr.clock.offset = 3590  # near the end of the hour (both clocks): refreshed with the same authentication
        try:
            second = await client.access_token(done.handle)
        finally:
            ehr.clock.offset = 0
        assert second != first
        again = await http.get(f"{iss}/Patient/{done.patient}", headers={"Authorization": f"Bearer {second}"})
        assert again.status_code == 200, again.text

    run(scenario)


def test_what_each_kind_puts_on_the_wire(ehr: Ehr, tmp_path: Path) -> None:
    """The token request itself: Basic header, secret in the body, or an assertion; a public client only its id."""
    seen: dict[str, httpx.Request] = {}

    async def scenario(http: httpx.AsyncClient) -> None:
        for kind in ("none", "client_secret_basic", "client_secret_post", "private_key_jwt"):
            recorder = httpx.AsyncClient(timeout=20.0, trust_env=False,
                                         event_hooks={"request": [lambda r, k=kind: _keep(seen, k, r)]})  # fmt: skip
            async with recorder:
                client = client_for(ehr, recorder, site_file(ehr, kind, tmp_path), MovableClock())
                iss, launch = await chart(http, ehr, ehr.patients[1])
                redirect = await client.begin(iss, launch)
                code, state = code_and_state(await http.get(redirect.url))
                await client.complete(state, code)

    run(scenario)
    bodies = {k: parse_qs(r.content.decode()) for k, r in seen.items()}
    assert "authorization" not in seen["none"].headers
    assert bodies["none"]["client_id"] == ["glucobridge"]
    assert seen["client_secret_basic"].headers["authorization"].startswith("Basic ")
    assert "client_secret" not in bodies["client_secret_basic"]
    assert bodies["client_secret_post"]["client_secret"] == [POST_SECRET]
    assert bodies["private_key_jwt"]["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ]
    assert "client_secret" not in bodies["private_key_jwt"]


async def _keep(seen: dict[str, httpx.Request], kind: str, request: httpx.Request) -> None:
    if request.method == "POST" and request.url.path.endswith("/auth/token"):
        await request.aread()
        seen[kind] = request


def test_a_wrong_secret_is_refused_and_the_ehr_s_words_are_kept(ehr: Ehr, tmp_path: Path) -> None:
    async def scenario(http: httpx.AsyncClient) -> TokenExchangeError:
        client = client_for(ehr, http, site_file(ehr, "client_secret_basic", tmp_path), MovableClock(), "not it")
        iss, launch = await chart(http, ehr, ehr.patients[0])
        code, state = code_and_state(await http.get((await client.begin(iss, launch)).url))
        with pytest.raises(TokenExchangeError) as refused:
            await client.complete(state, code)
        return refused.value

    refused = run(scenario)
    assert (refused.status_code, refused.error) == (401, "invalid_client")
    assert refused.description == f"wrong client secret for {BASIC_CLIENT_ID}"
    assert refused.site_key == SITE
    assert "wrong client secret" in str(refused)


def test_a_secret_the_environment_does_not_have_stops_the_client_at_start(ehr: Ehr, tmp_path: Path) -> None:
    sites = registry(site_file(ehr, "client_secret_basic", tmp_path))
    with pytest.raises(SmartConfigError, match="environment variable GB_EPIC_SECRET is not set"):
        SmartClient(sites, httpx.AsyncClient(), MemoryLaunchStore(), FernetCipher([FernetCipher.generate_key()]),
                    environ={})  # fmt: skip


def test_the_authorize_request_is_posted_where_the_ehr_offers_it(ehr: Ehr, tmp_path: Path) -> None:
    """Epic's quirk authorize_post (epic-like offers `authorize-post`): the form the app's page posts."""

    async def scenario(http: httpx.AsyncClient) -> None:
        text = site_file(ehr, "private_key_jwt", tmp_path, quirks='["dedupe_59189", "authorize_post"]')
        client = client_for(ehr, http, text, MovableClock())
        iss, launch = await chart(http, ehr, ehr.patients[0])
        redirect = await client.begin(iss, launch)
        assert (redirect.method, redirect.post_allowed) == ("POST", True)
        assert redirect.params["launch"] == launch
        code, state = code_and_state(await http.post(redirect.endpoint, data=dict(redirect.params)))
        assert (await client.complete(state, code)).patient == ehr.patients[0]

    run(scenario)


def test_a_client_id_registered_at_another_site_is_unknown_here(ehr: Ehr) -> None:
    async def scenario(http: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        params = {"client_id": ORACLE_ONLY, "redirect_uri": "https://elsewhere.example/cb"}
        here = await http.get(f"{ehr.base}/sites/{SITE}/auth/authorize", params=params)
        there = await http.get(f"{ehr.base}/sites/oracle-like/auth/authorize", params=params)
        return here, there

    here, there = run(scenario)
    assert here.status_code == there.status_code == 400
    assert "is not registered here" in here.text  # unknown at this site
    assert "Redirect URI not registered" in there.text  # known there: only its redirect URI is wrong
