"""A real sandbox server for the suite: uvicorn in a thread on a free port, a movable clock, test clients.

One server serves the whole session (the seed is generated once). Tests talk to it over HTTP with httpx. The
clock is real time plus an offset a test may move forward (token expiry, refresh throttling); tests that move
it put it back. Backend clients with inline JWKS (RS384, ES384) and one with a JWKS URL (served by a small
http.server thread) are registered besides the default `glucobridge` and `glucobridge-backend`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from joserfc import jwk

from sandbox import ClientRegistration, SandboxConfig, create_app
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, Clock, Keys, Server, free_port, serve_in_thread


class _JwksHandler(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture(scope="session", name="keys")
def fx_keys() -> Keys:
    return Keys(
        rsa=jwk.RSAKey.generate_key(2048, parameters={"kid": "rs-1"}),
        ec=jwk.ECKey.generate_key("P-384", parameters={"kid": "es-1"}),
        jku_ec=jwk.ECKey.generate_key("P-384", parameters={"kid": "jku-1"}),
        other_rsa=jwk.RSAKey.generate_key(2048, parameters={"kid": "rs-1"}),
    )


@pytest.fixture(scope="session", name="jwks_url")
def fx_jwks_url(keys: Keys) -> Iterator[str]:
    handler = type(
        "Handler", (_JwksHandler,), {"body": json.dumps({"keys": [keys.jku_ec.as_dict(private=False)]}).encode()}
    )
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session", name="server")
def fx_server(keys: Keys, jwks_url: str) -> Iterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clock = Clock()
    inline = {"keys": [keys.rsa.as_dict(private=False), keys.ec.as_dict(private=False)]}
    config = SandboxConfig.local(
        public_base=base,
        app_launch_url=APP_LAUNCH,
        redirect_uris=(REDIRECT,),
        backend_jwks_url=jwks_url,
        extra_clients=(ClientRegistration("test-backend", "inline JWKS backend", jwks=inline, backend=True),),
        now=NOW,
        clock=clock,
    )
    app = create_app(config)
    with serve_in_thread(app, port):
        yield Server(base, app.state.sandbox, clock, keys, jwks_url)


@pytest.fixture(name="http")
def fx_http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, timeout=10.0) as client:
        yield client


@pytest.fixture(name="clock")
def fx_clock(server: Server) -> Iterator[Clock]:
    """The server's clock, put back after the test."""
    before = server.clock.offset
    yield server.clock
    server.clock.offset = before
