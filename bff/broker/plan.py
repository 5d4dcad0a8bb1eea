"""What will be written, and how: a site's capability matrix applied to one outcome version (pure; no I/O).

`plan_writes(caps, record, context)` renders the exact requests (FHIR resources, an HL7 v2 message) that one
outcome window becomes at one site; the clinician reviews and signs exactly that list, and the outbox sends each
item as one write intent. Each item says how to find it again at the EHR (`readback`), for a write whose outcome
is unknown.

The vendor's rules come from its profile (`bff.vendors`: `profile_for(caps)`); this module has one builder per
shape of results (`ResultsShape`, ehr-realities.md §1.6–1.7, §2, §3, §5.2):

- **flowsheet rows** (Epic): Observations only as flowsheet rows (category vital-signs, the site's row ids under
  its flowsheet system, an open encounter, `effectiveDateTime`), one create per row, no conditional create, no
  transactions; notes as text/plain DocumentReference. Read back by patient, row and instant.
- **single Observations** (Oracle Health): exactly one category (the site's), `effectiveDateTime` only;
  identifiers are dropped on create, so read back by patient, code and instant; the PDF as a DocumentReference.
- **transaction** (generic SMART R4/R5): one transaction Bundle with conditional creates on our business
  identifiers and a Provenance (a resend creates nothing new); read back by identifier.
- **CGM submission** (CGM IG receiver): `$submit-cgm-bundle` with the IG's data-submission Bundle.
- **HL7 v2** (channel hl7v2, or a PDF the site takes over its interface): one ORU^R01 over MLLP; the PDF in it as
  OBX ED (`pdf_path = "hl7_ed"`) or as its own MDM^T02 (`pdf_path = "hl7_mdm"`).

Which items: `read_only` none; `flowsheet_only` the mapped flowsheet rows; `notes_only` the note;
`observations` the results; `full` the results, the note (when the site names a note type, or its vendor files
notes without one) and the PDF (when `pdf_path` says how). When FHIR and HL7 v2 could both carry an item, FHIR
wins.

The encounter (`[write] encounter_policy`): `launch` files to the launch's encounter, required where the vendor
files only to an open one (Epic); `open_visit_lookup` to the launch's encounter or else the patient's one open
visit, looked up before planning (`bff.encounters`; none or several and the plan is refused, saying so);
`hl7_creates` and `none` file no encounter (the interface makes one; the site takes none).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from bff.capabilities import FhirVersion, SiteCapabilities, WriteChannel, WriteMode
from bff.resources import fhir
from bff.resources.mdm import build_mdm
from bff.resources.note import outcome_note
from bff.resources.oru import build_oru
from bff.resources.record import IDENTIFIER_SYSTEM, OutcomeRecord
from bff.vendors import ResultsShape, profile_for
from engine import isoformat_local
from engine.catalogue import (
    CATALOGUE,
    METRICS,
    MG_DL,
    MMOL_L,
    UCUM,
    Code,
    Kind,
    Metric,
    as_json_number,
    filed,
    metric,
    text,
)

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
KINDS = ("flowsheet", "observations", "note", "pdf", "bundle", "hl7v2")


class PlanError(ValueError):
    """The outcome cannot be written at this site as it stands; the message says what a person can do."""


#: What a CGM IG data receiver accepts in a submission (POST only).
SUBMISSION_TYPES = frozenset({"Observation", "DiagnosticReport", "Device", "DocumentReference", "Provenance"})
#: The single Observations an Oracle-style site receives (one create each; keys of engine.catalogue).
SINGLE_OBSERVATIONS = ("tir", "tbr_l1", "tbr_l2", "tar_l1", "tar_l2", "mean_glucose", "gmi", "cv")
#: What a sign-off records of the outcome: every metric that can be filed, as its filed decimal string.
SIGNED = tuple(m.key for m in METRICS if m.code() is not None)


@dataclass(frozen=True, slots=True)
class WriteContext:
    """What the launch knows and the record does not: the encounter to file to, the display unit of the note."""

    encounter: str | None = None  # "Encounter/123"
    note_unit: str = "mg/dL"
    signer: str | None = None  # the clinician as the EHR names them ("Dana Smith, MD"), shown in the note
    pdf: bytes | None = None  # the AGP report, when the site takes one
    visit_note: str | None = None  # why no open visit was found (open_visit_lookup), for the refusal


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    """One request to one EHR: exactly what the clinician reviews and what the outbox sends."""

    kind: str  # flowsheet | observations | note | pdf | bundle | hl7v2
    channel: str  # fhir | hl7v2
    method: str  # POST (FHIR) or SEND (MLLP)
    path: str  # relative to the FHIR base: "Observation", "" (a transaction), "$submit-cgm-bundle"
    metrics: tuple[str, ...]
    summary: str  # one line for the review, e.g. "Flowsheet row 3040101010 (Time in range 70-180 mg/dL): 72.4 %"
    body: dict[str, Any] | None = None
    message: str | None = None  # the HL7 v2 message
    headers: Mapping[str, str] = field(default_factory=dict)
    readback: Mapping[str, Any] = field(default_factory=dict)  # {"type": ..., "params": {...}} or {}
    category: str = ""  # the Observation category, when the item is an Observation

    @property
    def resource_type(self) -> str:
        return str(self.body.get("resourceType", "")) if self.body else ""

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = list(self.metrics)
        data["headers"] = dict(self.headers)
        data["readback"] = dict(self.readback)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedWrite:
        return cls(
            kind=str(data["kind"]), channel=str(data["channel"]), method=str(data["method"]), path=str(data["path"]),
            metrics=tuple(data.get("metrics", ())), summary=str(data.get("summary", "")), body=data.get("body"),
            message=data.get("message"), headers=dict(data.get("headers", {})), readback=dict(data.get("readback", {})),
            category=str(data.get("category", "")),
        )  # fmt: skip


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def plan_digest(writes: list[PlannedWrite], content: Mapping[str, Any]) -> str:
    """SHA-256 of what a clinician signs: the clinical content and every request, in order."""
    return hashlib.sha256(canonical({"content": content, "writes": [w.as_json() for w in writes]})).hexdigest()


def signed_content(record: OutcomeRecord) -> dict[str, Any]:
    """The clinical content of a sign-off (what a deferred write will carry whatever the site's format then).

    `values` are the filed decimal strings (engine.catalogue: rounded once), concentrations in mg/dL;
    `values_mmol_l` the concentrations in mmol/L, rounded once from the same canonical value (never from mg/dL).
    """
    m = record.metrics
    return {
        "patient": record.patient_id,
        "window": [record.window_start_ms, record.window_end_ms],
        "tz": record.tz,
        "outcome_version": record.version,
        "input_digest": record.input_digest,
        "policy_hash": record.policy_hash,
        "engine_version": record.engine_version,
        "sufficient": record.sufficient,
        "values": {key: _text(filed(metric(key), m)) for key in SIGNED},
        "values_mmol_l": {
            key: _text(filed(metric(key), m, MMOL_L)) for key in SIGNED if metric(key).kind is Kind.CONCENTRATION
        },
    }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# --- helpers -------------------------------------------------------------------------------------------------


def _instant(record: OutcomeRecord) -> str:
    """The Observation instant, in UTC to the second (what read-back searches for): the end of the window, or
    for a correction the moment the corrected version was computed (a flowsheet keeps one value per row and
    instant, and Epic cannot update it: the corrected value is filed beside the first, marked as a correction)."""
    if record.is_correction:
        moment = record.recorded.replace(microsecond=0)
    else:
        moment = datetime.fromtimestamp(record.window_end_ms / 1000, UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")


def _patient(record: OutcomeRecord) -> str:
    if not record.patient_reference:
        raise PlanError(
            f"patient {record.patient_id} has no FHIR identity at site {record.site}: "
            "launch the app from the patient's chart at this site once, or ingest a feed that names the patient"
        )
    return record.patient_reference


def _encounter(caps: SiteCapabilities, context: WriteContext) -> str | None:
    policy = caps.write.encounter_policy
    if policy in ("hl7_creates", "none"):
        return None
    if policy == "open_visit_lookup" and not context.encounter:
        why = context.visit_note or "no open visit of the patient was looked up for this plan"
        raise PlanError(
            f"site {caps.key} files results to the patient's open visit: {why}. Launch the app from the visit "
            "to file to, or ask the site to change its encounter policy"
        )
    if profile_for(caps).writer.encounter_required and not context.encounter:
        raise PlanError(
            f"site {caps.key} files results only to an open encounter: launch the app from an open encounter "
            "(this launch has none), or ask the site to change its encounter policy"
        )
    return context.encounter


def _fhir_version(caps: SiteCapabilities) -> Literal["R4", "R5"]:
    return "R5" if caps.fhir.version is FhirVersion.R5 else "R4"


def _category(code: str) -> list[dict[str, Any]]:
    return [{"coding": [{"system": OBS_CATEGORY, "code": code}]}]


def _unit(caps: SiteCapabilities, metric: Metric) -> str:
    """The unit a metric is filed in at this site (concentrations: the site's glucose unit)."""
    return caps.write.glucose_unit if metric.kind is Kind.CONCENTRATION else MG_DL


def _filed(record: OutcomeRecord, metric: Metric, unit: str) -> Decimal | None:
    return filed(metric, record.metrics, unit)


def _quantity(metric: Metric, value: Decimal, unit: str) -> dict[str, Any]:
    u = metric.unit(unit)
    return {"value": as_json_number(value), "unit": u.label, "system": UCUM, "code": u.ucum}


def _code(metric: Metric, unit: str) -> Code:
    code = metric.code(unit)
    if code is None:
        raise PlanError(f"{metric.name} has no code to file it under")
    return code


# --- Epic: flowsheet rows --------------------------------------------------------------------------------------


def _flowsheet(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> list[PlannedWrite]:
    if not caps.write.flowsheet_rows:
        raise PlanError(f"site {caps.key} has no flowsheet rows mapped ([write.flowsheet_rows])")
    system = caps.write.flowsheet_system
    if not system:
        raise PlanError(f"site {caps.key} does not name its flowsheet row system ([write] flowsheet_system)")
    patient = _patient(record)
    encounter = _encounter(caps, context)
    instant = _instant(record)
    out: list[PlannedWrite] = []
    for key, row in sorted(caps.write.flowsheet_rows.items()):
        if key not in CATALOGUE:
            raise PlanError(f"site {caps.key} maps {key!r} to a flowsheet row, but glucobridge has no such metric")
        m = CATALOGUE[key]
        unit = _unit(caps, m)
        value = _filed(record, m, unit)
        if value is None:
            raise PlanError(f"{m.name} has no value in this window (too few readings): it cannot be filed")
        code = _code(m, unit)
        body: dict[str, Any] = {
            "resourceType": "Observation",
            "status": "final",
            "category": _category("vital-signs"),
            "code": {
                "coding": [
                    {"system": system, "code": row, "display": m.name},
                    {"system": code.system, "code": code.code, "display": code.display},
                ],
                "text": m.name,
            },
            "subject": {"reference": patient},
            "effectiveDateTime": instant,
            "valueQuantity": _quantity(m, value, unit),
        }
        if encounter:
            body["encounter"] = {"reference": encounter}
        if record.is_correction:
            body["note"] = [{"text": f"Corrected: outcome version {record.version} replaces an earlier version"}]
        out.append(
            PlannedWrite(
                kind="flowsheet", channel="fhir", method="POST", path="Observation", metrics=(key,),
                summary=f"Flowsheet row {row} ({m.name}): {text(m, value, unit)}", body=body,
                readback={"type": "Observation",
                          "params": {"patient": patient, "code": f"{system}|{row}", "date": f"eq{instant}"}},
                category="vital-signs",
            )
        )  # fmt: skip
    return out


# --- Oracle: single Observations ------------------------------------------------------------------------------


def _single_observations(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> list[PlannedWrite]:
    patient = _patient(record)
    encounter = _encounter(caps, context)
    instant = _instant(record)
    category = caps.write.observation_category
    out: list[PlannedWrite] = []
    for key in SINGLE_OBSERVATIONS:
        m = CATALOGUE[key]
        unit = _unit(caps, m)
        value = _filed(record, m, unit)
        if value is None:
            continue
        code = _code(m, unit)
        body = {
            "resourceType": "Observation",
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": record.identifier_value(key)}],
            "status": "corrected" if record.is_correction else "final",
            "category": _category(category),
            "code": {"coding": [{"system": code.system, "code": code.code, "display": code.display}], "text": m.name},
            "subject": {"reference": patient},
            "effectiveDateTime": instant,
            "valueQuantity": _quantity(m, value, unit),
        }  # fmt: skip
        if encounter:
            body["encounter"] = {"reference": encounter}
        out.append(
            PlannedWrite(
                kind="observations", channel="fhir", method="POST", path="Observation", metrics=(key,),
                summary=f"Observation {m.name} (LOINC {code.code}, {category}): {text(m, value, unit)}",
                body=body,
                readback={"type": "Observation",
                          "params": {"patient": patient, "code": f"{code.system}|{code.code}", "date": f"eq{instant}"}},
                category=category,
            )
        )  # fmt: skip
    if not out:
        raise PlanError("no metric of this window has a value: there is nothing to file")
    return out


# --- generic SMART and CGM IG receivers: one Bundle ------------------------------------------------------------


def _dangling(value: Any, kept: set[str]) -> bool:
    if not isinstance(value, dict):
        return False
    reference = value.get("reference")
    return isinstance(reference, str) and reference.startswith("urn:uuid:") and reference not in kept


def _drop_dangling(node: Any, kept: set[str]) -> None:
    """Remove references to entries left out of the Bundle (a dangling urn:uuid fails the whole transaction)."""
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if _dangling(v, kept)]:
            del node[key]
        for value in node.values():
            if isinstance(value, list):
                value[:] = [v for v in value if not _dangling(v, kept)]
            _drop_dangling(value, kept)
    elif isinstance(node, list):
        for value in node:
            _drop_dangling(value, kept)


def _bundle(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> PlannedWrite:
    _patient(record)
    encounter = _encounter(caps, context)
    version = _fhir_version(caps)
    receiver = profile_for(caps).results is ResultsShape.CGM_SUBMISSION
    pdf = context.pdf if caps.write.mode is WriteMode.FULL else None
    bundle = fhir.outcome_bundle(record, version=version, pdf=pdf, ig_submission=receiver, include_raw=not receiver)
    # The Organization is left out (many EHRs take no Organization from an app; the Provenance names the engine).
    # A data receiver takes POSTs of the IG's types only (no Binary): its Provenance is a plain create.
    entries = []
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Organization" or (
            receiver and resource["resourceType"] not in SUBMISSION_TYPES
        ):
            continue
        if receiver and entry["request"]["method"] == "PUT":
            resource.pop("id", None)
            entry["request"] = {"method": "POST", "url": resource["resourceType"]}
        for agent in resource.get("agent", []):
            agent.pop("onBehalfOf", None)
        entries.append(entry)
    kept = {entry["fullUrl"] for entry in entries}
    for entry in entries:
        _drop_dangling(entry["resource"], kept)
    bundle["entry"] = entries
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation":
            resource["category"] = _category(caps.write.observation_category)
        if encounter and resource["resourceType"] in ("Observation", "DiagnosticReport"):
            resource["encounter"] = {"reference": encounter}
    summary_id = record.identifier_value("summary")
    tir = CATALOGUE["tir"]
    in_range = filed(tir, record.metrics)
    readback = {"type": "Observation", "params": {"identifier": f"{IDENTIFIER_SYSTEM}|{summary_id}"}}
    what = f"{len(bundle['entry'])} resources: CGM summary panel, {len(fhir.members(record))} results"
    what += f" (time in range {text(tir, in_range)})" if in_range is not None else ""
    what += ", device, raw readings and Provenance"
    if receiver:
        return PlannedWrite(
            kind="bundle", channel="fhir", method="POST", path="$submit-cgm-bundle", metrics=("summary",),
            summary=f"CGM data submission ($submit-cgm-bundle): {what}", body=fhir.submit_parameters(bundle),
            readback=readback, category=caps.write.observation_category,
        )  # fmt: skip
    return PlannedWrite(
        kind="bundle", channel="fhir", method="POST", path="", metrics=("summary",),
        summary=f"Transaction of {what}", body=bundle, readback=readback,
        category=caps.write.observation_category,
    )  # fmt: skip


# --- documents ------------------------------------------------------------------------------------------------


def _note(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> PlannedWrite:
    patient = _patient(record)
    note = outcome_note(record, unit=context.note_unit, signer=context.signer)
    body = fhir.document_reference(record, note.encode(), "text/plain", version=_fhir_version(caps))
    body["subject"] = {"reference": patient}
    body["docStatus"] = "final"
    if caps.write.note_type:
        body["type"] = {"coding": [{"system": "urn:glucobridge:site-note-type", "code": caps.write.note_type}],
                        "text": "CGM summary note"}  # fmt: skip
    encounter = _encounter(caps, context)
    if encounter:
        fhir.document_encounter(body, encounter, _fhir_version(caps))
    first_line = note.splitlines()[0] if note else ""
    return PlannedWrite(
        kind="note", channel="fhir", method="POST", path="DocumentReference", metrics=("note",),
        summary=f"Note (text/plain, {len(note.splitlines())} lines): {first_line}", body=body,
        readback={"type": "DocumentReference",
                  "params": {"identifier": f"{IDENTIFIER_SYSTEM}|{record.identifier_value('note_document')}"}},
    )  # fmt: skip


def _pdf(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> PlannedWrite:
    patient = _patient(record)
    if context.pdf is None:
        raise PlanError("the AGP report PDF was not rendered for this plan")
    body = fhir.document_reference(record, context.pdf, "application/pdf", version=_fhir_version(caps))
    body["subject"] = {"reference": patient}
    body["docStatus"] = "final"
    end = isoformat_local(record.tz, record.window_end_ms)
    period = body.setdefault("period", {}) if _fhir_version(caps) == "R5" else body.setdefault("context", {})
    if _fhir_version(caps) == "R4":
        period = period.setdefault("period", {})
    period["end"] = end
    return PlannedWrite(
        kind="pdf", channel="fhir", method="POST", path="DocumentReference", metrics=("pdf",),
        summary=f"AGP report (PDF, {len(context.pdf):,} bytes) as a clinical document", body=body,
        readback={"type": "DocumentReference",
                  "params": {"identifier": f"{IDENTIFIER_SYSTEM}|{record.identifier_value('pdf_document')}"}},
    )  # fmt: skip


def _sending(caps: SiteCapabilities) -> tuple[str, str]:
    return ("GLUCOBRIDGE", caps.hl7v2.sending_facility or "GLUCOBRIDGE")


def _receiving(caps: SiteCapabilities) -> tuple[str, str]:
    return (caps.hl7v2.receiving_application, caps.hl7v2.receiving_facility)


def _oru(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext, *, with_pdf: bool) -> PlannedWrite:
    h = caps.hl7v2
    try:
        oru = build_oru(
            record, version=h.version, row_ids=dict(caps.write.flowsheet_rows) or None,
            pdf=context.pdf if with_pdf else None, sending=_sending(caps), receiving=_receiving(caps),
        )  # fmt: skip
    except ValueError as exc:
        raise PlanError(f"the ORU^R01 cannot be built: {exc}") from None
    what = "results and the AGP report (ED)" if with_pdf else "results"
    return PlannedWrite(
        kind="hl7v2", channel="hl7v2", method="SEND", path="", metrics=("summary",),
        summary=f"HL7 v2 ORU^R01 {oru.control_id} ({what}) to {h.host}:{h.port}", message=oru.text,
    )  # fmt: skip


def _mdm(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> PlannedWrite:
    """The AGP report as its own document: MDM^T02 over the site's HL7 v2 interface (`pdf_path = "hl7_mdm"`)."""
    h = caps.hl7v2
    if context.pdf is None:
        raise PlanError("the AGP report PDF was not rendered for this plan")
    try:
        mdm = build_mdm(record, context.pdf, version=h.version, document_type=caps.write.note_type or "CGM-AGP",
                        sending=_sending(caps), receiving=_receiving(caps))  # fmt: skip
    except ValueError as exc:
        raise PlanError(f"the MDM^T02 cannot be built: {exc}") from None
    return PlannedWrite(
        kind="pdf", channel="hl7v2", method="SEND", path="", metrics=("pdf",),
        summary=f"HL7 v2 MDM^T02 {mdm.control_id}: AGP report (PDF, {len(context.pdf):,} bytes) to {h.host}:{h.port}",
        message=mdm.text,
    )  # fmt: skip


# --- the plan -------------------------------------------------------------------------------------------------


def _bundle_results(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> list[PlannedWrite]:
    return [_bundle(caps, record, context)]


#: One builder per shape of results (`bff.vendors.ResultsShape`; HL7 v2 is planned by channel, below).
RESULTS = {
    ResultsShape.FLOWSHEET_ROWS: _flowsheet,
    ResultsShape.SINGLE_OBSERVATIONS: _single_observations,
    ResultsShape.TRANSACTION: _bundle_results,
    ResultsShape.CGM_SUBMISSION: _bundle_results,
}


def _hl7_plan(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> list[PlannedWrite]:
    mode, pdf_path = caps.write.mode, caps.write.pdf_path
    if mode is WriteMode.NOTES_ONLY:
        raise PlanError(f"site {caps.key} takes notes only, and notes over HL7 v2 (MDM) are not built yet")
    full = mode is WriteMode.FULL
    out = [_oru(caps, record, context, with_pdf=full and pdf_path == "hl7_ed")]
    if full and pdf_path == "hl7_mdm":
        out.append(_mdm(caps, record, context))
    return out


def plan_writes(caps: SiteCapabilities, record: OutcomeRecord, context: WriteContext) -> list[PlannedWrite]:
    """Every request this outcome becomes at this site under its current capabilities ([] when read-only).

    Concentrations are filed in the site's glucose unit (`[write] glucose_unit`), whatever unit the record was
    built for."""
    if record.mean_unit != caps.write.glucose_unit:
        record = dataclasses.replace(record, mean_unit=caps.write.glucose_unit)
    mode = caps.write.mode
    if mode is WriteMode.READ_ONLY:
        return []
    if not record.metrics.get("readings_used"):
        raise PlanError("no readings were used in this window: there is nothing to file")
    if record.tz_source == "unknown":
        raise PlanError(
            "the patient's time zone is not known, so the days and the AGP would be in UTC: set the site's "
            "time_zone (sites/*.toml) or the patient's zone (glucobridge patient set … --tz), then review again"
        )
    if caps.write.channel is WriteChannel.HL7V2:
        return _hl7_plan(caps, record, context)
    if mode is WriteMode.FLOWSHEET_ONLY:
        return _flowsheet(caps, record, context)
    if mode is WriteMode.NOTES_ONLY:
        return [_note(caps, record, context)]
    site = profile_for(caps)
    out = RESULTS[site.results](caps, record, context)
    if mode is WriteMode.FULL:
        if not site.writer.note_needs_type or caps.write.note_type:
            out.append(_note(caps, record, context))
        if caps.write.pdf_path == "cerner_docref" and context.pdf is not None:
            out.append(_pdf(caps, record, context))
        elif caps.write.pdf_path == "hl7_ed" and context.pdf is not None:
            out.append(_oru(caps, record, context, with_pdf=True))  # FHIR cannot carry it here: HL7 v2 can
        elif caps.write.pdf_path == "hl7_mdm" and context.pdf is not None:
            out.append(_mdm(caps, record, context))
    return out


def pdf_wanted(caps: SiteCapabilities) -> bool:
    """Whether a plan at this site includes the AGP report (render it only then: it takes a moment)."""
    return caps.write.mode is WriteMode.FULL and caps.write.pdf_path != "none"


def note_bytes(write: PlannedWrite) -> bytes | None:
    """The note's text, decoded from its attachment (for the review page)."""
    if write.body is None or write.kind != "note":
        return None
    data = write.body["content"][0]["attachment"].get("data")
    return base64.b64decode(data) if isinstance(data, str) else None


__all__ = [
    "KINDS",
    "PlanError",
    "PlannedWrite",
    "WriteContext",
    "canonical",
    "note_bytes",
    "plan_digest",
    "plan_writes",
    "signed_content",
]
