"""What the sandbox tests share besides fixtures: the suite's constants and the running server's handle."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from joserfc import jwk

from sandbox.runtime import Sandbox

#: The seed's "now" for the suite: the 90 days end 2026-11-25 (local) and span the 1 Nov 2026 DST change.
NOW = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
REDIRECT = "http://127.0.0.1:8000/callback"
APP_LAUNCH = "http://127.0.0.1:8000/launch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Clock:
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Keys:
    rsa: jwk.RSAKey
    ec: jwk.ECKey
    jku_ec: jwk.ECKey
    other_rsa: jwk.RSAKey


@dataclass
class Server:
    base: str
    sandbox: Sandbox
    clock: Clock
    keys: Keys
    jwks_url: str
    extra: dict[str, Any] = field(default_factory=dict)

    def fhir(self, site: str) -> str:
        return f"{self.base}/sites/{site}/fhir"

    def token_url(self, site: str) -> str:
        return f"{self.base}/sites/{site}/auth/token"

    def patient(self, site: str, key: str) -> str:
        """The Patient id of seeded person `key` (p1..p6) at `site`."""
        return next(p.patient_id for p in self.sandbox.sites[site].seed.patients if p.person.key == key)

    def open_encounter(self, site: str, patient_id: str) -> str | None:
        seeded = self.sandbox.sites[site].patient(patient_id)
        assert seeded is not None
        return seeded.open_encounter_id


@contextmanager
def serve_in_thread(app: Any, port: int, *, timeout_s: float = 15.0) -> Iterator[None]:
    """Serve an ASGI app with uvicorn in a daemon thread on 127.0.0.1:`port` until the block ends."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)
