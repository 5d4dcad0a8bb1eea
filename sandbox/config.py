"""The sandbox's one configuration object, and the clients it has registered.

`SandboxConfig` says where the sandbox is reached (`public_base`, the origin of the EHR shell and of every FHIR
base and OAuth endpoint), where the app's launch URL is, which clients are registered, which sites run, and the
"now" the seed data end at. `SandboxConfig.local(...)` builds the usual development set-up: the clinician app
`glucobridge` (a public client with PKCE) and the backend client `glucobridge-backend` (private_key_jwt, keys
from a JWKS URL or an inline JWKS), as the CLI does.

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
DEFAULT_SEED = 20240601
DEFAULT_DAYS = 90


@dataclass(frozen=True, slots=True)
class ClientRegistration:
    """An OAuth client the sandbox knows, as an EHR's app registration would hold it.

    A client with `jwks_url` or `jwks` is confidential and authenticates with a signed JWT assertion
    (private_key_jwt, RS384/ES384); a client without is public (PKCE only). `backend` clients may use the
    client_credentials grant; `scopes` is what a backend client gets when it asks for none (Epic grants by the
    APIs registered on the client, not by the requested scopes; ehr-realities.md §1.3).
    """

    client_id: str
    name: str = ""
    redirect_uris: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    backend: bool = False
    scopes: str = "system/*.rs system/Observation.c system/DocumentReference.c"

    @property
    def confidential(self) -> bool:
        return bool(self.jwks_url or self.jwks)

    @property
    def label(self) -> str:
        return self.name or self.client_id


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
        """The development set-up: the clinician app and its backend client, plus any `extra_clients`."""
        clients = (
            ClientRegistration(APP_CLIENT_ID, "GlucoBridge", redirect_uris=redirect_uris),
            ClientRegistration(
                BACKEND_CLIENT_ID, "GlucoBridge backend", jwks_url=backend_jwks_url, jwks=backend_jwks, backend=True
            ),
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

    def client(self, client_id: str) -> ClientRegistration | None:
        for client in self.clients:
            if client.client_id == client_id:
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
