"""SMART App Launch against the running sandbox: discovery, EHR and standalone launches with PKCE, the token
fields each personality answers with, refresh behaviour, and the refusals (verifier, replayed code, aud)."""

from __future__ import annotations

import httpx
import pytest
from joserfc import jwk, jwt

from tests.sandbox.flows import (
    CLIENT,
    Pkce,
    authorize_params,
    bearer,
    consent,
    ehr_launch,
    launch_token,
    open_chart,
    query_of,
    redeem,
)
from tests.sandbox.support import REDIRECT, Clock, Server


def refused_at_redirect(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith(REDIRECT)
    return query_of(response.headers["location"])


@pytest.mark.parametrize("site", ["epic-like", "oracle-like", "read-only", "hl7-only", "cgm-receiver"])
def test_smart_configuration(http: httpx.Client, server: Server, site: str) -> None:
    config = http.get(f"/sites/{site}/fhir/.well-known/smart-configuration").json()
    assert config["authorization_endpoint"] == f"{server.base}/sites/{site}/auth/authorize"
    assert config["token_endpoint"] == server.token_url(site)
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(config["grant_types_supported"])
    for capability in (
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-asymmetric",
        "context-ehr-patient",
        "sso-openid-connect",
        "permission-v1",
        "permission-v2",
    ):
        assert capability in config["capabilities"]
    keys = http.get(config["jwks_uri"]).json()["keys"]
    assert keys[0]["kty"] == "RSA"
    assert "d" not in keys[0]


def test_epic_like_ehr_launch(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    pid = server.patient(site, "p1")
    launched = ehr_launch(http, server, site, pid)
    assert launched.iss == server.fhir(site)
    assert len(launched.code) > 300  # long, like Epic's: never truncate
    response = redeem(http, site, launched)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 3600
    assert token["patient"] == pid
    assert token["encounter"] == server.open_encounter(site, pid)
    assert token["need_patient_banner"] == "false"  # a string, as in Epic's tutorial
    assert token["smart_style_url"].endswith("/ehr/smart-style.json")
    assert "patient/Observation.read" in token["scope"].split()  # granted in v1 spelling
    assert "refresh_token" in token
    # id_token: RS256 by the site's key, fhirUser an absolute URL, nonce echoed.
    keys = jwk.KeySet.import_key_set(http.get(f"/sites/{site}/auth/jwks").json())
    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
    practitioner = server.sandbox.sites[site].seed.practitioner_ids[0]
    assert claims["fhirUser"] == f"{server.fhir(site)}/Practitioner/{practitioner}"
    assert claims["aud"] == CLIENT
    assert claims["sub"] == practitioner
    assert claims["iss"] == f"{server.base}/sites/{site}/auth"
    assert claims["nonce"].startswith("n-")
    assert claims["exp"] - claims["iat"] == 300
    # The token works on FHIR for its patient.
    read = http.get(f"/sites/{site}/fhir/Patient/{pid}", headers=bearer(token))
    assert read.status_code == 200
    assert read.json()["id"] == pid


def test_oracle_like_launch_tokens_and_refresh(http: httpx.Client, server: Server, clock: Clock) -> None:
    site = "oracle-like"
    pid = server.patient(site, "p2")
    token = launch_token(http, server, site, pid, scope="launch openid fhirUser patient/Observation.rs offline_access")
    assert token["expires_in"] == 570
    assert token["need_patient_banner"] is False
    claims = jwt.decode(token["id_token"], jwk.KeySet.import_key_set(http.get(f"/sites/{site}/auth/jwks").json()))
    assert claims.claims["fhirUser"].startswith("Practitioner/")
    first_refresh = token["refresh_token"]
    data = {"grant_type": "refresh_token", "refresh_token": first_refresh, "client_id": CLIENT}
    refreshed = http.post(f"/sites/{site}/auth/token", data=data)
    assert refreshed.status_code == 200, refreshed.text
    assert "refresh_token" not in refreshed.json()  # keep the original
    assert refreshed.json()["access_token"] != token["access_token"]
    throttled = http.post(f"/sites/{site}/auth/token", data=data)
    assert throttled.status_code == 429
    assert int(throttled.headers["retry-after"]) > 0
    clock.offset += 61
    again = http.post(f"/sites/{site}/auth/token", data=data)
    assert again.status_code == 200, again.text  # the original refresh token still works
    # Access tokens expire after 570 s.
    fresh = again.json()["access_token"]
    search = f"/sites/{site}/fhir/Observation?_count=1"
    assert http.get(search, headers=bearer(fresh)).status_code == 200
    clock.offset += 571
    expired = http.get(search, headers=bearer(fresh))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]


def test_epic_like_refresh_rotates(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    token = launch_token(http, server, site, server.patient(site, "p3"))
    data = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": CLIENT}
    refreshed = http.post(f"/sites/{site}/auth/token", data=data)
    assert refreshed.status_code == 200
    assert refreshed.json()["refresh_token"] != token["refresh_token"]
    old = http.post(f"/sites/{site}/auth/token", data=data)
    assert old.status_code == 400
    assert old.json()["error"] == "invalid_grant"


def test_wrong_verifier_is_refused(http: httpx.Client, server: Server) -> None:
    launched = ehr_launch(http, server, "oracle-like", server.patient("oracle-like", "p1"))
    response = redeem(http, "oracle-like", launched, verifier=Pkce.new().verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_replayed_code_is_refused_and_revokes(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    launched = ehr_launch(http, server, site, server.patient(site, "p1"))
    token = redeem(http, site, launched).json()
    replay = redeem(http, site, launched)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    read = http.get(f"/sites/{site}/fhir/Observation", params={"_count": 1}, headers=bearer(token))
    assert read.status_code == 401  # the tokens issued from the replayed code are revoked
    refresh = http.post(
        f"/sites/{site}/auth/token",
        data={"grant_type": "refresh_token", "client_id": CLIENT, "refresh_token": token["refresh_token"]},
    )
    assert refresh.status_code == 400


@pytest.mark.parametrize(("aud", "why"), [(None, "aud is required"), ("https://elsewhere.example/fhir", "is not")])
def test_epic_like_aud(http: httpx.Client, server: Server, aud: str | None, why: str) -> None:
    site = "epic-like"
    context = open_chart(http, site, server.patient(site, "p1"))
    params = authorize_params(server, site, Pkce.new(), launch=context["launch"])
    if aud is None:
        del params["aud"]
    else:
        params["aud"] = aud
    refused = refused_at_redirect(http.get(f"/sites/{site}/auth/authorize", params=params))
    assert refused["error"] == "invalid_request"
    assert why in refused["error_description"]
    assert refused["state"] == params["state"]


def test_pkce_plain_and_missing_are_refused(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    params = authorize_params(server, site, Pkce.new(), scope="openid fhirUser launch/patient patient/*.rs")
    params["code_challenge_method"] = "plain"
    assert (
        "S256 only"
        in refused_at_redirect(http.get(f"/sites/{site}/auth/authorize", params=params))["error_description"]
    )
    del params["code_challenge"]
    assert refused_at_redirect(http.get(f"/sites/{site}/auth/authorize", params=params))["error"] == "invalid_request"


def test_unregistered_redirect_uri_gets_an_error_page(http: httpx.Client, server: Server) -> None:
    params = authorize_params(server, "oracle-like", Pkce.new(), redirect_uri="https://evil.example/cb")
    page = http.get("/sites/oracle-like/auth/authorize", params=params)
    assert page.status_code == 400
    assert "not a registered redirect URI" in page.text


def test_oracle_like_refuses_wildcards(http: httpx.Client, server: Server) -> None:
    site = "oracle-like"
    context = open_chart(http, site, server.patient(site, "p1"))
    params = authorize_params(server, site, Pkce.new(), launch=context["launch"], scope="launch openid user/*.read")
    assert refused_at_redirect(http.get(f"/sites/{site}/auth/authorize", params=params))["error"] == "invalid_scope"


def test_launch_is_single_use(http: httpx.Client, server: Server) -> None:
    site = "read-only"
    context = open_chart(http, site, server.patient(site, "p1"))
    first = authorize_params(server, site, Pkce.new(), launch=context["launch"])
    assert consent(http, http.get(f"/sites/{site}/auth/authorize", params=first)).status_code == 303
    second = authorize_params(server, site, Pkce.new(), launch=context["launch"])
    assert refused_at_redirect(http.get(f"/sites/{site}/auth/authorize", params=second))["error"] == "invalid_request"


def test_standalone_launch_with_patient_picker(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    chosen = server.patient(site, "p6")
    pkce = Pkce.new()
    params = authorize_params(server, site, pkce, scope="openid fhirUser launch/patient patient/Observation.rs")
    page = http.get(f"/sites/{site}/auth/authorize", params=params)
    assert "Choose a patient" in page.text
    assert "Sign in as" in page.text
    practitioner = server.sandbox.sites[site].seed.practitioner_ids[1]
    answer = consent(http, page, patient=chosen, practitioner=practitioner)
    code = refused_at_redirect(answer)["code"]
    token = http.post(
        f"/sites/{site}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT,
            "code_verifier": pkce.verifier,
        },
    ).json()
    assert token["patient"] == chosen
    assert "encounter" not in token
    assert token["need_patient_banner"] is True
    assert "refresh_token" not in token
    assert (
        jwt.decode(token["id_token"], jwk.KeySet.import_key_set(http.get(f"/sites/{site}/auth/jwks").json())).claims[
            "sub"
        ]
        == practitioner
    )


def test_launch_without_open_encounter_has_no_encounter(http: httpx.Client, server: Server) -> None:
    token = launch_token(http, server, "epic-like", server.patient("epic-like", "p5"))
    assert "encounter" not in token
    assert token["patient"] == server.patient("epic-like", "p5")


def test_auth_pages_can_be_framed_by_the_shell(http: httpx.Client, server: Server) -> None:
    site = "epic-like"
    context = open_chart(http, site, server.patient(site, "p1"))
    page = http.get(
        f"/sites/{site}/auth/authorize", params=authorize_params(server, site, Pkce.new(), launch=context["launch"])
    )
    assert page.status_code == 200
    assert "x-frame-options" not in page.headers
    csp = page.headers["content-security-policy"]
    assert csp.startswith("frame-ancestors")
    assert server.base in csp
    assert "http://127.0.0.1:8000" in csp
    assert "set-cookie" not in page.headers


def test_user_scopes_reach_every_patient(http: httpx.Client, server: Server) -> None:
    site = "cgm-receiver"
    pkce = Pkce.new()
    params = authorize_params(server, site, pkce, scope="openid fhirUser user/*.*")
    answer = consent(http, http.get(f"/sites/{site}/auth/authorize", params=params))
    code = refused_at_redirect(answer)["code"]
    token = http.post(
        f"/sites/{site}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT,
            "code_verifier": pkce.verifier,
        },
    ).json()
    assert "patient" not in token
    for seeded in server.sandbox.sites[site].seed.patients:
        assert http.get(f"/sites/{site}/fhir/Patient/{seeded.patient_id}", headers=bearer(token)).status_code == 200
    group = http.get(f"/sites/{site}/fhir/Group", headers=bearer(token)).json()
    assert group["total"] == 1
    assert len(group["entry"][0]["resource"]["member"]) == 6
