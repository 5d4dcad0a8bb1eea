"""FHIR resources for an outcome window, per the HL7 CGM IG (hl7.fhir.uv.cgm 1.0.0), in R4 (4.0.1) and R5.

One call, `outcome_bundle`, gives a transaction Bundle that carries everything a receiver or an auditor needs:

- the CGM Summary Observation (107931-8) with `hasMember` to Times in Ranges (106793-3, five components),
  Mean Glucose (97507-8 mg/dL or 105273-7 mmol/L), GMI (97506-0), CV (104638-2), Days of wear (104636-6) and
  Sensor active % (104637-4), plus Observations with glucobridge's own codes for what the IG has no profile for
  (GRI, hypoglycaemia events);
- the CGM Device, glucobridge's engine as a Device, and the Organization it acts for;
- a DocumentReference + Binary holding exactly the readings used (canonical NDJSON, SHA-256 recorded) and the
  computation (policy, window, zone, engine version), so `glucobridge verify` needs nothing else;
- a Provenance whose targets are all the aggregated Observations (and the PDF DiagnosticReport when present):
  entity `source` the raw data, agent the engine on behalf of the organisation, `recorded`, and for a correction
  an entity `revision` naming the version it replaces; optionally a JWS signature over the input digest;
- optionally the CGM Summary PDF DiagnosticReport (107931-8, `presentedForm`).

Every resource has a deterministic business identifier (a hash of site, patient, metric, window and version)
and a deterministic `urn:uuid` fullUrl, and each entry has `ifNoneExist` on that identifier, so sending the same
Bundle twice creates nothing new. The same builders serve the IG's `$submit-cgm-bundle` and plain transactions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from bff.resources.record import CODESYSTEM, IDENTIFIER_SYSTEM, OutcomeRecord, idempotency_key
from engine import catalogue, device_profile, isoformat_local
from engine.catalogue import (
    BANDS,
    IG_PROFILES,
    SUMMARY_PANEL,
    SUMMARY_PROFILE,
    TIMES_IN_RANGES_PANEL,
    TIMES_IN_RANGES_PROFILE,
    UCUM,
    Metric,
    as_json_number,
    filed,
    metric,
)

FhirVersion = Literal["R4", "R5"]
IG = IG_PROFILES
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SHA256_SYSTEM = "https://glucobridge.example/fhir/NamingSystem/sha256"
POLICY_URI = "https://glucobridge.example/fhir/outcome-policy/"
RAW_DATA_TYPE = "application/x-ndjson"
PATIENT_SYSTEM = "https://glucobridge.example/fhir/NamingSystem/patient"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
COMPUTATION_TYPE = "application/vnd.glucobridge.computation+json"

#: The five Times in Ranges components: (the IG's slice, catalogue key), very low to very high.
TIR_COMPONENTS = (
    ("timeInVeryLow", "tbr_l2"),
    ("timeInLow", "tbr_l1"),
    ("timeInTarget", "tir"),
    ("timeInHigh", "tar_l1"),
    ("timeInVeryHigh", "tar_l2"),
)


#: The aggregated Observations of the summary panel: the Times in Ranges panel (the five bands as components), then
#: every other catalogue metric that has a code, in catalogue order (a metric added to the catalogue with a code is
#: exported without touching this module).
def member_keys() -> tuple[str, ...]:
    return ("times_in_ranges", *(m.key for m in catalogue.METRICS if m.codes and m.key not in BANDS))


@dataclass(frozen=True)
class Member:
    """One aggregated Observation: its key (for identifiers), code, profile and value (the filed decimal)."""

    key: str
    system: str
    code: str
    display: str
    profile: str | None
    value: Decimal | None
    unit: str
    ucum: str


def members(record: OutcomeRecord) -> list[Member]:
    """The aggregated Observations; units' display text follows the IG's fixed patterns ("mg/dl", "mmol/l")."""
    out = []
    for key in member_keys():
        if key == "times_in_ranges":
            panel = TIMES_IN_RANGES_PANEL
            out.append(Member(key, panel.system, panel.code, panel.display, TIMES_IN_RANGES_PROFILE, None, "%", "%"))
            continue
        m = metric(key)
        code = m.code(record.mean_unit)
        assert code is not None
        unit = m.unit(record.mean_unit)
        value = filed(m, record.metrics, record.mean_unit)
        out.append(Member(key, code.system, code.code, code.display, m.profile(record.mean_unit), value,
                          unit.fhir_text, unit.ucum))  # fmt: skip
    return out


def _uuid(record: OutcomeRecord, key: str) -> str:
    """The deterministic fullUrl of a resource (memoised: a Bundle names each resource several times)."""
    return _uuid_of(record.site, record.patient_id, record.window_start_ms, record.window_end_ms, record.version, key)


@lru_cache(maxsize=4096)
def _uuid_of(site: str, patient: str, start: int, end: int, version: int, key: str) -> str:
    value = "gb-" + idempotency_key(site, patient, key, start, end, version)
    return "urn:uuid:" + _uuid5_url(IDENTIFIER_SYSTEM + "/" + value)


def _uuid5_url(name: str) -> str:
    """`str(uuid.uuid5(uuid.NAMESPACE_URL, name))` without building UUID objects (an export names thousands)."""
    b = bytearray(hashlib.sha1(_NAMESPACE_URL + name.encode(), usedforsecurity=False).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x50  # version 5
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_URL = uuid.NAMESPACE_URL.bytes


def _identifier(record: OutcomeRecord, key: str) -> dict[str, str]:
    return {"system": IDENTIFIER_SYSTEM, "value": record.identifier_value(key)}


def _period(record: OutcomeRecord) -> dict[str, str]:
    start, end = _period_of(record.tz, record.window_start_ms, record.window_end_ms)
    return {"start": start, "end": end}


@lru_cache(maxsize=4096)
def _period_of(tz: str, start_ms: int, end_ms: int) -> tuple[str, str]:
    return isoformat_local(tz, start_ms), isoformat_local(tz, end_ms)


def _subject(record: OutcomeRecord) -> dict[str, Any]:
    if record.patient_reference:
        return {"reference": record.patient_reference}
    if record.patient_identifiers:
        system, value = record.patient_identifiers[0]
        return {"identifier": {"system": system, "value": value}}
    return {
        "identifier": {"system": "https://glucobridge.example/fhir/NamingSystem/patient", "value": record.patient_id}
    }


def _method(record: OutcomeRecord) -> dict[str, Any]:
    code = "time-weighted" if record.method == "time" else "reading-count"
    return {
        "coding": [{"system": CODESYSTEM, "code": code, "display": f"glucobridge {record.method} method"}],
        "text": (f"glucobridge outcomes engine {record.engine_version}, method {record.method}, "
                 f"policy {record.policy_hash[:16]}"),
    }  # fmt: skip


def _quantity(value: Decimal, unit: str, ucum: str) -> dict[str, Any]:
    return {"value": as_json_number(value), "unit": unit, "system": UCUM, "code": ucum}


def _insufficient(record: OutcomeRecord) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """interpretation + note saying the window is not a complete picture (empty when it is sufficient)."""
    if record.sufficient:
        return [], []
    reasons = record.document.get("sufficiency", {}).get("reasons", [])
    interpretation = [{
        "coding": [{"system": CODESYSTEM, "code": "insufficient-data",
                    "display": "Insufficient CGM data for a complete summary"}],
        "text": "Insufficient data",
    }]  # fmt: skip
    return interpretation, [{"text": "Insufficient CGM data: " + "; ".join(reasons)}]


def _observation_common(record: OutcomeRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """What every aggregated Observation of a record says alike, before and after its profile (built once per record;
    each Observation copies them, sharing their nested values, which nothing changes)."""
    interpretation, note = _insufficient(record)
    common: dict[str, Any] = {
        "status": "corrected" if record.is_correction else "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "laboratory"}]}],
        "subject": _subject(record),
        "effectivePeriod": _period(record),
        "issued": record.recorded.isoformat().replace("+00:00", "Z"),
        "method": _method(record),
        "device": {"reference": _uuid(record, "device")},
        "derivedFrom": [{"reference": _uuid(record, "raw_data")}],
    }
    return common, ({"interpretation": interpretation, "note": note} if interpretation else {})


def _observation_base(
    record: OutcomeRecord, key: str, profile: str | None, common: tuple[dict[str, Any], dict[str, Any]]
) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "identifier": [_identifier(record, key)], **common[0]}
    if profile:
        resource["meta"] = {"profile": [profile]}
    resource.update(common[1])
    return resource


def _band(metrics: Mapping[str, Any], key: str) -> Decimal:
    value = filed(metric(key), metrics)
    if value is None:
        raise ValueError(f"{key} is missing: the window has no readings")
    return value


def _coding(m: Metric) -> dict[str, str]:
    code = m.code()
    assert code is not None
    return {"system": code.system, "code": code.code}


def _panel_coding() -> dict[str, str]:
    return {"system": SUMMARY_PANEL.system, "code": SUMMARY_PANEL.code, "display": SUMMARY_PANEL.display}


def observations(record: OutcomeRecord) -> dict[str, dict[str, Any]]:
    """The aggregated Observations by key; "summary" is the CGM Summary panel."""
    if not record.metrics.get("readings_used"):
        raise ValueError("no readings were used in this window: there is nothing to summarise")
    out: dict[str, dict[str, Any]] = {}
    common = _observation_common(record)
    for member in members(record):
        resource = _observation_base(record, member.key, member.profile, common)
        resource["code"] = {"coding": [{"system": member.system, "code": member.code, "display": member.display}]}
        if member.key == "times_in_ranges":
            resource["component"] = [
                {
                    "code": {"coding": [_coding(metric(key))]},
                    "valueQuantity": _quantity(_band(record.metrics, key), "%", "%"),
                }
                for _slice, key in TIR_COMPONENTS
            ]  # fmt: skip
        elif member.value is None:
            resource["dataAbsentReason"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-applicable"}
                ],
                "text": "not enough readings for this statistic",
            }
        else:
            resource["valueQuantity"] = _quantity(member.value, member.unit, member.ucum)
        out[member.key] = resource
    summary = _observation_base(record, "summary", SUMMARY_PROFILE, common)
    summary["code"] = {"coding": [_panel_coding()]}
    summary["hasMember"] = [{"reference": _uuid(record, key)} for key in out]
    return {"summary": summary, **out}


def cgm_device(record: OutcomeRecord, version: FhirVersion) -> dict[str, Any]:
    profile = device_profile(record.device_key)
    name = profile.name if record.device_key else "Continuous glucose monitor (model not reported)"
    device: dict[str, Any] = {
        "resourceType": "Device",
        "meta": {"profile": [f"{IG}/cgm-device"]} if version == "R4" else {},
        "identifier": [_identifier(record, "device")],
    }
    if version == "R4":
        device["deviceName"] = [{"name": name, "type": "user-friendly-name"}]
    else:
        device["name"] = [{"value": name, "type": "user-friendly-name"}]
    if not device["meta"]:
        del device["meta"]
    return device


def engine_device(record: OutcomeRecord, version: FhirVersion) -> dict[str, Any]:
    name = "glucobridge outcomes engine"
    device: dict[str, Any] = {
        "resourceType": "Device",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": f"engine-{record.engine_version}"}],
        "version": [{"value": record.engine_version}],
        "owner": {"reference": _uuid(record, "organization")},
    }
    if version == "R4":
        device["deviceName"] = [{"name": name, "type": "user-friendly-name"}]
    else:
        device["name"] = [{"value": name, "type": "user-friendly-name"}]
    return device


def organization(record: OutcomeRecord) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": f"organization-{record.organization}"}],
        "name": record.organization,
    }


def computation(record: OutcomeRecord) -> dict[str, Any]:
    """What verify needs to recompute: the policy, the window, the zone and the engine version."""
    return {
        "engine_version": record.engine_version,
        "policy": dict(record.policy),
        "policy_hash": record.policy_hash,
        "window": {"start_ms": record.window_start_ms, "end_ms": record.window_end_ms},
        "tz": record.tz,
        "patient_id": record.patient_id,
        "version": record.version,
        "mean_unit": record.mean_unit,
        "input_digest": record.input_digest,
    }


def _attachment(content_type: str, data: bytes, title: str, *, inline: bool) -> dict[str, Any]:
    attachment = _described(content_type, title, len(data), base64.b64encode(hashlib.sha1(data).digest()).decode())
    if inline:
        attachment["data"] = base64.b64encode(data).decode()
    return attachment


def _described(content_type: str, title: str, size: int, sha1: str) -> dict[str, Any]:
    """An Attachment that describes its data (size, base64 SHA-1) without carrying it."""
    return {"contentType": content_type, "title": title, "size": size, "hash": sha1}


def raw_data(
    record: OutcomeRecord, version: FhirVersion, *, with_binary: bool = True
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The DocumentReference describing exactly the readings used, and the Binary holding them (if asked)."""
    binary = None
    if with_binary:
        binary = {
            "resourceType": "Binary",
            "contentType": RAW_DATA_TYPE,
            "data": base64.b64encode(record.ndjson).decode(),
        }
    digest = record.raw_digest
    raw = _described(RAW_DATA_TYPE, "CGM readings used (canonical NDJSON)", digest.size, digest.sha1)
    raw["url"] = _uuid(record, "raw_binary")
    spec = json.dumps(computation(record), sort_keys=True, separators=(",", ":")).encode()
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [_identifier(record, "raw_data"), {"system": SHA256_SYSTEM, "value": record.input_digest}],
        "status": "current",
        "type": {"coding": [{"system": CODESYSTEM, "code": "cgm-readings-used",
                             "display": "CGM readings used for an outcome window"}]},
        "subject": _subject(record),
        "date": record.recorded.isoformat().replace("+00:00", "Z"),
        "description": f"The {record.metrics.get('readings_used')} CGM readings behind the outcome window, "
                       f"SHA-256 {record.input_digest}",
        "content": [
            {"attachment": raw},
            {"attachment": _attachment(COMPUTATION_TYPE, spec, "glucobridge computation", inline=True)},
        ],
    }  # fmt: skip
    if version == "R4":
        document["context"] = {"period": _period(record)}
    else:
        document["period"] = _period(record)
    return document, binary


def diagnostic_report(record: OutcomeRecord, pdf: bytes) -> dict[str, Any]:
    _, note = _insufficient(record)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "meta": {"profile": [f"{IG}/cgm-summary-pdf"]},
        "identifier": [_identifier(record, "pdf_report")],
        "status": "corrected" if record.is_correction else "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
        "code": {"coding": [_panel_coding()]},
        "subject": _subject(record),
        "effectivePeriod": _period(record),
        "issued": record.recorded.isoformat().replace("+00:00", "Z"),
        "result": [{"reference": _uuid(record, "summary")}],
        "presentedForm": [_attachment("application/pdf", pdf, "CGM summary (AGP report)", inline=True)],
    }
    if note:
        report["conclusion"] = note[0]["text"]
    return report


def document_encounter(body: dict[str, Any], encounter: str, version: FhirVersion) -> None:
    """File the document to an encounter: R4 `context.encounter` (a list in the context backbone), R5 `context`
    (itself the list of References: R5 moved the period out to `DocumentReference.period`)."""
    if version == "R5":
        body.setdefault("context", []).append({"reference": encounter})
    else:
        body.setdefault("context", {})["encounter"] = [{"reference": encounter}]


def document_reference(
    record: OutcomeRecord, data: bytes, content_type: str, *, version: FhirVersion = "R4", key: str = ""
) -> dict[str, Any]:
    """A clinical document for sites that file documents: the PDF AGP report (Oracle Health) or the text note
    (Epic accepts text/plain only). The CGM summary panel's LOINC as type; the window as period; a correction
    `replaces` v(n-1)."""
    key = key or ("pdf_document" if content_type == "application/pdf" else "note_document")
    title = "CGM summary (AGP report)" if content_type == "application/pdf" else "CGM summary note"
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "identifier": [_identifier(record, key)],
        "status": "current",
        "type": {"coding": [_panel_coding()]},
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                                  "code": "clinical-note"}]}],
        "subject": _subject(record),
        "date": record.recorded.isoformat().replace("+00:00", "Z"),
        "description": title,
        "content": [{"attachment": _attachment(content_type, data, title, inline=True)}],
    }  # fmt: skip
    if record.prior is not None:
        code: Any = "replaces"
        if version == "R5":  # a CodeableConcept in R5
            code = {"coding": [{"system": "http://hl7.org/fhir/document-relationship-type", "code": "replaces"}]}
        resource["relatesTo"] = [{
            "code": code,
            "target": {"identifier": {"system": IDENTIFIER_SYSTEM,
                                      "value": record.identifier_value(key, record.prior.version)}},
        }]  # fmt: skip
    if version == "R4":
        resource["context"] = {"period": _period(record)}
    else:
        resource["period"] = _period(record)
    return resource


def provenance(
    record: OutcomeRecord, targets: list[str], version: FhirVersion, *, sign: Callable[[bytes], str] | None = None
) -> dict[str, Any]:
    recorded = record.recorded.isoformat().replace("+00:00", "Z")
    entity: list[dict[str, Any]] = [{"role": "source", "what": {"reference": _uuid(record, "raw_data")}}]
    if record.prior is not None:
        entity.append({
            "role": "revision",
            "what": {
                "identifier": {"system": IDENTIFIER_SYSTEM,
                               "value": record.identifier_value("summary", record.prior.version)},
                "display": f"outcome version {record.prior.version} (inputs SHA-256 {record.prior.input_digest})",
            },
        })  # fmt: skip
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": t} for t in targets],
        "occurredPeriod": _period(record),
        "recorded": recorded,
        "policy": [POLICY_URI + record.policy_hash],
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": "UPDATE" if record.is_correction else "CREATE"}]},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                 "code": "assembler"}]},
            "who": {"reference": _uuid(record, "engine_device"),
                    "display": f"glucobridge engine {record.engine_version}"},
            "onBehalfOf": {"reference": _uuid(record, "organization")},
        }],
        "entity": entity,
    }  # fmt: skip
    if version == "R5":
        resource["patient"] = _subject(record)
    if sign is not None:
        resource["signature"] = [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14",
                      "display": "Source Signature"}],
            "when": recorded,
            "who": {"reference": _uuid(record, "engine_device")},
            "sigFormat": "application/jose",
            "data": base64.b64encode(sign(signing_payload(record)).encode()).decode(),
        }]  # fmt: skip
    return resource


def signing_payload(record: OutcomeRecord) -> bytes:
    """What the JWS signs: the input digest with the window, policy and engine version it was computed under."""
    return json.dumps({
        "input_digest": record.input_digest, "policy_hash": record.policy_hash, "engine_version": record.engine_version,
        "window": [record.window_start_ms, record.window_end_ms], "patient": record.patient_id,
        "version": record.version,
    }, sort_keys=True, separators=(",", ":")).encode()  # fmt: skip


def _entry(record: OutcomeRecord, key: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A transaction entry: a conditional create on the business identifier, or, for the resources that have no
    identifier (Binary, Provenance), an update of a deterministic id, so that a resend creates nothing new."""
    full_url = _uuid(record, key)
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):  # Bundle.identifier is single
        identifiers = [identifiers]
    if identifiers:
        first = identifiers[0]
        request = {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": f"identifier={first['system']}|{first['value']}",
        }
    else:
        resource["id"] = record.identifier_value(key)
        request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    return {"fullUrl": full_url, "resource": resource, "request": request}


def outcome_bundle(
    record: OutcomeRecord,
    *,
    version: FhirVersion = "R4",
    pdf: bytes | None = None,
    sign: Callable[[bytes], str] | None = None,
    ig_submission: bool = True,
    include_raw: bool = True,
) -> dict[str, Any]:
    """A transaction Bundle with every resource of the outcome window (see the module docstring).

    `ig_submission` claims the IG's data-submission Bundle profile (for `$submit-cgm-bundle`); otherwise it is
    a plain transaction for servers without the operation (conditional creates on the identifiers either way).
    `include_raw=False` leaves the readings Binary out (the DocumentReference then names it `Binary/<id>`, to be
    stored once, e.g. by a nightly job); `verify` needs it in.
    """
    obs = observations(record)
    doc, binary = raw_data(record, version, with_binary=include_raw)
    entries = [
        _entry(record, "organization", organization(record)),
        _entry(record, "engine_device", engine_device(record, version)),
        _entry(record, "device", cgm_device(record, version)),
    ]
    if binary is not None:
        entries.append(_entry(record, "raw_binary", binary))
    else:
        doc["content"][0]["attachment"]["url"] = f"Binary/{record.identifier_value('raw_binary')}"
    entries.append(_entry(record, "raw_data", doc))
    entries += [_entry(record, key, resource) for key, resource in obs.items()]
    targets = [_uuid(record, key) for key in obs]
    if pdf is not None:
        entries.append(_entry(record, "pdf_report", diagnostic_report(record, pdf)))
        targets.append(_uuid(record, "pdf_report"))
    entries.append(_entry(record, "provenance", provenance(record, targets, version, sign=sign)))
    if version == "R5":
        for entry in entries:
            entry["resource"].pop("meta", None)  # the IG profiles are R4 profiles
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "identifier": _identifier(record, "bundle"),
        "type": "transaction",
        "timestamp": record.recorded.isoformat().replace("+00:00", "Z"),
        "entry": entries,
    }
    if ig_submission and version == "R4":
        bundle["meta"] = {"profile": [f"{IG}/cgm-data-submission-bundle"]}
    return bundle


def submit_parameters(bundle: dict[str, Any]) -> dict[str, Any]:
    """The body of `POST [base]/$submit-cgm-bundle`: a Parameters resource with the Bundle as `resource`."""
    return {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bundle}]}


def now_utc() -> datetime:
    return datetime.now(UTC)
