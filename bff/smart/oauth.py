"""The OAuth 2.0 client parts of SMART, on authlib: the authorize request, token requests and client authentication.

authlib builds what goes on the wire: the authorize URL (`prepare_grant_uri`), the token request body
(`prepare_token_request`) and the client's authentication at the token endpoint (`authlib.oauth2.auth.ClientAuth`
with its `client_secret_basic`, `client_secret_post` and `none` methods, and `PrivateKeyJWT` for
`private_key_jwt`). The JWTs themselves are signed with joserfc (which authlib's own JOSE code uses too), so that
the claims are ours: `iat` backdated against clock skew, `exp` at most 5 minutes after it, a fresh `jti`, `kid`
(and `jku`) in the header (ehr-realities.md §1.4, SMART Backend Services).

authlib's own HTTP clients (`AsyncOAuth2Client`) are not used: each is an httpx client of its own, where the BFF
sends every request through the one `httpx.AsyncClient` it is given (tests pass the sandbox's or a mock transport),
keeps each launch's state in its own store, and handles the vendors' token-response habits (`bff.smart.tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from authlib.oauth2.auth import ClientAuth  # type: ignore[import-untyped]
from authlib.oauth2.rfc6749.parameters import (  # type: ignore[import-untyped]
    prepare_grant_uri,
    prepare_token_request,
)
from authlib.oauth2.rfc7523 import PrivateKeyJWT  # type: ignore[import-untyped]
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from bff.smart.clock import Clock, utc_now
from bff.smart.crypto import random_token
from bff.smart.errors import SmartConfigError

ALGORITHMS = ("RS384", "ES384")
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME_S = 300
CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
FORM = "application/x-www-form-urlencoded"


def load_private_key(pem: str | bytes, alg: str, kid: str) -> RSAKey | ECKey:
    """A private signing key: RS384 needs RSA of at least 2048 bits, ES384 an EC key on P-384."""
    if alg not in ALGORITHMS:
        raise SmartConfigError(f"a signing key's alg must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
    try:
        if alg == "RS384":
            rsa = RSAKey.import_key(pem, parameters={"kid": kid})
            if not rsa.is_private:
                raise SmartConfigError("the signing key must be a private key")
            if rsa.raw_value.key_size < 2048:
                raise SmartConfigError("an RS384 key must have at least 2048 bits")
            return rsa
        ec = ECKey.import_key(pem, parameters={"kid": kid})
    except (JoseError, ValueError, TypeError) as exc:
        raise SmartConfigError(f"the signing key cannot be read as a {alg} key: {type(exc).__name__}") from None
    if not ec.is_private:
        raise SmartConfigError("the signing key must be a private key")
    if ec.curve_name != "P-384":
        raise SmartConfigError(f"an ES384 key must be on curve P-384, not {ec.curve_name}")
    return ec


class AssertionSigner:
    """Signs client assertions (RFC 7523 `private_key_jwt`) with one key: `iss` = `sub` = client id, `aud` the
    token endpoint exactly, a fresh `jti`, `iat` backdated by `backdate_s`, `exp` = now + `lifetime_s`."""

    def __init__(
        self,
        private_key: str | bytes,
        kid: str,
        alg: str,
        *,
        jku: str | None = None,
        clock: Clock = utc_now,
        backdate_s: int = 30,
        lifetime_s: int = 240,
    ) -> None:
        if not kid:
            raise SmartConfigError("a signing key needs a key id (kid)")
        if backdate_s < 0 or lifetime_s <= 0 or backdate_s + lifetime_s > MAX_ASSERTION_LIFETIME_S:
            raise SmartConfigError("the assertion must live at most 5 minutes from its iat")
        self.kid = kid
        self.alg = alg
        self.key = load_private_key(private_key, alg, kid)
        self.jku = jku
        self._clock = clock
        self._backdate = backdate_s
        self._lifetime = lifetime_s

    def sign(self, client_id: str, audience: str) -> str:
        now = int(self._clock().timestamp())
        header: dict[str, Any] = {"kid": self.kid, "typ": "JWT"}
        if self.jku:
            header["jku"] = self.jku
        assertion: str = private_key_jwt_sign(
            self.key, client_id, audience, alg=self.alg, claims={"jti": random_token()}, header=header,
            issued_at=now - self._backdate, expires_at=now + self._lifetime,
        )  # fmt: skip
        return assertion

    def public_jwk(self) -> dict[str, Any]:
        public = dict(self.key.as_dict(private=False))
        public.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return public


class _SignedAssertion(PrivateKeyJWT):  # type: ignore[misc]  # authlib is untyped
    """authlib's private_key_jwt method, signing with our `AssertionSigner` (audience: the URL posted to)."""

    def __init__(self, signer: AssertionSigner) -> None:
        super().__init__(token_endpoint=None, alg=signer.alg)
        self._signer = signer

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return self._signer.sign(str(auth.client_id), token_endpoint)


class ClientAuthentication:
    """How this app proves who it is at a token endpoint: `none` (a public client: client_id in the body),
    `client_secret_basic`, `client_secret_post` or `private_key_jwt`; applied to a request by authlib."""

    def __init__(
        self, client_id: str, method: str = "none", *, secret: str | None = None, signer: AssertionSigner | None = None
    ) -> None:
        if method not in CLIENT_AUTH_METHODS:
            raise SmartConfigError(f"client authentication must be one of {', '.join(CLIENT_AUTH_METHODS)}")
        if method in ("client_secret_basic", "client_secret_post") and not secret:
            raise SmartConfigError(f"{method} needs a client secret")
        if method == "private_key_jwt" and signer is None:
            raise SmartConfigError("private_key_jwt needs a signing key")
        self.client_id = client_id
        self.method = method
        self.signer = signer if method == "private_key_jwt" else None
        self._auth = ClientAuth(
            client_id,
            secret.strip() if secret else None,
            _SignedAssertion(signer) if method == "private_key_jwt" and signer is not None else method,
        )

    @property
    def confidential(self) -> bool:
        return self.method != "none"

    def __repr__(self) -> str:  # never the secret
        return f"ClientAuthentication({self.client_id!r}, {self.method!r})"

    def token_request(self, token_endpoint: str, grant_type: str, **params: str) -> tuple[str, dict[str, str], str]:
        """(url, headers, body) of a token request: the grant's parameters (empty ones left out) and this client's
        authentication (a header, body parameters or a signed assertion)."""
        body = prepare_token_request(grant_type, **{k: v for k, v in params.items() if v})
        headers = {"Content-Type": FORM, "Accept": "application/json"}
        url, headers, body = self._auth.prepare("POST", token_endpoint, headers, body)
        return str(url), dict(headers), str(body)


def authorize_url(endpoint: str, client_id: str, redirect_uri: str, scopes: Sequence[str], state: str,
                  extra: Mapping[str, str]) -> str:  # fmt: skip
    """The authorization request as a URL (`response_type=code`), with the extra parameters (aud, launch, PKCE,
    nonce) in the order given."""
    url: str = prepare_grant_uri(endpoint, client_id, "code", redirect_uri, list(scopes), state, **dict(extra))
    return url


def s256_challenge(verifier: str) -> str:
    """The PKCE S256 code challenge of a verifier (RFC 7636 §4.2)."""
    challenge: str = create_s256_code_challenge(verifier)
    return challenge


__all__ = [
    "ALGORITHMS",
    "ASSERTION_TYPE",
    "CLIENT_AUTH_METHODS",
    "MAX_ASSERTION_LIFETIME_S",
    "AssertionSigner",
    "ClientAuthentication",
    "authorize_url",
    "load_private_key",
    "s256_challenge",
]
