"""One truth from several doors: the same readings via FHIR and HL7 v2 are one reading each."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from bff.ingest.fhir_feed import FhirParser
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.models import Reading, ReadingConflict
from bff.store.outcomes import OutcomeService
from engine import WindowSpec
from tests.store.feeds import START, fhir_ndjson, hl7_messages, readings

NOW = datetime(2024, 3, 20, tzinfo=UTC)
N = 3 * 288
WINDOW = WindowSpec(start=int(START.timestamp() * 1000), end=int(START.timestamp() * 1000) + 3 * 86_400_000)


def ingest_fhir(store: Store, data: bytes) -> dict[str, object]:
    return (
        Ingestor(store, clock=lambda: NOW)
        .ingest(FhirParser(), io.BytesIO(data), site="site-a", source_name="obs.ndjson", patient="P1")
        .as_dict()
    )


def ingest_hl7(store: Store, messages: list[str]) -> dict[str, object]:
    return (
        Ingestor(store, clock=lambda: NOW)
        .ingest(
            Hl7v2Parser(), io.BytesIO("\n".join(messages).encode()), site="site-a", source_name="oru.hl7", patient="P1"
        )
        .as_dict()
    )


def outcome(store: Store) -> dict[str, object]:
    return dict(OutcomeService(store).compute("P1", WINDOW, save=False).report.patients[0].document)


@pytest.mark.parametrize("hl7_first", [True, False])
def test_fhir_and_hl7_copies_are_one_reading_each(store: Store, tmp_path: object, hl7_first: bool) -> None:
    data = readings(N)
    if hl7_first:
        ingest_hl7(store, hl7_messages(data))
        second = ingest_fhir(store, fhir_ndjson(data))
    else:
        ingest_fhir(store, fhir_ndjson(data))
        second = ingest_hl7(store, hl7_messages(data))
    assert second["added"] == N
    assert second["duplicates_reconciled"] == N
    with store.transaction() as session:
        kept = session.execute(
            select(Reading.source_feed, func.count())
            .where(Reading.duplicate_of.is_(None))
            .group_by(Reading.source_feed)
        ).all()
        dup_feeds = session.execute(
            select(Reading.source_feed, func.count())
            .where(Reading.duplicate_of.is_not(None))
            .group_by(Reading.source_feed)
        ).all()
        reason = session.scalar(select(Reading.duplicate_reason).where(Reading.duplicate_of.is_not(None)).limit(1))
    assert dict(kept) == {"fhir": N}  # FHIR over HL7 v2, whichever came first
    assert dict(dup_feeds) == {"hl7v2": N}
    assert reason is not None
    assert "fhir" in reason
    assert "2 s apart" in reason


def test_outcomes_from_two_feeds_equal_outcomes_from_one(store: Store, sqlite_store: Store) -> None:
    data = readings(N)
    ingest_fhir(sqlite_store, fhir_ndjson(data))
    single = outcome(sqlite_store)
    ingest_hl7(store, hl7_messages(data))
    ingest_fhir(store, fhir_ndjson(data))
    both = outcome(store)
    assert both["metrics"] == single["metrics"]
    assert both["agp"] == single["agp"]
    assert both["metrics"]["readings_used"] == N  # type: ignore[index]
    assert both["excluded"]["duplicate"] == N  # type: ignore[index]
    assert single["excluded"]["duplicate"] == 0  # type: ignore[index]


def test_hl7_alone_gives_the_same_outcomes_as_fhir_alone(store: Store, sqlite_store: Store) -> None:
    data = readings(N)
    ingest_fhir(sqlite_store, fhir_ndjson(data))
    ingest_hl7(store, hl7_messages(data, offset_s=0))
    assert outcome(store)["metrics"] == outcome(sqlite_store)["metrics"]


def test_a_resent_message_with_another_value_is_a_conflict_and_reingest_is_a_no_op(store: Store) -> None:
    data = readings(24)
    first = ingest_hl7(store, hl7_messages(data))
    assert first["added"] == 24
    again = ingest_hl7(store, hl7_messages(data))
    assert (again["added"], again["already_present"], again["conflicts"]) == (0, 24, 0)
    changed = [(moment, value + 1 if i == 5 else value) for i, (moment, value) in enumerate(data)]
    resent = ingest_hl7(store, hl7_messages(changed))
    assert (resent["added"], resent["conflicts"]) == (0, 1)
    with store.transaction() as session:
        conflict = session.scalars(select(ReadingConflict)).one()
        stored = session.get(Reading, conflict.reading_id)
        assert stored is not None
        assert (stored.value_original, conflict.incoming_value) == (data[5][1], data[5][1] + 1)
    assert ingest_fhir(store, fhir_ndjson(data))["added"] == 24
    assert ingest_fhir(store, fhir_ndjson(data))["added"] == 0
