"""The in-memory FHIR store of one site: resources with version history, plus columnar CGM readings.

Seeded readings (about 26 000 Observations per person) are kept as numpy columns in `ReadingBlock`s and turned
into Observation dicts only when a page of results is built, so the five sites start in well under two seconds
and searches over 90 days cost a few milliseconds. Everything else is a dict per resource. Searches return a
`SearchResult` made of segments (block index arrays and dict lists) that is paged without materialising it.

Patient compartments: a resource "belongs" to the patient it is about (`subject`, `patient`, a Provenance's
target, a Binary's securityContext); a patient-scoped token sees only its patient's resources (sandbox.scopes).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sandbox.personalities import IdStyle
from sandbox.search import (
    SEARCH_PARAMS,
    SearchParam,
    SearchQuery,
    date_matches,
    matches,
    normal_reference,
    parse_date_value,
    reference_matches,
    resource_dates,
    token_matches,
)
from sandbox.seed import READING_ID_SYSTEM, ReadingBlock, SiteSeed, site_id

#: Types not in any patient's compartment but readable with patient scopes (shared reference data).
SHARED_TYPES = frozenset({"Practitioner"})
#: Types a patient-scoped token never sees (they list many patients).
POPULATION_TYPES = frozenset({"Group"})


def now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class BlockHits:
    block: ReadingBlock
    index: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.index.size)


@dataclass(slots=True)
class SearchResult:
    """Matches in a stable order: segments of reading-block hits and of dict resources."""

    segments: list[BlockHits | list[dict[str, Any]]] = field(default_factory=list)
    order: NDArray[np.int64] | None = None  # a global permutation when sorted

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.segments)

    def _flat(self, position: int) -> dict[str, Any]:
        for segment in self.segments:
            if position < len(segment):
                if isinstance(segment, BlockHits):
                    return segment.block.observation(int(segment.index[position]))
                return segment[position]
            position -= len(segment)
        raise IndexError(position)

    def page(self, offset: int, count: int) -> list[dict[str, Any]]:
        stop = min(self.total, offset + count)
        positions = range(offset, stop)
        if self.order is not None:
            return [self._flat(int(self.order[p])) for p in positions]
        return [self._flat(p) for p in positions]


class FhirStore:
    """Resources of one site. Not thread-safe: the app touches it from its event loop only."""

    def __init__(self, site: str, style: IdStyle, clock: Callable[[], float]) -> None:
        self.site = site
        self.style = style
        self.clock = clock
        self.current: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in SEARCH_PARAMS}
        self.history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.blocks: list[ReadingBlock] = []
        self.seeded: set[tuple[str, str]] = set()
        self.written: list[tuple[str, str]] = []  # created by clients, in order (for the shell)
        self._counter = 0

    # MARK: loading and ids

    def load(self, seed: SiteSeed) -> None:
        for resource in seed.resources:
            key = (resource["resourceType"], resource["id"])
            self.current[key[0]][key[1]] = resource
            self.history[key] = [resource]
            self.seeded.add(key)
        self.blocks = list(seed.blocks)

    def new_id(self, rtype: str) -> str:
        while True:
            self._counter += 1
            rid = site_id(self.style, self.site, rtype, f"new/{self._counter}")
            if self.style is IdStyle.NUMERIC and rtype == "Observation":
                rid = ("L-" if self._counter % 2 else "M-") + rid  # Millennium-like lab/measurement ids
            if rid not in self.current.get(rtype, {}):
                return rid

    # MARK: read

    def block_for(self, rid: str) -> tuple[ReadingBlock, int] | None:
        for block in self.blocks:
            index = block.index_of_id(rid)
            if index is not None:
                return block, index
        return None

    def read(self, rtype: str, rid: str) -> dict[str, Any] | None:
        found = self.current.get(rtype, {}).get(rid)
        if found is not None:
            return found
        if rtype == "Observation":
            hit = self.block_for(rid)
            if hit is not None:
                return hit[0].observation(hit[1])
        return None

    def vread(self, rtype: str, rid: str, version: str) -> dict[str, Any] | None:
        for resource in self.history.get((rtype, rid), []):
            if resource.get("meta", {}).get("versionId") == version:
                return resource
        found = self.read(rtype, rid) if rtype == "Observation" else None
        if found is not None and version == "1":
            return found
        return None

    def patient_of(self, resource: dict[str, Any]) -> str | None:
        """The id of the patient whose compartment holds the resource, or None."""
        rtype = resource.get("resourceType")
        if rtype == "Patient":
            return resource.get("id")
        refs: list[str] = []
        if rtype == "Provenance":
            targets = [normal_reference(t.get("reference", "")) for t in resource.get("target", [])]
            for target in targets:
                if target.startswith("Patient/"):
                    return target.split("/", 1)[1]
            for target in targets:
                kind, _, rid = target.partition("/")
                found = self.read(kind, rid) if kind in self.current else None
                if found is not None and found.get("resourceType") != "Provenance":
                    return self.patient_of(found)
            return None
        if rtype == "Binary":
            context = resource.get("securityContext", {}).get("reference")
            if isinstance(context, str):
                kind, _, rid = normal_reference(context).partition("/")
                found = self.read(kind, rid) if kind in self.current else None
                return self.patient_of(found) if found is not None and kind != "Binary" else None
            return None
        for key in ("subject", "patient"):
            value = resource.get(key)
            if isinstance(value, dict) and isinstance(value.get("reference"), str):
                refs.append(normal_reference(value["reference"]))
        for ref in refs:
            if ref.startswith("Patient/"):
                return ref.split("/", 1)[1]
        return None

    # MARK: write

    def _stamp(self, resource: dict[str, Any], version: int) -> dict[str, Any]:
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = now_iso(self.clock)
        resource["meta"] = meta
        return resource

    def create(self, resource: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        """Store a new resource (a copy) under a new id, or `rid` when given (assigned ahead in a transaction)."""
        stored = copy.deepcopy(resource)
        rtype = stored["resourceType"]
        stored["id"] = rid or self.new_id(rtype)
        self._stamp(stored, 1)
        self.current[rtype][stored["id"]] = stored
        self.history[(rtype, stored["id"])] = [stored]
        self.written.append((rtype, stored["id"]))
        return stored

    def update(self, resource: dict[str, Any], rid: str) -> tuple[dict[str, Any], bool]:
        """Store a new version (or the first, as update-as-create). Returns (stored, created)."""
        rtype = resource["resourceType"]
        previous = self.current[rtype].get(rid)
        stored = copy.deepcopy(resource)
        stored["id"] = rid
        version = 1 if previous is None else int(previous.get("meta", {}).get("versionId", "1")) + 1
        self._stamp(stored, version)
        self.current[rtype][rid] = stored
        self.history.setdefault((rtype, rid), []).append(stored)
        if previous is None:
            self.written.append((rtype, rid))
        return stored, previous is None

    # MARK: search

    def search(self, rtype: str, query: SearchQuery, *, patient: str | None = None) -> SearchResult:
        """Resources of `rtype` matching every parameter; `patient` restricts to one patient's compartment."""
        result = SearchResult()
        if rtype == "Observation":
            for block in self.blocks:
                if patient is not None and block.patient_id != patient:
                    continue
                index = _block_index(block, query.params)
                if index.size:
                    result.segments.append(BlockHits(block, index))
        found = []
        for resource in self.current[rtype].values():
            if patient is not None and not self._visible_to(resource, patient):
                continue
            if all(matches(resource, p, self.patient_of) for p in query.params):
                found.append(resource)
        if found:
            result.segments.append(found)
        if query.sort is not None and result.total:
            result.order = _sort_order(result, descending=query.sort.startswith("-"))
        return result

    def _visible_to(self, resource: dict[str, Any], patient: str) -> bool:
        rtype = resource["resourceType"]
        if rtype in SHARED_TYPES:
            return True
        if rtype in POPULATION_TYPES:
            return False
        return self.patient_of(resource) == patient

    def digest(self) -> str:
        """A short fingerprint of the seeded readings (to compare sites and runs)."""
        h = hashlib.sha256()
        for block in self.blocks:
            h.update(block.trace.time_ms.tobytes())
            h.update(block.trace.value.tobytes())
        return h.hexdigest()[:16]


def _block_index(block: ReadingBlock, params: tuple[SearchParam, ...]) -> NDArray[np.int64]:
    """Indexes of a block's readings matching every parameter (vectorised)."""
    n = len(block)
    trace = block.trace
    mask: NDArray[np.bool_] = np.ones(n, dtype=bool)
    for param in params:
        if param.name == "_id":
            wanted = [i for v in param.values if (i := block.index_of_id(v)) is not None]
            sub = np.zeros(n, dtype=bool)
            sub[wanted] = True
            mask &= sub
        elif param.name == "identifier":
            wanted = []
            for value in param.values:
                system, bar, code = value.rpartition("|")
                if bar and system not in ("", READING_ID_SYSTEM):
                    continue
                index = block.index_of_record_id(code if bar else value)
                if index is not None:
                    wanted.append(index)
            sub = np.zeros(n, dtype=bool)
            sub[wanted] = True
            mask &= sub
        elif param.name in ("patient", "subject"):
            refs = [f"Patient/{block.patient_id}"]
            kind = "Patient" if param.name == "patient" else None
            if not any(reference_matches(v, refs, kind=kind) for v in param.values):
                return np.zeros(0, dtype=np.int64)
        elif param.name in ("code", "category", "status"):
            tokens = {
                "code": block.code_tokens,
                "category": block.category_tokens,
                "status": frozenset({("", "final")}),
            }[param.name]
            if not any(token_matches(v, tokens) for v in param.values):
                return np.zeros(0, dtype=np.int64)
        elif param.name == "date":
            lo_ms = trace.time_ms
            hi_ms = trace.time_ms + 1000
            sub = np.zeros(n, dtype=bool)
            for value in param.values:
                prefix, lo, hi = parse_date_value(value)
                sub |= date_matches(prefix, lo, hi, lo_ms, hi_ms)
            mask &= sub
        elif param.name == "device":
            sessions = [i for i, d in enumerate(block.device_ids) if reference_matches_any(param.values, f"Device/{d}")]
            mask &= np.isin(trace.session, sessions)
        else:  # encounter and anything else: seeded readings have none
            return np.zeros(0, dtype=np.int64)
    return np.nonzero(mask)[0].astype(np.int64)


def reference_matches_any(values: tuple[str, ...], reference: str) -> bool:
    return any(reference_matches(v, [reference]) for v in values)


def _sort_order(result: SearchResult, *, descending: bool) -> NDArray[np.int64]:
    keys: list[NDArray[np.int64]] = []
    for segment in result.segments:
        if isinstance(segment, BlockHits):
            keys.append(segment.block.trace.time_ms[segment.index])
        else:
            keys.append(
                np.array([min((lo for lo, _ in resource_dates(r)), default=0) for r in segment], dtype=np.int64)
            )
    key = np.concatenate(keys)
    order = np.argsort(-key if descending else key, kind="stable")
    return order.astype(np.int64)
