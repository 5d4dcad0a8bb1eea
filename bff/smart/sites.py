"""The EHR sites this app may be launched from: an allow-list keyed by `iss` (the FHIR base URL).

One TOML file per site, `sites/<key>.toml`; the file name is the site key. SMART settings sit in a `[smart]`
table so that the capability matrix can add its own tables beside it (tables other than `[smart]` are ignored
here; unknown keys inside `[smart]` are an error, so that a typo does not silently fall back to a default):

    vendor = "epic"                                   # epic | oracle | generic

    [smart]
    iss = "https://ehr.example.org/api/FHIR/R4"       # the launch's iss must be exactly this (see normalise_iss)
    client_id = "0f7c..."
    redirect_uri = "https://cgm.example.org/callback" # optional when the loader is given a default
    scopes = ["launch", "openid", "fhirUser", "patient/Patient.read", "patient/Observation.read"]
    frame_ancestors = ["https://hyperdrive.example.org"]  # origins allowed to frame the app (CSP)
    expected_token_lifetime_s = 3600                  # optional: Epic 3600, Oracle 570 by default
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bff.smart.errors import IssNotAllowedError, SmartConfigError

VENDORS = ("epic", "oracle", "generic")
DEFAULT_TOKEN_LIFETIME_S = {"epic": 3600, "oracle": 570, "generic": 3600}
_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_ORIGIN = re.compile(r"(https?)://(\*\.)?([A-Za-z0-9.-]+)(:\d{1,5})?")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_SMART_KEYS = frozenset({"iss", "client_id", "redirect_uri", "scopes", "frame_ancestors", "expected_token_lifetime_s"})


def normalise_iss(iss: str) -> str:
    """The only normalisation an `iss` gets before it is compared with a site's: surrounding whitespace is dropped.

    The comparison is then exact, character for character: a trailing slash, the case of the scheme or host, a
    default port or a percent-encoding all count. An EHR that launches with `https://ehr.example/fhir/` is refused
    by a site whose file says `https://ehr.example/fhir` (and the other way round): the file must hold exactly
    what the EHR sends."""
    return iss.strip()


def fhir_base(iss: str) -> str:
    """The FHIR base URL named by an `iss`, without a trailing slash, for building URLs (`{base}/metadata`) and
    caching what they answer. Never for deciding whether a launch is allowed: that is `SiteRegistry.for_iss`."""
    return normalise_iss(iss).rstrip("/")


def _is_local(host: str | None) -> bool:
    return (host or "").lower() in _LOCAL_HOSTS


def _check_url(name: str, value: str) -> None:
    """An absolute URL without a fragment; https, or http on a loopback host (the local sandbox EHR)."""
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.fragment:
        raise SmartConfigError(f"{name} must be an absolute http(s) URL without a fragment, got {value!r}")
    if parts.scheme == "http" and not _is_local(parts.hostname):
        raise SmartConfigError(f"{name} must use https (http only on localhost), got {value!r}")


@dataclass(frozen=True, slots=True)
class SmartSite:
    """One EHR site: where it launches from and how this app is registered there."""

    key: str
    iss: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    vendor: str = "generic"
    frame_ancestors: tuple[str, ...] = ()
    expected_token_lifetime_s: int = 3600
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _KEY.fullmatch(self.key):
            raise SmartConfigError(f"site key {self.key!r} must be 1-64 of a-z, 0-9, '-' and '_'")
        object.__setattr__(self, "iss", normalise_iss(self.iss))
        _check_url(f"site {self.key}: iss", self.iss)
        if urlsplit(self.iss).query:
            raise SmartConfigError(f"site {self.key}: iss must not have a query string")
        if not self.client_id.strip():
            raise SmartConfigError(f"site {self.key}: client_id is empty")
        _check_url(f"site {self.key}: redirect_uri", self.redirect_uri)
        if not self.scopes or any(not s or any(c.isspace() for c in s) for s in self.scopes):
            raise SmartConfigError(f"site {self.key}: scopes must be non-empty words without spaces")
        if self.vendor not in VENDORS:
            raise SmartConfigError(f"site {self.key}: vendor must be one of {', '.join(VENDORS)}, got {self.vendor!r}")
        for origin in self.frame_ancestors:
            match = _ORIGIN.fullmatch(origin)
            if match is None:
                raise SmartConfigError(
                    f"site {self.key}: frame_ancestors entries must be origins (scheme://host[:port]), got {origin!r}"
                )
            if match.group(1) == "http" and not _is_local(match.group(3)):
                raise SmartConfigError(f"site {self.key}: frame ancestor {origin!r} must use https")
        if self.expected_token_lifetime_s <= 0:
            raise SmartConfigError(f"site {self.key}: expected_token_lifetime_s must be positive")

    def launch_scopes(self, *, standalone: bool) -> tuple[str, ...]:
        """The scopes to request: an EHR launch needs `launch`; a standalone launch asks for a patient instead."""
        if not standalone:
            return self.scopes if "launch" in self.scopes else ("launch", *self.scopes)
        scopes = tuple(s for s in self.scopes if s != "launch")
        return scopes if "launch/patient" in scopes else ("launch/patient", *scopes)


def site_from_mapping(
    key: str, data: Mapping[str, Any], *, source: str = "", default_redirect_uri: str | None = None
) -> SmartSite:
    """A site from the parsed contents of its TOML file (pure; `source` names the file in errors)."""
    where = source or f"site {key}"
    smart = data.get("smart")
    if not isinstance(smart, Mapping):
        raise SmartConfigError(f"{where}: no [smart] table")
    unknown = set(smart) - _SMART_KEYS
    if unknown:
        raise SmartConfigError(f"{where}: unknown keys in [smart]: {', '.join(sorted(unknown))}")
    vendor = data.get("vendor", "generic")

    def text(name: str, default: str | None = None) -> str:
        value = smart.get(name, default)
        if not isinstance(value, str) or not value:
            raise SmartConfigError(f"{where}: smart.{name} must be a non-empty string")
        return value

    def words(name: str) -> tuple[str, ...]:
        value = smart.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SmartConfigError(f"{where}: smart.{name} must be a list of strings")
        return tuple(value)

    lifetime = smart.get("expected_token_lifetime_s", DEFAULT_TOKEN_LIFETIME_S.get(str(vendor), 3600))
    if not isinstance(lifetime, int) or isinstance(lifetime, bool):
        raise SmartConfigError(f"{where}: smart.expected_token_lifetime_s must be a whole number of seconds")
    if not isinstance(vendor, str):
        raise SmartConfigError(f"{where}: vendor must be a string")
    try:
        return SmartSite(
            key=key,
            iss=text("iss"),
            client_id=text("client_id"),
            redirect_uri=text("redirect_uri", default_redirect_uri),
            scopes=words("scopes"),
            vendor=vendor,
            frame_ancestors=words("frame_ancestors"),
            expected_token_lifetime_s=lifetime,
            extra={k: v for k, v in data.items() if k not in ("smart", "vendor")},
        )
    except SmartConfigError as exc:
        raise SmartConfigError(f"{where}: {exc}") from None


class SiteRegistry:
    """The allow-list: sites by `iss` (exact, after `normalise_iss`) and by key."""

    def __init__(self, sites: Iterable[SmartSite]) -> None:
        self._by_key: dict[str, SmartSite] = {}
        self._by_iss: dict[str, SmartSite] = {}
        bases: dict[str, SmartSite] = {}
        for site in sites:
            if site.key in self._by_key:
                raise SmartConfigError(f"two sites have the key {site.key!r}")
            if fhir_base(site.iss) in bases:  # the same server, perhaps spelled with and without a trailing slash
                raise SmartConfigError(f"sites {bases[fhir_base(site.iss)].key} and {site.key} have the same iss")
            self._by_key[site.key] = site
            self._by_iss[site.iss] = site
            bases[fhir_base(site.iss)] = site

    @classmethod
    def from_toml_files(cls, paths: Sequence[Path], *, default_redirect_uri: str | None = None) -> SiteRegistry:
        sites = []
        for path in paths:
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise SmartConfigError(f"{path}: cannot be read as TOML: {exc}") from None
            sites.append(
                site_from_mapping(path.stem, data, source=str(path), default_redirect_uri=default_redirect_uri)
            )
        return cls(sites)

    @classmethod
    def from_toml_dir(cls, directory: Path | str, *, default_redirect_uri: str | None = None) -> SiteRegistry:
        """Every `*.toml` in the directory (none, or no directory, gives an empty allow-list)."""
        folder = Path(directory)
        paths = sorted(folder.glob("*.toml")) if folder.is_dir() else []
        return cls.from_toml_files(paths, default_redirect_uri=default_redirect_uri)

    def for_iss(self, iss: str) -> SmartSite:
        """The site launching from `iss`; IssNotAllowedError when it is not on the allow-list (exactly)."""
        site = self._by_iss.get(normalise_iss(iss)) if iss else None
        if site is None:
            raise IssNotAllowedError(iss)
        return site

    def get(self, key: str) -> SmartSite | None:
        return self._by_key.get(key)

    def __iter__(self) -> Iterator[SmartSite]:
        return iter(self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)


__all__ = ["SiteRegistry", "SmartSite", "fhir_base", "normalise_iss", "site_from_mapping"]
