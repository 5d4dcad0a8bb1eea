"""SMART Backend Services: client_credentials with RS384 and ES384 assertions (inline JWKS and a JWKS URL), and
the refusals a strict server makes (replayed jti, aud, exp too far, unknown key, iat in the future)."""

from __future__ import annotations

import httpx
import pytest

from tests.sandbox.flows import assertion, backend_token, bearer
from tests.sandbox.support import Server


@pytest.mark.parametrize(("alg", "key_name"), [("RS384", "rsa"), ("ES384", "ec")])
def test_inline_jwks_assertion(http: httpx.Client, server: Server, alg: str, key_name: str) -> None:
    site = "cgm-receiver"
    signed = assertion(getattr(server.keys, key_name), alg, "test-backend", server.token_url(site))
    response = backend_token(http, site, signed, scope="system/Observation.rs system/Patient.rs")
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["scope"] == "system/Observation.rs system/Patient.rs"
    assert "refresh_token" not in token
    assert "patient" not in token
    found = http.get(f"/sites/{site}/fhir/Observation", params={"_count": 2}, headers=bearer(token))
    assert found.status_code == 200
    assert found.json()["total"] > 100_000


def test_jwks_url_assertion_and_epic_default_scope(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    signed = assertion(server.keys.jku_ec, "ES384", "glucobridge-backend", server.token_url(site))
    response = backend_token(http, site, signed)  # Epic: no scope needed, the registered APIs are granted
    assert response.status_code == 200, response.text
    assert "system/*.read" in response.json()["scope"].split()  # v1 spelling


def test_oracle_like_backend_needs_explicit_scopes_and_570s(http: httpx.Client, server: Server) -> None:
    site = "oracle-like"
    url = server.token_url(site)
    missing = backend_token(http, site, assertion(server.keys.rsa, "RS384", "test-backend", url))
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_scope"
    wildcard = backend_token(http, site, assertion(server.keys.rsa, "RS384", "test-backend", url), "system/*.rs")
    assert wildcard.json()["error"] == "invalid_scope"
    ok = backend_token(http, site, assertion(server.keys.rsa, "RS384", "test-backend", url), "system/Observation.rs")
    assert ok.status_code == 200
    assert ok.json()["expires_in"] == 570


def test_replayed_jti_is_refused(http: httpx.Client, server: Server) -> None:
    site = "read-only"
    signed = assertion(server.keys.ec, "ES384", "test-backend", server.token_url(site))
    assert backend_token(http, site, signed).status_code == 200
    again = backend_token(http, site, signed)
    assert again.status_code == 401
    assert again.json()["error"] == "invalid_client"
    assert "jti" in again.json()["error_description"]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"aud": "AUD+/"}, "aud must be the token endpoint"),
        ({"aud": "FHIR"}, "aud must be the token endpoint"),
        ({"exp": "FAR"}, "more than 5 minutes"),
        ({"exp": "PAST"}, "expired"),
        ({"iat": "FUTURE"}, "iat is in the future"),
        ({"sub": "someone-else"}, "iss and sub"),
        ({"jti": None}, "jti must be"),
    ],
)
def test_assertion_claims_are_checked(
    http: httpx.Client, server: Server, overrides: dict[str, object], reason: str
) -> None:
    site = "hl7-only"
    url = server.token_url(site)
    now = server.clock()
    values = {
        "AUD+/": url + "/",
        "FHIR": server.fhir(site),
        "FAR": int(now) + 600,
        "PAST": int(now) - 10,
        "FUTURE": int(now) + 30,
    }
    claims = {k: values.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    response = backend_token(http, site, assertion(server.keys.rsa, "RS384", "test-backend", url, now=now, **claims))
    assert response.status_code == 401, response.text
    assert reason in response.json()["error_description"]


def test_unknown_key_and_algorithms_are_refused(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    url = server.token_url(site)
    forged = assertion(server.keys.other_rsa, "RS384", "test-backend", url)  # same kid, another key
    response = backend_token(http, site, forged)
    assert response.status_code == 401
    assert "signature" in response.json()["error_description"]
    weak = assertion(server.keys.rsa, "PS256", "test-backend", url)
    assert "not accepted" in backend_token(http, site, weak).json()["error_description"]


def test_public_client_cannot_use_client_credentials(http: httpx.Client) -> None:
    response = http.post(
        "/sites/cgm-receiver/auth/token", data={"grant_type": "client_credentials", "client_id": "glucobridge"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unauthorized_client"
