"""Settings of the SMART client (`SMART_` variables), parsed by a pure function, and the wiring of a client.

| variable | default | meaning |
| --- | --- | --- |
| `SMART_TOKEN_KEYS` | from the app secret | Fernet keys (comma-separated) for EHR tokens at rest; first encrypts |
| `SMART_DISCOVERY_TTL_S` | `3600` | how long a smart-configuration (and JWKS) is cached |
| `SMART_PRELOGIN_TTL_S` | `600` | how long a sign-in may take between the redirect and the callback |
| `SMART_LAUNCH_TTL_S` | `43200` | the longest a launch lives (with a refresh token; without, its access token's life) |
| `SMART_REFRESH_LEEWAY_S` | `60` | refresh an access token when it has less than this left |
| `SMART_BACKEND_CLIENT_ID` | `glucobridge-backend` | the Backend Services client id (sites without their own) |
| `SMART_BACKEND_KEY_FILE` | unset | PEM key for Backend Services assertions (RS384: RSA ≥ 2048; ES384: P-384) |
| `SMART_BACKEND_KID` | unset | its key id (JWT header and JWKS) |
| `SMART_BACKEND_ALG` | `ES384` | `RS384` or `ES384` |
| `SMART_BACKEND_JKU` | unset | the JWKS URL registered with the EHR, sent as the `jku` header when set |

Per site, `sites/*.toml` may name its own client id, client authentication and keys (`[smart]`, `[backend]`;
`bff.sitefile`); secrets and keys are read at start-up from the environment variables or files the sites name.

`REDIS_URL` (shared settings) switches the refresh lock to Redis, for several workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from bff.settings import SettingsError
from bff.smart.backend import ALGORITHMS, BackendAuth
from bff.smart.backends import SiteBackends
from bff.smart.clock import Clock, utc_now
from bff.smart.crypto import FernetCipher, TokenCipher
from bff.smart.discovery import Discovery
from bff.smart.launch import SmartClient
from bff.smart.locks import RefreshLock, make_refresh_lock
from bff.smart.sites import SiteRegistry
from bff.smart.store import LaunchStore


def _seconds(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class SmartSettings:
    token_keys: tuple[str, ...] = ()
    discovery_ttl_s: int = 3600
    prelogin_ttl_s: int = 600
    launch_ttl_s: int = 12 * 3600
    refresh_leeway_s: int = 60
    backend_client_id: str = "glucobridge-backend"
    backend_key_file: str | None = None
    backend_kid: str | None = None
    backend_alg: str = "ES384"
    backend_jku: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SmartSettings:
        alg = environ.get("SMART_BACKEND_ALG") or "ES384"
        if alg not in ALGORITHMS:
            raise SettingsError(f"SMART_BACKEND_ALG must be one of {', '.join(ALGORITHMS)}, got {alg!r}")
        keys = tuple(k.strip() for k in (environ.get("SMART_TOKEN_KEYS") or "").split(",") if k.strip())
        return cls(
            token_keys=keys,
            discovery_ttl_s=_seconds(environ, "SMART_DISCOVERY_TTL_S", 3600),
            prelogin_ttl_s=_seconds(environ, "SMART_PRELOGIN_TTL_S", 600),
            launch_ttl_s=_seconds(environ, "SMART_LAUNCH_TTL_S", 12 * 3600),
            refresh_leeway_s=_seconds(environ, "SMART_REFRESH_LEEWAY_S", 60),
            backend_client_id=environ.get("SMART_BACKEND_CLIENT_ID") or "glucobridge-backend",
            backend_key_file=environ.get("SMART_BACKEND_KEY_FILE") or None,
            backend_kid=environ.get("SMART_BACKEND_KID") or None,
            backend_alg=alg,
            backend_jku=environ.get("SMART_BACKEND_JKU") or None,
        )

    def cipher(self, app_secret: bytes) -> TokenCipher:
        """Fernet with SMART_TOKEN_KEYS, else with a key derived from the app secret (HKDF, own context)."""
        if self.token_keys:
            return FernetCipher(self.token_keys)
        return FernetCipher.from_secrets([app_secret])


def create_smart_client(
    settings: SmartSettings,
    *,
    registry: SiteRegistry,
    http: httpx.AsyncClient,
    store: LaunchStore,
    app_secret: bytes,
    redis_url: str | None = None,
    lock: RefreshLock | None = None,
    clock: Clock = utc_now,
    discovery: Discovery | None = None,
    environ: Mapping[str, str] | None = None,
) -> SmartClient:
    """A SmartClient wired from settings: one Discovery, the cipher, and a Redis lock when Redis is configured.
    Reads each site's client secret or key (from the environment variable or file its `[smart]` names)."""
    return SmartClient(
        registry,
        http,
        store,
        settings.cipher(app_secret),
        clock,
        discovery=discovery or Discovery(http, ttl_s=settings.discovery_ttl_s, clock=clock),
        lock=lock or make_refresh_lock(redis_url),
        prelogin_ttl_s=settings.prelogin_ttl_s,
        launch_ttl_s=settings.launch_ttl_s,
        refresh_leeway_s=settings.refresh_leeway_s,
        environ=environ,
    )


def create_site_backends(
    settings: SmartSettings,
    *,
    http: httpx.AsyncClient,
    registry: SiteRegistry | None = None,
    discovery: Discovery | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock = utc_now,
) -> SiteBackends:
    """Backend Services per site (`bff.smart.backends`); with a registry, every site's key is read now."""
    backends = SiteBackends(settings, http=http, discovery=discovery, environ=environ, clock=clock)
    if registry is not None:
        backends.preload((site.key, site.backend, site.expected_token_lifetime_s) for site in registry)
    return backends


def create_backend_auth(
    settings: SmartSettings, client_id: str, *, http: httpx.AsyncClient, discovery: Discovery | None = None
) -> BackendAuth | None:
    """BackendAuth for `client_id` with the configured key, or None when no key is configured.

    Reads the key file: call it at start-up, not in a request.
    """
    if not settings.backend_key_file:
        return None
    if not settings.backend_kid:
        raise SettingsError("SMART_BACKEND_KID must be set with SMART_BACKEND_KEY_FILE")
    try:
        pem = Path(settings.backend_key_file).read_bytes()
    except OSError as exc:
        raise SettingsError(f"SMART_BACKEND_KEY_FILE cannot be read: {exc}") from None
    return BackendAuth(
        client_id,
        pem,
        settings.backend_kid,
        settings.backend_alg,
        http=http,
        discovery=discovery,
        jku=settings.backend_jku,
    )


__all__ = ["SmartSettings", "create_backend_auth", "create_site_backends", "create_smart_client"]
