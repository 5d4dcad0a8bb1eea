"""Seed data: 90 days ending yesterday, sensor sessions with warm-up gaps, the mmol/DST/empty patients,
reproducibility, per-site ids, each Patient's time zone, and an export that our own FHIR ingestion reads without a
problem. Whether the glucose looks like real patients' is test_glucose_realism.py."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import orjson
import pytest

from bff.ingest.fhir_feed import FhirParser
from bff.ingest.records import FeedProblem, FeedReading, ParseOptions
from engine import GlucoseUnit
from sandbox.__main__ import main as sandbox_main
from sandbox.glucose import DAY_MS, HOUR_MS, Trace, dst_changes_ms
from sandbox.personalities import PERSONALITIES
from sandbox.seed import PATIENT_TIME_ZONE_EXTENSION, PEOPLE, Person, build_site, traces_for, window_for
from tests.sandbox.support import NOW

HOUR = 3_600_000


@pytest.fixture(scope="module", name="traces")
def fx_traces() -> dict[str, Trace]:
    return traces_for(PEOPLE, NOW, 90, 20240601)


def person(key: str) -> Person:
    return next(p for p in PEOPLE if p.key == key)


def test_generation_is_fast_and_reproducible() -> None:
    started = time.perf_counter()
    first = traces_for(PEOPLE, NOW, 90, 7)
    elapsed = time.perf_counter() - started
    second = traces_for(PEOPLE, NOW, 90, 7)
    assert elapsed < 2.0
    for key, trace in first.items():
        np.testing.assert_array_equal(trace.time_ms, second[key].time_ms)
        np.testing.assert_array_equal(trace.value, second[key].value)
    other = traces_for(PEOPLE, NOW, 90, 8)
    assert not np.array_equal(first["p1"].value[:100], other["p1"].value[:100])


def test_ninety_days_ending_yesterday(traces: dict[str, Trace]) -> None:
    for key in ("p1", "p2", "p5", "p6"):
        trace = traces[key]
        zone = ZoneInfo(person(key).zone)
        first = datetime.fromtimestamp(trace.time_ms[0] / 1000, zone)
        last = datetime.fromtimestamp(trace.time_ms[-1] / 1000, zone)
        today = NOW.astimezone(zone).date()
        assert last.date() == today - timedelta(days=1), key
        assert first.date() == today - timedelta(days=90), key
        # Mostly complete: 5-min (Libre 2: 15-min) readings over 90 days, less warm-ups and gaps.
        per_day = 288 if key != "p6" else 96
        assert 0.85 * 90 * per_day < len(trace) <= 90 * per_day, key


def test_sensor_sessions_and_warmup_gaps(traces: dict[str, Trace]) -> None:
    trace = traces["p1"]  # Dexcom G6: 10-day sensors, 2 h warm-up
    assert 9 <= len(trace.sessions) <= 11
    for earlier, later in zip(trace.sessions, trace.sessions[1:], strict=False):
        life = earlier.end_ms - earlier.start_ms
        assert life == 10 * DAY_MS
        assert later.start_ms > earlier.end_ms
    for s_no in np.unique(trace.session)[1:]:
        first = trace.time_ms[trace.session == s_no][0]
        before = trace.time_ms[trace.session == s_no - 1]
        if before.size:
            assert first - before[-1] >= 2 * HOUR_MS  # no readings while the new sensor warms up
    serials = [s.serial for s in trace.sessions]
    assert len(set(serials)) == len(serials)
    gaps = np.diff(trace.time_ms)
    assert (gaps > 20 * 60_000).sum() >= 3  # a few dropouts besides the sensor changes
    failed = traces["p5"]
    assert np.diff(failed.time_ms).max() >= 30 * HOUR  # the failed sensor


def test_mmol_patient(traces: dict[str, Trace]) -> None:
    trace = traces["p2"]
    assert trace.unit == "mmol/L"
    assert trace.value.min() >= 2.2
    assert trace.value.max() <= 27.8
    assert np.allclose(trace.value, np.round(trace.value, 1))
    assert 5.0 < trace.value.mean() < 12.0


def test_dst_patient(traces: dict[str, Trace]) -> None:
    trace = traces["p3"]
    assert set(np.unique(trace.offset_min).tolist()) == {-240, -300}
    change = dst_changes_ms("America/New_York", int(trace.time_ms[0]), int(trace.time_ms[-1]))
    assert change == [int(datetime(2026, 11, 1, 6, tzinfo=UTC).timestamp() * 1000)]


def test_dst_window_moves_to_the_last_change_when_today_has_none() -> None:
    summer = datetime(2026, 7, 15, 12, tzinfo=UTC)  # the 90 days before have no New York change
    window = window_for(person("p3"), summer, 90)
    changes = dst_changes_ms("America/New_York", window.start_ms, window.end_ms)
    assert changes == [int(datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp() * 1000)]
    assert round((window.end_ms - window.start_ms) / DAY_MS) == 90
    normal = window_for(person("p1"), summer, 90)
    assert normal.end_ms > window.end_ms


def test_empty_patient_and_per_site_identity(traces: dict[str, Trace]) -> None:
    assert "p4" not in traces
    now = NOW
    epic = build_site("epic-like", PERSONALITIES["epic-like"], traces, now)
    oracle = build_site("oracle-like", PERSONALITIES["oracle-like"], traces, now)
    assert {b.person.key for b in epic.blocks} == {"p1", "p2", "p3", "p5", "p6"}
    epic_ids = {p.person.key: p.patient_id for p in epic.patients}
    oracle_ids = {p.person.key: p.patient_id for p in oracle.patients}
    assert epic_ids["p1"].startswith("e")
    assert oracle_ids["p1"].isdigit()
    assert set(epic_ids.values()).isdisjoint(oracle_ids.values())
    assert {p.mrn for p in epic.patients}.isdisjoint({p.mrn for p in oracle.patients})
    no_visit = next(p for p in epic.patients if p.person.key == "p5")
    assert no_visit.open_encounter_id is None
    # The same reading at both sites: same record id, different subject and shape.
    e = next(b for b in epic.blocks if b.person.key == "p1").observation(0)
    o = next(b for b in oracle.blocks if b.person.key == "p1").observation(0)
    assert e["identifier"] == o["identifier"]
    assert e["valueQuantity"] == o["valueQuantity"]
    assert e["category"][0]["coding"][0]["code"] == "vital-signs"
    assert o["category"][0]["coding"][0]["code"] == "laboratory"


def test_each_patient_carries_its_time_zone(traces: dict[str, Trace]) -> None:
    """Every site's Patient resources carry the person's IANA zone, so an app can read it from the EHR.

    A sandbox extension (PATIENT_TIME_ZONE_EXTENSION): the core tz-code's context is a date, dateTime or instant,
    not Patient, and neither US Core nor the CGM IG defines a zone on Patient.
    """
    for site, personality in PERSONALITIES.items():
        seed = build_site(site, personality, traces, NOW)
        patients = {r["id"]: r for r in seed.resources if r["resourceType"] == "Patient"}
        assert len(patients) == len(PEOPLE), site
        for seeded in seed.patients:
            extensions = patients[seeded.patient_id]["extension"]
            zones = [e["valueCode"] for e in extensions if e["url"] == PATIENT_TIME_ZONE_EXTENSION]
            assert zones == [seeded.person.zone], (site, seeded.person.key)
            ZoneInfo(zones[0])  # a real IANA name
    assert person("p3").zone == "America/New_York"


def test_export_seed_reads_back_through_our_fhir_ingestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "epic.ndjson"
    assert sandbox_main(["export-seed", "--site", "epic-like", "--out", str(out), "--now", NOW.isoformat()]) == 0
    assert "Observations of 5 patients" in capsys.readouterr().err
    data = out.read_bytes()
    first = orjson.loads(data.split(b"\n", 1)[0])
    assert first["code"]["coding"][1]["code"] == "99504-3"
    items = list(FhirParser().parse(io.BytesIO(data), ParseOptions()))
    problems = [i for i in items if isinstance(i, FeedProblem)]
    readings = [i for i in items if isinstance(i, FeedReading)]
    assert problems == []
    assert len(readings) == data.count(b"\n")
    units = {r.unit for r in readings}
    assert units == {GlucoseUnit.MG_DL, GlucoseUnit.MMOL_L}
    assert {r.device for r in readings} == {"dexcom-g6", "dexcom-g7", "libre-2", "libre-3"}
