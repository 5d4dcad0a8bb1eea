"""Reading identity: a reading's key is scoped by site, sender and patient; no reading lands on another patient.

Issue 10, rows 1 and 7: two patients whose messages share an MSH-10 (or whose CSV rows share a `record_id`) both
keep all their readings; a record re-sent for the wrong patient is quarantined, never filed or "already present";
a CSV `patient_id` belongs to the site it is ingested at, and a Dexcom account at two sites is two patients.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import event, func, select

from bff.ingest.csv_feed import CsvParser
from bff.ingest.dexcom import DexcomParser
from bff.ingest.records import Feed, FeedProblem, FeedReading, Parser, PatientRef
from bff.ingest.registry import parser_for
from bff.store.db import Store
from bff.store.ingest import EXTRA_LIMIT, QUARANTINE_FLUSH, Ingestor, IngestReport
from bff.store.models import Patient, QuarantineItem, Reading, ReadingConflict
from bff.store.patients import link_patient
from engine import GlucoseUnit

NOW = datetime(2024, 3, 20, tzinfo=UTC)
START = datetime(2024, 3, 1, 8, tzinfo=UTC)


def ingest(
    store: Store, parser: Parser, data: bytes, *, site: str = "site-a", patient: str | None = None
) -> IngestReport:
    return Ingestor(store, clock=lambda: NOW).ingest(
        parser, io.BytesIO(data), site=site, source_name="test", patient=patient
    )


def oru(control_id: str, mrn: str, values: list[int], *, minutes: int = 0, sender: str = "CGMHUB|HUB") -> bytes:
    """One ORU^R01 message: three OBX readings, 5 minutes apart from START + `minutes`."""
    segments = [
        f"MSH|^~\\&|{sender}|GLUCOBRIDGE|SITE|20240301000000+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||{mrn}^^^SITE^MR||Test^Pat",
        "OBR|1|||99504-3^Glucose^LN",
    ]
    for k, value in enumerate(values, start=1):
        stamp = (START + timedelta(minutes=minutes + 5 * k)).strftime("%Y%m%d%H%M%S") + "+0000"
        segments.append(f"OBX|{k}|NM|99504-3^Glucose^LN||{value}|mg/dL^mg/dL^UCUM|||||F|||{stamp}||||SN1^dexcom-g6")
    return ("\r".join(segments) + "\r").encode()


def readings_of(store: Store, public_id: str) -> list[tuple[int, float]]:
    with store.transaction() as session:
        rows = session.execute(
            select(Reading.observed_ms, Reading.value_mg_dl)
            .join(Patient, Patient.id == Reading.patient_id)
            .where(Patient.public_id == public_id)
            .order_by(Reading.observed_ms)
        ).all()
    return [(int(t), float(v)) for t, v in rows]


def count(store: Store, model: type) -> int:
    with store.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def quarantine_reasons(store: Store) -> list[str]:
    with store.transaction() as session:
        return list(session.scalars(select(QuarantineItem.reason).order_by(QuarantineItem.id)))


# MARK: HL7 v2: the same MSH-10


def test_two_patients_whose_messages_share_a_control_id_both_keep_all_their_readings(store: Store) -> None:
    first = ingest(store, parser_for("hl7v2"), oru("COLL1", "MRN-A", [100, 110, 120]))
    second = ingest(store, parser_for("hl7v2"), oru("COLL1", "MRN-B", [200, 210, 220]))
    assert (first.added, second.added) == (3, 3)
    assert (second.already_present, second.conflicts, second.quarantined) == (0, 0, 0)
    assert [v for _, v in readings_of(store, "site:site-a:mrn:SITE|MRN-A")] == [100, 110, 120]
    assert [v for _, v in readings_of(store, "site:site-a:mrn:SITE|MRN-B")] == [200, 210, 220]
    assert count(store, ReadingConflict) == 0


def test_two_senders_that_reuse_a_control_id_for_one_patient_are_two_records(store: Store) -> None:
    ingest(store, parser_for("hl7v2"), oru("M1", "MRN-A", [100, 110, 120], sender="HUB1|F1"))
    later = ingest(store, parser_for("hl7v2"), oru("M1", "MRN-A", [130, 140, 150], minutes=60, sender="HUB2|F2"))
    assert (later.added, later.conflicts) == (3, 0)
    assert len(readings_of(store, "site:site-a:mrn:SITE|MRN-A")) == 6


def test_a_message_resent_for_the_wrong_patient_is_quarantined_not_already_present(store: Store) -> None:
    ingest(store, parser_for("hl7v2"), oru("M7", "MRN-A", [100, 110, 120]))
    resent = ingest(store, parser_for("hl7v2"), oru("M7", "MRN-B", [100, 110, 120]))
    assert (resent.added, resent.already_present, resent.quarantined) == (0, 0, 3)
    assert readings_of(store, "site:site-a:mrn:SITE|MRN-B") == []
    assert len(readings_of(store, "site:site-a:mrn:SITE|MRN-A")) == 3
    reasons = quarantine_reasons(store)
    assert len(reasons) == 3
    assert all("already filed for patient site:site-a:mrn:SITE|MRN-A" in r for r in reasons)
    assert all("wrong patient" in r for r in reasons)


def test_the_wrong_patient_resend_inside_one_file_is_caught_too(store: Store) -> None:
    data = oru("M9", "MRN-A", [90, 95, 99]) + b"\r\n" + oru("M9", "MRN-B", [90, 95, 99])
    report = ingest(store, parser_for("hl7v2"), data)
    assert (report.added, report.quarantined) == (3, 3)
    assert readings_of(store, "site:site-a:mrn:SITE|MRN-B") == []


def test_a_resend_for_the_right_patient_stays_already_present(store: Store) -> None:
    ingest(store, parser_for("hl7v2"), oru("M3", "MRN-A", [100, 110, 120]))
    again = ingest(store, parser_for("hl7v2"), oru("M3", "MRN-A", [100, 110, 120]))
    assert (again.added, again.already_present, again.quarantined) == (0, 3, 0)


# MARK: CSV: the same record_id, and site ownership of patient ids

HEADER = "patient_id,time,value,unit,device,record_id\n"


def csv_rows(*rows: tuple[str, str, int, str]) -> bytes:
    return (HEADER + "".join(f"{p},{t},{v},mg/dL,dexcom-g6,{r}\n" for p, t, v, r in rows)).encode()


def test_two_patients_whose_rows_share_a_record_id_both_keep_their_readings(store: Store) -> None:
    data = csv_rows(("PA", "2024-03-01T08:00:00Z", 120, "1"), ("PB", "2024-03-01T08:02:00Z", 140, "1"))
    report = ingest(store, CsvParser(), data)
    assert (report.added, report.already_present, report.quarantined) == (2, 0, 0)
    assert [v for _, v in readings_of(store, "PA")] == [120]
    assert [v for _, v in readings_of(store, "PB")] == [140]


def test_a_csv_patient_id_of_another_site_is_quarantined_and_that_patient_untouched(store: Store) -> None:
    ingest(store, CsvParser(), csv_rows(("P1", "2024-03-01T08:00:00Z", 120, "a1")), site="site-a")
    other = ingest(store, CsvParser(), csv_rows(("P1", "2024-03-01T09:00:00Z", 180, "b1")), site="site-b")
    assert (other.added, other.quarantined) == (0, 1)
    assert [v for _, v in readings_of(store, "P1")] == [120]
    (reason,) = quarantine_reasons(store)
    assert "belongs to site site-a, not site-b" in reason
    assert "glucobridge patient link P1 --site site-b" in reason


def test_patient_option_naming_another_sites_patient_is_refused(store: Store) -> None:
    ingest(store, CsvParser(), csv_rows(("P1", "2024-03-01T08:00:00Z", 120, "a1")), site="site-a")
    egvs = dexcom_egvs("user-1", [150])
    report = ingest(store, DexcomParser(), egvs, site="site-b", patient="P1")
    assert (report.added, report.quarantined) == (0, 1)
    assert [v for _, v in readings_of(store, "P1")] == [120]


def test_an_explicit_link_lets_a_second_site_feed_the_patient(store: Store) -> None:
    ingest(store, CsvParser(), csv_rows(("P1", "2024-03-01T08:00:00Z", 120, "a1")), site="site-a")
    link_patient(store, "P1", "site-b", who="A. Engineer", reason="same person, confirmed by MRN")
    report = ingest(store, CsvParser(), csv_rows(("P1", "2024-03-01T09:00:00Z", 180, "b1")), site="site-b")
    assert (report.added, report.quarantined) == (1, 0)
    assert [v for _, v in readings_of(store, "P1")] == [120, 180]


# MARK: Dexcom: the account belongs to the site


def dexcom_egvs(user: str, values: list[int]) -> bytes:
    records = [
        {
            "recordId": f"rec-{i}",
            "systemTime": (START + timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%S"),
            "displayTime": (START + timedelta(minutes=5 * i)).strftime("%Y-%m-%dT%H:%M:%S-05:00"),
            "value": value,
            "unit": "mg/dL",
            "status": None,
            "transmitterGeneration": "g6",
            "transmitterId": "TX1",
        }
        for i, value in enumerate(values)
    ]
    return json.dumps({"recordType": "egv", "recordVersion": "3.0", "userId": user, "records": records}).encode()


def test_one_dexcom_account_fed_at_two_sites_is_two_patients(store: Store) -> None:
    a = ingest(store, DexcomParser(), dexcom_egvs("user-1", [100, 110]), site="site-a")
    b = ingest(store, DexcomParser(), dexcom_egvs("user-1", [100, 110]), site="site-b")
    assert (a.added, b.added, b.quarantined) == (2, 2, 0)
    assert len(readings_of(store, "site:site-a:dexcom-user|user-1")) == 2
    assert len(readings_of(store, "site:site-b:dexcom-user|user-1")) == 2


# MARK: bounds: details and reasons


def test_a_reading_with_huge_details_is_quarantined_not_stored(store: Store) -> None:
    huge = FeedReading(
        patient=PatientRef("mrn", "M1"),
        time_ms=int(START.timestamp() * 1000),
        value=120.0,
        unit=GlucoseUnit.MG_DL,
        record_key="r1",
        extra={"trend": "x" * (EXTRA_LIMIT + 1)},
    )
    report = Ingestor(store, clock=lambda: NOW).ingest_items([huge], site="site-a", feed=Feed.DEXCOM, source_name="t")
    assert (report.added, report.quarantined) == (0, 1)
    (reason,) = quarantine_reasons(store)
    assert f"over the limit of {EXTRA_LIMIT:,}" in reason


def test_bad_records_are_quarantined_in_sets_not_one_statement_each(store: Store) -> None:
    """Row 9: quarantine is batched. 5,000 bad rows cost a handful of statements, and all are kept."""
    statements: list[str] = []

    def count_statement(*args: object) -> None:
        statements.append(str(args[2])[:30])

    bad = HEADER + "".join(f"P1,not-a-time-{i},120,mg/dL,dexcom-g6,r{i}\n" for i in range(5000))
    event.listen(store.engine, "before_cursor_execute", count_statement)
    try:
        report = ingest(store, CsvParser(), bad.encode())
    finally:
        event.remove(store.engine, "before_cursor_execute", count_statement)
    assert report.quarantined == 5000
    assert count(store, QuarantineItem) == 5000
    touching = [s for s in statements if "quarantine" in s.lower()]
    sets = 5000 // QUARANTINE_FLUSH + 1
    assert len(touching) <= 2 * sets + 2, touching  # one upsert (PostgreSQL: and one clearing of staging) per set


def test_the_same_bad_record_twice_is_one_quarantine_row_seen_twice(store: Store) -> None:
    bad = (HEADER + "P1,nonsense,120,mg/dL,dexcom-g6,r1\n").encode()
    ingest(store, CsvParser(), bad)
    ingest(store, CsvParser(), bad)
    with store.transaction() as session:
        (item,) = session.scalars(select(QuarantineItem)).all()
        assert item.seen_count == 2


def test_an_instant_outside_any_calendar_is_quarantined_with_its_raw_value(store: Store) -> None:
    """A feed that hands the store an instant beyond year 9999 (or before year 1) gets a reason, not a crash."""
    far = FeedReading(
        patient=PatientRef("mrn", "M1"), time_ms=10**15, value=120.0, unit=GlucoseUnit.MG_DL, record_key="far"
    )
    before = FeedReading(
        patient=PatientRef("mrn", "M1"), time_ms=-(10**15), value=120.0, unit=GlucoseUnit.MG_DL, record_key="old"
    )
    report = Ingestor(store, clock=lambda: NOW).ingest_items(
        [far, before], site="site-a", feed=Feed.HL7V2, source_name="t"
    )
    assert (report.added, report.quarantined) == (0, 2)
    reasons = quarantine_reasons(store)
    assert any("1000000000000000 ms since 1970" in r and "in the future" in r for r in reasons)
    assert any("-1000000000000000 ms since 1970" in r and "before 2000" in r for r in reasons)


def test_a_long_identifier_makes_a_bounded_public_id_and_nul_is_kept_visible(store: Store) -> None:
    """An identifier of 256 characters (the parsers' bound) makes a public id within the column; a NUL in a
    quarantined record (PostgreSQL text cannot hold one) is kept as \\x00; a stream label over 128 is refused."""
    long_mrn = "M" * 256
    good = FeedReading(
        patient=PatientRef("mrn", long_mrn), time_ms=int(START.timestamp() * 1000), value=120.0,
        unit=GlucoseUnit.MG_DL, record_key="r1",
    )  # fmt: skip
    bad = FeedProblem("line 2", "a NUL\x00 in the reason", "raw\x00bytes")
    wide = FeedReading(
        patient=PatientRef("mrn", "M3"), time_ms=int(START.timestamp() * 1000), value=120.0,
        unit=GlucoseUnit.MG_DL, record_key="r3", stream="S" * 129,
    )  # fmt: skip
    report = Ingestor(store, clock=lambda: NOW).ingest_items(
        [good, bad, wide], site="site-a", feed=Feed.HL7V2, source_name="t"
    )
    assert (report.added, report.quarantined) == (1, 2)
    with store.transaction() as session:
        (public,) = session.scalars(select(Patient.public_id).where(Patient.public_id.like("site:site-a:mrn|M%~%")))
        payloads = list(session.scalars(select(QuarantineItem.payload)))
    assert len(public) <= 128
    assert "raw\\x00bytes" in payloads
    assert any("stream label" in r for r in quarantine_reasons(store))
