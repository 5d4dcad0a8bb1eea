"""Oracle Health Millennium R4 (ehr-realities.md §2): short tokens, no wildcards, single Observations.

- Launch: access tokens live 570 s; a refresh answer has no new refresh token (kept, as everywhere); refreshing
  more often than once a minute "may result in throttling"; wildcard scopes are refused.
- Reads: CGM readings are laboratory Observations coded with LOINC.
- Writes: single Observations with exactly one category (the site's), `effectiveDateTime` only; identifiers are
  dropped on create (read back by patient, code and instant); the PDF as a DocumentReference; no transactions. A
  missing required field is answered 500 with an OperationOutcome `required`: refused, not unknown.
- Backend Services: system scopes in v1 syntax, each listed.
"""

from __future__ import annotations

from bff.vendors.base import ResultsShape, Vendor, VendorProfile

PROFILE = VendorProfile(
    vendor=Vendor.ORACLE,
    title="Oracle Health",
    token_lifetime_s=570,
    quirks=frozenset({"no_wildcard_scopes", "required_field_500"}),
    refresh_min_interval_s=60,
    results=ResultsShape.SINGLE_OBSERVATIONS,
    takes_transactions=False,
    pdf_path="cerner_docref",
    backend_scope_version="v1",
    probe_pattern=r"\b(oracle|cerner|millennium)\b",
)
