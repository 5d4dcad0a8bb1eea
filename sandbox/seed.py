"""Seed data: the same six synthetic people at every site, each with site-specific ids and MRNs.

Why the same people everywhere: outcomes for one person must come out the same whatever EHR they are read
from, so a demo can compare sites; and like real EHRs each site gives them its own Patient ids and MRNs (FHIR
ids are unique only together with the FHIR base, ehr-realities.md §1.1). Ids follow the site's style (Epic-like
opaque "e…3", Oracle-like numbers, UUIDs elsewhere) and are derived by hashing (site, kind, key), so they are
the same on every start. Readings are generated once per person (sandbox.glucose) and shared by the sites;
only their FHIR shape differs (flowsheet row + vital-signs on epic-like, laboratory elsewhere).

| key | person | what it is for | glucose story |
| --- | --- | --- | --- |
| p1 | Avery Quinn | typical: Dexcom G6, mg/dL, America/Chicago | type 1 on a pump, typical |
| p2 | Mateo Lindqvist | **mmol/L** (LOINC 105272-9): FreeStyle Libre 3, America/Toronto | type 2 on basal, controlled |
| p3 | Harper Okafor | **DST**: Dexcom G7, America/New_York; the window spans a DST change | type 1, runs high |
| p4 | Rowan Delacroix | **no CGM data**: a patient with encounters only | |
| p5 | Sam Whitfield | Dexcom G6, a sensor that failed early (30 h gap); **no open encounter** | type 1, poor control |
| p6 | Jun Takahashi | lows: FreeStyle Libre 2 (15-min readings), America/Phoenix | type 1, nocturnal lows |

Each person's `TraceProfile` makes their story (sandbox.glucose); sandbox/README.md has the metrics the engine
finds (tests/sandbox/test_glucose_realism.py checks them). Every Patient carries the person's IANA zone in
PATIENT_TIME_ZONE_EXTENSION (its comment says why that is not the core tz-code).

Each person's 90 days end at the local midnight that starts "today" (relative to the configured `now`), so the
data look current. The DST person (p3) keeps that window when it contains a New York DST change; otherwise
the window is moved back to centre on the most recent change (its data then end earlier). Everyone has three
past office visits (finished) and, except p5, an open visit today, which is the encounter of an EHR launch.
Each sensor session is a Device. Each site also has three Practitioners and a Group of all patients; the
cgm-receiver site has a CGM IG standing order (ServiceRequest) for each person with CGM data.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from engine.devices import DEVICES
from sandbox.glucose import (
    DAY_MS,
    FLAG_HIGH,
    FLAG_LOW,
    MANUFACTURERS,
    Trace,
    TraceProfile,
    cgm_trace,
    dst_changes_ms,
    local_midnight_ms,
)
from sandbox.personalities import FLOWSHEET_ROWS, FLOWSHEET_SYSTEM, IdStyle, Personality

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
#: Vendor record ids of the readings (like Dexcom's recordId): the same at every site for the same reading.
READING_ID_SYSTEM = "https://sandbox.glucobridge.example/cgm/record-id"
DEVICE_SERIAL_SYSTEM = "https://sandbox.glucobridge.example/cgm/sensor-serial"
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
#: The patient's home time zone (IANA, `valueCode`), so an app can read it from the EHR. The core `tz-code`
#: extension, as EHRs that state a patient's zone put it on Patient (Canvas, for one), although its context is a
#: date, dateTime or instant (R4; the extensions pack retires it for `.../timezone`) and neither US Core nor the
#: CGM IG defines a zone on Patient. glucobridge reads both URLs (bff/ehr_read.py).
PATIENT_TIME_ZONE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/tz-code"
TEST_TAG = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST", "display": "test data"}
READING_CODES = {
    "mg/dL": ("99504-3", "Glucose [Mass/volume] in Interstitial fluid"),
    "mmol/L": ("105272-9", "Glucose [Moles/volume] in Interstitial fluid"),
}
IG_READING_PROFILES = {
    "mg/dL": "http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-mass-per-volume",
    "mmol/L": "http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-sensor-reading-moles-per-volume",
}
#: Vendor upload delay: a reading appears in the EHR this long after it was taken (Dexcom: 3 h, §5.3).
UPLOAD_DELAY_MS = 3 * 3600 * 1000
ID_NAMESPACE = uuid.UUID("6c1f3a52-9a0e-4d0c-8a8e-2f2b7c6f1e01")


@dataclass(frozen=True, slots=True)
class Person:
    """A synthetic person and their CGM set-up."""

    key: str
    given: str
    family: str
    gender: str
    birth_date: str
    zone: str
    device: str | None
    unit: str = "mg/dL"
    profile: TraceProfile = field(default_factory=TraceProfile)
    open_encounter: bool = True
    dst_window: bool = False
    failed_sensor_day: int | None = None  # days after the window start
    about: str = ""
    #: A span without a sensor (days), ending this many days before the window's end: low wear, or no recent data.
    off_sensor: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"


PEOPLE: tuple[Person, ...] = (
    Person(
        "p1",
        "Avery",
        "Quinn",
        "female",
        "1986-04-12",
        "America/Chicago",
        "dexcom-g6",
        profile=TraceProfile(
            level_mg_dl=120.0,
            day_spread=0.15,
            wander_spread=0.20,
            wander_tau_min=180.0,
            dawn_mg_dl=15.0,  # the pump's basal profile covers most of it
            meal_mg_dl=(85.0, 55.0, 90.0),
            meal_spread=0.45,
            missed_bolus=0.08,
            correction=0.85,
            snacks_per_day=0.5,
            exercise_per_week=2.5,
            night_lows_per_week=0.7,
            day_lows_per_week=2.0,
            deep_low_share=0.15,
        ),
        about="type 1 on a pump, typical control; Dexcom G6, mg/dL",
    ),
    Person(
        "p2",
        "Mateo",
        "Lindqvist",
        "male",
        "1971-09-30",
        "America/Toronto",
        "libre-3",
        unit="mmol/L",
        profile=TraceProfile(
            level_mg_dl=120.0,
            day_spread=0.09,
            wander_spread=0.10,
            wander_tau_min=180.0,
            dawn_mg_dl=10.0,
            meal_minutes=(420.0, 720.0, 1080.0),
            meal_mg_dl=(75.0, 50.0, 80.0),  # no mealtime insulin: slower rises
            meal_spread=0.35,
            meal_peak_min=(75.0, 120.0),
            missed_bolus=0.0,
            correction=0.0,
            snacks_per_day=0.6,
            exercise_per_week=3.0,
            exercise_mg_dl=(15.0, 35.0),
            night_lows_per_week=0.1,
            day_lows_per_week=0.1,
            deep_low_share=0.0,
            noise_sd_mg_dl=4.0,
        ),
        about="type 2 on basal insulin, well controlled; mmol/L readings (LOINC 105272-9), FreeStyle Libre 3",
    ),
    Person(
        "p3",
        "Harper",
        "Okafor",
        "female",
        "1994-01-22",
        "America/New_York",
        "dexcom-g7",
        profile=TraceProfile(
            level_mg_dl=135.0,
            day_spread=0.17,
            wander_spread=0.20,
            wander_tau_min=180.0,
            dawn_mg_dl=30.0,
            meal_mg_dl=(95.0, 65.0, 100.0),
            meal_spread=0.4,
            missed_bolus=0.15,
            correction=0.7,
            exercise_per_week=1.5,
            night_lows_per_week=0.7,
            day_lows_per_week=1.5,
        ),
        dst_window=True,
        about="type 1 on injections, above target; window spans a DST change (America/New_York), Dexcom G7",
    ),
    Person("p4", "Rowan", "Delacroix", "male", "1962-06-05", "America/Denver", None, about="no CGM data"),
    Person(
        "p5",
        "Sam",
        "Whitfield",
        "male",
        "1979-11-17",
        "America/Los_Angeles",
        "dexcom-g6",
        profile=TraceProfile(
            level_mg_dl=155.0,
            day_spread=0.16,
            wander_spread=0.30,
            wander_tau_min=180.0,
            dawn_mg_dl=35.0,
            meal_jitter_min=45.0,
            meal_skip=(0.35, 0.15, 0.05),
            meal_mg_dl=(130.0, 95.0, 150.0),
            meal_spread=0.55,
            missed_bolus=0.35,
            correction=0.7,
            snacks_per_day=0.8,
            exercise_per_week=0.5,
            night_lows_per_week=0.8,
            day_lows_per_week=2.0,
            noise_sd_mg_dl=6.0,
        ),
        open_encounter=False,
        failed_sensor_day=52,
        about="type 1, poor control (missed boluses, corrections); a failed sensor (30 h gap), no open encounter",
    ),
    Person(
        "p6",
        "Jun",
        "Takahashi",
        "female",
        "2001-03-08",
        "America/Phoenix",
        "libre-2",
        profile=TraceProfile(
            level_mg_dl=105.0,
            day_spread=0.12,
            wander_spread=0.14,
            wander_tau_min=150.0,
            meal_minutes=(510.0, 780.0, 1170.0),
            meal_mg_dl=(85.0, 55.0, 90.0),
            meal_spread=0.45,
            correction=0.9,
            exercise_per_week=2.0,
            exercise_mg_dl=(25.0, 55.0),
            night_lows_per_week=5.5,  # basal too strong at night
            day_lows_per_week=1.0,
            deep_low_share=0.1,
        ),
        about="type 1 on injections, tight control with nocturnal lows; FreeStyle Libre 2 (15-min readings)",
    ),
)

# MARK: a population


GIVEN = (("Olivia", "female"), ("Liam", "male"), ("Amara", "female"), ("Noah", "male"), ("Sofia", "female"),
         ("Ethan", "male"), ("Priya", "female"), ("Lucas", "male"), ("Zara", "female"), ("Omar", "male"),
         ("Grace", "female"), ("Diego", "male"), ("Leila", "female"), ("Kenji", "male"), ("Nora", "female"),
         ("Samuel", "male"), ("Aisha", "female"), ("Mateus", "male"), ("Elena", "female"), ("Tariq", "male"),
         ("Hannah", "female"), ("Ravi", "male"), ("Chloe", "female"), ("Felix", "male"), ("Ingrid", "female"),
         ("Kwame", "male"), ("Mei", "female"), ("Jonah", "male"), ("Rosa", "female"), ("Arjun", "male"),
         ("Jordan", "other"), ("Riley", "other"))  # fmt: skip
FAMILY = ("Adeyemi", "Bergstrom", "Castillo", "Dubois", "Eriksen", "Fontaine", "Garcia", "Haddad", "Ivanova",
          "Jensen", "Kowalski", "Lindgren", "Mensah", "Nakamura", "Ortega", "Petrov", "Quintero", "Rossi",
          "Sato", "Tremblay", "Underwood", "Varga", "Whitaker", "Xu", "Yilmaz", "Zhang", "Abernathy", "Bianchi",
          "Chowdhury", "Delgado", "Engel", "Fitzgerald", "Gallagher", "Hoffman", "Iqbal", "Janssen")  # fmt: skip
#: (zone, share): where a population lives; Canadian zones report mmol/L.
ZONES = (("America/New_York", 0.3), ("America/Chicago", 0.22), ("America/Denver", 0.08), ("America/Phoenix", 0.05),
         ("America/Los_Angeles", 0.2), ("America/Toronto", 0.08), ("America/Vancouver", 0.04),
         ("Pacific/Honolulu", 0.03))  # fmt: skip
MMOL_ZONES = frozenset({"America/Toronto", "America/Vancouver"})
DEVICE_SHARES = (("dexcom-g6", 0.3), ("dexcom-g7", 0.3), ("libre-2", 0.15), ("libre-3", 0.25))
#: Kinds of patient a care manager triages (name, share, TraceProfile, what it is): ranges the draws vary around.
KINDS: tuple[tuple[str, float, TraceProfile], ...] = (
    ("type 2, controlled", 0.3, TraceProfile(level_mg_dl=120.0, day_spread=0.1, wander_spread=0.16,
                                               meal_mg_dl=(70.0, 50.0, 80.0), missed_bolus=0.0,
                                               night_lows_per_week=0.05, day_lows_per_week=0.2)),
    ("type 1, typical", 0.3, TraceProfile()),
    ("type 1, runs high", 0.2, TraceProfile(level_mg_dl=165.0, meal_mg_dl=(95.0, 70.0, 100.0), missed_bolus=0.2,
                                             correction=0.5, night_lows_per_week=0.1, day_lows_per_week=0.3)),
    ("type 1, frequent lows", 0.12, TraceProfile(level_mg_dl=110.0, night_lows_per_week=4.0, day_lows_per_week=3.0,
                                                  deep_low_share=0.3)),
    ("type 1, poor control", 0.08, TraceProfile(level_mg_dl=180.0, day_spread=0.25, wander_spread=0.3,
                                                 meal_mg_dl=(110.0, 80.0, 120.0), missed_bolus=0.35, correction=0.4,
                                                 night_lows_per_week=1.5, day_lows_per_week=1.5,
                                                 dropouts_per_day=0.6)),
)  # fmt: skip


def population(n: int, seed: int) -> tuple[Person, ...]:
    """`n` more synthetic people ("c0001", …) for a care manager's cohort: believable variety in control (the
    KINDS), devices, units, zones and wear (sensor dropouts, now and then a sensor that failed). Reproducible from
    (seed, n); the person at index i is the same for every n > i."""
    out = []
    zones, zone_p = zip(*ZONES, strict=True)
    devices, device_p = zip(*DEVICE_SHARES, strict=True)
    kind_p = [k[1] for k in KINDS]
    for i in range(n):
        rng = np.random.default_rng([seed, 7919, i])
        given, gender = GIVEN[int(rng.integers(len(GIVEN)))]
        family = FAMILY[int(rng.integers(len(FAMILY)))]
        zone = str(rng.choice(zones, p=zone_p))
        kind, _share, base = KINDS[int(rng.choice(len(KINDS), p=kind_p))]

        def vary(value: float, spread: float = 0.15, rng: np.random.Generator = rng) -> float:
            return float(value * np.exp(rng.normal(0.0, spread)))

        profile = replace(
            base,
            level_mg_dl=vary(base.level_mg_dl, 0.1),
            meal_mg_dl=(vary(base.meal_mg_dl[0]), vary(base.meal_mg_dl[1]), vary(base.meal_mg_dl[2])),
            night_lows_per_week=vary(base.night_lows_per_week, 0.4),
            day_lows_per_week=vary(base.day_lows_per_week, 0.4),
            dropouts_per_day=vary(base.dropouts_per_day, 0.8),
        )
        born = date(1940, 1, 1) + timedelta(days=int(rng.integers(0, 65 * 365)))
        failed = int(rng.integers(1, 12)) if rng.random() < 0.05 else None
        wear = rng.random()
        off = None
        if wear < 0.04:  # stopped wearing: no data for the last 3–6 days
            off = (float(rng.uniform(3.0, 6.0)), 0.0)
        elif wear < 0.16:  # a sensor left off for days in the last two weeks: wear well under 70 %
            off = (float(rng.uniform(3.5, 8.0)), float(rng.uniform(0.5, 4.0)))
        out.append(Person(f"c{i + 1:04d}", given, family, gender, born.isoformat(), zone,
                          str(rng.choice(devices, p=device_p)), unit="mmol/L" if zone in MMOL_ZONES else "mg/dL",
                          profile=profile, failed_sensor_day=failed, about=kind, off_sensor=off))  # fmt: skip
    return tuple(out)


def people(extra: int, seed: int) -> tuple[Person, ...]:
    """The six people, then a population of `extra` more (sandbox `--population`)."""
    return PEOPLE + population(extra, seed) if extra else PEOPLE


PRACTITIONERS = (
    ("pr1", "Casey", "Endo", "MD", "Endocrinology", "9000000011"),
    ("pr2", "Morgan", "Reyes", "NP", "Diabetes education", "9000000029"),
    ("pr3", "Alex", "Kim", "MD", "Family medicine", "9000000037"),
)
DEVICE_NAMES = {key: DEVICES[key].name for key in ("dexcom-g6", "dexcom-g7", "libre-2", "libre-3")}


# MARK: ids


def site_id(style: IdStyle, site: str, kind: str, key: str) -> str:
    """A stable, site-styled FHIR id for (site, kind, key)."""
    digest = hashlib.sha256(f"{site}/{kind}/{key}".encode()).digest()
    if style is IdStyle.EPIC:
        text = base64.urlsafe_b64encode(digest).decode().rstrip("=").replace("_", ".")
        return "e" + text[:22] + "3"
    if style is IdStyle.NUMERIC:
        return str(10_000_000 + int.from_bytes(digest[:8], "big") % 89_999_999)
    return str(uuid.uuid5(ID_NAMESPACE, f"{site}/{kind}/{key}"))


def mrn_for(style: IdStyle, site: str, person: Person) -> str:
    number = int.from_bytes(hashlib.sha256(f"{site}/mrn/{person.key}".encode()).digest()[:6], "big")
    if style is IdStyle.EPIC:
        return str(200_000 + number % 800_000)
    if style is IdStyle.NUMERIC:
        return f"{number % 100_000_000:08d}"
    return f"GB{number % 1_000_000:06d}"


def iso(ms: int, offset_min: int = 0) -> str:
    """A FHIR dateTime with seconds and the given UTC offset ("Z" for UTC)."""
    tz = UTC if offset_min == 0 else timezone(timedelta(minutes=offset_min))
    text = datetime.fromtimestamp(ms // 1000, tz).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


# MARK: windows and traces


@dataclass(frozen=True, slots=True)
class Window:
    start_ms: int
    end_ms: int


def window_for(person: Person, now: datetime, days: int) -> Window:
    """The person's reading window: `days` local days ending at the local midnight that starts today."""
    zone = ZoneInfo(person.zone)
    today = now.astimezone(zone)
    end = local_midnight_ms(person.zone, today)
    start = local_midnight_ms(person.zone, today - timedelta(days=days))
    if not person.dst_window or dst_changes_ms(person.zone, start, end):
        return Window(start, end)
    # Centre the window on the most recent DST change before it.
    probe = start
    while not dst_changes_ms(person.zone, probe - 200 * DAY_MS, probe):
        probe -= 200 * DAY_MS
    change = dst_changes_ms(person.zone, probe - 200 * DAY_MS, probe)[-1]
    middle = datetime.fromtimestamp(change / 1000, zone) + timedelta(days=days // 2)
    end = local_midnight_ms(person.zone, middle)
    return Window(local_midnight_ms(person.zone, middle - timedelta(days=days)), end)


def traces_for(people: tuple[Person, ...], now: datetime, days: int, seed: int) -> dict[str, Trace]:
    """Each person's readings (people without a device have none). Reproducible from (seed, person, window)."""
    out: dict[str, Trace] = {}
    for number, person in enumerate(people):
        if person.device is None:
            continue
        window = window_for(person, now, days)
        failed = None
        if person.failed_sensor_day is not None:
            failed = (window.start_ms + person.failed_sensor_day * DAY_MS + 13 * 3600 * 1000) // 1000 * 1000
        out[person.key] = cgm_trace(
            np.random.default_rng([seed, number]),
            device=person.device,
            unit=person.unit,
            zone=person.zone,
            start_ms=window.start_ms,
            end_ms=window.end_ms,
            profile=person.profile,
            failed_sensor_at_ms=failed,
        )
        if person.off_sensor is not None:
            off_days, ago = person.off_sensor
            end = window.end_ms - int(ago * DAY_MS)
            trace = out[person.key]
            keep = (trace.time_ms < end - int(off_days * DAY_MS)) | (trace.time_ms >= end)
            out[person.key] = replace(trace, time_ms=trace.time_ms[keep], value=trace.value[keep],
                                      flag=trace.flag[keep], session=trace.session[keep],
                                      offset_min=trace.offset_min[keep])  # fmt: skip
    return out


# MARK: reading blocks


@dataclass
class ReadingBlock:
    """One patient's seeded CGM readings at one site, held as columns; Observations are built on demand.

    Observation ids are `id_prefix` + a 6-digit index; identifiers are READING_ID_SYSTEM|`<person>-<epoch s>`.
    """

    person: Person
    patient_id: str
    trace: Trace
    device_ids: tuple[str, ...]
    code: dict[str, Any]
    category: list[dict[str, Any]]
    id_prefix: str
    now_ms: int
    profiles: tuple[str, ...] = ()
    row_id: str | None = None  # epic-like: the flowsheet row of the readings

    def __len__(self) -> int:
        return len(self.trace)

    @cached_property
    def code_tokens(self) -> frozenset[tuple[str, str]]:
        return frozenset((c.get("system", ""), c.get("code", "")) for c in self.code["coding"])

    @cached_property
    def category_tokens(self) -> frozenset[tuple[str, str]]:
        return frozenset((c.get("system", ""), c.get("code", "")) for cat in self.category for c in cat["coding"])

    def observation_id(self, index: int) -> str:
        return f"{self.id_prefix}{index:06d}"

    def index_of_id(self, rid: str) -> int | None:
        if not rid.startswith(self.id_prefix):
            return None
        rest = rid[len(self.id_prefix) :]
        if len(rest) != 6 or not rest.isdigit():
            return None
        index = int(rest)
        return index if index < len(self) else None

    def record_id(self, index: int) -> str:
        return f"{self.person.key}-{int(self.trace.time_ms[index]) // 1000}"

    def index_of_record_id(self, value: str) -> int | None:
        prefix = f"{self.person.key}-"
        if not value.startswith(prefix) or not value[len(prefix) :].isdigit():
            return None
        ms = int(value[len(prefix) :]) * 1000
        at = int(np.searchsorted(self.trace.time_ms, ms))
        return at if at < len(self) and int(self.trace.time_ms[at]) == ms else None

    def observation(self, index: int) -> dict[str, Any]:
        trace = self.trace
        t = int(trace.time_ms[index])
        value = float(trace.value[index])
        quantity: dict[str, Any] = {
            "value": int(value) if trace.unit == "mg/dL" else value,
            "unit": trace.unit,
            "system": UCUM,
            "code": trace.unit,
        }
        flag = int(trace.flag[index])
        if flag == FLAG_LOW:
            quantity = {"comparator": "<", **quantity}
        elif flag == FLAG_HIGH:
            quantity = {"comparator": ">", **quantity}
        meta: dict[str, Any] = {"versionId": "1", "lastUpdated": iso(min(t + UPLOAD_DELAY_MS, self.now_ms))}
        if self.profiles:
            meta["profile"] = list(self.profiles)
        session = int(trace.session[index])
        return {
            "resourceType": "Observation",
            "id": self.observation_id(index),
            "meta": meta,
            "identifier": [{"system": READING_ID_SYSTEM, "value": self.record_id(index)}],
            "status": "final",
            "category": self.category,
            "code": self.code,
            "subject": {"reference": f"Patient/{self.patient_id}"},
            "effectiveDateTime": iso(t, int(trace.offset_min[index])),
            "valueQuantity": quantity,
            "device": {"reference": f"Device/{self.device_ids[session]}", "display": DEVICE_NAMES[trace.device]},
        }

    def observations(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self.observation(i)


# MARK: one site


@dataclass(frozen=True, slots=True)
class SeededPatient:
    person: Person
    patient_id: str
    mrn: str
    open_encounter_id: str | None


@dataclass(slots=True)
class SiteSeed:
    """What a site starts with: resources as dicts, readings as blocks, and an index for the shell."""

    resources: list[dict[str, Any]]
    blocks: list[ReadingBlock]
    patients: list[SeededPatient]
    practitioner_ids: list[str]


def _category(code: str, display: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBSERVATION_CATEGORY, "code": code, "display": display}], "text": display}]


def _reading_code(personality: Personality, unit: str) -> tuple[dict[str, Any], str | None]:
    loinc, display = READING_CODES[unit]
    coding = [{"system": LOINC, "code": loinc, "display": display}]
    if personality.reading_category != "vital-signs":
        return {"coding": coding, "text": "Glucose by CGM"}, None
    row = next(r for r in FLOWSHEET_ROWS if r.loinc == loinc)
    return {
        "coding": [{"system": FLOWSHEET_SYSTEM, "code": row.row_id, "display": row.name}, *coding],
        "text": row.name,
    }, row.row_id


def build_site(
    site: str,
    personality: Personality,
    traces: dict[str, Trace],
    now: datetime,
    people: tuple[Person, ...] = PEOPLE,
) -> SiteSeed:
    """The seed of one site: Practitioners, Patients, Encounters, Devices, a Group, readings (and orders)."""
    style = personality.id_style

    def rid(kind: str, key: str) -> str:
        return site_id(style, site, kind, key)

    now_ms = int(now.timestamp() * 1000)
    meta = {"versionId": "1", "lastUpdated": iso(now_ms - 30 * DAY_MS), "tag": [TEST_TAG]}
    resources: list[dict[str, Any]] = []
    practitioner_ids = []
    for key, given, family, suffix, specialty, npi in PRACTITIONERS:
        pid = rid("Practitioner", key)
        practitioner_ids.append(pid)
        resources.append(
            {
                "resourceType": "Practitioner",
                "id": pid,
                "meta": meta,
                "active": True,
                "identifier": [{"system": NPI_SYSTEM, "value": npi}],
                "name": [
                    {
                        "use": "official",
                        "family": family,
                        "given": [given],
                        "suffix": [suffix],
                        "text": f"{given} {family}, {suffix}",
                    }
                ],
                "qualification": [{"code": {"text": specialty}}],
            }
        )

    patients: list[SeededPatient] = []
    blocks: list[ReadingBlock] = []
    for number, person in enumerate(people):
        patient_id = rid("Patient", person.key)
        mrn = mrn_for(style, site, person)
        resources.append(
            {
                "resourceType": "Patient",
                "id": patient_id,
                "meta": meta,
                "extension": [{"url": PATIENT_TIME_ZONE_EXTENSION, "valueCode": person.zone}],
                "active": True,
                "identifier": [
                    {
                        "use": "usual",
                        "type": {
                            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                            "text": "MRN",
                        },
                        "system": personality.mrn_system,
                        "value": mrn,
                    }
                ],
                "name": [{"use": "official", "family": person.family, "given": [person.given], "text": person.name}],
                "gender": person.gender,
                "birthDate": person.birth_date,
                "generalPractitioner": [{"reference": f"Practitioner/{practitioner_ids[0]}"}],
            }
        )
        open_id = _encounters(resources, rid, person, patient_id, practitioner_ids, now, meta)
        patients.append(SeededPatient(person, patient_id, mrn, open_id))

        trace = traces.get(person.key)
        if trace is None:
            continue
        device_ids = []
        vendor = "dexcom" if trace.device.startswith("dexcom") else "libre"
        for s_no, session in enumerate(trace.sessions):
            device_id = rid("Device", f"{person.key}/{session.serial}")
            device_ids.append(device_id)
            active = s_no == len(trace.sessions) - 1 and session.end_ms > now_ms
            resources.append(
                {
                    "resourceType": "Device",
                    "id": device_id,
                    "meta": meta,
                    "identifier": [{"system": DEVICE_SERIAL_SYSTEM, "value": session.serial}],
                    "status": "active" if active else "inactive",
                    "manufacturer": MANUFACTURERS[vendor],
                    "serialNumber": session.serial,
                    "deviceName": [{"name": DEVICE_NAMES[trace.device], "type": "user-friendly-name"}],
                    "type": {"text": "Continuous glucose monitoring sensor"},
                    "patient": {"reference": f"Patient/{patient_id}"},
                    "note": [{"text": f"Sensor session from {iso(session.start_ms)} to {iso(session.end_ms)}"}],
                }
            )
        code, row_id = _reading_code(personality, trace.unit)
        if style is IdStyle.EPIC:
            prefix = rid("Observation", person.key)[:12] + "."
        elif style is IdStyle.NUMERIC:
            prefix = f"L-19{number}"
        else:
            prefix = f"cgm-{person.key}-"
        category = _category(
            personality.reading_category,
            "Vital Signs" if personality.reading_category == "vital-signs" else "Laboratory",
        )
        profiles = (IG_READING_PROFILES[trace.unit],) if personality.cgm_receiver else ()
        blocks.append(
            ReadingBlock(person, patient_id, trace, tuple(device_ids), code, category, prefix, now_ms, profiles, row_id)
        )
        if personality.cgm_receiver:
            resources.append(_standing_order(rid("ServiceRequest", person.key), patient_id, practitioner_ids[0], meta))

    resources.append(
        {
            "resourceType": "Group",
            "id": rid("Group", "cgm-registry"),
            "meta": meta,
            "identifier": [{"system": f"https://sandbox.glucobridge.example/{site}/registry", "value": "cgm"}],
            "type": "person",
            "actual": True,
            "name": "Diabetes registry: CGM wearers and candidates",
            "quantity": len(patients),
            "member": [{"entity": {"reference": f"Patient/{p.patient_id}"}} for p in patients],
        }
    )
    return SiteSeed(resources, blocks, patients, practitioner_ids)


def _encounters(
    resources: list[dict[str, Any]],
    rid: Any,
    person: Person,
    patient_id: str,
    practitioner_ids: list[str],
    now: datetime,
    meta: dict[str, Any],
) -> str | None:
    """Three finished office visits and, unless the person has none, an open one today; returns its id."""
    zone = ZoneInfo(person.zone)
    visits = [(days_ago, "finished") for days_ago in (80, 45, 10)]
    if person.open_encounter:
        visits.append((0, "in-progress"))
    open_id = None
    for days_ago, status in visits:
        eid = rid("Encounter", f"{person.key}/{days_ago}")
        if days_ago == 0:
            start = now - timedelta(minutes=20)
            period: dict[str, str] = {"start": start.astimezone(zone).isoformat(timespec="seconds")}
            open_id = eid
        else:
            day = (now - timedelta(days=days_ago)).astimezone(zone)
            start = day.replace(hour=9, minute=30, second=0, microsecond=0)
            period = {
                "start": start.isoformat(timespec="seconds"),
                "end": (start + timedelta(minutes=30)).isoformat(timespec="seconds"),
            }
        resources.append(
            {
                "resourceType": "Encounter",
                "id": eid,
                "meta": meta,
                "status": status,
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                    "display": "ambulatory",
                },
                "type": [{"text": "Office Visit"}],
                "subject": {"reference": f"Patient/{patient_id}"},
                "participant": [{"individual": {"reference": f"Practitioner/{practitioner_ids[0]}"}}],
                "period": period,
            }
        )
    return open_id


def _standing_order(order_id: str, patient_id: str, practitioner_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """A CGM IG standing order: summaries and the PDF every two weeks (IG example cgmDataSubmissionStandingOrder)."""
    ig = "http://hl7.org/fhir/uv/cgm/StructureDefinition"
    return {
        "resourceType": "ServiceRequest",
        "id": order_id,
        "meta": meta,
        "status": "active",
        "intent": "order",
        "extension": [
            {
                "url": f"{ig}/data-submission-schedule",
                "extension": [
                    {
                        "url": "submissionPeriod",
                        "valueQuantity": {"value": 2, "unit": "week", "system": UCUM, "code": "wk"},
                    },
                    {"url": "submissionDataProfile", "valueCanonical": f"{ig}/cgm-summary"},
                    {"url": "submissionDataProfile", "valueCanonical": f"{ig}/cgm-summary-pdf"},
                ],
            }
        ],
        "code": {
            "coding": [
                {"system": "http://hl7.org/fhir/uv/cgm/CodeSystem/cgm", "code": "cgm-data-submission-standing-order"}
            ]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "requester": {"reference": f"Practitioner/{practitioner_id}"},
    }
