"""A HL7 CGM IG data receiver (ehr-realities.md §5.2, https://hl7.org/fhir/uv/cgm/): `$submit-cgm-bundle`.

- Reads: readings are the IG's sensor-reading Observations (laboratory, LOINC 99504-3 / 105272-9).
- Writes: the IG's data-submission Bundle through `$submit-cgm-bundle` (POSTs of the IG's types only, conditional
  creates on our identifiers); no transaction Bundle. Read back by identifier.
- Backend Services: system scopes in v2 syntax.
"""

from __future__ import annotations

from bff.vendors.base import ResultsShape, Vendor, VendorProfile

PROFILE = VendorProfile(
    vendor=Vendor.CGM_IG_RECEIVER,
    title="CGM IG data receiver",
    results=ResultsShape.CGM_SUBMISSION,
    takes_transactions=False,
    takes_submission=True,
)
