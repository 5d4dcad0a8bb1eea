"""Fixtures for contract tests against third-party servers: sekmet-fhir with three SMART Backend Services clients.

    sekmet_venv      the peer's virtual environment (installed once; skip, or fail under
                     GLUCOBRIDGE_REQUIRE_SERVICES=1, when it cannot be installed)
    sekmet_clients   {"rs384": ..., "es384": ..., "reader": ...}: a `BackendClient` each, keys made per session
    sekmet           the running server (`SekmetServer`: base_url, root, log()), one per session

`rs384` and `es384` may do everything (`system/*.cruds`); `reader` only reads (`system/*.read`). Each client has
one key type (sekmet answers 500 to an ES384 assertion when the client's JWKS also holds an RSA key).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from tests.conftest import unavailable
from tests.peers.sekmet import PeerUnavailable, SekmetServer, ensure_sekmet, running_sekmet


@dataclass(frozen=True)
class BackendClient:
    """A registered Backend Services client: what BackendAuth needs (`pem`, `kid`, `alg`) and what sekmet gets."""

    client_id: str
    alg: str
    kid: str
    pem: bytes
    scopes: str
    public_jwk: dict[str, Any]

    def registration(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "scopes": self.scopes, "jwks": {"keys": [self.public_jwk]}}


def _client(client_id: str, alg: str, scopes: str) -> BackendClient:
    kid = f"{client_id}-key"
    key: RSAKey | ECKey = (
        RSAKey.generate_key(2048, parameters={"kid": kid})
        if alg == "RS384"
        else ECKey.generate_key("P-384", parameters={"kid": kid})
    )
    public = {**key.as_dict(private=False), "kid": kid, "alg": alg, "use": "sig"}
    return BackendClient(client_id, alg, kid, key.as_pem(private=True), scopes, public)


@pytest.fixture(scope="session", name="sekmet_venv")
def fx_sekmet_venv() -> Path:
    try:
        return ensure_sekmet()
    except PeerUnavailable as exc:
        unavailable(f"sekmet-fhir is not available: {exc}")


@pytest.fixture(scope="session", name="sekmet_clients")
def fx_sekmet_clients() -> dict[str, BackendClient]:
    return {
        "rs384": _client("gb-rs384", "RS384", "system/*.cruds"),
        "es384": _client("gb-es384", "ES384", "system/*.cruds"),
        "reader": _client("gb-reader", "RS384", "system/*.read"),
    }


@pytest.fixture(scope="session", name="sekmet")
def fx_sekmet(
    sekmet_venv: Path, sekmet_clients: dict[str, BackendClient], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SekmetServer]:
    directory = tmp_path_factory.mktemp("sekmet")
    registrations = [c.registration() for c in sekmet_clients.values()]
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_sekmet(directory, registrations, venv=sekmet_venv))
        except PeerUnavailable as exc:
            unavailable(f"sekmet-fhir did not start: {exc}")
        yield server
