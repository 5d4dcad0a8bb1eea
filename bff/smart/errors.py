"""Errors of the SMART client. Every one is a `SmartError`; callers catch the branch they can act on.

    SmartError
    ├── SmartConfigError            a site file or a key that cannot be used (raised at start-up)
    ├── IssNotAllowedError          the launching `iss` is not on the allow-list: refuse, and audit it
    ├── LaunchRequestError          a launch request that cannot start (EHR launch without `launch`, ...)
    ├── DiscoveryError              smart-configuration unreachable or malformed, or missing what a flow needs
    ├── StateError                  the callback's `state` is unknown, expired or already used
    ├── TokenEndpointError          the token endpoint refused or answered nonsense (`.error`, `.description`)
    │   ├── TokenExchangeError      ... redeeming the authorization code
    │   ├── RefreshError            ... refreshing a launch's access token (or there is nothing to refresh with)
    │   └── BackendAuthError        ... the client_credentials grant of SMART Backend Services
    ├── IdTokenError                the id_token is missing, badly signed, or has the wrong iss/aud/nonce/exp
    ├── LaunchNotFoundError         no live launch has this handle (never was, ended or expired): launch again
    ├── PatientMismatchError        a request names another patient than the launch's
    └── TokenCipherError            a stored token cannot be decrypted (the key changed)

Messages never contain a token, a code, a `state` or a launch handle: they may end up in logs.
"""

from __future__ import annotations


class SmartError(Exception):
    """Base class of every error raised by `bff.smart`. `.site_key` names the site when it is known (the audit
    records it, so that /admin shows the error under its site)."""

    site_key: str | None = None


class SmartConfigError(SmartError):
    """A site definition or a key that cannot be used; the message names the file or the field."""


class IssNotAllowedError(SmartError):
    """The `iss` of a launch is not on the allow-list. `.iss` is what was presented (for the audit trail)."""

    def __init__(self, iss: str) -> None:
        super().__init__("this iss is not on the allow-list")
        self.iss = iss


class LaunchRequestError(SmartError):
    """The launch request itself is malformed (an EHR launch without `launch`, a standalone launch with one)."""


class DiscoveryError(SmartError):
    """The site's `.well-known/smart-configuration` could not be fetched or is not acceptable."""


class StateError(SmartError):
    """The `state` of a callback is unknown, has expired, or was already used (single use)."""


class TokenEndpointError(SmartError):
    """The token endpoint answered with an error or an unusable body.

    `.error` is the OAuth error code when the server gave one (`invalid_grant`, ...), `.description` its
    `error_description`, `.status_code` the HTTP status (None when the server was not reached).
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        status_code: int | None = None,
    ) -> None:
        detail = f" ({error}: {_clip(description)})" if error and description else f" ({error})" if error else ""
        super().__init__(message + detail)
        self.error = error
        self.description = description
        self.status_code = status_code


def _clip(text: str | None, limit: int = 300) -> str:
    """A server's error_description, on one line and not too long (it ends up in logs and on /admin)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class TokenExchangeError(TokenEndpointError):
    """The authorization code could not be redeemed."""


class RefreshError(TokenEndpointError):
    """The access token of a launch could not be refreshed: the user must launch again."""


class BackendAuthError(TokenEndpointError):
    """A SMART Backend Services (client_credentials) token could not be obtained."""


class IdTokenError(SmartError):
    """The id_token is missing or fails validation (signature, iss, aud, nonce, exp)."""


class LaunchNotFoundError(SmartError):
    """No live launch has this handle: it never existed, was ended, or expired."""


class PatientMismatchError(SmartError):
    """A request names a patient other than the launch's. `.expected` and `.requested` are FHIR ids, for the audit."""

    def __init__(self, expected: str | None, requested: str) -> None:
        super().__init__("the request names another patient than the launch's")
        self.expected = expected
        self.requested = requested


class TokenCipherError(SmartError):
    """A stored token cannot be decrypted with the configured keys."""


__all__ = [
    "BackendAuthError",
    "DiscoveryError",
    "IdTokenError",
    "IssNotAllowedError",
    "LaunchNotFoundError",
    "LaunchRequestError",
    "PatientMismatchError",
    "RefreshError",
    "SmartConfigError",
    "SmartError",
    "StateError",
    "TokenCipherError",
    "TokenEndpointError",
    "TokenExchangeError",
]
