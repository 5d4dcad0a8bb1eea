"""The `glucobridge` command line.

Exit codes: 0 done; 2 bad input (one line on stderr naming the row and the problem, never a traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import TextIO

from bff.ingest.engine_csv import CsvFormatError, parse_engine_csv
from engine import (
    EngineError,
    Method,
    OutcomePolicy,
    OutcomeReport,
    ReadingTable,
    WindowSpec,
    compute_outcomes,
)
from engine.policy import TARGET_SETS
from engine.timezones import check_zone

EXIT_BAD_INPUT = 2
DEMO_FILE = Path(__file__).resolve().parent.parent / "data" / "demo" / "patient-14d.csv"


class BadInputError(Exception):
    """Input the user must fix; printed as one line, exit code 2."""


def _bound(text: str) -> int | date:
    """An ISO instant with an offset (as ms), or a date (local midnight in --tz)."""
    text = text.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInputError(f"{text!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 instant with an offset") from None
    if moment.tzinfo is None:
        raise BadInputError(f"{text!r} has no UTC offset: add one, or give a date (local midnight in --tz)")
    return int(moment.timestamp() * 1000)


def _window(args: argparse.Namespace) -> WindowSpec:
    if (args.start is None) != (args.end is None):
        raise BadInputError("--from and --to go together")
    if args.start is not None:
        if args.days is not None:
            raise BadInputError("use either --from/--to or --days, not both")
        return WindowSpec(start=_bound(args.start), end=_bound(args.end))
    return WindowSpec(days=args.days or 14)


def _read_table(path: str, args: argparse.Namespace, err: TextIO) -> ReadingTable:
    try:
        handle = sys.stdin if path == "-" else open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            parsed = parse_engine_csv(handle, input_tz=args.input_tz)
        except CsvFormatError as exc:
            raise BadInputError(str(exc)) from None
        except UnicodeDecodeError:
            raise BadInputError(f"{path} is not UTF-8 text") from None
    if parsed.errors:
        if not args.skip_invalid:
            raise BadInputError(str(parsed.errors[0]))
        err.write(
            f"skipped {len(parsed.errors)} invalid row(s); first: "
            + "; ".join(str(e) for e in parsed.errors[:3])
            + "\n"
        )
    try:
        return ReadingTable.from_records(parsed.readings, default_zone=args.tz)
    except EngineError as exc:
        row = parsed.rows[exc.index] if exc.index is not None and exc.index < len(parsed.rows) else None
        raise BadInputError(f"row {row}: {exc.message}" if row else exc.message) from None


def _report(args: argparse.Namespace, path: str, err: TextIO) -> OutcomeReport:
    try:
        check_zone(args.tz)
        if args.input_tz:
            check_zone(args.input_tz)
        policy = OutcomePolicy(method=Method(args.method), targets=args.targets)
        window = _window(args)
        table = _read_table(path, args, err)
        return compute_outcomes(table, policy, window, include_traces=args.traces)
    except EngineError as exc:
        raise BadInputError(exc.message) from None


def cmd_outcomes(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    report = _report(args, args.input, err)
    out.write(report.to_json() + "\n")
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    args.input = str(DEMO_FILE)
    report = _report(args, args.input, err)
    out.write(render_text(report) + "\n")
    if args.json:
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(report.to_json() + "\n", encoding="utf-8")
        out.write(f"\nFull JSON written to {args.json}\n")
    return 0


def _fmt(value: object, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}{suffix}"
    return f"{value}{suffix}"


def render_text(report: OutcomeReport) -> str:
    """A readable summary in the consensus order (the clinician app shows the same numbers)."""
    lines = [
        f"glucobridge outcomes · engine {report.engine_version} · method {report.policy.method}"
        f" · targets {report.policy.targets}"
    ]
    for patient in report.patients:
        doc, m = patient.document, patient.metrics
        window = doc["window"]
        lines.append("")
        lines.append(f"Patient {patient.patient_id} ({doc['tz']})")
        if window is None:
            lines.append("  no readings")
            continue
        lines.append(f"  Window  {window['start']} → {window['end']} ({window['days']:g} days)")
        lines.append(
            f"  Days of wear {m['days_of_wear']} · sensor active {_fmt(m['sensor_active_pct'], 1, ' %')}"
            f" · readings used {m['readings_used']}"
        )
        suff = doc["sufficiency"]
        lines.append(
            "  Data sufficient" if suff["sufficient"] else "  INSUFFICIENT DATA: " + "; ".join(suff["reasons"])
        )
        lines.append("  Time in ranges")
        for label, key in (
            ("Very high  >250 mg/dL", "time_above_250_pct"),
            ("High   181–250 mg/dL", "time_181_250_pct"),
            (
                "In range  70–180 mg/dL" if report.policy.targets != "pregnancy" else "In range  63–140 mg/dL",
                "time_in_range_pct",
            ),
            ("Low      54–69 mg/dL", "time_54_69_pct"),
            ("Very low  <54 mg/dL", "time_below_54_pct"),
        ):
            value = m[key]
            bar = "#" * round(float(value) / 2) if isinstance(value, float) else ""
            lines.append(f"    {label:<24} {_fmt(value, 1, ' %'):>8}  {bar}")
        lines.append(
            f"  Mean {_fmt(m['mean_mg_dl'], 0, ' mg/dL')} · GMI {_fmt(m['gmi_pct'], 1, ' %')}"
            f" · CV {_fmt(m['cv_pct'], 1, ' %')} · SD {_fmt(m['sd_mg_dl'], 0, ' mg/dL')}"
        )
        lines.append(
            f"  GRI {_fmt(m['gri'], 1)} (zone {m['gri_zone']}) · LBGI {_fmt(m['lbgi'], 2)} · HBGI {_fmt(m['hbgi'], 2)}"
        )
        lines.append(f"  Hypoglycaemia events: level 1 {m['hypo_events_l1']}, level 2 {m['hypo_events_l2']}")
        goals = ", ".join(
            f"{g['metric']} {g['op']} {g['value']:g} {'met' if g['met'] else 'NOT met'}"
            for g in doc["targets"]["goals"]
        )
        lines.append(f"  Goals ({doc['targets']['name']}): {goals}")
        excluded = {k: v for k, v in doc["excluded"].items() if v}
        lines.append(f"  Excluded: {excluded or 'none'} · long gaps: {len(doc['gaps'])}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glucobridge", description="CGM outcomes for the EHR.")
    sub = parser.add_subparsers(dest="command", required=True)

    def outcome_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tz", default="UTC", help="the patient's IANA time zone for days, night and AGP (UTC)")
        p.add_argument("--input-tz", help="the zone naive timestamps in the input were recorded in")
        p.add_argument("--method", choices=[m.value for m in Method], default="time")
        p.add_argument("--from", dest="start", help="window start: ISO instant with offset, or a date")
        p.add_argument("--to", dest="end", help="window end (exclusive): ISO instant with offset, or a date")
        p.add_argument("--days", type=int, help="the last N local days ending with the last reading's day (14)")
        p.add_argument("--targets", choices=list(TARGET_SETS), default="standard")
        p.add_argument("--skip-invalid", action="store_true", help="report bad rows on stderr, compute the rest")
        p.add_argument("--traces", action="store_true", help="include daily AGP traces")

    outcomes = sub.add_parser("outcomes", help="compute outcomes from a CSV file and print JSON")
    outcomes.add_argument("input", help="CSV: patient_id,time,value,unit[,device,session_id,session_start,...]")
    outcome_options(outcomes)
    outcomes.set_defaults(handler=cmd_outcomes)

    demo = sub.add_parser("demo", help="print the report of the bundled synthetic 14-day patient")
    outcome_options(demo)
    demo.add_argument("--json", help="also write the full JSON report to this file")
    demo.set_defaults(handler=cmd_demo, tz="America/New_York")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args, out, err)
    except BadInputError as exc:
        err.write(f"glucobridge: {exc}\n")
        return EXIT_BAD_INPUT
    return code


if __name__ == "__main__":
    raise SystemExit(main())
