"""Vendor profiles (bff.vendors): one per vendor, bound to a site by `profile_for`, and their read rules proven
against the sandbox's personalities over HTTP (each site's CGM readings found by `cgm_search`, open visits by
`open_visit_search`)."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from joserfc import jwk

from bff.capabilities import CapabilityError, SiteCapabilities, effective, parse_capabilities
from bff.encounters import open_visit
from bff.settings import ROOT
from bff.smart import BackendAuth
from bff.vendors import PROFILES, QUIRKS, ResultsShape, Vendor, profile_for, vendor_profile
from sandbox import ClientRegistration, SandboxConfig, create_app
from sandbox.runtime import Sandbox
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, free_port, serve_in_thread

CLIENT = "vendors-test"
READ_SCOPES = ("system/Patient.rs", "system/Observation.rs", "system/Encounter.rs")


@dataclass
class Ehr:
    base: str
    sandbox: Sandbox
    key: jwk.ECKey

    def caps(self, site: str, **overrides: Any) -> SiteCapabilities:
        text = (ROOT / "sites" / f"{site}.toml").read_text().replace("http://localhost:8081", self.base)
        return effective(site, tomllib.loads(text), overrides)

    def person(self, site: str, key: str) -> Any:
        return next(p for p in self.sandbox.sites[site].seed.patients if p.person.key == key)


@pytest.fixture(scope="module", name="ehr")
def fx_ehr() -> Iterator[Ehr]:
    key = jwk.ECKey.generate_key("P-384", parameters={"kid": "vendors-1"})
    client = ClientRegistration(CLIENT, "vendor profile tests", jwks={"keys": [key.as_dict(private=False)]},
                                backend=True)  # fmt: skip
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = SandboxConfig.local(public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,),
                                 backend_jwks_url=None, extra_clients=(client,), now=NOW, days=14)  # fmt: skip
    app = create_app(config)
    with serve_in_thread(app, port):
        yield Ehr(base, app.state.sandbox, key)


async def system_token(http: httpx.AsyncClient, ehr: Ehr, caps: SiteCapabilities) -> str:
    auth = BackendAuth(CLIENT, ehr.key.as_pem(private=True), "vendors-1", "ES384", http=http)
    return await auth.token(caps.iss, READ_SCOPES)


def test_every_vendor_has_its_profile() -> None:
    assert set(PROFILES) == set(Vendor)
    for vendor, profile in PROFILES.items():
        assert profile.vendor is vendor
        assert vendor_profile(vendor.value) is profile
        assert profile.quirks <= set(QUIRKS)
    with pytest.raises(ValueError, match="unknown vendor 'cerner'"):
        vendor_profile("cerner")


def test_the_repository_sites_get_their_vendors_rules() -> None:
    caps = {p.stem: parse_capabilities(p.stem, tomllib.loads(p.read_text())) for p in (ROOT / "sites").glob("*.toml")}
    assert profile_for(caps["epic-like"]).results is ResultsShape.FLOWSHEET_ROWS
    assert profile_for(caps["oracle-like"]).results is ResultsShape.SINGLE_OBSERVATIONS
    assert profile_for(caps["cgm-receiver"]).results is ResultsShape.CGM_SUBMISSION
    assert profile_for(caps["read-only"]).results is ResultsShape.TRANSACTION
    hl7 = profile_for(caps["hl7-only"])
    assert (hl7.vendor.vendor, hl7.writer.vendor, hl7.results) == (Vendor.GENERIC, Vendor.HL7V2, ResultsShape.HL7_ORU)
    assert profile_for(caps["epic-like"]).backend_scopes() == ()  # Epic grants by registration
    assert profile_for(caps["read-only"]).backend_scopes() == ("system/Patient.rs", "system/Observation.rs")


@pytest.mark.parametrize(
    ("vendor", "mode", "channel", "expected"),
    [
        ("oracle", "full", "fhir", ("system/Patient.read", "system/Observation.read", "system/Observation.write",
                                    "system/DocumentReference.read", "system/DocumentReference.write")),
        ("oracle", "read_only", "none", ("system/Patient.read", "system/Observation.read")),
        ("generic", "full", "fhir", ("system/*.crus",)),  # a transaction writes several types: the wildcard
        ("generic", "notes_only", "fhir", ("system/Patient.rs", "system/Observation.rs",
                                           "system/DocumentReference.crs")),
        ("generic", "observations", "hl7v2", ("system/Patient.rs", "system/Observation.rs")),
        ("epic", "flowsheet_only", "fhir", ()),
    ],
)  # fmt: skip
def test_default_backend_scopes_follow_the_vendor_and_the_matrix(
    vendor: str, mode: str, channel: str, expected: tuple[str, ...]
) -> None:
    data: dict[str, Any] = {"version": 1, "vendor": vendor, "write": {"mode": mode, "channel": channel,
                            "note_type": "n", "flowsheet_rows": {"tir": "1"}},
                            "hl7v2": {"host": "127.0.0.1", "port": 2575}}  # fmt: skip
    assert profile_for(parse_capabilities("s", data)).backend_scopes() == expected
    no_wildcards = {**data, "launch": {"quirks": ["no_wildcard_scopes"]}}
    assert all("*" not in s for s in profile_for(parse_capabilities("s", no_wildcards)).backend_scopes())


@pytest.mark.parametrize("site", ["epic-like", "oracle-like", "read-only", "cgm-receiver"])
def test_cgm_search_finds_the_site_s_readings_and_only_readings(ehr: Ehr, site: str) -> None:
    caps = ehr.caps(site)
    profile = profile_for(caps)
    person = ehr.person(site, "p1")
    since = NOW - timedelta(days=2)

    async def scenario() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
            token = await system_token(http, ehr, caps)
            found: list[dict[str, Any]] = []
            for search in profile.cgm_search(person.patient_id, since):
                url: str | None = search.url(caps.iss)
                while url:
                    page = await http.get(url, headers={"Authorization": f"Bearer {token}"})
                    assert page.status_code == 200, page.text
                    body = page.json()
                    found += [
                        e["resource"] for e in body.get("entry", []) if e.get("search", {}).get("mode") != "outcome"
                    ]
                    url = next((link["url"] for link in body.get("link", []) if link["relation"] == "next"), None)
            return found

    readings = asyncio.run(scenario())
    assert len(readings) > 100  # two days of 5-minute readings
    codes = profile.reading_codes()
    for reading in readings:
        assert any((c.get("system"), c.get("code")) in codes for c in reading["code"]["coding"]), reading["code"]
        assert reading["subject"]["reference"] == f"Patient/{person.patient_id}"
    if site == "epic-like":  # the site's own sensor-glucose rows are searched for too ([read] flowsheet_rows)
        params = dict(profile.cgm_search(person.patient_id, since)[0].params)
        assert "urn:oid:1.2.840.114350.1.13.0.1.7.2.707679|3040101001" in params["code"]
        assert params["category"].endswith("|vital-signs")


def test_open_visit_lookup_finds_the_one_open_visit_or_says_why_not(ehr: Ehr) -> None:
    caps = ehr.caps("epic-like", **{"write.encounter_policy": "open_visit_lookup"})
    with_visit = next(p for p in ehr.sandbox.sites["epic-like"].seed.patients if p.open_encounter_id)
    without = next(p for p in ehr.sandbox.sites["epic-like"].seed.patients if not p.open_encounter_id)

    async def scenario() -> tuple[Any, Any, Any]:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
            token = await system_token(http, ehr, caps)
            profile = profile_for(caps)
            found = await open_visit(http, profile, caps.iss, token, with_visit.patient_id)
            none = await open_visit(http, profile, caps.iss, token, without.patient_id)
            refused = await open_visit(http, profile, caps.iss, "not-a-token", with_visit.patient_id)
            return found, none, refused

    found, none, refused = asyncio.run(scenario())
    assert (found.encounter, found.reason) == (f"Encounter/{with_visit.open_encounter_id}", None)
    assert (none.encounter, none.reason) == (None, "the patient has no open visit at this site")
    assert refused.encounter is None
    assert refused.reason == "the search for open visits answered HTTP 401"
    r5 = ehr.caps("epic-like", **{"fhir.version": "R5"})
    assert dict(profile_for(r5).open_visit_search("p").params)["status"] == "in-progress"


def test_a_site_file_may_not_name_an_unknown_vendor() -> None:
    with pytest.raises(CapabilityError, match="top-level vendor must be one of epic, oracle, generic, cgm-ig-receiver"):
        parse_capabilities("s", {"version": 1, "vendor": "meditech"})
