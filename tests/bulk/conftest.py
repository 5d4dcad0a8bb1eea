"""A sandbox EHR for Bulk Data tests (two sites, 14 days of readings) and a glucobridge wired to it.

    bulk_server      the sandbox over HTTP (uvicorn in a thread), with a Backend Services client `bulk-test` (RS384)
    sites_dir        sites/NAME.toml for `epic-like` (Group export of the sandbox's registry) and `oracle-like`
                     (Patient level), each `[bulk] available` with a polling floor of 1 s
    harness          `Harness`: a BulkRunner over a store, its recorded waits, and the sandbox's faults (reset)

The runner's `sleep` records each wait and returns at once: the tests prove what the client waits (Retry-After
forms, the floor) without waiting it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from joserfc.jwk import RSAKey
from sqlalchemy import func, select

from bff.broker.broker import backend_token_source
from bff.bulk import BulkClient, BulkRunner
from bff.capabilities import CapabilityService
from bff.smart.backend import BackendAuth
from bff.store.db import Store
from bff.store.models import QuarantineItem, Reading
from sandbox import ClientRegistration, SandboxConfig, create_app
from sandbox.bulk import BulkExports, BulkFaults, bulk_of_app
from sandbox.runtime import Sandbox
from tests.sandbox.support import NOW, Clock, free_port, serve_in_thread

T = TypeVar("T")
CLIENT_ID = "bulk-test"
KID = "bulk-rs-1"


@dataclass(frozen=True)
class BulkServer:
    base: str
    sandbox: Sandbox
    exports: BulkExports
    key_pem: bytes
    clock: Clock

    def fhir(self, site: str) -> str:
        return f"{self.base}/sites/{site}/fhir"

    def group_id(self, site: str) -> str:
        return next(iter(self.sandbox.sites[site].store.current["Group"]))

    def patient_ids(self, site: str) -> list[str]:
        return sorted(self.sandbox.sites[site].store.current["Patient"])

    def reading_count(self, site: str) -> int:
        """The Observations a full export of every patient holds (seeded readings and any created since)."""
        store = self.sandbox.sites[site].store
        return sum(len(b) for b in store.blocks) + len(store.current["Observation"])

    def faults(self, site: str) -> BulkFaults:
        return self.exports.of(site).faults


@pytest.fixture(scope="session", name="bulk_server")
def fx_bulk_server() -> Iterator[BulkServer]:
    key = RSAKey.generate_key(2048, parameters={"kid": KID})
    jwks = {"keys": [{**key.as_dict(private=False), "kid": KID, "alg": "RS384", "use": "sig"}]}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clock = Clock()
    config = SandboxConfig.local(
        public_base=base,
        extra_clients=(ClientRegistration(CLIENT_ID, "bulk tests", jwks=jwks, backend=True),),
        sites=("epic-like", "oracle-like"),
        now=NOW,
        days=14,
        clock=clock,
    )
    app = create_app(config)
    with serve_in_thread(app, port):
        yield BulkServer(base, app.state.sandbox, bulk_of_app(app), key.as_pem(private=True), clock)


def site_toml(server: BulkServer, site: str, vendor: str, bulk: str) -> str:
    return (
        f'version = 1\nvendor = "{vendor}"\ntime_zone = "America/Chicago"\n\n[smart]\niss = "{server.fhir(site)}"\n'
        f'client_id = "glucobridge"\nscopes = ["launch", "openid", "fhirUser", "patient/Observation.read"]\n\n'
        f"[bulk]\n{bulk}\n"
    )


@pytest.fixture(name="sites_dir")
def fx_sites_dir(tmp_path: Path, bulk_server: BulkServer) -> Path:
    directory = tmp_path / "sites"
    directory.mkdir()
    group = bulk_server.group_id("epic-like")
    (directory / "epic-like.toml").write_text(
        site_toml(bulk_server, "epic-like", "epic", f'available = true\ngroup_ids = ["{group}"]\npoll_floor_s = 1')
    )
    (directory / "oracle-like.toml").write_text(
        site_toml(bulk_server, "oracle-like", "oracle", "available = true\npoll_floor_s = 1")
    )
    return directory


@dataclass
class Harness:
    store: Store
    server: BulkServer
    capabilities: CapabilityService
    work_dir: Path
    waits: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    forgets: int = 0
    hook: Callable[[str], None] | None = None  # called with each event line (a test may raise from it)
    now: Callable[[], datetime] = lambda: datetime.now(UTC)

    def run(self, scenario: Callable[[BulkRunner], Awaitable[T]], **options: Any) -> T:
        async def main() -> T:
            async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
                auth = BackendAuth(CLIENT_ID, self.server.key_pem, KID, "RS384", http=http)

                def forget() -> None:
                    self.forgets += 1
                    auth.forget()

                client = BulkClient(http, backend_token_source(auth), forget_token=forget)
                runner = BulkRunner(self.store, self.capabilities, client, work_dir=self.work_dir, sleep=self.sleep,
                                    on_event=self.event, now=self.now, **options)  # fmt: skip
                return await scenario(runner)

        return asyncio.run(main())

    def event(self, line: str) -> None:
        self.events.append(line)
        if self.hook is not None:
            self.hook(line)

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)

    def readings(self) -> tuple[int, int]:
        """(readings in the store, distinct reading keys)."""
        with self.store.transaction() as session:
            total = session.scalar(select(func.count()).select_from(Reading)) or 0
            distinct = session.scalar(select(func.count(func.distinct(Reading.reading_key)))) or 0
        return int(total), int(distinct)

    def quarantined(self) -> list[QuarantineItem]:
        with self.store.transaction() as session:
            return list(session.scalars(select(QuarantineItem)))


def _harness(store: Store, server: BulkServer, sites_dir: Path, work_dir: Path) -> Iterator[Harness]:
    before = server.clock.offset
    for site in ("epic-like", "oracle-like"):
        server.exports.of(site).faults = BulkFaults()
    yield Harness(store, server, CapabilityService(store, sites_dir), work_dir)
    server.clock.offset = before
    for site in ("epic-like", "oracle-like"):
        server.exports.of(site).faults = BulkFaults()


@pytest.fixture(name="harness")
def fx_harness(sqlite_store: Store, bulk_server: BulkServer, sites_dir: Path, tmp_path: Path) -> Iterator[Harness]:
    """On SQLite: the logic does not depend on the database."""
    yield from _harness(sqlite_store, bulk_server, sites_dir, tmp_path / "bulk")


@pytest.fixture(name="harness_any")
def fx_harness_any(store: Store, bulk_server: BulkServer, sites_dir: Path, tmp_path: Path) -> Iterator[Harness]:
    """On SQLite and on PostgreSQL (the store's COPY path), for the acceptance runs."""
    yield from _harness(store, bulk_server, sites_dir, tmp_path / "bulk")
