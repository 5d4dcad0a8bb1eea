"""`glucobridge export` (FHIR R4/R5 Bundle, HL7 v2 ORU^R01, PDF, note) and `glucobridge verify`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

import app.cli
from app.cli.common import BadInputError, open_store, window_from
from bff.hl7 import Hl7ParseError
from bff.resources.fhir import outcome_bundle
from bff.resources.load import NoReadingsError, observation_keys, outcome_record, record_artifacts
from bff.resources.note import outcome_note
from bff.resources.oru import build_oru
from bff.resources.record import IDENTIFIER_SYSTEM, OutcomeRecord
from bff.resources.report_pdf import agp_report_pdf
from bff.resources.signing import SigningError, load_signer
from bff.resources.verify import (
    VerifyError,
    verify_bundle,
    verify_file_content,
    verify_observation_in_store,
    verify_oru_in_store,
    verify_signature,
)
from bff.settings import get_settings
from bff.store.outcomes import UnknownPatientError
from engine import EngineError, Method, OutcomePolicy

FORMATS = app.cli.FORMATS  # written out where the parser is built, which imports no command module


def _record(args: argparse.Namespace) -> OutcomeRecord:
    store = open_store()
    try:
        policy = OutcomePolicy(method=Method(args.method), targets=args.targets)
        return outcome_record(store, args.patient, window_from(args), policy, site=args.site,
                              mean_unit=args.mean_unit, tz=args.tz)  # fmt: skip
    except (UnknownPatientError, NoReadingsError, ValueError) as exc:
        raise BadInputError(str(exc)) from None
    finally:
        store.dispose()


def cmd_export(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        record = _record(args)
    except EngineError as exc:
        raise BadInputError(exc.message) from None
    settings = get_settings()
    data: bytes
    keys: list[tuple[str, str, str]] = []
    if args.format in ("fhir-r4", "fhir-r5"):
        sign = None
        if settings.signing_key_file:
            try:
                sign = load_signer(settings.signing_key_file)
            except SigningError as exc:
                raise BadInputError(str(exc)) from None
        pdf = None if args.no_pdf else agp_report_pdf(record, unit=args.mean_unit, traces=record.extra.get("traces"))
        try:
            bundle = outcome_bundle(record, version="R4" if args.format == "fhir-r4" else "R5", pdf=pdf, sign=sign)
        except ValueError as exc:
            raise BadInputError(str(exc)) from None
        data = (json.dumps(bundle, indent=2, ensure_ascii=False) + "\n").encode()
        keys = observation_keys(
            record,
            [
                "summary",
                "times_in_ranges",
                "mean_glucose",
                "gmi",
                "cv",
                "days_of_wear",
                "sensor_active",
                "gri",
                "hypo_events_l1",
                "hypo_events_l2",
            ],
        )
        keys.append((f"{IDENTIFIER_SYSTEM}|{record.identifier_value('bundle')}", "fhir-bundle", ""))
    elif args.format == "hl7v2":
        pdf = None if args.no_pdf else agp_report_pdf(record, unit=args.mean_unit, traces=record.extra.get("traces"))
        message = build_oru(record, version=args.hl7_version, pdf=pdf)
        data = message.text.encode()
        keys = [(f"hl7v2|{message.control_id}", "hl7v2-message", "")]
    elif args.format == "pdf":
        data = agp_report_pdf(record, unit=args.mean_unit, traces=record.extra.get("traces"))
    else:
        data = outcome_note(record, unit=args.mean_unit).encode()
    if keys:
        store = open_store()
        try:
            record_artifacts(store, record, keys)
        finally:
            store.dispose()
    if args.output:
        target = Path(args.output)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        err.write(f"wrote {args.format} of outcome version {record.version} ({len(data):,} bytes) to {target}\n")
    elif args.format == "pdf":
        if out is not sys.stdout:  # an in-process caller's text stream
            out.write(data.decode("latin-1"))
        elif sys.stdout.isatty():
            raise BadInputError("a PDF is binary: give -o FILE (or redirect standard output)")
        else:
            sys.stdout.buffer.write(data)
    else:
        out.write(data.decode())
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = Path(args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {args.file}: {exc}") from None
    try:
        kind, content = verify_file_content(text)
        if kind == "bundle":
            report = verify_bundle(content)
            if args.public_key:
                try:
                    public_pem = Path(args.public_key).read_bytes()
                except OSError as exc:
                    raise BadInputError(f"cannot read the public key {args.public_key}: {exc.strerror}") from None
                verify_signature(content, public_pem, report)
        else:
            store = open_store()
            try:
                if kind == "observation":
                    report = verify_observation_in_store(store, content)
                else:
                    report = verify_oru_in_store(store, content)
            finally:
                store.dispose()
    except (VerifyError, Hl7ParseError) as exc:
        raise BadInputError(f"{args.file}: {exc}") from None
    out.write(report.text() + "\n")
    return 0 if report.ok else 1
