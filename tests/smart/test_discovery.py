"""Discovery: validation of smart-configuration, caching with a TTL, one fetch for concurrent callers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from bff.smart import Discovery, DiscoveryError, SmartConfiguration
from tests.smart.fakes import ISS, TOKEN_URL, FakeClock, FakeEhr, run


def parse(document: Any, iss: str = ISS) -> SmartConfiguration:
    return SmartConfiguration.parse(iss, document, fetched_at=FakeClock()())


def test_a_complete_document_is_parsed(ehr: FakeEhr) -> None:
    config = parse(ehr.smart_configuration())
    assert config.token_endpoint == TOKEN_URL
    assert config.supports_grant("authorization_code")
    assert config.supports_grant("client_credentials")
    assert config.issuer == ISS
    assert "launch-ehr" in config.capabilities


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"code_challenge_methods_supported": ["plain"]}, "S256"),
        ({"code_challenge_methods_supported": None}, "S256"),
        ({"token_endpoint": None}, "token_endpoint"),
        ({"authorization_endpoint": "/relative/authorize"}, "absolute"),
        ({"token_endpoint": "http://auth.example.test/token"}, "https"),
        ({"grant_types_supported": "authorization_code"}, "list"),
    ],
)
def test_an_unacceptable_document_is_refused(ehr: FakeEhr, change: dict[str, Any], message: str) -> None:
    document = {k: v for k, v in {**ehr.smart_configuration(), **change}.items() if v is not None}
    with pytest.raises(DiscoveryError, match=message):
        parse(document)


def test_a_document_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(DiscoveryError):
        parse(["not", "an", "object"])


def test_absent_grant_types_refuse_no_grant(ehr: FakeEhr) -> None:
    """Issue 12 (this test used to assert RFC 8414's default, authorization_code only): a server that omits
    grant_types_supported, often one doing Backend Services only, is neither assumed to do user launches alone nor
    refused for PKCE; each flow is tried and the server answers. What was absent is recorded."""
    document = ehr.smart_configuration()
    del document["grant_types_supported"]
    del document["code_challenge_methods_supported"]
    config = parse(document)
    config.require_grant("authorization_code")
    config.require_grant("client_credentials")
    config.require_backend()
    config.require_user_launch()
    assert {"grant_types_supported", "code_challenge_methods_supported"} <= set(config.missing)


def test_what_a_user_launch_lacks_is_named_all_at_once(ehr: FakeEhr) -> None:
    document = {k: v for k, v in ehr.smart_configuration().items() if k != "authorization_endpoint"}
    document["grant_types_supported"] = ["client_credentials"]
    config = parse(document)
    config.require_backend()
    with pytest.raises(DiscoveryError) as info:
        config.require_user_launch()
    assert "no authorization_endpoint" in str(info.value)
    assert "has no authorization_code" in str(info.value)


def test_the_site_may_override_the_endpoints(ehr: FakeEhr) -> None:
    document = {k: v for k, v in ehr.smart_configuration().items() if k != "token_endpoint"}
    with pytest.raises(DiscoveryError, match="no token_endpoint"):
        parse(document)
    other = "https://other.example.test/oauth2/token"
    config = SmartConfiguration.parse(ISS, document, fetched_at=FakeClock()(), overrides={"token_endpoint": other})
    assert config.token_endpoint == other
    assert config.overridden == ("token_endpoint",)


def test_the_configuration_is_cached_for_the_ttl(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            discovery = Discovery(http, ttl_s=3600, clock=ehr.clock)
            await discovery.configuration(ISS)
            await discovery.configuration(ISS + "/")
            assert len(ehr.requests) == 1
            ehr.clock.advance(3601)
            await discovery.configuration(ISS)
            assert len(ehr.requests) == 2

    run(scenario())


def test_concurrent_first_calls_share_one_fetch(ehr: FakeEhr) -> None:
    async def scenario() -> None:
        async with ehr.client() as http:
            discovery = Discovery(http, clock=ehr.clock)
            configs = await asyncio.gather(*(discovery.configuration(ISS) for _ in range(10)))
            assert len(ehr.requests) == 1
            assert len({id(c) for c in configs}) == 1

    run(scenario())


@pytest.mark.parametrize(
    "response",
    [httpx.Response(503, text="down"), httpx.Response(200, text="<html/>"), httpx.Response(404, json={})],
)
def test_failures_are_discovery_errors_and_are_not_cached(response: httpx.Response) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            discovery = Discovery(http)
            for _ in range(2):
                with pytest.raises(DiscoveryError):
                    await discovery.configuration(ISS)
            assert len(calls) == 2
            assert calls[0].headers["accept"] == "application/json"

    run(scenario())


def test_an_unreachable_server_is_a_discovery_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            with pytest.raises(DiscoveryError, match="ConnectError"):
                await Discovery(http).configuration(ISS)

    run(scenario())


def test_a_backend_services_only_server_needs_no_pkce_nor_authorize_endpoint(ehr: FakeEhr) -> None:
    document = {k: v for k, v in ehr.smart_configuration().items()
                if k not in ("code_challenge_methods_supported", "authorization_endpoint")}  # fmt: skip
    document["grant_types_supported"] = ["client_credentials"]
    config = parse(document)
    assert config.supports_grant("client_credentials")
    with pytest.raises(DiscoveryError, match="authorization_code"):
        config.require_grant("authorization_code")  # a user launch there is still refused, with the reason


def test_overrides_apply_to_their_caller_only_and_the_document_is_fetched_once(ehr: FakeEhr) -> None:
    """A site's user launch and its Backend Services may name different token endpoints (one iss, one cache)."""
    backend_token = "https://auth.example.test/backend/token"

    async def scenario() -> tuple[str, str, str]:
        async with ehr.client() as http:
            discovery = Discovery(http, clock=ehr.clock)
            backend = await discovery.configuration(ISS, overrides={"token_endpoint": backend_token})
            launch = await discovery.configuration(ISS)
            again = await discovery.configuration(ISS, overrides={"token_endpoint": ""})
            return backend.token_endpoint, launch.token_endpoint, again.token_endpoint

    assert run(scenario()) == (backend_token, TOKEN_URL, TOKEN_URL)
    assert len([r for r in ehr.requests if r.url.path.endswith("/smart-configuration")]) == 1
