"""Patients across sites: a patient belongs to the site that first fed it; another site reaches it only by a link.

A link is explicit and audited: `link_patient` records the identifier `site:<SITE>:glucobridge|<public id>` (so
that site's feeds, `--patient` and CSV `patient_id` may name the patient) and an audit event with who and why.
Nothing else makes one site's identifiers resolve to another site's patient (`bff.store.ingest`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from bff.store import zones
from bff.store.db import Store
from bff.store.models import AuditEvent, Patient, PatientIdentifier, Site

OWN_ISSUER = "glucobridge"


class PatientLinkError(ValueError):
    """The link cannot be made (unknown patient, the patient's own site, missing who or why)."""


@dataclass(frozen=True)
class PatientLink:
    public_id: str
    site: str
    home_site: str | None
    created: bool  # False when the link already existed


def own_issuer(site: str) -> str:
    """The issuer of glucobridge's own patient ids at `site` (CSV `patient_id`, `--patient`, links)."""
    return f"site:{site}:{OWN_ISSUER}"


def link_patient(store: Store, public_id: str, site: str, *, who: str, reason: str) -> PatientLink:
    """Let `site`'s feeds reach patient `public_id` (of another site). Audited; linking twice changes nothing."""
    if not who.strip() or not reason.strip():
        raise PatientLinkError("a link needs who makes it and why (--who, --reason)")
    now = datetime.now(UTC)
    with store.transaction() as session:
        patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
        if patient is None:
            raise PatientLinkError(f"no patient {public_id!r} in the store")
        if patient.site_key in (None, site):
            raise PatientLinkError(f"patient {public_id} already belongs to site {site}: no link is needed")
        existing = session.scalar(
            select(PatientIdentifier).where(
                PatientIdentifier.issuer == own_issuer(site), PatientIdentifier.value == public_id
            )
        )
        if existing is not None:
            return PatientLink(public_id, site, patient.site_key, created=False)
        if session.get(Site, site) is None:
            session.add(Site(key=site, name=site, created_at=now))
            session.flush()
        session.add(
            PatientIdentifier(
                patient_id=patient.id, site_key=site, issuer=own_issuer(site), value=public_id, created_at=now
            )
        )
        session.add(
            AuditEvent(
                at=now, event="patient.link", outcome="allowed", site_key=site, actor=who[:200],
                detail={"patient": public_id, "home_site": patient.site_key, "reason": reason},
            )
        )  # fmt: skip
        return PatientLink(public_id, site, patient.site_key, created=True)


def set_zone(store: Store, public_id: str, zone: str, *, who: str, reason: str) -> str | None:
    """A person sets the patient's zone (source "cli", which nothing automatic overrides). Audited; returns the
    change ("zone changed from … to …"; the patient's current outcome windows are stale with it), or None."""
    if not who.strip() or not reason.strip():
        raise PatientLinkError("setting a zone needs who sets it and why (--who, --reason)")
    if not zones.is_zone(zone):
        raise PatientLinkError(f"{zone!r} is not an IANA time zone such as America/Chicago")
    now = datetime.now(UTC)
    with store.transaction() as session:
        patient = session.scalar(select(Patient).where(Patient.public_id == public_id))
        if patient is None:
            raise PatientLinkError(f"no patient {public_id!r} in the store")
        before = f"{patient.tz} ({patient.tz_source})"
        change = zones.apply(session, patient, zones.Zone(zone, "cli"), now)
        session.add(
            AuditEvent(
                at=now, event="patient.zone", outcome="allowed", site_key=patient.site_key, actor=who[:200],
                detail={"patient": public_id, "from": before, "to": f"{zone} (cli)", "reason": reason},
            )
        )  # fmt: skip
        return change
