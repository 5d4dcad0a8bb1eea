"""SMART Backend Services: system tokens for nightly jobs and deferred writes, with a signed client assertion.

The assertion (RFC 7523, `private_key_jwt`): `iss` = `sub` = client_id, `aud` = the token endpoint exactly as
smart-configuration names it (servers compare it as a string), a fresh `jti`, `iat` backdated a little against
clock skew (Epic rejects an `iat` in the future) and `exp` at most 5 minutes after `iat`. The header carries `kid`
(and `jku` when given). The public key is served as a JWKS (`jwks()`; the app publishes it at
`/.well-known/jwks.json`). To rotate: publish the new key beside the old one (`combined_jwks`), switch signing,
wait at least 5 minutes, drop the old key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from bff.smart.clock import Clock, utc_now
from bff.smart.discovery import Discovery
from bff.smart.errors import BackendAuthError, DiscoveryError, SmartConfigError
from bff.smart.locks import KeyedLocks
from bff.smart.oauth import (
    ALGORITHMS,
    ASSERTION_TYPE,
    MAX_ASSERTION_LIFETIME_S,
    AssertionSigner,
    ClientAuthentication,
)
from bff.smart.tokens import request_token


@dataclass(frozen=True, slots=True)
class _CachedToken:
    access_token: str
    issued_at: datetime
    expires_at: datetime


class BackendAuth:
    """Client assertions and cached system tokens for one client id (and key).

    `token_endpoint` overrides the one smart-configuration names (a site whose Backend Services go to another
    URL); `expected_lifetime_s` is the token lifetime assumed when a token response has no `expires_in`."""

    def __init__(
        self,
        client_id: str,
        private_key: str | bytes,
        kid: str,
        alg: str,
        *,
        http: httpx.AsyncClient,
        discovery: Discovery | None = None,
        clock: Clock = utc_now,
        jku: str | None = None,
        backdate_s: int = 30,
        assertion_lifetime_s: int = 240,
        refresh_leeway_s: float = 60,
        token_endpoint: str | None = None,
        expected_lifetime_s: int = MAX_ASSERTION_LIFETIME_S,
    ) -> None:
        if alg not in ALGORITHMS:
            raise SmartConfigError(f"Backend Services alg must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
        if not client_id or not kid:
            raise SmartConfigError("Backend Services needs a client id and a key id (kid)")
        self.client_id = client_id
        self.kid = kid
        self.alg = alg
        self.token_endpoint = token_endpoint or None
        self._signer = AssertionSigner(
            private_key, kid, alg, jku=jku, clock=clock, backdate_s=backdate_s, lifetime_s=assertion_lifetime_s
        )
        self._client = ClientAuthentication(client_id, "private_key_jwt", signer=self._signer)
        self._http = http
        self._discovery = discovery or Discovery(http, clock=clock)
        self._clock = clock
        self._leeway_s = refresh_leeway_s
        self._expected_lifetime_s = expected_lifetime_s
        self._tokens: dict[tuple[str, str], _CachedToken] = {}
        self._locks = KeyedLocks()

    def assertion(self, token_endpoint: str) -> str:
        """A signed client assertion for `token_endpoint` (exactly the URL from smart-configuration)."""
        return self._signer.sign(self.client_id, token_endpoint)

    async def endpoint(self, iss: str) -> str:
        """The token endpoint for the FHIR server `iss`: the override, else smart-configuration's."""
        overrides = {"token_endpoint": self.token_endpoint} if self.token_endpoint else None
        try:
            config = await self._discovery.configuration(iss, overrides=overrides)
            config.require_backend()
        except DiscoveryError as exc:
            error = BackendAuthError(f"cannot get a system token: {exc}")
            error.site_key = exc.site_key
            raise error from exc
        return self.token_endpoint or config.token_endpoint

    async def token(self, iss: str, scopes: Sequence[str] = ()) -> str:
        """A system access token for the FHIR server `iss` (cached until shortly before it expires).

        `scopes` may be empty: Epic grants by the APIs registered on the client and needs none; Oracle Health
        needs `system/...` scopes listed one by one (`bff.vendors` gives each site's).
        """
        token_endpoint = await self.endpoint(iss)
        scope = " ".join(scopes)
        key = (token_endpoint, scope)
        cached = self._tokens.get(key)
        if cached is not None and self._fresh(cached):
            return cached.access_token
        async with self._locks.hold(f"{token_endpoint} {scope}"):
            cached = self._tokens.get(key)
            if cached is not None and self._fresh(cached):
                return cached.access_token
            form = {"grant_type": "client_credentials", **({"scope": scope} if scope else {})}
            answer = await request_token(self._http, token_endpoint, form, BackendAuthError, auth=self._client)
            now = self._clock()
            lifetime = timedelta(seconds=answer.expires_in or self._expected_lifetime_s)
            self._tokens[key] = _CachedToken(answer.access_token, now, now + lifetime)
            return answer.access_token

    def forget(self) -> None:
        """Drop cached system tokens (e.g. after a 401 from the FHIR server)."""
        self._tokens.clear()

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWKS with this key (`kid`, `alg`, `use`), to serve at `/.well-known/jwks.json`."""
        return {"keys": [self._signer.public_jwk()]}

    def _fresh(self, cached: _CachedToken) -> bool:
        """Backend tokens can live under 5 minutes: the margin is the leeway or half the lifetime."""
        lifetime = (cached.expires_at - cached.issued_at).total_seconds()
        margin = min(self._leeway_s, lifetime / 2)
        return (cached.expires_at - self._clock()).total_seconds() > margin


def combined_jwks(*auths: BackendAuth) -> dict[str, list[dict[str, Any]]]:
    """One JWKS with the keys of several signers (during a key rotation), each `kid` once."""
    keys: dict[str, dict[str, Any]] = {}
    for auth in auths:
        for key in auth.jwks()["keys"]:
            keys.setdefault(str(key["kid"]), key)
    return {"keys": list(keys.values())}


__all__ = ["ALGORITHMS", "ASSERTION_TYPE", "BackendAuth", "combined_jwks"]
