"""SMART Backend Services: the client assertion, system tokens, the public JWKS."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

from bff.smart import BackendAuth, BackendAuthError, SmartConfigError, SmartSettings, combined_jwks
from bff.smart.config import create_backend_auth
from tests.smart.fakes import ISS, TOKEN_URL, FakeEhr, run

CLIENT = "glucobridge-backend"


@pytest.fixture(scope="module", name="rsa_pem")
def fx_rsa_pem() -> bytes:
    return RSAKey.generate_key(2048).as_pem(private=True)


@pytest.fixture(name="ec_pem")
def fx_ec_pem() -> bytes:
    return ECKey.generate_key("P-384").as_pem(private=True)


def public_keys(auth: BackendAuth) -> KeySet:
    """The key set an EHR builds from our JWKS."""
    return KeySet.import_key_set(cast(Any, auth.jwks()))


def make_auth(ehr: FakeEhr, http: httpx.AsyncClient, pem: bytes, alg: str, kid: str = "gb-1") -> BackendAuth:
    auth = BackendAuth(CLIENT, pem, kid, alg, http=http, clock=ehr.clock)
    ehr.backend_clients[CLIENT] = public_keys(auth)  # the JWKS the EHR fetched from us
    return auth


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_the_assertion_claims_and_header(ehr: FakeEhr, alg: str, rsa_pem: bytes, ec_pem: bytes) -> None:
    pem = rsa_pem if alg == "RS384" else ec_pem

    async def scenario() -> None:
        async with ehr.client() as http:
            auth = make_auth(ehr, http, pem, alg)
            assert await auth.token(ISS)
            [(header, claims)] = ehr.assertions
            assert header == {"alg": alg, "kid": "gb-1", "typ": "JWT"}
            assert claims["aud"] == TOKEN_URL  # exactly the string from smart-configuration
            assert claims["iss"] == claims["sub"] == CLIENT
            now = int(ehr.clock().timestamp())
            assert claims["iat"] <= now - 25  # backdated against clock skew
            assert claims["exp"] > now
            assert claims["exp"] - claims["iat"] <= 300
            assert isinstance(claims["jti"], str)
            assert 16 <= len(claims["jti"]) <= 151
            jtis = {dict(jwt.decode(auth.assertion(TOKEN_URL), public_keys(auth),
                                    algorithms=[alg]).claims)["jti"] for _ in range(50)}  # fmt: skip
            assert len(jtis | {claims["jti"]}) == 51
            form = dict(httpx.QueryParams(ehr.posts_to(TOKEN_URL)[0].content.decode()))
            assert form["grant_type"] == "client_credentials"
            assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            assert "scope" not in form

    run(scenario())


def test_system_tokens_are_cached_until_shortly_before_expiry(ehr: FakeEhr, ec_pem: bytes) -> None:
    ehr.backend_expires_in = 300

    async def scenario() -> None:
        async with ehr.client() as http:
            auth = make_auth(ehr, http, ec_pem, "ES384")
            tokens = await asyncio.gather(*(auth.token(ISS, ["system/Observation.rs"]) for _ in range(10)))
            assert len(set(tokens)) == 1
            assert len(ehr.assertions) == 1
            form = dict(httpx.QueryParams(ehr.posts_to(TOKEN_URL)[0].content.decode()))
            assert form["scope"] == "system/Observation.rs"
            ehr.clock.advance(230)
            assert await auth.token(ISS, ["system/Observation.rs"]) == tokens[0]
            ehr.clock.advance(20)  # 50 s left: less than the 60 s leeway
            assert await auth.token(ISS, ["system/Observation.rs"]) != tokens[0]
            assert len(ehr.assertions) == 2
            assert await auth.token(ISS) != tokens[0]  # other scopes, other token
            assert len(ehr.assertions) == 3

    run(scenario())


def test_a_refused_assertion_is_a_backend_auth_error(ehr: FakeEhr, ec_pem: bytes) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            auth = make_auth(ehr, http, ec_pem, "ES384")
            ehr.backend_clients.clear()  # the site has not registered our JWKS
            with pytest.raises(BackendAuthError) as caught:
                await auth.token(ISS)
            assert caught.value.error == "invalid_client"

    run(scenario())


def test_jwks_is_public_with_kid_alg_and_use(rsa_pem: bytes, ec_pem: bytes) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            rsa = BackendAuth(CLIENT, rsa_pem, "old", "RS384", http=http)
            ec = BackendAuth(CLIENT, ec_pem, "new", "ES384", http=http)
            [key] = ec.jwks()["keys"]
            assert [key[k] for k in ("kid", "alg", "use", "kty", "crv")] == ["new", "ES384", "sig", "EC", "P-384"]
            assert "d" not in key
            both = combined_jwks(ec, rsa, ec)
            assert [k["kid"] for k in both["keys"]] == ["new", "old"]
            assert all("d" not in k and "p" not in k for k in both["keys"])

    run(scenario())


@pytest.mark.parametrize(
    ("alg", "key", "message"),
    [
        ("RS256", "rsa", "alg"),
        ("ES384", "rsa", "ES384"),
        ("RS384", "ec", "RS384"),
        ("ES384", "p256", "P-384"),
        ("ES384", "ec-public", "private"),
    ],
)
def test_unusable_keys_are_refused(rsa_pem: bytes, ec_pem: bytes, alg: str, key: str, message: str) -> None:
    pems = {
        "rsa": rsa_pem,
        "ec": ec_pem,
        "p256": ECKey.generate_key("P-256").as_pem(private=True),
        "ec-public": ECKey.import_key(ec_pem).as_pem(private=False),
    }

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            with pytest.raises(SmartConfigError, match=message):
                BackendAuth(CLIENT, pems[key], "k", alg, http=http)

    run(scenario())


def test_backend_auth_from_settings(tmp_path: Path, ec_pem: bytes) -> None:
    key_file = tmp_path / "backend.pem"
    key_file.write_bytes(ec_pem)

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            assert create_backend_auth(SmartSettings(), CLIENT, http=http) is None
            settings = SmartSettings(backend_key_file=str(key_file), backend_kid="k9", backend_jku="https://cgm.test/j")
            auth = create_backend_auth(settings, CLIENT, http=http)
            assert auth is not None
            assert auth.jwks()["keys"][0]["kid"] == "k9"
            assert jwt.decode(auth.assertion(TOKEN_URL), public_keys(auth),
                              algorithms=["ES384"]).header["jku"] == "https://cgm.test/j"  # fmt: skip

    run(scenario())
