"""Vendor profiles: one module per vendor, each owning that vendor's launch, read, write, scope and retry rules.

    profile_for(caps)                   the profile bound to a site's effective capability matrix (`SiteProfile`)
        .cgm_search(patient, since)     the FHIR searches that fetch the patient's CGM sensor readings since then
        .reading_codes()                (system, code) -> unit of every code that marks a CGM sensor reading
        .open_visit_search(patient)     the search for the patient's open visits (open_visit_lookup)
        .backend_scopes()               the system scopes a Backend Services token asks for at this site
        .results                        the shape the results are written in (`ResultsShape`)
        .quirks                         the site's launch and retry quirks (`QUIRKS`; `bff.outbox.retry` applies them)
    vendor_profile(vendor)              the rules of one vendor (`VendorProfile`), e.g. its default token lifetime
    PROFILES                            every profile, by `Vendor`

The modules: `epic` (Epic on FHIR), `oracle` (Oracle Health Millennium), `generic` (SMART R4/R5), `cgm_ig` (a
HL7 CGM IG data receiver), `hl7v2` (an HL7 v2 results interface; also the write rules of every site whose write
channel is HL7 v2). `base` says what a profile holds. Adding a vendor: its name in `base.Vendor`, a module here
with its `PROFILE`, its entry in `PROFILES`, and a personality in the sandbox to test it against (plus a builder
in `bff.broker.plan` only if it writes results in a shape no other vendor uses).

This package is read by `bff.capabilities` (vendor names and defaults), `bff.smart` (launch quirks, lifetimes),
`bff.broker` (plan, guard and scopes) and `bff.outbox` (retry quirks); it imports none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from bff.vendors import cgm_ig, epic, generic, hl7v2, oracle
from bff.vendors.base import (
    ALWAYS_ON,
    OBSERVATION_CATEGORY,
    QUIRKS,
    READING_CODES,
    FhirSearch,
    ResultsShape,
    SiteMatrix,
    Vendor,
    VendorProfile,
    answer_is_duplicate,
    answer_is_refusal,
    has_wildcard,
    scope_syntax_ok,
    system_scopes,
)

PROFILES: Mapping[Vendor, VendorProfile] = {
    p.vendor: p for p in (epic.PROFILE, oracle.PROFILE, generic.PROFILE, cgm_ig.PROFILE, hl7v2.PROFILE)
}


def vendor_profile(vendor: Vendor | str) -> VendorProfile:
    """The profile of a vendor name (`epic`, `oracle`, ...); ValueError naming the known ones otherwise."""
    try:
        return PROFILES[Vendor(vendor)]
    except ValueError:
        raise ValueError(f"unknown vendor {vendor!r} (one of: {', '.join(v.value for v in Vendor)})") from None


@dataclass(frozen=True, slots=True)
class SiteProfile:
    """A vendor profile bound to one site's effective matrix: what callers ask about a site."""

    caps: SiteMatrix
    vendor: VendorProfile  # launch and read rules
    writer: VendorProfile  # write rules: the vendor's, or HL7 v2's when the site writes over HL7 v2

    @property
    def quirks(self) -> frozenset[str]:
        """The site's effective quirks (its `[launch] quirks`, else the vendor's defaults)."""
        return frozenset(self.caps.launch.quirks)

    @property
    def results(self) -> ResultsShape:
        return self.writer.results

    def cgm_search(self, patient: str, since: datetime) -> tuple[FhirSearch, ...]:
        return self.vendor.cgm_search(self.caps, patient, since)

    def reading_codes(self) -> dict[tuple[str, str], str]:
        return self.vendor.reading_codes(self.caps)

    def open_visit_search(self, patient: str) -> FhirSearch:
        return self.vendor.open_visit_search(self.caps, patient)

    def backend_scopes(self) -> tuple[str, ...]:
        return self.vendor.backend_scopes(self.caps)


def profile_for(caps: SiteMatrix) -> SiteProfile:
    """The vendor profile of a site, bound to its effective capability matrix."""
    vendor = PROFILES[caps.vendor]
    writer = PROFILES[Vendor.HL7V2] if caps.write.channel.value == "hl7v2" else vendor
    return SiteProfile(caps, vendor, writer)


__all__ = [
    "ALWAYS_ON",
    "OBSERVATION_CATEGORY",
    "PROFILES",
    "QUIRKS",
    "READING_CODES",
    "FhirSearch",
    "ResultsShape",
    "SiteMatrix",
    "SiteProfile",
    "Vendor",
    "VendorProfile",
    "answer_is_duplicate",
    "answer_is_refusal",
    "has_wildcard",
    "profile_for",
    "scope_syntax_ok",
    "system_scopes",
    "vendor_profile",
]
