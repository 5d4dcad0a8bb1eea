"""The FHIR R4 REST API of each site, at `/sites/{site}/fhir`.

Interactions: `metadata`, read, vread, search (GET and POST `_search`), create (with `If-None-Exist` where the
site supports conditional create), update (PUT, where supported), transaction and batch Bundles POSTed to the
base (urn:uuid references rewritten to the ids assigned), and `$submit-cgm-bundle` on a CGM IG receiver.
Every request but `metadata` needs a Bearer token of this site whose scopes allow the interaction; a
patient-scoped token reaches only its patient's compartment (403 otherwise, also when a search names another
patient; a search that names none is narrowed to the token's patient).

Personality differences are in sandbox.rules (what a write must look like) and sandbox.personalities (which
interactions exist). Errors are OperationOutcomes (sandbox.outcome).
"""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from litestar import Request, Response, get, post, route

from sandbox.oauth import Grant
from sandbox.outcome import FHIR_XML, FhirError, fhir_response, outcome, to_fhir_xml
from sandbox.rules import WRITABLE, apply_rules, check_write_allowed
from sandbox.runtime import Sandbox, Site
from sandbox.scopes import granting
from sandbox.search import SEARCH_PARAMS, SUPPORTED_TYPES, SearchParam, SearchQuery, parse_query
from sandbox.store import POPULATION_TYPES, SHARED_TYPES

CGM_RECEIVER = "http://hl7.org/fhir/uv/cgm/CapabilityStatement/cgm-data-receiver"
SUBMIT_CGM = "http://hl7.org/fhir/uv/cgm/OperationDefinition/submit-cgm-bundle"
#: Types a $submit-cgm-bundle entry may create (CGM IG: allow-list POST and CGM resource types only).
CGM_SUBMISSION_TYPES = frozenset({"Observation", "DiagnosticReport", "Device", "DocumentReference", "Provenance"})
_SEARCH_KINDS = {"patient": "reference"}

AnyRequest = Request[Any, Any, Any]


# MARK: plumbing


def sandbox_of(request: AnyRequest) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox


def path_param(request: AnyRequest, name: str) -> str:
    """A path parameter, read from the request (handlers declare none: Litestar 2.25 deprecates inferring them)."""
    return str(request.path_params[name])


def site_of(request: AnyRequest, key: str) -> Site:
    site = sandbox_of(request).site(key)
    if site is None:
        raise FhirError(404, "not-found", f"no site {key!r} in this sandbox")
    return site


def bearer_grant(request: AnyRequest, site: Site) -> Grant:
    header = request.headers.get("authorization", "")
    realm = f'Bearer realm="{site.fhir_base}"'
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise FhirError(401, "login", "a Bearer access token is required", headers={"WWW-Authenticate": realm})
    grant = site.auth.access_grant(header[7:].strip(), site.now())
    if grant is None:
        raise FhirError(
            401,
            "expired",
            "the access token is unknown, expired or revoked",
            headers={"WWW-Authenticate": f'{realm}, error="invalid_token"'},
        )
    return grant


def authorize(site: Site, grant: Grant, rtype: str, op: str, resource: dict[str, Any] | None = None) -> None:
    """403 unless the token's scopes allow `op` (c r u d s) on `rtype`, and on `resource` when given."""
    scopes = granting(grant.scope, rtype, op)
    if resource is not None:
        scopes = [s for s in scopes if s.allows_resource(resource)]
    if not scopes:
        verb = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}[op]
        raise FhirError(403, "forbidden", f"the token's scopes do not allow {verb} on {rtype}")
    if any(s.context in ("user", "system") for s in scopes):
        return
    if grant.patient is None:
        raise FhirError(403, "forbidden", "patient-scoped token without a patient in context")
    if resource is None or rtype in SHARED_TYPES:
        return
    if rtype in POPULATION_TYPES or site.store.patient_of(resource) != grant.patient:
        raise FhirError(403, "forbidden", "the resource is outside the token's patient compartment")


def _check_type(rtype: str) -> None:
    if rtype not in SEARCH_PARAMS:
        raise FhirError(
            404,
            "not-supported",
            f"resource type {rtype!r} is not supported here (supported: {', '.join(SUPPORTED_TYPES)})",
        )


async def json_body(request: AnyRequest) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise FhirError(400, "structure", "the body is not JSON (send application/fhir+json)") from None
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirError(400, "structure", "the body is not a FHIR resource (no resourceType)")
    return body


def _location(site: Site, resource: dict[str, Any]) -> dict[str, str]:
    version = resource.get("meta", {}).get("versionId", "1")
    headers = {
        "Location": f"{site.fhir_base}/{resource['resourceType']}/{resource['id']}/_history/{version}",
        "ETag": f'W/"{version}"',
    }
    last = resource.get("meta", {}).get("lastUpdated")
    if isinstance(last, str):
        moment = datetime.fromisoformat(last.replace("Z", "+00:00")).astimezone(UTC)
        headers["Last-Modified"] = moment.strftime("%a, %d %b %Y %H:%M:%S GMT")
    return headers


def _prefer_body(request: AnyRequest, resource: dict[str, Any], message: str) -> dict[str, Any] | None:
    prefer = request.headers.get("prefer", "")
    if "return=minimal" in prefer:
        return None
    if "return=OperationOutcome" in prefer:
        return outcome("information", "informational", message)
    return resource


# MARK: metadata


def capability_statement(site: Site) -> dict[str, Any]:
    """The site's CapabilityStatement: what it reads, writes and searches, and its SMART endpoints."""
    p = site.personality
    writable = WRITABLE.get(p.write_mode, frozenset(SEARCH_PARAMS)) if p.writes else frozenset()
    resources = []
    for rtype, params in SEARCH_PARAMS.items():
        interactions = ["read", "vread", "search-type"]
        entry: dict[str, Any] = {"type": rtype}
        if rtype in writable:
            interactions.append("create")
            if p.updates:
                interactions.append("update")
            entry["conditionalCreate"] = p.conditional_create
        entry["interaction"] = [{"code": c} for c in interactions]
        entry["searchParam"] = [{"name": "_id", "type": "token"}] + [
            {"name": name, "type": _SEARCH_KINDS.get(kind, kind)} for name, (kind, _) in params.items()
        ]
        resources.append(entry)
    rest: dict[str, Any] = {
        "mode": "server",
        "security": {
            "cors": True,
            "service": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                            "code": "SMART-on-FHIR",
                        }
                    ]
                }
            ],
            "extension": [
                {
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": f"{site.auth_base}/authorize"},
                        {"url": "token", "valueUri": site.token_endpoint},
                    ],
                }
            ],
        },
        "resource": resources,
    }
    if p.transactions and p.writes:
        rest["interaction"] = [{"code": "transaction"}, {"code": "batch"}]
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": f"glucobridge sandbox: {p.key} ({p.vendor})", "version": p.software_version},
        "implementation": {"description": p.title, "url": site.fhir_base},
        "fhirVersion": "5.0.0" if site.fhir_version == "R5" else "4.0.1",
        "format": ["json", "xml"] if p.metadata_xml_by_default else ["json"],
        "rest": [rest],
    }
    if p.cgm_receiver:
        statement["instantiates"] = [CGM_RECEIVER]
        rest["operation"] = [{"name": "submit-cgm-bundle", "definition": SUBMIT_CGM}]
    return statement


@get("/sites/{site_key:str}/fhir/metadata")
async def metadata(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    site = site_of(request, site_key)
    statement = capability_statement(site)
    wants = request.headers.get("accept", "") + " " + request.query_params.get("_format", "")
    if site.personality.metadata_xml_by_default and "json" not in wants:
        return Response(content=to_fhir_xml(statement), media_type=FHIR_XML)
    return fhir_response(statement)


# MARK: read and search


@route(
    "/sites/{site_key:str}/fhir/{rtype:str}/{rid:str}", http_method=["GET", "PUT", "DELETE", "PATCH"], status_code=200
)
async def instance(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    rtype = path_param(request, "rtype")
    rid = path_param(request, "rid")
    site = site_of(request, site_key)
    _check_type(rtype)
    grant = bearer_grant(request, site)
    if request.method == "PUT":
        return await _update(request, site, grant, rtype, rid)
    if request.method != "GET":
        check_write_allowed(site)
        raise FhirError(405, "not-supported", f"{request.method} is not supported", headers={"Allow": "GET, PUT"})
    resource = site.store.read(rtype, rid)
    if resource is None:
        authorize(site, grant, rtype, "r")
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not known")
    authorize(site, grant, rtype, "r", resource)
    if rtype == "Binary" and "json" not in request.headers.get("accept", "json"):
        return Response(
            content=base64.b64decode(resource.get("data", "")),
            media_type=resource.get("contentType", "application/octet-stream"),
        )
    headers = _location(site, resource)
    del headers["Location"]
    return fhir_response(resource, headers=headers)


@get("/sites/{site_key:str}/fhir/{rtype:str}/{rid:str}/_history/{vid:str}")
async def vread(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    rtype = path_param(request, "rtype")
    rid = path_param(request, "rid")
    vid = path_param(request, "vid")
    site = site_of(request, site_key)
    _check_type(rtype)
    grant = bearer_grant(request, site)
    resource = site.store.vread(rtype, rid, vid)
    if resource is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid}/_history/{vid} is not known")
    authorize(site, grant, rtype, "r", resource)
    return fhir_response(resource)


def search_bundle(
    site: Site, grant: Grant, rtype: str, pairs: list[tuple[str, str]], *, strict: bool
) -> dict[str, Any]:
    """A searchset Bundle for a query, with `self` and `next`/`previous` links."""
    query = parse_query(rtype, pairs, strict=strict)
    authorize(site, grant, rtype, "s")
    patient, extra = _search_scope(site, grant, rtype, query)
    if extra:
        query = SearchQuery(
            query.params + tuple(extra), query.count, query.offset, query.sort, query.summary_count, query.used
        )
    result = site.store.search(rtype, query, patient=patient)
    total = result.total
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}

    def link(offset: int) -> str:
        pairs_out = list(query.used) + ([("_offset", str(offset))] if offset else [])
        if not any(k == "_count" for k, _ in pairs_out):
            pairs_out.append(("_count", str(query.count)))
        return f"{site.fhir_base}/{rtype}?{urlencode(pairs_out)}"

    links = [{"relation": "self", "url": link(query.offset)}]
    if query.summary_count or query.count == 0:
        bundle["link"] = links
        return bundle
    page = result.page(query.offset, query.count)
    if query.offset + query.count < total:
        links.append({"relation": "next", "url": link(query.offset + query.count)})
    if query.offset > 0:
        links.append({"relation": "previous", "url": link(max(0, query.offset - query.count))})
    bundle["link"] = links
    if page:
        bundle["entry"] = [
            {"fullUrl": f"{site.fhir_base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in page
        ]
    return bundle


def _search_scope(site: Site, grant: Grant, rtype: str, query: SearchQuery) -> tuple[str | None, list[SearchParam]]:
    """(patient the search is narrowed to, extra parameters from v2 scope queries) for this token."""
    scopes = granting(grant.scope, rtype, "s")
    extra: list[SearchParam] = []
    if scopes and all(s.query for s in scopes):
        extra = [SearchParam(name, "", (value,)) for name, value in scopes[0].query if name in SEARCH_PARAMS[rtype]]
    if any(s.context in ("user", "system") for s in scopes):
        return None, extra
    if grant.patient is None:
        raise FhirError(403, "forbidden", "patient-scoped token without a patient in context")
    if rtype in POPULATION_TYPES:
        raise FhirError(403, "forbidden", f"{rtype} is not readable with patient scopes")
    for param in query.named("patient", "subject"):
        for value in param.values:
            if value.split("/")[-1] != grant.patient:
                raise FhirError(403, "forbidden", "the search names a patient outside the token's compartment")
    return (None if rtype in SHARED_TYPES else grant.patient), extra


@route("/sites/{site_key:str}/fhir/{rtype:str}", http_method=["GET", "POST"])
async def type_level(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    rtype = path_param(request, "rtype")
    site = site_of(request, site_key)
    _check_type(rtype)
    grant = bearer_grant(request, site)
    if request.method == "POST":
        return await _create(request, site, grant, rtype)
    strict = "handling=strict" in request.headers.get("prefer", "")
    pairs = parse_qsl(urlsplit(str(request.url)).query, keep_blank_values=True)
    return fhir_response(search_bundle(site, grant, rtype, pairs, strict=strict))


@post("/sites/{site_key:str}/fhir/{rtype:str}/_search", status_code=200)
async def post_search(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    rtype = path_param(request, "rtype")
    site = site_of(request, site_key)
    _check_type(rtype)
    grant = bearer_grant(request, site)
    body = (await request.body()).decode("utf-8", errors="replace")
    pairs = parse_qsl(urlsplit(str(request.url)).query, keep_blank_values=True) + parse_qsl(
        body, keep_blank_values=True
    )
    strict = "handling=strict" in request.headers.get("prefer", "")
    return fhir_response(search_bundle(site, grant, rtype, pairs, strict=strict))


# MARK: create and update


def _conditional_match(site: Site, rtype: str, criteria: str) -> list[dict[str, Any]]:
    """Resources matching an If-None-Exist / ifNoneExist query (at most 2 are looked at)."""
    pairs = parse_qsl(criteria.split("?", 1)[-1], keep_blank_values=True)
    query = parse_query(rtype, pairs, strict=True)
    return site.store.search(rtype, query).page(0, 2)


def prepare_create(site: Site, grant: Grant, resource: dict[str, Any]) -> dict[str, Any]:
    """The resource as it will be stored, after scope, site and personality checks (FhirError otherwise)."""
    rtype = resource["resourceType"]
    _check_type(rtype)
    authorize(site, grant, rtype, "c", resource)
    check_write_allowed(site, rtype)
    return apply_rules(site, resource)


async def _create(request: AnyRequest, site: Site, grant: Grant, rtype: str) -> Response[Any]:
    resource = await json_body(request)
    if resource["resourceType"] != rtype:
        raise FhirError(400, "invalid", f"the body is a {resource['resourceType']}, not a {rtype}")
    resource.pop("id", None)
    prepared = prepare_create(site, grant, resource)
    criteria = request.headers.get("if-none-exist")
    if criteria and site.personality.conditional_create:
        found = _conditional_match(site, rtype, criteria)
        if len(found) > 1:
            raise FhirError(412, "duplicate", f"If-None-Exist {criteria!r} matches more than one {rtype}")
        if found:
            existing = found[0]
            body = _prefer_body(request, existing, "matched an existing resource; nothing created")
            return fhir_response(body, 200, _location(site, existing))
    stored = site.store.create(prepared)
    return fhir_response(_prefer_body(request, stored, "created"), 201, _location(site, stored))


def _check_updatable(site: Site, rtype: str, rid: str) -> None:
    if rtype == "Observation" and site.store.block_for(rid) is not None:
        raise FhirError(400, "not-supported", "seeded CGM readings are read-only in the sandbox")


async def _update(request: AnyRequest, site: Site, grant: Grant, rtype: str, rid: str) -> Response[Any]:
    p = site.personality
    check_write_allowed(site, rtype)
    if not p.updates:
        raise FhirError(405, "not-supported", f"{rtype} update is not supported here", headers={"Allow": "GET, POST"})
    resource = await json_body(request)
    if resource["resourceType"] != rtype or resource.get("id") != rid:
        raise FhirError(400, "invalid", "the body's resourceType and id must match the URL")
    _check_updatable(site, rtype, rid)
    existing = site.store.current[rtype].get(rid)
    authorize(site, grant, rtype, "u", resource)
    if existing is not None:
        authorize(site, grant, rtype, "u", existing)
    if_match = request.headers.get("if-match")
    if p.if_match_required and existing is not None and not if_match:
        raise FhirError(412, "required", "If-Match with the current version (ETag) is required for an update")
    if if_match and existing is not None and if_match.strip() != f'W/"{existing["meta"]["versionId"]}"':
        raise FhirError(p.stale_update_status, "conflict", f"If-Match {if_match} is not the current version")
    prepared = apply_rules(site, resource, creating=existing is None)
    stored, created = site.store.update(prepared, rid)
    return fhir_response(_prefer_body(request, stored, "updated"), 201 if created else 200, _location(site, stored))


# MARK: transaction, batch and $submit-cgm-bundle


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        reference = out.get("reference")
        if isinstance(reference, str) and reference in ids:
            out["reference"] = ids[reference]
        return out
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def _entry_error(error: FhirError) -> dict[str, Any]:
    return {"response": {"status": f"{error.status}", "outcome": error.outcome()}}


def process_bundle(site: Site, grant: Grant, bundle: dict[str, Any], mode: str) -> dict[str, Any]:
    """Run a transaction ("transaction": all or nothing), a batch, or a CGM submission ("subset": each entry
    on its own, urn:uuid references resolved across entries). Returns the response Bundle."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(400, "structure", "Bundle.entry must be a list")
    store = site.store
    ids: dict[str, str] = {}
    plans: list[dict[str, Any]] = []
    # 1. Parse the entries, resolve conditional creates and assign ids (so urn:uuid references can be rewritten).
    for number, entry in enumerate(entries):
        plan: dict[str, Any] = {"number": number}
        plans.append(plan)
        try:
            request = entry.get("request") or {}
            method = str(request.get("method", "")).upper()
            url = str(request.get("url", ""))
            plan.update(method=method, url=url)
            if method in ("POST", "PUT"):
                resource = entry.get("resource")
                if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                    raise FhirError(400, "structure", f"entry {number}: {method} needs a resource")
                rtype = resource["resourceType"]
                _check_type(rtype)
                if mode == "subset" and (method != "POST" or rtype not in CGM_SUBMISSION_TYPES):
                    raise FhirError(
                        400,
                        "not-supported",
                        f"entry {number}: only POST of {', '.join(sorted(CGM_SUBMISSION_TYPES))} is accepted",
                    )
                if method == "POST":
                    criteria = request.get("ifNoneExist")
                    found = (
                        _conditional_match(site, rtype, criteria)
                        if criteria and site.personality.conditional_create
                        else []
                    )
                    if len(found) > 1:
                        raise FhirError(412, "duplicate", f"entry {number}: ifNoneExist matches more than one")
                    rid = found[0]["id"] if found else store.new_id(rtype)
                    plan["matched"] = found[0] if found else None
                else:
                    rid = url.split("?", maxsplit=1)[0].rstrip("/").split("/")[-1]
                    if resource.get("id") != rid:
                        raise FhirError(400, "invalid", f"entry {number}: the resource id must match the PUT url")
                    if not site.personality.updates:
                        raise FhirError(405, "not-supported", f"entry {number}: update is not supported here")
                    _check_updatable(site, rtype, rid)
                plan.update(rtype=rtype, rid=rid)
                full_url = entry.get("fullUrl")
                if isinstance(full_url, str) and full_url:
                    ids[full_url] = f"{rtype}/{rid}"
            elif method != "GET":
                raise FhirError(400, "not-supported", f"entry {number}: method {method or '(none)'} is not supported")
        except FhirError as error:
            if mode == "transaction":
                raise
            plan["error"] = error
    # 2. Rewrite references and check every write.
    for plan in plans:
        if "error" in plan or plan.get("method") not in ("POST", "PUT") or plan.get("matched"):
            continue
        try:
            resource = _rewrite(copy.deepcopy(entries[plan["number"]]["resource"]), ids)
            resource["id"] = plan["rid"]
            if plan["method"] == "POST":
                plan["prepared"] = prepare_create(site, grant, resource)
            else:
                authorize(site, grant, plan["rtype"], "u", resource)
                check_write_allowed(site, plan["rtype"])
                plan["prepared"] = apply_rules(site, resource, creating=store.read(plan["rtype"], plan["rid"]) is None)
        except FhirError as error:
            if mode == "transaction":
                raise
            plan["error"] = error
    # 3. Commit the writes, then run the reads.
    out: list[dict[str, Any]] = []
    for plan in plans:
        if "error" in plan:
            out.append(_entry_error(plan["error"]))
        elif plan.get("matched"):
            out.append({"response": {"status": "200 OK", "location": _location(site, plan["matched"])["Location"]}})
        elif "prepared" in plan:
            if plan["method"] == "POST":
                stored, status = store.create(plan["prepared"], plan["rid"]), "201 Created"
            else:
                stored, created = store.update(plan["prepared"], plan["rid"])
                status = "201 Created" if created else "200 OK"
            headers = _location(site, stored)
            out.append(
                {
                    "response": {
                        "status": status,
                        "location": headers["Location"],
                        "etag": headers["ETag"],
                        "lastModified": stored["meta"]["lastUpdated"],
                    }
                }
            )
        else:
            out.append({})
    for plan, response in zip(plans, out, strict=True):
        if plan.get("method") == "GET" and "error" not in plan:
            try:
                response.update(_bundle_get(site, grant, plan["url"]))
            except FhirError as error:
                if mode == "transaction":
                    raise
                response.update(_entry_error(error))
    kind = "batch-response" if mode == "batch" else "transaction-response"
    return {"resourceType": "Bundle", "type": kind, "entry": out}


def _bundle_get(site: Site, grant: Grant, url: str) -> dict[str, Any]:
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if len(parts) == 1:
        _check_type(parts[0])
        pairs = parse_qsl(query, keep_blank_values=True)
        return {"resource": search_bundle(site, grant, parts[0], pairs, strict=False), "response": {"status": "200 OK"}}
    if len(parts) == 2:
        _check_type(parts[0])
        resource = site.store.read(parts[0], parts[1])
        if resource is None:
            raise FhirError(404, "not-found", f"{path} is not known")
        authorize(site, grant, parts[0], "r", resource)
        return {"resource": resource, "response": {"status": "200 OK"}}
    raise FhirError(400, "not-supported", f"GET {url} is not supported in a Bundle")


@post("/sites/{site_key:str}/fhir", status_code=200)
async def system_bundle(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    site = site_of(request, site_key)
    grant = bearer_grant(request, site)
    bundle = await json_body(request)
    if bundle["resourceType"] != "Bundle" or bundle.get("type") not in ("transaction", "batch"):
        raise FhirError(400, "invalid", "POST to the base takes a transaction or batch Bundle")
    check_write_allowed(site)
    if not site.personality.transactions:
        raise FhirError(
            400,
            "not-supported",
            f"{site.personality.title} supports no batch or transaction Bundles: send one create per request",
        )
    return fhir_response(process_bundle(site, grant, bundle, str(bundle["type"])))


@post("/sites/{site_key:str}/fhir/$submit-cgm-bundle", status_code=200)
async def submit_cgm_bundle(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    site = site_of(request, site_key)
    grant = bearer_grant(request, site)
    if not site.personality.cgm_receiver:
        raise FhirError(404, "not-supported", "$submit-cgm-bundle is not supported here")
    body = await json_body(request)
    if body["resourceType"] == "Parameters":
        found = [p.get("resource") for p in body.get("parameter", []) if p.get("name") == "resource"]
        body = found[0] if found and isinstance(found[0], dict) else {}
    if body.get("resourceType") != "Bundle" or body.get("type") != "transaction":
        raise FhirError(400, "invalid", "$submit-cgm-bundle takes a transaction Bundle (parameter `resource`)")
    check_write_allowed(site)
    return fhir_response(process_bundle(site, grant, body, "subset"))


ROUTES = [metadata, instance, vread, type_level, post_search, system_bundle, submit_cgm_bundle]
