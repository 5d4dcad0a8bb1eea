"""FHIR CGM sensor-reading Observations (HL7 CGM IG: LOINC 99504-3 mg/dL, 105272-9 mmol/L), streamed.

Input is a Bundle (entries are built one at a time, never the whole Bundle, by `bff.ingest.jsonstream`: bounded
in depth and size, checked as UTF-8) or NDJSON (one resource a line, as FHIR Bulk Data writes it; a line is held
to `MAX_RECORD_BYTES` and its JSON to `MAX_DEPTH`). Each Observation is checked for what a reading needs: a result
status, the sensor-reading code, a numeric valueQuantity in the unit of that code (a `<`/`>` comparator makes a
LOW/HIGH reading at the value), and an effectiveDateTime with a time and a UTC offset.

`subject` gives the patient (`PatientRef("fhir", "Patient/<id>")`, or `PatientRef("id:<system>", value)` from an
identifier); `device.reference` the stream; the device key comes from `device.display` or from a Device resource
in the same input (matched by name: "Dexcom G6" → dexcom-g6). When the input is seekable, Device and Patient
resources are indexed first, so they may come before or after the Observations that point to them; otherwise
only those that come before are known. Other resources (Patient, Device, DiagnosticReport, CGM summary
Observations) are not readings: they are counted in `FhirParser.skipped`, by type; an object whose resourceType
is not a FHIR resource type (R4, R4B or R5) is a problem, not a skip. Identifiers kept or looked up (subject,
device, record identifier) are held to `MAX_KEY_CHARS`.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import IO, Any

import ijson  # type: ignore[import-untyped]

from bff.ingest.bounds import (
    MAX_KEY_CHARS,
    MAX_RECORD_BYTES,
    NOT_QUICK,
    byte_problem,
    clip,
    cut,
    loads_bounded,
    loads_quick,
    read_lines,
    shorten,
    too_long,
)
from bff.ingest.jsonstream import LIST_START, JsonInputError, JsonItem, TopField, stream_list
from bff.ingest.localtime import iso_year_problem, offset_evidence
from bff.ingest.records import (
    Feed,
    FeedFormatError,
    FeedItem,
    FeedProblem,
    FeedReading,
    ParseOptions,
    PatientRef,
)
from engine import DEVICES, GlucoseUnit, SensorFlag, parse_unit
from engine.catalogue import LOINC, READING_UNITS, SUMMARY_CODES

#: The CGM sensor-reading codes and their units; the CGM IG summary codes (legitimate members of a submission
#: Bundle, but not sensor readings): both from the metric catalogue.
READING_CODES = {code: parse_unit(unit) for code, unit in READING_UNITS.items()}
#: Resource types of FHIR R4, R4B and R5: anything else in `resourceType` is not a resource that can be skipped.
RESOURCE_TYPES = frozenset(
    """
    Account ActivityDefinition ActorDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance
    Appointment AppointmentResponse ArtifactAssessment AuditEvent Basic Binary BiologicallyDerivedProduct
    BiologicallyDerivedProductDispense BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry
    ChargeItem ChargeItemDefinition Citation Claim ClaimResponse ClinicalImpression ClinicalUseDefinition
    CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap Condition
    ConditionDefinition Consent Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse
    DetectedIssue Device DeviceAssociation DeviceDefinition DeviceDispense DeviceMetric DeviceRequest DeviceUsage
    DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference Encounter EncounterHistory Endpoint
    EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceReport EvidenceVariable
    ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag FormularyItem GenomicStudy Goal GraphDefinition
    Group GuidanceResponse HealthcareService ImagingSelection ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation ImplementationGuide Ingredient InsurancePlan InventoryItem InventoryReport Invoice
    Library Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement
    MedicinalProductDefinition MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionIntake
    NutritionOrder NutritionProduct Observation ObservationDefinition OperationDefinition OperationOutcome
    Organization OrganizationAffiliation PackagedProductDefinition Parameters Patient PaymentNotice
    PaymentReconciliation Permission Person PlanDefinition Practitioner PractitionerRole Procedure Provenance
    Questionnaire QuestionnaireResponse RegulatedAuthorization RelatedPerson RequestGroup RequestOrchestration
    Requirements ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment Schedule
    SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition StructureMap Subscription
    SubscriptionStatus SubscriptionTopic Substance SubstanceDefinition SubstanceNucleicAcid SubstancePolymer
    SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SupplyDelivery SupplyRequest Task
    TerminologyCapabilities TestPlan TestReport TestScript Transport ValueSet VerificationResult VisionPrescription
    MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
    MedicinalProductPharmaceutical MedicinalProductUndesirableEffect EffectEvidenceSynthesis RiskEvidenceSynthesis
    SubstanceSpecification
    """.split()  # noqa: SIM905 - 180 names read better as words than as a list literal
)
#: The elements of a Bundle (R4, R4B, R5); `_x` (a primitive's extensions) are accepted too.
BUNDLE_ELEMENTS = frozenset(
    {"resourceType", "id", "meta", "implicitRules", "language", "identifier", "type", "timestamp", "total", "link",
     "entry", "signature", "issues"}
)  # fmt: skip
RESULT_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
_STATUS_HELP = "expected final, amended, corrected or preliminary"
_UNITS = {"mg/dl": GlucoseUnit.MG_DL, "mmol/l": GlucoseUnit.MMOL_L}
_COMPARATORS = {"<": SensorFlag.LOW, "<=": SensorFlag.LOW, ">": SensorFlag.HIGH, ">=": SensorFlag.HIGH}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_OFFSET = re.compile(r"(Z|[+-]\d{2}:\d{2})$")
_INDEXED = re.compile(rb'"resourceType"\s*:\s*"(?:Device|Patient)"')
_BOM_AND_SPACE = b" \t\r\n\xef\xbb\xbf"
CHUNK = 16 * 1024
#: How far to look for the end of the first line when telling NDJSON from a Bundle.
PEEK_LIMIT = 64 * 1024
PRELUDE_LIMIT = 1024 * 1024

# --- device names ------------------------------------------------------------------------------------------

_DEXCOM = re.compile(r"\bdexcom\b.*?\bg\s*([4-7])(?!\d)")
_LIBRE = re.compile(r"\blibre(?:\s*([1-3])(?!\d))?\b")
_GUARDIAN = re.compile(r"\bguardian\b.*?(?<!\d)([34])(?!\d)")


@lru_cache(maxsize=1024)
def device_key_for_name(text: str) -> str:
    """Our device key (engine.devices) for a device key or a product name, "" when it names none for sure.

    "dexcom-g6", "Dexcom G6", "Dexcom G7 15 Day" → dexcom-g6/g7; "FreeStyle Libre 2 Plus" → libre-2;
    "FreeStyle Libre" / "FreeStyle Libre 14 day" → libre-1; "Guardian Sensor 3" → guardian-3; "Eversense".
    Apps and readers ("FreeStyle LibreLink", "Dexcom ONE"), Libre Pro and unknown names give "".
    """
    name = text.strip().lower()
    if not name or len(name) > MAX_KEY_CHARS:  # the patterns below scan it: keep that cheap
        return ""
    if name in DEVICES:
        return name
    found = _DEXCOM.search(name)
    if found:
        return f"dexcom-g{found.group(1)}"
    found = _LIBRE.search(name)
    if found and "pro" not in name.split():
        return f"libre-{found.group(1) or '1'}"
    found = _GUARDIAN.search(name)
    if found:
        return f"guardian-{found.group(1)}"
    if "eversense" in name:
        return "eversense"
    return ""


# --- one resource ------------------------------------------------------------------------------------------


class _RecordError(ValueError):
    """A resource that cannot become a reading; the message is the quarantine reason."""


@dataclass(slots=True)
class _Index:
    """Device and Patient resources of the input, by every reference form that may point to them."""

    devices: dict[str, str] = field(default_factory=dict)
    patients: dict[str, PatientRef] = field(default_factory=dict)
    #: What a subject, device or code resolved to (or the reason it did not), by its content: a feed repeats
    #: them in every reading. Emptied whenever the index learns a resource; at most MEMO_MAX entries.
    memo: dict[tuple[Any, ...], tuple[bool, Any]] = field(default_factory=dict)

    def add(self, resource: Mapping[str, Any], full_url: str | None) -> None:
        self.memo.clear()
        kind = resource.get("resourceType")
        rid = resource.get("id")
        keys = [k for k in (full_url, f"{kind}/{rid}" if isinstance(rid, str) and rid else None) if k]
        if not keys:
            return
        if kind == "Device":
            key = _device_resource_key(resource)
            for k in keys:
                self.devices[k] = key
        elif kind == "Patient":
            ref = _patient_resource_ref(resource)
            if ref is not None:
                for k in keys:
                    self.patients[k] = ref


#: Entries of `_Index.memo` (a hostile input with a new subject in every resource fills it once, no further).
MEMO_MAX = 4096


def _memoized(index: _Index, key: tuple[Any, ...] | None, compute: Callable[[], Any]) -> Any:
    """`compute()`, or what it gave (or raised as a _RecordError) for the same key before."""
    if key is None:
        return compute()
    hit = index.memo.get(key)
    if hit is None:
        try:
            hit = (True, compute())
        except _RecordError as exc:
            hit = (False, str(exc))
        if len(index.memo) < MEMO_MAX:
            index.memo[key] = hit
    if not hit[0]:
        raise _RecordError(hit[1])
    return hit[1]


def _text_items(value: Any) -> tuple[tuple[str, str], ...] | None:
    """A JSON object of text values as a hashable key (None for anything else: not memoized). The items keep the
    object's order: equal keys are equal objects, so a hit is always right; the same object written in another
    order is only a miss."""
    if type(value) is not dict:
        return None
    for text in value.values():
        if type(text) is not str:
            return None
    return tuple(value.items())


def _subject_memo(resource: Mapping[str, Any], index: _Index) -> PatientRef | None:
    items = _text_items(resource.get("subject"))
    result: PatientRef | None = _memoized(index, None if items is None else ("subject", items),
                                          lambda: _subject(resource, index))  # fmt: skip
    return result


def _device_memo(resource: Mapping[str, Any], index: _Index) -> tuple[str, str, str]:
    items = _text_items(resource.get("device"))
    result: tuple[str, str, str] = _memoized(index, None if items is None else ("device", items),
                                             lambda: _device(resource, index))  # fmt: skip
    return result


def _reading_code_memo(resource: Mapping[str, Any], index: _Index) -> tuple[str | None, bool, str]:
    code = resource.get("code")
    key: tuple[Any, ...] | None = None
    if type(code) is dict and type(code.get("coding")) is list:
        codings = tuple(_text_items(c) for c in code["coding"])
        key = None if None in codings else ("code", codings)
    result: tuple[str | None, bool, str] = _memoized(index, key, lambda: _reading_code(resource))
    return result


def _device_resource_key(device: Mapping[str, Any]) -> str:
    names: list[str] = []
    for entry in _list(device.get("deviceName")):  # R4
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names.append(entry["name"])
    for entry in _list(device.get("name")):  # R5
        if isinstance(entry, dict) and isinstance(entry.get("value"), str):
            names.append(entry["value"])
    device_type = device.get("type")
    if isinstance(device_type, dict) and isinstance(device_type.get("text"), str):
        names.append(device_type["text"])
    for name in names:
        key = device_key_for_name(name)
        if key:
            return key
    return ""


def _patient_resource_ref(patient: Mapping[str, Any]) -> PatientRef | None:
    rid = patient.get("id")
    if isinstance(rid, str) and rid:
        return PatientRef("fhir", f"Patient/{rid}")
    for identifier in _list(patient.get("identifier")):
        ref = _identifier_ref(identifier)
        if ref is not None:
            return ref
    return None


def _identifier_ref(identifier: Any) -> PatientRef | None:
    if not isinstance(identifier, dict):
        return None
    value = identifier.get("value")
    if not isinstance(value, str) or not value.strip():
        return None
    system = identifier.get("system")
    return PatientRef("id:" + (system if isinstance(system, str) else ""), value.strip())


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _local_ref(reference: str, kind: str) -> str | None:
    """`Kind/<id>` from a relative or absolute reference (a `_history` suffix dropped), else None."""
    marker = f"{kind}/"
    at = reference.rfind(marker, 0, len(reference))
    if at < 0 or (at > 0 and reference[at - 1] != "/"):
        return None
    parts = reference[at:].split("/")
    return f"{kind}/{parts[1]}" if len(parts) >= 2 and parts[1] else None


def _compact(value: Any) -> str:
    return cut(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def _key(what: str, value: str) -> str:
    """An identifier kept or looked up, refused when over MAX_KEY_CHARS."""
    problem = too_long(what, value, MAX_KEY_CHARS)
    if problem:
        raise _RecordError(problem)
    return value


def _codes_text(codings: list[Any]) -> str:
    shown = [
        f"{clip(c.get('system', ''), 40)}|{clip(c.get('code', ''), 20)}" for c in codings[:3] if isinstance(c, dict)
    ]
    return ", ".join(shown) if shown else "no coding"


def _reading_code(resource: Mapping[str, Any]) -> tuple[str | None, bool, str]:
    """(reading code or None, whether it is a CGM summary code, the codings as text)."""
    code = resource.get("code")
    codings = _list(code.get("coding")) if isinstance(code, dict) else []
    summary = False
    for coding in codings:
        if isinstance(coding, dict) and coding.get("system") == LOINC:
            value = coding.get("code")
            if not isinstance(value, str):
                continue
            if value in READING_CODES:
                return value, False, ""
            summary = summary or value in SUMMARY_CODES
    return None, summary, _codes_text(codings)


def _time_ms(resource: Mapping[str, Any]) -> tuple[int, str, int | None]:
    raw = resource.get("effectiveDateTime")
    name = "effectiveDateTime"
    if raw is None and "effectiveInstant" in resource:
        raw, name = resource.get("effectiveInstant"), "effectiveInstant"
    if raw is None:
        if "effectivePeriod" in resource:
            raise _RecordError("effectiveDateTime missing (an effectivePeriod is not a reading time)")
        raise _RecordError("effectiveDateTime missing")
    if not isinstance(raw, str) or len(raw) > 64:  # a dateTime with nanoseconds and an offset is 35 characters
        raise _RecordError(f"{name} {shorten(raw)} is not a FHIR dateTime")
    if "T" not in raw:
        raise _RecordError(f"{name} {raw!r} has no time of day")
    if _OFFSET.search(raw) is None:
        raise _RecordError(f"{name} {raw!r} has no UTC offset")
    year = iso_year_problem(raw)
    if year:
        raise _RecordError(f"{name} {raw!r}: {year}")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _RecordError(f"{name} {raw!r} is not a FHIR dateTime") from None
    return (moment - _EPOCH) // _ONE_MS, raw, offset_evidence(moment)


def _subject(resource: Mapping[str, Any], index: _Index) -> PatientRef | None:
    ref = _subject_ref(resource, index)
    if ref is not None:
        _key("the subject's issuer", ref.issuer)
        _key("the subject", ref.value)
    return ref


def _subject_ref(resource: Mapping[str, Any], index: _Index) -> PatientRef | None:
    subject = resource.get("subject")
    if subject is None:
        return None
    if not isinstance(subject, dict):
        raise _RecordError("subject is not a Reference")
    reference = subject.get("reference")
    if isinstance(reference, str) and reference.strip():
        reference = reference.strip()
        local = _local_ref(reference, "Patient")
        if local is not None:
            return PatientRef("fhir", local)
        known = index.patients.get(reference)
        if known is not None:
            return known
        if reference.startswith(("urn:uuid:", "urn:oid:", "#")):
            raise _RecordError(f"subject {shorten(reference)} does not resolve to a Patient in the input")
        raise _RecordError(f"subject {shorten(reference)} is not a Patient reference")
    ref = _identifier_ref(subject.get("identifier"))
    if ref is None:
        raise _RecordError("subject has neither a reference nor an identifier")
    return ref


def _device(resource: Mapping[str, Any], index: _Index) -> tuple[str, str, str]:
    """(stream label, device key, reference used for the key) of the Observation's device."""
    device = resource.get("device")
    if not isinstance(device, dict):
        return "", "", ""
    reference = device.get("reference")
    reference = reference.strip() if isinstance(reference, str) else ""
    stream = reference
    if not stream:
        identifier = device.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            stream = identifier["value"].strip()
    _key("device", stream)
    display = device.get("display")
    key = device_key_for_name(_key("device.display", display)) if isinstance(display, str) else ""
    if key or not reference:
        return stream, key, ""
    found = index.devices.get(reference)
    if found is None:
        local = _local_ref(reference, "Device")
        found = index.devices.get(local) if local else None
    return stream, found or "", reference if found else ""


def _record_key(resource: Mapping[str, Any]) -> str:
    for identifier in _list(resource.get("identifier")):
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str) and identifier["value"]:
            system = identifier.get("system")
            system = _key("identifier.system", system) if isinstance(system, str) else ""
            return f"{system}|{_key('identifier.value', identifier['value'])}"
    rid = resource.get("id")
    return f"Observation/{_key('id', rid)}" if isinstance(rid, str) and rid else ""


def _quantity(resource: Mapping[str, Any], code: str) -> tuple[float, GlucoseUnit, SensorFlag]:
    quantity = resource.get("valueQuantity")
    if quantity is None:
        absent = resource.get("dataAbsentReason")
        if isinstance(absent, dict):
            codings = _list(absent.get("coding"))
            first = codings[0] if codings and isinstance(codings[0], dict) else {}
            why = first.get("code") or absent.get("text") or "?"
            raise _RecordError(f"no value (dataAbsentReason={clip(why, 40)})")
        others = [k for k in resource if k.startswith("value")]
        if others:
            raise _RecordError(f"value is {clip(others[0], 40)}, not a valueQuantity")
        raise _RecordError("no value: valueQuantity missing")
    if not isinstance(quantity, dict):
        raise _RecordError("valueQuantity is not a Quantity")
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _RecordError(f"valueQuantity.value {shorten(value)} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits (NDJSON)
        raise _RecordError(f"valueQuantity.value {shorten(value)} is out of range") from None
    if not math.isfinite(number) or number <= 0:
        raise _RecordError(f"valueQuantity.value {value!r} must be a finite number above 0")
    unit_text = quantity.get("code")
    if not isinstance(unit_text, str) or not unit_text.strip():
        unit_text = quantity.get("unit")
    unit = _UNITS.get(unit_text.strip().lower()) if isinstance(unit_text, str) else None
    if unit is None:
        raise _RecordError(f"unknown unit {shorten(unit_text)} (expected mg/dL or mmol/L)")
    expected = READING_CODES[code]
    if unit is not expected:
        raise _RecordError(f"unit {unit.label} does not match code {code} ({expected.label})")
    comparator = quantity.get("comparator")
    flag = SensorFlag.NONE
    if comparator is not None:
        found = _COMPARATORS.get(comparator) if isinstance(comparator, str) else None
        if found is None:
            raise _RecordError(f"comparator {shorten(comparator)} is not <, <=, > or >=")
        flag = found
    return number, unit, flag


def _payload(raw: str | bytes | None, resource: Any) -> str:
    """A resource's text as kept (quarantine, payloads): the input's own (UTF-8 bytes decoded), else compact JSON."""
    if raw is None:
        return _compact(resource)
    return raw if isinstance(raw, str) else raw.decode("utf-8")


def _context(fmt: str, full_url: str | None, device_ref: str, device_key: str, patient: PatientRef | None) -> str:
    context: dict[str, Any] = {"format": fmt}
    if full_url:
        context["fullUrl"] = full_url
    if device_ref:
        context["devices"] = {device_ref: device_key}
    if patient is not None:
        context["patient"] = [patient.issuer, patient.value]
    return _compact(context)


def _resolved_subject(resource: Mapping[str, Any]) -> str | None:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return reference if isinstance(reference, str) else None


# --- the parser --------------------------------------------------------------------------------------------


class FhirParser:
    """Parser for CGM sensor-reading Observations in a FHIR Bundle or NDJSON (`Parser` protocol).

    `skipped` counts what was read but is not a reading, by kind ("Patient", "Device", "DiagnosticReport",
    "CGM summary Observation", ...). `input_format` is "bundle" or "ndjson" once parsing has started.
    """

    feed = Feed.FHIR

    def __init__(self, *, keep_payload: bool = True) -> None:
        self.keep_payload = keep_payload
        self.skipped: dict[str, int] = {}
        self.input_format = ""

    # Parser protocol ------------------------------------------------------------------------------------

    def parse(self, stream: IO[bytes], options: ParseOptions) -> Iterator[FeedItem]:
        del options  # FHIR times carry their offsets.
        self.skipped = {}
        start = stream.tell() if stream.seekable() else None
        head = _peek(stream)
        self.input_format = _detect(head)
        index = _Index()
        if start is not None:
            stream.seek(start)
            _prescan(stream, start, self.input_format, index)
            stream.seek(start)
            head = b""
        source = io.BufferedReader(_Prefixed(head, stream), buffer_size=CHUNK)
        del head
        if self.input_format == "ndjson":
            yield from self._ndjson(source, index)
        else:
            yield from self._bundle(source, index)

    def parse_quarantined(self, payload: str, context: str, options: ParseOptions) -> Iterator[FeedItem]:
        """Read one quarantined resource again; `context` is the JSON this parser put on the problem."""
        del options
        try:
            given = loads_bounded(context) if context.strip() else {}
        except ValueError:
            raise FeedFormatError("the context of a quarantined FHIR resource is not JSON") from None
        if not isinstance(given, dict):
            raise FeedFormatError("the context of a quarantined FHIR resource is not a JSON object")
        index = _Index()
        devices = given.get("devices")
        if isinstance(devices, dict):
            index.devices.update({str(k): str(v) for k, v in devices.items()})
        fmt = str(given.get("format") or "ndjson")
        full_url = given.get("fullUrl") if isinstance(given.get("fullUrl"), str) else None
        patient = given.get("patient")
        try:
            resource = loads_bounded(payload[: MAX_RECORD_BYTES + 1])
        except ValueError as exc:
            yield FeedProblem("resource 1", str(exc), payload, context)
            return
        if isinstance(resource, dict) and isinstance(patient, list) and len(patient) == 2:
            reference = _resolved_subject(resource)
            if reference is not None:
                index.patients[reference] = PatientRef(str(patient[0]), str(patient[1]))
        item = self._resource(resource, "resource 1", fmt, full_url, index, payload)
        if item is not None:
            yield item

    # internals -----------------------------------------------------------------------------------------------

    def _skip(self, kind: str) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1

    def _resource(
        self, resource: Any, locator: str, fmt: str, full_url: str | None, index: _Index, raw: str | bytes | None
    ) -> FeedItem | None:
        if not isinstance(resource, dict):
            payload = _payload(raw, resource)
            return FeedProblem(locator, "not a FHIR resource (not a JSON object)", payload, _compact({"format": fmt}))
        kind = resource.get("resourceType")
        if kind != "Observation":
            if not isinstance(kind, str) or not kind:
                payload = _payload(raw, resource)
                return FeedProblem(locator, "not a FHIR resource (no resourceType)", payload, _compact({"format": fmt}))
            if kind == "Bundle":
                payload = _payload(raw, resource)
                reason = "a Bundle inside the input: send each Bundle as an input of its own"
                return FeedProblem(locator, reason, payload, _compact({"format": fmt}))
            if kind not in RESOURCE_TYPES:
                payload = _payload(raw, resource)
                reason = f"resourceType {shorten(kind, 40)} is not a FHIR resource type"
                return FeedProblem(locator, reason, payload, _compact({"format": fmt}))
            if kind in ("Device", "Patient"):
                index.add(resource, full_url)
            self._skip(kind)
            return None
        # Patient and device first, so a problem is filed under its patient and keeps the device it resolved to.
        subject_error: _RecordError | None = None
        try:
            patient = _subject_memo(resource, index)
        except _RecordError as exc:
            patient, subject_error = None, exc
        try:
            stream, device_key, device_ref = _device_memo(resource, index)
        except _RecordError as exc:
            (stream, device_key, device_ref), subject_error = ("", "", ""), subject_error or exc
        try:
            code, summary, codes = _reading_code_memo(resource, index)
            if code is None:
                if summary:
                    self._skip("CGM summary Observation")
                    return None
                raise _RecordError(f"code is not a CGM sensor reading (LOINC {' or '.join(READING_CODES)}): {codes}")
            status = resource.get("status")
            if status == "entered-in-error":
                raise _RecordError("entered-in-error: not a reading")
            if status is None:
                raise _RecordError(f"status missing ({_STATUS_HELP})")
            if not isinstance(status, str) or status not in RESULT_STATUSES:
                raise _RecordError(f"status {shorten(status)} is not a result ({_STATUS_HELP})")
            value, unit, flag = _quantity(resource, code)
            time_ms, given_time, offset = _time_ms(resource)
            record_key = _record_key(resource)
            if subject_error is not None:
                raise subject_error
        except _RecordError as bad:
            payload = _payload(raw, resource)
            context = _context(fmt, full_url, device_ref, device_key, patient)
            return FeedProblem(locator, str(bad), payload, context, patient)
        payload = ""
        if self.keep_payload:
            payload = _payload(raw, resource)
        return FeedReading(
            patient=patient,
            time_ms=time_ms,
            value=value,
            unit=unit,
            flag=flag,
            device=device_key,
            stream=stream,
            record_key=record_key,
            utc_offset_min=offset,
            locator=locator,
            payload=payload,
            extra={"status": status, "effectiveDateTime": given_time},
        )

    def _ndjson(self, source: IO[bytes], index: _Index) -> Iterator[FeedItem]:
        context = _compact({"format": "ndjson"})
        for line in read_lines(source, split_cr=False):
            data = line.data.strip()
            if not data:
                continue
            locator = f"line {line.number}"
            if line.cut:
                reason = f"the line is {line.size:,} bytes: over the {MAX_RECORD_BYTES:,} a resource may have"
                yield FeedProblem(locator, reason, cut(data.decode("utf-8", "replace")) + " …", context)
                continue
            resource = loads_quick(data)  # most lines: no decoding (the text is decoded only if it is kept)
            raw: str | bytes = data
            if resource is NOT_QUICK:
                try:
                    raw = data.decode("utf-8")
                except UnicodeDecodeError as bad:
                    lead = len(line.data) - len(line.data.lstrip())
                    reason = byte_problem(data, bad.start, line.offset + lead)
                    yield FeedProblem(locator, reason, data.decode("utf-8", "replace"), context)
                    continue
                try:
                    resource = loads_bounded(raw)
                except ValueError as exc:
                    yield FeedProblem(locator, str(exc), raw, context)
                    continue
            item = self._resource(resource, locator, "ndjson", None, index, raw)
            if item is not None:
                yield item

    def _bundle(self, source: IO[bytes], index: _Index) -> Iterator[FeedItem]:
        context = _compact({"format": "bundle"})
        resource_type: Any = None
        unknown = ""
        started = False
        number = 0
        try:
            for event in stream_list(source, "entry", prelude_limit=PRELUDE_LIMIT):
                if isinstance(event, JsonItem):
                    number = event.number
                    locator = f"entry {number}"
                    entry = event.value
                    if event.problem:
                        yield FeedProblem(locator, event.problem, _compact(entry), context)
                    elif not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                        yield FeedProblem(locator, "entry has no resource", _compact(entry), context)
                    else:
                        full_url = entry.get("fullUrl")
                        full_url = full_url if isinstance(full_url, str) and len(full_url) <= MAX_KEY_CHARS else None
                        item = self._resource(entry["resource"], locator, "bundle", full_url, index, None)
                        if item is not None:
                            yield item
                elif event is LIST_START:
                    started = True
                elif isinstance(event, TopField) and event.name not in BUNDLE_ELEMENTS and event.name[:1] != "_":
                    # A Bundle holds only these: a damaged `entry` must not read as an empty Bundle.
                    unknown = unknown or event.name
                    if resource_type == "Bundle":
                        raise _unknown_element(unknown)
                elif isinstance(event, TopField) and event.name == "resourceType" and not started:
                    resource_type = event.value
                    if resource_type != "Bundle":
                        shown = clip(resource_type, 40) if isinstance(resource_type, str) else "JSON object"
                        raise FeedFormatError(f"a single {shown} resource, not a Bundle or NDJSON of resources")
        except JsonInputError as exc:
            if exc.kind == "encoding":
                raise FeedFormatError(str(exc)) from None
            if exc.kind == "syntax" and started:
                raise FeedFormatError(f"invalid JSON in the Bundle after entry {number}: {exc}") from None
            detail = f"invalid JSON ({exc})" if exc.kind == "syntax" else str(exc)
            raise FeedFormatError(f"not a FHIR Bundle: {detail}") from None
        if not started and resource_type != "Bundle":
            raise FeedFormatError("not a FHIR Bundle or NDJSON of resources: no resourceType 'Bundle'")
        if unknown:
            raise _unknown_element(unknown)


def _unknown_element(name: str) -> FeedFormatError:
    elements = ", ".join(sorted(BUNDLE_ELEMENTS))
    return FeedFormatError(f"not a FHIR Bundle: unknown element {shorten(name, 40)} (a Bundle has {elements})")


class _Prefixed(io.RawIOBase):
    """The bytes already read from a stream (to tell its format), then the rest of the stream."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head = head
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _peek(stream: IO[bytes]) -> bytes:
    """The first bytes: through the end of the first non-blank line (or PEEK_LIMIT, or the end)."""
    parts: list[bytes] = []
    size = 0
    while size < PEEK_LIMIT:
        chunk = stream.read(CHUNK)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
        if b"\n" in chunk and b"\n" in b"".join(parts).lstrip():
            break
    return b"".join(parts)


def _detect(head: bytes) -> str:
    body = head.lstrip(_BOM_AND_SPACE)
    if not body:
        raise FeedFormatError("the input is empty: expected a FHIR Bundle or NDJSON of resources")
    if body[:1] != b"{":
        raise FeedFormatError("not a FHIR Bundle or NDJSON of resources: the input does not start with '{'")
    end = body.find(b"\n")
    if end < 0 and len(head) >= PEEK_LIMIT:
        # One long line so far: a compact Bundle, or NDJSON whose first resource is long. Its type tells.
        return "ndjson" if _top_level_type(body) not in (None, "Bundle") else "bundle"
    first = (body if end < 0 else body[:end]).strip()
    if len(first) < 2 or first[-1:] != b"}":
        return "bundle"
    try:
        resource = loads_bounded(first.decode("utf-8"))
    except ValueError:  # also UnicodeDecodeError: the parse that follows says where
        return "ndjson" if end >= 0 else "bundle"
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise FeedFormatError("not a FHIR Bundle or NDJSON of resources: the first object has no resourceType")
    return "bundle" if resource["resourceType"] == "Bundle" else "ndjson"


def _top_level_type(start: bytes) -> str | None:
    """The top-level resourceType, if it comes before any nested list in the first bytes of a JSON object."""
    events: Any = ijson.sendable_list()
    coro = ijson.basic_parse_coro(events)
    depth = 0
    key = None
    for at in range(0, len(start), 1024):
        try:
            coro.send(start[at : at + 1024])
        except (ijson.JSONError, ValueError):
            return None
        for event, value in events:
            if event == "start_array":
                return None
            if event == "start_map":
                depth += 1
            elif event == "end_map":
                depth -= 1
            elif depth == 1 and event == "map_key":
                key = value
            elif depth == 1 and key == "resourceType":
                return str(value) if event == "string" else None
        del events[:]
    return None


def _prescan(stream: IO[bytes], start: int, fmt: str, index: _Index) -> None:
    """Index the Device and Patient resources of a seekable input; a byte search first says if there are any."""
    tail = b""
    while chunk := stream.read(CHUNK * 4):
        if _INDEXED.search(tail + chunk):
            break
        tail = chunk[-64:]
    else:
        return
    stream.seek(start)
    if fmt == "ndjson":
        for line in read_lines(stream, split_cr=False):
            if not line.cut and _INDEXED.search(line.data):
                try:
                    resource = loads_bounded(line.data.decode("utf-8"))
                except ValueError:
                    continue
                if isinstance(resource, dict):
                    index.add(resource, None)
        return
    try:
        for event in stream_list(stream, "entry", prelude_limit=PRELUDE_LIMIT):
            if not isinstance(event, JsonItem) or event.problem or not isinstance(event.value, dict):
                continue
            resource = event.value.get("resource")
            if isinstance(resource, dict) and resource.get("resourceType") in ("Device", "Patient"):
                full_url = event.value.get("fullUrl")
                index.add(resource, full_url if isinstance(full_url, str) else None)
    except JsonInputError:
        return  # the main pass reports it
