"""The one reader of `sites/*.toml`: every table a site file may hold, read by the same typed functions.

Two views are built from a file, both with these functions: the SMART settings (`bff.smart.sites.SmartSite`:
the `[smart]` and `[backend]` tables and the launch-related tables of the matrix) and the capability matrix
(`bff.capabilities.SiteCapabilities`: every table). Vendor defaults come from `bff.vendors`. Secrets are never
in a site file: a client secret or a private key is named by an environment variable (`*_env`) or a file path
(`*_file`) and read at start-up (`SecretRef.read`); a literal secret is refused.

The `[smart]` table (what the EHR registered for the user launch):

    iss = "https://ehr.example.org/api/FHIR/R4"        # the launch's iss must be exactly this (normalise_iss)
    client_id = "0f7c..."                              # the site's own client id (Epic: per customer, per env)
    redirect_uri = "https://cgm.example.org/callback"  # default: APP_PUBLIC_URL/callback
    scopes = ["launch", "openid", "fhirUser", "patient/Observation.rs"]   # SMART v1 or v2 syntax
    frame_ancestors = ["https://hyperdrive.example.org"]                  # origins allowed to frame the app
    client_auth = "none"          # none (public, PKCE) | client_secret_basic | client_secret_post | private_key_jwt
    client_secret_env = "EPIC_A_SECRET"   # or client_secret_file = "/run/secrets/epic-a" (the two secret kinds)
    private_key_file = "/run/keys/epic-a.pem"   # or private_key_env; with kid, alg (RS384 | ES384) and jku
    authorization_endpoint = ""   # overrides smart-configuration (a site that overrides it per client)
    token_endpoint = ""           # overrides smart-configuration (also for Backend Services, unless [backend] says)

The `[backend]` table (SMART Backend Services for this site; absent: the deployment's `SMART_BACKEND_*`):

    client_id = "..."             # default SMART_BACKEND_CLIENT_ID
    key_file = "/run/keys/backend-epic-a.pem"   # or key_env; default the deployment's SMART_BACKEND_KEY_FILE
    kid = "..."                   # with the key: its kid; alg RS384 | ES384 (default ES384); jku optional
    token_endpoint = ""           # default [smart] token_endpoint, else smart-configuration's
    scopes = ["system/Observation.read", "system/Observation.write"]   # v1 or v2 syntax; default: the vendor's
    scope_version = "v2"          # v1 | v2: the syntax of the default scopes (default: the vendor's)
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bff.vendors import ALWAYS_ON, QUIRKS, Vendor, VendorProfile, has_wildcard, scope_syntax_ok, vendor_profile


class SiteFileError(ValueError):
    """A site file (or a value in it) that cannot be used; the message names the file, the table and the key."""


class FhirVersion(StrEnum):
    R4 = "R4"
    R5 = "R5"


SITE_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ORIGIN = re.compile(r"(https?)://(\*\.)?([A-Za-z0-9.-]+)(:\d{1,5})?")
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "client_secret_post", "private_key_jwt")
KEY_ALGORITHMS = ("RS384", "ES384")
SCOPE_VERSIONS = ("v1", "v2")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
_ISS_ALLOW = re.compile(r"https://\S+|http://(localhost|127\.0\.0\.1)(:\d+)?(/\S*)?")


def normalise_iss(iss: str) -> str:
    """The only normalisation an `iss` gets before it is compared with a site's: surrounding whitespace is dropped.

    The comparison is then exact, character for character: a trailing slash, the case of the scheme or host, a
    default port or a percent-encoding all count (docs/smart.md)."""
    return iss.strip()


def fhir_base(iss: str) -> str:
    """The FHIR base URL named by an `iss`, without a trailing slash, for building URLs (`{base}/metadata`) and
    caching what they answer. Never for deciding whether a launch is allowed: that is `SiteRegistry.for_iss`."""
    return normalise_iss(iss).rstrip("/")


def is_local(host: str | None) -> bool:
    return (host or "").lower() in LOCAL_HOSTS


def url_problem(value: str) -> str | None:
    """Why `value` is not an absolute http(s) URL without a fragment, https unless on a loopback host; or None."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        return f"must be an absolute http(s) URL without a fragment, got {value!r}"
    if parts.scheme == "http" and not is_local(parts.hostname):
        return f"must use https (http only on localhost), got {value!r}"
    return None


def load(path: Path) -> dict[str, Any]:
    """A site file's contents; SiteFileError naming the file when it cannot be read as TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SiteFileError(f"{path}: cannot be read as TOML: {exc}") from None


# MARK: typed reads


class Table:
    """Typed reads from one TOML table, with errors (of class `error`) naming the file, the table and the key."""

    def __init__(self, where: str, name: str, data: Any, error: type[ValueError] = SiteFileError) -> None:
        self.where = where
        self.name = name
        self.error = error
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise error(f"{where}: [{name}] must be a table")
        self.data: Mapping[str, Any] = data
        self.seen: set[str] = set()

    def fail(self, key: str, what: str) -> ValueError:
        return self.error(f"{self.where}: [{self.name}] {key} {what}, got {self.data.get(key)!r}")

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any) -> Any:
        self.seen.add(key)
        return self.data.get(key, default)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.fail(key, f"must be a whole number >= {minimum}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.get(key, default)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise self.fail(key, "must be a positive number")
        return float(value)

    def text(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "must be a string")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.get(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def words(self, key: str) -> tuple[str, ...]:
        value = self.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def strings(self, key: str, key_pattern: re.Pattern[str] | None = None) -> dict[str, str]:
        value = self.get(key, {})
        if not isinstance(value, Mapping) or not all(isinstance(v, str) and v for v in value.values()):
            raise self.fail(key, "must be a table of non-empty strings")
        if key_pattern is not None:
            for name in value:
                if not key_pattern.fullmatch(name):
                    raise self.error(f"{self.where}: [{self.name}.{key}] {name!r} is not a metric name")
        return dict(value)

    def url(self, key: str) -> str:
        """An optional URL ("" when absent)."""
        value = self.text(key, "")
        problem = url_problem(value) if value else None
        if problem:
            raise self.error(f"{self.where}: [{self.name}] {key} {problem}")
        return value

    def refuse(self, key: str, why: str) -> None:
        if key in self.data:
            raise self.error(f"{self.where}: [{self.name}] {key} is not accepted: {why}")
        self.seen.add(key)

    def done(self) -> None:
        unknown = set(self.data) - self.seen
        if unknown:
            raise self.error(f"{self.where}: [{self.name}] unknown keys: {', '.join(sorted(unknown))}")


# MARK: secrets


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret is: an environment variable or a file (never the site file itself)."""

    env: str = ""
    file: str = ""

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self, environ: Mapping[str, str] | None = None) -> str:
        """The secret's text; SiteFileError naming where it was looked for (never the secret)."""
        if self.env:
            value = (os.environ if environ is None else environ).get(self.env, "")
            if not value.strip():
                raise SiteFileError(f"the {self.describe()} is not set")
            return value
        try:
            value = Path(self.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteFileError(f"the {self.describe()} cannot be read: {type(exc).__name__}") from None
        if not value.strip():
            raise SiteFileError(f"the {self.describe()} is empty")
        return value


def _secret(t: Table, env_key: str, file_key: str) -> SecretRef | None:
    env, file = t.text(env_key, ""), t.text(file_key, "")
    if env and file:
        raise t.error(f"{t.where}: [{t.name}] give {env_key} or {file_key}, not both")
    if env and not _ENV_NAME.fullmatch(env):
        raise t.fail(env_key, "must be the name of an environment variable (A-Z, 0-9, _)")
    return SecretRef(env=env, file=file) if env or file else None


# MARK: [smart]


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """How the app authenticates to a site's token endpoint for the user launch (and its refreshes)."""

    method: str = "none"  # none | client_secret_basic | client_secret_post | private_key_jwt
    secret: SecretRef | None = None
    key: SecretRef | None = None
    kid: str = ""
    alg: str = "ES384"
    jku: str = ""

    @property
    def confidential(self) -> bool:
        return self.method != "none"


@dataclass(frozen=True, slots=True)
class SmartTable:
    """The `[smart]` table as written (the redirect URI already defaulted)."""

    iss: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    frame_ancestors: tuple[str, ...] = ()
    client_auth: ClientAuth = ClientAuth()
    authorization_endpoint: str = ""
    token_endpoint: str = ""


def parse_smart(
    where: str, data: Any, *, quirks: frozenset[str], default_redirect_uri: str | None = None,
    redirect_required: bool = True, error: type[ValueError] = SiteFileError,
) -> SmartTable:  # fmt: skip
    """The `[smart]` table (required by the SMART view; the matrix reads it when the file has one, without
    insisting on a redirect URI, which the app's settings give by default)."""
    if not isinstance(data, Mapping):
        raise error(f"{where}: no [smart] table")
    t = Table(where, "smart", data, error)
    t.refuse("client_secret", "secrets are never stored in a site file: name client_secret_env or client_secret_file")
    t.refuse("private_key", "keys are never stored in a site file: name private_key_env or private_key_file")
    t.refuse("expected_token_lifetime_s", "it moved to [token] expected_lifetime_s")

    def required(name: str, default: str | None = None) -> str:
        value = t.get(name, default)
        if not isinstance(value, str) or not value:
            raise error(f"{where}: [smart] {name} must be a non-empty string")
        return value

    def words(name: str) -> tuple[str, ...]:
        value = t.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise error(f"{where}: [smart] {name} must be a list of strings")
        return tuple(value)

    iss = normalise_iss(required("iss"))
    problem = url_problem(iss)
    if problem:
        raise error(f"{where}: [smart] iss {problem}")
    if urlsplit(iss).query:
        raise error(f"{where}: [smart] iss must not have a query string")
    client_id = required("client_id")
    if not client_id.strip():
        raise error(f"{where}: [smart] client_id is empty")
    if redirect_required or t.has("redirect_uri"):
        redirect_uri = required("redirect_uri", default_redirect_uri)
        problem = url_problem(redirect_uri)
        if problem:
            raise error(f"{where}: [smart] redirect_uri {problem}")
    else:
        redirect_uri = t.text("redirect_uri", default_redirect_uri or "")
    scopes = words("scopes")
    if not scopes or any(not s or any(c.isspace() for c in s) for s in scopes):
        raise error(f"{where}: [smart] scopes must be non-empty words without spaces")
    for scope in scopes:
        if not scope_syntax_ok(scope):
            raise error(f"{where}: [smart] scopes: {scope!r} is neither SMART v1 (.read/.write) nor v2 (.cruds)")
        if "no_wildcard_scopes" in quirks and has_wildcard(scope):
            raise error(f"{where}: [smart] scopes: {scope!r} is a wildcard, which this site refuses "
                        "(quirk no_wildcard_scopes): list each resource")  # fmt: skip
    frame_ancestors = words("frame_ancestors")
    for origin in frame_ancestors:
        match = ORIGIN.fullmatch(origin)
        if match is None:
            raise error(f"{where}: [smart] frame_ancestors entries must be origins (scheme://host[:port]), "
                        f"got {origin!r}")  # fmt: skip
        if match.group(1) == "http" and not is_local(match.group(3)):
            raise error(f"{where}: [smart] frame ancestor {origin!r} must use https")
    method = t.choice("client_auth", "none", CLIENT_AUTH_METHODS)
    secret = _secret(t, "client_secret_env", "client_secret_file")
    key = _secret(t, "private_key_env", "private_key_file")
    kid = t.text("kid", "")
    alg = t.choice("alg", "ES384", KEY_ALGORITHMS)
    jku = t.url("jku")
    if method in ("client_secret_basic", "client_secret_post") and secret is None:
        raise error(f"{where}: [smart] client_auth {method} needs client_secret_env or client_secret_file")
    if method == "private_key_jwt" and (key is None or not kid):
        raise error(f"{where}: [smart] client_auth private_key_jwt needs private_key_file (or private_key_env) and kid")
    if method != "private_key_jwt" and (key is not None or kid or jku or t.has("alg")):
        raise error(f'{where}: [smart] private_key_*, kid, alg and jku are for client_auth = "private_key_jwt"')
    if method not in ("client_secret_basic", "client_secret_post") and secret is not None:
        raise error(f"{where}: [smart] a client secret is for client_auth client_secret_basic or client_secret_post")
    table = SmartTable(
        iss=iss, client_id=client_id, redirect_uri=redirect_uri, scopes=scopes, frame_ancestors=frame_ancestors,
        client_auth=ClientAuth(method, secret, key, kid, alg, jku),
        authorization_endpoint=t.url("authorization_endpoint"), token_endpoint=t.url("token_endpoint"),
    )  # fmt: skip
    t.done()
    return table


# MARK: the matrix tables the launch needs too


def parse_vendor(where: str, data: Mapping[str, Any], error: type[ValueError] = SiteFileError) -> Vendor:
    """The top-level `vendor` (default generic). `[fhir] cgm_ig_receiver = true` is the older spelling of
    `vendor = "cgm-ig-receiver"`; it may not contradict the vendor."""
    raw = data.get("vendor", "generic")
    if raw not in {v.value for v in Vendor}:
        raise error(f"{where}: top-level vendor must be one of {', '.join(v.value for v in Vendor)}, got {raw!r}")
    vendor = Vendor(raw)
    fhir = data.get("fhir")
    flag = fhir.get("cgm_ig_receiver") if isinstance(fhir, Mapping) else None
    if flag is True:
        if vendor not in (Vendor.GENERIC, Vendor.CGM_IG_RECEIVER):
            raise error(f"{where}: [fhir] cgm_ig_receiver = true contradicts vendor = {raw!r}")
        return Vendor.CGM_IG_RECEIVER
    if flag is False and vendor is Vendor.CGM_IG_RECEIVER:
        raise error(f'{where}: [fhir] cgm_ig_receiver = false contradicts vendor = "cgm-ig-receiver"')
    return vendor


@dataclass(frozen=True, slots=True)
class FhirCaps:
    version: FhirVersion = FhirVersion.R4
    iss_allow: tuple[str, ...] = ()
    cgm_ig_receiver: bool = False


def parse_fhir(where: str, data: Any, vendor: Vendor, error: type[ValueError] = SiteFileError) -> FhirCaps:
    t = Table(where, "fhir", data, error)
    caps = FhirCaps(
        version=FhirVersion(t.choice("version", "R4", tuple(v.value for v in FhirVersion))),
        iss_allow=tuple(normalise_iss(i) for i in t.words("iss_allow")),
        cgm_ig_receiver=t.boolean("cgm_ig_receiver", vendor is Vendor.CGM_IG_RECEIVER),
    )
    t.done()
    for allowed in caps.iss_allow:
        if not _ISS_ALLOW.fullmatch(allowed):
            raise error(f"{where}: [fhir] iss_allow entries must be https URLs, got {allowed!r}")
    return caps


@dataclass(frozen=True, slots=True)
class LaunchCaps:
    encounter_expected: bool = True
    quirks: tuple[str, ...] = ()


def parse_launch(where: str, data: Any, profile: VendorProfile, error: type[ValueError] = SiteFileError) -> LaunchCaps:
    """`[launch]`: `quirks` replaces the vendor's default list when present; unknown names are refused."""
    t = Table(where, "launch", data, error)
    listed = t.words("quirks") if t.has("quirks") else tuple(sorted(profile.quirks))
    for quirk in listed:
        if quirk in ALWAYS_ON:
            raise error(f"{where}: [launch] quirks: {quirk!r} is not needed: {ALWAYS_ON[quirk]}; remove it")
        if quirk not in QUIRKS:
            raise error(f"{where}: [launch] quirks: unknown quirk {quirk!r} (known: {', '.join(sorted(QUIRKS))})")
    caps = LaunchCaps(encounter_expected=t.boolean("encounter_expected", profile.encounter_expected), quirks=listed)
    t.done()
    return caps


@dataclass(frozen=True, slots=True)
class RateLimitCaps:
    rps: float = 5.0
    burst: int = 10
    refresh_min_interval_s: int = 0


def parse_rate_limit(
    where: str, data: Any, profile: VendorProfile, error: type[ValueError] = SiteFileError
) -> RateLimitCaps:
    t = Table(where, "rate_limit", data, error)
    caps = RateLimitCaps(
        rps=t.number("rps", 5.0),
        burst=t.integer("burst", 10, minimum=1),
        refresh_min_interval_s=t.integer("refresh_min_interval_s", profile.refresh_min_interval_s),
    )
    t.done()
    return caps


def parse_token(where: str, data: Any, profile: VendorProfile, error: type[ValueError] = SiteFileError) -> int:
    """`[token] expected_lifetime_s`: the access token lifetime assumed when a token response has no expires_in."""
    t = Table(where, "token", data, error)
    lifetime = t.integer("expected_lifetime_s", profile.token_lifetime_s, minimum=1)
    t.done()
    return lifetime


@dataclass(frozen=True, slots=True)
class BackendCaps:
    """`[backend]`: SMART Backend Services at this site ("" and None: the deployment's default or the vendor's)."""

    client_id: str = ""
    key: SecretRef | None = None
    kid: str = ""
    alg: str = ""
    jku: str = ""
    token_endpoint: str = ""
    scopes: tuple[str, ...] | None = None
    scope_version: str = ""


def parse_backend(
    where: str, data: Any, *, quirks: frozenset[str], smart_token_endpoint: str = "",
    error: type[ValueError] = SiteFileError,
) -> BackendCaps:  # fmt: skip
    t = Table(where, "backend", data, error)
    t.refuse("private_key", "keys are never stored in a site file: name key_env or key_file")
    client_id = t.text("client_id", "")
    key = _secret(t, "key_env", "key_file")
    kid = t.text("kid", "")
    alg = t.choice("alg", "ES384", KEY_ALGORITHMS) if t.has("alg") else ""
    jku = t.url("jku")
    if key is not None and not kid:
        raise error(f"{where}: [backend] a key needs its kid")
    if key is None and (kid or alg or jku):
        raise error(f"{where}: [backend] kid, alg and jku go with key_file or key_env")
    scopes: tuple[str, ...] | None = None
    if t.has("scopes"):
        scopes = t.words("scopes")
        for scope in scopes:
            if not scope.startswith("system/") or not scope_syntax_ok(scope):
                raise error(f"{where}: [backend] scopes: {scope!r} is not a system/ scope in SMART v1 or v2 syntax")
            if "no_wildcard_scopes" in quirks and has_wildcard(scope):
                raise error(f"{where}: [backend] scopes: {scope!r} is a wildcard, which this site refuses "
                            "(quirk no_wildcard_scopes)")  # fmt: skip
    caps = BackendCaps(
        client_id=client_id, key=key, kid=kid, alg=alg, jku=jku,
        token_endpoint=t.url("token_endpoint") or smart_token_endpoint, scopes=scopes,
        scope_version=t.choice("scope_version", "", ("", *SCOPE_VERSIONS)),
    )  # fmt: skip
    t.done()
    return caps


# MARK: the SMART view


@dataclass(frozen=True, slots=True)
class SmartView:
    """What the SMART client reads of a site file: `[smart]`, `[backend]` and the launch-related matrix keys."""

    vendor: Vendor
    smart: SmartTable
    backend: BackendCaps
    fhir: FhirCaps
    launch: LaunchCaps
    rate_limit: RateLimitCaps
    expected_token_lifetime_s: int
    extra: Mapping[str, Any]


def smart_view(
    data: Mapping[str, Any], *, where: str, default_redirect_uri: str | None = None,
    error: type[ValueError] = SiteFileError,
) -> SmartView:  # fmt: skip
    """The SMART settings of a parsed site file (pure). Tables this view does not read are left to the matrix
    (`bff.capabilities`), which refuses the unknown ones; they are kept in `extra`."""
    vendor = parse_vendor(where, data, error)
    profile = vendor_profile(vendor)
    launch = parse_launch(where, data.get("launch"), profile, error)
    quirks = frozenset(launch.quirks)
    smart = parse_smart(where, data.get("smart"), quirks=quirks, default_redirect_uri=default_redirect_uri,
                        error=error)  # fmt: skip
    read = ("smart", "vendor", "backend", "fhir", "launch", "rate_limit", "token")
    return SmartView(
        vendor=vendor, smart=smart,
        backend=parse_backend(where, data.get("backend"), quirks=quirks, smart_token_endpoint=smart.token_endpoint,
                              error=error),
        fhir=parse_fhir(where, data.get("fhir"), vendor, error), launch=launch,
        rate_limit=parse_rate_limit(where, data.get("rate_limit"), profile, error),
        expected_token_lifetime_s=parse_token(where, data.get("token"), profile, error),
        extra={k: v for k, v in data.items() if k not in read},
    )  # fmt: skip


__all__ = [
    "CLIENT_AUTH_METHODS",
    "KEY_ALGORITHMS",
    "SITE_KEY",
    "BackendCaps",
    "ClientAuth",
    "FhirCaps",
    "FhirVersion",
    "LaunchCaps",
    "RateLimitCaps",
    "SecretRef",
    "SiteFileError",
    "SmartTable",
    "SmartView",
    "Table",
    "fhir_base",
    "is_local",
    "load",
    "normalise_iss",
    "parse_backend",
    "parse_fhir",
    "parse_launch",
    "parse_rate_limit",
    "parse_smart",
    "parse_token",
    "parse_vendor",
    "smart_view",
    "url_problem",
]
