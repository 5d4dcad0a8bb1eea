"""Ingestion: 1 million readings from Dexcom JSON and from FHIR NDJSON into SQLite and PostgreSQL.

Reports readings/s and peak memory (tracemalloc, so Python and numpy allocations) for the first ingest and for
the re-ingest of the same file (which must add nothing). The files are generated into a temporary folder
(about 300 MB for both), never committed. PostgreSQL uses a fresh schema in the `test` database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.measure import max_rss_mb, table
from bff.ingest.registry import parser_for
from bff.settings import Settings
from bff.store.db import Store, make_engine, upgrade
from bff.store.ingest import Ingestor

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _values(n: int) -> Iterator[tuple[int, datetime, int]]:
    """n readings 5 minutes apart ending a day ago (1 million readings span about 9.5 years)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1, minutes=5 * n)
    for i in range(n):
        yield i, start + timedelta(minutes=5 * i, seconds=i % 7), 70 + (i * 37) % 200


def write_dexcom(path: Path, n: int) -> None:
    """One Dexcom v3 /egvs response with n records (one patient; about 3.5 years of 5-minute readings)."""
    with path.open("w", encoding="utf-8") as out:
        out.write('{"recordType":"egv","recordVersion":"3.0","userId":"bench-user","records":[')
        for i, moment, value in _values(n):
            record = {
                "recordId": f"bench-{i:08d}", "systemTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "displayTime": moment.strftime("%Y-%m-%dT%H:%M:%S-05:00"), "transmitterId": "8XBENCH",
                "transmitterTicks": i * 300, "value": value, "status": "ok", "trend": "flat", "trendRate": 0.1,
                "unit": "mg/dL", "rateUnit": "mg/dL/min", "displayDevice": "iOS", "transmitterGeneration": "g6",
            }  # fmt: skip
            out.write(("," if i else "") + json.dumps(record, separators=(",", ":")))
        out.write("]}")


def write_fhir_ndjson(path: Path, n: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i, moment, value in _values(n):
            resource = {
                "resourceType": "Observation", "id": f"cgm-{i}", "status": "final",
                "identifier": [{"system": "urn:bench:cgm", "value": f"cgm-{i}"}],
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                          "code": "laboratory"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
                "subject": {"reference": "Patient/bench-1"},
                "effectiveDateTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "valueQuantity": {"value": value, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                                  "code": "mg/dL"},
                "device": {"reference": "Device/bench-g6", "display": "Dexcom G6"},
            }  # fmt: skip
            out.write(json.dumps(resource, separators=(",", ":")) + "\n")


def write_bad_csv(path: Path, n: int) -> None:
    """n engine-CSV rows that all go to quarantine (a value that is not a number), each a different record."""
    with path.open("w", encoding="utf-8") as out:
        out.write("patient_id,time,value,unit,device,record_id\n")
        for i, moment, _value in _values(n):
            out.write(f"bench-patient,{moment.strftime('%Y-%m-%dT%H:%M:%SZ')},n/a-{i},mg/dL,dexcom-g6,bad-{i}\n")


class _Database:
    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.schema: str | None = None
        if kind == "sqlite":
            self.url = f"sqlite:///{folder / ('bench-' + uuid.uuid4().hex[:6] + '.db')}"
        else:
            self.schema = "bench_" + uuid.uuid4().hex[:10]
            self.admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as c:
                c.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            self.url = PG_URL + f"?options=-csearch_path%3D{self.schema}"
        engine = make_engine(self.url)
        upgrade(engine)
        self.store = Store(Settings(database_url=self.url, future_tolerance_min=10), engine=engine)

    def close(self) -> None:
        self.store.dispose()
        if self.schema:
            with self.admin.connect() as c:
                c.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            self.admin.dispose()


def _ingest(store: Store, feed: str, path: Path) -> tuple[dict[str, object], float]:
    start = time.perf_counter()
    with path.open("rb") as handle:
        report = Ingestor(store).ingest(
            parser_for(feed.removesuffix("-bad")), handle, site="bench", source_name=path.name, patient="bench-patient"
        )
    return report.as_dict(), time.perf_counter() - start


def one(kind: str, feed: str, path: str) -> None:
    """In a fresh process: ingest, then re-ingest, into a fresh database; print the figures as JSON."""
    db = _Database(kind, Path(path).parent)
    try:
        before = max_rss_mb()
        first, first_s = _ingest(db.store, feed, Path(path))
        peak = max_rss_mb()
        again, again_s = _ingest(db.store, feed, Path(path))
    finally:
        db.close()
    print(
        json.dumps(
            {
                "first": first,
                "first_s": first_s,
                "again": again,
                "again_s": again_s,
                "rss_before_mb": before,
                "rss_peak_mb": peak,
            }
        )
    )


def run(*, quick: bool = False) -> None:
    n = 100_000 if quick else 1_000_000
    print(f"\n## ingest: {n:,} readings per file, one transaction per file\n")
    rows: list[tuple[str, ...]] = []
    quarantine: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="gb-bench-") as tmp:
        folder = Path(tmp)
        files = {"dexcom": folder / "egvs.json", "fhir": folder / "observations.ndjson", "csv-bad": folder / "bad.csv"}
        write_dexcom(files["dexcom"], n)
        write_fhir_ndjson(files["fhir"], n)
        bad = n // 5
        write_bad_csv(files["csv-bad"], bad)
        for kind in ("sqlite", "postgresql"):
            for feed, path in files.items():
                done = subprocess.run(
                    [sys.executable, "-m", "bench.ingest_bench", kind, feed, str(path)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if done.returncode:
                    print(f"{kind} {feed}: failed\n{done.stderr[-2000:]}")
                    continue
                m = json.loads(done.stdout.strip().splitlines()[-1])
                if feed == "csv-bad":
                    quarantine.append((
                        kind, f"{bad:,}", f"{m['first']['quarantined']:,}", f"{m['first_s']:.1f} s",
                        f"{bad / m['first_s']:,.0f}/s", f"{m['again']['quarantined']:,}",
                        f"{bad / m['again_s']:,.0f}/s",
                    ))  # fmt: skip
                    print("  ".join(quarantine[-1]), flush=True)
                    continue
                rows.append((
                    kind, feed, f"{path.stat().st_size / 2**20:,.0f} MB", f"{m['first']['added']:,}",
                    f"{m['first_s']:.1f} s", f"{n / m['first_s']:,.0f}/s",
                    f"{m['rss_peak_mb'] - m['rss_before_mb']:,.0f} MiB", f"{m['again']['added']:,} added",
                    f"{n / m['again_s']:,.0f}/s",
                ))  # fmt: skip
                print("  ".join(rows[-1]), flush=True)
    print()
    print(table(rows, ("database", "feed", "file", "added", "ingest", "rate", "peak RSS growth", "re-ingest", "rate")))
    print(
        "goal: >= 50,000 readings/s into PostgreSQL; re-ingest adds nothing. Each run is its own process, so the "
        "RSS growth is the ingest's own peak memory."
    )
    print("\nquarantine: a file whose every record is bad (each kept with its reason; a re-run counts them again)\n")
    print(table(quarantine, ("database", "records", "quarantined", "time", "rate", "again: seen", "rate")))
    print("goal: >= 20,000 bad records/s")


if __name__ == "__main__":
    one(*sys.argv[1:4])
