"""The EHR sites this app may be launched from: an allow-list keyed by `iss` (the FHIR base URL).

One TOML file per site, `sites/<key>.toml`; the file name is the site key. `bff.sitefile` reads it (the one
reader of site files; its docstring lists the `[smart]` and `[backend]` keys): this module keeps what the SMART
client needs, the `[smart]` table (client id, client authentication, endpoint overrides, scopes, frame
ancestors), `[backend]`, and from the capability matrix `[fhir] iss_allow`, `[launch]`, `[rate_limit]
refresh_min_interval_s` and `[token] expected_lifetime_s`. Tables it does not read are the matrix's
(`bff.capabilities`, which refuses unknown ones); unknown keys inside `[smart]` are an error here, so that a typo
does not silently fall back to a default.

    vendor = "epic"                                   # epic | oracle | generic | cgm-ig-receiver | hl7v2

    [smart]
    iss = "https://ehr.example.org/api/FHIR/R4"       # the launch's iss must be exactly this (see normalise_iss)
    client_id = "0f7c..."
    redirect_uri = "https://cgm.example.org/callback" # optional when the loader is given a default
    scopes = ["launch", "openid", "fhirUser", "patient/Patient.read", "patient/Observation.read"]
    frame_ancestors = ["https://hyperdrive.example.org"]  # origins allowed to frame the app (CSP)
    client_auth = "private_key_jwt"                   # none | client_secret_basic | client_secret_post | ...
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bff.sitefile import (
    ORIGIN,
    SITE_KEY,
    BackendCaps,
    ClientAuth,
    SiteFileError,
    fhir_base,
    is_local,
    load,
    normalise_iss,
    smart_view,
    url_problem,
)
from bff.smart.errors import IssNotAllowedError, SmartConfigError
from bff.vendors import Vendor

VENDORS = tuple(v.value for v in Vendor)


def _check_url(name: str, value: str) -> None:
    problem = url_problem(value)
    if problem:
        raise SmartConfigError(f"{name} {problem}")


@dataclass(frozen=True, slots=True)
class SmartSite:
    """One EHR site: where it launches from and how this app is registered there.

    Built from a site file by `site_from_mapping` (defaults from the vendor's profile); tests may build one
    directly, when the launch quirks and intervals are none unless given."""

    key: str
    iss: str
    client_id: str
    redirect_uri: str
    scopes: tuple[str, ...]
    vendor: str = "generic"
    frame_ancestors: tuple[str, ...] = ()
    expected_token_lifetime_s: int = 3600
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    iss_allow: tuple[str, ...] = ()  # further iss values this site launches from ([fhir] iss_allow)
    client_auth: ClientAuth = field(default_factory=ClientAuth)
    authorization_endpoint: str = ""  # overrides discovery when set
    token_endpoint: str = ""  # overrides discovery when set
    quirks: frozenset[str] = frozenset()
    encounter_expected: bool = False
    refresh_min_interval_s: int = 0
    backend: BackendCaps = field(default_factory=BackendCaps)

    def __post_init__(self) -> None:
        if not SITE_KEY.fullmatch(self.key):
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
            match = ORIGIN.fullmatch(origin)
            if match is None:
                raise SmartConfigError(
                    f"site {self.key}: frame_ancestors entries must be origins (scheme://host[:port]), got {origin!r}"
                )
            if match.group(1) == "http" and not is_local(match.group(3)):
                raise SmartConfigError(f"site {self.key}: frame ancestor {origin!r} must use https")
        if self.expected_token_lifetime_s <= 0:
            raise SmartConfigError(f"site {self.key}: expected_token_lifetime_s must be positive")
        for name in ("authorization_endpoint", "token_endpoint"):
            value = getattr(self, name)
            if value:
                _check_url(f"site {self.key}: {name}", value)

    @property
    def issuers(self) -> tuple[str, ...]:
        """Every iss the site launches from: its `iss`, then `[fhir] iss_allow`."""
        return (self.iss, *self.iss_allow)

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
    try:
        view = smart_view(data, where=where, default_redirect_uri=default_redirect_uri)
    except SiteFileError as exc:
        raise SmartConfigError(str(exc)) from None
    smart = view.smart
    try:
        return SmartSite(
            key=key,
            iss=smart.iss,
            client_id=smart.client_id,
            redirect_uri=smart.redirect_uri,
            scopes=smart.scopes,
            vendor=view.vendor.value,
            frame_ancestors=smart.frame_ancestors,
            expected_token_lifetime_s=view.expected_token_lifetime_s,
            extra=view.extra,
            iss_allow=view.fhir.iss_allow,
            client_auth=smart.client_auth,
            authorization_endpoint=smart.authorization_endpoint,
            token_endpoint=smart.token_endpoint,
            quirks=frozenset(view.launch.quirks),
            encounter_expected=view.launch.encounter_expected,
            refresh_min_interval_s=view.rate_limit.refresh_min_interval_s,
            backend=view.backend,
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
            self._by_key[site.key] = site
            for iss in site.issuers:
                # the same server, perhaps spelled with and without a trailing slash, may launch one site only
                if fhir_base(iss) in bases and bases[fhir_base(iss)] is not site:
                    raise SmartConfigError(f"sites {bases[fhir_base(iss)].key} and {site.key} have the same iss")
                self._by_iss[iss] = site
                bases[fhir_base(iss)] = site

    @classmethod
    def from_toml_files(cls, paths: Sequence[Path], *, default_redirect_uri: str | None = None) -> SiteRegistry:
        sites = []
        for path in paths:
            try:
                data = load(path)
            except SiteFileError as exc:
                raise SmartConfigError(str(exc)) from None
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
        """The site launching from `iss` (its `iss` or one of `[fhir] iss_allow`); IssNotAllowedError when it is not
        on the allow-list (exactly)."""
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
