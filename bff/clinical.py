"""What the clinician view reads: the glucobridge patient behind an EHR patient, and their outcomes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bff.store.db import Store
from bff.store.models import Patient, PatientIdentifier
from bff.store.outcomes import OutcomeService, UnknownPatientError
from engine import WindowSpec


class PatientOutcomesView:
    """Maps a site's FHIR patient to the store's patient and computes the view's document (nothing is saved)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.outcomes = OutcomeService(store)

    def public_id(self, site: str, fhir_patient: str) -> str | None:
        reference = fhir_patient if fhir_patient.startswith("Patient/") else f"Patient/{fhir_patient}"
        with self.store.transaction() as session:
            row = session.execute(
                select(Patient.public_id)
                .join(PatientIdentifier, PatientIdentifier.patient_id == Patient.id)
                .where(PatientIdentifier.issuer == f"site:{site}:fhir", PatientIdentifier.value == reference)
            ).first()
        return None if row is None else str(row[0])

    def document(self, public_id: str, days: int) -> dict[str, Any] | None:
        try:
            result = self.outcomes.compute(public_id, WindowSpec(days=days), save=False, include_traces=True)
        except UnknownPatientError:
            return None
        return dict(result.report.patients[0].document)
