"""Export: FHIR outcome Bundles for patient windows (build + serialise), one core: 2,000 windows by default, 10k
with --full (the acceptance size of issue 13), 500 with --quick.

The documents are the engine's, for a synthetic cohort of that many patients × 14 days; every window carries the
demo patient's readings NDJSON (4,000 readings, about 0.5 MB) as its raw data, so the sizes are realistic
without generating 40 million NDJSON lines for the benchmark. Two variants: the Bundle with the raw-data Binary
inline (what `glucobridge export` writes and `verify` reads), and the Bundle that names the Binary stored once
(what a nightly cohort sends). The baseline in the same run is the standard library's json serialisation.
"""

from __future__ import annotations

import dataclasses
import json
import time

import orjson

from bench.measure import table
from bench.synth import synth_cohort
from bff.resources.fhir import outcome_bundle
from engine import OutcomePolicy, compute_cohort
from engine.report import build_report
from tests.resources.samples import sample_record


def run(*, quick: bool = False, full: bool = False) -> None:
    n = 10_000 if full else (500 if quick else 2_000)
    print(f"\n## export: FHIR outcome Bundles for {n:,} patient windows, one core\n")
    cohort = synth_cohort(n, 14, seed=11)
    report = build_report(compute_cohort(cohort, OutcomePolicy()))
    template = sample_record()
    records = [
        dataclasses.replace(template, patient_id=p.patient_id, document=p.document, patient_reference=None)
        for p in report.patients
        if p.metrics["readings_used"]
    ]
    rows = []
    for label, include_raw in (("raw data inline", True), ("raw data referenced", False)):
        # As an exporter does: build, serialise, write, let go; one window at a time.
        size = 0
        start = time.perf_counter()
        for r in records:
            size += len(orjson.dumps(outcome_bundle(r, include_raw=include_raw)))
        total = time.perf_counter() - start
        start = time.perf_counter()
        for r in records[:200]:
            json.dumps(outcome_bundle(r, include_raw=include_raw))
        baseline = (time.perf_counter() - start) / 200 * len(records)
        rows.append((label, f"{len(records):,}", f"{total:.2f} s", f"{len(records) / total:,.0f}/s",
                     f"{size / len(records) / 1024:,.0f} KiB", f"{len(records) / baseline:,.0f}/s"))  # fmt: skip
    print(table(rows, ("bundle", "windows", "build + orjson", "windows/s", "size each", "with stdlib json")))
    print("goal: >= 2,000 windows/s to FHIR JSON on one core")
