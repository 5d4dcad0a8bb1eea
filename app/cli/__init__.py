"""The `glucobridge` command line.

Exit codes: 0 done; 1 a check failed (e.g. a quarantine retry still refused); 2 bad input (one line on stderr
naming the row and the problem, never a traceback); 3 a service failed (e.g. the database went away mid-ingest:
nothing was written, run the command again).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from app.cli.admin import add_parser as add_admin_parser
from app.cli.bulk import add_parser as add_bulk_parser
from app.cli.common import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, BadInputError, InfrastructureError
from app.cli.outbox import add_parser as add_outbox_parser
from app.cli.outcomes import cmd_demo, cmd_outcomes
from app.cli.patients import add_parser as add_patient_parser
from app.cli.resources import FORMATS, cmd_export, cmd_verify
from app.cli.sites import add_parser as add_site_parser
from app.cli.store import (
    cmd_db,
    cmd_ingest,
    cmd_listen_mllp,
    cmd_quarantine,
    cmd_recompute,
    cmd_serve,
)
from app.cli.worker import add_parser as add_worker_parser
from bff.ingest.records import Feed
from bff.settings import SettingsError
from engine import Method
from engine.policy import TARGET_SETS

__all__ = ["BadInputError", "build_parser", "main"]


def _outcome_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tz", help="the patient's IANA time zone for days, night and AGP (CSV: UTC; store: the patient's)")
    p.add_argument("--input-tz", help="the zone naive timestamps in the input were recorded in")
    p.add_argument("--method", choices=[m.value for m in Method], default="time")
    p.add_argument("--from", dest="start", help="window start: ISO instant with offset, or a date")
    p.add_argument("--to", dest="end", help="window end (exclusive): ISO instant with offset, or a date")
    p.add_argument("--days", type=int, help="the last N local days ending with the last reading's day (14)")
    p.add_argument("--targets", choices=list(TARGET_SETS), default="standard")
    p.add_argument("--skip-invalid", action="store_true", help="report bad rows on stderr, compute the rest")
    p.add_argument("--traces", action="store_true", help="include daily AGP traces")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glucobridge", description="CGM outcomes for the EHR.")
    sub = parser.add_subparsers(dest="command", required=True)

    outcomes = sub.add_parser("outcomes", help="compute outcomes (from a CSV file, or a patient in the store)")
    outcomes.add_argument("input", nargs="?", help="CSV: patient_id,time,value,unit[,device,...]")
    outcomes.add_argument("--patient", help="read the patient's readings from the store instead of a file")
    _outcome_options(outcomes)
    outcomes.set_defaults(handler=cmd_outcomes)

    demo = sub.add_parser("demo", help="print the report of the bundled synthetic 14-day patient")
    _outcome_options(demo)
    demo.add_argument("--json", help="also write the full JSON report to this file")
    demo.set_defaults(handler=cmd_demo)

    ingest = sub.add_parser("ingest", help="ingest a file into the store (one transaction)")
    ingest.add_argument("file")
    ingest.add_argument("--feed", required=True, choices=[f.value for f in Feed])
    ingest.add_argument("--site", required=True, help="the site the data came from")
    ingest.add_argument("--patient", help="glucobridge patient id, for inputs that do not name the patient")
    ingest.add_argument("--input-tz", help="the zone of local times without an offset (LibreView, HL7 v2, CSV)")
    ingest.add_argument("--date-order", choices=["mdy", "dmy", "ymd"], help="locale date order (LibreView)")
    ingest.add_argument("--progress", action="store_true", help="report each chunk written on stderr")
    ingest.set_defaults(handler=cmd_ingest)

    mllp = sub.add_parser("listen-mllp", help="receive HL7 v2 ORU^R01 over MLLP; ACK each message AA/AE/AR")
    mllp.add_argument("--port", type=int, required=True)
    mllp.add_argument("--host", default="127.0.0.1")
    mllp.add_argument("--site", required=True)
    mllp.add_argument("--patient", help="glucobridge patient id, when the feed's PID cannot be linked")
    mllp.add_argument("--input-tz", help="the zone of OBX-14 times without an offset")
    mllp.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                      help="close a connection after this long without data (default 60)")  # fmt: skip
    mllp.add_argument("--max-connections", type=int, default=100,
                      help="connections served at once; one more is closed at once (default 100)")  # fmt: skip
    mllp.set_defaults(handler=cmd_listen_mllp)

    quarantine = sub.add_parser("quarantine", help="records that could not be ingested, and why")
    quarantine.add_argument("action", choices=["list", "show", "retry"])
    quarantine.add_argument("id", nargs="?", type=int)
    quarantine.add_argument("--all", action="store_true", help="list resolved items too")
    quarantine.add_argument("--patient", help="retry: the patient the record belongs to")
    quarantine.add_argument("--input-tz", help="retry: the zone of local times without an offset")
    quarantine.set_defaults(handler=cmd_quarantine)

    recompute = sub.add_parser("recompute", help="write new versions of outcome windows")
    recompute.add_argument("--stale", action="store_true", help="every window with readings that arrived since")
    recompute.set_defaults(handler=cmd_recompute)

    add_patient_parser(sub)

    export = sub.add_parser("export", help="an outcome window as FHIR (R4/R5 Bundle), HL7 v2 ORU^R01, PDF or note")
    export.add_argument("--patient", required=True)
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--site", default="local", help="the site the artefact is for (identifiers, patient keys)")
    export.add_argument("-o", "--output", help="write to this file (default: standard output)")
    export.add_argument("--mean-unit", choices=["mg/dL", "mmol/L"], default="mg/dL")
    export.add_argument("--hl7-version", choices=["2.5.1", "2.3"], default="2.5.1")
    export.add_argument("--no-pdf", action="store_true", help="FHIR/HL7 v2: leave the PDF report out")
    _outcome_options(export)
    export.set_defaults(handler=cmd_export)

    verify = sub.add_parser("verify", help="recompute an exported outcome from its readings; exit 1 on a mismatch")
    verify.add_argument("file", help="a Bundle or Observation (FHIR JSON), or an ORU^R01 message")
    verify.add_argument("--public-key", help="PEM public key: also check the Provenance signature")
    verify.set_defaults(handler=cmd_verify)

    serve = sub.add_parser("serve", help="the clinician web app (SMART launch, AGP/TIR view)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=cmd_serve)

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(handler=cmd_db)

    add_site_parser(sub)
    add_outbox_parser(sub)
    add_admin_parser(sub)
    add_bulk_parser(sub)
    add_worker_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args, out, err)
    except (BadInputError, SettingsError) as exc:
        err.write(f"glucobridge: {exc}\n")
        return EXIT_BAD_INPUT
    except InfrastructureError as exc:
        err.write(f"glucobridge: {exc}\n")
        return EXIT_INFRASTRUCTURE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
