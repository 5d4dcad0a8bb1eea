"""A site written over an HL7 v2 results interface (ehr-realities.md §3); its FHIR server is read only.

This profile is the vendor of a site that is nothing but its interface (`vendor = "hl7v2"`), and the write rules
of every site whose `[write] channel` is `hl7v2` (an Epic site filing through Bridges keeps Epic's launch and read
rules, and writes by these).

- Writes: one ORU^R01 per outcome over MLLP (flowsheet row ids as OBX-3 when mapped; the PDF as OBX ED with
  `pdf_path = "hl7_ed"`, or as its own MDM^T02 with `pdf_path = "hl7_mdm"`). The interface creates the encounter
  (`encounter_policy = "hl7_creates"`). No FHIR writes.
- Backend Services: reads only.
"""

from __future__ import annotations

from bff.vendors.base import ResultsShape, Vendor, VendorProfile

PROFILE = VendorProfile(
    vendor=Vendor.HL7V2,
    title="HL7 v2 results interface",
    results=ResultsShape.HL7_ORU,
    takes_transactions=False,
)
