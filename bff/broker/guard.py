"""The last check before a request leaves: does the site's *current* capability matrix allow this write?

The plan was made under the matrix of its day; the matrix may have changed since (an override, a degradation,
a new file). Every item is checked again right before it is sent, and a write the site does not allow never
reaches the transport: it is refused here with the reason (the outbox records it as failed, or deferred when
the whole site is read-only). What a vendor takes comes from its profile (`bff.vendors`: flowsheet rows only,
transactions, `$submit-cgm-bundle`). Every FHIR resource that passes is then validated as FHIR of the site's
release with fhir.resources (`bff.resources.structure`): an invalid one is refused here, not by the EHR.
"""

from __future__ import annotations

from bff.broker.plan import PlannedWrite
from bff.capabilities import SiteCapabilities, WriteChannel, WriteMode
from bff.resources.structure import problems
from bff.vendors import profile_for


class WriteRefusedError(PermissionError):
    """The site's capabilities do not allow this write; `read_only` when nothing may be written at all."""

    def __init__(self, message: str, *, read_only: bool = False) -> None:
        super().__init__(message)
        self.read_only = read_only


def _categories(write: PlannedWrite) -> set[str]:
    body = write.body or {}
    return {str(c.get("code")) for cat in body.get("category", []) for c in cat.get("coding", [])}


def _codes(write: PlannedWrite) -> set[tuple[str, str]]:
    body = write.body or {}
    return {(str(c.get("system")), str(c.get("code"))) for c in body.get("code", {}).get("coding", [])}


def _bundle_types(write: PlannedWrite) -> list[tuple[str, set[str]]]:
    """(resourceType, categories) of each resource inside a transaction or a $submit-cgm-bundle Parameters."""
    body = write.body or {}
    if body.get("resourceType") == "Parameters":
        body = next((p.get("resource", {}) for p in body.get("parameter", []) if p.get("name") == "resource"), {})
    out = []
    for entry in body.get("entry", []):
        resource = entry.get("resource", {})
        cats = {str(c.get("code")) for cat in resource.get("category", []) for c in cat.get("coding", [])}
        out.append((str(resource.get("resourceType", "")), cats))
    return out


def _message_type(message: str | None) -> str:
    """MSH-9's message code and trigger ("ORU^R01", "MDM^T02"), or ""."""
    if not message or not message.startswith("MSH"):
        return ""
    fields = message.split("\r", 1)[0].split(message[3])
    return "^".join(fields[8].split("^")[:2]) if len(fields) > 8 else ""


def check(caps: SiteCapabilities, write: PlannedWrite) -> None:
    """Raise WriteRefusedError unless the site's matrix allows exactly this request (and it is valid FHIR)."""
    _check_allowed(caps, write)
    if write.channel == "fhir" and write.body is not None:
        found = problems(write.body, caps.fhir.version.value)
        if found:
            raise WriteRefusedError(
                f"site {caps.key}: the {write.resource_type or 'request'} is not valid FHIR {caps.fhir.version.value}: "
                + "; ".join(found[:5])
            )


def _check_allowed(caps: SiteCapabilities, write: PlannedWrite) -> None:
    mode = caps.write.mode
    site = caps.key
    profile = profile_for(caps)
    if mode is WriteMode.READ_ONLY:
        raise WriteRefusedError(f"site {site} is read-only: nothing is written", read_only=True)
    if write.channel == "hl7v2":
        if caps.write.channel is not WriteChannel.HL7V2 and not (caps.hl7v2.host and caps.hl7v2.port):
            raise WriteRefusedError(f"site {site} has no HL7 v2 channel")
        kind = _message_type(write.message)
        if write.kind == "hl7v2" and kind == "ORU^R01":
            return
        if write.kind == "pdf" and kind == "MDM^T02":
            if mode is not WriteMode.FULL or caps.write.pdf_path != "hl7_mdm":
                raise WriteRefusedError(f"site {site} does not take the PDF as an MDM^T02 document")
            return
        raise WriteRefusedError(f"site {site}: an HL7 v2 item must be an ORU^R01 message (or the PDF as MDM^T02)")
    if caps.write.channel is not WriteChannel.FHIR:
        raise WriteRefusedError(f"site {site} takes no FHIR writes (write channel {caps.write.channel.value})")
    rtype = write.resource_type
    flowsheet = write.kind == "flowsheet" or (profile.writer.observations_are_flowsheet_rows and rtype == "Observation")
    if mode is WriteMode.FLOWSHEET_ONLY or flowsheet:
        if write.kind != "flowsheet" or rtype != "Observation":
            raise WriteRefusedError(f"site {site} takes flowsheet rows only, not {write.kind} ({rtype or 'nothing'})")
        if _categories(write) != {"vital-signs"}:
            raise WriteRefusedError(f"site {site} files flowsheet rows as vital-signs only, not {_categories(write)}")
        rows = {(caps.write.flowsheet_system, row) for row in caps.write.flowsheet_rows.values()}
        if not _codes(write) & rows:
            raise WriteRefusedError(f"site {site}: the Observation names no flowsheet row the site has mapped")
        return
    if mode is WriteMode.NOTES_ONLY and (write.kind != "note" or rtype != "DocumentReference"):
        raise WriteRefusedError(f"site {site} takes notes only, not {write.kind} ({rtype or 'no resource'})")
    if write.kind == "note":
        content = (write.body or {}).get("content", [{}])
        kind = str(content[0].get("attachment", {}).get("contentType", "")) if content else ""
        if rtype != "DocumentReference" or kind.split(";")[0] != "text/plain":
            raise WriteRefusedError(f"site {site}: a note must be a text/plain DocumentReference")
        return
    if mode is WriteMode.OBSERVATIONS and write.kind not in ("observations", "bundle"):
        raise WriteRefusedError(f"site {site} takes results only, not {write.kind}")
    wanted = caps.write.observation_category
    if write.kind == "observations":
        if rtype != "Observation":
            raise WriteRefusedError(f"site {site}: a result must be an Observation, not {rtype}")
        if _categories(write) != {wanted}:
            raise WriteRefusedError(
                f"site {site} takes Observations of category {wanted} only, not {sorted(_categories(write))}"
            )
        return
    if write.kind == "bundle":
        if write.path == "$submit-cgm-bundle" and not profile.writer.takes_submission:
            raise WriteRefusedError(f"site {site} is not a CGM IG receiver: no $submit-cgm-bundle")
        if write.path != "$submit-cgm-bundle" and not profile.writer.takes_transactions:
            raise WriteRefusedError(f"site {site} ({caps.vendor.value}) takes no transaction Bundles")
        for resource_type, cats in _bundle_types(write):
            if resource_type == "Observation" and cats != {wanted}:
                raise WriteRefusedError(f"site {site} takes Observations of category {wanted} only, not {sorted(cats)}")
            if resource_type == "DiagnosticReport" and mode is not WriteMode.FULL:
                raise WriteRefusedError(f"site {site} does not take reports (mode {mode.value})")
        return
    if write.kind == "pdf":
        if mode is not WriteMode.FULL or caps.write.pdf_path != "cerner_docref" or rtype != "DocumentReference":
            raise WriteRefusedError(f"site {site} does not take the PDF as a FHIR document")
        return
    raise WriteRefusedError(f"site {site}: {write.kind} writes are not allowed")


__all__ = ["WriteRefusedError", "check"]
