"""FHIR R4 search parameters: parsing a query and matching a resource (as a dict) against it.

Supported per type (`SEARCH_PARAMS`): `_id`, `identifier`, `patient`/`subject`, `code`, `category`, `date`,
`status`, `encounter`, `device` and a few names; token values `system|code`, `code`, `system|` and `|code`;
reference values `id`, `Type/id` or an absolute URL; dates with the prefixes eq, ne, gt, lt, ge, le, sa, eb and
ap, at the precision written (a date without a zone is read as UTC); a comma means OR, repeating a parameter
means AND. Result parameters: `_count` (default 50, at most 1000), `_offset` (the paging cursor this server
writes into `next` links), `_sort` (`date`, `-date`), `_summary=count`, `_total`. Unknown parameters are
ignored, as FHIR's lenient handling allows, unless the request says `Prefer: handling=strict`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sandbox.outcome import FhirError

DEFAULT_COUNT = 50
MAX_COUNT = 1000
RESULT_PARAMS = frozenset({"_count", "_offset", "_sort", "_summary", "_total", "_format", "_pretty"})
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
NEG_INF = -(2**62)
POS_INF = 2**62

# MARK: parameter definitions

#: (kind, paths). Kinds: token, reference, date, string, patient (a reference restricted to Patient).
ParamDef = tuple[str, tuple[str, ...]]
_SUBJECT: dict[str, ParamDef] = {"patient": ("patient", ("subject",)), "subject": ("reference", ("subject",))}
SEARCH_PARAMS: dict[str, dict[str, ParamDef]] = {
    "Patient": {
        "identifier": ("token", ("identifier",)),
        "name": ("string", ("name",)),
        "family": ("string", ("name.family",)),
        "given": ("string", ("name.given",)),
        "birthdate": ("date", ("birthDate",)),
        "gender": ("token", ("gender",)),
    },
    "Practitioner": {
        "identifier": ("token", ("identifier",)),
        "name": ("string", ("name",)),
        "family": ("string", ("name.family",)),
        "given": ("string", ("name.given",)),
    },
    "Encounter": {
        **_SUBJECT,
        "identifier": ("token", ("identifier",)),
        "date": ("date", ("period",)),
        "status": ("token", ("status",)),
        "class": ("token", ("class",)),
    },
    "Observation": {
        **_SUBJECT,
        "identifier": ("token", ("identifier",)),
        "code": ("token", ("code",)),
        "category": ("token", ("category",)),
        "status": ("token", ("status",)),
        "date": ("date", ("effectiveDateTime", "effectivePeriod", "effectiveInstant")),
        "encounter": ("reference", ("encounter",)),
        "device": ("reference", ("device",)),
    },
    "Device": {
        "patient": ("patient", ("patient",)),
        "identifier": ("token", ("identifier",)),
        "status": ("token", ("status",)),
        "type": ("token", ("type",)),
    },
    "DocumentReference": {
        **_SUBJECT,
        "identifier": ("token", ("identifier",)),
        "type": ("token", ("type",)),
        "category": ("token", ("category",)),
        "date": ("date", ("date",)),
        "status": ("token", ("status",)),
        "encounter": ("reference", ("context.encounter",)),
    },
    "DiagnosticReport": {
        **_SUBJECT,
        "identifier": ("token", ("identifier",)),
        "code": ("token", ("code",)),
        "category": ("token", ("category",)),
        "status": ("token", ("status",)),
        "date": ("date", ("effectiveDateTime", "effectivePeriod")),
        "encounter": ("reference", ("encounter",)),
    },
    "Provenance": {
        "patient": ("patient", ("target",)),
        "target": ("reference", ("target",)),
        "recorded": ("date", ("recorded",)),
    },
    "Group": {
        "identifier": ("token", ("identifier",)),
        "member": ("reference", ("member.entity",)),
        "type": ("token", ("type",)),
    },
    "ServiceRequest": {
        **_SUBJECT,
        "identifier": ("token", ("identifier",)),
        "code": ("token", ("code",)),
        "status": ("token", ("status",)),
    },
    "Binary": {},
}
SUPPORTED_TYPES = tuple(SEARCH_PARAMS)
DATE_SORT_PATHS = {t: d[1] for t, defs in SEARCH_PARAMS.items() if (d := defs.get("date")) is not None}


@dataclass(frozen=True, slots=True)
class SearchParam:
    name: str
    modifier: str
    values: tuple[str, ...]  # OR


@dataclass(frozen=True, slots=True)
class SearchQuery:
    params: tuple[SearchParam, ...]  # AND
    count: int
    offset: int
    sort: str | None  # "date" or "-date"
    summary_count: bool
    used: tuple[tuple[str, str], ...]  # the parameters applied, for the self and next links

    def named(self, *names: str) -> list[SearchParam]:
        return [p for p in self.params if p.name in names]


def _split_or(value: str) -> tuple[str, ...]:
    parts = re.split(r"(?<!\\),", value)
    return tuple(p.replace("\\,", ",") for p in parts if p != "")


def parse_query(rtype: str, pairs: Iterable[tuple[str, str]], *, strict: bool = False) -> SearchQuery:
    """The search a query string asks for; 400 for bad values (and, when strict, unknown parameters)."""
    known = SEARCH_PARAMS[rtype]
    params: list[SearchParam] = []
    used: list[tuple[str, str]] = []
    count, offset, sort, summary_count = DEFAULT_COUNT, 0, None, False
    for raw_name, value in pairs:
        name, _, modifier = raw_name.partition(":")
        if name == "_count":
            count = _int_param(name, value, 0, MAX_COUNT)
            used.append((name, str(count)))
        elif name == "_offset":
            offset = _int_param(name, value, 0, 10**9)
        elif name == "_sort":
            if value not in ("date", "-date") or rtype not in DATE_SORT_PATHS:
                if strict:
                    raise FhirError(400, "not-supported", f"_sort={value} is not supported (use date or -date)")
                continue
            sort = value
            used.append((name, value))
        elif name == "_summary":
            summary_count = value == "count"
            used.append((name, value))
        elif name in RESULT_PARAMS:
            continue
        elif name == "_id" or name in known:
            if modifier and not (modifier == "exact" and known.get(name, ("",))[0] == "string"):
                raise FhirError(400, "not-supported", f"modifier :{modifier} is not supported on {name}")
            values = _split_or(value)
            if not values:
                raise FhirError(400, "invalid", f"search parameter {name} has no value")
            if name in known and known[name][0] == "date":
                for v in values:
                    parse_date_value(v)  # 400 early on a bad date
            params.append(SearchParam(name, modifier, values))
            used.append((raw_name, value))
        elif strict:
            raise FhirError(400, "not-supported", f"unknown search parameter {raw_name!r} for {rtype}")
    return SearchQuery(tuple(params), count, offset, sort, summary_count, tuple(used))


def _int_param(name: str, value: str, lo: int, hi: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise FhirError(400, "invalid", f"{name}={value!r} is not a whole number") from None
    return max(lo, min(hi, number))


# MARK: dates


_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range_ms(text: str) -> tuple[int, int]:
    """[lo, hi) in ms of a FHIR date/dateTime/instant at the precision written; no zone means UTC."""
    found = _DATE.match(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a FHIR date")
    g = found.groupdict()
    tz = UTC
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(g["tz"][1:3]), minutes=int(g["tz"][4:6])))
    year = int(g["y"])
    if g["m"] is None:
        lo, hi = datetime(year, 1, 1, tzinfo=tz), datetime(year + 1, 1, 1, tzinfo=tz)
    elif g["d"] is None:
        month = int(g["m"])
        lo = datetime(year, month, 1, tzinfo=tz)
        hi = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=tz)
    elif g["H"] is None:
        lo = datetime(year, int(g["m"]), int(g["d"]), tzinfo=tz)
        hi = lo + timedelta(days=1)
    else:
        seconds = int(g["S"] or 0)
        lo = datetime(year, int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), seconds, tzinfo=tz)
        if g["f"]:
            lo += timedelta(microseconds=int((g["f"] + "000000")[:6]))
            step = timedelta(milliseconds=1)
        else:
            step = timedelta(seconds=1) if g["S"] is not None else timedelta(minutes=1)
        hi = lo + step
    return int(lo.timestamp() * 1000), int(hi.timestamp() * 1000)


def parse_date_value(value: str) -> tuple[str, int, int]:
    """(prefix, lo, hi) of a date search value such as `ge2024-03-01`."""
    prefix = value[:2] if value[:2] in DATE_PREFIXES else "eq"
    body = value[2:] if value[:2] in DATE_PREFIXES else value
    try:
        lo, hi = date_range_ms(body)
    except (ValueError, OverflowError):
        raise FhirError(400, "invalid", f"date value {value!r} is not a FHIR date (e.g. ge2024-03-01)") from None
    return prefix, lo, hi


def date_matches(prefix: str, lo: int, hi: int, rlo: Any, rhi: Any) -> Any:
    """Whether resource ranges [rlo, rhi) match `prefix` [lo, hi) (FHIR R4 search, 3.1.1.5.7).

    Works on ints and on numpy arrays alike.
    """
    if prefix == "eq":
        return (rlo >= lo) & (rhi <= hi)
    if prefix == "ne":
        return ~((rlo >= lo) & (rhi <= hi)) if not isinstance(rlo, int) else not (rlo >= lo and rhi <= hi)
    if prefix == "gt":
        return rhi > hi
    if prefix == "lt":
        return rlo < lo
    if prefix == "ge":
        return (rhi > hi) | ((rlo >= lo) & (rhi <= hi))
    if prefix == "le":
        return (rlo < lo) | ((rlo >= lo) & (rhi <= hi))
    if prefix == "sa":
        return rlo >= hi
    if prefix == "eb":
        return rhi <= lo
    # ap: within 10 % of the distance to now, at least a day either side; approximated as a day's slack.
    day = 86_400_000
    return (rlo < hi + day) & (rhi > lo - day)


# MARK: element access


def walk(resource: Any, path: str) -> list[Any]:
    """Values at a dotted path, lists flattened."""
    values = [resource]
    for key in path.split("."):
        found: list[Any] = []
        for value in values:
            if isinstance(value, dict) and key in value:
                item = value[key]
                found.extend(item if isinstance(item, list) else [item])
        values = found
    return values


def tokens_of(value: Any) -> list[tuple[str, str]]:
    """(system, code) pairs of a CodeableConcept, Coding, Identifier or code."""
    if isinstance(value, dict):
        if "coding" in value:
            return [(c.get("system", ""), c.get("code", "")) for c in value["coding"] if isinstance(c, dict)]
        if "code" in value:
            return [(value.get("system", ""), str(value["code"]))]
        if "value" in value:
            return [(value.get("system", ""), str(value["value"]))]
        return []
    if isinstance(value, bool):
        return [("", "true" if value else "false")]
    if isinstance(value, str):
        return [("", value)]
    return []


def normal_reference(reference: str) -> str:
    """`Type/id` of a relative or absolute reference (a `_history` part dropped); other forms unchanged."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return f"{parts[-2]}/{parts[-1]}"
    return reference


def token_matches(value: str, pairs: Iterable[tuple[str, str]]) -> bool:
    if "|" not in value:
        return any(code == value for _, code in pairs)
    system, _, code = value.partition("|")
    if not code:
        return any(s == system for s, _ in pairs)
    return any(s == system and c == code for s, c in pairs)


def reference_matches(value: str, references: Iterable[str], *, kind: str | None = None) -> bool:
    wanted = normal_reference(value)
    for ref in references:
        if "/" not in wanted:
            if ref.split("/")[-1] == wanted and (kind is None or ref.startswith(f"{kind}/")):
                return True
        elif ref == wanted and (kind is None or ref.startswith(f"{kind}/")):
            return True
    return False


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):  # HumanName, Address
        out = [value.get("text", ""), value.get("family", "")]
        out.extend(value.get("given", []))
        return [s for s in out if isinstance(s, str) and s]
    return []


def date_ranges_of(value: Any) -> list[tuple[int, int]]:
    if isinstance(value, str):
        try:
            return [date_range_ms(value)]
        except (ValueError, OverflowError):
            return []
    if isinstance(value, dict) and ("start" in value or "end" in value):
        lo = date_range_ms(value["start"])[0] if "start" in value else NEG_INF
        hi = date_range_ms(value["end"])[1] if "end" in value else POS_INF
        return [(lo, hi)]
    return []


def resource_dates(resource: dict[str, Any]) -> list[tuple[int, int]]:
    """The ranges of the resource's `date` search parameter (for sorting and matching)."""
    paths = DATE_SORT_PATHS.get(resource.get("resourceType", ""), ())
    return [r for path in paths for v in walk(resource, path) for r in date_ranges_of(v)]


def matches(resource: dict[str, Any], param: SearchParam, compartment: Callable[[dict[str, Any]], str | None]) -> bool:
    """Whether a resource matches one parameter (any of its OR values). `compartment` gives a Provenance's patient."""
    rtype = resource["resourceType"]
    if param.name == "_id":
        return resource.get("id") in param.values
    kind, paths = SEARCH_PARAMS[rtype][param.name]
    values = [v for path in paths for v in walk(resource, path)]
    if kind == "token":
        pairs = [pair for v in values for pair in tokens_of(v)]
        return any(token_matches(value, pairs) for value in param.values)
    if kind in ("reference", "patient"):
        refs = [normal_reference(v["reference"]) for v in values if isinstance(v, dict) and "reference" in v]
        if kind == "patient" and rtype == "Provenance":
            patient = compartment(resource)
            refs = [f"Patient/{patient}"] if patient else []
        restrict = "Patient" if kind == "patient" else None
        return any(reference_matches(value, refs, kind=restrict) for value in param.values)
    if kind == "date":
        ranges = [r for v in values for r in date_ranges_of(v)]
        for value in param.values:
            prefix, lo, hi = parse_date_value(value)
            if any(date_matches(prefix, lo, hi, rlo, rhi) for rlo, rhi in ranges):
                return True
        return False
    texts = [s.lower() for v in values for s in _strings(v)]
    if param.modifier == "exact":
        return any(s in (t for v in values for t in _strings(v)) for s in param.values)
    return any(t.startswith(value.lower()) for value in param.values for t in texts)
