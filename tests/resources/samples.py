"""Sample OutcomeRecords for tests: the demo patient through the engine, no database needed."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from bff.ingest.engine_csv import parse_engine_csv
from bff.resources.record import OutcomeRecord, PriorVersion
from engine import ENGINE_VERSION, OutcomePolicy, ReadingTable, WindowSpec, compute_cohort
from engine.report import build_report

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "patient-14d.csv"


@lru_cache(maxsize=8)
def _computed(days: int) -> tuple[dict[str, object], bytes, int, int]:
    with DEMO.open(encoding="utf-8") as handle:
        parsed = parse_engine_csv(handle)
    table = ReadingTable.from_records(parsed.readings, default_zone="America/New_York")
    policy = OutcomePolicy()
    result = compute_cohort(table, policy, WindowSpec(days=days))
    report = build_report(result)
    lines = []
    for i in np.sort(result.used_index).tolist():
        lines.append(json.dumps({
            "key": f"demo-{i}", "t": int(table.time_ms[i]), "value": float(table.value[i]),
            "unit": "mg/dL" if table.unit[i] == 0 else "mmol/L", "flag": int(table.flag[i]),
            "device": table.stream_device[int(table.stream[i])], "feed": "csv", "record": parsed.record_ids[i],
        }, sort_keys=True, separators=(",", ":")))  # fmt: skip
    ndjson = ("\n".join(sorted(lines, key=lambda s: (json.loads(s)["t"], json.loads(s)["key"]))) + "\n").encode()
    return (dict(report.patients[0].document), ndjson, int(result.window_start[0]), int(result.window_end[0]))


def sample_record(
    *, version: int = 1, days: int = 14, corrected: bool = False, mean_unit: str = "mg/dL", site: str = "site-a"
) -> OutcomeRecord:
    """The demo patient's outcome window (14 days: sufficient; 7 days: insufficient); `corrected` = version 2."""
    document, ndjson, start, end = _computed(days)
    return OutcomeRecord(
        site=site, patient_id="demo-001", window_start_ms=start, window_end_ms=end, tz="America/New_York",
        version=2 if corrected else version, engine_version=ENGINE_VERSION, policy=OutcomePolicy().as_dict(),
        policy_hash=OutcomePolicy().policy_hash, method="time", document=document, readings_ndjson=ndjson,
        input_digest=hashlib.sha256(ndjson).hexdigest(), created_at=datetime(2024, 11, 10, 12, 0, tzinfo=UTC),
        prior=PriorVersion(1, "0" * 64) if corrected else None, patient_reference="Patient/demo-001",
        patient_identifiers=(("urn:oid:1.2.840.114350.1.13.99", "MRN123456"),), device_key="dexcom-g6",
        mean_unit=mean_unit, tz_source="ehr", patient_name="Dana Demo", birth_date="1971-05-04", mrn="MRN123456",
        family_name="Demo", given_names="Dana",
    )  # fmt: skip
