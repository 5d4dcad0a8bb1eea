"""Epic on FHIR (ehr-realities.md §1): flowsheet rows, an open encounter, 59189, grants by registration.

- Launch: access tokens live about an hour; POST-based authorize for EHR launches (long launch tokens); an EHR
  launch from an open visit carries its encounter. (`need_patient_banner` as the string "false" is read at every
  site.)
- Reads: CGM readings are vital-signs Observations; a site's own flowsheet rows for sensor glucose are named in
  `[read] flowsheet_rows` (LOINC alone may not find them).
- Writes: Observation.Create files flowsheet rows only (vital-signs, the site's row ids, an open encounter,
  `effectiveDateTime`), one create per row, no conditional create, no transactions; a note only with the site's
  note type. A replayed reading is 400 with detail 59189: already written.
- Backend Services: Epic grants by the APIs registered on the client id and needs no `scope`.
"""

from __future__ import annotations

from bff.vendors.base import ResultsShape, Vendor, VendorProfile

PROFILE = VendorProfile(
    vendor=Vendor.EPIC,
    title="Epic",
    token_lifetime_s=3600,
    quirks=frozenset({"dedupe_59189", "authorize_post"}),
    encounter_expected=True,
    reading_category="vital-signs",
    results=ResultsShape.FLOWSHEET_ROWS,
    encounter_required=True,
    note_needs_type=True,
    takes_transactions=False,
    observations_are_flowsheet_rows=True,
    backend_scope_version="v1",
    backend_scopes_needed=False,
    probe_pattern=r"\bepic\b",
)
