"""Profile-aware validation of FHIR R4 JSON against StructureDefinition snapshots (HL7 CGM IG 1.0.0), offline.

`ProfileSet.load(folder)` reads every StructureDefinition with a snapshot in a folder (the IG's, as compiled by
SUSHI, see /work/shared/reference/fhir-cgm-ig.md §f) and compiles each snapshot once into a tree of elements;
`ProfileSet.validate(resource, profile_url, resolve=...)` walks a resource against that tree and returns `Issue`s.
Nothing here touches the network, and the FHIR core package is not needed: the little of it that snapshots leave
out (the inside of datatypes such as Quantity or CodeableConcept, a few required value sets) is written out below.

What is checked:

- cardinality (min/max) of every element the snapshot describes, at every level: inside backbone elements,
  inside slices, inside datatypes the profile constrains (`effectivePeriod.end`) and, from the built-in R4
  datatype table, inside the common datatypes (Coding, CodeableConcept, Quantity, Reference, Period, Identifier,
  Attachment, Meta, Narrative, Extension, …);
- JSON shape: arrays exactly where the base element repeats, no `null`, no empty object or array, one `value[x]`;
- `fixed[x]` (exact) and `pattern[x]` (the instance contains the pattern, recursively; each item of a pattern
  array must be matched by some instance item);
- slicing: discriminators `value`, `pattern`, `type`, `profile` and `exists` on paths made of element names,
  `$this`, `resolve()`, `ofType(T)` and `extension('url')`; the discriminator value of a slice is found in the
  slice itself or by following a type profile (`Bundle.entry:cgmSummary.resource` → cgm-summary → `code`) or a
  target profile (`hasMember:gmi` → `resolve()` → cgm-summary-gmi → `code`); slice min/max; `closed`,
  `open` and `openAtEnd`; `ordered`; an item matching two slices; each item is then checked against its slice's
  own element definitions (so every TIR component slice needs its `%` valueQuantity);
- a reference the validator cannot resolve (no `resolve` callback, or the callback returns None) makes that item's
  slice undecidable: a *warning*, and a slice minimum that such an item might have met is reported as a warning
  too, never as an error;
- unknown elements (a key the snapshot or the datatype table does not define), and choice types: `valueQuantity`
  maps to `value[x]` only where `Quantity` is an allowed type, another type gives "type … not allowed";
- primitive types: boolean, integer, positiveInt, unsignedInt, decimal (JSON number, or `decimal.Decimal`), and
  strings with the FHIR R4 regular expressions (code, id, uri, url, canonical, oid, uuid, base64Binary, date,
  dateTime, instant, time; dates must also exist on the calendar);
- required bindings for the value sets in `VALUE_SETS` (observation-status, diagnostic-report-status,
  bundle-type, http-verb, search-entry-mode, request-status/intent/priority, device-status, device-nametype,
  udi-entry-type, units-of-time, quantity-comparator, narrative-status, identifier-use, name-use, contact-point-*,
  address-*) and a shape check for `mimetypes`; other required bindings are not checked;
- references: the resource type of a literal reference against the element's target profiles;
- embedded resources (Bundle entries, contained): against the profile the matched slice names, else against the
  loaded profiles in their `meta.profile`; a Bundle's entries are resolved through `bundle_resolver` (by
  `fullUrl` and by `ResourceType/id`) before the caller's `resolve`;
- FHIRPath invariants: only the IG's own, as hand-written checks keyed by invariant key (`INVARIANTS`:
  `cgm-sensor-value-or-dar`). An IG invariant without a hand-written check gives a warning when its element is
  present (none in CGM IG 1.0.0).

What is not checked:

- base FHIR invariants (they are in every snapshot, and none is evaluated): ele-1 (except empty objects/arrays,
  which the JSON rules forbid anyway), ext-1, dom-2, dom-3, dom-4, dom-5, dom-6, obs-3, obs-6, obs-7, bdl-1,
  bdl-2, bdl-3, bdl-4, bdl-5, bdl-7, bdl-8, bdl-9, bdl-10, bdl-11, bdl-12, prr-1, and the datatype invariants the
  snapshots leave out (qty-3, per-1, rng-2, ref-1, att-1, sqty-1, …); `ProfileSet.unevaluated_invariants()`
  lists the keys seen in the loaded snapshots;
- resources that no loaded profile covers (e.g. a Patient entry): only `resourceType` is checked, as there is no
  base StructureDefinition here; the inside of Timing.repeat, Dosage and the metadata datatypes
  (ContactDetail aside) is not checked;
- terminology beyond the hard-coded value sets (LOINC and UCUM codes are checked only where a profile fixes them);
  extensible and preferred bindings; max string lengths; reslicing (`slice/reslice`); `Reference.type` against
  the target; whether a referenced resource conforms to its target profile (validate it on its own: a Bundle's
  entries are).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "CGM_PROFILE_BASE",
    "INVARIANTS",
    "VALUE_SETS",
    "IGNotFoundError",
    "Issue",
    "ProfileSet",
    "Resolver",
    "bundle_resolver",
    "errors",
]

Severity = Literal["error", "warning", "information"]
#: Looks up a literal reference (`Observation/x`, a fullUrl, `urn:uuid:…`) and returns the resource, or None.
Resolver = Callable[[str], "dict[str, Any] | None"]

CGM_PROFILE_BASE: Final = "http://hl7.org/fhir/uv/cgm/StructureDefinition/"
CORE_PROFILE_BASE: Final = "http://hl7.org/fhir/StructureDefinition/"
#: Environment variable naming the folder of the IG's StructureDefinitions (overrides the default places).
IG_ENV: Final = "GLUCOBRIDGE_CGM_IG"
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
UCUM: Final = "http://unitsofmeasure.org"


@dataclass(frozen=True, slots=True)
class Issue:
    """One finding. `path` is a FHIRPath-like location in the instance (`Observation.component[2].valueQuantity.code`);
    for a missing element or a slice count it names the element (`Observation.effective[x]`,
    `Observation.component`)."""

    severity: Severity
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"


def errors(issues: Iterable[Issue]) -> list[Issue]:
    """The issues of severity `error`."""
    return [issue for issue in issues if issue.severity == "error"]


class IGNotFoundError(FileNotFoundError):
    """No folder of IG StructureDefinitions where `ProfileSet.default()` looked."""


# MARK: FHIR R4 tables


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _vs(system: str, codes: str) -> tuple[str, frozenset[str]]:
    return system, _words(codes)


#: Required value sets of FHIR R4 (4.0.1) that the CGM profiles and the common datatypes bind to, by canonical URL
#: (without version): (code system, codes). Copied from the R4 spec pages of each value set.
VALUE_SETS: Final[Mapping[str, tuple[str, frozenset[str]]]] = {
    "http://hl7.org/fhir/ValueSet/observation-status": _vs(
        "http://hl7.org/fhir/observation-status",
        "registered preliminary final amended corrected cancelled entered-in-error unknown",
    ),
    "http://hl7.org/fhir/ValueSet/diagnostic-report-status": _vs(
        "http://hl7.org/fhir/diagnostic-report-status",
        "registered partial preliminary final amended corrected appended cancelled entered-in-error unknown",
    ),
    "http://hl7.org/fhir/ValueSet/bundle-type": _vs(
        "http://hl7.org/fhir/bundle-type",
        "document message transaction transaction-response batch batch-response history searchset collection",
    ),
    "http://hl7.org/fhir/ValueSet/http-verb": _vs("http://hl7.org/fhir/http-verb", "GET HEAD POST PUT DELETE PATCH"),
    "http://hl7.org/fhir/ValueSet/search-entry-mode": _vs(
        "http://hl7.org/fhir/search-entry-mode", "match include outcome"
    ),
    "http://hl7.org/fhir/ValueSet/request-status": _vs(
        "http://hl7.org/fhir/request-status", "draft active on-hold revoked completed entered-in-error unknown"
    ),
    "http://hl7.org/fhir/ValueSet/request-intent": _vs(
        "http://hl7.org/fhir/request-intent",
        "proposal plan directive order original-order reflex-order filler-order instance-order option",
    ),
    "http://hl7.org/fhir/ValueSet/request-priority": _vs(
        "http://hl7.org/fhir/request-priority", "routine urgent asap stat"
    ),
    "http://hl7.org/fhir/ValueSet/device-status": _vs(
        "http://hl7.org/fhir/device-status", "active inactive entered-in-error unknown"
    ),
    "http://hl7.org/fhir/ValueSet/device-nametype": _vs(
        "http://hl7.org/fhir/device-nametype",
        "udi-label-name user-friendly-name patient-reported-name manufacturer-name model-name other",
    ),
    "http://hl7.org/fhir/ValueSet/udi-entry-type": _vs(
        "http://hl7.org/fhir/udi-entry-type", "barcode rfid manual card self-reported unknown"
    ),
    "http://hl7.org/fhir/ValueSet/units-of-time": _vs(UCUM, "s min h d wk mo a"),
    "http://hl7.org/fhir/ValueSet/quantity-comparator": _vs("http://hl7.org/fhir/quantity-comparator", "< <= >= >"),
    "http://hl7.org/fhir/ValueSet/narrative-status": _vs(
        "http://hl7.org/fhir/narrative-status", "generated extensions additional empty"
    ),
    "http://hl7.org/fhir/ValueSet/identifier-use": _vs(
        "http://hl7.org/fhir/identifier-use", "usual official temp secondary old"
    ),
    "http://hl7.org/fhir/ValueSet/name-use": _vs(
        "http://hl7.org/fhir/name-use", "usual official temp nickname anonymous old maiden"
    ),
    "http://hl7.org/fhir/ValueSet/contact-point-system": _vs(
        "http://hl7.org/fhir/contact-point-system", "phone fax email pager url sms other"
    ),
    "http://hl7.org/fhir/ValueSet/contact-point-use": _vs(
        "http://hl7.org/fhir/contact-point-use", "home work temp old mobile"
    ),
    "http://hl7.org/fhir/ValueSet/address-use": _vs("http://hl7.org/fhir/address-use", "home work temp old billing"),
    "http://hl7.org/fhir/ValueSet/address-type": _vs("http://hl7.org/fhir/address-type", "postal physical both"),
}
_MIMETYPES = "http://hl7.org/fhir/ValueSet/mimetypes"
_MIMETYPE_RE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*(\s*;.*)?")

_PRIMITIVES: Final = _words(
    "base64Binary boolean canonical code date dateTime decimal id instant integer markdown oid positiveInt string "
    "time unsignedInt uri url uuid xhtml"
)
_COMPLEX: Final = _words(
    "Address Age Annotation Attachment CodeableConcept Coding ContactPoint Count Distance Duration HumanName "
    "Identifier Money Period Quantity Range Ratio Reference SampledData Signature Timing ContactDetail Contributor "
    "DataRequirement Expression ParameterDefinition RelatedArtifact TriggerDefinition UsageContext Dosage Meta "
    "Narrative Extension BackboneElement Element MarketingStatus Population ProdCharacteristic ProductShelfLife "
    "SubstanceAmount MoneyQuantity SimpleQuantity"
)
#: `valueDateTime` → `dateTime`: the suffixes a choice element's JSON name can carry.
_CHOICE_SUFFIX: Final = {code[0].upper() + code[1:]: code for code in _PRIMITIVES | _COMPLEX}
_OPEN_TYPES: Final = (
    "base64Binary boolean canonical code date dateTime decimal id instant integer markdown oid positiveInt string "
    "time unsignedInt uri url uuid Address Age Annotation Attachment CodeableConcept Coding ContactPoint Count "
    "Distance Duration HumanName Identifier Money Period Quantity Range Ratio Reference SampledData Signature Timing "
    "ContactDetail Contributor DataRequirement Expression ParameterDefinition RelatedArtifact TriggerDefinition "
    "UsageContext Dosage Meta"
)
_QUANTITY = (
    ("value", "decimal", 0, "1"),
    ("comparator", "code", 0, "1", "http://hl7.org/fhir/ValueSet/quantity-comparator"),
    ("unit", "string", 0, "1"),
    ("system", "uri", 0, "1"),
    ("code", "code", 0, "1"),
)
#: The R4 datatypes whose insides snapshots leave out: (name, type(s) separated by |, min, max[, required VS]).
#: `id` and `extension` are added to each. Types not listed here (Timing.repeat's Element, Dosage, …) are opaque.
_DATATYPES: Final[Mapping[str, tuple[tuple[Any, ...], ...]]] = {
    "Element": (),
    "Coding": (
        ("system", "uri", 0, "1"),
        ("version", "string", 0, "1"),
        ("code", "code", 0, "1"),
        ("display", "string", 0, "1"),
        ("userSelected", "boolean", 0, "1"),
    ),
    "CodeableConcept": (("coding", "Coding", 0, "*"), ("text", "string", 0, "1")),
    "Quantity": _QUANTITY,
    "SimpleQuantity": _QUANTITY,
    "MoneyQuantity": _QUANTITY,
    "Age": _QUANTITY,
    "Count": _QUANTITY,
    "Distance": _QUANTITY,
    "Duration": _QUANTITY,
    "Money": (("value", "decimal", 0, "1"), ("currency", "code", 0, "1")),
    "Range": (("low", "Quantity", 0, "1"), ("high", "Quantity", 0, "1")),
    "Ratio": (("numerator", "Quantity", 0, "1"), ("denominator", "Quantity", 0, "1")),
    "Period": (("start", "dateTime", 0, "1"), ("end", "dateTime", 0, "1")),
    "Reference": (
        ("reference", "string", 0, "1"),
        ("type", "uri", 0, "1"),
        ("identifier", "Identifier", 0, "1"),
        ("display", "string", 0, "1"),
    ),
    "Identifier": (
        ("use", "code", 0, "1", "http://hl7.org/fhir/ValueSet/identifier-use"),
        ("type", "CodeableConcept", 0, "1"),
        ("system", "uri", 0, "1"),
        ("value", "string", 0, "1"),
        ("period", "Period", 0, "1"),
        ("assigner", "Reference", 0, "1"),
    ),
    "Attachment": (
        ("contentType", "code", 0, "1", _MIMETYPES),
        ("language", "code", 0, "1"),
        ("data", "base64Binary", 0, "1"),
        ("url", "url", 0, "1"),
        ("size", "unsignedInt", 0, "1"),
        ("hash", "base64Binary", 0, "1"),
        ("title", "string", 0, "1"),
        ("creation", "dateTime", 0, "1"),
    ),
    "Annotation": (
        ("author[x]", "Reference|string", 0, "1"),
        ("time", "dateTime", 0, "1"),
        ("text", "markdown", 1, "1"),
    ),
    "Meta": (
        ("versionId", "id", 0, "1"),
        ("lastUpdated", "instant", 0, "1"),
        ("source", "uri", 0, "1"),
        ("profile", "canonical", 0, "*"),
        ("security", "Coding", 0, "*"),
        ("tag", "Coding", 0, "*"),
    ),
    "Narrative": (
        ("status", "code", 1, "1", "http://hl7.org/fhir/ValueSet/narrative-status"),
        ("div", "xhtml", 1, "1"),
    ),
    "HumanName": (
        ("use", "code", 0, "1", "http://hl7.org/fhir/ValueSet/name-use"),
        ("text", "string", 0, "1"),
        ("family", "string", 0, "1"),
        ("given", "string", 0, "*"),
        ("prefix", "string", 0, "*"),
        ("suffix", "string", 0, "*"),
        ("period", "Period", 0, "1"),
    ),
    "ContactPoint": (
        ("system", "code", 0, "1", "http://hl7.org/fhir/ValueSet/contact-point-system"),
        ("value", "string", 0, "1"),
        ("use", "code", 0, "1", "http://hl7.org/fhir/ValueSet/contact-point-use"),
        ("rank", "positiveInt", 0, "1"),
        ("period", "Period", 0, "1"),
    ),
    "Address": (
        ("use", "code", 0, "1", "http://hl7.org/fhir/ValueSet/address-use"),
        ("type", "code", 0, "1", "http://hl7.org/fhir/ValueSet/address-type"),
        ("text", "string", 0, "1"),
        ("line", "string", 0, "*"),
        ("city", "string", 0, "1"),
        ("district", "string", 0, "1"),
        ("state", "string", 0, "1"),
        ("postalCode", "string", 0, "1"),
        ("country", "string", 0, "1"),
        ("period", "Period", 0, "1"),
    ),
    "SampledData": (
        ("origin", "Quantity", 1, "1"),
        ("period", "decimal", 1, "1"),
        ("factor", "decimal", 0, "1"),
        ("lowerLimit", "decimal", 0, "1"),
        ("upperLimit", "decimal", 0, "1"),
        ("dimensions", "positiveInt", 1, "1"),
        ("data", "string", 0, "1"),
    ),
    "Signature": (
        ("type", "Coding", 1, "*"),
        ("when", "instant", 1, "1"),
        ("who", "Reference", 1, "1"),
        ("onBehalfOf", "Reference", 0, "1"),
        ("targetFormat", "code", 0, "1", _MIMETYPES),
        ("sigFormat", "code", 0, "1", _MIMETYPES),
        ("data", "base64Binary", 0, "1"),
    ),
    "Timing": (("event", "dateTime", 0, "*"), ("repeat", "Timing.repeat", 0, "1"), ("code", "CodeableConcept", 0, "1")),
    "ContactDetail": (("name", "string", 0, "1"), ("telecom", "ContactPoint", 0, "*")),
    "UsageContext": (
        ("code", "Coding", 1, "1"),
        ("value[x]", "CodeableConcept|Quantity|Range|Reference", 1, "1"),
    ),
    "Extension": (("url", "uri", 1, "1"), ("value[x]", "|".join(_OPEN_TYPES.split()), 0, "1")),
}

# FHIR R4 primitive formats (https://hl7.org/fhir/R4/datatypes.html), anchored by fullmatch.
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_STRING_FORMATS: Final[Mapping[str, re.Pattern[str]]] = {
    "date": re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY})?)?"),
    "dateTime": re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY}(T{_TIME}{_TZ})?)?)?"),
    "instant": re.compile(rf"{_YEAR}-{_MONTH}-{_DAY}T{_TIME}{_TZ}"),
    "time": re.compile(_TIME),
    "code": re.compile(r"[^\s]+(\s[^\s]+)*"),
    "id": re.compile(r"[A-Za-z0-9\-\.]{1,64}"),
    "uri": re.compile(r"\S*"),
    "url": re.compile(r"\S*"),
    "canonical": re.compile(r"\S*"),
    "oid": re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+"),
    "uuid": re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "base64Binary": re.compile(r"([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"),
}
_CALENDAR_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_INT32 = (-(2**31), 2**31 - 1)
_REF_TYPE_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def _value_or_data_absent_reason(obj: Mapping[str, Any]) -> bool:
    """cgm-sensor-value-or-dar: `value.exists() or dataAbsentReason.exists()`."""
    return "dataAbsentReason" in obj or any(k.startswith("value") and k[5:] in _CHOICE_SUFFIX for k in obj)


#: Hand-written FHIRPath invariants of the IG, by key: a predicate over the JSON object of the element that
#: declares the invariant (the resource, for a root element).
INVARIANTS: Final[Mapping[str, Callable[[Mapping[str, Any]], bool]]] = {
    "cgm-sensor-value-or-dar": _value_or_data_absent_reason,
}


# MARK: compiled snapshot


@dataclass(frozen=True, slots=True)
class _Type:
    code: str
    profiles: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Constraint:
    key: str
    severity: Severity
    human: str
    own: bool  # declared by the IG (not by the FHIR core spec)


@dataclass(frozen=True, slots=True)
class _Discriminator:
    kind: str  # value | pattern | type | profile | exists
    path: str
    tokens: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Slicing:
    discriminators: tuple[_Discriminator, ...]
    rules: str  # closed | open | openAtEnd
    ordered: bool


@dataclass(frozen=True, slots=True)
class _DiscValue:
    """What a slice requires at a discriminator's path."""

    kind: str  # fixed | pattern | types | profiles | exists
    value: Any


_MISSING: Final[Any] = object()


class _Element:
    """One ElementDefinition of a snapshot, with its children and slices attached."""

    __slots__ = (
        "binding",
        "children",
        "choice_bases",
        "constraints",
        "content_ref",
        "disc_values",
        "fixed",
        "id",
        "is_array",
        "key_map",
        "max",
        "min",
        "name",
        "owner_type",
        "owner_url",
        "pattern",
        "ref_target",
        "slice_name",
        "slices",
        "slicing",
        "types",
    )

    def __init__(
        self,
        *,
        eid: str,
        name: str,
        min_: int,
        max_: int | None,
        is_array: bool,
        types: tuple[_Type, ...],
        owner_url: str,
        owner_type: str,
        fixed: Any = _MISSING,
        pattern: Any = _MISSING,
        binding: tuple[str, str] | None = None,
        constraints: tuple[_Constraint, ...] = (),
        content_ref: str | None = None,
        slicing: _Slicing | None = None,
        slice_name: str | None = None,
    ) -> None:
        self.id = eid
        self.name = name
        self.min = min_
        self.max = max_
        self.is_array = is_array
        self.types = types
        self.owner_url = owner_url
        self.owner_type = owner_type
        self.fixed = fixed
        self.pattern = pattern
        self.binding = binding
        self.constraints = constraints
        self.content_ref = content_ref
        self.slicing = slicing
        self.slice_name = slice_name
        self.children: dict[str, _Element] = {}
        self.slices: list[_Element] = []
        self.ref_target: _Element | None = None
        #: JSON key → (child, its type): `valueQuantity` → (value[x], Quantity), `status` → (status, code).
        self.key_map: dict[str, tuple[_Element, _Type]] = {}
        #: `value` → value[x]: to tell "type not allowed" from "unknown element".
        self.choice_bases: dict[str, _Element] = {}
        #: For a slice: what it requires at each of its parent's discriminators (None: nothing).
        self.disc_values: tuple[_DiscValue | None, ...] = ()

    def __repr__(self) -> str:
        return f"<element {self.id}>"

    def index_children(self) -> None:
        for child in self.children.values():
            if child.name.endswith("[x]"):
                base = child.name[:-3]
                self.choice_bases[base] = child
                for typ in child.types:
                    self.key_map[base + typ.code[0].upper() + typ.code[1:]] = (child, typ)
            else:
                self.key_map[child.name] = (child, child.types[0] if child.types else _Type("BackboneElement"))

    @property
    def provider(self) -> _Element | None:
        """The element whose children describe this one's inside, from the snapshot: itself, or its content
        reference."""
        if self.children:
            return self
        return self.ref_target

    @property
    def label(self) -> str:
        return self.slice_name if self.slice_name else self.id


def _parse_max(text: str) -> int | None:
    return None if text == "*" else int(text)


def _type_code(raw: Mapping[str, Any], base_path: str) -> str:
    code = str(raw["code"])
    if base_path == "Resource.id":
        return "id"
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in raw.get("extension", ()):
            if ext.get("url", "").endswith("structuredefinition-fhir-type"):
                return str(ext.get("valueUrl") or ext.get("valueUri") or "string")
        return "string"
    return code


def _tokens(path: str) -> tuple[str, ...]:
    """Split a discriminator path on the dots outside parentheses: `resource.ofType(Observation).code`."""
    out: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(path):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            out.append(path[start:i])
            start = i + 1
    out.append(path[start:])
    return tuple(token.strip() for token in out if token.strip())


@dataclass(slots=True)
class _Profile:
    url: str
    name: str
    type: str
    root: _Element
    by_id: dict[str, _Element]


def _compile(sd: Mapping[str, Any]) -> _Profile:
    url = str(sd["url"])
    rtype = str(sd["type"])
    by_id: dict[str, _Element] = {}
    root: _Element | None = None
    ig_base = url.rsplit("/StructureDefinition/", 1)[0]
    for raw in sd["snapshot"]["element"]:
        eid = str(raw["id"])
        base = raw.get("base") or {}
        base_path = str(base.get("path", raw["path"]))
        types = tuple(
            _Type(
                _type_code(t, base_path),
                tuple(str(p) for p in t.get("profile", ())),
                tuple(str(p) for p in t.get("targetProfile", ())),
            )
            for t in raw.get("type", ())
        )
        fixed = pattern = _MISSING
        for key, value in raw.items():
            if key.startswith("fixed") and key[5:6].isupper():
                fixed = value
            elif key.startswith("pattern") and key[7:8].isupper():
                pattern = value
        binding = raw.get("binding")
        bind = (str(binding["strength"]), str(binding.get("valueSet", "")).split("|")[0]) if binding else None
        constraints = tuple(
            _Constraint(
                str(c["key"]),
                "error" if c.get("severity") == "error" else "warning",
                str(c.get("human", "")),
                bool(c.get("source")) and str(c.get("source")).startswith(ig_base),
            )
            for c in raw.get("constraint", ())
        )
        slicing = None
        if raw.get("slicing"):
            s = raw["slicing"]
            slicing = _Slicing(
                tuple(
                    _Discriminator(str(d["type"]), str(d["path"]), _tokens(str(d["path"])))
                    for d in s.get("discriminator", ())
                ),
                str(s.get("rules", "open")),
                bool(s.get("ordered", False)),
            )
        base_max = str(base.get("max", raw.get("max", "1")))
        last = eid.rsplit(".", 1)[-1]
        name, _, slice_name = last.partition(":")
        element = _Element(
            eid=eid,
            name=name,
            min_=int(raw.get("min", 0)),
            max_=_parse_max(str(raw.get("max", "*"))),
            is_array=base_max not in ("0", "1"),
            types=types,
            owner_url=url,
            owner_type=rtype,
            fixed=fixed,
            pattern=pattern,
            binding=bind,
            constraints=constraints,
            content_ref=str(raw["contentReference"])[1:] if raw.get("contentReference") else None,
            slicing=slicing,
            slice_name=slice_name or None,
        )
        by_id[eid] = element
        if "." not in eid:
            root = element
            continue
        parent_id = eid.rsplit(".", 1)[0]
        if slice_name:
            sliced = by_id.get(f"{parent_id}.{name}")
            if sliced is None:
                raise ValueError(f"{url}: slice {eid} comes before the element it slices")
            sliced.slices.append(element)
        else:
            parent = by_id.get(parent_id)
            if parent is None:
                raise ValueError(f"{url}: element {eid} comes before its parent {parent_id}")
            parent.children[name] = element
    if root is None:
        raise ValueError(f"{url}: snapshot has no root element")
    for element in by_id.values():
        if element.content_ref:
            element.ref_target = by_id.get(element.content_ref)
        element.index_children()
    return _Profile(url, str(sd.get("name") or sd.get("id") or url), rtype, root, by_id)


def _builtin_datatypes() -> dict[str, _Element]:
    roots: dict[str, _Element] = {}
    for type_name, spec in _DATATYPES.items():
        root = _Element(
            eid=type_name, name=type_name, min_=0, max_=None, is_array=False, types=(), owner_url="", owner_type=""
        )
        rows: list[tuple[Any, ...]] = [("id", "string", 0, "1"), ("extension", "Extension", 0, "*"), *spec]
        for row in rows:
            name, codes, min_, max_ = row[:4]
            child = _Element(
                eid=f"{type_name}.{name}",
                name=name,
                min_=min_,
                max_=_parse_max(max_),
                is_array=max_ != "1",
                types=tuple(_Type(code) for code in codes.split("|")),
                owner_url="",
                owner_type="",
                binding=("required", row[4]) if len(row) > 4 else None,
            )
            root.children[name] = child
        root.index_children()
        roots[type_name] = root
    return roots


_BUILTIN: Final = _builtin_datatypes()


# MARK: JSON helpers


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _prim_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float | Decimal) and isinstance(b, int | float | Decimal):
        try:
            return Decimal(str(a)) == Decimal(str(b))
        except InvalidOperation:
            return False
    return type(a) is type(b) and bool(a == b)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    return _prim_equal(a, b)


def _contains(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x] semantics: every element of the pattern is in the value (arrays: each pattern item is matched
    by some value item)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(k in value and _contains(value[k], p) for k, p in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(v, p) for v in value) for p in pattern)
    return _prim_equal(value, pattern)


def _pattern_issues(value: Any, pattern: Any, path: str, out: list[tuple[str, str]]) -> None:
    """Where `value` does not contain `pattern`, as precisely as possible."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            out.append((path, f"expected an object containing the pattern {_show(pattern)}, found {_show(value)}"))
            return
        for key, sub in pattern.items():
            if key not in value:
                out.append((f"{path}.{key}", f"missing: the profile's pattern requires {_show(sub)}"))
            else:
                _pattern_issues(value[key], sub, f"{path}.{key}", out)
    elif isinstance(pattern, list):
        if not isinstance(value, list):
            out.append((path, f"expected an array containing the pattern {_show(pattern)}, found {_show(value)}"))
            return
        for sub in pattern:
            if any(_contains(v, sub) for v in value):
                continue
            if len(value) == 1 and len(pattern) == 1:
                _pattern_issues(value[0], sub, f"{path}[0]", out)
            else:
                out.append((path, f"no item matches the profile's pattern {_show(sub)}"))
    elif not _prim_equal(value, pattern):
        out.append((path, f"expected {_show(pattern)} (pattern), found {_show(value)}"))


def _canonical(url: str) -> str:
    """A canonical URL without its `|version`."""
    return url.partition("|")[0]


def _reference_key(ref: str) -> str:
    return ref.split("/_history/", 1)[0]


def bundle_resolver(bundle: Mapping[str, Any]) -> Resolver:
    """Resolve references against a Bundle's own entries: by `fullUrl`, and by `ResourceType/id` (from the resource,
    or from the tail of an absolute `fullUrl`)."""
    index: dict[str, dict[str, Any]] = {}
    for entry in bundle.get("entry") or ():
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        resource: dict[str, Any] = entry["resource"]
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            index.setdefault(_reference_key(full_url), resource)
            match = _REF_TYPE_RE.search(_reference_key(full_url))
            if match and not full_url.startswith("urn:"):
                index.setdefault(match.group(0).lstrip("/"), resource)
        if isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
            index.setdefault(f"{resource['resourceType']}/{resource['id']}", resource)

    def resolve(reference: str) -> dict[str, Any] | None:
        key = _reference_key(reference)
        found = index.get(key)
        if found is None and not key.startswith("urn:"):
            match = _REF_TYPE_RE.search(key)
            found = index.get(match.group(0).lstrip("/")) if match else None
        return found

    return resolve


def _chain(first: Resolver, second: Resolver | None) -> Resolver:
    if second is None:
        return first

    def resolve(reference: str) -> dict[str, Any] | None:
        found = first(reference)
        return found if found is not None else second(reference)

    return resolve


# MARK: the set of profiles


class ProfileSet:
    """StructureDefinitions compiled for validation, looked up by canonical URL (a `|version` suffix is ignored)."""

    def __init__(self, definitions: Iterable[Mapping[str, Any]], *, source: str = "<memory>") -> None:
        self.source = source
        self._profiles: dict[str, _Profile] = {}
        for sd in definitions:
            if sd.get("resourceType") != "StructureDefinition" or not (sd.get("snapshot") or {}).get("element"):
                continue
            profile = _compile(sd)
            self._profiles[profile.url] = profile
        if not self._profiles:
            raise ValueError(f"no StructureDefinition with a snapshot in {source}")
        for profile in self._profiles.values():
            for element in profile.by_id.values():
                if element.slicing is not None:
                    for slice_ in element.slices:
                        slice_.disc_values = tuple(self._disc_value(slice_, d) for d in element.slicing.discriminators)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> ProfileSet:
        """Every `*.json` StructureDefinition (with a snapshot) in `folder`; other files are ignored."""
        path = Path(folder)
        if not path.is_dir():
            raise IGNotFoundError(f"not a folder: {path}")
        definitions = []
        for file in sorted(path.glob("*.json")):
            with file.open(encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict) and data.get("resourceType") == "StructureDefinition":
                definitions.append(data)
        return cls(definitions, source=str(path))

    @staticmethod
    def default_folder(environ: Mapping[str, str] | None = None) -> Path:
        """Where the CGM IG's StructureDefinitions are: `$GLUCOBRIDGE_CGM_IG`, else `<repo>/../shared/reference/cgm-ig`,
        else `<repo>/specs/cgm-ig`."""
        env = os.environ if environ is None else environ
        if env.get(IG_ENV):
            folder = Path(env[IG_ENV])
            if folder.is_dir():
                return folder
            raise IGNotFoundError(f"{IG_ENV}={folder} is not a folder")
        candidates = [REPO_ROOT.parent / "shared" / "reference" / "cgm-ig", REPO_ROOT / "specs" / "cgm-ig"]
        for folder in candidates:
            if folder.is_dir() and any(folder.glob("StructureDefinition-*.json")):
                return folder
        looked = ", ".join(str(c) for c in candidates)
        raise IGNotFoundError(
            f"CGM IG StructureDefinitions not found: {IG_ENV} is not set and none of these folders has "
            f"StructureDefinition-*.json: {looked}"
        )

    @classmethod
    def default(cls) -> ProfileSet:
        """The CGM IG's profiles from `default_folder()`, loaded once per folder."""
        return _load_cached(str(cls.default_folder().resolve()))

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._profiles)

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and _canonical(url) in self._profiles

    def _compiled(self, url: str) -> _Profile:
        """The compiled profile; KeyError if it is not loaded."""
        return self._profiles[_canonical(url)]

    def resource_type(self, url: str) -> str:
        """The resource (or datatype) a profile constrains; KeyError if the profile is not loaded."""
        return self._profiles[_canonical(url)].type

    def unevaluated_invariants(self) -> dict[str, str]:
        """Invariant keys in the loaded snapshots that are not evaluated → their human text."""
        out: dict[str, str] = {}
        for profile in self._profiles.values():
            for element in profile.by_id.values():
                for c in element.constraints:
                    if c.key not in INVARIANTS:
                        out.setdefault(c.key, c.human)
        return dict(sorted(out.items()))

    def validate(
        self, resource: Mapping[str, Any], profile_url: str, *, resolve: Resolver | None = None
    ) -> list[Issue]:
        """Issues of `resource` against the profile `profile_url` (empty when it conforms). `resolve` looks up
        references for `resolve()` discriminators; a Bundle's own entries are looked up first."""
        profile = self._profiles.get(_canonical(profile_url))
        where = resource.get("resourceType") if isinstance(resource, Mapping) else None
        if profile is None:
            known = ", ".join(sorted(u.rsplit("/", 1)[-1] for u in self._profiles))
            return [
                Issue(
                    "error",
                    str(where or "(resource)"),
                    f"unknown profile {profile_url!r}: not among the StructureDefinitions loaded from "
                    f"{self.source} ({known})",
                )
            ]
        run = _Run(self, resolve)
        run.resource(profile, dict(resource) if isinstance(resource, Mapping) else resource, str(where or profile.type))
        return run.issues

    # definition side of slicing: what a slice requires at a discriminator path

    def _profile_roots(self, urls: Iterable[str]) -> list[_Element]:
        return [self._profiles[_canonical(u)].root for u in urls if _canonical(u) in self._profiles]

    def _def_child(self, element: _Element, name: str) -> list[_Element]:
        providers: list[_Element] = []
        if element.provider is not None:
            providers.append(element.provider)
        else:
            for typ in element.types:
                roots = self._profile_roots(typ.profiles)
                providers.extend(roots if roots else ([_BUILTIN[typ.code]] if typ.code in _BUILTIN else []))
        found: list[_Element] = []
        for provider in providers:
            child = provider.children.get(name) or provider.children.get(name + "[x]")
            if child is None and name in provider.key_map:
                child = provider.key_map[name][0]
                child = next((s for s in child.slices if s.slice_name == name), child)
            if child is not None:
                found.append(child)
        return found

    def _disc_value(self, slice_: _Element, disc: _Discriminator) -> _DiscValue | None:
        cursors: list[tuple[_Element, _Type | None]] = [(slice_, None)]
        for token in disc.tokens:
            nxt: list[tuple[_Element, _Type | None]] = []
            for element, narrowed in cursors:
                if token == "$this":
                    nxt.append((element, narrowed))
                elif token == "resolve()":
                    for typ in element.types:
                        nxt.extend((root, None) for root in self._profile_roots(typ.targets))
                elif token.startswith("ofType("):
                    wanted = token[7:-1].strip()
                    if not element.types and element.owner_type == wanted:
                        nxt.append((element, None))
                    for typ in element.types:
                        if typ.code == wanted:
                            roots = self._profile_roots(typ.profiles)
                            if roots:
                                nxt.extend((root, None) for root in roots)
                            else:
                                nxt.append((element, typ))
                elif token.startswith("extension("):
                    url = token[10:-1].strip().strip("'\"")
                    for ext in self._def_child(element, "extension"):
                        for s in ext.slices:
                            if any(url in t.profiles for t in s.types) or any(
                                url == c.fixed for c in self._def_child(s, "url")
                            ):
                                nxt.append((s, None))
                else:
                    nxt.extend((child, None) for child in self._def_child(element, token))
            cursors = nxt
        for element, narrowed in cursors:
            if disc.kind in ("value", "pattern"):
                if element.fixed is not _MISSING:
                    return _DiscValue("fixed", element.fixed)
                if element.pattern is not _MISSING:
                    return _DiscValue("pattern", element.pattern)
            elif disc.kind == "type":
                codes = {narrowed.code} if narrowed else {t.code for t in element.types} or {element.owner_type}
                return _DiscValue("types", frozenset(codes))
            elif disc.kind == "profile":
                urls = [p for t in element.types for p in t.profiles] if element.types else [element.owner_url]
                if urls:
                    return _DiscValue("profiles", tuple(urls))
            elif disc.kind == "exists":
                if element.min >= 1:
                    return _DiscValue("exists", True)
                if element.max == 0:
                    return _DiscValue("exists", False)
        return None


@lru_cache(maxsize=4)
def _load_cached(folder: str) -> ProfileSet:
    return ProfileSet.load(folder)


# MARK: the walk over an instance


@dataclass(slots=True)
class _Item:
    value: Any
    type: _Type | None  # the type named by a choice key (`valueQuantity` → Quantity); None elsewhere
    path: str


_EXT_ONLY: Final[Any] = object()  # a primitive present only as `_name` (its extensions)


class _Run:
    """One validation: the issues found so far and the reference resolver in force."""

    def __init__(self, profiles: ProfileSet, resolve: Resolver | None) -> None:
        self.ps = profiles
        self.resolve = resolve
        self.issues: list[Issue] = []
        self._seen: set[Issue] = set()

    def add(self, severity: Severity, path: str, message: str) -> None:
        issue = Issue(severity, path, message)
        if issue not in self._seen:
            self._seen.add(issue)
            self.issues.append(issue)

    def error(self, path: str, message: str) -> None:
        self.add("error", path, message)

    def warn(self, path: str, message: str) -> None:
        self.add("warning", path, message)

    # resources

    def resource(self, profile: _Profile, resource: Any, path: str) -> None:
        if not isinstance(resource, dict):
            self.error(path, f"expected a resource (JSON object), found {_json_kind(resource)}")
            return
        rtype = resource.get("resourceType")
        if rtype != profile.type:
            self.error(
                path, f"resourceType is {rtype!r}, but profile {profile.name} ({profile.url}) is for {profile.type}"
            )
            return
        saved = self.resolve
        if rtype == "Bundle":
            self.resolve = _chain(bundle_resolver(resource), saved)
        try:
            self.complex(profile.root, profile.root, resource, path, resource_root=True)
        finally:
            self.resolve = saved

    def conforms(self, profile: _Profile, value: Any) -> bool:
        trial = _Run(self.ps, self.resolve)
        trial.resource(profile, value, "")
        return not errors(trial.issues)

    def embedded_resource(self, typ: _Type, value: Any, path: str) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            self.error(path, f"expected a resource (JSON object with resourceType), found {_json_kind(value)}")
            return
        rtype = value["resourceType"]
        if typ.code not in ("Resource", "DomainResource") and rtype != typ.code:
            self.error(path, f"expected a {typ.code} resource here, found {rtype}")
            return
        named = [u for u in typ.profiles if u in self.ps]
        if named:
            profiles = [self.ps._compiled(u) for u in named]
            if len(profiles) == 1 or not any(self.conforms(p, value) for p in profiles):
                self.resource(profiles[0], value, path)
            return
        self.unknown_profiles(typ.profiles, path)
        meta = value.get("meta")
        claimed = meta.get("profile") if isinstance(meta, dict) else None
        for url in claimed if isinstance(claimed, list) else ():
            if isinstance(url, str) and url in self.ps:
                self.resource(self.ps._compiled(url), value, path)

    def unknown_profiles(self, urls: Iterable[str], path: str) -> None:
        for url in urls:
            if url not in self.ps and not url.startswith(CORE_PROFILE_BASE):
                self.warn(path, f"profile {url} is not loaded: checked against the base type only")

    # elements

    def complex(
        self, element: _Element, provider: _Element, obj: Any, path: str, *, resource_root: bool = False
    ) -> None:
        """Check the keys of a JSON object against `provider`'s children, then `element`'s invariants."""
        if not isinstance(obj, dict):
            self.error(path, f"expected a JSON object, found {_json_kind(obj)}")
            return
        if not obj:
            self.error(path, "empty object: FHIR JSON leaves out empty elements")
            return
        groups: dict[str, list[_Item]] = {}
        choice_key: dict[str, str] = {}
        for key, value in obj.items():
            if resource_root and key == "resourceType":
                continue
            if key.startswith("_"):
                self.primitive_extension(provider, obj, key, value, path, groups)
                continue
            hit = provider.key_map.get(key)
            if hit is None:
                self.unknown_key(provider, key, path)
                continue
            child, typ = hit
            if child.name.endswith("[x]"):
                if child.name in choice_key:
                    self.error(
                        f"{path}.{key}", f"only one {child.name} is allowed; also found {choice_key[child.name]}"
                    )
                    continue
                choice_key[child.name] = key
            items = groups.setdefault(child.name, [])
            item_type = typ if child.name.endswith("[x]") else None
            if child.is_array:
                values = value if isinstance(value, list) else [value]
                if not isinstance(value, list):
                    self.error(f"{path}.{key}", f"must be a JSON array ({child.name} repeats in FHIR)")
                elif not value:
                    self.error(f"{path}.{key}", "empty array: FHIR JSON leaves out empty elements")
                items.extend(_Item(v, item_type, f"{path}.{key}[{i}]") for i, v in enumerate(values))
            elif isinstance(value, list):
                self.error(f"{path}.{key}", f"must not be an array ({child.name} has max cardinality 1)")
            else:
                items.append(_Item(value, item_type, f"{path}.{key}"))
        for child in provider.children.values():
            self.element(child, groups.get(child.name, []), f"{path}.{child.name}")
        for constraint in element.constraints:
            check = INVARIANTS.get(constraint.key)
            if check is not None:
                if not check(obj):
                    self.add(constraint.severity, path, f"invariant {constraint.key} failed: {constraint.human}")
            elif constraint.own:
                self.warn(path, f"invariant {constraint.key} is not evaluated by this validator: {constraint.human}")

    def unknown_key(self, provider: _Element, key: str, path: str) -> None:
        for base, child in provider.choice_bases.items():
            suffix = key[len(base) :]
            if key.startswith(base) and suffix in _CHOICE_SUFFIX:
                allowed = ", ".join(t.code for t in child.types)
                self.error(
                    f"{path}.{key}",
                    f"type {_CHOICE_SUFFIX[suffix]} is not allowed for {child.name} here (allowed: {allowed})",
                )
                return
        where = provider.id if provider.owner_url else f"the R4 datatype {provider.id}"
        self.error(f"{path}.{key}", f"unknown element {key!r}: not defined in {where}")

    def primitive_extension(
        self,
        provider: _Element,
        obj: Mapping[str, Any],
        key: str,
        value: Any,
        path: str,
        groups: dict[str, list[_Item]],
    ) -> None:
        hit = provider.key_map.get(key[1:])
        if hit is None or hit[1].code not in _PRIMITIVES:
            self.error(f"{path}.{key}", f"unknown element {key!r}: no primitive element {key[1:]!r} here")
            return
        child, typ = hit
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if v is not None:
                sub = f"{path}.{key}[{i}]" if isinstance(value, list) else f"{path}.{key}"
                self.complex(_BUILTIN["Element"], _BUILTIN["Element"], v, sub)
        if key[1:] not in obj:  # the primitive exists through its extensions alone
            item_type = typ if child.name.endswith("[x]") else None
            groups.setdefault(child.name, []).extend(_Item(_EXT_ONLY, item_type, f"{path}.{key}") for _ in values)

    def element(self, element: _Element, items: list[_Item], path: str) -> None:
        count = len(items)
        if count < element.min:
            self.error(path, f"minimum cardinality {element.min} not met: found {count}")
        if element.max is not None and count > element.max:
            self.error(path, f"not allowed: found {count}" if element.max == 0 else
                       f"maximum cardinality {element.max} exceeded: found {count}")  # fmt: skip
        if not items:
            return
        targets = self.slicing(element, items, path) if element.slicing and element.slices else [element] * count
        for item, target in zip(items, targets, strict=True):
            self.value(target, element, item)

    def slicing(self, element: _Element, items: list[_Item], path: str) -> list[_Element]:
        assert element.slicing is not None
        slicing = element.slicing
        slices = element.slices
        counts = [0] * len(slices)
        maybe = [False] * len(slices)
        targets: list[_Element] = []
        last = -1
        unmatched_seen = False
        for item in items:
            instance = [self.eval_path(item, d.tokens) for d in slicing.discriminators]
            matched: list[int] = []
            undecided: list[int] = []
            for index, slice_ in enumerate(slices):
                outcome = self.slice_match(slicing, slice_, instance)
                if outcome is True:
                    matched.append(index)
                elif outcome is None:
                    undecided.append(index)
            if matched:
                index = matched[0]
                if len(matched) > 1:
                    names = ", ".join(slices[i].label for i in matched)
                    self.error(item.path, f"matches more than one slice of {element.id}: {names}")
                counts[index] += 1
                targets.append(slices[index])
                if slicing.ordered and index < last:
                    self.error(item.path, f"slice {slices[index].label} is out of order ({element.id} is ordered)")
                if slicing.rules == "openAtEnd" and unmatched_seen:
                    self.error(item.path, f"{element.id} is sliced openAtEnd: items of no slice must come last")
                last = max(last, index)
                continue
            targets.append(element)
            unmatched_seen = True
            if undecided:
                for index in undecided:
                    maybe[index] = True
                refs = sorted({ref for _, unresolved in instance for ref in unresolved})
                names = ", ".join(slices[i].label for i in undecided)
                self.warn(
                    item.path,
                    f"could not resolve {', '.join(refs)}: cannot tell whether this is one of the slices {names}",
                )
            else:
                names = ", ".join(s.label for s in slices)
                if slicing.rules == "closed":
                    self.error(
                        item.path, f"matches none of the slices of {element.id} ({names}) and the slicing is closed"
                    )
                else:
                    self.add("information", item.path, f"matches none of the slices of {element.id} ({names}): "
                             "checked against the base element only (the slicing is open)")  # fmt: skip
        for index, slice_ in enumerate(slices):
            if counts[index] < slice_.min:
                message = f"slice {slice_.label}: minimum cardinality {slice_.min} not met: found {counts[index]}"
                if maybe[index]:
                    self.warn(path, message + " (some items could not be checked: unresolved references)")
                else:
                    self.error(path, message)
            if slice_.max is not None and counts[index] > slice_.max:
                self.error(
                    path, f"slice {slice_.label}: maximum cardinality {slice_.max} exceeded: found {counts[index]}"
                )
        return targets

    def eval_path(self, item: _Item, tokens: tuple[str, ...]) -> tuple[list[tuple[Any, str | None]], list[str]]:
        """The instance side of a discriminator: the values at `tokens` (with their type where known), and the
        references that could not be resolved on the way."""
        start_type = item.type.code if item.type else None
        current: list[tuple[Any, str | None]] = [(item.value, start_type or _resource_type(item.value))]
        unresolved: list[str] = []
        for token in tokens:
            nxt: list[tuple[Any, str | None]] = []
            if token == "$this":
                continue
            if token == "resolve()":
                for value, _ in current:
                    ref = value.get("reference") if isinstance(value, dict) else None
                    target = self.resolve(ref) if isinstance(ref, str) and self.resolve is not None else None
                    if isinstance(target, dict):
                        nxt.append((target, _resource_type(target)))
                    else:
                        unresolved.append(
                            repr(ref) if isinstance(ref, str) else "a reference without a literal reference"
                        )
            elif token.startswith("ofType("):
                wanted = token[7:-1].strip()
                nxt = [(v, t) for v, t in current if t == wanted]
            elif token.startswith("extension("):
                url = token[10:-1].strip().strip("'\"")
                for value, _ in current:
                    for ext in value.get("extension", ()) if isinstance(value, dict) else ():
                        if isinstance(ext, dict) and ext.get("url") == url:
                            nxt.append((ext, "Extension"))
            else:
                for value, _ in current:
                    if not isinstance(value, dict):
                        continue
                    if token in value:
                        found = value[token]
                        for v in found if isinstance(found, list) else [found]:
                            nxt.append((v, _resource_type(v)))
                    else:
                        for key, v in value.items():
                            suffix = key[len(token) :]
                            if key.startswith(token) and suffix in _CHOICE_SUFFIX:
                                nxt.append((v, _CHOICE_SUFFIX[suffix]))
            current = nxt
        return current, unresolved

    def slice_match(
        self, slicing: _Slicing, slice_: _Element, instance: list[tuple[list[tuple[Any, str | None]], list[str]]]
    ) -> bool | None:
        """True: the item is in the slice; False: it is not; None: cannot tell (an unresolved reference)."""
        outcome: bool | None = True
        for disc, required, (values, unresolved) in zip(
            slicing.discriminators, slice_.disc_values, instance, strict=True
        ):
            if required is None:
                continue
            if self.disc_ok(disc, required, values):
                continue
            if not unresolved:
                return False
            outcome = None
        return outcome

    def disc_ok(self, disc: _Discriminator, required: _DiscValue, values: list[tuple[Any, str | None]]) -> bool:
        if required.kind == "fixed":
            return any(_equal(v, required.value) for v, _ in values)
        if required.kind == "pattern":
            return any(_contains(v, required.value) for v, _ in values)
        if required.kind == "types":
            return any(t in required.value for _, t in values)
        if required.kind == "profiles":
            profiles = [self.ps._compiled(u) for u in required.value if u in self.ps]
            return any(self.conforms(p, v) for v, _ in values for p in profiles)
        if required.kind == "exists":
            return bool(values) is bool(required.value)
        raise AssertionError(disc.kind)

    def value(self, element: _Element, base: _Element, item: _Item) -> None:
        """Check one occurrence against its element definition (`element`: its slice, or `base` itself)."""
        value = item.value
        if value is _EXT_ONLY:
            return
        if value is None:
            self.error(item.path, "null is not allowed here")
            return
        typ: _Type | None
        if item.type is not None:
            typ = next((t for t in element.types if t.code == item.type.code), None)
            if typ is None:
                allowed = ", ".join(t.code for t in element.types)
                self.error(item.path, f"type {item.type.code} is not allowed in {element.label} (allowed: {allowed})")
                return
        else:
            typ = element.types[0] if element.types else None
        code = typ.code if typ else "BackboneElement"
        if element.fixed is not _MISSING and not _equal(value, element.fixed):
            self.error(item.path, f"expected exactly {_show(element.fixed)} (fixed), found {_show(value)}")
        if element.pattern is not _MISSING:
            found: list[tuple[str, str]] = []
            _pattern_issues(value, element.pattern, item.path, found)
            for path, message in found:
                self.error(path, message)
        if element.binding is not None and element.binding[0] == "required":
            self.binding(element.binding[1], code, value, item.path)
        if code in _PRIMITIVES:
            self.primitive(code, value, item.path)
            return
        if code not in _COMPLEX and code != "Timing.repeat":
            assert typ is not None
            self.embedded_resource(typ, value, item.path)
            return
        provider = element.provider
        if provider is None and typ is not None:
            roots = [self.ps._compiled(u) for u in typ.profiles if u in self.ps]
            if roots:
                for profile in roots:
                    self.complex(profile.root, profile.root, value, item.path)
                if element.constraints:
                    self.complex_invariants(element, value, item.path)
                return
            self.unknown_profiles(typ.profiles, item.path)
        if provider is None:
            provider = base.provider if base is not element else None
        if provider is None:
            provider = _BUILTIN.get(code)
        if provider is None:  # a datatype this validator does not describe: only its JSON shape is checked
            if not isinstance(value, dict):
                self.error(item.path, f"expected a {code} (JSON object), found {_json_kind(value)}")
            return
        self.complex(element, provider, value, item.path)
        if code == "Reference" and typ is not None and isinstance(value, dict):
            self.reference(typ, value, item.path)

    def complex_invariants(self, element: _Element, value: Any, path: str) -> None:
        if isinstance(value, dict):
            for constraint in element.constraints:
                check = INVARIANTS.get(constraint.key)
                if check is not None and not check(value):
                    self.add(constraint.severity, path, f"invariant {constraint.key} failed: {constraint.human}")

    def reference(self, typ: _Type, value: Mapping[str, Any], path: str) -> None:
        ref = value.get("reference")
        if not isinstance(ref, str) or not typ.targets or ref.startswith("#"):
            return
        allowed: set[str] = set()
        for url in typ.targets:
            if url in self.ps:
                allowed.add(self.ps.resource_type(url))
            elif url.startswith(CORE_PROFILE_BASE):
                allowed.add(url.rsplit("/", 1)[-1])
            else:
                return  # a target profile we know nothing about
        if "Resource" in allowed:
            return
        match = _REF_TYPE_RE.search(_reference_key(ref)) if not ref.startswith("urn:") else None
        rtype: str | None = match.group(1) if match else None
        if rtype is None and self.resolve is not None:
            rtype = _resource_type(self.resolve(ref))
        if rtype is not None and rtype not in allowed:
            self.error(
                f"{path}.reference",
                f"a reference to {rtype} is not allowed here (allowed: {', '.join(sorted(allowed))})",
            )

    def binding(self, value_set: str, code: str, value: Any, path: str) -> None:
        if value_set == _MIMETYPES:
            if isinstance(value, str) and not _MIMETYPE_RE.fullmatch(value):
                self.error(path, f"{value!r} is not a MIME type (required binding to {_MIMETYPES})")
            return
        known = VALUE_SETS.get(value_set)
        if known is None:
            return  # a required value set this validator does not carry (see the module docstring)
        system, codes = known
        shown = " | ".join(sorted(codes))
        if code in ("code", "string", "uri"):
            if isinstance(value, str) and value not in codes:
                self.error(path, f"{value!r} is not in the required value set {value_set} ({shown})")
        elif code == "Coding" and isinstance(value, dict):
            if value.get("code") not in codes or value.get("system", system) != system:
                self.error(path, f"{_show(value)} is not in the required value set {value_set}")
        elif code == "CodeableConcept" and isinstance(value, dict):
            codings = value["coding"] if isinstance(value.get("coding"), list) else []
            if not any(isinstance(c, dict) and c.get("code") in codes and c.get("system") == system for c in codings):
                self.error(path, f"no coding from the required value set {value_set} ({shown})")
        elif (
            _DATATYPES.get(code) is _QUANTITY
            and isinstance(value, dict)
            and (value.get("code") not in codes or value.get("system") != system)
        ):
            self.error(path, f"unit {value.get('code')!r} is not in the required value set {value_set} ({shown})")

    def primitive(self, code: str, value: Any, path: str) -> None:
        if code == "boolean":
            if not isinstance(value, bool):
                self.error(path, f"expected a boolean, found {_json_kind(value)} {_show(value)}")
        elif code in ("integer", "positiveInt", "unsignedInt"):
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(path, f"expected an {code} (JSON integer), found {_json_kind(value)} {_show(value)}")
            elif not _INT32[0] <= value <= _INT32[1]:
                self.error(path, f"{value} is out of range for {code} (32-bit)")
            elif (code == "positiveInt" and value < 1) or (code == "unsignedInt" and value < 0):
                self.error(path, f"{value} is not a valid {code}")
        elif code == "decimal":
            if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
                self.error(path, f"expected a decimal (JSON number), found {_json_kind(value)} {_show(value)}")
            elif isinstance(value, float) and not math.isfinite(value):
                self.error(path, f"{value} is not a valid decimal")
        elif not isinstance(value, str):
            self.error(path, f"expected a {code} (JSON string), found {_json_kind(value)} {_show(value)}")
        elif not value.strip():
            self.error(path, f"empty {code}: FHIR strings must have content")
        else:
            pattern = _STRING_FORMATS.get(code)
            text = re.sub(r"\s+", "", value) if code == "base64Binary" else value
            if pattern is not None and not pattern.fullmatch(text):
                self.error(path, f"{_show(value)} is not a valid {code}")
            elif code in ("date", "dateTime", "instant"):
                match = _CALENDAR_RE.match(value)
                if match:
                    try:
                        date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
                    except ValueError:
                        self.error(path, f"{_show(value)} is not a valid {code}: no such day")


def _resource_type(value: Any) -> str | None:
    if isinstance(value, dict):
        rtype = value.get("resourceType")
        return rtype if isinstance(rtype, str) else None
    return None
