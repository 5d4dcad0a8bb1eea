"""`glucobridge patient show|set|link`: a patient's site, zone and how it is known, names, identifiers; the two
changes a person makes (the zone, a link to another site), each audited with who and why."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from sqlalchemy import func, select

from app.cli.common import BadInputError, open_store
from bff.resources.record import ZONE_WORDS
from bff.store.models import OutcomeWindow, Patient, PatientIdentifier, Reading
from bff.store.patients import PatientLinkError, link_patient, set_zone


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    patient = sub.add_parser("patient", help="a patient's site, zone, identifiers; set the zone; link to a site")
    actions = patient.add_subparsers(dest="action", required=True, metavar="show|set|link")
    show = actions.add_parser("show", help="what the store knows of the patient (JSON)")
    show.add_argument("id", help="glucobridge patient id")
    show.set_defaults(handler=cmd_show)
    zone = actions.add_parser("set", help="set the patient's IANA time zone (a new outcome version follows)")
    zone.add_argument("id")
    zone.add_argument("--tz", required=True, help="IANA zone, e.g. America/Chicago")
    zone.add_argument("--who", required=True, help="who sets it (recorded in the audit trail)")
    zone.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    zone.set_defaults(handler=cmd_set)
    link = actions.add_parser("link", help="let another site's feeds reach this patient (same person; audited)")
    link.add_argument("id")
    link.add_argument("--site", required=True, help="the other site")
    link.add_argument("--who", required=True)
    link.add_argument("--reason", required=True)
    link.set_defaults(handler=cmd_link)


def cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = open_store()
    try:
        with store.transaction() as session:
            patient = session.scalar(select(Patient).where(Patient.public_id == args.id))
            if patient is None:
                raise BadInputError(f"no patient {args.id!r} in the store")
            identifiers = session.execute(
                select(PatientIdentifier.issuer, PatientIdentifier.value).where(
                    PatientIdentifier.patient_id == patient.id
                )
            ).all()
            readings = session.scalar(select(func.count()).select_from(Reading).where(Reading.patient_id == patient.id))
            windows = session.scalar(
                select(func.count())
                .select_from(OutcomeWindow)
                .where(OutcomeWindow.patient_id == patient.id, OutcomeWindow.status == "current")
            )
            data = {
                "patient": patient.public_id,
                "site": patient.site_key,
                "tz": patient.tz,
                "tz_source": patient.tz_source,
                "tz_note": ZONE_WORDS.get(patient.tz_source, patient.tz_source),
                "name": patient.name,
                "birth_date": patient.birth_date,
                "mrn": patient.mrn,
                "identifiers": [f"{issuer}|{value}" for issuer, value in identifiers],
                "readings": int(readings or 0),
                "current_outcome_windows": int(windows or 0),
            }
    finally:
        store.dispose()
    out.write(json.dumps(data, indent=2) + "\n")
    return 0


def cmd_set(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = open_store()
    try:
        change = set_zone(store, args.id, args.tz, who=args.who, reason=args.reason)
    except PatientLinkError as exc:
        raise BadInputError(str(exc)) from None
    finally:
        store.dispose()
    out.write((change or f"patient {args.id} already in {args.tz}") + "\n")
    if change:
        out.write("its current outcome windows are stale: `glucobridge recompute --stale` writes the next version\n")
    return 0


def cmd_link(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = open_store()
    try:
        link = link_patient(store, args.id, args.site, who=args.who, reason=args.reason)
    except PatientLinkError as exc:
        raise BadInputError(str(exc)) from None
    finally:
        store.dispose()
    verb = "linked" if link.created else "already linked"
    out.write(f"patient {link.public_id} (site {link.home_site}) {verb} to site {link.site}\n")
    return 0
