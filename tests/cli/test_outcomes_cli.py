"""`glucobridge outcomes INPUT.csv`: the JSON contract and the one-line errors (exit code 2)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from engine import METRIC_KEYS

HEADER = "patient_id,time,value,unit"


def run(tmp_path: Path, text: str, *args: str) -> tuple[int, str, str]:
    path = tmp_path / "in.csv"
    path.write_text(text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    code = main(["outcomes", str(path), *args], out, err)
    return code, out.getvalue(), err.getvalue()


def rows(*lines: str, header: str = HEADER) -> str:
    return "\n".join((header, *lines)) + "\n"


def test_prints_the_documented_json(tmp_path: Path) -> None:
    text = rows(
        *(
            f"p1,2024-03-01T00:{m:02d}:00Z,{v},mg/dL"
            for m, v in zip(range(0, 40, 5), [60, 100, 100, 200, 100, 100, 100, 300], strict=True)
        )
    )
    code, out, err = run(tmp_path, text, "--from", "2024-03-01T00:00:00Z", "--to", "2024-03-01T01:00:00Z")
    assert code == 0, err
    doc = json.loads(out)
    assert set(doc) == {"engine_version", "method", "policy", "policy_hash", "window", "patients"}
    assert doc["method"] == "time"
    (p,) = doc["patients"]
    assert {"patient_id", "window", "metrics", "excluded", "gaps", "agp"} <= set(p)
    assert list(p["metrics"]) == sorted(METRIC_KEYS)  # canonical JSON sorts keys
    assert p["metrics"]["time_in_range_pct"] == 62.5
    assert p["metrics"]["time_54_69_pct"] == 12.5
    assert p["window"] == {"start": "2024-03-01T00:00:00+00:00", "end": "2024-03-01T01:00:00+00:00", "days": 1 / 24}


def test_output_is_byte_identical_between_runs(tmp_path: Path) -> None:
    text = rows("p1,2024-03-01T00:00:00Z,100,mg/dL", "p1,2024-03-01T00:05:00Z,5.5,mmol/L")
    assert run(tmp_path, text)[1] == run(tmp_path, text)[1]


def test_optional_columns_and_mmol(tmp_path: Path) -> None:
    header = HEADER + ",device,session_id,session_start,source,record_id"
    text = rows(
        "p1,2024-03-01T00:00:00Z,5.5,MMOL/L,dexcom-g6,s1,2024-02-29T00:00:00Z,vendor,r1",
        "p1,2024-03-01T00:00:10Z,5.6,mmol/l,dexcom-g6,s1,2024-02-29T00:00:00Z,fhir,o1",
        "p1,2024-03-01T00:05:00Z,LOW,mmol/L,dexcom-g6,s1,2024-02-29T00:00:00Z,vendor,r2",
        header=header,
    )
    code, out, err = run(tmp_path, text, "--method", "count")
    assert code == 0, err
    p = json.loads(out)["patients"][0]
    assert p["excluded"]["duplicate"] == 1
    assert p["flags"]["sensor_low"] == 1
    assert p["metrics"]["readings_used"] == 2
    assert p["metrics"]["mean_mg_dl"] == pytest.approx((5.6 + 2.2) * 18.0156 / 2)


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (
            rows("p1,2024-03-01T00:00:00Z,100,mg/dl", "p1,2024-03-01T00:05:00Z,100,mg"),
            (),
            "row 3: unknown glucose unit 'mg': use mg/dL or mmol/L",
        ),
        (rows("p1,2024-03-01T00:00:00Z,abc,mg/dL"), (), "row 2: value 'abc' is not a number"),
        ("patient_id,time,value\np1,2024-03-01T00:00:00Z,100\n", (), "row 1: missing column(s) unit"),
        (rows("p1,2024-03-01T00:00:00,100,mg/dL"), (), "row 2: time '2024-03-01T00:00:00' has no UTC offset"),
        (
            rows("p1,2024-03-10T02:30:00,100,mg/dL"),
            ("--input-tz", "America/New_York"),
            "row 2: local time 2024-03-10T02:30:00 does not exist in America/New_York",
        ),
        (rows("p1,yesterday,100,mg/dL"), (), "row 2: time 'yesterday' is not an ISO 8601 date-time"),
        (rows("p1,2024-03-01T00:00:00Z,-5,mg/dL"), (), "row 2: value '-5' must be a finite number above 0"),
        (rows("p1,2024-03-01T00:00:00Z,LOW,mg/dL"), (), "row 2: LOW without a device"),
        (rows("p1,2024-03-01T00:00:00Z,100,mg/dL"), ("--tz", "Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (rows("p1,2024-03-01T00:00:00Z,100,mg/dL"), ("--from", "2024-03-01"), "--from and --to go together"),
        ("", (), "the file is empty"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, text: str, args: tuple[str, ...], message: str) -> None:
    code, out, err = run(tmp_path, text, *args)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_skip_invalid_reports_and_computes_the_rest(tmp_path: Path) -> None:
    text = rows(
        "p1,2024-03-01T00:00:00Z,100,mg/dL",
        "p1,2024-03-01T00:05:00Z,x,mg/dL",
        "p1,bad,100,mg/dL",
        "p1,2024-03-01T00:10:00Z,100,furlongs",
    )
    code, out, err = run(tmp_path, text, "--skip-invalid")
    assert code == 0
    assert err.startswith("skipped 3 invalid row(s); first: row 3: value 'x' is not a number")
    assert json.loads(out)["patients"][0]["metrics"]["readings_used"] == 1


def test_naive_times_with_input_tz_and_the_ambiguous_hour(tmp_path: Path) -> None:
    # New York, 2024-11-03: 01:30 happens twice. In stream order the second 01:30 is the later instant.
    text = rows(
        "p1,2024-11-03T01:25:00,100,mg/dL",
        "p1,2024-11-03T01:30:00,100,mg/dL",
        "p1,2024-11-03T01:30:00,100,mg/dL",
        "p1,2024-11-03T02:00:00,100,mg/dL",
    )
    code, out, err = run(
        tmp_path, text, "--input-tz", "America/New_York", "--tz", "America/New_York", "--method", "count"
    )
    assert code == 0, err
    p = json.loads(out)["patients"][0]
    assert p["flags"]["ambiguous_local_time"] == 3
    assert p["excluded"]["duplicate"] == 0  # the two 01:30s are an hour apart, not duplicates
    assert p["metrics"]["readings_used"] == 4


def test_dates_as_window_bounds_are_local_midnights(tmp_path: Path) -> None:
    text = rows("p1,2024-03-10T12:00:00-04:00,100,mg/dL")
    code, out, _ = run(tmp_path, text, "--tz", "America/New_York", "--from", "2024-03-10", "--to", "2024-03-11")
    assert code == 0
    window = json.loads(out)["patients"][0]["window"]
    assert window == {"start": "2024-03-10T00:00:00-05:00", "end": "2024-03-11T00:00:00-04:00", "days": 1.0}


def test_the_installed_command_runs_the_demo() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "glucobridge"), "demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Patient demo-001 (America/New_York)" in done.stdout
    assert "Time in ranges" in done.stdout


def test_outcomes_and_demo_agree_on_the_bundled_file(tmp_path: Path) -> None:
    """The bundled file states its patient's zone (tz column), so both read the same 14 local days."""
    out, err = io.StringIO(), io.StringIO()
    assert main(["outcomes", "data/demo/patient-14d.csv"], out, err) == 0, err.getvalue()
    from_file = json.loads(out.getvalue())["patients"][0]
    report = tmp_path / "demo.json"
    assert main(["demo", "--json", str(report)], io.StringIO(), io.StringIO()) == 0
    from_demo = json.loads(report.read_text())["patients"][0]
    assert from_file["tz"] == from_demo["tz"] == "America/New_York"
    for key in ("time_in_range_pct", "readings_used", "sensor_active_pct", "mean_mg_dl"):
        assert from_file["metrics"][key] == from_demo["metrics"][key], key
    assert from_file["metrics"]["readings_used"] == 3978


def test_a_value_no_cgm_reports_is_refused_with_the_reason(tmp_path: Path) -> None:
    text = rows("p1,2024-03-01T00:00:00Z,120,mg/dL", "p1,2024-03-01T00:05:00Z,5000,mg/dL")
    code, _out, err = run(tmp_path, text, "--tz", "UTC")
    assert code == 2
    assert "row 3: value 5000 mg/dL is outside what a CGM can report (20–600 mg/dL)" in err
    code, out, err = run(tmp_path, text, "--tz", "UTC", "--skip-invalid")
    assert code == 0
    assert "skipped 1 invalid row(s)" in err
    assert json.loads(out)["patients"][0]["metrics"]["mean_mg_dl"] == 120.0


def test_the_zone_is_never_a_silent_utc(tmp_path: Path) -> None:
    utc_only = rows("p1,2024-01-15T12:00:00Z,120,mg/dL")
    code, out, err = run(tmp_path, utc_only)
    assert code == 0
    assert "time zone NOT KNOWN: days, nights and the AGP are in UTC" in err
    offsets = rows("p1,2024-01-15T07:00:00-05:00,120,mg/dL", "p1,2024-07-15T08:00:00-04:00,130,mg/dL")
    code, out, err = run(tmp_path, offsets, "--days", "200")
    assert code == 0
    assert "zone America/New_York, inferred from the readings' UTC offsets" in err
    assert json.loads(out)["patients"][0]["tz"] == "America/New_York"
    stated = rows("p1,2024-01-15T12:00:00Z,120,mg/dL,Europe/Berlin", header=HEADER + ",tz")
    code, out, err = run(tmp_path, stated)
    assert (code, err) == (0, "")
    assert json.loads(out)["patients"][0]["tz"] == "Europe/Berlin"
