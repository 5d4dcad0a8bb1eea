"""The two ways a chunk reaches the staging table (PostgreSQL COPY, and the batched executemany SQLite takes) give
the same rows, conflicts and quarantine; a re-ingest of an unchanged input is skipped by its digest and adds
nothing; one bad record in a chunk never costs the good ones."""

from __future__ import annotations

import gc
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import aliased

from bff.ingest.csv_feed import CsvParser
from bff.ingest.dexcom import DexcomParser
from bff.ingest.fhir_feed import FhirParser
from bff.ingest.records import FeedItem, ParseOptions, Parser
from bff.settings import Settings
from bff.store.db import Store, make_engine, upgrade
from bff.store.ingest import (
    GC_YOUNG_THRESHOLD,
    SWITCH_INTERVAL_S,
    Ingestor,
    IngestReport,
    ReadingOwnerError,
    _Run,
    ingest_mode,
)
from bff.store.models import IngestBatch, Patient, QuarantineItem, Reading, ReadingConflict
from tests.conftest import database_url
from tests.store.feeds import fhir_ndjson, readings

NOW = datetime(2024, 3, 20, tzinfo=UTC)
HEADER = "patient_id,time,value,unit,device,record_id\n"


def csv(*rows: str) -> bytes:
    return (HEADER + "".join(r + "\n" for r in rows)).encode()


def rows(patient: str, n: int, *, value: int = 120, prefix: str = "r", start: int = 0) -> list[str]:
    return [
        f"{patient},2024-03-01T{i // 12:02d}:{i % 12 * 5:02d}:00Z,{value + i % 50},mg/dL,dexcom-g6,{prefix}{i}"
        for i in range(start, start + n)
    ]


def ingest(store: Store, data: bytes, parser: Parser | None = None, *, copy: bool | None = None,
           **kwargs: Any) -> IngestReport:  # fmt: skip
    return Ingestor(store, clock=lambda: NOW, copy=copy).ingest(
        parser or CsvParser(), io.BytesIO(data), site="site-a", source_name="test", **kwargs
    )


@pytest.fixture(name="two_stores")
def fx_two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """Two fresh, migrated stores of one kind, with small chunks (so an input spans several)."""
    kind = request.param
    made = []
    try:
        for name in ("a", "b"):
            folder = tmp_path / name
            folder.mkdir()
            url, schema = database_url(kind, folder)
            engine = make_engine(url)
            upgrade(engine)
            made.append((Store(Settings(database_url=url, ingest_chunk=7), engine=engine), schema))
        yield made[0][0], made[1][0]
    finally:
        for store, schema in made:
            store.dispose()
            if schema is not None:
                schema.close()


def dexcom_egvs() -> bytes:
    records = [
        {"recordId": f"d{i}", "systemTime": f"2024-03-01T0{i}:00:00Z", "displayTime": f"2024-03-01T0{i}:00:00-05:00",
         "value": 100 + i, "unit": "mg/dL", "status": "ok", "transmitterId": "8X\\TX",
         "transmitterGeneration": "g6", "displayDevice": 'iOS "quoted" \\ path\ttab'}
        for i in range(9)
    ]  # fmt: skip
    return json.dumps({"recordType": "egv", "userId": "u-1", "records": records}).encode()


SCENARIO: list[tuple[bytes, Parser | None]] = [
    # good rows across chunks, one unit nobody knows, one value a G6 cannot report
    (
        csv(
            *rows("P1", 20),
            "P1,2024-03-01T03:00:00Z,120,furlongs,dexcom-g6,bad-unit",
            "P1,2024-03-01T03:05:00Z,900,mg/dL,dexcom-g6,too-high",
        ),
        None,
    ),
    # the same key with another value (a conflict), new rows, and P1's record r3 again for P2 (quarantined)
    (
        csv(
            "P1,2024-03-01T00:00:00Z,77,mg/dL,dexcom-g6,r0",
            *rows("P1", 5, start=20),
            "P2,2024-03-01T00:15:00Z,123,mg/dL,dexcom-g6,r3",
            *rows("P2", 9, prefix="p2-"),
        ),
        None,
    ),
    # the same readings from FHIR for another patient of the site: stored and reconciled per stream
    (fhir_ndjson(readings(15)), FhirParser()),
    # texts COPY's text format escapes: a record key with a backslash, one with a tab (its chunk is sent row by
    # row), a Dexcom transmitter with a backslash, and feed details whose JSON holds quotes and backslashes
    (
        csv(
            "P3,2024-03-01T00:00:00Z,5.5,mmol/L,dexcom-g6,back\\slash",
            '"P3","2024-03-01T00:05:00Z","5.6","mmol/L","dexcom-g6","tab\there"',
            *rows("P3", 12, prefix="p3-"),
        ),
        None,
    ),
    (dexcom_egvs(), DexcomParser()),
    # everything again: nothing added, the bad rows counted again
    (csv(*rows("P1", 20), "P1,2024-03-01T03:00:00Z,120,furlongs,dexcom-g6,bad-unit"), None),
]


def snapshot(store: Store) -> dict[str, Any]:
    with store.transaction() as session:
        kept = aliased(Reading)
        readings_ = session.execute(
            select(Reading.reading_key, Patient.public_id, Reading.observed_ms, Reading.value_original,
                   Reading.unit_original, Reading.value_mg_dl, Reading.record_hash, Reading.kind, Reading.source_feed,
                   Reading.source_record_key, kept.reading_key, Reading.extra)
            .join(Patient, Patient.id == Reading.patient_id)
            .outerjoin(kept, kept.id == Reading.duplicate_of)
            .order_by(Reading.reading_key)
        ).all()  # fmt: skip
        conflicts = session.execute(
            select(Reading.reading_key, ReadingConflict.incoming_value, ReadingConflict.incoming_unit)
            .join(Reading, Reading.id == ReadingConflict.reading_id)
            .order_by(Reading.reading_key)
        ).all()
        quarantine = session.execute(
            select(QuarantineItem.payload_sha256, QuarantineItem.reason, QuarantineItem.locator,
                   QuarantineItem.seen_count, QuarantineItem.payload).order_by(QuarantineItem.payload_sha256)
        ).all()  # fmt: skip
    return {
        "readings": [tuple(r) for r in readings_],
        "conflicts": [tuple(r) for r in conflicts],
        "quarantine": [tuple(r) for r in quarantine],
    }


def report_of(report: IngestReport) -> dict[str, Any]:
    found = report.as_dict()
    found.pop("batch_id")
    found.pop("same_as_batch")
    return found


@pytest.mark.parametrize("two_stores", ["sqlite", "postgresql"], indirect=True)
def test_copy_and_batched_loading_give_the_same_rows_conflicts_and_quarantine(
    two_stores: tuple[Store, Store],
) -> None:
    by_copy, batched = two_stores
    reports = []
    for data, parser in SCENARIO:
        first = ingest(by_copy, data, parser, copy=True)
        second = ingest(batched, data, parser, copy=False)
        assert report_of(first) == report_of(second)
        reports.append(first)
    assert [(r.added, r.conflicts, r.quarantined) for r in reports] == [
        (20, 0, 2), (14, 1, 1), (15, 0, 0), (14, 0, 0), (9, 0, 0), (0, 0, 1)
    ]  # fmt: skip
    copied, loaded = snapshot(by_copy), snapshot(batched)
    assert copied == loaded
    assert len(copied["readings"]) == 72
    keys = {r[9] for r in copied["readings"]}
    assert {"back\\slash", "tab\there"} <= keys
    details = [r[11] for r in copied["readings"] if r[8] == "dexcom"]
    assert len(details) == 9
    assert all(d["displayDevice"] == 'iOS "quoted" \\ path\ttab' for d in details)
    assert [c[1:] for c in copied["conflicts"]] == [(77.0, "mg/dL")]
    reasons = sorted(q[1] for q in copied["quarantine"])
    assert any("was already filed for patient P1" in reason for reason in reasons)
    assert any("furlongs" in reason for reason in reasons)
    assert max(q[3] for q in copied["quarantine"]) == 2  # the unknown unit, seen in two inputs


def test_reingest_of_an_unchanged_file_is_skipped_by_its_digest_and_adds_nothing(store: Store) -> None:
    data = csv(*rows("P1", 30))
    first = ingest(store, data)
    assert (first.added, first.same_as_batch) == (30, None)
    again = ingest(store, data)
    assert (again.received, again.added, again.already_present, again.quarantined) == (30, 0, 30, 0)
    assert again.same_as_batch == first.batch_id
    assert again.changed_patients == set()
    with store.transaction() as session:
        assert len(session.scalars(select(Reading.id)).all()) == 30
        batches = session.scalars(select(IngestBatch).order_by(IngestBatch.id)).all()
    assert [(b.added, b.already_present) for b in batches] == [(30, 0), (0, 30)]  # each run is recorded
    assert batches[0].content_sha256 == batches[1].content_sha256
    # Anything that decides how the input is read makes it another input: read again, and still adds nothing.
    other = ingest(store, data, options=ParseOptions(input_tz="Europe/Paris"))
    assert (other.same_as_batch, other.added, other.already_present) == (None, 0, 30)


def test_a_stream_that_cannot_seek_is_read_and_its_digest_kept_for_the_next_run(store: Store) -> None:
    class OneWay(io.BytesIO):
        def seekable(self) -> bool:
            return False

    data = csv(*rows("P1", 10))
    first = Ingestor(store, clock=lambda: NOW).ingest(CsvParser(), OneWay(data), site="site-a", source_name="pipe")
    assert (first.added, first.same_as_batch) == (10, None)
    assert ingest(store, data).same_as_batch == first.batch_id


def test_an_input_with_quarantined_records_is_read_again_and_counts_them_again(store: Store) -> None:
    data = csv(*rows("P1", 5), "P1,2024-03-01T03:00:00Z,120,furlongs,dexcom-g6,bad-unit")
    assert ingest(store, data).quarantined == 1
    again = ingest(store, data)
    assert (again.same_as_batch, again.added, again.already_present, again.quarantined) == (None, 0, 5, 1)
    with store.transaction() as session:
        assert session.scalars(select(QuarantineItem.seen_count)).one() == 2


def test_a_chunk_with_one_bad_record_stores_the_good_ones_and_quarantines_the_bad_one(store: Store) -> None:
    store.settings = Settings(database_url=store.settings.database_url, ingest_chunk=10)
    ingest(store, csv(*rows("P1", 10)))
    # One chunk of ten: nine new readings of P2, and P1's record r4 again for P2 (found by the merge's join).
    report = ingest(store, csv(*rows("P2", 9, prefix="p2-"), "P2,2024-03-01T00:20:00Z,124,mg/dL,dexcom-g6,r4"))
    assert (report.received, report.added, report.already_present, report.quarantined) == (9, 9, 0, 1)
    # One chunk of ten again, with a value the device cannot report (found before the merge).
    report = ingest(store, csv(*rows("P3", 9, prefix="p3-"), "P3,2024-03-01T01:00:00Z,999,mg/dL,dexcom-g6,x"))
    assert (report.received, report.added, report.quarantined) == (9, 9, 1)
    with store.transaction() as session:
        owners = dict(session.execute(select(Patient.public_id, Patient.id)).all())
        stored = session.execute(select(Reading.patient_id, Reading.source_record_key)).all()
        reasons = session.scalars(select(QuarantineItem.reason).order_by(QuarantineItem.id)).all()
    assert sorted(key for patient, key in stored if patient == owners["P2"]) == sorted(f"p2-{i}" for i in range(9))
    assert [key for patient, key in stored if patient == owners["P1"]].count("r4") == 1
    assert "already filed for patient P1" in reasons[0]
    assert "outside what dexcom-g6 can report" in reasons[1]
    assert report.changed_patients == {owners["P3"]}


def test_threads_switch_promptly_and_the_collector_runs_rarely_while_an_input_is_read_and_as_before_after(
    store: Store,
) -> None:
    seen: list[tuple[float, tuple[int, ...]]] = []

    class Watching:
        feed = CsvParser.feed

        def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
            for item in CsvParser().parse(stream, options):
                seen.append((sys.getswitchinterval(), gc.get_threshold()))
                yield item

        def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
            raise NotImplementedError

    before, thresholds = sys.getswitchinterval(), gc.get_threshold()
    assert before > SWITCH_INTERVAL_S
    assert thresholds[0] < GC_YOUNG_THRESHOLD
    during = (GC_YOUNG_THRESHOLD, *thresholds[1:])
    with ingest_mode():  # another ingest of the process, still running when this one ends
        ingest(store, csv(*rows("P1", 5)), Watching())
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_S)
        assert gc.get_threshold() == during
    assert [interval for interval, _ in seen] == pytest.approx([SWITCH_INTERVAL_S] * 5)
    assert [young for _, young in seen] == [during] * 5
    assert sys.getswitchinterval() == before
    assert gc.get_threshold() == thresholds


def test_a_reading_staged_with_another_patients_stream_rolls_the_whole_input_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The readings table has no foreign keys on patient and stream: each chunk's pairs are checked before the merge.
    A defect that hands a reading another patient's stream stops the input, and nothing of it is written."""
    ingest(store, csv(*rows("P1", 5)))
    with store.transaction() as session:
        p1_stream = session.scalars(select(Reading.stream_id)).first()
    monkeypatch.setattr(_Run, "stream_for", lambda self, patient_id, device: p1_stream)
    with pytest.raises(ReadingOwnerError, match="names device stream"):
        ingest(store, csv(*rows("P2", 5, prefix="p2-")))
    with store.transaction() as session:
        owners = session.scalars(select(Patient.public_id).join(Reading, Reading.patient_id == Patient.id)).all()
    assert owners == ["P1"] * 5
