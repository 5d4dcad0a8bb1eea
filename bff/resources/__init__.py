"""Outcome resources a payer can audit: FHIR (HL7 CGM IG, R4 and R5) with Provenance to the raw readings,
HL7 v2 ORU^R01, a text note and a one-page PDF AGP report, all built from one `OutcomeRecord`."""
