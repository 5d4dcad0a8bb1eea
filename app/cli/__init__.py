"""The `glucobridge` command line.

Exit codes: 0 done; 1 a check failed (e.g. a quarantine retry still refused); 2 bad input (one line on stderr
naming the row and the problem, never a traceback); 3 a service failed (e.g. the database went away mid-ingest:
nothing was written, run the command again).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from app.cli.common import EXIT_BAD_INPUT, EXIT_INFRASTRUCTURE, BadInputError, InfrastructureError
from bff.settings import SettingsError

# Start-up stays light: a command's module (and the database, engine, web or PDF stack it needs) is imported
# when that command runs, never to print --help or to parse arguments. The choices below are the values of
# bff.ingest.records.Feed, engine.Method and engine.policy.TARGET_SETS, written out so that parsing needs none of
# those modules (tests/cli/test_cli_startup.py holds them equal), and the export formats (app.cli.resources).
FEEDS = ("dexcom", "libreview", "fhir", "hl7v2", "csv")
METHODS = ("time", "count")
TARGET_SET_NAMES = ("standard", "older", "pregnancy")
FORMATS = ("fhir-r4", "fhir-r5", "hl7v2", "pdf", "note")

#: Commands whose parsers live in their own modules: name -> (module, help). Only the module of the command being
#: run is imported; the others are listed (for --help) with this help, the same as the module's own.
MODULE_COMMANDS: dict[str, tuple[str, str]] = {
    "patient": ("app.cli.patients", "a patient's site, zone, identifiers; set the zone; link to a site"),
    "site": ("app.cli.sites", "the sites' capability matrices: list, show, set, clear, history, probe"),
    "outbox": ("app.cli.outbox", "the write queue: work, status, retry, cancel, corrections"),
    "admin": ("app.cli.admin", "named accounts of the /admin pages: add-user, list, disable, reset"),
    "bulk": ("app.cli.bulk", "FHIR Bulk Data $export of a site into the store (start, status, resume, cancel)"),
    "worker": ("app.cli.worker", "run the jobs (EHR reads at launch, recomputes, corrections, Bulk)"),
}


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace, TextIO, TextIO], int]:
    """A command handler that imports its module when the command runs."""

    def handler(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
        function: Callable[[argparse.Namespace, TextIO, TextIO], int] = getattr(importlib.import_module(module), name)
        return function(args, out, err)

    handler.__name__ = name
    return handler


__all__ = ["BadInputError", "build_parser", "main"]


def _outcome_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tz", help="the patient's IANA time zone for days, night and AGP (CSV: UTC; store: the patient's)")
    p.add_argument("--input-tz", help="the zone naive timestamps in the input were recorded in")
    p.add_argument("--method", choices=METHODS, default="time")
    p.add_argument("--from", dest="start", help="window start: ISO instant with offset, or a date")
    p.add_argument("--to", dest="end", help="window end (exclusive): ISO instant with offset, or a date")
    p.add_argument("--days", type=int, help="the last N local days ending with the last reading's day (14)")
    p.add_argument("--targets", choices=TARGET_SET_NAMES, default="standard")
    p.add_argument("--skip-invalid", action="store_true", help="report bad rows on stderr, compute the rest")
    p.add_argument("--traces", action="store_true", help="include daily AGP traces")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with `command`, the module-defined commands other than it are listed by name and
    help only (their modules are not imported)."""
    parser = argparse.ArgumentParser(prog="glucobridge", description="CGM outcomes for the EHR.")
    sub = parser.add_subparsers(dest="command", required=True)

    outcomes = sub.add_parser("outcomes", help="compute outcomes (from a CSV file, or a patient in the store)")
    outcomes.add_argument("input", nargs="?", help="CSV: patient_id,time,value,unit[,device,...]")
    outcomes.add_argument("--patient", help="read the patient's readings from the store instead of a file")
    _outcome_options(outcomes)
    outcomes.set_defaults(handler=_lazy("app.cli.outcomes", "cmd_outcomes"))

    demo = sub.add_parser("demo", help="print the report of the bundled synthetic 14-day patient")
    _outcome_options(demo)
    demo.add_argument("--json", help="also write the full JSON report to this file")
    demo.set_defaults(handler=_lazy("app.cli.outcomes", "cmd_demo"))

    ingest = sub.add_parser("ingest", help="ingest a file into the store (one transaction)")
    ingest.add_argument("file")
    ingest.add_argument("--feed", required=True, choices=FEEDS)
    ingest.add_argument("--site", required=True, help="the site the data came from")
    ingest.add_argument("--patient", help="glucobridge patient id, for inputs that do not name the patient")
    ingest.add_argument("--input-tz", help="the zone of local times without an offset (LibreView, HL7 v2, CSV)")
    ingest.add_argument("--date-order", choices=["mdy", "dmy", "ymd"], help="locale date order (LibreView)")
    ingest.add_argument("--progress", action="store_true", help="report each chunk written on stderr")
    ingest.set_defaults(handler=_lazy("app.cli.store", "cmd_ingest"))

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
    mllp.set_defaults(handler=_lazy("app.cli.store", "cmd_listen_mllp"))

    quarantine = sub.add_parser("quarantine", help="records that could not be ingested, and why")
    quarantine.add_argument("action", choices=["list", "show", "retry"])
    quarantine.add_argument("id", nargs="?", type=int)
    quarantine.add_argument("--all", action="store_true", help="list resolved items too")
    quarantine.add_argument("--patient", help="retry: the patient the record belongs to")
    quarantine.add_argument("--input-tz", help="retry: the zone of local times without an offset")
    quarantine.set_defaults(handler=_lazy("app.cli.store", "cmd_quarantine"))

    recompute = sub.add_parser("recompute", help="write new versions of outcome windows")
    recompute.add_argument("--stale", action="store_true", help="every window with readings that arrived since")
    recompute.set_defaults(handler=_lazy("app.cli.store", "cmd_recompute"))

    _module_command(sub, "patient", command)

    export = sub.add_parser("export", help="an outcome window as FHIR (R4/R5 Bundle), HL7 v2 ORU^R01, PDF or note")
    export.add_argument("--patient", required=True)
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--site", default="local", help="the site the artefact is for (identifiers, patient keys)")
    export.add_argument("-o", "--output", help="write to this file (default: standard output)")
    export.add_argument("--mean-unit", choices=["mg/dL", "mmol/L"], default="mg/dL")
    export.add_argument("--hl7-version", choices=["2.5.1", "2.3"], default="2.5.1")
    export.add_argument("--no-pdf", action="store_true", help="FHIR/HL7 v2: leave the PDF report out")
    _outcome_options(export)
    export.set_defaults(handler=_lazy("app.cli.resources", "cmd_export"))

    verify = sub.add_parser("verify", help="recompute an exported outcome from its readings; exit 1 on a mismatch")
    verify.add_argument("file", help="a Bundle or Observation (FHIR JSON), or an ORU^R01 message")
    verify.add_argument("--public-key", help="PEM public key: also check the Provenance signature")
    verify.set_defaults(handler=_lazy("app.cli.resources", "cmd_verify"))

    serve = sub.add_parser("serve", help="the clinician web app (SMART launch, AGP/TIR view)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(handler=_lazy("app.cli.store", "cmd_serve"))

    db = sub.add_parser("db", help="database schema")
    db.add_argument("action", choices=["upgrade"])
    db.set_defaults(handler=_lazy("app.cli.store", "cmd_db"))

    for name in ("site", "outbox", "admin", "bulk", "worker"):
        _module_command(sub, name, command)
    return parser


def _module_command(sub: Any, name: str, command: str | None) -> None:
    module, help_text = MODULE_COMMANDS[name]
    if command is None or command == name:
        importlib.import_module(module).add_parser(sub)
    else:
        sub.add_parser(name, help=help_text, add_help=False)


def _command(argv: Sequence[str]) -> str:
    """The command named on the command line ("" when none is: then every parser is only listed)."""
    first = next((a for a in argv if not a.startswith("-")), "")
    return first if first in MODULE_COMMANDS else ""


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser(_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
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
