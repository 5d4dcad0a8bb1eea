"""`glucobridge outcomes` (from a CSV file, or a patient in the store) and `glucobridge demo`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from app.cli.common import BadInputError, open_store, window_from
from bff.ingest.engine_csv import CsvFormatError, read_engine_csv
from bff.store.outcomes import OutcomeService, UnknownPatientError
from engine import EngineError, Method, OutcomePolicy, OutcomeReport, ReadingTable, compute_outcomes
from engine.timezones import check_zone

DEMO_FILE = Path(__file__).resolve().parents[2] / "data" / "demo" / "patient-14d.csv"


def read_csv_table(path: str, args: argparse.Namespace, err: TextIO) -> ReadingTable:
    try:
        handle = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            parsed = read_engine_csv(handle, input_tz=args.input_tz)
        except CsvFormatError as exc:
            raise BadInputError(str(exc)) from None
        except OSError as exc:
            raise BadInputError(f"cannot read {path}: {exc.strerror}") from None
    if parsed.errors:
        if not args.skip_invalid:
            raise BadInputError(str(parsed.errors[0]))
        err.write(
            f"skipped {len(parsed.errors)} invalid row(s); first: "
            + "; ".join(str(e) for e in parsed.errors[:3])
            + "\n"
        )
    try:
        return ReadingTable.from_records(parsed.readings, default_zone=args.tz or "UTC")
    except EngineError as exc:
        row = parsed.rows[exc.index] if exc.index is not None and exc.index < len(parsed.rows) else None
        raise BadInputError(f"row {row}: {exc.message}" if row else exc.message) from None


def build_report(args: argparse.Namespace, err: TextIO) -> OutcomeReport:
    try:
        if args.tz:
            check_zone(args.tz)
        if args.input_tz:
            check_zone(args.input_tz)
        policy = OutcomePolicy(method=Method(args.method), targets=args.targets)
        window = window_from(args)
        if getattr(args, "patient", None):
            if args.input:
                raise BadInputError("give either an input file or --patient, not both")
            store = open_store()
            try:
                return (
                    OutcomeService(store)
                    .compute(args.patient, window, policy, tz=args.tz, include_traces=args.traces)
                    .report
                )
            except UnknownPatientError as exc:
                raise BadInputError(str(exc)) from None
            finally:
                store.dispose()
        if not args.input:
            raise BadInputError("give an input CSV file, or --patient ID to read from the store")
        table = read_csv_table(args.input, args, err)
        return compute_outcomes(table, policy, window, include_traces=args.traces)
    except EngineError as exc:
        raise BadInputError(exc.message) from None


def cmd_outcomes(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    out.write(build_report(args, err).to_json() + "\n")
    return 0


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    args.input = str(DEMO_FILE)
    args.tz = args.tz or "America/New_York"
    report = build_report(args, err)
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
        target = doc["targets"]["range_mg_dl"]
        lines.append("  Time in ranges")
        for label, key in (
            ("Very high  >250 mg/dL", "time_above_250_pct"),
            ("High   181–250 mg/dL", "time_181_250_pct"),
            (f"In range {target[0]:g}–{target[1]:g} mg/dL", "time_in_range_pct"),
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
