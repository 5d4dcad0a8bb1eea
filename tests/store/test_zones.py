"""A patient's zone and how it is known (bff.store.zones): never a silent UTC; a change is a new outcome version.

Hand-computed cases: America/New_York is UTC−5 (−300 min) in winter and UTC−4 (−240) in summer; in 2024 DST began
on 10 March at 02:00 local (a 23-hour day) and ended on 3 November at 02:00 local (a 25-hour day).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bff.ingest.records import Feed, FeedReading, PatientRef
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.models import OutcomeWindow, Patient
from bff.store.outcomes import OutcomeService
from bff.store.zones import consistent, infer
from engine import GlucoseUnit, WindowSpec

NOW = datetime(2024, 12, 1, tzinfo=UTC)
JAN = int(datetime(2024, 1, 15, 12, tzinfo=UTC).timestamp() * 1000)
JUL = int(datetime(2024, 7, 15, 12, tzinfo=UTC).timestamp() * 1000)


def test_offsets_across_a_dst_change_point_to_new_york() -> None:
    evidence = {"-300": [JAN, JAN], "-240": [JUL, JUL]}
    assert consistent("America/New_York", evidence)
    assert not consistent("America/Chicago", evidence)  # −360/−300
    assert not consistent("America/Bogota", evidence)  # −300 all year
    assert infer(evidence) == "America/New_York"


def test_inferring_many_patients_zones_reads_each_zone_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference tries every candidate zone per patient: the rules are loaded once per process, not per try."""
    import zoneinfo._common  # noqa: PLC0415

    infer({"-300": [JAN, JAN], "-240": [JUL, JUL]})  # the zones tried for such offsets, loaded once
    infer({"60": [JAN, JAN], "120": [JUL, JUL]})
    loads = 0
    real = zoneinfo._common.load_data

    def counted(fobj: object) -> object:
        nonlocal loads
        loads += 1
        return real(fobj)  # type: ignore[arg-type]

    monkeypatch.setattr(zoneinfo._common, "load_data", counted)
    for n in range(50):  # fifty patients, each with offsets of its own
        assert infer({"-300": [JAN + n, JAN + n], "-240": [JUL + n, JUL + n]}) == "America/New_York"
        # Central European offsets: Paris is the first of the preferred zones they fit.
        assert infer({"60": [JAN + n, JAN + n], "120": [JUL + n, JUL + n]}) == "Europe/Paris"
    assert loads == 0


def test_a_zone_the_site_prefers_wins_among_equals_and_contradicting_offsets_infer_nothing() -> None:
    winter_only = {"-300": [JAN, JAN]}
    assert infer(winter_only) == "America/New_York"  # New York, Bogota, Lima … agree: the most used one
    assert infer(winter_only, prefer=["America/Bogota"]) == "America/Bogota"
    assert infer({"-300": [JUL, JUL], "+60": [JUL + 3_600_000, JUL + 3_600_000]}) is None
    assert infer({}) is None


def readings(start: datetime, hours: int, zone_offset: int | None, patient: str = "M1", **extra: str) -> list:
    out = []
    for i in range(hours * 12):
        moment = start + timedelta(minutes=5 * i)
        out.append(
            FeedReading(
                patient=PatientRef("mrn", patient), time_ms=int(moment.timestamp() * 1000), value=100.0 + i % 50,
                unit=GlucoseUnit.MG_DL, device="dexcom-g6", record_key=f"{patient}-{i}-{start.date()}",
                utc_offset_min=zone_offset, **extra,
            )
        )  # fmt: skip
    return out


def ingest(store: Store, items: list, **kwargs: object) -> object:
    return Ingestor(store, clock=lambda: NOW).ingest_items(
        items,
        site="site-a",
        feed=Feed.FHIR,
        source_name="t",
        **kwargs,  # type: ignore[arg-type]
    )


def patient(store: Store, public_id: str = "site:site-a:mrn|M1") -> Patient:
    with store.transaction() as session:
        found = session.scalar(select(Patient).where(Patient.public_id == public_id))
        assert found is not None
        return found


def test_without_any_evidence_the_zone_is_unknown_and_said_so(store: Store) -> None:
    ingest(store, readings(datetime(2024, 1, 15, tzinfo=UTC), 2, None))
    p = patient(store)
    assert (p.tz, p.tz_source) == ("UTC", "unknown")


def test_the_readings_offsets_infer_the_zone(store: Store) -> None:
    ingest(
        store,
        readings(datetime(2024, 1, 15, tzinfo=UTC), 2, -300) + readings(datetime(2024, 7, 15, tzinfo=UTC), 2, -240),
    )
    p = patient(store)
    assert (p.tz, p.tz_source) == ("America/New_York", "inferred")


def test_the_sites_zone_applies_unless_the_offsets_contradict_it(store: Store) -> None:
    ingest(store, readings(datetime(2024, 1, 15, tzinfo=UTC), 2, None), site_zone="America/Chicago")
    assert (patient(store).tz, patient(store).tz_source) == ("America/Chicago", "site")
    # Offsets of −300 in January are New York's (or Bogota's), not Chicago's (−360): the readings win.
    ingest(store, readings(datetime(2024, 1, 16, tzinfo=UTC), 2, -300), site_zone="America/Chicago")
    assert (patient(store).tz, patient(store).tz_source) == ("America/New_York", "inferred")


def test_a_zone_the_feed_states_beats_the_site_and_the_offsets(store: Store) -> None:
    items = readings(datetime(2024, 1, 15, tzinfo=UTC), 2, -300, zone="America/Bogota")
    ingest(store, items, site_zone="America/Chicago")
    assert (patient(store).tz, patient(store).tz_source) == ("America/Bogota", "feed")


def test_a_zone_change_makes_a_new_outcome_version_with_the_reason(store: Store) -> None:
    ingest(store, readings(datetime(2024, 1, 15, tzinfo=UTC), 48, None))
    service = OutcomeService(store)
    window = WindowSpec(start=int(datetime(2024, 1, 15, 5, tzinfo=UTC).timestamp() * 1000),
                        end=int(datetime(2024, 1, 17, 5, tzinfo=UTC).timestamp() * 1000))  # fmt: skip
    first = service.compute("site:site-a:mrn|M1", window)
    assert first.window is not None
    assert (first.window.version, first.window.tz, first.window.reason) == (
        1,
        "UTC",
        "first computation of this window",
    )
    ingest(store, readings(datetime(2024, 1, 20, tzinfo=UTC), 2, None), site_zone="America/New_York")
    with store.transaction() as session:
        stale = session.get(OutcomeWindow, first.window.id)
        assert stale is not None
        assert stale.status == "stale"
        assert stale.stale_reason == "zone changed from UTC (unknown) to America/New_York (site)"
    (again,) = service.recompute_stale()
    assert again.window is not None
    assert (again.window.version, again.window.tz) == (2, "America/New_York")
    assert again.window.reason == "zone changed from UTC to America/New_York"
    assert again.window.input_digest == first.window.input_digest  # same readings, new days


@pytest.mark.parametrize(
    ("day", "hours"),
    [("2024-03-10", 23), ("2024-11-03", 25), ("2024-03-11", 24)],
)
def test_local_days_are_23_and_25_hours_long_across_dst(store: Store, day: str, hours: int) -> None:
    """Readings every 5 minutes for three local days in New York; the DST day holds 23 × 12 or 25 × 12 of them."""
    zone = ZoneInfo("America/New_York")
    begin = datetime.fromisoformat(day).replace(tzinfo=zone) - timedelta(days=1)
    end = datetime.fromisoformat(day).replace(tzinfo=zone) + timedelta(days=2)
    total_hours = int((end - begin).total_seconds() // 3600)
    items = []
    for i in range(total_hours * 12):
        moment = begin.astimezone(UTC) + timedelta(minutes=5 * i)
        offset = moment.astimezone(zone).utcoffset()
        assert offset is not None
        items.append(FeedReading(
            patient=PatientRef("mrn", "DST"), time_ms=int(moment.timestamp() * 1000), value=120.0,
            unit=GlucoseUnit.MG_DL, device="dexcom-g6", record_key=f"dst-{i}",
            utc_offset_min=int(offset.total_seconds() // 60),
        ))  # fmt: skip
    ingest(store, items)
    p = patient(store, "site:site-a:mrn|DST")
    assert p.tz == "America/New_York"
    window = WindowSpec(start=int(begin.timestamp() * 1000), end=int(end.timestamp() * 1000))
    document = OutcomeService(store).compute(p.public_id, window, save=False).report.patients[0].document
    daily = {d["date"]: d["readings"] for d in document["daily"]}
    assert daily[day] == hours * 12, daily
