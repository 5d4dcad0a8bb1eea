"""`glucobridge site ...`: set then show round trip, errors as one line, and probe against the sandbox EHR."""

from __future__ import annotations

import io
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli import main
from bff.capabilities import Vendor, WriteMode, parse_capabilities
from bff.settings import get_settings


@pytest.fixture(name="env")
def fx_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sites_dir: Path) -> Iterator[Path]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("SITES_DIR", str(sites_dir))
    get_settings.cache_clear()
    yield sites_dir
    get_settings.cache_clear()


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_set_then_show_round_trip(env: Path) -> None:
    code, out, _ = run("site", "list")
    assert code == 0
    assert "epic-like\tepic\tflowsheet_only\tfhir" in out
    code, out, err = run("site", "set", "epic-like", "bulk.group_ids", '["g1", "g2"]', "--who", "ann", "--reason", "r")
    assert (code, err) == (0, "")
    code, out, _ = run("site", "set", "epic-like", "write.note_type", "cgm-note", "--who", "ann", "--reason", "r")
    assert code == 0
    code, out, _ = run("site", "show", "epic-like", "--json")
    shown = json.loads(out)
    assert shown["matrix"]["bulk"]["group_ids"] == ["g1", "g2"]
    assert shown["matrix"]["write"]["note_type"] == "cgm-note"  # not JSON: taken as a string
    assert shown["overridden"] == ["bulk.group_ids", "write.note_type"]
    code, out, _ = run("site", "show", "epic-like")
    assert 'bulk.group_ids = ["g1", "g2"]  (override)' in out
    assert 'write.mode = "flowsheet_only"\n' in out
    code, out, _ = run("site", "history", "epic-like")
    assert "ann" in out
    assert "write.note_type" in out


def test_bad_changes_are_one_line_errors(env: Path) -> None:
    code, _, err = run("site", "set", "epic-like", "write.mode", "everything", "--who", "a", "--reason", "r")
    assert code == 2
    assert "[write] mode must be one of" in err
    assert err.count("\n") == 1
    code, _, err = run("site", "set", "epic-like", "write.mode", "full")
    assert code == 2
    assert "--who and --reason" in err


@pytest.mark.parametrize(
    ("site", "vendor", "mode"),
    [
        ("read-only", Vendor.GENERIC, WriteMode.READ_ONLY),
        ("hl7-only", Vendor.GENERIC, WriteMode.READ_ONLY),
        ("epic-like", Vendor.EPIC, WriteMode.FLOWSHEET_ONLY),
        ("oracle-like", Vendor.ORACLE, WriteMode.FULL),
        ("cgm-receiver", Vendor.CGM_IG_RECEIVER, WriteMode.FULL),
    ],
)
def test_probe_proposes_a_matrix_from_the_sandbox(
    ehr: str, tmp_path: Path, site: str, vendor: Vendor, mode: WriteMode
) -> None:
    target = tmp_path / f"{site}.toml"
    code, out, err = run("site", "probe", f"{ehr}/sites/{site}/fhir", "--write", str(target))
    assert code == 0, err
    assert err == ""
    assert target.read_text() == out
    data = tomllib.loads(out)
    caps = parse_capabilities(site, data)
    assert caps.vendor is vendor
    assert caps.write.mode is mode
    assert data["smart"]["iss"] == f"{ehr}/sites/{site}/fhir"
    assert "# " in out  # says what was inferred from what
    if site == "oracle-like":
        assert caps.expected_token_lifetime_s == 570
    if site == "cgm-receiver":
        assert "cgm-data-receiver" in out


def test_probe_of_an_unreachable_server_is_an_infrastructure_error(tmp_path: Path) -> None:
    code, _, err = run("site", "probe", "http://127.0.0.1:9/fhir")
    assert code == 3
    assert "cannot reach" in err
