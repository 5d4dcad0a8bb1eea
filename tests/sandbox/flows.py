"""Client-side steps the tests repeat: an EHR launch through the shell, a standalone launch, a JWT assertion.

They do what the BFF will do, with httpx only: open the chart (which creates the launch), call authorize,
submit the consent form, redeem the code with PKCE.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt

from tests.sandbox.support import REDIRECT, Server

CLIENT = "glucobridge"
SCOPE = "launch openid fhirUser patient/Observation.rs patient/Patient.r offline_access"


@dataclass
class Pkce:
    verifier: str
    challenge: str

    @classmethod
    def new(cls) -> Pkce:
        verifier = secrets.token_urlsafe(48)
        digest = hashlib.sha256(verifier.encode()).digest()
        return cls(verifier, base64.urlsafe_b64encode(digest).decode().rstrip("="))


@dataclass
class Launched:
    code: str
    pkce: Pkce
    state: str
    iss: str


def found(pattern: str, text: str) -> str:
    """The first group of `pattern` in `text` (the test fails when it is missing)."""
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not found"
    return match.group(1)


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def open_chart(http: httpx.Client, site: str, patient_id: str) -> dict[str, str]:
    """The iss and launch the shell's chart page hands to the app's iframe."""
    page = http.get(f"/ehr/{site}/patients/{patient_id}")
    assert page.status_code == 200, page.text
    src = unescape(found(r'<iframe class="app"[^>]*src="([^"]+)"', page.text))
    return query_of(src)


def authorize_params(server: Server, site: str, pkce: Pkce, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": CLIENT,
        "redirect_uri": REDIRECT,
        "scope": SCOPE,
        "state": secrets.token_urlsafe(16),
        "aud": server.fhir(site),
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
        "nonce": "n-" + secrets.token_hex(4),
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def consent(http: httpx.Client, page: httpx.Response, **fields: str) -> httpx.Response:
    """Submit the consent form as a clinician would (Allow), without following the redirect to the app."""
    assert page.status_code == 200, page.text
    action = found(r'<form method="post" action="([^"]+)"', page.text)
    request_id = found(r'name="request_id" value="([^"]+)"', page.text)
    checked = dict(re.findall(r'<input type="radio" [^>]*name="([^"]+)" value="([^"]+)" checked>', page.text))
    return http.post(action, data={"request_id": request_id, "decision": "allow", **checked, **fields})


def ehr_launch(http: httpx.Client, server: Server, site: str, patient_id: str, **extra: str) -> Launched:
    """Chart → authorize → consent → the code at the redirect URI."""
    context = open_chart(http, site, patient_id)
    pkce = Pkce.new()
    params = authorize_params(server, site, pkce, launch=context["launch"], **extra)
    page = http.get(f"/sites/{site}/auth/authorize", params=params)
    answer = consent(http, page)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    assert location.startswith(REDIRECT)
    got = query_of(location)
    assert got["state"] == params["state"], got
    return Launched(got["code"], pkce, params["state"], context["iss"])


def redeem(http: httpx.Client, site: str, launched: Launched, verifier: str | None = None) -> httpx.Response:
    return http.post(
        f"/sites/{site}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": launched.code,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT,
            "code_verifier": verifier or launched.pkce.verifier,
        },
    )


def launch_token(http: httpx.Client, server: Server, site: str, patient_id: str, **extra: str) -> dict[str, Any]:
    response = redeem(http, site, ehr_launch(http, server, site, patient_id, **extra))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def bearer(token: dict[str, Any] | str) -> dict[str, str]:
    value = token if isinstance(token, str) else token["access_token"]
    return {"Authorization": f"Bearer {value}"}


def assertion(key: Any, alg: str, client_id: str, token_url: str, now: float | None = None, **overrides: Any) -> str:
    """A client assertion for `client_id`, valid for `token_url` unless `overrides` change claims (None drops one)."""
    moment = int(now if now is not None else time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": moment + 240,
        "iat": moment - 5,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    return jwt.encode(header, {k: v for k, v in claims.items() if v is not None}, key, algorithms=[alg])


def backend_token(http: httpx.Client, site: str, signed: str, scope: str | None = None) -> httpx.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed,
    }
    if scope is not None:
        data["scope"] = scope
    return http.post(f"/sites/{site}/auth/token", data=data)
