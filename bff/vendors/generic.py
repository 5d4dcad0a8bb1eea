"""A generic SMART on FHIR server, R4 or R5 (`[fhir] version`): the standards, no vendor habits.

- Launch: SMART App Launch 2.x; booleans are booleans.
- Reads: CGM readings coded with the catalogue's LOINC codes (laboratory, as the CGM IG has them).
- Writes: one transaction Bundle with conditional creates on glucobridge's identifiers and a Provenance; read
  back by identifier. R5 servers get R5 resources (`bff.resources.fhir`); an R5 open visit is `in-progress`.
- Backend Services: system scopes in v2 syntax, one per resource type the matrix needs.
"""

from __future__ import annotations

from bff.vendors.base import ResultsShape, Vendor, VendorProfile

PROFILE = VendorProfile(vendor=Vendor.GENERIC, title="generic SMART on FHIR", results=ResultsShape.TRANSACTION)
