"""The plain-text clinical note: exact lines for the demo patient, insufficiency, units, corrections."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

import pytest

from bff.ingest.engine_csv import parse_engine_csv
from bff.resources.note import INSUFFICIENT_HEADLINE, bands, format_pct, outcome_note
from bff.resources.record import OutcomeRecord
from engine import OutcomePolicy, ReadingTable, WindowSpec, compute_cohort
from engine.report import build_report
from tests.resources.samples import DEMO, sample_record

MMOL = 18.0156


def pct(value: float) -> str:
    """The display rule, restated: 1 decimal, "<0.1 %" above 0 and below 0.05."""
    return "<0.1 %" if 0 < value < 0.05 else f"{value:.1f} %"


def row(label: str, rng: str, value: float, goal: str = "", status: str = "", *, indent: bool = False) -> str:
    head = f"    {label:<18}" if indent else f"  {label:<20}"
    tail = f"   {goal:<8}{status}" if goal else ""
    return f"{head}{rng:<17}{pct(value):>8}{tail}".rstrip()


@lru_cache(maxsize=4)
def _document(targets: str, days: int) -> dict[str, Any]:
    with DEMO.open(encoding="utf-8") as handle:
        parsed = parse_engine_csv(handle)
    table = ReadingTable.from_records(parsed.readings, default_zone="America/New_York")
    result = compute_cohort(table, OutcomePolicy(targets=targets), WindowSpec(days=days))
    return dict(build_report(result, include_traces=True).patients[0].document)


def policy_record(targets: str = "standard", *, traces: bool = False) -> OutcomeRecord:
    """The demo patient's 14-day record under another target set (and, on request, with agp.days traces)."""
    document = dict(_document(targets, 14))
    if not traces:
        document["agp"] = {k: v for k, v in document["agp"].items() if k != "days"}
    policy = OutcomePolicy(targets=targets)
    return dataclasses.replace(
        sample_record(), document=document, policy=policy.as_dict(), policy_hash=policy.policy_hash
    )


def with_metrics(record: OutcomeRecord, **changes: Any) -> OutcomeRecord:
    document = dict(record.document)
    document["metrics"] = {**record.metrics, **changes}
    return dataclasses.replace(record, document=document)


def empty_record() -> OutcomeRecord:
    """A window with no reading used: every statistic null, as the engine reports it."""
    record = sample_record(days=7)
    document = dict(record.document)
    document["metrics"] = {
        k: (0 if k in ("days_of_wear", "readings_used", "hypo_events_l1", "hypo_events_l2") else None)
        for k in record.metrics
    } | {"sufficient": False}
    document["sufficiency"] = {"sufficient": False, "reasons": ["no readings used in the window"]}
    document["targets"] = {
        **record.document["targets"],
        "goals": [{**g, "met": None} for g in record.document["targets"]["goals"]],
    }
    agp = dict(record.document["agp"])
    for q in ("p5", "p25", "p50", "p75", "p95"):
        agp[q] = [None] * len(agp["minute"])
    agp["n"] = [0] * len(agp["minute"])
    document["agp"] = agp
    document["daily"] = []
    return dataclasses.replace(record, document=document)


# --- display rules -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "n/a"),
        (0.0, "0.0 %"),
        (0.0001, "<0.1 %"),
        (0.049, "<0.1 %"),
        (0.05, "0.1 %"),
        (0.8037659828146199, "0.8 %"),
        (61.20030423878634, "61.2 %"),
        (99.96, "100.0 %"),
        (100.0, "100.0 %"),
    ],
)
def test_format_pct(value: float | None, text: str) -> None:
    assert format_pct(value) == text


# --- the demo patient ----------------------------------------------------------------------------------------


def test_sample_note_exact_lines() -> None:
    record = sample_record()
    m = record.metrics
    lines = outcome_note(record).splitlines()
    expected = [
        "CGM summary (glucobridge)",
        "=========================",
        "Patient:   Dana Demo, born 1971-05-04, MRN MRN123456",
        "Period:    2024-10-27 to 2024-11-09 (14 days)",
        "Time zone: America/New_York (from the EHR)",
        "Data:      sufficient (>= 14 days, sensor active >= 70 %)",
        f"Wear:      14 of 14 days with data, sensor active {pct(m['sensor_active_pct'])}, "
        f"{m['readings_used']} readings",
        "",
        "Time in ranges (standard targets)",
        "  band                range                time   goal    status",
        row("Very high", ">250 mg/dL", m["time_above_250_pct"], "<5 %", "met"),
        row("High", "181-250 mg/dL", m["time_181_250_pct"]),
        row("High + very high", ">180 mg/dL", m["time_above_180_pct"], "<25 %", "NOT MET", indent=True),
        row("In range", "70-180 mg/dL", m["time_in_range_pct"], ">70 %", "NOT MET"),
        row("Low", "54-69 mg/dL", m["time_54_69_pct"]),
        row("Very low", "<54 mg/dL", m["time_below_54_pct"], "<1 %", "met"),
        row("Low + very low", "<70 mg/dL", m["time_below_70_pct"], "<4 %", "met", indent=True),
        "",
        "Glucose",
        f"  Mean glucose        {m['mean_mg_dl']:.0f} mg/dL",
        f"  GMI                 {pct(m['gmi_pct'])}",
        f"  CV (variability)    {pct(m['cv_pct'])}   (stable <= 36 %: met)",
        "  Hypoglycaemia events (each >= 15 min)",
        f"    level 1, below 70 mg/dL     {m['hypo_events_l1']}",
        f"    level 2, below 54 mg/dL     {m['hypo_events_l2']}",
        "",
        "--",
        f"glucobridge engine {record.engine_version} | method time | policy {record.policy_hash[:12]}",
        f"input {record.input_digest[:12]} | outcome version 1",
    ]
    assert lines == expected


def test_sample_note_literal_spot_checks() -> None:
    """Numbers read off the demo patient by hand, independent of the rounding helper above."""
    text = outcome_note(sample_record())
    assert "  In range            70-180 mg/dL       61.2 %   >70 %   NOT MET\n" in text
    assert "  Very high           >250 mg/dL          4.2 %   <5 %    met\n" in text
    assert "  Very low            <54 mg/dL           0.8 %   <1 %    met\n" in text
    assert "    High + very high  >180 mg/dL         36.4 %   <25 %   NOT MET\n" in text
    assert "  Mean glucose        161 mg/dL\n" in text
    assert "  GMI                 7.2 %\n" in text
    assert "  CV (variability)    32.6 %   (stable <= 36 %: met)\n" in text
    assert "sensor active 96.2 %" in text
    assert "    level 1, below 70 mg/dL     7\n" in text
    assert "    level 2, below 54 mg/dL     3\n" in text
    assert "INSUFFICIENT" not in text
    assert "CORRECTION" not in text


@pytest.mark.parametrize(
    "record",
    [
        sample_record(),
        sample_record(days=7),
        sample_record(corrected=True),
        sample_record(days=30),
        policy_record("pregnancy"),
        policy_record("older"),
        empty_record(),
    ],
    ids=["sufficient", "insufficient", "corrected", "30-days", "pregnancy", "older", "empty"],
)
@pytest.mark.parametrize("unit", ["mg/dL", "mmol/L"])
def test_note_is_ascii_short_lines_and_deterministic(record: OutcomeRecord, unit: str) -> None:
    text = outcome_note(record, unit=unit)
    assert text.isascii()
    assert text.endswith("\n")
    assert max(len(line) for line in text.splitlines()) <= 80
    assert outcome_note(record, unit=unit) == text
    assert outcome_note(dataclasses.replace(record), unit=unit) == text


def test_note_is_identical_for_equal_records_built_apart() -> None:
    assert outcome_note(sample_record()) == outcome_note(sample_record())


# --- insufficiency -------------------------------------------------------------------------------------------


def test_insufficient_note_says_so_with_reasons() -> None:
    record = sample_record(days=7)
    assert not record.sufficient
    lines = outcome_note(record).splitlines()
    i = lines.index(INSUFFICIENT_HEADLINE)
    assert INSUFFICIENT_HEADLINE == "INSUFFICIENT DATA -- not a complete picture:"
    assert lines[i - 1] == "*" * 80
    assert lines[i + 1] == "  - window of 7 days is shorter than 14 days"
    assert lines[i + 2] == "  Interpret the numbers below with caution."
    assert "Period:    2024-11-03 to 2024-11-09 (7 days)" in lines
    assert "Time zone: America/New_York (from the EHR)" in lines
    assert not any(line.startswith("Data:      sufficient") for line in lines)


def test_low_activity_reason_is_listed() -> None:
    record = sample_record(days=30)
    reasons = record.document["sufficiency"]["reasons"]
    assert reasons
    assert all("sensor active" in r for r in reasons)
    text = outcome_note(record)
    assert INSUFFICIENT_HEADLINE in text
    for reason in reasons:
        assert f"  - {reason}\n" in text


def test_empty_window_note_shows_na() -> None:
    text = outcome_note(empty_record())
    assert "  - no readings used in the window\n" in text
    assert "  Mean glucose        n/a\n" in text
    assert "  In range            70-180 mg/dL          n/a   >70 %   n/a\n" in text
    assert "Wear:      0 of 7 days with data, sensor active n/a, 0 readings\n" in text


# --- units, rounding, targets ------------------------------------------------------------------------------


def test_mmol_note() -> None:
    record = sample_record()
    m = record.metrics
    text = outcome_note(record, unit="mmol/L")
    assert f"  Mean glucose        {m['mean_mg_dl'] / MMOL:.1f} mmol/L\n" in text
    assert "  Mean glucose        9.0 mmol/L\n" in text
    assert row("In range", "3.9-10.0 mmol/L", m["time_in_range_pct"], ">70 %", "NOT MET") + "\n" in text
    assert row("Very high", ">13.9 mmol/L", m["time_above_250_pct"], "<5 %", "met") + "\n" in text
    assert row("High", "10.1-13.9 mmol/L", m["time_181_250_pct"]) + "\n" in text
    assert row("Low", "3.0-3.8 mmol/L", m["time_54_69_pct"]) + "\n" in text
    assert row("Very low", "<3.0 mmol/L", m["time_below_54_pct"], "<1 %", "met") + "\n" in text
    assert "    level 1, below 3.9 mmol/L   7\n" in text
    assert "mg/dL" not in text
    # percentages do not depend on the unit
    assert outcome_note(record, unit="mmol/L").count("%") == outcome_note(record).count("%")


def test_unknown_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="unit"):
        outcome_note(sample_record(), unit="mg/dl")


def test_tiny_percentage_shows_as_below_a_tenth() -> None:
    record = with_metrics(sample_record(), time_below_54_pct=0.03, time_above_250_pct=0.0)
    text = outcome_note(record)
    assert "  Very low            <54 mg/dL          <0.1 %   <1 %    met\n" in text
    assert "  Very high           >250 mg/dL          0.0 %   <5 %    met\n" in text


def test_pregnancy_targets_keep_the_five_bands_and_add_the_target_range() -> None:
    record = policy_record("pregnancy")
    m = record.metrics
    lines = outcome_note(record).splitlines()
    assert "Time in ranges (pregnancy targets)" in lines
    in_70_180 = 100.0 - m["time_below_70_pct"] - m["time_above_180_pct"]
    assert row("In range", "70-180 mg/dL", in_70_180) in lines
    start = lines.index("  Target range (pregnancy)")
    assert lines[start + 1 : start + 4] == [
        row("Above target", ">140 mg/dL", m["time_above_target_pct"], "<25 %", "NOT MET", indent=True),
        row("In target", "63-140 mg/dL", m["time_in_range_pct"], ">70 %", "NOT MET", indent=True),
        row("Below target", "<63 mg/dL", m["time_below_target_pct"], "<4 %", "met", indent=True),
    ]
    # every goal of the target set appears exactly once
    shown = [b for b in bands(record) if b.goal is not None]
    assert sorted(b.goal["metric"] for b in shown if b.goal) == sorted(
        g["metric"] for g in record.document["targets"]["goals"]
    )
    mmol = outcome_note(record, unit="mmol/L")
    assert "3.5-7.8 mmol/L" in mmol


def test_older_targets_goals() -> None:
    text = outcome_note(policy_record("older"))
    assert "  In range            70-180 mg/dL       61.2 %   >50 %   met\n" in text
    assert "  Very high           >250 mg/dL          4.2 %   <10 %   met\n" in text
    assert "    Low + very low    <70 mg/dL           2.4 %   <1 %    NOT MET\n" in text


# --- correction ----------------------------------------------------------------------------------------------


def test_correction_footer_and_status() -> None:
    record = sample_record(corrected=True)
    lines = outcome_note(record).splitlines()
    assert lines[-1] == f"input {record.input_digest[:12]} | outcome version 2 | CORRECTION of version 1"
    assert "Status:    CORRECTION of version 1 (this is version 2)" in lines
    assert lines[-2] == f"glucobridge engine {record.engine_version} | method time | policy {record.policy_hash[:12]}"
