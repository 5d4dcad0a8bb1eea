"""The site allow-list: TOML files, validation, lookup by iss."""

from __future__ import annotations

from pathlib import Path

import pytest

from bff.smart import IssNotAllowedError, SiteRegistry, SmartConfigError
from tests.smart.fakes import make_site

EPIC = """
vendor = "epic"

[smart]
iss = "https://fhir.hospital-a.example/interconnect/api/FHIR/R4/"
client_id = "abc-123"
scopes = ["launch", "openid", "fhirUser", "patient/Observation.read"]
frame_ancestors = ["https://hyperdrive.hospital-a.example"]

[writeback]   # another issue's table: ignored here
mode = "flowsheet_only"
"""

ORACLE = """
vendor = "oracle"

[smart]
iss = "https://fhir-ehr.example/r4/tenant-b"
client_id = "def-456"
redirect_uri = "https://cgm.example/site-b/callback"
scopes = ["launch", "openid", "fhirUser", "user/Observation.read"]
"""


def write(folder: Path, name: str, text: str) -> None:
    (folder / name).write_text(text, encoding="utf-8")


def test_sites_load_from_toml_files_named_by_key(tmp_path: Path) -> None:
    write(tmp_path, "hospital-a.toml", EPIC)
    write(tmp_path, "hospital-b.toml", ORACLE)
    write(tmp_path, "notes.txt", "not a site")
    registry = SiteRegistry.from_toml_dir(tmp_path, default_redirect_uri="https://cgm.example/callback")
    assert len(registry) == 2
    epic = registry.for_iss("https://fhir.hospital-a.example/interconnect/api/FHIR/R4/")  # as its file says
    assert epic.key == "hospital-a"
    assert epic.iss == "https://fhir.hospital-a.example/interconnect/api/FHIR/R4/"
    assert epic.redirect_uri == "https://cgm.example/callback"
    assert epic.expected_token_lifetime_s == 3600
    assert epic.frame_ancestors == ("https://hyperdrive.hospital-a.example",)
    assert epic.extra == {"writeback": {"mode": "flowsheet_only"}}
    oracle = registry.for_iss("https://fhir-ehr.example/r4/tenant-b")
    assert (oracle.key, oracle.vendor, oracle.expected_token_lifetime_s) == ("hospital-b", "oracle", 570)
    assert oracle.redirect_uri == "https://cgm.example/site-b/callback"
    assert registry.get("hospital-b") is oracle
    assert registry.get("nope") is None


def test_a_missing_folder_is_an_empty_allow_list(tmp_path: Path) -> None:
    registry = SiteRegistry.from_toml_dir(tmp_path / "absent")
    with pytest.raises(IssNotAllowedError):
        registry.for_iss("https://fhir-ehr.example/r4/tenant-b")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("client_id = \"def-456\"", "client_id = \"def-456\"\ncliend_secret = \"x\""), "unknown keys"),
        (("https://fhir-ehr.example", "http://fhir-ehr.example"), "https"),
        (('"user/Observation.read"]', '"user/Observation.read"]\nframe_ancestors = ["https://x.example/path"]'),
         "origins"),
        (('"user/Observation.read"]', '"user/Observation.read"]\nframe_ancestors = ["http://x.example"]'), "https"),
        (('vendor = "oracle"', 'vendor = "cerner"'), "vendor"),
        (('scopes = ["launch",', 'scopes = ["launch openid",'), "scopes"),
        (("[smart]", "[smrt]"), r"no \[smart\]"),
        (('"https://cgm.example/site-b/callback"', "5"), "redirect_uri"),
    ],
)  # fmt: skip
def test_a_bad_site_file_is_refused_with_its_name(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    write(tmp_path, "hospital-b.toml", ORACLE.replace(*change))
    with pytest.raises(SmartConfigError, match=message) as caught:
        SiteRegistry.from_toml_dir(tmp_path)
    assert "hospital-b.toml" in str(caught.value)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "broken.toml", "vendor = ")
    with pytest.raises(SmartConfigError, match=r"broken\.toml"):
        SiteRegistry.from_toml_dir(tmp_path)


def test_duplicate_keys_or_iss_are_refused() -> None:
    with pytest.raises(SmartConfigError, match="same iss"):
        SiteRegistry([make_site(), make_site(key="site-b", iss=make_site().iss + "/")])
    with pytest.raises(SmartConfigError, match="key"):
        SiteRegistry([make_site(), make_site(iss="https://other.example.test/r4")])


def test_localhost_may_use_http_for_the_sandbox_ehr() -> None:
    site = make_site(
        iss="http://127.0.0.1:8081/fhir",
        redirect_uri="http://localhost:8000/callback",
        frame_ancestors=("http://localhost:8081",),
    )
    assert SiteRegistry([site]).for_iss("http://127.0.0.1:8081/fhir") is site


def test_iss_is_compared_exactly_a_trailing_slash_counts(tmp_path: Path) -> None:
    """docs/smart.md: only surrounding whitespace is dropped; a trailing slash is accepted only where the site's
    file has it."""
    write(tmp_path, "hospital-a.toml", EPIC)  # the file has a trailing slash
    write(tmp_path, "hospital-b.toml", ORACLE)  # this one has none
    registry = SiteRegistry.from_toml_dir(tmp_path, default_redirect_uri="https://cgm.example/callback")
    assert registry.for_iss("https://fhir-ehr.example/r4/tenant-b").key == "hospital-b"
    assert registry.for_iss(" https://fhir-ehr.example/r4/tenant-b\n").key == "hospital-b"  # the normalisation
    assert registry.for_iss("https://fhir.hospital-a.example/interconnect/api/FHIR/R4/").key == "hospital-a"
    for wrong in (
        "https://fhir-ehr.example/r4/tenant-b/",
        "https://fhir-ehr.example/r4/tenant-b//",
        "https://fhir.hospital-a.example/interconnect/api/FHIR/R4",
        "HTTPS://fhir-ehr.example/r4/tenant-b",
        "https://FHIR-EHR.example/r4/tenant-b",
        "https://fhir-ehr.example:443/r4/tenant-b",
        "https://fhir-ehr.example/r4/tenant%2Db",
    ):
        with pytest.raises(IssNotAllowedError):
            registry.for_iss(wrong)


def test_launch_scopes_for_ehr_and_standalone_launches() -> None:
    site = make_site(scopes=("openid", "fhirUser", "patient/Observation.read"))
    assert site.launch_scopes(standalone=False) == ("launch", "openid", "fhirUser", "patient/Observation.read")
    assert site.launch_scopes(standalone=True) == ("launch/patient", "openid", "fhirUser", "patient/Observation.read")
    assert make_site().launch_scopes(standalone=True)[0] == "launch/patient"
    assert "launch" not in make_site().launch_scopes(standalone=True)
