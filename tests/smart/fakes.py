"""A fake EHR authorization server behind `httpx.MockTransport`, a settable clock, and helpers.

`FakeEhr` implements what the SMART client talks to: smart-configuration (its token endpoint on another host
and an unusual path, as Oracle Health's is), the authorize step (`authorize(url)` plays the user and returns a
code), a token endpoint that checks PKCE, redirect URI and client, refreshes (optionally slowly, optionally
without a new refresh token), client_credentials with a signed assertion, and a JWKS with the RS256 key that
signs its id_tokens. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from bff.smart import FernetCipher, Launch, MemoryLaunchStore, SiteRegistry, SmartClient, SmartSite
from bff.smart.store import LaunchStore

T = TypeVar("T")

ISS = "https://ehr.example.test/r4/tenant-1"
AUTH_HOST = "https://auth.example.test"
AUTHORIZE_URL = f"{AUTH_HOST}/tenants/tenant-1/protocols/oauth2/profiles/smart-v1/personas/provider/authorize"
TOKEN_URL = f"{AUTH_HOST}/tenants/tenant-1/protocols/oauth2/profiles/smart-v1/token"
JWKS_URL = f"{AUTH_HOST}/tenants/tenant-1/jwks"
CLIENT_ID = "glucobridge-test-client"
REDIRECT_URI = "https://cgm.example.test/site-a/callback"
SCOPES = ("launch", "openid", "fhirUser", "patient/Patient.read", "patient/Observation.read")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 26, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def challenge_of(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def oauth_error(error: str, status: int = 400) -> httpx.Response:
    return httpx.Response(status, json={"error": error, "error_description": f"fake says {error}"})


@dataclass
class Grant:
    """What the user's sign-in at the authorize endpoint left behind for the token endpoint."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str
    scope: str
    launch: str | None


@dataclass
class FakeEhr:
    key: RSAKey
    clock: FakeClock
    iss: str = ISS
    oidc_issuer: str | None = None  # the issuer of id_tokens (and in smart-configuration); default: iss
    patient: str | None = "pat-123"
    encounter: str | None = "enc-9"
    need_patient_banner: object = "false"  # as Epic's tutorial sends it
    fhir_user: str = "Practitioner/doc-1"
    expires_in: int = 3600
    issue_refresh_tokens: bool = True  # False: an embedded launch without offline/online access
    rotate_refresh_tokens: bool = True
    refresh_delay_s: float = 0.0
    code_challenge_methods: tuple[str, ...] = ("S256",)
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    id_token_signer: RSAKey | None = None  # sign with another key (bad signature)
    refresh_error: str | None = None
    backend_clients: dict[str, KeySet] = field(default_factory=dict)
    backend_expires_in: int = 300

    requests: list[httpx.Request] = field(default_factory=list)
    grants: dict[str, Grant] = field(default_factory=dict)
    refresh_tokens: set[str] = field(default_factory=set)
    refresh_requests: list[dict[str, str]] = field(default_factory=list)
    verifiers: list[str] = field(default_factory=list)
    assertions: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    seen_jti: set[str] = field(default_factory=set)
    issued_access_tokens: list[str] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport())

    # MARK: the user's side of the authorize step

    def authorize(self, url: str) -> str:
        """Play the user at the authorize endpoint: check the request, remember it, return a code."""
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE_URL
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert query["response_type"] == "code"
        assert query["aud"] == self.iss
        assert query["code_challenge_method"] == "S256"
        assert query["state"]
        assert query["nonce"]
        if "launch" in query:
            assert "launch" in query["scope"].split()
        code = "code-" + uuid.uuid4().hex
        self.grants[code] = Grant(
            client_id=query["client_id"],
            redirect_uri=query["redirect_uri"],
            code_challenge=query["code_challenge"],
            nonce=query["nonce"],
            scope=query["scope"],
            launch=query.get("launch"),
        )
        return code

    # MARK: HTTP

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url.copy_with(query=None))
        if request.method == "GET" and url == self.iss + "/.well-known/smart-configuration":
            return httpx.Response(200, json=self.smart_configuration())
        if request.method == "GET" and url == JWKS_URL:
            return httpx.Response(200, json={"keys": [self.key.as_dict(private=False)]})
        if request.method == "POST" and url == TOKEN_URL:
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            grant_type = form.get("grant_type")
            if grant_type == "authorization_code":
                return self._redeem(form)
            if grant_type == "refresh_token":
                return await self._refresh(form)
            if grant_type == "client_credentials":
                return self._client_credentials(form)
            return oauth_error("unsupported_grant_type")
        return httpx.Response(404, json={"error": "not_found"})

    def smart_configuration(self) -> dict[str, Any]:
        return {
            "issuer": self.oidc_issuer or self.iss,
            "authorization_endpoint": AUTHORIZE_URL,
            "token_endpoint": TOKEN_URL,
            "jwks_uri": JWKS_URL,
            "grant_types_supported": ["authorization_code", "client_credentials"],
            "code_challenge_methods_supported": list(self.code_challenge_methods),
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "scopes_supported": ["openid", "fhirUser", "launch", "launch/patient", "offline_access"],
            "capabilities": ["launch-ehr", "launch-standalone", "client-public", "context-ehr-patient"],
        }

    def _redeem(self, form: dict[str, str]) -> httpx.Response:
        grant = self.grants.pop(form.get("code", ""), None)
        if grant is None:
            return oauth_error("invalid_grant")
        if form.get("client_id") != grant.client_id or form.get("redirect_uri") != grant.redirect_uri:
            return oauth_error("invalid_client")
        verifier = form.get("code_verifier", "")
        self.verifiers.append(verifier)
        if challenge_of(verifier) != grant.code_challenge:
            return oauth_error("invalid_grant")
        body = self._tokens(grant.scope, with_refresh=self.issue_refresh_tokens)
        body.update(
            {
                "need_patient_banner": self.need_patient_banner,
                "smart_style_url": f"{AUTH_HOST}/style.json",
                "location": "dept-42",
                "id_token": self.id_token(nonce=grant.nonce),
            }
        )
        if self.patient and (grant.launch or "launch/patient" in grant.scope.split()):
            body["patient"] = self.patient
        if self.encounter and grant.launch:
            body["encounter"] = self.encounter
        return httpx.Response(200, json=body)

    async def _refresh(self, form: dict[str, str]) -> httpx.Response:
        self.refresh_requests.append(form)
        if self.refresh_delay_s:
            await asyncio.sleep(self.refresh_delay_s)
        if self.refresh_error:
            return oauth_error(self.refresh_error)
        if form.get("refresh_token") not in self.refresh_tokens:
            return oauth_error("invalid_grant")
        body = self._tokens(None, with_refresh=self.rotate_refresh_tokens)
        if self.rotate_refresh_tokens:
            self.refresh_tokens.discard(form["refresh_token"])
        return httpx.Response(200, json=body)

    def _tokens(self, scope: str | None, *, with_refresh: bool = True) -> dict[str, Any]:
        access = "AT-" + uuid.uuid4().hex
        self.issued_access_tokens.append(access)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": self.expires_in}
        if scope is not None:
            body["scope"] = scope
        if with_refresh:
            refresh = "RT-" + uuid.uuid4().hex
            self.refresh_tokens.add(refresh)
            body["refresh_token"] = refresh
        return body

    def id_token(self, *, nonce: str) -> str:
        now = int(self.clock().timestamp())
        claims: dict[str, Any] = {
            "iss": self.oidc_issuer or self.iss,
            "sub": "doc-1",
            "aud": CLIENT_ID,
            "nonce": nonce,
            "iat": now,
            "exp": now + 300,
            "fhirUser": self.fhir_user,
        }
        claims.update(self.id_token_overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        signer = self.id_token_signer or self.key
        return jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer)

    def _client_credentials(self, form: dict[str, str]) -> httpx.Response:
        assertion = form.get("client_assertion", "")
        if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return oauth_error("invalid_client")
        unverified = json.loads(base64.urlsafe_b64decode(assertion.split(".")[1] + "=="))
        keys = self.backend_clients.get(unverified.get("iss", ""))
        if keys is None:
            return oauth_error("invalid_client")
        token = jwt.decode(assertion, keys, algorithms=["RS384", "ES384"])
        claims = dict(token.claims)
        self.assertions.append((dict(token.header), claims))
        now = self.clock().timestamp()
        if (
            claims["aud"] != TOKEN_URL
            or claims["iss"] != claims["sub"]
            or claims["jti"] in self.seen_jti
            or claims["exp"] - claims["iat"] > 300
            or claims["iat"] > now
            or claims["exp"] <= now
        ):
            return oauth_error("invalid_client")
        self.seen_jti.add(claims["jti"])
        access = "SYS-" + uuid.uuid4().hex
        return httpx.Response(
            200, json={"access_token": access, "token_type": "bearer", "expires_in": self.backend_expires_in}
        )

    # MARK: what the test inspects

    def posts_to(self, url: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and str(r.url) == url]


def make_site(**changes: Any) -> SmartSite:
    values: dict[str, Any] = {
        "key": "site-a",
        "iss": ISS,
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "scopes": SCOPES,
        "vendor": "oracle",
        "frame_ancestors": ("https://powerchart.example.test",),
        "expected_token_lifetime_s": 570,
    }
    values.update(changes)
    return SmartSite(**values)


def make_client(
    ehr: FakeEhr,
    http: httpx.AsyncClient,
    *,
    store: LaunchStore | None = None,
    cipher: FernetCipher | None = None,
    **options: Any,
) -> SmartClient:
    return SmartClient(
        SiteRegistry([make_site()]),
        http,
        store if store is not None else MemoryLaunchStore(),
        cipher or FernetCipher([FernetCipher.generate_key()]),
        ehr.clock,
        **options,
    )


def query(url: str) -> dict[str, str]:
    """The query parameters of a URL (one value each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def launched(client: SmartClient, ehr: FakeEhr, *, standalone: bool = False) -> Launch:
    """A complete launch: begin, the user signs in at the fake EHR, the callback."""
    redirect = await client.begin(ISS, None if standalone else "launch-1", standalone=standalone)
    code = ehr.authorize(redirect.url)
    return await client.complete(query(redirect.url)["state"], code)
