"""Token endpoint requests and responses, and id_tokens: tolerant where EHRs differ, strict where security needs it.

Everything here is pure except `request_token`, the one POST to a token endpoint that launches, refreshes and
Backend Services share.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExceededSizeError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from bff.smart.errors import IdTokenError, TokenEndpointError
from bff.smart.oauth import ClientAuthentication
from bff.smart.sites import fhir_base

# Asymmetric only: never `none`, never HMAC with a key the server chose.
ID_TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
_TOKEN_FIELDS = frozenset(
    {
        "access_token",
        "token_type",
        "expires_in",
        "scope",
        "refresh_token",
        "id_token",
        "patient",
        "encounter",
        "need_patient_banner",
        "smart_style_url",
    }
)


def parse_bool(value: object, *, default: bool) -> bool:
    """A boolean that some EHRs send as a string (Epic's tutorial: `"need_patient_banner": "false"`)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return default


def _optional_text(body: Mapping[str, Any], name: str, error: type[TokenEndpointError]) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise error(f"token response: {name} is not a string")
    return value


@dataclass(frozen=True, slots=True)
class TokenResponse:
    """A successful answer of a token endpoint. `expires_in` is None when the server did not say."""

    access_token: str
    expires_in: int | None
    scopes: tuple[str, ...]
    refresh_token: str | None = None
    id_token: str | None = None
    patient: str | None = None
    encounter: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None
    context: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # never print the tokens
        return f"TokenResponse(expires_in={self.expires_in!r}, scopes={self.scopes!r}, patient={self.patient!r})"


def parse_token_response(body: Any, error: type[TokenEndpointError] = TokenEndpointError) -> TokenResponse:
    """Parse a token response body (already JSON-decoded); `error` (a TokenEndpointError) when it is unusable.

    `need_patient_banner` defaults to True when absent or unreadable: showing a banner the EHR already shows is
    a nuisance, hiding the only one is a wrong-patient risk. Extra launch context (Epic's `location`,
    `appointment`, `loginDepartment`, custom tokens) is kept in `context` when it is a plain value.
    """
    if not isinstance(body, Mapping):
        raise error("token response is not a JSON object")
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise error("token response has no access_token")
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise error("token response: token_type is not Bearer")
    raw_expires = body.get("expires_in")
    expires_in: int | None
    try:
        expires_in = None if raw_expires is None or isinstance(raw_expires, bool) else int(raw_expires)
    except (TypeError, ValueError):
        raise error("token response: expires_in is not a number") from None
    if expires_in is not None and expires_in <= 0:
        raise error("token response: expires_in is not positive")
    scope = body.get("scope")
    context = {
        key: value
        for key, value in body.items()
        if key not in _TOKEN_FIELDS and isinstance(value, str | int | float | bool) and "token" not in key.lower()
    }
    return TokenResponse(
        access_token=access_token,
        expires_in=expires_in,
        scopes=tuple(scope.split()) if isinstance(scope, str) else (),
        refresh_token=_optional_text(body, "refresh_token", error),
        id_token=_optional_text(body, "id_token", error),
        patient=_optional_text(body, "patient", error),
        encounter=_optional_text(body, "encounter", error),
        need_patient_banner=parse_bool(body.get("need_patient_banner"), default=True),
        smart_style_url=_optional_text(body, "smart_style_url", error),
        context=context,
    )


def oauth_error(body: bytes) -> tuple[str | None, str | None]:
    """The `error` and `error_description` of an OAuth error response, when it has them."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    error, description = data.get("error"), data.get("error_description")
    return (error if isinstance(error, str) else None), (description if isinstance(description, str) else None)


async def request_token(
    http: httpx.AsyncClient,
    token_endpoint: str,
    form: Mapping[str, str],
    error: type[TokenEndpointError],
    auth: ClientAuthentication | None = None,
) -> TokenResponse:
    """POST a token request and parse the answer; `error` for every failure (never with secrets).

    With `auth`, `form` holds the grant's parameters (`grant_type` first among them) and authlib adds the client's
    authentication (`bff.smart.oauth.ClientAuthentication`); without, `form` is sent as it is. A refusal keeps the
    server's `error` and `error_description` on the exception (`.error`, `.description`), for the audit.
    """
    try:
        if auth is not None:
            params = dict(form)
            url, headers, body = auth.token_request(token_endpoint, params.pop("grant_type"), **params)
            response = await http.post(url, content=body.encode("ascii"), headers=headers)
        else:
            response = await http.post(token_endpoint, data=dict(form), headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise error(f"the token endpoint could not be reached: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        code, description = oauth_error(response.content)
        raise error(
            f"the token endpoint refused (HTTP {response.status_code})",
            error=code,
            description=description,
            status_code=response.status_code,
        )
    try:
        body_json = response.json()
    except (ValueError, UnicodeDecodeError):
        raise error("the token endpoint did not answer JSON", status_code=response.status_code) from None
    return parse_token_response(body_json, error)


def id_token_kid(id_token: str) -> str | None:
    """The `kid` in the id_token's header (to refetch the JWKS when it names a key not seen yet)."""
    try:
        headers = extract_compact(id_token.encode("ascii")).headers()
    except (JoseError, ValueError, UnicodeError):
        raise IdTokenError("the id_token is not a compact JWS") from None
    kid = headers.get("kid")
    return kid if isinstance(kid, str) else None


def key_set_has(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def validate_id_token(
    id_token: str,
    keys: KeySet,
    *,
    issuers: Collection[str],
    client_id: str,
    nonce: str,
    now: datetime,
    leeway_s: float = 60.0,
) -> dict[str, Any]:
    """The claims of a valid id_token; IdTokenError names the first check that fails.

    Checks: signature by a key of `keys` with an asymmetric algorithm; `iss` one of `issuers` (trailing slash
    ignored); `aud` is or contains `client_id` (and `azp` is `client_id` when there are several audiences);
    `nonce` is ours; `exp` in the future and `iat`/`nbf` not in it (each within `leeway_s`); `sub` present.
    """
    try:
        token = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
    except InvalidKeyIdError:
        raise IdTokenError("the id_token is signed with a key the JWKS does not have") from None
    except BadSignatureError:
        raise IdTokenError("the id_token signature is not valid") from None
    except (JoseError, ExceededSizeError, ValueError, UnicodeError) as exc:
        raise IdTokenError(f"the id_token cannot be verified: {type(exc).__name__}") from None
    claims: dict[str, Any] = dict(token.claims)
    moment = now.timestamp()

    issuer = claims.get("iss")
    if not isinstance(issuer, str) or fhir_base(issuer) not in {fhir_base(i) for i in issuers}:
        raise IdTokenError("the id_token was issued by another issuer")
    audience = claims.get("aud")
    audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
    if client_id not in audiences:
        raise IdTokenError("the id_token is meant for another client (aud)")
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise IdTokenError("the id_token has several audiences and azp is not this client")
    presented = claims.get("nonce")
    if not isinstance(presented, str) or not hmac.compare_digest(presented.encode(), nonce.encode()):
        raise IdTokenError("the id_token nonce does not match this launch")
    expires = claims.get("exp")
    if not isinstance(expires, int | float) or isinstance(expires, bool) or expires + leeway_s <= moment:
        raise IdTokenError("the id_token has expired (exp)")
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if name == "iat" and value is None:
            raise IdTokenError("the id_token has no iat")
        if value is not None and (not isinstance(value, int | float) or value - leeway_s > moment):
            raise IdTokenError(f"the id_token is not valid yet ({name})")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise IdTokenError("the id_token has no sub")
    return claims


def fhir_user(claims: Mapping[str, Any]) -> str | None:
    """The user's FHIR resource: `fhirUser` (SMART v2), else `profile` (SMART v1)."""
    for name in ("fhirUser", "profile"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return None


__all__ = [
    "ID_TOKEN_ALGORITHMS",
    "TokenResponse",
    "fhir_user",
    "id_token_kid",
    "key_set_has",
    "oauth_error",
    "parse_bool",
    "parse_token_response",
    "request_token",
    "validate_id_token",
]
