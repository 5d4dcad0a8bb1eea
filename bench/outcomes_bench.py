"""Materialized standard outcomes on PostgreSQL: the recompute after a backfill, the view's read path per view, and
FHIR export from the stored rows.

A synthetic cohort (bench.synth) is written straight into a fresh PostgreSQL schema's `patients`,
`device_streams` and `readings` with COPY (a bench fixture, not the ingestion path: `bench ingest` measures that),
as a backfill that no ingestion hook reported. Then:

- **recompute after the backfill**: from the last reading stored to every patient's 14/30/90-day outcome fresh
  (`bff.store.windows.sweep_and_refresh`: the watermark sweep, claims, one `compute_cohort` per chunk and period);
- **the view's read path**, per view, over distinct patients (CPU time of this process, which is what an app
  worker spends: the stored row read, the charts built (cold: cache miss) or taken from the cache (warm), the
  summary presented and the `_summary.html` fragment rendered by Jinja);
- **export from materialized outcomes**: FHIR outcome Bundles (raw data referenced by its stored digest, as a
  nightly cohort sends: `bff.resources.load.standard_record`) built from the stored rows' metrics, read in pages of
  500 rows, per CPU second.

The baseline in the same run is the view's on-request path before materialization (`PatientOutcomesView.document`:
readings loaded and computed per request) on the same patients.

    python -m bench.outcomes_bench [--patients N] [--backfill]   # --backfill: 10,000 patients (minutes)
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select, text

from app.web.charts import MemoryCache, charts_key
from app.web.presenters import ZoneView, charts_of, display_unit, summary_view
from bench.measure import table
from bench.synth import synth_cohort
from bff.clinical import PatientOutcomesView
from bff.resources.fhir import outcome_bundle
from bff.resources.load import standard_record
from bff.settings import ROOT, Settings
from bff.store import windows
from bff.store.db import Store, make_engine, upgrade
from bff.store.models import Patient
from engine import ReadingTable
from tests.conftest import PgSchema, postgres_available


def _load(store: Store, n: int, days: int) -> int:
    """COPY a synthetic cohort into the store; returns the readings written."""
    cohort = synth_cohort(n, days, seed=5)
    now = datetime.now(UTC)
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy("COPY patients (id, public_id, tz, tz_source, created_at) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for i, (pid, zone) in enumerate(zip(cohort.patient_ids, cohort.zones, strict=True)):
                copy.write_row((i + 1, f"bench|{pid}", zone, "feed", now))
        with cursor.copy("COPY device_streams (id, patient_id, device_key, created_at) FROM STDIN") as copy:  # type: ignore[attr-defined]
            for s, (p, device) in enumerate(zip(cohort.stream_patient, cohort.stream_device, strict=True)):
                copy.write_row((s + 1, int(p) + 1, device, now))
        _copy_readings(cursor, cohort, now)
        for table_name in ("patients", "device_streams", "readings"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table_name}', 'id'), (SELECT max(id) FROM {table_name}))"
            )
        cursor.execute("ANALYZE patients, device_streams, readings")
        raw.commit()
    finally:
        raw.close()
    return len(cohort.time_ms)


#: The staging table's columns, as COPY BINARY writes them: (name, SQL type, numpy big-endian type).
_STAGING = (("i", "bigint", ">i8"), ("patient", "bigint", ">i8"), ("stream", "bigint", ">i8"), ("t", "bigint", ">i8"),
            ("value", "float8", ">f8"), ("unit", "smallint", ">i2"), ("flag", "smallint", ">i2"),
            ("source", "smallint", ">i2"))  # fmt: skip


def _copy_readings(cursor: Any, cohort: ReadingTable, now: datetime, chunk: int = 1_000_000) -> None:
    """The cohort's readings into `readings`: numpy columns as COPY BINARY tuples into an unlogged staging table (no
    Python per reading), then one INSERT … SELECT that fills in the constant columns."""
    cursor.execute("CREATE UNLOGGED TABLE bench_staging (" + ", ".join(f"{n} {t}" for n, t, _ in _STAGING) + ")")
    tuple_type = np.dtype([("fields", ">i2")] + [(f, x) for n, _, t in _STAGING for f, x in ((f"{n}_len", ">i4"),
                                                                                             (n, t))])  # fmt: skip
    columns = {"patient": cohort.patient.astype(np.int64) + 1, "stream": cohort.stream.astype(np.int64) + 1,
               "t": cohort.time_ms, "value": cohort.value, "unit": cohort.unit, "flag": cohort.flag,
               "source": cohort.source}  # fmt: skip
    with cursor.copy("COPY bench_staging FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + bytes(8))  # signature, flags, header extension length
        for lo in range(0, len(cohort.time_ms), chunk):
            hi = min(lo + chunk, len(cohort.time_ms))
            rows = np.empty(hi - lo, dtype=tuple_type)
            rows["fields"] = len(_STAGING)
            for name, _sql, numpy_type in _STAGING:
                rows[f"{name}_len"] = np.dtype(numpy_type).itemsize
                rows[name] = np.arange(lo, hi) + 1 if name == "i" else columns[name][lo:hi]
            copy.write(rows.tobytes())
        copy.write(b"\xff\xff")  # the trailer: a field count of -1
    # A fixture, not ingestion: the foreign keys hold by construction, so their per-row triggers are skipped.
    cursor.execute("SET LOCAL session_replication_role = replica")
    cursor.execute(
        "INSERT INTO readings (reading_key, patient_id, stream_id, observed_ms, value_mg_dl, value_original, "
        "unit_original, factor, flag, kind, ambiguous_time, source_feed, source_rank, source_record_key, stream_label, "
        "batch_id, received_at) SELECT lpad(to_hex(i), 32, '0')::uuid, patient, stream, t, "
        "CASE WHEN unit = 0 THEN value ELSE value * 18.0 END, value, "
        "CASE WHEN unit = 0 THEN 'mg/dL' ELSE 'mmol/L' END, "
        "CASE WHEN unit = 0 THEN 1.0 ELSE 18.0 END, flag, 'cgm', false, 'fhir', source, '', '', 1, %s "
        "FROM bench_staging ORDER BY i",
        (now,),
    )
    cursor.execute("SET LOCAL session_replication_role = origin")
    cursor.execute("DROP TABLE bench_staging")


def _renderer() -> Environment:
    env = Environment(loader=FileSystemLoader(ROOT / "templates"), autoescape=select_autoescape())
    env.globals["static"] = lambda path: f"/static/{path}"
    return env


def run(*, quick: bool = False, patients: int | None = None, backfill: bool = False) -> None:
    reason = postgres_available()
    if reason:
        print(f"\n## outcomes: skipped ({reason})\n")
        return
    n = patients or (10_000 if backfill else 200 if quick else 1_000)
    days = 14
    print(f"\n## outcomes: materialized standard outcomes, {n:,} patients × {days} days, PostgreSQL, one core\n")
    schema = PgSchema()
    engine = make_engine(schema.url)
    upgrade(engine)
    store = Store(Settings(database_url=schema.url), engine=engine)
    try:
        start = time.perf_counter()
        readings = _load(store, n, days)
        print(f"{readings:,} readings written by COPY in {time.perf_counter() - start:.1f} s (the backfill)")

        wall, cpu = time.perf_counter(), time.process_time()
        found, report = windows.sweep_and_refresh(store)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows = [("recompute after the backfill", f"{found:,} patients", f"{report.computed:,} windows",
                 f"{wall:.1f} s", f"{report.computed / wall:,.0f} windows/s", f"{cpu:.1f} s CPU here")]  # fmt: skip

        view = PatientOutcomesView(store)
        with store.transaction() as session:
            ids = list(session.scalars(select(Patient.public_id).order_by(Patient.id)))
        env = _renderer()
        fragment = env.get_template("patient/_summary.html")
        cache = MemoryCache(max_entries=4 * n)

        def one_view(public_id: str) -> int:
            shown = view.outcome(public_id, 14)
            assert shown is not None
            unit = display_unit(shown.document, None)
            key = charts_key(shown.digest, 14, unit, 1)
            charts = cache.get(key)
            if charts is None:
                charts = charts_of(shown.document, 14, unit, 1)
                cache.put(key, charts)
            summary = summary_view(shown.document, 14, unit, ZoneView(str(shown.document.get("tz"))), charts=charts)
            html = fragment.render(summary=summary, base="/v/h/patients/p/", unit_query="", csrf_token="t",
                                   outcome_freshness="", ehr_read={}, ehr_read_status=None, engine_version="",
                                   method="time", poll=False)  # fmt: skip
            return len(html)

        measured = []
        viewed = ids[:1000]  # the view's CPU per view does not depend on how many rows the table holds
        for label in ("view, cold (charts built)", "view, warm (charts cached)"):
            per_view = []
            for public_id in viewed:
                t = time.process_time()
                one_view(public_id)
                per_view.append(time.process_time() - t)
            measured.append((label, per_view))
        sample = ids[: min(len(ids), 100)]
        baseline = []
        for public_id in sample:
            t = time.process_time()
            document = view.document(public_id, 14)
            assert document is not None
            unit = display_unit(document, None)
            summary = summary_view(document, 14, unit, ZoneView(str(document.get("tz"))))
            fragment.render(summary=summary, base="/v/h/patients/p/", unit_query="", csrf_token="t",
                            outcome_freshness="", ehr_read={}, ehr_read_status=None, engine_version="",
                            method="time", poll=False)  # fmt: skip
            baseline.append(time.process_time() - t)
        for label, per_view in [*measured, ("baseline: on request (before)", baseline)]:
            p = np.percentile(np.array(per_view) * 1e3, [50, 95, 99])
            rows.append((label, f"{len(per_view):,} patients", f"p50 {p[0]:.2f} ms", f"p95 {p[1]:.2f} ms",
                         f"p99 {p[2]:.2f} ms", "CPU per view"))  # fmt: skip

        def export() -> tuple[int, int]:
            exported = size = 0
            with store.transaction() as session:
                for days in windows.STANDARD_DAYS:
                    last = 0
                    while page := windows.summaries(session, days, after=last, limit=500):
                        for stored in page:
                            last = stored.row_id
                            size += len(orjson.dumps(outcome_bundle(standard_record(stored), include_raw=False)))
                            exported += 1
            return exported, size

        runs = []
        for _ in range(3):  # the best of three passes over every period's rows
            cpu = time.process_time()
            exported, size = export()
            runs.append(time.process_time() - cpu)
        cpu = min(runs)
        each = f"{size / max(exported, 1) / 1024:,.0f} KiB each"
        rows.append(("export: FHIR Bundles from stored rows", f"{exported:,} windows", f"{cpu:.2f} s CPU",
                     f"{exported / cpu:,.0f} windows/s/core", each, ""))  # fmt: skip
        print(table(rows, ("measure", "n", "", "", "", "")))
        with store.transaction() as session:
            sizes = dict(session.execute(text(
                "SELECT days, avg(pg_column_size(document)) FROM standard_outcomes GROUP BY days")).all())  # fmt: skip
        print("stored document size (PostgreSQL, json): " + ", ".join(
            f"{d} days {float(v) / 1024:,.0f} KiB" for d, v in sorted(sizes.items())))  # fmt: skip
        print("goals: worker CPU per view <= 5 ms; export >= 2,000 windows/s/core")
        print(f"median view CPU warm / baseline: {statistics.median(measured[1][1]) / statistics.median(baseline):.3f}")
    finally:
        store.dispose()
        schema.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outcomes_bench", description=__doc__)
    parser.add_argument("--patients", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backfill", action="store_true", help="10,000 patients: the recompute after a backfill")
    args = parser.parse_args(argv)
    run(quick=args.quick, patients=args.patients, backfill=args.backfill)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
