"""SMART Backend Services per site: each site's own client id, key, token endpoint and scopes.

Epic issues a client id per customer and per environment (non-production and production), and a hospital may
register the app's key under its own record; so each site's file may say, in `[backend]`, which client id and
key it knows this app by, where its token endpoint is, and which scopes to ask for (`bff.sitefile`). What a site
does not say comes from the deployment (`SMART_BACKEND_CLIENT_ID`, `SMART_BACKEND_KEY_FILE`, `_KID`, `_ALG`,
`_JKU`); the scopes from its vendor profile (`bff.vendors`).

`SiteBackends.token(caps, scopes)` is a `bff.broker.broker.TokenSource`: the broker, the outbox worker and the
bulk client ask it for a system token for a site's effective matrix. A `BackendAuth` is made per distinct
registration (client id, key, token endpoint) on first use and reused while the site's file says the same; keys
are read from their files or environment variables then. `preload` reads them all at start-up instead, so that a
missing key stops the app with the reason, and `jwks()` publishes every public key in use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bff.sitefile import BackendCaps, SiteFileError
from bff.smart.backend import BackendAuth, combined_jwks
from bff.smart.clock import Clock, utc_now
from bff.smart.discovery import Discovery
from bff.smart.errors import BackendAuthError, SmartConfigError

if TYPE_CHECKING:
    from bff.capabilities import SiteCapabilities
    from bff.smart.config import SmartSettings


@dataclass(frozen=True, slots=True)
class Registration:
    """Who this app is at one site for Backend Services, after the deployment's defaults were applied."""

    client_id: str
    key_source: str  # "env NAME", "file PATH": where the private key is read from
    kid: str
    alg: str
    jku: str
    token_endpoint: str
    expected_lifetime_s: int


def registration(settings: SmartSettings, backend: BackendCaps, expected_lifetime_s: int) -> Registration | None:
    """A site's registration: its `[backend]` over the deployment's defaults; None when neither names a key."""
    client_id = backend.client_id or settings.backend_client_id
    if backend.key is not None:
        source = f"env {backend.key.env}" if backend.key.env else f"file {backend.key.file}"
        kid, alg, jku = backend.kid, backend.alg or "ES384", backend.jku
    elif settings.backend_key_file:
        source, kid, alg = f"file {settings.backend_key_file}", settings.backend_kid or "", settings.backend_alg
        jku = settings.backend_jku or ""
    else:
        return None
    return Registration(client_id, source, kid, alg, jku or "", backend.token_endpoint, expected_lifetime_s)


class SiteBackends:
    """System tokens per site (see the module docstring). One per process; safe to share between sites."""

    def __init__(
        self,
        settings: SmartSettings,
        *,
        http: httpx.AsyncClient,
        discovery: Discovery | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._settings = settings
        self._http = http
        self._discovery = discovery or Discovery(http, clock=clock)
        self._environ = environ
        self._clock = clock
        self._auths: dict[Registration, BackendAuth] = {}

    def registration(self, backend: BackendCaps, expected_lifetime_s: int) -> Registration | None:
        return registration(self._settings, backend, expected_lifetime_s)

    def auth_for(self, site: str, backend: BackendCaps, expected_lifetime_s: int) -> BackendAuth:
        """The BackendAuth of a site (made, and its key read, on first use); BackendAuthError when the site has no
        key, SmartConfigError when its key cannot be read."""
        registration = self.registration(backend, expected_lifetime_s)
        if registration is None:
            raise BackendAuthError(
                f"site {site} has no Backend Services key: set [backend] key_file (or key_env) in its file, or "
                "SMART_BACKEND_KEY_FILE and SMART_BACKEND_KID for the deployment"
            )
        auth = self._auths.get(registration)
        if auth is None:
            auth = self._make(site, registration, backend)
            self._auths[registration] = auth
        return auth

    def _make(self, site: str, registration: Registration, backend: BackendCaps) -> BackendAuth:
        if not registration.kid:
            raise SmartConfigError(f"site {site}: the Backend Services key has no kid (SMART_BACKEND_KID)")
        try:
            if backend.key is not None:
                pem = backend.key.read(self._environ)
            else:
                pem = Path(self._settings.backend_key_file or "").read_text(encoding="utf-8")
        except (SiteFileError, OSError) as exc:
            raise SmartConfigError(f"site {site}: the Backend Services key cannot be read: {exc}") from None
        try:
            return BackendAuth(
                registration.client_id, pem, registration.kid, registration.alg, http=self._http,
                discovery=self._discovery, clock=self._clock, jku=registration.jku or None,
                token_endpoint=registration.token_endpoint or None,
                expected_lifetime_s=registration.expected_lifetime_s,
            )  # fmt: skip
        except SmartConfigError as exc:
            raise SmartConfigError(f"site {site}: {exc}") from None

    async def token(self, caps: SiteCapabilities, scopes: Sequence[str]) -> str:
        """A system token for the site's FHIR base (`[smart] iss`), as a `TokenSource`."""
        auth = self.auth_for(caps.key, caps.backend, caps.expected_token_lifetime_s)
        try:
            return await auth.token(caps.iss, scopes)
        except BackendAuthError as exc:
            exc.site_key = caps.key
            raise

    def preload(self, sites: Iterable[tuple[str, BackendCaps, int]]) -> None:
        """Make every site's BackendAuth now (keys read); sites without any key are left out."""
        for site, backend, lifetime in sites:
            if self.registration(backend, lifetime) is not None:
                self.auth_for(site, backend, lifetime)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys of every registration made so far (each `kid` once)."""
        return combined_jwks(*self._auths.values())


__all__ = ["Registration", "SiteBackends", "registration"]
