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
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from bff.smart.clock import Clock, utc_now
from bff.smart.crypto import random_token
from bff.smart.discovery import Discovery
from bff.smart.errors import BackendAuthError, DiscoveryError, SmartConfigError
from bff.smart.locks import KeyedLocks
from bff.smart.tokens import request_token

ALGORITHMS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300


@dataclass(frozen=True, slots=True)
class _CachedToken:
    access_token: str
    issued_at: datetime
    expires_at: datetime


def _load_key(pem: str | bytes, alg: str, kid: str) -> RSAKey | ECKey:
    try:
        if alg == "RS384":
            rsa = RSAKey.import_key(pem, parameters={"kid": kid})
            if not rsa.is_private:
                raise SmartConfigError("the Backend Services key must be a private key")
            if rsa.raw_value.key_size < 2048:
                raise SmartConfigError("an RS384 key must have at least 2048 bits")
            return rsa
        ec = ECKey.import_key(pem, parameters={"kid": kid})
    except (JoseError, ValueError, TypeError) as exc:
        raise SmartConfigError(
            f"the Backend Services key cannot be read as a {alg} key: {type(exc).__name__}"
        ) from None
    if not ec.is_private:
        raise SmartConfigError("the Backend Services key must be a private key")
    if ec.curve_name != "P-384":
        raise SmartConfigError(f"an ES384 key must be on curve P-384, not {ec.curve_name}")
    return ec


class BackendAuth:
    """Client assertions and cached system tokens for one client id."""

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
    ) -> None:
        if alg not in ALGORITHMS:
            raise SmartConfigError(f"Backend Services alg must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
        if not client_id or not kid:
            raise SmartConfigError("Backend Services needs a client id and a key id (kid)")
        if backdate_s < 0 or assertion_lifetime_s <= 0 or backdate_s + assertion_lifetime_s > MAX_ASSERTION_LIFETIME_S:
            raise SmartConfigError("the assertion must live at most 5 minutes from its iat")
        self.client_id = client_id
        self.kid = kid
        self.alg = alg
        self._key = _load_key(private_key, alg, kid)
        self._http = http
        self._discovery = discovery or Discovery(http, clock=clock)
        self._clock = clock
        self._jku = jku
        self._backdate = backdate_s
        self._lifetime = assertion_lifetime_s
        self._leeway_s = refresh_leeway_s
        self._tokens: dict[tuple[str, str], _CachedToken] = {}
        self._locks = KeyedLocks()

    def assertion(self, token_endpoint: str) -> str:
        """A signed client assertion for `token_endpoint` (exactly the URL from smart-configuration)."""
        now = int(self._clock().timestamp())
        header: dict[str, Any] = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        if self._jku:
            header["jku"] = self._jku
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_endpoint,
            "jti": random_token(),
            "iat": now - self._backdate,
            "exp": now + self._lifetime,
        }
        return jwt.encode(header, claims, self._key, algorithms=[self.alg])

    async def token(self, iss: str, scopes: Sequence[str] = ()) -> str:
        """A system access token for the FHIR server `iss` (cached until shortly before it expires).

        `scopes` may be empty: Epic grants by the APIs registered on the client and needs none; Oracle Health
        needs `system/...` scopes listed one by one.
        """
        try:
            config = await self._discovery.configuration(iss)
            config.require_grant("client_credentials")
        except DiscoveryError as exc:
            raise BackendAuthError(f"cannot get a system token: {exc}") from exc
        scope = " ".join(scopes)
        key = (config.token_endpoint, scope)
        cached = self._tokens.get(key)
        if cached is not None and self._fresh(cached):
            return cached.access_token
        async with self._locks.hold(f"{config.token_endpoint} {scope}"):
            cached = self._tokens.get(key)
            if cached is not None and self._fresh(cached):
                return cached.access_token
            form = {
                "grant_type": "client_credentials",
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(config.token_endpoint),
                **({"scope": scope} if scope else {}),
            }
            answer = await request_token(self._http, config.token_endpoint, form, BackendAuthError)
            now = self._clock()
            lifetime = timedelta(seconds=answer.expires_in or MAX_ASSERTION_LIFETIME_S)
            self._tokens[key] = _CachedToken(answer.access_token, now, now + lifetime)
            return answer.access_token

    def forget(self) -> None:
        """Drop cached system tokens (e.g. after a 401 from the FHIR server)."""
        self._tokens.clear()

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public JWKS with this key (`kid`, `alg`, `use`), to serve at `/.well-known/jwks.json`."""
        public = dict(self._key.as_dict(private=False))
        public.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return {"keys": [public]}

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


__all__ = ["ALGORITHMS", "BackendAuth", "combined_jwks"]
