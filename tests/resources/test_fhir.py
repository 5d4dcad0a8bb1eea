"""FHIR outcome resources: IG profiles, R4 and R5 models, Provenance to the raw data, corrections, verify."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class as r5_model
from fhir.resources.R4B import get_fhir_model_class as r4_model

from bff.resources.fhir import IG, SHA256_SYSTEM, document_reference, outcome_bundle, submit_parameters
from bff.resources.record import IDENTIFIER_SYSTEM
from bff.resources.signing import generate_key_pem, load_signer
from bff.resources.verify import VerifyReport, verify_bundle, verify_signature
from tests.resources.profiles import ProfileSet
from tests.resources.samples import sample_record

IG_FOLDER = Path(__file__).resolve().parents[3] / "shared" / "reference" / "cgm-ig"


@pytest.fixture(scope="module", name="profiles")
def fx_profiles() -> ProfileSet:
    return ProfileSet.default()


def resources(bundle: dict[str, Any], kind: str | None = None) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if kind is None or e["resource"]["resourceType"] == kind]


def by_code(bundle: dict[str, Any], code: str) -> dict[str, Any]:
    return next(r for r in resources(bundle, "Observation") if r["code"]["coding"][0]["code"] == code)


RECORDS = {
    "sufficient": sample_record,
    "insufficient": lambda: sample_record(days=7),
    "correction": lambda: sample_record(corrected=True),
    "mmol": lambda: sample_record(mean_unit="mmol/L"),
}


@pytest.mark.parametrize("name", list(RECORDS))
def test_every_produced_resource_validates_against_its_ig_profile(profiles: ProfileSet, name: str) -> None:
    bundle = outcome_bundle(RECORDS[name](), pdf=b"%PDF-1.4 test")
    issues = [i for i in profiles.validate(bundle, f"{IG}/cgm-data-submission-bundle") if i.severity == "error"]
    assert issues == []
    checked = 0
    for resource in resources(bundle):
        for profile in resource.get("meta", {}).get("profile", []):
            lookup = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
            errors = [i for i in profiles.validate(resource, profile, resolve=lookup.get) if i.severity == "error"]
            assert errors == [], (profile, errors)
            checked += 1
    assert checked >= 9  # summary, 6 IG members, the CGM Device, the PDF report


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_resource_parses_in_its_fhir_version(version: str) -> None:
    bundle = outcome_bundle(sample_record(corrected=True), version=version, pdf=b"%PDF-1.4 test")  # type: ignore[arg-type]
    model = r4_model if version == "R4" else r5_model
    for resource in resources(bundle):
        model(resource["resourceType"]).model_validate(resource)
    model("Bundle").model_validate(bundle)


def test_r4_and_r5_differ_where_the_versions_differ() -> None:
    r4 = outcome_bundle(sample_record(), version="R4")
    r5 = outcome_bundle(sample_record(), version="R5")
    assert "deviceName" in resources(r4, "Device")[0]
    assert "name" in resources(r5, "Device")[0]
    assert "context" in resources(r4, "DocumentReference")[0]
    assert "period" in resources(r5, "DocumentReference")[0]
    assert "patient" in resources(r5, "Provenance")[0]
    assert "meta" not in resources(r5, "Observation")[0]  # the IG profiles are R4 profiles


CONFORMANCE = ("StructureDefinition", "ImplementationGuide", "CapabilityStatement", "OperationDefinition", "CodeSystem")
EXAMPLES = [p for p in sorted(IG_FOLDER.glob("*.json")) if p.name.split("-")[0] not in CONFORMANCE]


def test_the_ig_examples_are_there() -> None:
    assert len(EXAMPLES) >= 15, f"IG examples not found under {IG_FOLDER}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_ig_examples_round_trip_through_the_models(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    parsed = r4_model(data["resourceType"]).model_validate(data)
    again = json.loads(parsed.model_dump_json(exclude_none=True))
    assert _numbers_normalised(again) == _numbers_normalised(data)


def _numbers_normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numbers_normalised(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_normalised(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def test_provenance_covers_every_aggregated_observation_and_points_to_the_raw_readings() -> None:
    record = sample_record()
    bundle = outcome_bundle(record, pdf=b"%PDF-1.4 test")
    (provenance,) = resources(bundle, "Provenance")
    targets = {t["reference"] for t in provenance["target"]}
    observation_urls = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"}
    report_urls = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"}
    assert observation_urls | report_urls == targets
    (source,) = [e for e in provenance["entity"] if e["role"] == "source"]
    doc = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == source["what"]["reference"])
    raw = doc["content"][0]["attachment"]
    binary = next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == raw["url"])
    assert base64.b64decode(binary["data"]) == record.readings_ndjson
    assert {"system": SHA256_SYSTEM, "value": record.input_digest} in doc["identifier"]
    assert provenance["agent"][0]["onBehalfOf"]["reference"].startswith("urn:uuid:")
    assert provenance["recorded"] == "2024-11-10T12:00:00Z"
    assert provenance["policy"] == [f"https://glucobridge.example/fhir/outcome-policy/{record.policy_hash}"]
    for observation in resources(bundle, "Observation"):
        assert observation["derivedFrom"] == [{"reference": source["what"]["reference"]}]
        assert record.engine_version in observation["method"]["text"]


def test_identifiers_are_deterministic_and_creates_are_conditional() -> None:
    a, b = outcome_bundle(sample_record()), outcome_bundle(sample_record())
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    values = [r["identifier"][0]["value"] for r in resources(a) if "identifier" in r]
    assert len(values) == len(set(values))
    for entry in a["entry"]:
        resource, request = entry["resource"], entry["request"]
        if resource["resourceType"] in ("Binary", "Provenance"):  # no identifier element: a deterministic id
            assert request == {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
        else:
            first = resource["identifier"][0]
            assert request["ifNoneExist"] == f"identifier={first['system']}|{first['value']}"
    corrected = outcome_bundle(sample_record(corrected=True))
    assert by_code(corrected, "107931-8")["identifier"] != by_code(a, "107931-8")["identifier"]
    assert submit_parameters(a)["parameter"][0]["resource"] is a


def test_an_insufficient_window_says_so_in_every_observation() -> None:
    bundle = outcome_bundle(sample_record(days=7), pdf=b"%PDF-1.4 test")
    for observation in resources(bundle, "Observation"):
        assert observation["interpretation"][0]["coding"][0]["code"] == "insufficient-data"
        assert observation["note"][0]["text"].startswith("Insufficient CGM data: window of 7 days is shorter than 14")
    assert resources(bundle, "DiagnosticReport")[0]["conclusion"].startswith("Insufficient CGM data")
    assert "interpretation" not in by_code(outcome_bundle(sample_record()), "107931-8")


def test_a_correction_points_to_what_it_replaces() -> None:
    record = sample_record(corrected=True)
    bundle = outcome_bundle(record)
    assert {o["status"] for o in resources(bundle, "Observation")} == {"corrected"}
    (provenance,) = resources(bundle, "Provenance")
    assert provenance["activity"]["coding"][0]["code"] == "UPDATE"
    (revision,) = [e for e in provenance["entity"] if e["role"] == "revision"]
    first = outcome_bundle(sample_record(version=1))
    assert revision["what"]["identifier"] == {
        "system": IDENTIFIER_SYSTEM,
        "value": by_code(first, "107931-8")["identifier"][0]["value"],
    }


def test_tir_components_are_the_consensus_bands_and_sum_to_100() -> None:
    tir = by_code(outcome_bundle(sample_record()), "106793-3")
    values = [c["valueQuantity"]["value"] for c in tir["component"]]
    assert [c["code"]["coding"][0]["code"] for c in tir["component"]] == [
        "104642-4",
        "104641-6",
        "97510-2",
        "104640-8",
        "104639-0",
    ]
    # Each band is filed rounded once to one decimal: their sum is 100 within 5 × 0.05.
    assert sum(values) == pytest.approx(100.0, abs=0.25)
    assert sample_record().metrics["time_in_range_pct"] == pytest.approx(61.20030423878634)
    assert values[2] == 61.2  # 61.2003… rounded half up to one decimal, once
    assert json.dumps(values[2]) == "61.2"


def test_mean_glucose_in_the_sites_unit() -> None:
    mmol = by_code(outcome_bundle(sample_record(mean_unit="mmol/L")), "105273-7")
    assert mmol["valueQuantity"]["code"] == "mmol/L"
    # 161.46 mg/dL ÷ 18.0156 = 8.9625… mmol/L, filed with one decimal (rounded once from the mg/dL value): 9.0.
    assert sample_record().metrics["mean_mg_dl"] / 18.0156 == pytest.approx(8.962471617386377)
    assert json.dumps(mmol["valueQuantity"]["value"]) == "9.0"


# MARK: verify


def _tampered(bundle: dict[str, Any], code: str, delta: float) -> dict[str, Any]:
    copy_ = copy.deepcopy(bundle)
    by_code(copy_, code)["valueQuantity"]["value"] += delta
    return copy_


@pytest.mark.parametrize("name", list(RECORDS))
def test_verify_passes_on_every_export(name: str) -> None:
    for version in ("R4", "R5"):
        report = verify_bundle(outcome_bundle(RECORDS[name](), version=version))  # type: ignore[arg-type]
        assert report.ok, report.text()
        assert len(report.checks) == 15  # two digests and thirteen values


def test_verify_fails_on_a_tampered_value() -> None:
    report = verify_bundle(_tampered(outcome_bundle(sample_record()), "97506-0", 0.01))
    assert not report.ok
    assert [c.what for c in report.checks if not c.ok] == ["http://loinc.org|97506-0"]


def test_verify_fails_on_a_tampered_tir_component() -> None:
    bundle = outcome_bundle(sample_record())
    by_code(bundle, "106793-3")["component"][2]["valueQuantity"]["value"] = 75.0
    assert [c.what for c in verify_bundle(bundle).checks if not c.ok] == ["http://loinc.org|97510-2"]


def test_verify_fails_on_a_tampered_reading() -> None:
    bundle = outcome_bundle(sample_record())
    binary = resources(bundle, "Binary")[0]
    lines = base64.b64decode(binary["data"]).decode().splitlines()
    reading = json.loads(lines[100])
    reading["value"] = reading["value"] + 40
    lines[100] = json.dumps(reading, sort_keys=True, separators=(",", ":"))
    binary["data"] = base64.b64encode(("\n".join(lines) + "\n").encode()).decode()
    report = verify_bundle(bundle)
    assert not report.ok
    assert {c.what for c in report.checks if not c.ok} >= {"SHA-256 of the readings (DocumentReference)"}


def test_verify_fails_on_a_wrong_engine_version() -> None:
    bundle = outcome_bundle(sample_record())
    doc = resources(bundle, "DocumentReference")[0]
    attachment = doc["content"][1]["attachment"]
    computation = json.loads(base64.b64decode(attachment["data"]))
    computation["engine_version"] = "0.9.0"
    attachment["data"] = base64.b64encode(json.dumps(computation).encode()).decode()
    report = verify_bundle(bundle)
    assert not report.ok
    assert "computed by engine 0.9.0; this is engine 1.0.0" in report.text()


def test_signature_over_the_input_digest(tmp_path: Path) -> None:
    private, public = generate_key_pem()
    key = tmp_path / "key.pem"
    key.write_bytes(private)
    bundle = outcome_bundle(sample_record(), sign=load_signer(key))
    report = verify_bundle(bundle)
    verify_signature(bundle, public, report)
    assert report.ok, report.text()
    _, other = generate_key_pem()
    wrong = VerifyReport()
    verify_signature(bundle, other, wrong)
    assert wrong.problems
    assert wrong.problems[0].startswith("the signature does not verify")


@pytest.mark.parametrize(
    ("content_type", "version"), [("application/pdf", "R4"), ("text/plain", "R4"), ("application/pdf", "R5")]
)
def test_documents_for_sites_that_file_documents(content_type: str, version: str) -> None:
    record = sample_record(corrected=True)
    data = b"%PDF-1.4 test" if content_type == "application/pdf" else b"CGM summary (glucobridge)\n"
    doc = document_reference(record, data, content_type, version=version)  # type: ignore[arg-type]
    (r4_model if version == "R4" else r5_model)("DocumentReference").model_validate(doc)
    attachment = doc["content"][0]["attachment"]
    assert (attachment["contentType"], base64.b64decode(attachment["data"])) == (content_type, data)
    code = doc["relatesTo"][0]["code"]
    assert (code if version == "R4" else code["coding"][0]["code"]) == "replaces"
    first = document_reference(sample_record(version=1), data, content_type, version=version)  # type: ignore[arg-type]
    assert doc["relatesTo"][0]["target"]["identifier"] == first["identifier"][0]
