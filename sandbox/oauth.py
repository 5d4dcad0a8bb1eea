"""The authorization server of one site: launches, authorization codes, tokens and the id_token key.

What it reproduces (ehr-realities.md §1.1, §1.4, §2, §4):

- **EHR launch ids** are opaque, single use, and carry the patient, encounter (when the patient has an open
  visit) and practitioner the shell launched with. On epic-like they are long, like Epic's JWT launch tokens.
- **Codes** are single use and short-lived (`code_ttl_s`); a replayed code is refused with `invalid_grant` and
  revokes every token issued from it (RFC 6749 §4.1.2). PKCE is S256 only.
- **Access tokens** are opaque (never parse them, §1.1) and live `token_ttl_s` (3600 s; oracle-like 570 s).
- **Refresh tokens** are issued for `offline_access` or `online_access`. epic-like and the generic sites
  rotate them (the old one stops working); oracle-like answers a refresh without a new refresh token (keep the
  original, §2 and §4 pain 2) and refuses with 429 a refresh less than a minute after the previous one.
- **Token responses** carry `patient`, `encounter`, `need_patient_banner` (the string "false" on epic-like),
  `smart_style_url` and an RS256 `id_token` (exp = iat + 5 min; `fhirUser` absolute on epic-like, else
  `Practitioner/<id>`) when `openid` and `fhirUser`/`profile` were granted.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwk, jwt

from sandbox.personalities import Personality
from sandbox.scopes import split_scopes

ID_TOKEN_TTL_S = 300
OFFLINE_TTL_S = 90 * 86400  # Oracle: offline refresh tokens last until revoked or 3 months unused
ONLINE_TTL_S = 12 * 3600  # the length of the (simulated) user's session


class OAuthError(Exception):
    """An OAuth error response: `error` code, description and HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclass(slots=True)
class Launch:
    """An EHR launch context, created by the shell for one chart page."""

    patient: str
    encounter: str | None
    practitioner: str
    created: float
    used: bool = False


@dataclass(slots=True)
class PendingAuthorization:
    """An authorize request waiting for the consent form."""

    client_id: str
    redirect_uri: str
    state: str
    scope: str
    code_challenge: str
    nonce: str | None
    launch: Launch | None
    launch_id: str | None
    created: float


@dataclass(slots=True)
class Grant:
    """What a code, an access token or a refresh token stands for."""

    client_id: str
    scope: str
    patient: str | None
    encounter: str | None
    practitioner: str | None
    family: str  # the code (or backend request) the grant descends from, for revocation
    expires_at: float | None
    revoked: bool = False
    used: bool = False  # codes: redeemed; refresh tokens: rotated away
    redirect_uri: str = ""
    code_challenge: str = ""
    nonce: str | None = None
    standalone: bool = False
    last_refresh: float | None = None


def pkce_challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def valid_verifier(verifier: str) -> bool:
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    return 43 <= len(verifier) <= 128 and set(verifier) <= allowed


@dataclass(slots=True)
class AuthState:
    """Launches, pending requests, codes and tokens of one site, and its id_token signing key."""

    personality: Personality
    issuer: str
    fhir_base: str
    style_url: str
    signing_key: jwk.RSAKey
    launches: dict[str, Launch] = field(default_factory=dict)
    pending: dict[str, PendingAuthorization] = field(default_factory=dict)
    codes: dict[str, Grant] = field(default_factory=dict)
    access: dict[str, Grant] = field(default_factory=dict)
    refresh: dict[str, Grant] = field(default_factory=dict)
    seen_jti: dict[tuple[str, str], float] = field(default_factory=dict)

    # MARK: opaque values

    def _opaque(self, long_bytes: int) -> str:
        return secrets.token_urlsafe(long_bytes if self.personality.long_tokens else 32)

    def new_launch(self, patient: str, encounter: str | None, practitioner: str, now: float) -> str:
        launch_id = self._opaque(150)
        self.launches[launch_id] = Launch(patient, encounter, practitioner, now)
        return launch_id

    def open_launch(self, launch_id: str, now: float, ttl_s: int) -> Launch | None:
        launch = self.launches.get(launch_id)
        if launch is None or launch.used or now - launch.created > ttl_s:
            return None
        return launch

    def new_pending(self, pending: PendingAuthorization) -> str:
        request_id = secrets.token_urlsafe(24)
        self.pending[request_id] = pending
        return request_id

    def issue_code(self, grant: Grant) -> str:
        code = self._opaque(300)
        grant.family = code
        self.codes[code] = grant
        return code

    # MARK: tokens

    def _issue(self, grant: Grant, now: float, *, with_refresh: bool) -> tuple[str, str | None]:
        access_token = self._opaque(384)
        ttl = self.personality.token_ttl_s
        self.access[access_token] = Grant(
            grant.client_id, grant.scope, grant.patient, grant.encounter, grant.practitioner, grant.family, now + ttl
        )
        refresh_token = None
        if with_refresh:
            scopes = split_scopes(grant.scope)
            if "offline_access" in scopes or "online_access" in scopes:
                refresh_token = self._opaque(96)
                life = OFFLINE_TTL_S if "offline_access" in scopes else ONLINE_TTL_S
                self.refresh[refresh_token] = Grant(
                    grant.client_id,
                    grant.scope,
                    grant.patient,
                    grant.encounter,
                    grant.practitioner,
                    grant.family,
                    now + life,
                )
        return access_token, refresh_token

    def revoke_family(self, family: str) -> int:
        count = 0
        for table in (self.access, self.refresh):
            for grant in table.values():
                if grant.family == family and not grant.revoked:
                    grant.revoked = True
                    count += 1
        return count

    def access_grant(self, token: str, now: float) -> Grant | None:
        grant = self.access.get(token)
        if grant is None or grant.revoked or (grant.expires_at is not None and grant.expires_at <= now):
            return None
        return grant

    def redeem_code(
        self, code: str, *, client_id: str, redirect_uri: str, verifier: str, now: float, code_ttl_s: int
    ) -> dict[str, Any]:
        grant = self.codes.get(code)
        if grant is None:
            raise OAuthError("invalid_grant", "unknown authorization code")
        if grant.used:
            revoked = self.revoke_family(code)
            raise OAuthError(
                "invalid_grant", f"authorization code already used; {revoked} token(s) issued from it revoked"
            )
        if grant.client_id != client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if grant.expires_at is not None and now > grant.expires_at:
            raise OAuthError("invalid_grant", f"authorization code expired (codes live {code_ttl_s} s)")
        if grant.redirect_uri != redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri differs from the one in the authorize request")
        if not valid_verifier(verifier):
            raise OAuthError("invalid_grant", "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]")
        if pkce_challenge(verifier) != grant.code_challenge:
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge (PKCE S256)")
        grant.used = True
        access_token, refresh_token = self._issue(grant, now, with_refresh=True)
        return self._response(grant, access_token, refresh_token, now, with_context=True)

    def redeem_refresh(self, token: str, *, client_id: str, now: float) -> dict[str, Any]:
        grant = self.refresh.get(token)
        if grant is None or grant.revoked or grant.used:
            raise OAuthError("invalid_grant", "refresh token unknown, revoked or already rotated")
        if grant.expires_at is not None and grant.expires_at <= now:
            raise OAuthError("invalid_grant", "refresh token expired")
        if grant.client_id != client_id:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        interval = self.personality.refresh_min_interval_s
        if interval and grant.last_refresh is not None and now - grant.last_refresh < interval:
            wait = int(interval - (now - grant.last_refresh)) + 1
            raise OAuthError(
                "temporarily_unavailable",
                f"refreshing more than once every {interval} s is throttled",
                status=429,
                headers={"Retry-After": str(wait)},
            )
        grant.last_refresh = now
        access_token, _ = self._issue(grant, now, with_refresh=False)
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.personality.token_ttl_s,
            "scope": grant.scope,
        }
        if self.personality.refresh_rotates:
            grant.used = True
            _, new_refresh = self._issue(grant, now, with_refresh=True)
            if new_refresh is not None:
                self.refresh[new_refresh].expires_at = grant.expires_at  # rolling: keeps the first one's expiry
                body["refresh_token"] = new_refresh
        if grant.patient:
            body["patient"] = grant.patient
        if grant.encounter:
            body["encounter"] = grant.encounter
        return body

    def issue_backend(self, client_id: str, scope: str, now: float) -> dict[str, Any]:
        grant = Grant(client_id, scope, None, None, None, "backend:" + secrets.token_hex(8), None)
        access_token, _ = self._issue(grant, now, with_refresh=False)
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.personality.token_ttl_s,
            "scope": scope,
        }

    def _response(
        self, grant: Grant, access_token: str, refresh_token: str | None, now: float, *, with_context: bool
    ) -> dict[str, Any]:
        p = self.personality
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": p.token_ttl_s,
            "scope": grant.scope,
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        scopes = split_scopes(grant.scope)
        if with_context:
            if grant.patient:
                body["patient"] = grant.patient
                if p.banner_as_string:
                    body["__epic.dstu2.patient"] = "T" + grant.patient[1:]  # a second id for the same patient
            if grant.encounter and ("launch" in scopes or "launch/encounter" in scopes):
                body["encounter"] = grant.encounter
            banner = grant.standalone
            body["need_patient_banner"] = ("true" if banner else "false") if p.banner_as_string else banner
            body["smart_style_url"] = self.style_url
        if "openid" in scopes and ({"fhirUser", "profile"} & set(scopes)) and grant.practitioner:
            body["id_token"] = self.id_token(grant, now)
        return body

    def id_token(self, grant: Grant, now: float) -> str:
        practitioner = grant.practitioner or ""
        fhir_user = f"Practitioner/{practitioner}"
        if self.personality.absolute_fhir_user:
            fhir_user = f"{self.fhir_base}/{fhir_user}"
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": practitioner,
            "aud": grant.client_id,
            "iat": int(now),
            "exp": int(now) + ID_TOKEN_TTL_S,
            "fhirUser": fhir_user,
        }
        if grant.nonce:
            claims["nonce"] = grant.nonce
        header = {"alg": "RS256", "kid": self.signing_key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.signing_key, algorithms=["RS256"])

    def jwks(self) -> dict[str, Any]:
        public = self.signing_key.as_dict(private=False)
        return {"keys": [{**public, "use": "sig", "alg": "RS256"}]}


def new_signing_key() -> jwk.RSAKey:
    key = jwk.RSAKey.generate_key(2048)
    return jwk.RSAKey.import_key(key.as_dict(private=True), parameters={"kid": key.thumbprint()[:16]})
