"""The sandbox's one configuration object, and the clients it has registered.

`SandboxConfig` says where the sandbox is reached (`public_base`, the origin of the EHR shell and of every FHIR
base and OAuth endpoint), where the app's launch URL is, which clients are registered, which sites run, and the
"now" the seed data end at. `SandboxConfig.local(...)` builds the usual development set-up, as the CLI does: the
clinician app `glucobridge` (a public client with PKCE), the backend client `glucobridge-backend` (private_key_jwt,
keys from a JWKS URL or an inline JWKS), and the app registered as a confidential client of each kind a hospital
hands out (`CONFIDENTIAL_CLIENTS`: a client secret in a Basic header or in the body, and a JWT assertion signed
with the key the app publishes at the backend JWKS URL).

A registration may hold at one site only (`sites`), as Epic gives each customer and environment its own client id.

Time is read through `clock` (seconds since the epoch), so tests can move it forward to expire a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

#: The sites served by default, one per personality (sandbox.personalities).
DEFAULT_SITES = ("epic-like", "oracle-like", "read-only", "hl7-only", "cgm-receiver")
APP_CLIENT_ID = "glucobridge"
BACKEND_CLIENT_ID = "glucobridge-backend"
#: How a registered client authenticates at the token endpoint (RFC 7591 `token_endpoint_auth_method`).
AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
DEFAULT_SEED = 20240601
DEFAULT_DAYS = 90
#: The most synthetic people `--population` adds (the seed is held in memory: about 2 MB per person for 90 days).
MAX_POPULATION = 20_000


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """An OAuth client the sandbox knows, as an EHR's app registration would hold it.

    How it authenticates at the token endpoint is `token_endpoint_auth_method`, inferred when empty: a client with
    `jwks_url` or `jwks` uses a signed JWT assertion (private_key_jwt, RS384/ES384), one with a `secret` HTTP Basic
    (client_secret_basic, or client_secret_post when so registered), any other is public (PKCE only). A confidential
    client must authenticate as registered, on every grant. `backend` clients may use the client_credentials grant;
    `scopes` is what a backend client gets when it asks for none (Epic grants by the APIs registered on the client,
    not by the requested scopes; ehr-realities.md §1.3). `sites`: the sites it is registered at (empty: all).
    """

    client_id: str
    name: str = ""
    redirect_uris: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    backend: bool = False
    scopes: str = "system/*.rs system/Observation.c system/DocumentReference.c"
    secret: str | None = None
    token_endpoint_auth_method: str = ""
    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.token_endpoint_auth_method not in ("", *AUTH_METHODS):
            raise ValueError(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
        method = self.auth_method
        if method in ("client_secret_basic", "client_secret_post") and not self.secret:
            raise ValueError(f"client {self.client_id}: {method} needs a secret")
        if method == "private_key_jwt" and not (self.jwks_url or self.jwks):
            raise ValueError(f"client {self.client_id}: private_key_jwt needs jwks_url or jwks")

    @property
    def auth_method(self) -> str:
        if self.token_endpoint_auth_method:
            return self.token_endpoint_auth_method
        if self.jwks_url or self.jwks:
            return "private_key_jwt"
        return "client_secret_basic" if self.secret else "none"

    @property
    def confidential(self) -> bool:
        return self.auth_method != "none"

    @property
    def label(self) -> str:
        return self.name or self.client_id

    def registered_at(self, site: str) -> bool:
        return not self.sites or site in self.sites


#: The app as a confidential client of each kind (ehr-realities.md §1.1: Epic prefers private_key_jwt; secrets
#: must differ per customer and environment). The secrets are the sandbox's own, for the demo and the tests.
BASIC_CLIENT_ID = "glucobridge-basic"
BASIC_SECRET = "sandbox-basic-secret"
POST_CLIENT_ID = "glucobridge-post"
POST_SECRET = "sandbox-post-secret"
JWT_CLIENT_ID = "glucobridge-jwt"


def confidential_clients(redirect_uris: tuple[str, ...], jwks_url: str | None, jwks: Mapping[str, Any] | None
                         ) -> tuple[ClientRegistration, ...]:  # fmt: skip
    """The clinician app registered as a client_secret_basic, a client_secret_post and (when a JWKS is given) a
    private_key_jwt client, with the same redirect URIs."""
    clients = [
        ClientRegistration(BASIC_CLIENT_ID, "GlucoBridge (client secret, Basic)", redirect_uris=redirect_uris,
                           secret=BASIC_SECRET, token_endpoint_auth_method="client_secret_basic"),
        ClientRegistration(POST_CLIENT_ID, "GlucoBridge (client secret, POST)", redirect_uris=redirect_uris,
                           secret=POST_SECRET, token_endpoint_auth_method="client_secret_post"),
    ]  # fmt: skip
    if jwks_url or jwks:
        clients.append(ClientRegistration(JWT_CLIENT_ID, "GlucoBridge (private_key_jwt)", redirect_uris=redirect_uris,
                                          jwks_url=jwks_url, jwks=jwks))  # fmt: skip
    return tuple(clients)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything `sandbox.app.create_app` needs. All URLs are written without a trailing slash."""

    public_base: str = "http://localhost:8081"
    app_launch_url: str = "http://127.0.0.1:8000/launch"
    clients: tuple[ClientRegistration, ...] = ()
    sites: tuple[str, ...] = DEFAULT_SITES
    #: The seed's "now": 90 days of readings end yesterday (local) relative to it. None: the real time at start.
    now: datetime | None = None
    seed: int = DEFAULT_SEED
    days: int = DEFAULT_DAYS
    #: Synthetic people besides the six (sandbox.seed.population): a care manager's cohort, or a load test's patients.
    population: int = 0
    #: Extra origins allowed to frame the sign-in pages (the shell's own origin and the app's are always allowed).
    frame_ancestors: tuple[str, ...] = ()
    #: Skip the consent page in EHR launches (the practitioner and patient come from the launch), for scripted runs.
    auto_approve: bool = False
    #: An MLLP listener (ACK AA) started with the app for the hl7-only site; None: none.
    mllp_port: int | None = None
    mllp_host: str = "127.0.0.1"
    code_ttl_s: int = 120
    launch_ttl_s: int = 3600
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_base", self.public_base.rstrip("/"))
        if not urlsplit(self.public_base).netloc:
            raise ValueError(f"public_base {self.public_base!r} must be an absolute URL, e.g. http://localhost:8081")
        if self.days < 14:
            raise ValueError("days must be at least 14")
        if not 0 <= self.population <= MAX_POPULATION:
            raise ValueError(f"population must be 0 to {MAX_POPULATION:,}")

    @classmethod
    def local(
        cls,
        *,
        public_base: str = "http://localhost:8081",
        app_launch_url: str = "http://127.0.0.1:8000/launch",
        redirect_uris: tuple[str, ...] = ("http://127.0.0.1:8000/callback",),
        backend_jwks_url: str | None = "http://127.0.0.1:8000/.well-known/jwks.json",
        backend_jwks: Mapping[str, Any] | None = None,
        extra_clients: tuple[ClientRegistration, ...] = (),
        **options: Any,
    ) -> SandboxConfig:
        """The development set-up: the clinician app (public, and as each kind of confidential client) and its
        backend client, plus any `extra_clients`."""
        clients = (
            ClientRegistration(APP_CLIENT_ID, "GlucoBridge", redirect_uris=redirect_uris),
            ClientRegistration(
                BACKEND_CLIENT_ID, "GlucoBridge backend", jwks_url=backend_jwks_url, jwks=backend_jwks, backend=True
            ),
            *confidential_clients(redirect_uris, backend_jwks_url, backend_jwks),
            *extra_clients,
        )
        return cls(public_base=public_base, app_launch_url=app_launch_url, clients=clients, **options)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.public_base)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def app_origin(self) -> str:
        parts = urlsplit(self.app_launch_url)
        return f"{parts.scheme}://{parts.netloc}"

    def seed_now(self) -> datetime:
        """The instant the seed is built for (aware, UTC)."""
        if self.now is None:
            return datetime.fromtimestamp(self.clock(), UTC)
        if self.now.tzinfo is None:
            raise ValueError("SandboxConfig.now must be timezone-aware")
        return self.now.astimezone(UTC)

    def client(self, client_id: str, site: str | None = None) -> ClientRegistration | None:
        """The registration of `client_id` (at `site`, when given: a client registered elsewhere is unknown)."""
        for client in self.clients:
            if client.client_id == client_id and (site is None or client.registered_at(site)):
                return client
        return None

    def site_base(self, site: str) -> str:
        return f"{self.public_base}/sites/{site}"

    def fhir_base(self, site: str) -> str:
        return f"{self.site_base(site)}/fhir"

    def auth_base(self, site: str) -> str:
        return f"{self.site_base(site)}/auth"

    def token_endpoint(self, site: str) -> str:
        return f"{self.auth_base(site)}/token"
