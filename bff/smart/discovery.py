"""SMART discovery: `{iss}/.well-known/smart-configuration`, validated and cached, and the JWKS it points to.

Endpoints are always taken from this document, never built by hand: servers put their token endpoint on other
hosts and paths, and Backend Services compare the assertion's `aud` with it as a string. A server that offers the
authorization code grant (user launches) must offer PKCE S256, else its document is refused (Epic supports no
`plain`; SMART v2 requires S256); a server with Backend Services only (`client_credentials`) needs neither PKCE
nor an authorization endpoint. Successful answers are cached per `iss`
(TTL, default 1 h), concurrent first fetches of one `iss` share one request, and failures are never cached.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from bff.smart.clock import Clock, utc_now
from bff.smart.errors import DiscoveryError, IdTokenError
from bff.smart.locks import KeyedLocks
from bff.smart.sites import fhir_base

WELL_KNOWN = "/.well-known/smart-configuration"
DEFAULT_TTL_S = 3600.0
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def _strings(document: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = document.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DiscoveryError(f"smart-configuration: {name} must be a list of strings")
    return tuple(value)


def _endpoint(document: Mapping[str, Any], name: str, iss: str, *, required: bool) -> str | None:
    value = document.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise DiscoveryError(f"smart-configuration has no {name}")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise DiscoveryError(f"smart-configuration: {name} is not an absolute URL")
    if parts.scheme == "http" and (urlsplit(iss).scheme == "https" or parts.hostname not in _LOCAL_HOSTS):
        raise DiscoveryError(f"smart-configuration: {name} must use https")
    return value


@dataclass(frozen=True, slots=True)
class SmartConfiguration:
    """The parts of a smart-configuration document that this client relies on."""

    iss: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None
    issuer: str | None
    grant_types_supported: tuple[str, ...]
    code_challenge_methods_supported: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    capabilities: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...]
    fetched_at: datetime

    @classmethod
    def parse(cls, iss: str, document: Any, *, fetched_at: datetime) -> SmartConfiguration:
        """Validate a parsed document (pure). DiscoveryError names the first problem found."""
        if not isinstance(document, Mapping):
            raise DiscoveryError("smart-configuration is not a JSON object")
        methods = _strings(document, "code_challenge_methods_supported")
        # RFC 8414 §2: an absent grant_types_supported means ["authorization_code", "implicit"].
        grants = _strings(document, "grant_types_supported") or ("authorization_code", "implicit")
        user_launch = "authorization_code" in grants
        if user_launch and "S256" not in methods:
            raise DiscoveryError("smart-configuration does not offer PKCE S256 (code_challenge_methods_supported)")
        issuer = document.get("issuer")
        return cls(
            iss=iss,
            authorization_endpoint=_endpoint(document, "authorization_endpoint", iss, required=user_launch) or "",
            token_endpoint=_endpoint(document, "token_endpoint", iss, required=True) or "",
            jwks_uri=_endpoint(document, "jwks_uri", iss, required=False),
            issuer=issuer if isinstance(issuer, str) and issuer else None,
            grant_types_supported=grants,
            code_challenge_methods_supported=methods,
            scopes_supported=_strings(document, "scopes_supported"),
            capabilities=_strings(document, "capabilities"),
            token_endpoint_auth_methods_supported=_strings(document, "token_endpoint_auth_methods_supported"),
            fetched_at=fetched_at,
        )

    def supports_grant(self, grant_type: str) -> bool:
        return grant_type in self.grant_types_supported

    def require_grant(self, grant_type: str) -> None:
        if not self.supports_grant(grant_type):
            raise DiscoveryError(f"smart-configuration does not offer the {grant_type} grant")


class Discovery:
    """Fetches and caches smart-configuration documents and JWKS (in process; both are cheap to refetch)."""

    def __init__(self, http: httpx.AsyncClient, *, ttl_s: float = DEFAULT_TTL_S, clock: Clock = utc_now) -> None:
        self._http = http
        self._ttl = timedelta(seconds=ttl_s)
        self._clock = clock
        self._configs: dict[str, SmartConfiguration] = {}
        self._jwks: dict[str, tuple[KeySet, datetime]] = {}
        self._locks = KeyedLocks()

    async def configuration(self, iss: str) -> SmartConfiguration:
        """The validated configuration of `iss` (from the cache while it is younger than the TTL)."""
        iss = fhir_base(iss)
        cached = self._configs.get(iss)
        if cached is not None and self._clock() - cached.fetched_at < self._ttl:
            return cached
        async with self._locks.hold("config:" + iss):
            cached = self._configs.get(iss)
            if cached is not None and self._clock() - cached.fetched_at < self._ttl:
                return cached
            document = await self._get_json(iss + WELL_KNOWN, "smart-configuration", DiscoveryError)
            config = SmartConfiguration.parse(iss, document, fetched_at=self._clock())
            self._configs[iss] = config
            return config

    async def jwks(self, jwks_uri: str, *, refresh: bool = False) -> KeySet:
        """The key set at `jwks_uri` (refetched when `refresh`, e.g. for a `kid` not seen before)."""
        async with self._locks.hold("jwks:" + jwks_uri):
            cached = self._jwks.get(jwks_uri)
            if cached is not None and not refresh and self._clock() - cached[1] < self._ttl:
                return cached[0]
            document = await self._get_json(jwks_uri, "JWKS", IdTokenError)
            try:
                keys = KeySet.import_key_set(document)
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise IdTokenError(f"the JWKS cannot be read: {type(exc).__name__}") from None
            self._jwks[jwks_uri] = (keys, self._clock())
            return keys

    def forget(self, iss: str) -> None:
        """Drop the cached configuration of `iss` (the next call fetches it again)."""
        self._configs.pop(fhir_base(iss), None)

    async def _get_json(self, url: str, what: str, error: Callable[[str], Exception]) -> Any:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise error(f"{what} could not be fetched: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise error(f"{what} answered HTTP {response.status_code}")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise error(f"{what} is not JSON") from None


__all__ = ["WELL_KNOWN", "Discovery", "SmartConfiguration"]
