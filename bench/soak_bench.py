"""The outbox soak: 10,000 queued writes across 3 sites with different throttles, drained by one worker.

The sandbox EHR runs as its own process (`python -m sandbox serve`), behind a fault proxy process
(`python -m sandbox faultproxy`) that enforces each site's published rate limit (429 with Retry-After beyond it).
Each site's capability matrix names the same limit, so the worker's token buckets should keep it under the limit
and the EHR should rarely have to refuse. The writes are real Observations (one request each, the form of the
site: Epic-like flowsheet rows with an encounter, Oracle-like laboratory results, CGM-receiver results), cloned
from one signed plan with distinct instants and identifiers.

Reported: drain time against the time the rates alone allow (the baseline: writes / rate per site, the slowest
site bounding), requests the EHR throttled, the busiest second per site against its limit, duplicates at the
EHR (a body committed twice), and the worker's own memory: the worker runs in a process of its own (as
`glucobridge outbox work` does), which reports its resident set before the drain and its peak (VmHWM).
"""

from __future__ import annotations

import asyncio
import copy
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from joserfc import jwk

from app.demo import free_port, wait_http
from bench.measure import status_mib, table
from bff.broker.broker import Broker, backend_token_source
from bff.broker.plan import PlannedWrite
from bff.capabilities import CapabilityService
from bff.clinical import PatientOutcomesView
from bff.ingest.registry import parser_for
from bff.outbox import queue
from bff.outbox.worker import OutboxWorker, WorkerConfig
from bff.settings import ROOT, Settings
from bff.smart.backend import BackendAuth
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.writeback import WritebackService
from sandbox import SandboxConfig
from sandbox.runtime import build_sandbox
from tests.sandbox.conftest import _JwksHandler as JwksHandler  # the same JWKS stand-in as the tests

NOW = "2026-11-26T15:00:00Z"
#: site -> (requests per second, burst): three different throttles.
RATES = {"epic-like": (50.0, 10), "oracle-like": (35.0, 5), "cgm-receiver": (80.0, 20)}
CLIENT = "glucobridge-backend"  # the sandbox's default Backend Services client (its JWKS from --backend-jwks-url)


@dataclass
class SoakResult:
    writes: int
    drain_s: float
    ideal_s: float
    per_site: dict[str, dict[str, Any]]
    duplicates: int
    peak_rss_mib: float  # the worker process's resident memory at its highest (its VmHWM, /proc/<pid>/status)
    rss_before_mib: float  # ... and just before the drain (imports, store, broker made)
    states: dict[str, dict[str, int]]


def _clone(template: PlannedWrite, k: int) -> PlannedWrite:
    """The k-th copy of a planned Observation: its own instant (and identifier), so the EHR must keep them all."""
    body = copy.deepcopy(template.body or {})
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=k)
    body["effectiveDateTime"] = at.isoformat().replace("+00:00", "Z")
    if "identifier" in body:
        body["identifier"] = [{"system": body["identifier"][0]["system"], "value": f"soak-{k}"}]
    return PlannedWrite(template.kind, template.channel, template.method, template.path, (f"soak{k}",),
                        f"soak write {k}", body=body, category=template.category)  # fmt: skip


def soak(total: int = 10_000, rates: dict[str, tuple[float, int]] | None = None, *, db_url: str | None = None,
         quiet: bool = False, days: int = 14) -> SoakResult:  # fmt: skip
    rates = rates or RATES
    sites = list(rates)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key = jwk.ECKey.generate_key("P-384", parameters={"kid": "soak-1"})
        handler = type("H", (JwksHandler,), {"body": json.dumps({"keys": [key.as_dict(private=False)]}).encode()})
        jwks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=jwks.serve_forever, daemon=True).start()
        ehr_port, proxy_port = free_port(), free_port()
        ehr_base, proxy_base = f"http://127.0.0.1:{ehr_port}", f"http://127.0.0.1:{proxy_port}"
        py = sys.executable
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        ehr = subprocess.Popen([py, "-m", "sandbox", "serve", "--port", str(ehr_port), "--now", NOW,
                                "--days", str(days), "--sites", ",".join(sites), "--backend-jwks-url",
                                f"http://127.0.0.1:{jwks.server_address[1]}/jwks.json"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        proxy = subprocess.Popen([py, "-m", "sandbox", "faultproxy", "--upstream", ehr_base, "--port", str(proxy_port)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            wait_http(f"{ehr_base}/ehr/", ehr, timeout_s=120)  # a busy machine: the sandbox takes a while
            wait_http(f"{proxy_base}/__faults__/journal", proxy, timeout_s=120)
            for site, (rps, burst) in rates.items():
                httpx.post(f"{proxy_base}/__faults__/rate", json={"path_prefix": f"/sites/{site}/fhir", "rps": rps,
                           "burst": burst, "retry_after_form": "seconds"}).raise_for_status()  # fmt: skip
            return _run(total, rates, tmp, key, ehr_base, proxy_base, db_url, quiet, days)
        finally:
            for process in (proxy, ehr):
                process.terminate()
                process.wait(10)
            jwks.shutdown()
            jwks.server_close()


def _run(total: int, rates: dict[str, tuple[float, int]], tmp: Path, key: jwk.ECKey, ehr_base: str,
         proxy_base: str, db_url: str | None, quiet: bool, days: int) -> SoakResult:  # fmt: skip
    sites = list(rates)
    sites_dir = tmp / "sites"
    sites_dir.mkdir()
    for site in sites:
        text = (ROOT / "sites" / f"{site}.toml").read_text().replace("http://localhost:8081", proxy_base)
        (sites_dir / f"{site}.toml").write_text(text)
    url = db_url or f"sqlite:///{tmp / 'soak.db'}"
    store = Store(Settings(database_url=url))
    capabilities = CapabilityService(store, sites_dir)
    for site, (rps, burst) in rates.items():
        capabilities.set(site, "rate_limit.rps", rps, who="soak", reason="the site's published limit")
        capabilities.set(site, "rate_limit.burst", burst, who="soak", reason="the site's published limit")
    # The same seed as the sandbox process (same --now): its patients, encounters and readings.
    mirror = build_sandbox(SandboxConfig.local(now=datetime.fromisoformat(NOW.replace("Z", "+00:00")),
                                               sites=tuple(sites), backend_jwks_url=None, days=days))  # fmt: skip
    writeback = WritebackService(store, capabilities)
    per_site = total // len(sites)
    counts = {site: per_site + (1 if i < total % len(sites) else 0) for i, site in enumerate(sites)}
    started = time.perf_counter()
    for site in sites:
        seeded = mirror.sites[site].seed.patients[0]
        lines = [orjson.dumps(o) for b in mirror.sites[site].seed.blocks if b.patient_id == seeded.patient_id
                 for o in b.observations()]  # fmt: skip
        Ingestor(store).ingest(parser_for("fhir"), _bytes(lines), site=site, source_name=f"{site}.ndjson")
        public = PatientOutcomesView(store).public_id(site, seeded.patient_id)
        assert public is not None
        encounter = f"Encounter/{seeded.open_encounter_id}" if seeded.open_encounter_id else None
        review = writeback.review(site, public, encounter=encounter)
        assert review.refusal is None, review.refusal
        template = next(w for w in review.writes if w.resource_type == "Observation" or w.kind == "bundle")
        if template.kind == "bundle":  # the receiver: one of the bundle's Observations, on its own
            entries = (template.body or {})["parameter"][0]["resource"]["entry"]
            body = next(
                e["resource"]
                for e in entries
                if e["resource"]["resourceType"] == "Observation" and "valueQuantity" in e["resource"]
            )
            body = {k: v for k, v in body.items() if k not in ("device", "derivedFrom", "meta", "effectivePeriod")}
            template = PlannedWrite("observations", "fhir", "POST", "Observation", ("tir",), "", body=body,
                                    category=template.category)  # fmt: skip
        now = datetime.now(UTC)
        for k in range(counts[site]):
            write = _clone(template, k)
            queue.enqueue(store, site=site, patient_public_id=public, outcome_window_id=review.outcome_window_id,
                          kind=write.kind, metrics=list(write.metrics), window="soak", version=1,
                          payload=write.as_json(), now=now)  # fmt: skip
    if not quiet:
        print(f"queued {total:,} writes in {time.perf_counter() - started:.1f} s", flush=True)
    # The worker is a process of its own (as `glucobridge outbox work` is): its memory is its own, not this one's
    # (the EHR seed mirror, the queued writes' plans, or whatever an earlier bench section left behind).
    key_file = tmp / "backend.pem"
    key_file.write_bytes(key.as_pem(private=True))
    done = subprocess.run([sys.executable, "-m", "bench.soak_bench", "drain", url, str(sites_dir), str(key_file),
                           ",".join(sites)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"the soak's worker process failed:\n{done.stderr[-3000:]}")
    drained = json.loads(done.stdout.strip().splitlines()[-1])
    journal = httpx.get(f"{proxy_base}/__faults__/journal", timeout=60).json()
    states = {site: queue.counts_by_state(store, site) for site in sites}
    per: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for site in sites:
        mine = [e for e in journal if e["path"].startswith(f"/sites/{site}/fhir") and e["method"] == "POST"]
        committed = [e for e in mine if e["upstream_status"] in (200, 201)]
        bodies = Counter(e["body_sha256"] for e in committed)
        duplicates += sum(n - 1 for n in bodies.values() if n > 1)
        times = sorted(e["wall"] for e in mine if e["forwarded"])
        busiest, lo = 0, 0
        for hi, t in enumerate(times):
            while t - times[lo] >= 1.0:
                lo += 1
            busiest = max(busiest, hi - lo + 1)
        rps, burst = rates[site]
        per[site] = {"writes": counts[site], "committed": len(committed), "throttled": sum(
            1 for e in mine if e["client_status"] == 429), "busiest_second": busiest, "limit": rps, "burst": burst,
            "confirmed": states[site]["confirmed"]}  # fmt: skip
    store.dispose()
    ideal = max(counts[s] / rates[s][0] for s in sites)
    return SoakResult(total, drained["drain_s"], ideal, per, duplicates, drained["peak_rss_mib"],
                      drained["rss_before_mib"], states)  # fmt: skip


def drain_in_this_process(db_url: str, sites_dir: str, key_file: str, sites: list[str]) -> dict[str, float]:
    """The soak's worker: drain every site's queue, then report the drain time and this process's memory (its
    resident set just before the drain, and its peak: the kernel's high-water mark, VmHWM)."""
    store = Store(Settings(database_url=db_url))
    capabilities = CapabilityService(store, sites_dir)
    writeback = WritebackService(store, capabilities)

    async def drain() -> tuple[float, float]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
            auth = BackendAuth(CLIENT, Path(key_file).read_bytes(), "soak-1", "ES384", http=client)
            broker = Broker(client, backend_token_source(auth), timeout_s=30)
            worker = OutboxWorker(store, capabilities, broker, writeback=writeback,
                                  config=WorkerConfig(batch=50, retry_min_s=0.05, backoff_base_s=0.2))  # fmt: skip
            before = status_mib("VmRSS")
            t0 = time.perf_counter()
            await worker.drain(sites, timeout_s=900, tick_s=0.02)
            return time.perf_counter() - t0, before

    drain_s, before = asyncio.run(drain())
    store.dispose()
    return {"drain_s": drain_s, "rss_before_mib": before, "peak_rss_mib": status_mib("VmHWM")}


def _bytes(lines: list[bytes]) -> Any:
    import io  # noqa: PLC0415

    return io.BytesIO(b"\n".join(lines))


def run(*, quick: bool = False, full: bool = False) -> None:
    total = 10_000 if full else (600 if quick else 3_000)
    print(f"\n## soak: {total:,} queued writes, 3 sites with different throttles, one worker process, SQLite\n")
    result = soak(total)
    rows = [
        (site, f"{p['writes']:,}", f"{p['confirmed']:,}", f"{p['committed']:,}", f"{p['limit']:g}/s +{p['burst']}",
         str(p["busiest_second"]), str(p["throttled"]))
        for site, p in result.per_site.items()
    ]  # fmt: skip
    print(table(rows, ("site", "writes", "confirmed", "at the EHR", "limit", "busiest second", "throttled (429)")))
    print(
        f"\ndrain {result.drain_s:.1f} s against {result.ideal_s:.1f} s that the rates allow "
        f"({result.ideal_s / result.drain_s:.2f} of the ideal); duplicates at the EHR: {result.duplicates}; "
        f"the worker process's own memory: peak {result.peak_rss_mib:.0f} MiB resident (VmHWM) "
        f"({result.rss_before_mib:.0f} MiB just before the drain)"
    )


__all__ = ["RATES", "SoakResult", "drain_in_this_process", "run", "soak"]

if __name__ == "__main__":  # the worker process: python -m bench.soak_bench drain DB_URL SITES_DIR KEY_FILE SITES
    assert sys.argv[1] == "drain", sys.argv
    print(json.dumps(drain_in_this_process(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split(","))))
