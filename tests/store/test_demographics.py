"""What the EHR says of a patient and of the signer: kept for the chart artefacts, and the patient's zone (ehr)."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event

from bff.audit import recent
from bff.clinical import PatientOutcomesView
from bff.ehr_read import patient_zone, person_display
from bff.ingest.records import Feed, FeedReading, PatientRef
from bff.ingest.registry import parser_for
from bff.store.db import Store
from bff.store.ingest import Ingestor
from engine import GlucoseUnit
from tests.store.feeds import fhir_ndjson, readings


def test_a_practitioner_is_named_with_credentials() -> None:
    resource = {
        "resourceType": "Practitioner",
        "name": [{"use": "official", "prefix": ["Dr."], "given": ["Dana", "J."], "family": "Smith", "suffix": ["MD"]}],
        "qualification": [{"code": {"coding": [{"code": "MD"}]}}, {"code": {"text": "CDCES"}}],
    }
    assert person_display(resource) == "Dana J. Smith, MD, CDCES"
    assert person_display({"name": [{"text": "Jun Takahashi, RN"}]}) == "Jun Takahashi, RN"
    assert person_display({"resourceType": "Practitioner"}) is None


def test_a_zone_is_read_only_from_a_known_extension_and_a_real_zone() -> None:
    ext = "http://hl7.org/fhir/StructureDefinition/tz-code"
    assert patient_zone({"extension": [{"url": ext, "valueCode": "America/Chicago"}]}) == "America/Chicago"
    assert patient_zone({"extension": [{"url": ext, "valueCode": "Mars/Olympus"}]}) is None
    assert patient_zone({"extension": [{"url": "urn:other", "valueCode": "America/Chicago"}]}) is None
    assert patient_zone({}) is None


def test_the_ehrs_zone_is_explicit_and_its_names_are_kept(store: Store) -> None:
    Ingestor(store, clock=lambda: datetime(2024, 3, 20, tzinfo=UTC)).ingest(
        parser_for("fhir"), io.BytesIO(fhir_ndjson(readings(24))), site="site-a", source_name="t",
        site_zone="America/Denver",
    )  # fmt: skip
    view = PatientOutcomesView(store)
    public = view.public_id("site-a", "Patient/fhir-1")
    assert public is not None
    assert view.zone(public).source in ("site", "inferred")
    change = view.remember(
        "site-a", "Patient/fhir-1",
        {"name": "Avery Quinn", "birth_date": "1968-04-02", "mrn": "884422", "time_zone": "America/Chicago"},
    )  # fmt: skip
    assert change is not None
    assert change.endswith("to America/Chicago (ehr)")
    assert (view.zone(public).name, view.zone(public).source) == ("America/Chicago", "ehr")
    # The site's default never overrides what the EHR said.
    Ingestor(store).ingest(parser_for("fhir"), io.BytesIO(fhir_ndjson(readings(24))), site="site-a",
                           source_name="t2", site_zone="America/Denver")  # fmt: skip
    assert view.zone(public).source == "ehr"


def test_a_views_reads_keep_what_the_ehr_says_and_show_the_outcome_in_the_new_zone(store: Store) -> None:
    """`for_launch` (what one view reads, in two transactions) does what `remember`, `zone` and `outcome` did one
    after the other: the EHR's zone is kept first, so the outcome shown is the one for that zone."""
    Ingestor(store, clock=lambda: datetime(2024, 3, 20, tzinfo=UTC)).ingest(
        parser_for("fhir"), io.BytesIO(fhir_ndjson(readings(24))), site="site-a", source_name="t",
        site_zone="America/Denver",
    )  # fmt: skip
    view = PatientOutcomesView(store)
    assert view.for_launch("site-a", "Patient/nobody", None, 14) is None
    seen = view.for_launch("site-a", "Patient/fhir-1", {"name": "Avery Quinn", "time_zone": "America/Chicago"}, 14)
    assert seen is not None
    public, zone, shown = seen
    assert public == view.public_id("site-a", "Patient/fhir-1")
    assert (zone.name, zone.source) == ("America/Chicago", "ehr")
    assert shown is not None
    assert shown.document["tz"] == "America/Chicago"
    assert shown.document == view.outcome(public, 14).document  # type: ignore[union-attr]
    again = view.for_launch("site-a", "Patient/fhir-1", None, 14)  # now stored: read, not computed
    assert again is not None
    assert again[2] is not None
    assert again[2].computed_at == view.outcome(public, 14).computed_at  # type: ignore[union-attr]
    other = view.for_launch("site-a", "Patient/fhir-1", None, 7)  # not a standard period: computed on request
    assert other is not None
    assert other[2] is not None
    assert other[2].computed_at is None


def test_a_launch_finds_a_patient_known_only_by_mrn_and_remembers_its_fhir_id(store: Store) -> None:
    """Readings keyed by an MRN (an HL7 v2 results feed); the EHR's launch names the Patient by its FHIR id and gives
    the MRN among its identifiers: the view finds the patient by the MRN once (audited), and by the FHIR id after."""
    start = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp() * 1000)
    items = [FeedReading(patient=PatientRef("mrn:urn:oid:1.2.3", "884422"), time_ms=start + i * 300_000,
                         value=100.0 + i % 50, unit=GlucoseUnit.MG_DL, device="dexcom-g6", record_key=f"r-{i}")
             for i in range(288)]  # fmt: skip
    Ingestor(store, clock=lambda: datetime(2024, 3, 2, tzinfo=UTC)).ingest_items(
        items, site="site-a", feed=Feed.HL7V2, source_name="t"
    )
    view = PatientOutcomesView(store)
    assert view.for_launch("site-a", "Patient/e123", {"identifiers": "urn:oid:9.9|884422"}, 14) is None  # other system
    seen = view.for_launch("site-a", "Patient/e123", {"identifiers": "urn:oid:1.2.3|884422"}, 14)
    assert seen is not None
    assert seen[2] is not None
    assert seen[2].document["metrics"]["readings_used"] == 288
    assert view.public_id("site-a", "Patient/e123") == seen[0]  # remembered
    again = view.for_launch("site-a", "Patient/e123", None, 14)
    assert again is not None
    assert again[0] == seen[0]
    assert [e.event for e in recent(store, 50)].count("patient.identified") == 1


def test_a_view_whose_banner_says_nothing_new_reads_one_statement_and_writes_nothing(store: Store) -> None:
    """The view's hot path (`for_launch_in`): the patient and its stored outcome in one SELECT. A banner that says
    something new (a name, an MRN, a zone stated by the EHR) is remembered first, as before; the same banner again
    takes the one statement and changes nothing."""
    Ingestor(store, clock=lambda: datetime(2024, 3, 20, tzinfo=UTC)).ingest(
        parser_for("fhir"), io.BytesIO(fhir_ndjson(readings(24))), site="site-a", source_name="t",
        site_zone="America/Denver",
    )  # fmt: skip
    view = PatientOutcomesView(store)
    assert view.for_launch("site-a", "Patient/fhir-1", None, 14) is not None  # the outcome stored
    statements: list[str] = []

    def seen(banner: dict[str, str] | None) -> tuple[str, str, bool]:
        statements.clear()
        with store.transaction() as session:
            found = view.for_launch_in(session, "site-a", "Patient/fhir-1", banner, 14)
        assert found is not None
        return found[1].name, found[1].source, found[2].stale

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split(maxsplit=1)[0].upper())

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        banner = {"name": "Avery Quinn", "mrn": "884422", "birth_date": "1968-04-02"}
        assert seen(banner)[2] is False
        assert "UPDATE" in statements  # new to the store: remembered
        assert seen(banner)[2] is False
        assert statements == ["SELECT"]  # the same banner: one statement, no write
        assert seen(None)[2] is False
        assert statements == ["SELECT"]
        # A zone the EHR states is applied (the stored outcome then shows stale, with the reason), once.
        moved = {**banner, "time_zone": "America/Chicago"}
        assert seen(moved) == ("America/Chicago", "ehr", True)
        assert "UPDATE" in statements
        assert seen(moved) == ("America/Chicago", "ehr", True)
        assert statements == ["SELECT"]
        # A shorter banner keeps what the store holds (the EHR did not say it again).
        assert seen({"name": "Avery Quinn"}) == ("America/Chicago", "ehr", True)
        assert statements == ["SELECT"]
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    public = view.public_id("site-a", "Patient/fhir-1")
    assert public is not None
    assert (view.zone(public).name, view.zone(public).source) == ("America/Chicago", "ehr")
