"""The store through the engine-CSV feed: idempotency, conflicts, quarantine, atomic batches, backfills."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO

import pytest
from sqlalchemy import func, select

from bff.ingest.csv_feed import CsvParser
from bff.ingest.records import FeedItem, ParseOptions
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.models import IngestBatch, OutcomeWindow, QuarantineItem, Reading, ReadingConflict
from bff.store.outcomes import OutcomeService
from engine import WindowSpec

NOW = datetime(2024, 3, 20, tzinfo=UTC)
HEADER = "patient_id,time,value,unit,device,record_id\n"


def csv(*rows: str) -> bytes:
    return (HEADER + "".join(r + "\n" for r in rows)).encode()


def day(patient: str = "P1", date: str = "2024-03-01", n: int = 12, value: int = 120, prefix: str = "r") -> list[str]:
    return [
        f"{patient},{date}T{h:02d}:{m:02d}:00Z,{value},mg/dL,dexcom-g6,{prefix}{date}-{h}-{m}"
        for h in range(24) for m in range(0, 60, 5)
    ][:n]  # fmt: skip


def ingest(store: Store, data: bytes, **kwargs: object) -> dict[str, object]:
    report = Ingestor(store, clock=lambda: NOW).ingest(
        CsvParser(),
        io.BytesIO(data),
        site="site-a",
        source_name="test.csv",
        **kwargs,  # type: ignore[arg-type]
    )
    return report.as_dict()


def count(store: Store, model: type, *where: object) -> int:
    with store.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)  # type: ignore[arg-type]


def test_ingest_then_reingest_adds_nothing(store: Store) -> None:
    data = csv(*day(n=288))
    first = ingest(store, data)
    assert (first["added"], first["already_present"], first["quarantined"]) == (288, 0, 0)
    again = ingest(store, data)
    assert (again["added"], again["already_present"]) == (0, 288)
    assert count(store, Reading) == 288
    assert count(store, IngestBatch) == 2  # each run is recorded


def test_unit_provenance_is_kept(store: Store) -> None:
    ingest(store, csv("P1,2024-03-01T00:00:00Z,5.5,mmol/L,dexcom-g6,a", "P1,2024-03-01T00:05:00Z,99,mg/dL,dexcom-g6,b"))
    with store.transaction() as session:
        rows = session.execute(
            select(Reading.value_original, Reading.unit_original, Reading.factor, Reading.value_mg_dl).order_by(
                Reading.observed_ms
            )
        ).all()
    assert [tuple(r) for r in rows] == [(5.5, "mmol/L", 18.0156, 5.5 * 18.0156), (99.0, "mg/dL", 1.0, 99.0)]


def test_same_key_with_another_value_is_a_recorded_conflict_not_an_overwrite(store: Store) -> None:
    ingest(store, csv("P1,2024-03-01T00:00:00Z,120,mg/dL,dexcom-g6,rec-1"))
    report = ingest(store, csv("P1,2024-03-01T00:00:00Z,135,mg/dL,dexcom-g6,rec-1"))
    assert (report["added"], report["conflicts"]) == (0, 1)
    with store.transaction() as session:
        assert session.scalar(select(Reading.value_original)) == 120.0
        conflict = session.scalars(select(ReadingConflict)).one()
        assert (conflict.incoming_value, conflict.incoming_unit) == (135.0, "mg/dL")
    assert ingest(store, csv("P1,2024-03-01T00:00:00Z,135,mg/dL,dexcom-g6,rec-1"))["conflicts"] == 0  # once


def test_bad_rows_are_quarantined_with_a_reason_and_good_rows_kept(store: Store) -> None:
    report = ingest(store, csv(
        "P1,2024-03-01T00:00:00Z,120,mg/dL,dexcom-g6,ok-1",
        "P1,2024-03-01T00:05:00Z,120,furlongs,dexcom-g6,bad-unit",
        "P1,2024-03-01T00:10:00,120,mg/dL,dexcom-g6,naive",
        "P1,1999-12-31T23:00:00Z,120,mg/dL,dexcom-g6,old",
        "P1,2024-03-25T00:00:00Z,120,mg/dL,dexcom-g6,future",
        "P1,2024-03-01T00:15:00Z,700,mg/dL,dexcom-g6,too-high",
        "P1,2024-03-01T00:20:00Z,120,mmol/L,dexcom-g6,wrong-unit",
        "P1,2024-03-01T00:25:00Z,121,mg/dL,dexcom-g6,ok-2",
    ))  # fmt: skip
    assert (report["added"], report["quarantined"]) == (2, 6)
    with store.transaction() as session:
        reasons = [q.reason for q in session.scalars(select(QuarantineItem).order_by(QuarantineItem.id))]
    assert reasons[0] == "unknown glucose unit 'furlongs': use mg/dL or mmol/L"
    assert "has no UTC offset" in reasons[1]
    assert "is before 2000" in reasons[2]
    assert "minutes in the future" in reasons[3]
    assert reasons[4] == "value 700 mg/dL is outside what dexcom-g6 can report (40–400 mg/dL)"
    assert reasons[5].endswith("it looks like mg/dL: check the unit the feed declares")
    # Re-ingesting the same file quarantines nothing new: the items are counted as seen again.
    ingest(store, csv("P1,2024-03-01T00:05:00Z,120,furlongs,dexcom-g6,bad-unit"))
    assert count(store, QuarantineItem) == 6
    with store.transaction() as session:
        assert session.scalars(select(QuarantineItem.seen_count).order_by(QuarantineItem.id)).first() == 2


class ExplodingParser(CsvParser):
    """Yields some readings, then fails as a crash mid-batch would."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        for i, item in enumerate(super().parse(stream, options)):
            if i == self.after:
                raise RuntimeError("killed mid-batch")
            yield item


def test_a_crash_mid_batch_leaves_nothing_and_a_rerun_completes_it(store: Store) -> None:
    data = csv(*day(n=288))
    store.settings = type(store.settings)(database_url=store.settings.database_url, ingest_chunk=50)
    with pytest.raises(RuntimeError, match="killed mid-batch"):
        Ingestor(store, clock=lambda: NOW).ingest(
            ExplodingParser(200), io.BytesIO(data), site="site-a", source_name="x.csv"
        )
    assert count(store, Reading) == 0
    assert count(store, IngestBatch) == 0
    assert ingest(store, data)["added"] == 288
    assert count(store, Reading) == 288


def test_backfill_marks_the_window_stale_and_recompute_supersedes_it(store: Store) -> None:
    ingest(store, csv(*day(n=288, value=120), *day(date="2024-03-02", n=144, value=200)))
    service = OutcomeService(store)
    window = WindowSpec(
        start=int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000),
        end=int(datetime(2024, 3, 3, tzinfo=UTC).timestamp() * 1000),
    )
    first = service.compute("P1", window)
    assert first.created
    assert first.window is not None
    assert first.window.version == 1
    assert service.compute("P1", window).created is False  # same inputs: no new version
    # A late backfill of the second half of 2 March, low values.
    late = [f"P1,2024-03-02T{h:02d}:{m:02d}:00Z,60,mg/dL,dexcom-g6,late-{h}-{m}" for h in range(12, 24)
            for m in range(0, 60, 5)]  # fmt: skip
    report = ingest(store, csv(*late))
    assert report["stale_windows"] == 1
    with store.transaction() as session:
        assert session.scalars(select(OutcomeWindow.status)).all() == ["stale"]
    recomputed = service.recompute_stale()
    assert len(recomputed) == 1
    assert recomputed[0].created
    with store.transaction() as session:
        rows = session.execute(
            select(OutcomeWindow.version, OutcomeWindow.status, OutcomeWindow.input_digest, OutcomeWindow.supersedes_id,
                   OutcomeWindow.id, OutcomeWindow.readings_used).order_by(OutcomeWindow.version)
        ).all()  # fmt: skip
    (v1, s1, d1, _, id1, n1), (v2, s2, d2, sup2, _, n2) = rows
    assert (v1, s1, v2, s2, sup2) == (1, "superseded", 2, "current", id1)
    assert d1 != d2
    assert (n1, n2) == (432, 576)
    assert recomputed[0].report.patients[0].metrics["time_54_69_pct"] == pytest.approx(100 * 144 / 576)
