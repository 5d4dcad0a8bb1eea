"""SMART discovery: `{iss}/.well-known/smart-configuration`, validated and cached, and the JWKS it points to.

Endpoints are taken from this document (or from the site's file, `[smart] authorization_endpoint` and
`token_endpoint`, which override it), never built by hand: servers put their token endpoint on other hosts and
paths, and Backend Services compare the assertion's `aud` with it as a string.

The document is read tolerantly: what is malformed (a relative or plain-http endpoint, a list that is not a list
of strings) is an error, and so is a document without a `token_endpoint`; fields a flow does not need may be
absent. Each flow then checks what it needs and names everything missing at once (`require_user_launch`,
`require_backend`): a user launch needs an `authorization_endpoint`, the `authorization_code` grant (when the
document lists grants), and PKCE S256 (when it lists methods; Epic has no `plain` and SMART v2 requires S256, which
is always sent); Backend Services need the `client_credentials` grant (when listed). An absent
`grant_types_supported` refuses no grant (servers that do only Backend Services often omit it). What was absent
is kept in `missing` (shown on /admin). Successful answers are cached per `iss` (TTL, default 1 h), concurrent
first fetches of one `iss` share one request, and failures are never cached.
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


def _strings(document: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    """A list of strings, or None when absent."""
    value = document.get(name)
    if value is None:
        return None
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


#: Fields this client reads when present; their absence is recorded (`missing`), not an error by itself.
OPTIONAL_FIELDS = ("authorization_endpoint", "jwks_uri", "issuer", "grant_types_supported",
                   "code_challenge_methods_supported", "scopes_supported", "capabilities",
                   "token_endpoint_auth_methods_supported")  # fmt: skip


@dataclass(frozen=True, slots=True)
class SmartConfiguration:
    """The parts of a smart-configuration document that this client relies on (lists None when absent)."""

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
    missing: tuple[str, ...] = ()  # optional fields the document did not have
    overridden: tuple[str, ...] = ()  # endpoints the site's file set instead

    @classmethod
    def parse(
        cls, iss: str, document: Any, *, fetched_at: datetime, overrides: Mapping[str, str] | None = None
    ) -> SmartConfiguration:
        """Validate a parsed document (pure), with the site's endpoint `overrides` applied. DiscoveryError names
        the first malformed value, or that the document (and the site) name no token endpoint. A document that
        lists `authorization_code` must list PKCE S256."""
        if not isinstance(document, Mapping):
            raise DiscoveryError("smart-configuration is not a JSON object")
        overrides = {k: v for k, v in (overrides or {}).items() if v}
        merged = {**document, **overrides}
        methods = _strings(merged, "code_challenge_methods_supported")
        grants = _strings(merged, "grant_types_supported")
        if grants is not None and "authorization_code" in grants and "S256" not in (methods or ()):
            listed = f"lists {list(methods)}" if methods is not None else "is absent"
            raise DiscoveryError(f"smart-configuration offers authorization_code but does not offer PKCE S256 "
                                 f"(code_challenge_methods_supported {listed})")  # fmt: skip
        issuer = merged.get("issuer")
        return cls(
            iss=iss,
            authorization_endpoint=_endpoint(merged, "authorization_endpoint", iss, required=False) or "",
            token_endpoint=_endpoint(merged, "token_endpoint", iss, required=True) or "",
            jwks_uri=_endpoint(merged, "jwks_uri", iss, required=False),
            issuer=issuer if isinstance(issuer, str) and issuer else None,
            grant_types_supported=grants or (),
            code_challenge_methods_supported=methods or (),
            scopes_supported=_strings(merged, "scopes_supported") or (),
            capabilities=_strings(merged, "capabilities") or (),
            token_endpoint_auth_methods_supported=_strings(merged, "token_endpoint_auth_methods_supported") or (),
            fetched_at=fetched_at,
            missing=tuple(name for name in OPTIONAL_FIELDS if merged.get(name) is None),
            overridden=tuple(sorted(overrides)),
        )

    def supports_grant(self, grant_type: str) -> bool:
        """Whether the grant may be used: listed, or the document lists no grants (the server will say)."""
        return "grant_types_supported" in self.missing or grant_type in self.grant_types_supported

    def require_grant(self, grant_type: str) -> None:
        if not self.supports_grant(grant_type):
            raise DiscoveryError(
                f"smart-configuration does not offer the {grant_type} grant "
                f"(grant_types_supported lists {list(self.grant_types_supported)})"
            )

    def user_launch_problems(self) -> list[str]:
        """Everything that stops a user launch here (empty: none)."""
        problems = []
        if not self.authorization_endpoint:
            problems.append("it has no authorization_endpoint (nor does the site's [smart] authorization_endpoint)")
        if not self.supports_grant("authorization_code"):
            problems.append(f"grant_types_supported {list(self.grant_types_supported)} has no authorization_code")
        methods = self.code_challenge_methods_supported
        if "code_challenge_methods_supported" not in self.missing and "S256" not in methods:
            problems.append(f"code_challenge_methods_supported {list(methods)} has no S256")
        return problems

    def require_user_launch(self) -> None:
        problems = self.user_launch_problems()
        if problems:
            raise DiscoveryError(f"the smart-configuration of {self.iss} cannot be used for a user launch: "
                                 + "; ".join(problems))  # fmt: skip

    def require_backend(self) -> None:
        if not self.supports_grant("client_credentials"):
            raise DiscoveryError(
                f"the smart-configuration of {self.iss} cannot be used for Backend Services: grant_types_supported "
                f"{list(self.grant_types_supported)} has no client_credentials"
            )

    def offers_client_auth(self, method: str) -> bool:
        """Whether the token endpoint says it takes this client authentication (or does not say)."""
        listed = self.token_endpoint_auth_methods_supported
        return "token_endpoint_auth_methods_supported" in self.missing or method in listed


class Discovery:
    """Fetches and caches smart-configuration documents and JWKS (in process; both are cheap to refetch)."""

    def __init__(self, http: httpx.AsyncClient, *, ttl_s: float = DEFAULT_TTL_S, clock: Clock = utc_now) -> None:
        self._http = http
        self._ttl = timedelta(seconds=ttl_s)
        self._clock = clock
        self._documents: dict[str, tuple[Any, datetime]] = {}
        self._configs: dict[tuple[str, tuple[tuple[str, str], ...]], SmartConfiguration] = {}
        self._jwks: dict[str, tuple[KeySet, datetime]] = {}
        self._locks = KeyedLocks()

    async def configuration(self, iss: str, *, overrides: Mapping[str, str] | None = None) -> SmartConfiguration:
        """The validated configuration of `iss` (the document from the cache while it is younger than the TTL).
        `overrides` (a site's endpoints) replace the document's for this caller only: the user launch and Backend
        Services of one site may name different token endpoints, so the document is cached, and what each caller
        makes of it beside it."""
        iss = fhir_base(iss)
        url = iss + WELL_KNOWN
        cached = self._documents.get(iss)
        if cached is None or self._clock() - cached[1] >= self._ttl:
            async with self._locks.hold("config:" + iss):
                cached = self._documents.get(iss)
                if cached is None or self._clock() - cached[1] >= self._ttl:
                    document = await self._get_json(url, "smart-configuration", DiscoveryError)
                    cached = (document, self._clock())
                    self._parse(iss, url, document, cached[1], overrides)  # what cannot be used is not cached
                    self._documents[iss] = cached
        key = (iss, tuple(sorted((k, v) for k, v in (overrides or {}).items() if v)))
        parsed = self._configs.get(key)
        if parsed is None or parsed.fetched_at != cached[1]:
            parsed = self._configs[key] = self._parse(iss, url, cached[0], cached[1], overrides)
        return parsed

    @staticmethod
    def _parse(
        iss: str, url: str, document: Any, fetched_at: datetime, overrides: Mapping[str, str] | None
    ) -> SmartConfiguration:
        try:
            return SmartConfiguration.parse(iss, document, fetched_at=fetched_at, overrides=overrides)
        except DiscoveryError as exc:
            raise DiscoveryError(f"{exc} ({url})") from None

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
        self._documents.pop(fhir_base(iss), None)

    async def _get_json(self, url: str, what: str, error: Callable[[str], Exception]) -> Any:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise error(f"{what} could not be fetched: {type(exc).__name__} ({url})") from exc
        if response.status_code != 200:
            raise error(f"{what} answered HTTP {response.status_code} ({url})")
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise error(f"{what} is not JSON") from None


__all__ = ["OPTIONAL_FIELDS", "WELL_KNOWN", "Discovery", "SmartConfiguration"]
