"""Bulk Data ingest: patients × 14 days of 5-minute CGM readings as NDJSON, exported by a small local Bulk server and
fetched, ingested and counted by `bff.bulk.BulkRunner` (SQLite store), in a child process whose peak RSS is the
figure reported.

    python -m bench bulk            # 100 patients (403,200 readings)
    python -m bench bulk --full     # 1,000 patients (4,032,000 readings, about 1.5 GB of NDJSON in a temp dir)
    python -m bench bulk --quick    # 20 patients

The server (a thread of the parent) answers the kick-off with 202, the first status poll with the manifest
(one Observation file per 50 patients, then the Patient file) and streams each file from disk with its length.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.measure import max_rss_mb, table
from bff.broker.broker import static_token_source
from bff.bulk import BulkClient, BulkRunner
from bff.capabilities import CapabilityService
from bff.settings import Settings
from bff.store.db import Store

DAYS = 14
PER_DAY = 288
PATIENTS_PER_FILE = 50
START = datetime(2026, 11, 1, tzinfo=UTC)


def write_files(folder: Path, patients: int) -> tuple[list[tuple[str, Path, int]], int]:
    """(type, path, count) of each file, and the number of readings."""
    files: list[tuple[str, Path, int]] = []
    readings = 0
    for first in range(0, patients, PATIENTS_PER_FILE):
        path = folder / f"Observation.{first // PATIENTS_PER_FILE + 1}.ndjson"
        count = 0
        with path.open("wb") as out:
            for p in range(first, min(patients, first + PATIENTS_PER_FILE)):
                subject = {"reference": f"Patient/p{p}"}
                device = {"reference": f"Device/d{p}", "display": "Dexcom G6"}
                lines = []
                for i in range(DAYS * PER_DAY):
                    moment = START + timedelta(minutes=5 * i)
                    lines.append(orjson.dumps({
                        "resourceType": "Observation", "id": f"o{p}-{i}", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
                        "subject": subject, "effectiveDateTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "valueQuantity": {"value": 70 + (i * 7 + p * 13) % 150, "unit": "mg/dL",
                                          "system": "http://unitsofmeasure.org", "code": "mg/dL"},
                        "device": device,
                    }))  # fmt: skip
                out.write(b"\n".join(lines) + b"\n")
                count += len(lines)
        files.append(("Observation", path, count))
        readings += count
    path = folder / "Patient.1.ndjson"
    with path.open("wb") as out:
        for p in range(patients):
            out.write(orjson.dumps({"resourceType": "Patient", "id": f"p{p}", "name": [{"family": f"Bench{p}"}],
                                    "birthDate": "1970-01-01"}) + b"\n")  # fmt: skip
    files.append(("Patient", path, patients))
    return files, readings


def serve(files: list[tuple[str, Path, int]]) -> ThreadingHTTPServer:
    by_name = {path.name: path for _, path, _ in files}
    state: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if "/$export" in self.path:
                state["request"] = base + self.path
                self._json(202, {}, {"Content-Location": f"{base}/status/1"})
            elif self.path == "/status/1":
                self._json(200, {
                    "transactionTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "request": state["request"], "requiresAccessToken": True,
                    "output": [{"type": t, "url": f"{base}/files/{p.name}", "count": n} for t, p, n in files],
                    "error": [],
                })  # fmt: skip
            elif self.path.startswith("/files/") and self.path[7:] in by_name:
                path = by_name[self.path[7:]]
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+ndjson")
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()
                with path.open("rb") as stream:
                    while chunk := stream.read(1 << 20):
                        self.wfile.write(chunk)
            else:
                self._json(404, {})

        def do_DELETE(self) -> None:
            self._json(202, {})

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def client(base: str, folder: Path) -> dict[str, Any]:
    """In the child: export, fetch and ingest everything; the time it took and this process's peak RSS."""
    sites = folder / "sites"
    sites.mkdir()
    (sites / "bench.toml").write_text(f'version = 1\ntime_zone = "America/Chicago"\n[smart]\niss = "{base}/fhir"\n'
                                      f'client_id = "bench"\nscopes = ["launch", "patient/Observation.read"]\n'
                                      f'[bulk]\navailable = true\npoll_floor_s = 1\n')  # fmt: skip
    store = Store(Settings(database_url=f"sqlite:///{folder / 'bench.db'}"))

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=120.0) as http:
            bulk = BulkClient(http, static_token_source({"bench": "bench-token"}))
            runner = BulkRunner(store, CapabilityService(store, sites), bulk, work_dir=folder / "work")
            return await runner.start("bench")

    start = time.perf_counter()
    [report] = asyncio.run(main())
    seconds = time.perf_counter() - start
    store.dispose()
    return {"state": report.state, "added": report.added, "seconds": seconds, "peak_rss_mb": max_rss_mb()}


def run(*, quick: bool = False, full: bool = False) -> None:
    patients = 1000 if full else (20 if quick else 100)
    print(f"\n## bulk: {patients:,} patients × {DAYS} days of NDJSON through $export into SQLite\n")
    with tempfile.TemporaryDirectory(prefix="gb-bench-bulk-") as tmp:
        folder = Path(tmp)
        (folder / "files").mkdir()
        began = time.perf_counter()
        files, readings = write_files(folder / "files", patients)
        size = sum(p.stat().st_size for _, p, _ in files)
        print(f"generated {readings:,} readings in {len(files)} files ({size / 1e6:,.0f} MB) "
              f"in {time.perf_counter() - began:.1f} s", flush=True)  # fmt: skip
        server = serve(files)
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            (folder / "child").mkdir()
            done = subprocess.run([sys.executable, "-m", "bench.bulk_bench", base, str(folder / "child")],
                                  capture_output=True, text=True, check=False)  # fmt: skip
        finally:
            server.shutdown()
            server.server_close()
    if done.returncode:
        print(f"bulk: failed\n{done.stderr[-3000:]}")
        raise SystemExit(1)  # a bench section that failed is never a figure
    m = json.loads(done.stdout.strip().splitlines()[-1])
    rows = [(f"{patients:,}", f"{readings:,}", m["state"], f"{m['added']:,}", f"{m['seconds']:.1f} s",
             f"{m['added'] / m['seconds']:,.0f}/s", f"{m['peak_rss_mb']:,.0f} MB")]  # fmt: skip
    print(table(rows, ("patients", "readings", "job", "added", "time", "readings/s", "peak RSS (client)")))


if __name__ == "__main__":
    print(json.dumps(client(sys.argv[1], Path(sys.argv[2]))))
