"""Bulk Data `$export` of each site (Bulk Data Access IG), with faults a test can inject.

    GET|POST {fhir}/Group/{id}/$export · {fhir}/Patient/$export · {fhir}/$export     kick-off (Prefer: respond-async)
    GET    /sites/{site}/bulk/status/{job}       202 + X-Progress + Retry-After while "running", then the manifest
    DELETE /sites/{site}/bulk/status/{job}       cancel / done: the job and its files are gone
    GET    /sites/{site}/bulk/files/{job}/{name} an NDJSON file (streamed; needs the token: requiresAccessToken)
    GET|POST|DELETE /sandbox/sites/{site}/bulk/faults   the site's faults (JSON, as `BulkFaults`); DELETE resets

Parameters: `_type` (Patient, Observation, Device, Group, Practitioner, Encounter; default Patient, Observation),
`_since` (resources whose `meta.lastUpdated` is after it; a reading's is its time plus the upload delay),
`_typeFilter` (`Type?search` with this sandbox's search parameters, e.g. `Observation?date=ge2026-11-20`), and
`_outputFormat` (NDJSON only). A system-scoped token of the site is needed everywhere; Group export takes the
Group's members, Patient export every patient, system export everything. Observation files hold
`lines_per_file` resources each, so an export has several.

Faults (`BulkFaults`; counts are used up one request at a time):

| fault | what the client sees |
| --- | --- |
| `kickoff_busy` N | the next N kick-offs: 429 `throttled` "an export is already running", Retry-After |
| `retry_after_form` | seconds, http-date or epoch: how every Retry-After is written (`retry_after_s` from now) |
| `polls_before_ready` N | N status answers of 202 (X-Progress "n%") before the manifest |
| `transient_polls` N | the next N status polls: 500 with an OperationOutcome `transient` |
| `expire_after_files` N | the next export: after N files were served, its other files answer 404 (expired) |
| `cut_files` N | the next N file downloads stop half-way (the connection drops before the last chunk) |
| `file_errors` N | the next N file downloads: 503 with an OperationOutcome `transient`, Retry-After |
| `error_file` | the manifest lists an OperationOutcome error file (one issue per patient exported) |
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import orjson
from litestar import Litestar, Request, Response, delete, get, route
from litestar.response import Stream

from sandbox.fhir_api import authorize, bearer_grant, path_param, site_of
from sandbox.oauth import Grant
from sandbox.outcome import FhirError, fhir_response, outcome
from sandbox.runtime import Site
from sandbox.search import parse_query
from sandbox.seed import UPLOAD_DELAY_MS
from sandbox.store import BlockHits

AnyRequest = Request[Any, Any, Any]
EXPORT_TYPES = ("Patient", "Observation", "Device", "Group", "Practitioner", "Encounter")
DEFAULT_TYPES = ("Patient", "Observation")
NDJSON = "application/fhir+ndjson"
_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}


@dataclass
class BulkFaults:
    kickoff_busy: int = 0
    retry_after_form: str = "seconds"
    retry_after_s: int = 1
    polls_before_ready: int = 1
    transient_polls: int = 0
    expire_after_files: int | None = None
    cut_files: int = 0
    file_errors: int = 0
    error_file: bool = False
    lines_per_file: int = 5000

    @classmethod
    def parse(cls, data: Any) -> BulkFaults:
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown faults: {', '.join(sorted(unknown))}")
        faults = cls(**data)
        if faults.retry_after_form not in ("seconds", "http-date", "epoch"):
            raise ValueError("retry_after_form must be seconds, http-date or epoch")
        if faults.lines_per_file < 1:
            raise ValueError("lines_per_file must be at least 1")
        return faults

    def retry_after(self, now: float) -> str:
        if self.retry_after_form == "epoch":
            return str(int(now) + self.retry_after_s)
        if self.retry_after_form == "http-date":
            return format_datetime(datetime.fromtimestamp(int(now) + self.retry_after_s, UTC), usegmt=True)
        return str(self.retry_after_s)


#: Resources of one type for one file: block hits (readings, built on demand) and resource dicts, in order.
Pieces = list[BlockHits | list[dict[str, Any]]]


@dataclass
class ExportFile:
    name: str
    rtype: str
    pieces: Pieces
    start: int
    stop: int
    kind: str = "output"

    def resources(self) -> Iterator[dict[str, Any]]:
        position = 0
        for piece in self.pieces:
            size = len(piece)
            lo, hi = max(self.start - position, 0), min(self.stop - position, size)
            if lo < hi:
                if isinstance(piece, BlockHits):
                    for i in piece.index[lo:hi]:
                        yield piece.block.observation(int(i))
                else:
                    yield from piece[lo:hi]
            position += size
            if position >= self.stop:
                return


@dataclass
class ExportJob:
    id: str
    site: str
    request: str
    client_id: str
    transaction_time: str
    files: list[ExportFile]
    polls: int = 0
    served: int = 0
    expire_after: int | None = None


@dataclass
class SiteBulk:
    faults: BulkFaults = field(default_factory=BulkFaults)
    jobs: dict[str, ExportJob] = field(default_factory=dict)
    kickoffs: int = 0


class BulkExports:
    """Every site's exports and faults (`app.state.bulk`)."""

    def __init__(self, sites: list[str]) -> None:
        self.sites = {key: SiteBulk() for key in sites}

    def of(self, site: str) -> SiteBulk:
        found = self.sites.get(site)
        if found is None:
            raise FhirError(404, "not-found", f"no site {site!r} in this sandbox")
        return found


def bulk_of_app(app: Litestar) -> BulkExports:
    exports: BulkExports = app.state.bulk
    return exports


def _exports(request: AnyRequest) -> BulkExports:
    return bulk_of_app(request.app)


def _instant(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FhirError(400, "invalid", f"_since {text!r} is not a FHIR instant") from None
    if moment.tzinfo is None:
        raise FhirError(400, "invalid", f"_since {text!r} needs a time zone")
    return int(moment.timestamp() * 1000)


def _system_grant(request: AnyRequest, site: Site) -> Grant:
    grant = bearer_grant(request, site)
    if grant.patient is not None or grant.practitioner is not None:
        raise FhirError(403, "forbidden", "Bulk Data needs a system (Backend Services) token")
    return grant


def _since_filter(pieces: Pieces, since_ms: int | None) -> Pieces:
    if since_ms is None:
        return pieces
    out: Pieces = []
    for piece in pieces:
        if isinstance(piece, BlockHits):
            block = piece.block
            updated = np.minimum(block.trace.time_ms[piece.index] + UPLOAD_DELAY_MS, block.now_ms)
            kept = piece.index[updated > since_ms]
            if kept.size:
                out.append(BlockHits(block, kept))
        else:
            kept_dicts = [
                r for r in piece if _ms(str(r.get("meta", {}).get("lastUpdated", "1970-01-01T00:00:00Z"))) > since_ms
            ]
            if kept_dicts:
                out.append(kept_dicts)
    return out


def _patients_in_scope(site: Site, level: str, group_id: str | None) -> list[str] | None:
    if level == "system":
        return None
    if level == "patient":
        return sorted(site.store.current["Patient"])
    group = site.store.read("Group", str(group_id))
    if group is None:
        raise FhirError(404, "not-found", f"Group/{group_id} is not known")
    members = [str(m.get("entity", {}).get("reference", "")) for m in group.get("member", [])]
    return [m.split("/", 1)[1] for m in members if m.startswith("Patient/")]


def _collect(site: Site, rtype: str, patients: list[str] | None, filters: list[list[tuple[str, str]]]) -> Pieces:
    pieces: Pieces = []
    queries = [parse_query(rtype, pairs, strict=True) for pairs in filters] or [parse_query(rtype, [], strict=False)]
    owners: list[str | None] = (
        list(patients) if patients is not None and rtype not in ("Group", "Practitioner") else [None]
    )
    for query in queries:
        for owner in owners:
            result = site.store.search(rtype, query, patient=owner)
            pieces.extend(segment for segment in result.segments if len(segment))
    if rtype == "Patient" and patients is not None:
        wanted = set(patients)
        pieces = [[r for r in piece if r.get("id") in wanted] for piece in pieces if isinstance(piece, list)]
    return [p for p in pieces if len(p)]


async def _kickoff(request: AnyRequest, level: str, group_id: str | None) -> Response[Any]:
    site = site_of(request, path_param(request, "site_key"))
    grant = _system_grant(request, site)
    bulk = _exports(request).of(site.key)
    if "respond-async" not in request.headers.get("prefer", ""):
        raise FhirError(400, "invalid", "a Bulk Data kick-off needs the header Prefer: respond-async")
    pairs = parse_qsl(urlsplit(str(request.url)).query, keep_blank_values=True)
    if request.method == "POST":
        body = await request.body()
        if body.strip():
            document = orjson.loads(body)
            for parameter in document.get("parameter", []) if isinstance(document, dict) else []:
                value = next((v for k, v in parameter.items() if k.startswith("value")), None)
                if value is not None:
                    pairs.append((str(parameter.get("name")), str(value)))
    now = site.now()
    faults = bulk.faults
    if faults.kickoff_busy > 0:
        faults.kickoff_busy -= 1
        raise FhirError(429, "throttled", "an export is already running for this client: try again later",
                        headers={"Retry-After": faults.retry_after(now)})  # fmt: skip
    types: list[str] = []
    since_ms: int | None = None
    filters: dict[str, list[list[tuple[str, str]]]] = {}
    for name, value in pairs:
        if name == "_type":
            types += [t.strip() for t in value.split(",") if t.strip()]
        elif name == "_since":
            since_ms = _ms(value)
        elif name == "_typeFilter":
            for criteria in value.split(","):
                rtype, _, query = criteria.partition("?")
                filters.setdefault(rtype, []).append(parse_qsl(query, keep_blank_values=True))
        elif name == "_outputFormat":
            if value not in _FORMATS:
                raise FhirError(400, "not-supported", f"_outputFormat {value!r}: only NDJSON is offered")
        else:
            raise FhirError(400, "not-supported", f"$export parameter {name!r} is not supported here")
    for rtype in (*types, *filters):
        if rtype not in EXPORT_TYPES:
            raise FhirError(400, "not-supported", f"resource type {rtype!r} cannot be exported here")
    patients = _patients_in_scope(site, level, group_id)
    job_id = secrets.token_hex(8)
    files: list[ExportFile] = []
    for rtype in types or DEFAULT_TYPES:
        authorize(site, grant, rtype, "s")
        pieces = _since_filter(_collect(site, rtype, patients, filters.get(rtype, [])), since_ms)
        total = sum(len(p) for p in pieces)
        per_file = faults.lines_per_file
        for number, start in enumerate(range(0, total, per_file)):
            files.append(ExportFile(f"{rtype}.{number + 1}.ndjson", rtype, pieces, start, min(total, start + per_file)))
    if faults.error_file:
        problems: list[dict[str, Any]] = [
            {**outcome("error", "processing", f"Patient/{p}: the Device search timed out; its Devices are missing"),
             "id": f"export-error-{p}"}
            for p in (patients or sorted(site.store.current["Patient"]))
        ]  # fmt: skip
        files.append(ExportFile("errors.ndjson", "OperationOutcome", [problems], 0, len(problems), kind="error"))
    job = ExportJob(job_id, site.key, str(request.url), grant.client_id, _instant(now), files)
    if faults.expire_after_files is not None:
        job.expire_after, faults.expire_after_files = faults.expire_after_files, None
    bulk.jobs[job_id] = job
    bulk.kickoffs += 1
    status = f"{site.config.site_base(site.key)}/bulk/status/{job_id}"
    return fhir_response(outcome("information", "informational", "export accepted"), 202, {"Content-Location": status})


# Routes name the type as a parameter: a static `Group` or `Patient` segment would take `/fhir/Patient` and
# `/fhir/Group/{id}` away from the FHIR API's own routes (Litestar does not fall back from a static segment).
@route("/sites/{site_key:str}/fhir/{rtype:str}/{rid:str}/$export", http_method=["GET", "POST"], status_code=202)
async def group_export(request: AnyRequest) -> Response[Any]:
    if path_param(request, "rtype") != "Group":
        raise FhirError(404, "not-supported", "instance-level $export is only defined for Group")
    return await _kickoff(request, "group", path_param(request, "rid"))


@route("/sites/{site_key:str}/fhir/{rtype:str}/$export", http_method=["GET", "POST"], status_code=202)
async def patient_export(request: AnyRequest) -> Response[Any]:
    if path_param(request, "rtype") != "Patient":
        raise FhirError(404, "not-supported", "type-level $export is only defined for Patient")
    return await _kickoff(request, "patient", None)


@route("/sites/{site_key:str}/fhir/$export", http_method=["GET", "POST"], status_code=202)
async def system_export(request: AnyRequest) -> Response[Any]:
    return await _kickoff(request, "system", None)


def _job(request: AnyRequest) -> tuple[Site, SiteBulk, ExportJob]:
    site = site_of(request, path_param(request, "site_key"))
    _system_grant(request, site)
    bulk = _exports(request).of(site.key)
    job = bulk.jobs.get(path_param(request, "job_id"))
    if job is None:
        raise FhirError(404, "not-found", "no such export (finished and deleted, cancelled, or never started)")
    return site, bulk, job


@get("/sites/{site_key:str}/bulk/status/{job_id:str}")
async def export_status(request: AnyRequest) -> Response[Any]:
    site, bulk, job = _job(request)
    faults = bulk.faults
    now = site.now()
    if faults.transient_polls > 0:
        faults.transient_polls -= 1
        raise FhirError(
            500, "transient", "the export is busy: try again", headers={"Retry-After": faults.retry_after(now)}
        )
    job.polls += 1
    if job.polls <= faults.polls_before_ready:
        done = int(100 * job.polls / (faults.polls_before_ready + 1))
        return Response(
            b"", status_code=202, headers={"X-Progress": f"{done}% done", "Retry-After": faults.retry_after(now)}
        )
    base = f"{site.config.site_base(site.key)}/bulk/files/{job.id}"
    manifest = {
        "transactionTime": job.transaction_time,
        "request": job.request,
        "requiresAccessToken": True,
        "output": [{"type": f.rtype, "url": f"{base}/{f.name}", "count": f.stop - f.start}
                   for f in job.files if f.kind == "output"],
        "error": [{"type": f.rtype, "url": f"{base}/{f.name}", "count": f.stop - f.start}
                  for f in job.files if f.kind == "error"],
    }  # fmt: skip
    return Response(
        manifest, headers={"Expires": format_datetime(datetime.fromtimestamp(now + 86400, UTC), usegmt=True)}
    )


@delete("/sites/{site_key:str}/bulk/status/{job_id:str}", status_code=202)
async def export_delete(request: AnyRequest) -> Response[Any]:
    _, bulk, job = _job(request)
    bulk.jobs.pop(job.id, None)
    return fhir_response(outcome("information", "informational", "export deleted"), 202)


@get("/sites/{site_key:str}/bulk/files/{job_id:str}/{name:str}")
async def export_file(request: AnyRequest) -> Response[Any]:
    site, bulk, job = _job(request)
    name = path_param(request, "name")
    found = next((f for f in job.files if f.name == name), None)
    if found is None:
        raise FhirError(404, "not-found", f"no file {name} in this export")
    if job.expire_after is not None and job.served >= job.expire_after:
        raise FhirError(404, "not-found", "the export's files have expired: export again")
    faults = bulk.faults
    if faults.file_errors > 0:
        faults.file_errors -= 1
        raise FhirError(503, "transient", "the file store is busy: try again",
                        headers={"Retry-After": faults.retry_after(site.now())})  # fmt: skip
    cut = faults.cut_files > 0
    if cut:
        faults.cut_files -= 1

    async def lines() -> AsyncIterator[bytes]:
        half = (found.stop - found.start) // 2
        for number, resource in enumerate(found.resources()):
            if cut and number >= half:
                raise ConnectionAbortedError("the file is cut here (injected fault)")
            yield orjson.dumps(resource) + b"\n"
        job.served += 1

    return Stream(lines(), media_type=NDJSON)


def _faults_site(request: AnyRequest) -> SiteBulk:
    return _exports(request).of(path_param(request, "site_key"))


@route("/sandbox/sites/{site_key:str}/bulk/faults", http_method=["GET", "POST", "DELETE"])
async def bulk_faults(request: AnyRequest) -> Response[Any]:
    bulk = _faults_site(request)
    if request.method == "POST":
        try:
            bulk.faults = BulkFaults.parse({**asdict(bulk.faults), **orjson.loads(await request.body())})
        except (ValueError, TypeError) as exc:
            return Response({"error": str(exc)}, status_code=400)
    elif request.method == "DELETE":
        bulk.faults = BulkFaults()
    return Response(asdict(bulk.faults), headers={"Cache-Control": "no-store"})


ROUTES = [group_export, patient_export, system_export, export_status, export_delete, export_file, bulk_faults]

__all__ = ["ROUTES", "BulkExports", "BulkFaults", "bulk_of_app"]
