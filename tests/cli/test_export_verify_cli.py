"""`glucobridge export` then `glucobridge verify`, through the store: every format, tampering, corrections."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.cli import main
from bff.settings import get_settings

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo" / "patient-14d.csv"
WINDOW = ["--from", "2024-10-27", "--to", "2024-11-10", "--tz", "America/New_York"]
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(name="cli")
def fx_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("SIGNING_KEY_FILE", raising=False)
    get_settings.cache_clear()

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        return main(list(argv), out, err), out.getvalue(), err.getvalue()

    code, _, err = run("ingest", str(DEMO), "--feed", "csv", "--site", "site-a")
    assert code == 0, err
    yield run
    get_settings.cache_clear()


@pytest.mark.parametrize("fmt", ["fhir-r4", "fhir-r5", "hl7v2"])
def test_every_export_verifies(cli: Run, tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"out.{fmt}"
    code, _, err = cli(
        "export", "--patient", "demo-001", "--format", fmt, "--site", "site-a", "-o", str(target), *WINDOW
    )
    assert code == 0, err
    assert f"wrote {fmt} of outcome version 1" in err
    code, out, err = cli("verify", str(target))
    assert code == 0, out + err
    assert out.strip().endswith("verified: every value follows from the readings")
    assert "MISMATCH" not in out


def test_a_single_observation_is_verified_through_the_store(cli: Run, tmp_path: Path) -> None:
    target = tmp_path / "bundle.json"
    assert cli("export", "--patient", "demo-001", "--format", "fhir-r4", "-o", str(target), *WINDOW)[0] == 0
    bundle = json.loads(target.read_text())
    gmi = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
               and e["resource"]["code"]["coding"][0]["code"] == "97506-0")  # fmt: skip
    single = tmp_path / "gmi.json"
    single.write_text(json.dumps(gmi))
    code, out, _ = cli("verify", str(single))
    assert code == 0, out
    gmi["valueQuantity"]["value"] += 0.05
    single.write_text(json.dumps(gmi))
    code, out, _ = cli("verify", str(single))
    assert code == 1
    assert "MISMATCH  http://loinc.org|97506-0" in out


def test_a_tampered_oru_value_fails(cli: Run, tmp_path: Path) -> None:
    target = tmp_path / "oru.hl7"
    assert cli("export", "--patient", "demo-001", "--format", "hl7v2", "--no-pdf", "-o", str(target), *WINDOW)[0] == 0
    text = target.read_bytes().decode()
    lines = text.split("\r")
    index = next(i for i, line in enumerate(lines) if "|97506-0^" in line)
    fields = lines[index].split("|")
    fields[5] = f"{float(fields[5]) + 0.1:.2f}"
    lines[index] = "|".join(fields)
    target.write_bytes("\r".join(lines).encode())
    code, out, _ = cli("verify", str(target))
    assert code == 1
    assert "MISMATCH  http://loinc.org|97506-0" in out


def test_pdf_and_note_exports(cli: Run, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    assert cli("export", "--patient", "demo-001", "--format", "pdf", "-o", str(pdf), *WINDOW)[0] == 0
    assert pdf.read_bytes().startswith(b"%PDF")
    code, out, _ = cli("export", "--patient", "demo-001", "--format", "note", *WINDOW)
    assert code == 0
    assert out.startswith("CGM summary (glucobridge)")


def test_a_backfill_gives_a_correction_that_names_what_it_replaces(cli: Run, tmp_path: Path) -> None:
    first = tmp_path / "v1.json"
    assert cli("export", "--patient", "demo-001", "--format", "fhir-r4", "--no-pdf", "-o", str(first), *WINDOW)[0] == 0
    late = tmp_path / "late.csv"
    late.write_text(
        "patient_id,time,value,unit,device,record_id\n"
        "demo-001,2024-11-01T19:00:00Z,48,mg/dL,dexcom-g6,late-1\n"
        "demo-001,2024-11-01T19:05:00Z,47,mg/dL,dexcom-g6,late-2\n",
        encoding="utf-8",
    )
    _, out, _ = cli("ingest", str(late), "--feed", "csv", "--site", "site-a")
    assert json.loads(out)["stale_windows"] == 1
    _, out, _ = cli("recompute", "--stale")
    assert "version 2\tnew version" in out
    second = tmp_path / "v2.json"
    _, _, err = cli("export", "--patient", "demo-001", "--format", "fhir-r4", "--no-pdf", "-o", str(second),
                       *WINDOW)  # fmt: skip
    assert "outcome version 2" in err
    bundle = json.loads(second.read_text())
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert {o["status"] for o in observations} == {"corrected"}
    provenance = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance")
    (revision,) = [e for e in provenance["entity"] if e["role"] == "revision"]
    v1 = json.loads(first.read_text())
    v1_summary = next(e["resource"] for e in v1["entry"] if e["resource"]["resourceType"] == "Observation"
                      and e["resource"]["code"]["coding"][0]["code"] == "107931-8")  # fmt: skip
    assert revision["what"]["identifier"]["value"] == v1_summary["identifier"][0]["value"]
    assert cli("verify", str(second))[0] == 0
    oru = tmp_path / "v2.hl7"
    assert cli("export", "--patient", "demo-001", "--format", "hl7v2", "--no-pdf", "-o", str(oru), *WINDOW)[0] == 0
    obx = [line for line in oru.read_bytes().decode().split("\r") if line.startswith("OBX")]
    assert all(line.split("|")[11] == "C" for line in obx)


def test_verify_refuses_what_it_cannot_read(cli: Run, tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    code, _, err = cli("verify", str(junk))
    assert code == 2
    assert "neither FHIR JSON nor an HL7 v2 message" in err
