"""SMART App Launch against a fake authorization server (httpx.MockTransport): launch, callback, tokens."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc.jwk import RSAKey

from bff.smart import (
    DiscoveryError,
    IdTokenError,
    IssNotAllowedError,
    LaunchNotFoundError,
    LaunchRequestError,
    MemoryLaunchStore,
    PatientMismatchError,
    RefreshError,
    StateError,
    TokenExchangeError,
)
from tests.smart.fakes import (
    AUTHORIZE_URL,
    CLIENT_ID,
    ISS,
    JWKS_URL,
    REDIRECT_URI,
    TOKEN_URL,
    FakeEhr,
    challenge_of,
    launched,
    make_client,
    query,
    run,
)

# MARK: begin


def test_ehr_launch_redirects_to_the_discovered_authorize_endpoint_with_every_parameter(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-token-xyz")
            parts = urlsplit(redirect.url)
            assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTHORIZE_URL
            params = query(redirect.url)
            assert params == dict(redirect.params)
            assert params["response_type"] == "code"
            assert params["client_id"] == CLIENT_ID
            assert params["redirect_uri"] == REDIRECT_URI
            assert params["aud"] == ISS
            assert params["launch"] == "launch-token-xyz"
            assert params["scope"].split()[0] == "launch"
            assert {"openid", "fhirUser"} <= set(params["scope"].split())
            assert params["code_challenge_method"] == "S256"
            assert re.fullmatch(r"[A-Za-z0-9_-]{43}", params["code_challenge"])
            # ≥ 128 bits of randomness, URL-safe, and different every time
            assert len(params["state"]) >= 43
            assert len(params["nonce"]) >= 43
            again = query((await client.begin(ISS, "launch-token-xyz")).url)
            assert again["state"] != params["state"]
            assert again["nonce"] != params["nonce"]
            assert redirect.frame_ancestors == ("https://powerchart.example.test",)
            assert redirect.site_key == "site-a"

    run(scenario())


def test_ehr_launch_needs_launch_and_standalone_refuses_one(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            with pytest.raises(LaunchRequestError):
                await client.begin(ISS, None)
            with pytest.raises(LaunchRequestError):
                await client.begin(ISS, "xyz", standalone=True)

    run(scenario())


@pytest.mark.parametrize(
    "iss",
    [
        "https://evil.example.test/r4/tenant-1",
        ISS + "/extra",
        ISS + "/",  # exact: a trailing slash the site's file does not have
        ISS.upper(),
        "",
        "https://ehr.example.test/r4/tenant-1?x=1",
    ],
)
def test_an_iss_off_the_allow_list_is_refused_before_any_request(ehr: FakeEhr, iss: str) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            with pytest.raises(IssNotAllowedError) as caught:
                await client.begin(iss, "launch-1")
            assert caught.value.iss == iss
            assert ehr.requests == []

    run(scenario())


def test_a_server_without_pkce_s256_is_refused(ehr: FakeEhr) -> None:
    ehr.code_challenge_methods = ("plain",)

    async def scenario() -> None:
        async with ehr.client() as http:
            with pytest.raises(DiscoveryError, match="S256"):
                await make_client(ehr, http).begin(ISS, "launch-1")

    run(scenario())


# MARK: complete


def test_ehr_launch_happy_path(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            context = done.context
            assert re.fullmatch(r"[A-Za-z0-9_-]{43,}", done.handle)
            assert context.patient == done.patient == "pat-123"
            assert context.encounter == "enc-9"
            assert context.fhir_user == "Practitioner/doc-1"
            assert context.need_patient_banner is False  # Epic sends the string "false"
            assert context.smart_style_url == "https://auth.example.test/style.json"
            assert context.context == {"location": "dept-42"}
            assert context.iss == ISS
            assert context.site_key == "site-a"
            assert context.vendor == "oracle"
            assert not context.standalone
            assert "openid" in context.scopes
            assert done.frame_ancestors == ("https://powerchart.example.test",)
            assert await client.launch(done.handle) == context
            assert await client.access_token(done.handle) == ehr.issued_access_tokens[-1]
            # no token anywhere in what callers get back, nor the handle in a repr
            shown = repr(done) + repr(context) + repr(dataclasses.asdict(context))
            assert "AT-" not in shown
            assert "RT-" not in shown
            assert done.handle not in shown

    run(scenario())


def test_standalone_launch_asks_for_a_patient_and_sends_no_launch(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, None, standalone=True)
            params = query(redirect.url)
            assert "launch" not in params
            scopes = params["scope"].split()
            assert "launch/patient" in scopes
            assert "launch" not in scopes
            assert not redirect.post_allowed
            done = await client.complete(params["state"], ehr.authorize(redirect.url))
            assert done.context.standalone
            assert done.patient == "pat-123"
            assert done.context.encounter is None

    run(scenario())


@pytest.mark.parametrize(("sent", "expected"), [("false", False), ("true", True), (False, False), ("TRUE", True)])
def test_need_patient_banner_as_bool_or_string(ehr: FakeEhr, sent: object, expected: bool) -> None:
    ehr.need_patient_banner = sent

    async def scenario() -> None:
        async with ehr.client() as http:
            done = await launched(make_client(ehr, http), ehr)
            assert done.context.need_patient_banner is expected

    run(scenario())


def test_pkce_verifier_is_sent_and_matches_the_challenge(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            challenge = query(redirect.url)["code_challenge"]
            await client.complete(query(redirect.url)["state"], ehr.authorize(redirect.url))
            [verifier] = ehr.verifiers
            assert 43 <= len(verifier) <= 128
            assert re.fullmatch(r"[A-Za-z0-9._~-]+", verifier)
            assert challenge_of(verifier) == challenge
            assert verifier not in redirect.url  # the verifier never travels through the browser

    run(scenario())


def test_the_code_goes_to_the_token_endpoint_named_by_discovery(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            await launched(make_client(ehr, http), ehr)
            posts = [r for r in ehr.requests if r.method == "POST"]
            assert [str(r.url) for r in posts] == [TOKEN_URL]
            body = parse_qs(posts[0].content.decode())
            assert body["grant_type"] == ["authorization_code"]
            assert body["redirect_uri"] == [REDIRECT_URI]
            assert body["client_id"] == [CLIENT_ID]
            # discovery once (cached), JWKS once
            gets = [str(r.url) for r in ehr.requests if r.method == "GET"]
            assert gets == [ISS + "/.well-known/smart-configuration", JWKS_URL]

    run(scenario())


def test_unknown_state_is_refused(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            code = ehr.authorize(redirect.url)
            for state in ("not-a-state", "", "x" * 5000):
                with pytest.raises(StateError):
                    await client.complete(state, code)
            assert ehr.posts_to(TOKEN_URL) == []

    run(scenario())


def test_a_replayed_state_is_refused(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            state = query(redirect.url)["state"]
            await client.complete(state, ehr.authorize(redirect.url))
            with pytest.raises(StateError):
                await client.complete(state, ehr.authorize(redirect.url))
            assert len(ehr.posts_to(TOKEN_URL)) == 1

    run(scenario())


def test_concurrent_callbacks_with_one_state_complete_once(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            state, code = query(redirect.url)["state"], ehr.authorize(redirect.url)
            results = await asyncio.gather(*(client.complete(state, code) for _ in range(5)), return_exceptions=True)
            assert sum(not isinstance(r, BaseException) for r in results) == 1
            assert sum(isinstance(r, StateError) for r in results) == 4

    run(scenario())


def test_an_expired_state_is_refused_and_used_up(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            state, code = query(redirect.url)["state"], ehr.authorize(redirect.url)
            ehr.clock.advance(601)
            with pytest.raises(StateError, match="expired"):
                await client.complete(state, code)
            with pytest.raises(StateError, match="unknown or already used"):
                await client.complete(state, code)
            assert ehr.posts_to(TOKEN_URL) == []

    run(scenario())


def test_a_code_the_server_refuses_is_a_token_exchange_error_with_the_oauth_code(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            redirect = await client.begin(ISS, "launch-1")
            ehr.authorize(redirect.url)
            with pytest.raises(TokenExchangeError) as caught:
                await client.complete(query(redirect.url)["state"], "code-the-server-never-issued")
            assert caught.value.error == "invalid_grant"
            assert caught.value.status_code == 400
            assert "code-the-server-never-issued" not in str(caught.value)

    run(scenario())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"nonce": "someone-elses-nonce"}, "nonce"),
        ({"aud": "another-client"}, "aud"),
        ({"aud": [CLIENT_ID, "another-client"]}, "azp"),
        ({"iss": "https://idp.elsewhere.test"}, "issuer"),
        ({"exp": 1_700_000_000}, "expired"),
        ({"iat": None}, "iat"),
        ({"sub": None}, "sub"),
    ],
)
def test_a_bad_id_token_is_refused(ehr: FakeEhr, overrides: dict[str, Any], message: str) -> None:
    ehr.id_token_overrides = overrides

    async def scenario() -> None:
        async with ehr.client() as http:
            store = MemoryLaunchStore()
            with pytest.raises(IdTokenError, match=message):
                await launched(make_client(ehr, http, store=store), ehr)
            assert store.launches == {}

    run(scenario())


def test_an_id_token_signed_by_another_key_is_refused(ehr: FakeEhr, other_key: RSAKey) -> None:
    ehr.id_token_signer = other_key

    async def scenario() -> None:
        async with ehr.client() as http:
            with pytest.raises(IdTokenError, match="signature"):
                await launched(make_client(ehr, http), ehr)

    run(scenario())


def test_a_new_signing_key_is_fetched_once_when_the_ehr_rotates(ehr: FakeEhr, other_key: RSAKey) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            await launched(client, ehr)
            rotated = RSAKey.import_key(other_key.as_dict(private=True), parameters={"kid": "ehr-key-2"})
            ehr.key = rotated
            await launched(client, ehr)
            assert [str(r.url) for r in ehr.requests if r.method == "GET"].count(JWKS_URL) == 2

    run(scenario())


def test_an_oidc_issuer_other_than_the_fhir_base_is_accepted_from_discovery(ehr: FakeEhr) -> None:
    ehr.oidc_issuer = "https://auth.example.test/tenants/tenant-1/oauth2"  # Epic: .../oauth2 vs .../api/FHIR/R4

    async def scenario() -> None:
        async with ehr.client() as http:
            done = await launched(make_client(ehr, http), ehr)
            assert done.context.fhir_user == "Practitioner/doc-1"

    run(scenario())


# MARK: using a launch


def test_check_patient(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            assert (await client.check_patient(done.handle, "pat-123")).patient == "pat-123"
            assert (await client.check_patient(done.handle, "Patient/pat-123")).patient == "pat-123"
            with pytest.raises(PatientMismatchError) as caught:
                await client.check_patient(done.handle, "pat-999")
            assert (caught.value.expected, caught.value.requested) == ("pat-123", "pat-999")
            assert "pat-" not in str(caught.value)

    run(scenario())


def test_a_launch_without_a_patient_matches_no_patient(ehr: FakeEhr) -> None:
    ehr.patient = None

    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            assert done.patient is None
            with pytest.raises(PatientMismatchError):
                await client.check_patient(done.handle, "pat-123")

    run(scenario())


def test_two_tabs_get_two_handles_and_keep_their_patients(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            first = await launched(client, ehr)
            ehr.patient = "pat-456"
            second = await launched(client, ehr)
            assert first.handle != second.handle
            assert (await client.launch(first.handle)).patient == "pat-123"
            assert (await client.launch(second.handle)).patient == "pat-456"
            with pytest.raises(PatientMismatchError):
                await client.check_patient(first.handle, "pat-456")

    run(scenario())


def test_unknown_ended_and_expired_launches_are_not_found(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            for handle in ("", "nope"):
                with pytest.raises(LaunchNotFoundError):
                    await client.launch(handle)
            done = await launched(client, ehr)
            assert await client.end(done.handle)
            with pytest.raises(LaunchNotFoundError):
                await client.access_token(done.handle)
            done = await launched(client, ehr)
            ehr.clock.advance(12 * 3600)
            with pytest.raises(LaunchNotFoundError):
                await client.launch(done.handle)

    run(scenario())


def test_expired_records_are_purged(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            store = MemoryLaunchStore()
            client = make_client(ehr, http, store=store)
            await client.begin(ISS, "launch-abandoned")
            await launched(client, ehr)
            assert (len(store.prelogins), len(store.launches)) == (1, 1)
            ehr.clock.advance(601)
            assert await client.purge() == 1
            ehr.clock.advance(12 * 3600)
            await client.begin(ISS, "launch-next")  # begin purges now and then
            assert (len(store.prelogins), len(store.launches)) == (1, 0)

    run(scenario())


# MARK: refresh


def test_twenty_concurrent_callers_near_expiry_cause_exactly_one_refresh(ehr: FakeEhr) -> None:
    ehr.refresh_delay_s = 0.05  # the refresh is slow enough for every caller to pile up behind it

    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            first = await client.access_token(done.handle)
            assert ehr.refresh_requests == []
            ehr.clock.advance(3600 - 30)  # 30 s left, less than the 60 s leeway
            tokens = await asyncio.gather(*(client.access_token(done.handle) for _ in range(20)))
            assert len(ehr.refresh_requests) == 1
            assert set(tokens) == {ehr.issued_access_tokens[-1]}
            assert first not in tokens
            await client.access_token(done.handle)
            assert len(ehr.refresh_requests) == 1  # fresh again: no further refresh

    run(scenario())


def test_a_refresh_without_a_new_refresh_token_keeps_the_old_one(ehr: FakeEhr) -> None:
    ehr.rotate_refresh_tokens = False  # Oracle Health
    ehr.expires_in = 570

    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            [original] = ehr.refresh_tokens
            for _ in range(3):
                ehr.clock.advance(540)
                await client.access_token(done.handle)
            assert [r["refresh_token"] for r in ehr.refresh_requests] == [original] * 3
            assert all(r["client_id"] == CLIENT_ID for r in ehr.refresh_requests)

    run(scenario())


def test_a_rotated_refresh_token_replaces_the_old_one(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            for _ in range(2):
                ehr.clock.advance(3590)
                await client.access_token(done.handle)
            used = [r["refresh_token"] for r in ehr.refresh_requests]
            assert len(used) == 2
            assert used[0] != used[1]

    run(scenario())


def test_a_refused_refresh_is_a_refresh_error(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            ehr.refresh_error = "invalid_grant"
            ehr.clock.advance(3590)
            with pytest.raises(RefreshError) as caught:
                await client.access_token(done.handle)
            assert caught.value.error == "invalid_grant"

    run(scenario())


def test_without_a_refresh_token_the_launch_ends_with_its_access_token(ehr: FakeEhr) -> None:
    ehr.issue_refresh_tokens = False

    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            ehr.clock.advance(3590)
            assert await client.access_token(done.handle) == ehr.issued_access_tokens[-1]  # still valid: use it
            assert ehr.refresh_requests == []
            ehr.clock.advance(10)
            with pytest.raises(LaunchNotFoundError):
                await client.access_token(done.handle)

    run(scenario())


def test_very_short_tokens_are_not_refreshed_on_every_call(ehr: FakeEhr) -> None:
    ehr.expires_in = 40  # shorter than the leeway: refresh at half-life instead

    async def scenario() -> None:
        async with ehr.client() as http:
            client = make_client(ehr, http)
            done = await launched(client, ehr)
            await client.access_token(done.handle)
            await client.access_token(done.handle)
            assert ehr.refresh_requests == []
            ehr.clock.advance(21)
            await client.access_token(done.handle)
            assert len(ehr.refresh_requests) == 1

    run(scenario())
