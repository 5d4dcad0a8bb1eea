"""The store commands end to end: ingest each feed, quarantine list/show/retry, outcomes --patient, recompute."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from bff.settings import get_settings

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"


@pytest.fixture(name="cli")
def fx_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Run the CLI in-process against a fresh embedded (SQLite) store."""
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    yield run
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("name", "feed", "extra"),
    [
        ("dexcom_egvs_mgdl.json", "dexcom", ["--patient", "P1"]),
        ("dexcom_egvs_mmol.json", "dexcom", ["--patient", "P1"]),
        ("libreview_us_mgdl.csv", "libreview", ["--patient", "P1", "--input-tz", "America/New_York"]),
        ("libreview_eu_mmol.csv", "libreview", ["--patient", "P1", "--input-tz", "Europe/Berlin"]),
        ("fhir_bundle.json", "fhir", []),
        ("fhir_readings.ndjson", "fhir", []),
        ("hl7v2_oru_r01.hl7", "hl7v2", ["--input-tz", "America/Chicago"]),
    ],
)
def test_every_feed_ingests_and_reingests_as_a_no_op(cli: object, name: str, feed: str, extra: list[str]) -> None:
    run = cli  # type: ignore[assignment]
    code, out, err = run("ingest", str(FEEDS / name), "--feed", feed, "--site", "site-a", *extra)  # type: ignore[operator]
    assert code == 0, err
    first = json.loads(out)
    assert first["added"] > 0
    code, out, _ = run("ingest", str(FEEDS / name), "--feed", feed, "--site", "site-a", *extra)  # type: ignore[operator]
    again = json.loads(out)
    assert again["added"] == 0
    assert again["already_present"] == first["added"]


def test_quarantine_list_show_and_retry(cli: object, tmp_path: Path) -> None:
    run = cli  # type: ignore[assignment]
    path = tmp_path / "r.csv"
    path.write_text(
        "patient_id,time,value,unit,device\nP9,2024-03-01T00:00:00,120,mg/dL,dexcom-g6\n"
        "P9,2024-03-01T00:05:00Z,121,mg/dL,dexcom-g6\n",
        encoding="utf-8",
    )
    code, out, err = run("ingest", str(path), "--feed", "csv", "--site", "s")  # type: ignore[operator]
    assert code == 0
    assert json.loads(out)["quarantined"] == 1
    assert "1 record(s) quarantined" in err
    code, out, _ = run("quarantine", "list")  # type: ignore[operator]
    item_id, state, site, feed, locator, reason = out.strip().split("\t")
    assert (state, site, feed, locator) == ("open", "s", "csv", "line 2")
    assert "has no UTC offset" in reason
    code, out, _ = run("quarantine", "show", item_id)  # type: ignore[operator]
    shown = json.loads(out)
    assert shown["payload"] == "P9,2024-03-01T00:00:00,120,mg/dL,dexcom-g6"
    assert shown["context"].startswith("patient_id,time,value,unit")
    code, out, _ = run("quarantine", "retry", item_id)  # type: ignore[operator]
    assert code == 1
    assert "still refused" in out
    code, out, err = run("quarantine", "retry", item_id, "--input-tz", "UTC")  # type: ignore[operator]
    assert code == 0, err
    assert json.loads(out)["added"] == 1
    code, out, _ = run("quarantine", "list")  # type: ignore[operator]
    assert out == "no open quarantine items\n"
    code, out, _ = run("quarantine", "list", "--all")  # type: ignore[operator]
    assert "\tresolved\t" in out


def test_outcomes_from_the_store_equal_outcomes_from_the_csv(cli: object) -> None:
    run = cli  # type: ignore[assignment]
    demo = Path(__file__).resolve().parents[2] / "data" / "demo" / "patient-14d.csv"
    code, out, err = run("ingest", str(demo), "--feed", "csv", "--site", "demo")  # type: ignore[operator]
    assert code == 0, err
    code, shown, err = run("patient", "show", "demo-001")  # type: ignore[operator]
    assert code == 0, err
    assert (json.loads(shown)["tz"], json.loads(shown)["tz_source"]) == ("America/New_York", "feed")
    code, stored, err = run("outcomes", "--patient", "demo-001")  # type: ignore[operator]
    assert code == 0, err
    code, direct, _ = run("outcomes", str(demo), "--tz", "America/New_York")  # type: ignore[operator]
    a, b = json.loads(stored)["patients"][0], json.loads(direct)["patients"][0]
    assert a["metrics"] == b["metrics"]
    assert a["window"] == b["window"]
    assert a["agp"] == b["agp"]
    code, out, _ = run("recompute", "--stale")  # type: ignore[operator]
    assert out.splitlines() == [  # the ingest left the patient's three standard periods pending; none signed
        "0 stale outcome window(s) recomputed",
        "3 standard outcome(s) recomputed (3 changed; 0 patient(s) with readings no ingestion reported)",
    ]
    code, out, _ = run("recompute", "--stale")  # type: ignore[operator]
    assert out.splitlines()[1].startswith("0 standard outcome(s) recomputed")  # fresh now: nothing to do again


def test_patient_set_and_link_are_audited_changes(cli: object) -> None:
    run = cli  # type: ignore[assignment]
    demo = Path(__file__).resolve().parents[2] / "data" / "demo" / "patient-14d.csv"
    assert run("ingest", str(demo), "--feed", "csv", "--site", "demo")[0] == 0  # type: ignore[operator]
    assert run("outcomes", "--patient", "demo-001")[0] == 0  # type: ignore[operator]
    code, out, err = run("patient", "set", "demo-001", "--tz", "America/Chicago", "--who", "A. Engineer",  # type: ignore[operator]
                         "--reason", "moved")  # fmt: skip
    assert code == 0, err
    assert out.startswith("zone changed from America/New_York (feed) to America/Chicago (cli)")
    code, out, _ = run("recompute", "--stale")  # type: ignore[operator]
    assert "new version" in out
    code, _, err = run("patient", "set", "demo-001", "--tz", "Mars/Base", "--who", "x", "--reason", "y")  # type: ignore[operator]
    assert (code, err) == (2, "glucobridge: 'Mars/Base' is not an IANA time zone such as America/Chicago\n")
    code, out, err = run("patient", "link", "demo-001", "--site", "other", "--who", "A. Engineer",  # type: ignore[operator]
                         "--reason", "same person (MRN match)")  # fmt: skip
    assert (code, out) == (0, "patient demo-001 (site demo) linked to site other\n"), err
    code, shown, _ = run("patient", "show", "demo-001")  # type: ignore[operator]
    assert "site:other:glucobridge|demo-001" in json.loads(shown)["identifiers"]


def test_ingest_errors_are_one_line(cli: object, tmp_path: Path) -> None:
    run = cli  # type: ignore[assignment]
    code, _, err = run("ingest", str(tmp_path / "missing.json"), "--feed", "dexcom", "--site", "s")  # type: ignore[operator]
    assert (code, err) == (2, f"glucobridge: cannot read {tmp_path / 'missing.json'}: no such file\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("Device,Serial Number,Device Timestamp,Record Type,Historic Glucose mg/dL\n", encoding="utf-8")
    code, _, err = run("ingest", str(bad), "--feed", "libreview", "--site", "s", "--patient", "P")  # type: ignore[operator]
    assert code == 2
    assert "--input-tz" in err
    assert err.count("\n") == 1
    code, _, err = run("outcomes", "--patient", "nobody")  # type: ignore[operator]
    assert (code, err) == (2, "glucobridge: no patient 'nobody' in the store\n")
