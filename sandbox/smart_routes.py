"""SMART App Launch endpoints of each site, at `/sites/{site}/auth` (and the FHIR base's well-known file).

- `GET {fhir}/.well-known/smart-configuration` and `GET {auth}/.well-known/openid-configuration`: discovery.
- `GET|POST {auth}/authorize`: checks the request as the vendor does (ehr-realities.md §1.1, §2): a registered
  `redirect_uri` (else an error page, never a redirect), `response_type=code`, `state`, `scope`, PKCE S256
  (`plain` refused), `aud` equal to the FHIR base (required on epic-like and oracle-like), a valid unused
  `launch` when the scope asks for `launch`, no wildcard scopes on oracle-like. Then a sign-in/consent page:
  the practitioner is preselected in an EHR launch; a standalone `launch/patient` adds a patient picker. One
  click on "Allow" redirects to the app with `code` and `state`. No pop-ups and no cookies: the page works
  inside the EHR's iframe (CSP `frame-ancestors` names the shell's and the app's origins, never DENY), and the
  pending request travels in a hidden field.
- `POST {auth}/token`: authorization_code (PKCE), refresh_token and client_credentials with a JWT assertion
  (sandbox.assertion), answered per personality (sandbox.oauth). A client authenticates as it is registered
  (`ClientRegistration.auth_method`): public clients by `client_id` alone, confidential ones by a client secret in
  an HTTP Basic header (client_secret_basic, RFC 6749 §2.3.1: id and secret form-urlencoded first) or in the body
  (client_secret_post), or by a signed JWT assertion (private_key_jwt); any other way is `invalid_client` (401)
  with a description saying what was expected. A client registered at other sites only is unknown here.
- `GET {auth}/jwks`: the key that signs id_tokens.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode

from litestar import Request, Response, get, post, route
from litestar.response import Redirect, Template

from sandbox.assertion import ASSERTION_TYPE, ClientAssertionError, verify_client_assertion
from sandbox.config import ClientRegistration
from sandbox.fhir_api import path_param, sandbox_of
from sandbox.oauth import Grant, OAuthError, PendingAuthorization
from sandbox.runtime import Site
from sandbox.scopes import has_wildcard, parse_scope, split_scopes, to_v1_spelling

AnyRequest = Request[Any, Any, Any]
CONTEXT_SCOPES = (
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
)
PENDING_TTL_S = 600
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _site(request: AnyRequest, key: str) -> Site:
    site = sandbox_of(request).site(key)
    if site is None:
        raise OAuthError("invalid_request", f"no site {key!r} in this sandbox", status=404)
    return site


# MARK: discovery


def smart_configuration(site: Site) -> dict[str, Any]:
    p = site.personality
    capabilities = [
        "launch-ehr",
        "launch-standalone",
        "client-public",
        "client-confidential-asymmetric",
        "client-confidential-symmetric",
        "context-ehr-patient",
        "context-ehr-encounter",
        "context-standalone-patient",
        "context-banner",
        "context-style",
        "sso-openid-connect",
        "permission-offline",
        "permission-online",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2",
    ]
    if p.authorize_post:
        capabilities.append("authorize-post")
    resource_scopes = [
        "patient/Observation.rs",
        "patient/Patient.rs",
        "user/Observation.rs",
        "system/Observation.rs",
        "patient/Observation.read",
        "user/Observation.read",
        "patient/Observation.write",
    ]
    if p.wildcard_scopes:
        resource_scopes += ["patient/*.rs", "user/*.rs", "system/*.rs", "patient/*.read", "user/*.*"]
    return {
        "issuer": site.auth_base,
        "jwks_uri": f"{site.auth_base}/jwks",
        "authorization_endpoint": f"{site.auth_base}/authorize",
        "token_endpoint": site.token_endpoint,
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes_supported": [*CONTEXT_SCOPES, *resource_scopes],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": capabilities,
    }


@get("/sites/{site_key:str}/fhir/.well-known/smart-configuration")
async def well_known_smart(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    return Response(smart_configuration(_site(request, site_key)), media_type="application/json")


@get("/sites/{site_key:str}/auth/.well-known/openid-configuration")
async def well_known_openid(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    site = _site(request, site_key)
    config = smart_configuration(site)
    body = {
        k: config[k]
        for k in (
            "issuer",
            "jwks_uri",
            "authorization_endpoint",
            "token_endpoint",
            "response_types_supported",
            "scopes_supported",
        )
    }
    body |= {
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
    }
    return Response(body, media_type="application/json")


@get("/sites/{site_key:str}/auth/jwks")
async def jwks(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    return Response(_site(request, site_key).auth.jwks(), media_type="application/jwk-set+json")


# MARK: authorize


def _error_page(status: int, title: str, message: str) -> Template:
    return Template("auth/error.html", context={"title": title, "message": message}, status_code=status)


def _redirect(uri: str, params: dict[str, str]) -> Redirect:
    joiner = "&" if "?" in uri else "?"
    return Redirect(f"{uri}{joiner}{urlencode(params)}", status_code=303)


def granted_scope(site: Site, requested: str) -> str:
    """The scope an interactive launch is granted: known scopes only, no system/ ones; Epic spelling on epic-like."""
    kept = []
    for scope in split_scopes(requested):
        parsed = parse_scope(scope)
        if scope in CONTEXT_SCOPES or (parsed is not None and parsed.context != "system"):
            kept.append(scope)
    text = " ".join(kept)
    return to_v1_spelling(text) if site.personality.scopes_in_v1_spelling else text


@route("/sites/{site_key:str}/auth/authorize", http_method=["GET", "POST"])
async def authorize_endpoint(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    site = sandbox_of(request).site(site_key)
    if site is None:
        return _error_page(404, "Unknown site", f"There is no site {site_key!r} in this sandbox.")
    if request.method == "POST":
        params = dict(parse_qsl((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True))
    else:
        params = dict(request.query_params)
    config = site.config
    client = config.client(params.get("client_id", ""), site.key)
    if client is None:
        return _error_page(400, "Unknown app", f"client_id {params.get('client_id', '')!r} is not registered here.")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _error_page(
            400, "Redirect URI not registered", f"{redirect_uri!r} is not a registered redirect URI of {client.label}."
        )
    state = params.get("state", "")

    def fail(error: str, description: str) -> Redirect:
        out = {"error": error, "error_description": description}
        if state:
            out["state"] = state
        return _redirect(redirect_uri, out)

    if params.get("response_type") != "code":
        return fail("unsupported_response_type", "response_type must be code")
    if not state:
        return fail("invalid_request", "state is required")
    scope = params.get("scope", "")
    if not scope.strip():
        return fail("invalid_request", "scope is required")
    method = params.get("code_challenge_method")
    if not params.get("code_challenge") or method is None:
        return fail("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256")
    if method != "S256":
        return fail("invalid_request", f"code_challenge_method {method!r} is not supported (S256 only)")
    aud = params.get("aud")
    if aud is None and site.personality.aud_required:
        return fail("invalid_request", f"aud is required (the FHIR base: {site.fhir_base})")
    if aud is not None and aud.rstrip("/") != site.fhir_base:
        return fail("invalid_request", f"aud {aud!r} is not this server's FHIR base {site.fhir_base}")
    if not site.personality.wildcard_scopes and has_wildcard(scope):
        return fail("invalid_scope", "wildcard scopes are not supported: list each resource scope")
    scopes = split_scopes(scope)
    launch_id = params.get("launch")
    launch = None
    if launch_id:
        if "launch" not in scopes:
            return fail("invalid_scope", "an EHR launch needs the launch scope")
        launch = site.auth.open_launch(launch_id, site.now(), config.launch_ttl_s)
        if launch is None:
            return fail(
                "invalid_request", "launch is unknown, expired or already used: open the app from the EHR again"
            )
    elif "launch" in scopes:
        return fail("invalid_request", "the launch scope needs a launch parameter (EHR launch)")
    pending = PendingAuthorization(
        client.client_id,
        redirect_uri,
        state,
        granted_scope(site, scope),
        params["code_challenge"],
        params.get("nonce"),
        launch,
        launch_id,
        site.now(),
    )
    request_id = site.auth.new_pending(pending)
    if launch is not None and config.auto_approve:
        return _approve(site, request_id, {})
    return _consent_page(site, client, request_id, pending)


def _consent_page(site: Site, client: ClientRegistration, request_id: str, pending: PendingAuthorization) -> Template:
    store = site.store
    practitioners = [store.read("Practitioner", pid) for pid in site.seed.practitioner_ids]
    pick_patient = pending.launch is None and "launch/patient" in split_scopes(pending.scope)
    patients = [(p, store.read("Patient", p.patient_id)) for p in site.seed.patients] if pick_patient else []
    context = {
        "site": site,
        "client": client,
        "request_id": request_id,
        "scopes": split_scopes(pending.scope),
        "launch": pending.launch,
        "launch_patient": store.read("Patient", pending.launch.patient) if pending.launch else None,
        "launch_practitioner": store.read("Practitioner", pending.launch.practitioner) if pending.launch else None,
        "practitioners": practitioners,
        "patients": patients,
        "action": f"/sites/{site.key}/auth/authorize/decision",
    }
    return Template("auth/consent.html", context=context)


def _approve(site: Site, request_id: str, form: dict[str, str]) -> Response[Any]:
    pending = site.auth.pending.pop(request_id, None)
    now = site.now()
    if pending is None or now - pending.created > PENDING_TTL_S:
        return _error_page(
            400, "Sign-in expired", "This sign-in request has expired or was already answered. Open the app again."
        )
    if form.get("decision", "allow") != "allow":
        return _redirect(
            pending.redirect_uri,
            {"error": "access_denied", "error_description": "the user declined", "state": pending.state},
        )
    launch = pending.launch
    if launch is not None:
        if launch.used:
            return _redirect(
                pending.redirect_uri,
                {"error": "invalid_request", "state": pending.state, "error_description": "launch already used"},
            )
        practitioner, patient, encounter = launch.practitioner, launch.patient, launch.encounter
        launch.used = True
    else:
        practitioner = form.get("practitioner", "")
        if practitioner not in site.seed.practitioner_ids:
            return _error_page(400, "Choose who you are", "Pick a clinician to sign in as.")
        patient, encounter = None, None
        if "launch/patient" in split_scopes(pending.scope):
            patient = form.get("patient", "")
            if site.patient(patient) is None:
                return _error_page(400, "Choose a patient", "This app asked for a patient: pick one.")
    grant = Grant(
        pending.client_id,
        pending.scope,
        patient,
        encounter,
        practitioner,
        "",
        now + site.config.code_ttl_s,
        redirect_uri=pending.redirect_uri,
        code_challenge=pending.code_challenge,
        nonce=pending.nonce,
        standalone=launch is None,
    )
    code = site.auth.issue_code(grant)
    return _redirect(pending.redirect_uri, {"code": code, "state": pending.state})


@post("/sites/{site_key:str}/auth/authorize/decision", status_code=303)
async def decision(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    site = sandbox_of(request).site(site_key)
    if site is None:
        return _error_page(404, "Unknown site", f"There is no site {site_key!r} in this sandbox.")
    form = dict(parse_qsl((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True))
    return _approve(site, form.get("request_id", ""), form)


# MARK: token


def _basic_credentials(header: str) -> tuple[str, str]:
    """(client_id, secret) of an HTTP Basic header, each form-urlencoded (RFC 6749 §2.3.1)."""
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1].strip(), validate=True).decode("utf-8")
    except (IndexError, binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_client", "the Basic authorization header cannot be decoded", 401) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise OAuthError("invalid_client", "the Basic authorization header has no client_id:secret", 401)
    return unquote_plus(client_id), unquote_plus(secret)


def _check_secret(client: ClientRegistration, secret: str) -> None:
    if client.secret is None or not hmac.compare_digest(secret.encode(), client.secret.encode()):
        raise OAuthError("invalid_client", f"wrong client secret for {client.client_id}", 401)


async def _authenticate(site: Site, request: AnyRequest, form: dict[str, str]) -> ClientRegistration:
    config = site.config

    def registered(client_id: str) -> ClientRegistration:
        client = config.client(client_id, site.key)
        if client is None:
            raise OAuthError("invalid_client", f"unknown client_id {client_id!r} at this site", 401)
        return client

    def used_as_registered(client: ClientRegistration, method: str) -> ClientRegistration:
        if client.auth_method != method:
            raise OAuthError(
                "invalid_client",
                f"{client.client_id} is registered to authenticate with {client.auth_method}, not {method}",
                401,
            )
        return client

    assertion = form.get("client_assertion")
    basic = request.headers.get("authorization", "")
    if assertion:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_client", f"client_assertion_type must be {ASSERTION_TYPE}", 401)
        try:
            client = await verify_client_assertion(
                assertion,
                clients=lambda client_id: config.client(client_id, site.key),
                token_endpoint=site.token_endpoint,
                cache=sandbox_of(request).jwks_cache,
                seen_jti=site.auth.seen_jti,
                now=site.now(),
                client_id=form.get("client_id") or None,
            )
        except ClientAssertionError as exc:
            raise OAuthError(exc.error, exc.description, 401) from None
        return used_as_registered(client, "private_key_jwt")
    if basic.lower().startswith("basic "):
        client_id, secret = _basic_credentials(basic)
        if form.get("client_id") not in (None, "", client_id):
            raise OAuthError("invalid_client", "client_id in the body differs from the Basic header's", 401)
        client = used_as_registered(registered(client_id), "client_secret_basic")
        _check_secret(client, secret)
        return client
    if "client_secret" in form:
        client = used_as_registered(registered(form.get("client_id", "")), "client_secret_post")
        _check_secret(client, form["client_secret"])
        return client
    client = registered(form.get("client_id", ""))
    if client.confidential:
        raise OAuthError(
            "invalid_client",
            f"{client.client_id} is a confidential client: authenticate with {client.auth_method}",
            401,
        )
    return client


def _backend_scope(site: Site, client: ClientRegistration, requested: str) -> str:
    p = site.personality
    if not requested.strip():
        if not p.wildcard_scopes:
            raise OAuthError("invalid_scope", "scope is required (list each system/ scope)")
        requested = client.scopes
    if not p.wildcard_scopes and has_wildcard(requested):
        raise OAuthError("invalid_scope", "wildcard scopes are not supported: list each resource scope")
    for scope in split_scopes(requested):
        parsed = parse_scope(scope)
        if parsed is None or parsed.context != "system":
            raise OAuthError("invalid_scope", f"{scope!r} is not a system/ scope")
    return to_v1_spelling(requested) if p.scopes_in_v1_spelling else " ".join(split_scopes(requested))


@post("/sites/{site_key:str}/auth/token", status_code=200)
async def token(request: AnyRequest) -> Response[Any]:
    site_key = path_param(request, "site_key")
    try:
        site = _site(request, site_key)
        form = dict(parse_qsl((await request.body()).decode("utf-8", errors="replace"), keep_blank_values=True))
        grant_type = form.get("grant_type", "")
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        client = await _authenticate(site, request, form)
        now = site.now()
        if grant_type == "authorization_code":
            body = site.auth.redeem_code(
                form.get("code", ""),
                client_id=client.client_id,
                redirect_uri=form.get("redirect_uri", ""),
                verifier=form.get("code_verifier", ""),
                now=now,
                code_ttl_s=site.config.code_ttl_s,
            )
        elif grant_type == "refresh_token":
            body = site.auth.redeem_refresh(form.get("refresh_token", ""), client_id=client.client_id, now=now)
        else:
            if not client.backend:
                raise OAuthError("unauthorized_client", f"{client.client_id} may not use client_credentials")
            body = site.auth.issue_backend(client.client_id, _backend_scope(site, client, form.get("scope", "")), now)
    except OAuthError as exc:
        return Response(
            exc.body(), status_code=exc.status, headers=NO_STORE | exc.headers, media_type="application/json"
        )
    return Response(body, headers=NO_STORE, media_type="application/json")


ROUTES = [well_known_smart, well_known_openid, jwks, authorize_endpoint, decision, token]
