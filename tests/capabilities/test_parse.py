"""Parsing sites/NAME.toml into a SiteCapabilities, and the errors that name file, table and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bff.capabilities import (
    CapabilityError,
    FhirVersion,
    Vendor,
    WriteChannel,
    WriteMode,
    apply_overrides,
    effective,
    load_file,
    parse_capabilities,
)
from bff.settings import ROOT
from bff.smart.sites import SiteRegistry

MINIMAL = {"version": 1, "vendor": "generic"}


def parse(text: str, key: str = "s1") -> Any:
    return parse_capabilities(key, tomllib.loads(text), source=f"sites/{key}.toml")


def test_every_repository_site_file_is_a_valid_matrix_and_still_a_valid_smart_site() -> None:
    paths = sorted((ROOT / "sites").glob("*.toml"))
    caps = {p.stem: parse_capabilities(p.stem, load_file(p), source=str(p)) for p in paths}
    assert set(caps) == {"epic-like", "oracle-like", "read-only", "hl7-only", "cgm-receiver"}
    assert caps["epic-like"].write.mode is WriteMode.FLOWSHEET_ONLY
    assert caps["epic-like"].write.flowsheet_rows["tir"]
    assert caps["oracle-like"].expected_token_lifetime_s == 570
    assert caps["oracle-like"].write.observation_category == "laboratory"
    assert caps["read-only"].write.mode is WriteMode.READ_ONLY
    assert caps["hl7-only"].write.channel is WriteChannel.HL7V2
    assert caps["hl7-only"].hl7v2.port == 2575
    assert caps["cgm-receiver"].vendor is Vendor.CGM_IG_RECEIVER
    assert caps["epic-like"].allows_iss("http://localhost:8081/sites/epic-like/fhir")
    assert not caps["epic-like"].allows_iss("http://localhost:8081/sites/epic-like/fhir/")  # exact, as the launch
    registry = SiteRegistry.from_toml_files(paths, default_redirect_uri="http://127.0.0.1:8000/callback")
    assert len(registry) == 5


def test_defaults_for_optional_tables() -> None:
    caps = parse_capabilities("s1", MINIMAL)
    assert caps.vendor is Vendor.GENERIC
    assert caps.fhir.version is FhirVersion.R4
    assert caps.write.mode is WriteMode.READ_ONLY
    assert caps.write.channel is WriteChannel.NONE
    assert caps.bulk.max_concurrent == 1
    assert not caps.bulk.available
    assert caps.expected_token_lifetime_s == 3600
    assert parse_capabilities("s1", {"version": 2, "vendor": "oracle"}).expected_token_lifetime_s == 570
    assert caps.shows_patient("anyone")


def test_site_filtering() -> None:
    caps = parse('version = 1\n[filter]\ndepartments = ["ENDO"]\npatients = []\n')
    assert caps.shows_patient("p1", "ENDO")
    assert not caps.shows_patient("p1", "CARDIO")
    assert not caps.shows_patient("p1", None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('vendor = "epic"\n', "sites/s1.toml: top-level version must be a whole number"),
        ('version = "1"\n', "top-level version must be a whole number"),
        ('version = 1\nvendor = "cerner"\n', "top-level vendor must be one of"),
        ("version = 1\n[wrte]\nmode = 'full'\n", "unknown top-level keys or tables: wrte"),
        ("version = 1\n[write]\nmdoe = 'full'\n", "sites/s1.toml: [write] unknown keys: mdoe"),
        ("version = 1\n[write]\nmode = 'everything'\n", "[write] mode must be one of read_only"),
        ("version = 1\n[fhir]\nversion = 'STU3'\n", "[fhir] version must be one of R4, R5"),
        ("version = 1\n[bulk]\nmax_concurrent = 0\n", "[bulk] max_concurrent must be a whole number >= 1"),
        ("version = 1\n[bulk]\nrun_window = '25:00-03:00'\n", "[bulk] run_window must be HH:MM-HH:MM"),
        ("version = 1\n[rate_limit]\nrps = true\n", "[rate_limit] rps must be a positive number"),
        ("version = 1\n[launch]\nencounter_expected = 'yes'\n", "[launch] encounter_expected must be true or false"),
        ("version = 1\n[filter]\npatients = 'p1'\n", "[filter] patients must be a list of non-empty strings"),
        ("version = 1\n[write]\nmode = 'full'\n", "[write] channel must not be none when mode is full"),
        ("version = 1\n[write]\nmode = 'observations'\nchannel = 'hl7v2'\n", "[hl7v2] host and port are required"),
        ("version = 1\n[write]\nmode = 'flowsheet_only'\nchannel = 'fhir'\n", "at least one metric"),
        ("version = 1\nfhir = 3\n", "[fhir] must be a table"),
    ],
)
def test_validation_errors_name_the_file_table_and_key(text: str, message: str) -> None:
    with pytest.raises(CapabilityError) as info:
        parse(text)
    assert message in str(info.value)
    assert "sites/s1.toml" in str(info.value)


def test_overrides_merge_by_dotted_path_and_are_revalidated() -> None:
    data = tomllib.loads((ROOT / "sites" / "epic-like.toml").read_text())
    merged = apply_overrides(data, {"write.flowsheet_rows.gmi": "999", "bulk.available": True})
    assert merged["write"]["flowsheet_rows"]["gmi"] == "999"
    assert merged["bulk"]["available"] is True
    assert data["write"]["flowsheet_rows"]["gmi"] != "999"  # the input is not changed
    caps = effective("epic-like", data, {"write.mode": "read_only"})
    assert caps.write.mode is WriteMode.READ_ONLY
    with pytest.raises(CapabilityError, match=r"with overrides: write.channel.*channel must not be none"):
        effective("epic-like", data, {"write.channel": "none"})
    with pytest.raises(CapabilityError, match="set in the site's file only"):
        effective("epic-like", data, {"smart.iss": "https://evil.example"})
    with pytest.raises(CapabilityError, match="unknown table"):
        effective("epic-like", data, {"nope.x": 1})


def test_cannot_read_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("version = [\n")
    with pytest.raises(CapabilityError, match=r"bad\.toml: cannot be read as TOML"):
        load_file(path)
