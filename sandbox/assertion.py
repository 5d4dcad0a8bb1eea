"""Client authentication with a signed JWT (SMART Backend Services / private_key_jwt), as Epic checks it.

Rules (ehr-realities.md §1.4, SMART Backend Services): the assertion is signed with RS384 or ES384 (RS256,
RS512 and ES256 are accepted too); the key comes from the client's registered JWKS URL or inline JWKS, chosen
by `kid` when the header has one; a `jku` header must be the registered JWKS URL; `iss` = `sub` = client_id;
`aud` is the token endpoint URL, compared as a string, exactly; `exp` is in the future and at most 5 minutes
ahead; `nbf`/`iat` are not in the future (no leeway: clock skew breaks assertions, §4 pain 11); `jti` is a
string of at most 151 characters never seen before for this client until its `exp`.

JWKS URLs are fetched with httpx and cached; a missing `kid` or a failed signature triggers one re-fetch
(Epic re-fetches at most once per assertion, only when the cache is stale or the signature fails).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from joserfc import jwk, jws
from joserfc.errors import JoseError

from sandbox.config import ClientRegistration

ALGORITHMS = ("RS384", "ES384", "RS256", "RS512", "ES256")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME_S = 300
MAX_JTI = 151
JWKS_CACHE_S = 29 * 3600


class ClientAssertionError(Exception):
    """An assertion refused; `description` goes into the token response's error_description."""

    def __init__(self, description: str, error: str = "invalid_client") -> None:
        super().__init__(description)
        self.description = description
        self.error = error


@dataclass(slots=True)
class JwksCache:
    """Fetched JWK Sets by URL, with the time they were fetched."""

    http: httpx.AsyncClient | None = None
    entries: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    async def get(self, url: str, now: float, *, refresh: bool = False) -> dict[str, Any]:
        cached = self.entries.get(url)
        if cached is not None and not refresh and now - cached[0] < JWKS_CACHE_S:
            return cached[1]
        client = self.http or httpx.AsyncClient(timeout=5.0)
        try:
            response = await client.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ClientAssertionError(f"could not fetch the client's JWKS from {url}: {type(exc).__name__}") from None
        finally:
            if self.http is None:
                await client.aclose()
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise ClientAssertionError(f"the JWKS at {url} has no 'keys' list")
        self.entries[url] = (now, keys)
        return keys


def unverified_parts(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a compact JWS, not verified; ClientAssertionError when it is not one."""
    try:
        compact = jws.extract_compact(assertion.encode())
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeDecodeError):
        raise ClientAssertionError("client_assertion is not a compact JWS") from None
    if not isinstance(claims, dict):
        raise ClientAssertionError("client_assertion claims are not a JSON object")
    return dict(compact.protected), claims


def _candidates(keyset: Mapping[str, Any], kid: str | None, alg: str) -> list[Any]:
    kty = "EC" if alg.startswith("ES") else "RSA"
    keys = []
    for entry in keyset.get("keys", []):
        if not isinstance(entry, dict) or entry.get("kty") != kty:
            continue
        if kid is not None and entry.get("kid") != kid:
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        try:
            keys.append(jwk.import_key(entry))
        except (JoseError, ValueError, TypeError):
            continue
    return keys


def _verified(assertion: str, keys: list[Any], alg: str) -> bool:
    for key in keys:
        try:
            jws.deserialize_compact(assertion, key, algorithms=[alg])
        except (JoseError, ValueError):
            continue
        return True
    return False


async def verify_client_assertion(
    assertion: str,
    *,
    clients: Callable[[str], ClientRegistration | None],
    token_endpoint: str,
    cache: JwksCache,
    seen_jti: dict[tuple[str, str], float],
    now: float,
    client_id: str | None = None,
) -> ClientRegistration:
    """The client a valid assertion authenticates; ClientAssertionError (invalid_client) otherwise."""
    header, claims = unverified_parts(assertion)
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise ClientAssertionError(f"alg {alg!r} is not accepted (use RS384 or ES384)")
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or iss != sub:
        raise ClientAssertionError("iss and sub must both be the client_id")
    if client_id is not None and client_id != iss:
        raise ClientAssertionError("client_id does not match the assertion's iss")
    client = clients(iss)
    if client is None or not client.confidential:
        raise ClientAssertionError(f"unknown client {iss!r} or no keys registered for it")

    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    jku = header.get("jku")
    if jku is not None and jku != client.jwks_url:
        raise ClientAssertionError("the jku header is not the client's registered JWKS URL")
    if client.jwks is not None:
        verified = _verified(assertion, _candidates(client.jwks, kid, alg), alg)
    else:
        assert client.jwks_url is not None
        keyset = await cache.get(client.jwks_url, now)
        keys = _candidates(keyset, kid, alg)
        verified = bool(keys) and _verified(assertion, keys, alg)
        if not verified:  # a new key may have been published: fetch once more
            keyset = await cache.get(client.jwks_url, now, refresh=True)
            verified = _verified(assertion, _candidates(keyset, kid, alg), alg)
    if not verified:
        raise ClientAssertionError(
            "the assertion's signature does not verify with the client's keys" + (f" (kid {kid!r})" if kid else "")
        )

    aud = claims.get("aud")
    if aud != token_endpoint:
        raise ClientAssertionError(f"aud must be the token endpoint URL exactly: {token_endpoint}")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise ClientAssertionError("exp is missing")
    if exp <= now:
        raise ClientAssertionError("the assertion has expired")
    if exp > now + MAX_LIFETIME_S:
        raise ClientAssertionError("exp is more than 5 minutes ahead")
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or value > now):
            raise ClientAssertionError(f"{name} is in the future (check the clock: no leeway is allowed)")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
        raise ClientAssertionError(f"jti must be a string of 1 to {MAX_JTI} characters")
    for key, expires in list(seen_jti.items()):
        if expires <= now:
            del seen_jti[key]
    if (client.client_id, jti) in seen_jti:
        raise ClientAssertionError("jti has been used already (replayed assertion)")
    seen_jti[(client.client_id, jti)] = float(exp)
    return client
