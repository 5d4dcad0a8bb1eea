"""What the clinician view reads: the glucobridge patient behind an EHR patient, and their outcomes.

The standard periods (14, 30, 90 days) are read from their materialized row (bff.store.windows): one row, no
readings. A patient never computed is computed once now and stored; a stale row is shown as it is, with its age,
while the recompute job writes the next one (`ShownOutcome.stale`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.orm import Session

from bff.store import windows, zones
from bff.store.db import Store
from bff.store.models import AuditEvent, Patient, PatientIdentifier, StandardOutcome
from bff.store.outcomes import OutcomeService, UnknownPatientError
from engine import WindowSpec


@dataclass(frozen=True, slots=True)
class ShownOutcome:
    """The document a view shows, and how fresh it is: `computed_at` None means computed for this request."""

    document: dict[str, Any] | None  # None: the caller has what it shows cached by the digest (`for_launch_in`)
    digest: str
    computed_at: datetime | None = None
    stale_since: datetime | None = None
    stale_reason: str | None = None
    version: int = 0

    @property
    def stale(self) -> bool:
        return self.stale_since is not None


class PatientOutcomesView:
    """Maps a site's FHIR patient to the store's patient and reads the view's document (materialized, or computed
    on request for a period that is not a standard one)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.outcomes = OutcomeService(store)

    def public_id(self, site: str, fhir_patient: str) -> str | None:
        with self.store.transaction() as session:
            found = session.scalar(_by_fhir_id(site, fhir_patient).with_only_columns(Patient.public_id))
        return None if found is None else str(found)

    def public_id_for_launch(self, site: str, fhir_patient: str, demographics: dict[str, str] | None) -> str | None:
        """The store's patient of the launch's FHIR Patient: by its FHIR id, or else by one of the identifiers the
        EHR gives it (an MRN an HL7 v2 results interface of the same site keyed its readings by). A match by
        identifier is remembered as the FHIR id of that patient (same site only, audited), so it is made once."""
        found = self.public_id(site, fhir_patient)
        if found is not None or not demographics:
            return found
        reference = _reference(fhir_patient)
        pairs = [line.split("|", 1) for line in demographics.get("identifiers", "").splitlines() if "|" in line]
        issuers = {f"site:{site}:{kind}:{system}": value for system, value in pairs for kind in ("mrn", "id")}
        if not issuers:
            return None
        with self.store.transaction() as session:
            rows = session.execute(
                select(PatientIdentifier.patient_id, PatientIdentifier.issuer, PatientIdentifier.value).where(
                    PatientIdentifier.issuer.in_(list(issuers))
                )
            ).all()
            matches = {patient_id for patient_id, issuer, value in rows if issuers.get(issuer) == value}
            if len(matches) != 1:
                return None  # none, or the EHR's identifiers name two of our patients: never guess
            (patient_id,) = matches
            patient = session.get(Patient, patient_id)
            if patient is None or patient.site_key not in (None, site):
                return None
            now = datetime.now(UTC)
            session.add(PatientIdentifier(patient_id=patient_id, site_key=site, issuer=f"site:{site}:fhir",
                                          value=reference, created_at=now))  # fmt: skip
            detail = {"patient": patient.public_id, "fhir": reference, "by": "an identifier the EHR gives the Patient"}
            session.add(AuditEvent(at=now, event="patient.identified", outcome="allowed", site_key=site,
                                   actor="launch", detail=detail))  # fmt: skip
            return patient.public_id

    def remember(self, site: str, fhir_patient: str, demographics: dict[str, str]) -> str | None:
        """Keep what the EHR says of the patient (name, birth date, MRN: for the chart artefacts) and its zone (a
        zone the EHR states is explicit: source "ehr"). Returns the zone change it caused, if any."""
        public_id = self.public_id(site, fhir_patient)
        if public_id is None:
            return None
        with self.store.transaction() as session:
            patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
            return None if patient is None else _remember(session, patient, demographics)

    def for_launch(
        self, site: str, fhir_patient: str, demographics: dict[str, str] | None, days: int
    ) -> tuple[str, zones.Zone, ShownOutcome | None] | None:
        """What a view of the launch's patient shows, in one transaction (the patient by the launch's FHIR id, what
        the EHR says of them kept, their zone and their stored outcome): `public_id_for_launch`, `remember`, `zone`
        and `outcome` in one call. None: the store has no such patient."""
        for attempt in range(2):
            with self.store.transaction() as session:
                seen = self._seen(session, site, fhir_patient, demographics, days)
            if seen is not None:
                break
            # Not known by its FHIR id yet: by an identifier the EHR gives it, remembered as its FHIR id (in a
            # transaction of its own, before this one reads again).
            if attempt or self.public_id_for_launch(site, fhir_patient, demographics) is None:
                return None
        assert seen is not None
        public_id, zone, row = seen
        if row is not None:
            return public_id, zone, _shown(row)
        return public_id, zone, self.outcome(public_id, days)  # never computed, or not a standard period

    def for_launch_in(
        self, session: Session, site: str, fhir_patient: str, demographics: dict[str, str] | None, days: int,
        *, needs_document: Callable[[str], bool] | None = None,
    ) -> tuple[str, zones.Zone, ShownOutcome] | None:  # fmt: skip
        """`for_launch` in the caller's transaction, for a patient the store knows by the launch's FHIR id and
        whose outcome of the period is stored (what nearly every view finds); None otherwise: then `for_launch`
        (which may identify the patient and compute the outcome, in transactions of its own).

        `needs_document(digest)` says whether the caller needs the stored document of that version: where it
        answers no (what it shows is cached by the digest), the document is not read and `document` is None."""
        seen = self._seen(session, site, fhir_patient, demographics, days, needs_document)
        if seen is None or seen[2] is None:
            return None
        return seen[0], seen[1], _shown(seen[2])

    def _seen(
        self, session: Session, site: str, fhir_patient: str, demographics: dict[str, str] | None, days: int,
        needs_document: Callable[[str], bool] | None = None,
    ) -> tuple[str, zones.Zone, windows.Materialized | None] | None:  # fmt: skip
        """The patient and its stored outcome of the period in one statement (what nearly every view needs); where
        the EHR's banner says something new of the patient, the patient is loaded and remembered first."""
        standard = days in windows.STANDARD_DAYS
        document = needs_document is None
        params = {"issuer": f"site:{site}:fhir", "value": _reference(fhir_patient), "days": days}
        row = session.connection().execute(_seen_query(standard, document), params).first()
        if row is None:
            return None
        if demographics and (_remembered(row, demographics) != {name: getattr(row, name) for name in _BANNER}
                             or _zone_stated(row, demographics)):  # fmt: skip
            return self._seen_remembering(session, site, fhir_patient, demographics, days, needs_document)
        zone = zones.Zone(row.tz, row.tz_source)
        if not standard:
            return row.public_id, zone, None
        shown = windows.materialized(row, days, row.tz, document=document)
        if shown is not None and needs_document is not None and needs_document(shown.digest):
            found = windows.document_of(session, row.id, days, shown.digest)
            if found is None:  # recomputed between the two reads: the whole row again (its new digest is not cached)
                patient = session.get(Patient, row.id)
                return (None if patient is None
                        else (row.public_id, zone, windows.read(session, patient, days)))  # fmt: skip
            shown = replace(shown, document=found)
        return row.public_id, zone, shown

    def _seen_remembering(
        self, session: Session, site: str, fhir_patient: str, demographics: dict[str, str], days: int,
        needs_document: Callable[[str], bool] | None,
    ) -> tuple[str, zones.Zone, windows.Materialized | None] | None:  # fmt: skip
        """`_seen` where the banner says something new: the patient remembered (and its zone applied) first, then
        read as every other view reads it."""
        patient = session.scalar(_by_fhir_id(site, fhir_patient))
        if patient is None:
            return None
        _remember(session, patient, demographics)
        session.flush()  # `_seen`'s statement reads the database, not the session's pending changes
        return self._seen(session, site, fhir_patient, None, days, needs_document)

    def zone(self, public_id: str) -> zones.Zone:
        with self.store.transaction() as session:
            patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
            return zones.Zone("UTC", "unknown") if patient is None else zones.Zone(patient.tz, patient.tz_source)

    def outcome(self, public_id: str, days: int) -> ShownOutcome | None:
        """The stored standard outcome of the patient (computed and stored now if it never was); another period is
        computed on request. None: no such patient."""
        if days not in windows.STANDARD_DAYS:
            return self._on_request(public_id, days)
        for attempt in range(2):
            with self.store.transaction() as session:
                patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
                if patient is None:
                    return None
                row = windows.read(session, patient, days)
                patient_id = patient.id
            if row is not None:
                return _shown(row)
            if attempt == 0:
                windows.refresh_patients(self.store, [patient_id])
        # Another worker holds the claim of this first computation: computed for this request, not stored.
        return self._on_request(public_id, days)

    def _on_request(self, public_id: str, days: int) -> ShownOutcome | None:
        document = self.document(public_id, days)
        return None if document is None else ShownOutcome(document, windows.document_digest(document))

    def document(self, public_id: str, days: int) -> dict[str, Any] | None:
        """The view's document computed on request from the readings (nothing is saved)."""
        try:
            result = self.outcomes.compute(public_id, WindowSpec(days=days), save=False, include_traces=True)
        except UnknownPatientError:
            return None
        return dict(result.report.patients[0].document)


def _shown(row: windows.Materialized) -> ShownOutcome:
    return ShownOutcome(row.document, row.digest, row.computed_at, row.stale_since, row.stale_reason, row.version)


def _reference(fhir_patient: str) -> str:
    """A launch's patient as a FHIR reference ("Patient/<id>"), as the store keeps it (issuer `site:<site>:fhir`)."""
    return fhir_patient if fhir_patient.startswith("Patient/") else f"Patient/{fhir_patient}"


def _by_fhir_id(site: str, fhir_patient: str) -> Select[Patient]:
    """The store's patient known at `site` by this FHIR Patient."""
    return (
        select(Patient)
        .join(PatientIdentifier, PatientIdentifier.patient_id == Patient.id)
        .where(PatientIdentifier.issuer == f"site:{site}:fhir", PatientIdentifier.value == _reference(fhir_patient))
    )


@cache
def _seen_query(standard: bool, document: bool) -> Select[Any]:
    """The patient known at a site by a FHIR Patient (`issuer`, `value`), with its stored outcome of `days` when
    that is a standard period: built once (building a statement costs more than running this one)."""
    p, so, ident = Patient.__table__.c, StandardOutcome.__table__.c, PatientIdentifier.__table__.c
    found = Patient.__table__.join(PatientIdentifier.__table__, ident.patient_id == p.id)
    columns: list[Any] = [p[name] for name in _FACTS]
    if standard:
        found = found.outerjoin(StandardOutcome.__table__, and_(so.patient_id == p.id, so.days == bindparam("days")))
        columns += windows.outcome_columns(document=document)
    return select(*columns).select_from(found).where(ident.issuer == bindparam("issuer"),
                                                     ident.value == bindparam("value"))  # fmt: skip


#: The patient's columns the view reads with its outcome (`PatientOutcomesView._seen`).
_FACTS = ("id", "public_id", "tz", "tz_source", "name", "family_name", "given_names", "birth_date", "mrn")
#: What the EHR's banner tells of the patient, kept on the patient (`_remember`).
_BANNER = ("name", "family_name", "given_names", "birth_date", "mrn")


def _remembered(stored: Any, demographics: Mapping[str, str]) -> dict[str, str | None]:
    """The banner's fields as the patient keeps them: what the EHR says now, else what was kept (`stored` has the
    patient's columns as attributes)."""
    return {
        "name": (demographics.get("name") or stored.name or "")[:200] or None,
        "family_name": (demographics.get("family") or stored.family_name or "")[:100] or None,
        "given_names": (demographics.get("given") or stored.given_names or "")[:100] or None,
        "birth_date": (demographics.get("birth_date") or stored.birth_date or "")[:10] or None,
        "mrn": (demographics.get("mrn") or stored.mrn or "")[:64] or None,
    }


def _zone_stated(stored: Any, demographics: Mapping[str, str]) -> bool:
    """Whether the banner states a zone the patient does not already have from the EHR (`_remember` applies it)."""
    stated = demographics.get("time_zone")
    return bool(stated) and (stored.tz, stored.tz_source) != (stated, "ehr")


def _remember(session: Session, patient: Patient, demographics: dict[str, str]) -> str | None:
    """`PatientOutcomesView.remember` in the caller's transaction."""
    for name, value in _remembered(patient, demographics).items():
        setattr(patient, name, value)
    stated = demographics.get("time_zone")
    if not stated:
        return None
    return zones.apply(session, patient, zones.resolve(patient, explicit=(stated, "ehr")), datetime.now(UTC))
