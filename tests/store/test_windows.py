"""Materialized standard outcomes (bff.store.windows): the stored document is the on-request one, exactly; readings
make it stale (by the hook or by the watermark sweep); the recompute writes it once, even with two workers at once."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from bff.ingest.records import Feed, FeedReading, PatientRef
from bff.store import windows
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.models import Patient, StandardOutcome
from bff.store.outcomes import OutcomeService, readings_ndjson
from bff.store.rawdata import RawDigest
from engine import GlucoseUnit, WindowSpec

NOW = datetime(2024, 12, 1, tzinfo=UTC)


def readings(patient: str, start: datetime, hours: int, *, offset: int | None = None, device: str = "dexcom-g6",
             unit: GlucoseUnit = GlucoseUnit.MG_DL, step_min: int = 5, tag: str = "") -> list[FeedReading]:  # fmt: skip
    out = []
    for i in range(hours * 60 // step_min):
        moment = start + timedelta(minutes=step_min * i, seconds=i % 7)
        value = 40.0 + (i * 37) % 320
        if unit is GlucoseUnit.MMOL_L:
            value = round(value / 18.0, 1)
        out.append(FeedReading(patient=PatientRef("mrn", patient), time_ms=int(moment.timestamp() * 1000),
                               value=value, unit=unit, device=device, record_key=f"{patient}-{tag}{device}-{i}",
                               utc_offset_min=offset))  # fmt: skip
    return out


def ingest(store: Store, items: list[FeedReading], feed: Feed = Feed.FHIR) -> None:
    Ingestor(store, clock=lambda: NOW).ingest_items(items, site="site-a", feed=feed, source_name="t")


def cohort(store: Store) -> list[str]:
    """Three patients: a zone inferred from offsets with a DST change, mixed units, two devices and a copy from
    another feed, plus gaps; and one patient with a single day."""
    ingest(store, readings("A", datetime(2024, 10, 20, tzinfo=UTC), 24 * 12, offset=-240)
           + readings("A", datetime(2024, 11, 9, tzinfo=UTC), 24 * 12, offset=-300, tag="w"))  # fmt: skip
    ingest(store, readings("B", datetime(2024, 9, 1, tzinfo=UTC), 24 * 50, unit=GlucoseUnit.MMOL_L)
           + readings("B", datetime(2024, 10, 25, tzinfo=UTC), 24 * 30, device="libre-2", step_min=15))  # fmt: skip
    ingest(
        store, readings("B", datetime(2024, 10, 25, tzinfo=UTC), 24 * 3, device="libre-2", step_min=15), feed=Feed.CSV
    )  # the same readings again from another feed: copies the engine resolves
    ingest(store, readings("C", datetime(2024, 11, 30, 6, tzinfo=UTC), 10))
    return ["site:site-a:mrn|A", "site:site-a:mrn|B", "site:site-a:mrn|C"]


def on_request(store: Store, public_id: str, days: int) -> dict:
    result = OutcomeService(store).compute(public_id, WindowSpec(days=days), save=False, include_traces=True)
    return json.loads(json.dumps(dict(result.report.patients[0].document)))


def stored(store: Store, public_id: str, days: int) -> windows.Materialized | None:
    with store.transaction() as session:
        patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
        assert patient is not None
        return windows.read(session, patient, days)


def patient_ids(store: Store) -> list[int]:
    with store.transaction() as session:
        return list(session.scalars(select(Patient.id).order_by(Patient.id)))


def test_the_stored_window_is_the_on_request_computation_exactly(store: Store) -> None:
    ids = cohort(store)
    with store.transaction() as session:
        # The ingestion marked A, B and C (three periods each); the watermark sweep finds nothing more.
        assert windows.sweep(session) == 0
        assert windows.stale_count(session) == 9
    report = windows.refresh(store, chunk=2)  # two chunks: patients of a chunk share one compute_cohort call
    assert (report.claimed, report.computed, report.changed, report.still_stale) == (9, 9, 9, 0)
    for public_id in ids:
        for days in windows.STANDARD_DAYS:
            row = stored(store, public_id, days)
            assert row is not None
            assert not row.stale
            assert row.version == 1
            expected = on_request(store, public_id, days)
            assert row.document == expected, (public_id, days)
            assert row.digest == windows.document_digest(expected)
    assert stored(store, ids[0], 14).document["tz"] == "America/New_York"  # type: ignore[union-attr]


def test_the_stored_raw_digest_is_the_signed_paths_input_digest(store: Store) -> None:
    """The SHA-256, SHA-1 and size stored with each standard window are those of the canonical NDJSON the signed
    path (OutcomeService.compute, save=True) builds from its StoredReadings: mixed units, a zone with a DST change,
    copies from another feed, gaps."""
    ids = cohort(store)
    windows.refresh(store)
    seen = set()
    for public_id in ids:
        for days in windows.STANDARD_DAYS:
            with store.transaction() as session:
                row = session.execute(
                    select(StandardOutcome.raw_sha256, StandardOutcome.raw_sha1, StandardOutcome.raw_size)
                    .join(Patient, Patient.id == StandardOutcome.patient_id)
                    .where(Patient.public_id == public_id, StandardOutcome.days == days)
                ).one()  # fmt: skip
            signed = OutcomeService(store).compute(public_id, WindowSpec(days=days), save=True)
            assert signed.window is not None
            ndjson = readings_ndjson(signed.used)
            assert len(signed.used) > 0
            assert tuple(row) == (signed.window.input_digest, RawDigest.of(ndjson).sha1, len(ndjson)), (public_id, days)
            seen.add(row[0])
    assert len(seen) == 7  # C has one day: its three periods use the same readings


def test_new_readings_make_it_stale_and_the_job_makes_it_fresh(store: Store) -> None:
    ids = cohort(store)
    windows.refresh_patients(store, patient_ids(store))
    before = stored(store, ids[2], 14)
    assert before is not None
    assert not before.stale
    ingest(store, readings("C", datetime(2024, 11, 30, 16, tzinfo=UTC), 6, tag="more"))
    with store.transaction() as session:
        # the hook (ingestion calls it in its transaction) …
        c = session.scalar(select(Patient.id).where(Patient.public_id == ids[2]))
        assert windows.mark_stale(session, [c]) == 3
    shown = stored(store, ids[2], 14)
    assert shown is not None
    assert shown.stale
    assert shown.document == before.document
    assert windows.refresh(store).computed == 3
    after = stored(store, ids[2], 14)
    assert after is not None
    assert not after.stale
    assert after.version == 2
    assert after.document == on_request(store, ids[2], 14) != before.document


def test_the_sweep_catches_readings_no_hook_reported(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = cohort(store)
    with store.transaction() as session:
        windows.sweep(session)
    windows.refresh(store)
    with store.transaction() as session:
        assert windows.sweep(session) == 0
    with monkeypatch.context() as m:  # readings stored by a path that forgot the hook
        m.setattr(windows, "mark_stale", lambda *args, **kwargs: 0)
        ingest(store, readings("A", datetime(2024, 11, 21, 1, tzinfo=UTC), 3, offset=-300, tag="late"))
    assert not stored(store, ids[0], 30).stale  # type: ignore[union-attr]
    with store.transaction() as session:
        assert windows.sweep(session) == 1  # patient A only
    assert stored(store, ids[0], 30).stale  # type: ignore[union-attr]
    assert not stored(store, ids[1], 30).stale  # type: ignore[union-attr]
    windows.refresh(store)
    assert stored(store, ids[0], 30).document == on_request(store, ids[0], 30)  # type: ignore[union-attr]


def test_readings_during_a_recompute_leave_it_stale(store: Store) -> None:
    ids = cohort(store)
    with store.transaction() as session:
        windows.mark_stale(session, patient_ids(store), now=NOW)
    claimed_at = datetime.now(UTC)
    with store.transaction() as session:
        claimed = windows.claim(session, "w1", 100, now=claimed_at)
        later = claimed_at + timedelta(seconds=1)
        windows.mark_stale(session, patient_ids(store)[:1], now=later)  # readings for A arrive meanwhile
    with store.transaction() as session:
        done = windows._recompute(session, claimed, "w1", claimed_at)
    assert (done.computed, done.still_stale) == (9, 3)
    assert stored(store, ids[0], 14).stale
    assert not stored(store, ids[1], 14).stale


def test_two_recomputes_at_once_compute_each_window_once(store: Store) -> None:
    cohort(store)
    with store.transaction() as session:
        windows.mark_stale(session, patient_ids(store))
    results: list[windows.RefreshReport] = []
    go = threading.Barrier(2)

    def run(name: str) -> None:
        go.wait()
        results.append(windows.refresh(store, chunk=1, owner=name))

    threads = [threading.Thread(target=run, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.computed for r in results) == 9
    with store.transaction() as session:
        assert session.scalar(select(func.max(StandardOutcome.version))) == 1
        assert windows.stale_count(session) == 0


def test_a_zone_change_or_a_new_engine_shows_the_row_stale(store: Store) -> None:
    ids = cohort(store)
    windows.refresh_patients(store, patient_ids(store))
    with store.transaction() as session:
        session.execute(update(StandardOutcome).values(engine_version="0.0.0"))
    row = stored(store, ids[1], 14)
    assert row is not None
    assert row.stale
    assert "engine" in (row.stale_reason or "")
    with store.transaction() as session:
        windows.sweep(session)
        assert windows.stale_count(session) == 9


def test_summaries_page_through_a_period_with_the_stored_metrics_and_no_traces(store: Store) -> None:
    ids = cohort(store)
    windows.refresh(store)
    with store.transaction() as session:
        first = windows.summaries(session, 30, limit=2)
        rest = windows.summaries(session, 30, after=first[-1].row_id, limit=2)
        assert windows.summaries(session, 30, after=rest[-1].row_id) == []
    pages = first + rest
    assert [len(first), len(rest)] == [2, 1]
    assert [s.public_id for s in pages] == ids
    for summary in pages:
        full = stored(store, summary.public_id, 30)
        assert full is not None
        assert summary.document == {"metrics": full.document["metrics"], "sufficiency": full.document["sufficiency"]}
        assert (summary.days, summary.version, summary.digest, summary.stale) == (30, full.version, full.digest, False)
        assert summary.window_end_ms is not None
        assert summary.tz == full.document["tz"]
    ingest(store, readings("C", datetime(2024, 11, 30, 16, tzinfo=UTC), 6, tag="more"))
    with store.transaction() as session:
        assert [s.stale for s in windows.summaries(session, 30)] == [False, False, True]  # newer readings for C


def test_json_columns_read_with_orjson_and_fall_back_for_nan() -> None:
    from bff.store.db import read_json  # noqa: PLC0415

    assert read_json(b'{"a":[1,2.5,null],"b":"\\u00e9"}') == {"a": [1, 2.5, None], "b": "é"}
    assert math.isnan(read_json('{"a": NaN}')["a"])  # SQLAlchemy's default writer allows NaN in SQLite JSON


def test_the_canonical_json_sorts_keys_and_refuses_a_non_finite_metric() -> None:
    document = {"metrics": {"b": 1.5, "a": None}, "agp": {"z": [1, 2], "y": "é"}}
    text = windows.canonical_json(document)
    assert text == '{"agp":{"y":"é","z":[1,2]},"metrics":{"a":null,"b":1.5}}'.encode()
    assert json.loads(text) == document
    assert windows.document_digest(document) == windows.document_digest(dict(reversed(list(document.items()))))
    with pytest.raises(ValueError, match="cv_pct is nan"):
        windows.canonical_json({"metrics": {"cv_pct": math.nan}})


def test_the_view_reads_the_document_only_when_what_it_shows_is_not_cached(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A view whose page is cached by the outcome's digest reads the row without its document; one that is not
    reads the document of that same version, or the whole new row if a recompute wrote one in between."""
    from bff.clinical import PatientOutcomesView  # noqa: PLC0415

    site, fhir = "site-a", "Patient/A"
    items = readings("A", datetime(2024, 11, 20, tzinfo=UTC), 24 * 5)
    ingest(store, [dataclasses.replace(r, patient=PatientRef("fhir", fhir)) for r in items])
    windows.refresh(store)
    full = stored(store, f"site:{site}:fhir|{fhir}", 14)
    assert full is not None
    assert full.document is not None
    with store.transaction() as session:
        pid = session.scalar(select(Patient.id).where(Patient.public_id == f"site:{site}:fhir|{fhir}"))
        assert pid is not None
        patient = session.get(Patient, pid)
        assert patient is not None
        light = windows.read(session, patient, 14, document=False)
        assert light is not None
        assert light.document is None
        assert (light.digest, light.version, light.stale) == (full.digest, full.version, full.stale)
        assert windows.document_of(session, pid, 14, full.digest) == full.document
        assert windows.document_of(session, pid, 14, "another") is None
    view = PatientOutcomesView(store)
    asked: list[str] = []
    for cached in (True, False):
        with store.transaction() as session:
            seen = view.for_launch_in(session, site, fhir, None, 14,
                                      needs_document=lambda d, c=cached: asked.append(d) or not c)  # type: ignore[func-returns-value]  # fmt: skip
        assert seen is not None
        assert seen[2].digest == full.digest
        assert seen[2].document == (None if cached else full.document)
    assert asked == [full.digest, full.digest]

    # Recomputed between the two reads (PostgreSQL's read committed allows it): the view gets the new row whole.
    def recomputed(session: Session, patient_id: int, days: int, digest: str) -> None:
        session.execute(update(StandardOutcome).where(StandardOutcome.patient_id == patient_id,
                                                      StandardOutcome.days == days).values(digest="new"))  # fmt: skip

    monkeypatch.setattr(windows, "document_of", recomputed)
    with store.transaction() as session:
        seen = view.for_launch_in(session, site, fhir, None, 14, needs_document=lambda d: True)
    assert seen is not None
    assert (seen[2].digest, seen[2].document) == ("new", full.document)
