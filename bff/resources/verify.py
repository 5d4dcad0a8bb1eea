"""Recompute-to-verify: does an exported outcome follow from exactly the readings it names?

For a Bundle made by `outcome_bundle` everything is inside it: the raw-data Binary (canonical NDJSON of the
readings used), its SHA-256 (on the DocumentReference and in the computation record), the computation (policy,
window, zone, engine version) and the Observations. Verification checks the digest, that this engine is the
recorded engine version, then recomputes every metric from the readings (as readings used: no exclusion is
applied twice) and compares it with each exported value. A single Observation or an ORU^R01 message carries
no raw data: their window is found in the store by the artefact key recorded at export.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import numpy as np

from bff.hl7 import parse_message
from bff.resources.fhir import COMPUTATION_TYPE, RAW_DATA_TYPE, SHA256_SYSTEM
from bff.resources.load import window_for_artifact
from bff.resources.oru import GLUCOBRIDGE_SYSTEM
from bff.resources.record import CODESYSTEM
from bff.resources.signing import SigningError, verify_jws
from bff.store.db import Store
from bff.store.models import OutcomeWindow, Patient
from bff.store.outcomes import OutcomeService, readings_ndjson
from engine import ENGINE_VERSION, NO_TIME, OutcomePolicy, ReadingTable, WindowSpec, catalogue, compute_cohort
from engine.catalogue import LOINC, MG_DL, filed
from engine.report import build_report


@dataclass
class Check:
    what: str
    expected: Any
    found: Any
    ok: bool

    def line(self) -> str:
        mark = "match" if self.ok else "MISMATCH"
        return f"{mark:8}  {self.what}: exported {self.found!r}, recomputed {self.expected!r}"


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(c.ok for c in self.checks) and bool(self.checks)

    def text(self) -> str:
        lines = [c.line() for c in self.checks] + [f"PROBLEM   {p}" for p in self.problems]
        verdict = "verified: every value follows from the readings" if self.ok else "NOT verified"
        return "\n".join([*lines, verdict])


class VerifyError(ValueError):
    """The file is not something glucobridge can verify (and why)."""


def readings_table(ndjson: bytes, patient_id: str, tz: str) -> ReadingTable:
    """The readings of a raw-data NDJSON as an engine table (one stream per device)."""
    rows = [json.loads(line) for line in ndjson.decode().splitlines() if line.strip()]
    devices = sorted({r["device"] for r in rows})
    code = {d: i for i, d in enumerate(devices)}
    n = len(rows)
    return ReadingTable(
        patient=np.zeros(n, dtype=np.int32),
        time_ms=np.array([r["t"] for r in rows], dtype=np.int64),
        value=np.array([r["value"] for r in rows], dtype=np.float64),
        unit=np.array([0 if r["unit"] == "mg/dL" else 1 for r in rows], dtype=np.int8),
        flag=np.array([r["flag"] for r in rows], dtype=np.int8),
        stream=np.array([code[r["device"]] for r in rows], dtype=np.int32),
        session_start_ms=np.full(n, NO_TIME, dtype=np.int64),
        source=np.full(n, 3, dtype=np.int8),
        received=np.arange(n, dtype=np.int64),
        ambiguous=np.zeros(n, dtype=np.bool_),
        patient_ids=(patient_id,),
        zones=(tz,),
        stream_patient=np.zeros(len(devices), dtype=np.int32),
        stream_device=tuple(devices),
    )


def recompute(ndjson: bytes, computation: Mapping[str, Any]) -> dict[str, Any]:
    """The patient document recomputed from the readings used, under the recorded policy and window."""
    table = readings_table(ndjson, str(computation["patient_id"]), str(computation["tz"]))
    window = computation["window"]
    result = compute_cohort(
        table, OutcomePolicy(**computation["policy"]), WindowSpec(start=window["start_ms"], end=window["end_ms"]),
        prepared=True,
    )  # fmt: skip
    return dict(build_report(result).patients[0].document)


def expected_values(document: Mapping[str, Any]) -> dict[str, Decimal]:
    """The filed decimal of every metric code (`system|code`, both glucose units), recomputed: what an export of
    this window carries if it follows from its readings (engine.catalogue: the same one rounding as the exporters)."""
    metrics = document["metrics"]
    out: dict[str, Decimal] = {}
    for m in catalogue.METRICS:
        for slot, code in m.codes.items():
            value = filed(m, metrics, slot or MG_DL)
            if value is not None:
                out[f"{code.system}|{code.code}"] = value
    return out


def exported_text(found: Any) -> str | None:
    """An exported number as the decimal string it carries (a JSON number's own text); None when not a number."""
    if isinstance(found, bool) or not isinstance(found, int | float) or not math.isfinite(found):
        return None
    return json.dumps(found)


def _codes(concept: Mapping[str, Any]) -> list[str]:
    return [f"{c.get('system')}|{c.get('code')}" for c in concept.get("coding", [])]


def verify_bundle(bundle: Mapping[str, Any]) -> VerifyReport:
    report = VerifyReport()
    entries = bundle.get("entry") or []
    by_url = {e.get("fullUrl"): e.get("resource", {}) for e in entries}
    resources = [e.get("resource", {}) for e in entries]
    raw_docs = [r for r in resources if r.get("resourceType") == "DocumentReference"
                and any(c.get("code") == "cgm-readings-used" for c in r.get("type", {}).get("coding", []))]  # fmt: skip
    if len(raw_docs) != 1:
        raise VerifyError(
            "the Bundle has no raw-data DocumentReference (type cgm-readings-used): not a glucobridge export"
        )
    doc = raw_docs[0]
    attachments = [c.get("attachment", {}) for c in doc.get("content", [])]
    raw = next((a for a in attachments if a.get("contentType") == RAW_DATA_TYPE), None)
    spec = next((a for a in attachments if a.get("contentType") == COMPUTATION_TYPE), None)
    if raw is None or spec is None:
        raise VerifyError("the raw-data DocumentReference lacks the readings or the computation attachment")
    binary = by_url.get(raw.get("url"))
    if not binary or binary.get("resourceType") != "Binary":
        report.problems.append(f"the readings Binary {raw.get('url')} is not in the Bundle")
        return report
    ndjson = base64.b64decode(binary.get("data", ""))
    computation = json.loads(base64.b64decode(spec.get("data", "")))
    digest = hashlib.sha256(ndjson).hexdigest()
    recorded = [i.get("value") for i in doc.get("identifier", []) if i.get("system") == SHA256_SYSTEM]
    report.checks.append(
        Check(
            "SHA-256 of the readings (DocumentReference)",
            digest,
            recorded[0] if recorded else None,
            bool(recorded) and recorded[0] == digest,
        )
    )
    report.checks.append(
        Check(
            "SHA-256 of the readings (computation record)",
            digest,
            computation.get("input_digest"),
            computation.get("input_digest") == digest,
        )
    )
    if computation.get("engine_version") != ENGINE_VERSION:
        report.problems.append(
            f"the outcome was computed by engine {computation.get('engine_version')}; this is engine {ENGINE_VERSION}, "
            "which cannot reproduce another version's rules"
        )
        return report
    provenance = [r for r in resources if r.get("resourceType") == "Provenance"]
    observation_urls = {u for u, r in by_url.items() if r.get("resourceType") == "Observation"}
    if not provenance or observation_urls - {t.get("reference") for t in provenance[0].get("target", [])}:
        report.problems.append("not every aggregated Observation is a target of the Provenance")
    document = recompute(ndjson, computation)
    expected = expected_values(document)
    for resource in resources:
        if resource.get("resourceType") != "Observation":
            continue
        _compare_observation(resource, expected, report)
    return report


def _check(report: VerifyReport, code: str, expected: Decimal, found: str | None) -> None:
    """Exact: the exported decimal string must be the recomputed filed decimal, character for character."""
    report.checks.append(Check(code, str(expected), found, found == str(expected)))


def _compare_observation(resource: Mapping[str, Any], expected: Mapping[str, Decimal], report: VerifyReport) -> None:
    for code in _codes(resource.get("code", {})):
        if "valueQuantity" in resource and code in expected:
            _check(report, code, expected[code], exported_text(resource["valueQuantity"].get("value")))
    for component in resource.get("component", []):
        for code in _codes(component.get("code", {})):
            if code in expected:
                _check(report, code, expected[code], exported_text(component.get("valueQuantity", {}).get("value")))


def verify_signature(bundle: Mapping[str, Any], public_pem: bytes, report: VerifyReport) -> None:
    """The Provenance's JWS must verify with the key and sign exactly this bundle's input digest."""
    signatures = [
        signature
        for entry in bundle.get("entry") or []
        if entry.get("resource", {}).get("resourceType") == "Provenance"
        for signature in entry["resource"].get("signature", [])
    ]
    if not signatures:
        report.problems.append("a public key was given but the Provenance carries no signature")
        return
    try:
        payload = json.loads(verify_jws(base64.b64decode(signatures[0]["data"]).decode(), public_pem))
    except (SigningError, ValueError) as exc:
        report.problems.append(str(exc))
        return
    digests = [c.expected for c in report.checks if c.what.startswith("SHA-256")]
    signed = payload.get("input_digest")
    report.checks.append(Check("signed input digest", digests[0] if digests else None, signed,
                               bool(digests) and signed == digests[0]))  # fmt: skip


def verify_file_content(text: str) -> tuple[str, Any]:
    """What kind of artefact the text is: ("bundle", dict), ("observation", dict) or ("hl7v2", str)."""
    stripped = text.lstrip("\ufeff \r\n\t\x0b")
    if stripped.startswith("MSH"):
        return "hl7v2", stripped.rstrip("\x1c\r\n") + "\r"
    try:
        data = json.loads(stripped)
    except ValueError:
        raise VerifyError("the file is neither FHIR JSON nor an HL7 v2 message") from None
    kind = data.get("resourceType") if isinstance(data, dict) else None
    if kind == "Bundle":
        return "bundle", data
    if kind == "Observation":
        return "observation", data
    raise VerifyError(f"cannot verify a {kind or 'JSON value'}: give a Bundle, an Observation or an ORU^R01 message")


# MARK: artefacts without their raw data: the window is found in the store


def _store_expected(
    store: Store, window_id: int, report: VerifyReport
) -> tuple[dict[str, Decimal], OutcomeWindow] | None:
    """Recompute the stored window from the store's readings; check they are still the readings it recorded."""
    with store.transaction() as session:
        row = session.get(OutcomeWindow, window_id)
        if row is None:
            report.problems.append(f"outcome window {window_id} is not in the store")
            return None
        patient = session.get(Patient, row.patient_id)
        assert patient is not None
        service = OutcomeService(store)
        table, stored = service.load(session, patient, row.window_start_ms, row.window_end_ms)
    if row.engine_version != ENGINE_VERSION:
        report.problems.append(f"the outcome was computed by engine {row.engine_version}; this is {ENGINE_VERSION}")
        return None
    table = _zoned(table, row.tz)
    result = compute_cohort(
        table, OutcomePolicy(**row.policy), WindowSpec(start=row.window_start_ms, end=row.window_end_ms)
    )
    used = [stored[int(i)] for i in np.sort(result.used_index)]
    ndjson = readings_ndjson(used)
    digest = hashlib.sha256(ndjson).hexdigest()
    report.checks.append(
        Check("SHA-256 of the readings in the store", digest, row.input_digest, digest == row.input_digest)
    )
    computation = {
        "patient_id": patient.public_id, "tz": row.tz, "window": {"start_ms": row.window_start_ms,
        "end_ms": row.window_end_ms}, "version": row.version, "policy": row.policy, "policy_hash": row.policy_hash,
        "mean_unit": "mg/dL",
    }  # fmt: skip
    document = recompute(ndjson, computation)
    return expected_values(document), row


def _zoned(table: ReadingTable, zone: str) -> ReadingTable:
    return replace(table, zones=(zone,))


def verify_observation_in_store(store: Store, observation: Mapping[str, Any]) -> VerifyReport:
    report = VerifyReport()
    keys = [f"{i.get('system')}|{i.get('value')}" for i in observation.get("identifier", [])]
    found = next((hit for hit in (window_for_artifact(store, k) for k in keys) if hit is not None), None)
    if found is None:
        raise VerifyError("this Observation's identifier is not one glucobridge exported from this store")
    computed = _store_expected(store, found[0], report)
    if computed is not None:
        _compare_observation(observation, computed[0], report)
    return report


ORU_SYSTEMS = {"LN": LOINC, "LOINC": LOINC, GLUCOBRIDGE_SYSTEM: CODESYSTEM}


def verify_oru_in_store(store: Store, text: str) -> VerifyReport:
    report = VerifyReport()
    message = parse_message(text)
    hit = window_for_artifact(store, f"hl7v2|{message.control_id}")
    if hit is None:
        raise VerifyError(f"message {message.control_id} is not one glucobridge exported from this store")
    computed = _store_expected(store, hit[0], report)
    if computed is None:
        return report
    expected = computed[0]
    for obx in message.segments_named("OBX"):
        if obx.field(2) != "NM":
            continue
        codes = [(obx.component(3, 1), obx.component(3, 3)), (obx.component(3, 4), obx.component(3, 6))]
        candidates = [f"{ORU_SYSTEMS[s]}|{c}" for c, s in codes if s in ORU_SYSTEMS]
        key = next((k for k in candidates if k in expected), None)
        if key is None:
            report.problems.append(f"OBX {obx.field(1)} has a code glucobridge does not export: {obx.field(3)}")
            continue
        _check(report, key, expected[key], obx.field(5))
    return report
