"""A fresh sandbox EHR per test (its writes are what the tests count), a store with its CGM data, the broker.

The sandbox runs in this process (uvicorn in a thread) so a test can change a site's personality mid-run;
everything else goes over real HTTP: SMART Backend Services tokens (ES384 client assertion), FHIR writes and
searches. The capability matrices are the repository's `sites/*.toml`, pointed at this sandbox.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from joserfc import jwk

from bff.broker.broker import Broker, backend_token_source
from bff.broker.plan import PlannedWrite
from bff.capabilities import CapabilityService, SiteCapabilities, load_file, parse_capabilities
from bff.ingest.registry import parser_for
from bff.outbox.worker import OutboxWorker, WorkerConfig
from bff.smart.backend import BackendAuth
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.writeback import WritebackService
from sandbox import ClientRegistration, SandboxConfig, create_app
from sandbox.faultproxy import FaultProxy
from sandbox.runtime import Sandbox
from tests.conftest import database_url
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, free_port, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
CLIENT = "outbox-test"


@dataclass
class Ehr:
    """The sandbox EHR running in this process: its base URL, its state, and what reached it past the guard."""

    base: str
    sandbox: Sandbox
    key: jwk.ECKey | None = None
    sent: list[tuple[str, str, str]] = field(default_factory=list)  # (site, kind, resourceType) past the guard

    def fhir(self, site: str) -> str:
        return f"{self.base}/sites/{site}/fhir"

    def patient(self, site: str, person: str) -> str:
        return next(p.patient_id for p in self.sandbox.sites[site].seed.patients if p.person.key == person)

    def encounter(self, site: str, person: str) -> str | None:
        found = next(p for p in self.sandbox.sites[site].seed.patients if p.person.key == person)
        return None if found.open_encounter_id is None else f"Encounter/{found.open_encounter_id}"

    def created(self, site: str, rtype: str) -> list[dict[str, Any]]:
        """Resources of a type that were written (not seeded) at a site."""
        store = self.sandbox.sites[site].store
        seeded = {r["id"] for r in self.sandbox.sites[site].seed.resources if r["resourceType"] == rtype}
        return [r for rid, r in store.current[rtype].items() if rid not in seeded]


@pytest.fixture(name="db_url")
def fx_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite unless a test asks for both (`@both_databases`): the write path's database work is the queue's
    (claims, leases, SKIP LOCKED), tested on both in tests/outbox; here the cases where it meets the EHR run on both."""
    url, schema = database_url(getattr(request, "param", "sqlite"), tmp_path)
    try:
        yield url
    finally:
        if schema:
            schema.close()


both_databases = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(name="ehr_key", scope="session")
def fx_ehr_key() -> jwk.ECKey:
    return jwk.ECKey.generate_key("P-384", parameters={"kid": "outbox-1"})


@pytest.fixture(name="ehr")
def fx_ehr(ehr_key: jwk.ECKey) -> Iterator[Ehr]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client = ClientRegistration(CLIENT, "outbox tests", jwks={"keys": [ehr_key.as_dict(private=False)]}, backend=True,
                                scopes="system/*.cruds")  # fmt: skip
    config = SandboxConfig.local(public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,),
                                 backend_jwks_url=None, extra_clients=(client,), now=NOW, days=14)  # fmt: skip
    app = create_app(config)
    with serve_in_thread(app, port):
        yield Ehr(base, app.state.sandbox, ehr_key)


@pytest.fixture(name="sites_dir")
def fx_sites_dir(ehr: Ehr, tmp_path: Path) -> Path:
    """The repository's site files, with the sandbox's address."""
    out = tmp_path / "sites"
    out.mkdir()
    for path in (ROOT / "sites").glob("*.toml"):
        (out / path.name).write_text(path.read_text().replace("http://localhost:8081", ehr.base))
    return out


def ingest_site(store: Store, ehr: Ehr, site: str, people: tuple[str, ...] = ("p1",)) -> dict[str, str]:
    """Ingest the site's seeded CGM Observations of `people`; returns person -> glucobridge public id."""
    wanted = {ehr.patient(site, p): p for p in people}
    lines = [
        orjson.dumps(o)
        for block in ehr.sandbox.sites[site].seed.blocks
        if block.patient_id in wanted
        for o in block.observations()
    ]
    zone = parse_capabilities(site, load_file(ROOT / "sites" / f"{site}.toml")).time_zone
    Ingestor(store).ingest(
        parser_for("fhir"), io.BytesIO(b"\n".join(lines)), site=site, source_name=f"{site}.ndjson", site_zone=zone
    )
    from bff.clinical import PatientOutcomesView  # noqa: PLC0415

    view = PatientOutcomesView(store)
    out = {}
    for fhir_id, person in wanted.items():
        public = view.public_id(site, fhir_id)
        assert public is not None, f"{person} at {site} was not ingested"
        out[person] = public
    return out


@dataclass
class Rig:
    """Everything a write-path test needs, wired as production wires it."""

    ehr: Ehr
    store: Store
    capabilities: CapabilityService
    writeback: WritebackService
    worker: OutboxWorker
    broker: Broker
    http: httpx.AsyncClient
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def caps(self, site: str) -> SiteCapabilities:
        return self.capabilities.get(site)

    def drain(self, *sites: str, timeout_s: float = 30.0) -> dict[str, Any]:
        return self.run(self.worker.drain(sites, timeout_s=timeout_s))  # type: ignore[no-any-return]


def make_rig(ehr: Ehr, store: Store, sites_dir: Path, *, config: WorkerConfig | None = None,
             redis_url: str | None = None, timeout_s: float = 10.0) -> Rig:  # fmt: skip
    loop = asyncio.new_event_loop()
    http = httpx.AsyncClient(timeout=timeout_s)
    assert ehr.key is not None
    auth = BackendAuth(CLIENT, ehr.key.as_pem(private=True), "outbox-1", "ES384", http=http)
    capabilities = CapabilityService(store, sites_dir)

    def seen(caps: SiteCapabilities, write: PlannedWrite) -> None:
        ehr.sent.append((caps.key, write.kind, write.resource_type))

    broker = Broker(http, backend_token_source(auth), timeout_s=timeout_s, on_request=seen)
    writeback = WritebackService(store, capabilities)
    worker = OutboxWorker(store, capabilities, broker, config=config or WorkerConfig(unknown_recheck_s=0.0),
                          redis_url=redis_url, writeback=writeback)  # fmt: skip
    return Rig(ehr, store, capabilities, writeback, worker, broker, http, loop)


@pytest.fixture(name="rig")
def fx_rig(ehr: Ehr, store: Store, sites_dir: Path) -> Iterator[Rig]:
    rig = make_rig(ehr, store, sites_dir)
    try:
        yield rig
    finally:
        rig.run(rig.http.aclose())
        rig.loop.close()


@pytest.fixture(name="proxy")
def fx_proxy(ehr: Ehr) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the sandbox EHR (its journal: what the EHR really received)."""
    with FaultProxy(ehr.base) as proxy:
        yield proxy


FAST = WorkerConfig(unknown_recheck_s=0.0, backoff_base_s=0.05, backoff_cap_s=0.5, retry_min_s=0.0, lease_s=60.0)


def proxied_sites(ehr: Ehr, proxy: FaultProxy, tmp_path: Path) -> Path:
    out = tmp_path / "proxied-sites"
    out.mkdir(exist_ok=True)
    for path in (ROOT / "sites").glob("*.toml"):
        (out / path.name).write_text(path.read_text().replace("http://localhost:8081", proxy.url))
    return out


@pytest.fixture(name="prig")
def fx_prig(ehr: Ehr, store: Store, proxy: FaultProxy, tmp_path: Path) -> Iterator[Rig]:
    """A rig whose FHIR writes go through the fault proxy; HTTP timeout 1.5 s (a hang becomes a timeout)."""
    rig = make_rig(ehr, store, proxied_sites(ehr, proxy, tmp_path), config=FAST, timeout_s=1.5)
    try:
        yield rig
    finally:
        rig.run(rig.http.aclose())
        rig.loop.close()


SIGNER = "Practitioner/dr-1"


def sign(rig: Rig, site: str, person: str = "p1") -> int:
    """Ingest a seeded person's readings, review the site's plan and sign it (as a clinician would); the sign-off id."""
    public = ingest_site(rig.store, rig.ehr, site, (person,))[person]
    encounter = rig.ehr.encounter(site, person)
    review = rig.writeback.review(site, public, encounter=encounter)
    assert review.refusal is None, review.refusal
    return rig.writeback.sign(site, public, digest=review.digest, signer=SIGNER, encounter=encounter).id
