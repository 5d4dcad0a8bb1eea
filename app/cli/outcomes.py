"""`glucobridge outcomes` (from a CSV file, or a patient in the store) and `glucobridge demo`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from app.cli.common import BadInputError, open_store, window_from
from bff.ingest.engine_csv import CsvFormatError, RowError, read_engine_csv
from bff.ingest.validate import plausibility
from bff.store.outcomes import OutcomeService, UnknownPatientError
from bff.store.zones import infer
from engine import EngineError, Method, OutcomePolicy, OutcomeReport, Reading, ReadingTable, compute_outcomes
from engine.catalogue import CATALOGUE, percent_text, shown
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
    implausible = [
        (i, RowError(row, reason))
        for i, (reading, row) in enumerate(zip(parsed.readings, parsed.rows, strict=True))
        if (reason := plausibility(reading.value, reading.unit, reading.flag, reading.device))
    ]
    errors = sorted([*parsed.errors, *(e for _, e in implausible)], key=lambda e: e.row)
    if errors:
        if not args.skip_invalid:
            raise BadInputError(str(errors[0]))
        err.write(f"skipped {len(errors)} invalid row(s); first: " + "; ".join(str(e) for e in errors[:3]) + "\n")
    drop = {i for i, _ in implausible}
    keep = [i for i in range(len(parsed.readings)) if i not in drop]
    readings = [parsed.readings[i] for i in keep]
    zones = patient_zones(args.tz, readings, [parsed.zones[i] for i in keep], [parsed.offsets[i] for i in keep], err)
    try:
        return ReadingTable.from_records(readings, zones=zones, default_zone="UTC")
    except EngineError as exc:
        row = parsed.rows[exc.index] if exc.index is not None and exc.index < len(parsed.rows) else None
        raise BadInputError(f"row {row}: {exc.message}" if row else exc.message) from None


def patient_zones(
    given: str | None, readings: list[Reading], stated: list[str], offsets: list[int | None], err: TextIO
) -> dict[str, str]:
    """Each patient's zone, in bff.store.zones' order: --tz; the file's `tz` column; the readings' own UTC offsets;
    else UTC, said on stderr (never a silent UTC)."""
    named: dict[str, str] = {}
    evidence: dict[str, dict[str, list[int]]] = {}
    for reading, zone, offset in zip(readings, stated, offsets, strict=True):
        patient = reading.patient_id
        evidence.setdefault(patient, {})
        if zone:
            named.setdefault(patient, zone)
        if offset is not None:
            span = evidence[patient].setdefault(str(offset), [reading.time_ms, reading.time_ms])
            span[0], span[1] = min(span[0], reading.time_ms), max(span[1], reading.time_ms)
    out: dict[str, str] = {}
    for patient, seen in evidence.items():
        if given:
            out[patient] = given
        elif patient in named:
            out[patient] = named[patient]
        elif (inferred := infer(seen)) is not None:
            out[patient] = inferred
            err.write(f"patient {patient}: zone {inferred}, inferred from the readings' UTC offsets\n")
        else:
            out[patient] = "UTC"
            err.write(
                f"patient {patient}: time zone NOT KNOWN: days, nights and the AGP are in UTC "
                "(give --tz, or a tz column)\n"
            )
    return out


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
    args.input = str(DEMO_FILE)  # its `tz` column states the patient's zone: the same numbers as `outcomes FILE`
    report = build_report(args, err)
    out.write(render_text(report) + "\n")
    if args.json:
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(report.to_json() + "\n", encoding="utf-8")
        out.write(f"\nFull JSON written to {args.json}\n")
    return 0


def _shown(metrics: Mapping[str, object], key: str) -> str:
    return shown(CATALOGUE[key], metrics)


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
            f"  Days of wear {m['days_of_wear']} · sensor active {_shown(m, 'sensor_active')}"
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
            (f"In range {target[0]:g}–{target[1]:g} mg/dL", "time_in_range_pct"),  # the policy's target range
            ("Low      54–69 mg/dL", "time_54_69_pct"),
            ("Very low  <54 mg/dL", "time_below_54_pct"),
        ):
            value = m[key]
            bar = "#" * round(float(value) / 2) if isinstance(value, float) else ""
            lines.append(f"    {label:<24} {percent_text(value):>8}  {bar}")
        lines.append(
            f"  Mean {_shown(m, 'mean_glucose')} · GMI {_shown(m, 'gmi')} · CV {_shown(m, 'cv')} · SD {_shown(m, 'sd')}"
        )
        lines.append(
            f"  GRI {_shown(m, 'gri')} (zone {m['gri_zone']}) · LBGI {_shown(m, 'lbgi')} · HBGI {_shown(m, 'hbgi')}"
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
