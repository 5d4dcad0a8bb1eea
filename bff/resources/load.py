"""OutcomeRecords from the store: compute (or reuse) the outcome window, gather what its artefacts need."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bff.resources.record import IDENTIFIER_SYSTEM, OutcomeRecord, PriorVersion
from bff.store.db import Store
from bff.store.models import OutcomeArtifact, OutcomeWindow, Patient, PatientIdentifier
from bff.store.outcomes import OutcomeService, readings_ndjson
from bff.store.windows import StoredSummary
from engine import OutcomePolicy, WindowSpec


def _identifiers(session: Session, patient: Patient, site: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """The patient's FHIR reference at the site (if a feed gave one) and its other identifiers as (system, value)."""
    rows = session.scalars(select(PatientIdentifier).where(PatientIdentifier.patient_id == patient.id)).all()
    reference = None
    others: list[tuple[str, str]] = []
    for row in rows:
        if row.issuer == f"site:{site}:fhir" and row.value.startswith("Patient/"):
            reference = row.value
        elif row.issuer.startswith(f"site:{site}:"):
            others.append((f"urn:glucobridge:{row.issuer}", row.value))
    return reference, tuple(sorted(others))


class NoReadingsError(LookupError):
    """The patient is known but has no readings in the window: there is no outcome to show or send."""


def outcome_record(
    store: Store,
    public_id: str,
    window: WindowSpec,
    policy: OutcomePolicy | None = None,
    *,
    site: str,
    mean_unit: str = "mg/dL",
    tz: str | None = None,
) -> OutcomeRecord:
    """The current outcome window of the patient (computed and stored if needed), as an OutcomeRecord."""
    result = OutcomeService(store).compute(public_id, window, policy, tz=tz, save=True, include_traces=True)
    row = result.window
    if row is None:
        raise NoReadingsError(f"patient {public_id} has no readings, so there is no window to export")
    ndjson = readings_ndjson(result.used)
    with store.transaction() as session:
        patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
        assert patient is not None
        reference, identifiers = _identifiers(session, patient, site)
        zone_source = patient.tz_source if row.tz == patient.tz else "cli"  # a zone given for this computation
        name, birth_date, mrn = patient.name, patient.birth_date, patient.mrn
        family, given = patient.family_name, patient.given_names
        prior = None
        if row.supersedes_id is not None:
            earlier = session.get(OutcomeWindow, row.supersedes_id)
            if earlier is not None:
                prior = PriorVersion(earlier.version, earlier.input_digest)
    devices = Counter(r.device for r in result.used)
    return OutcomeRecord(
        site=site, patient_id=public_id, window_start_ms=row.window_start_ms, window_end_ms=row.window_end_ms,
        tz=row.tz, version=row.version, engine_version=row.engine_version, policy=row.policy,
        policy_hash=row.policy_hash, method=row.method, document=row.document, readings_ndjson=ndjson,
        input_digest=row.input_digest, created_at=row.created_at.astimezone(UTC), prior=prior,
        patient_reference=reference, patient_identifiers=identifiers,
        device_key=devices.most_common(1)[0][0] if devices else "", mean_unit=mean_unit,
        tz_source=zone_source, patient_name=name, birth_date=birth_date, mrn=mrn, family_name=family,
        given_names=given,
        extra={"outcome_window_id": row.id, "traces": result.report.patients[0].document["agp"].get("days", [])},
    )  # fmt: skip


@lru_cache(maxsize=64)
def _policy_of(policy: OutcomePolicy) -> Mapping[str, Any]:
    """The policy's fields, one read-only mapping per policy that every record of it shares (as many policies held
    as `engine.policy` holds hashes: a bounded number, however many policies requests name)."""
    return MappingProxyType(policy.as_dict())


def standard_record(summary: StoredSummary, *, mean_unit: str = "mg/dL") -> OutcomeRecord:
    """A materialized standard outcome as an OutcomeRecord that names its raw data (stored digest) without reading
    it: for artefacts that reference the raw data (a nightly cohort's Bundles), at thousands of windows a second.
    `summary.document` holds the metrics and sufficiency only, which is what those artefacts are built from."""
    policy = OutcomePolicy()
    if summary.raw is None or summary.window_start_ms is None or summary.window_end_ms is None or not summary.tz:
        raise ValueError(f"standard outcome {summary.row_id} has no raw-data digest yet: the recompute job adds it")
    if summary.policy_hash != policy.policy_hash:
        raise ValueError(f"standard outcome {summary.row_id} was computed under policy {summary.policy_hash}, not "
                         f"this version's {policy.policy_hash}: the recompute job brings it up to date")  # fmt: skip
    return OutcomeRecord(
        site=summary.site or "", patient_id=summary.public_id, window_start_ms=summary.window_start_ms,
        window_end_ms=summary.window_end_ms, tz=summary.tz, version=summary.version,
        engine_version=summary.engine_version or "", policy=_policy_of(policy), policy_hash=policy.policy_hash,
        method=str(policy.method), document=summary.document, readings_ndjson=None, input_digest=summary.raw.sha256,
        raw=summary.raw, created_at=summary.computed_at, mean_unit=mean_unit,
        extra={"standard_outcome_id": summary.row_id},
    )  # fmt: skip


def record_artifacts(store: Store, record: OutcomeRecord, keys: list[tuple[str, str, str]]) -> None:
    """Remember (key, kind, metric) artefacts of the record's window, so `verify` can find it again."""
    window_id = int(record.extra["outcome_window_id"])
    now = datetime.now(UTC)
    with store.transaction() as session:
        for key, kind, metric in keys:
            if session.scalar(select(OutcomeArtifact).where(OutcomeArtifact.key == key)) is None:
                session.add(
                    OutcomeArtifact(key=key, outcome_window_id=window_id, kind=kind, metric=metric, created_at=now)
                )


def observation_keys(record: OutcomeRecord, metrics: list[str]) -> list[tuple[str, str, str]]:
    return [(f"{IDENTIFIER_SYSTEM}|{record.identifier_value(m)}", "fhir-observation", m) for m in metrics]


def window_for_artifact(store: Store, key: str) -> tuple[int, str] | None:
    """(outcome window id, metric) of an artefact key, if glucobridge made it."""
    with store.transaction() as session:
        row = session.scalar(select(OutcomeArtifact).where(OutcomeArtifact.key == key))
        return None if row is None else (row.outcome_window_id, row.metric)
