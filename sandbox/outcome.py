"""FHIR errors as OperationOutcome, and the FHIR JSON (and minimal XML) responses.

Every FHIR failure is a `FhirError` carrying the HTTP status and one OperationOutcome issue; vendor-specific
detail codes (Epic's 59189 "Reading already exists", ehr-realities.md §1.6) travel in `details.coding`.
"""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import quoteattr

import orjson
from litestar import Response

FHIR_JSON = "application/fhir+json; charset=utf-8"
FHIR_XML = "application/fhir+xml; charset=utf-8"


class FhirError(Exception):
    """A FHIR request that fails with `status` and an OperationOutcome issue (`code` from the IssueType set)."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        *,
        details: tuple[str, str, str] | None = None,
        headers: dict[str, str] | None = None,
        severity: str = "error",
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.details = details
        self.headers = headers or {}
        self.severity = severity

    def outcome(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.details is not None:
            system, code, display = self.details
            issue["details"] = {"coding": [{"system": system, "code": code, "display": display}], "text": display}
        return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    content = b"" if body is None else orjson.dumps(body)
    return Response(content=content, status_code=status, media_type=FHIR_JSON, headers=headers or {})


def error_response(error: FhirError) -> Response[bytes]:
    return fhir_response(error.outcome(), error.status, error.headers)


def to_fhir_xml(resource: dict[str, Any]) -> str:
    """FHIR XML for a resource (enough for a CapabilityStatement: no narrative, no primitive extensions)."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>']
    _xml_element(parts, resource["resourceType"], resource, root=True)
    return "".join(parts)


def _xml_element(parts: list[str], name: str, value: Any, *, root: bool = False) -> None:
    if isinstance(value, list):
        for item in value:
            _xml_element(parts, name, item)
        return
    if isinstance(value, dict):
        attrs = ' xmlns="http://hl7.org/fhir"' if root else ""
        if "url" in value and name in ("extension", "modifierExtension"):
            attrs += f" url={quoteattr(str(value['url']))}"
        parts.append(f"<{name}{attrs}>")
        for key, item in value.items():
            if key == "resourceType" or (key == "url" and name in ("extension", "modifierExtension")):
                continue
            if key.startswith("_"):
                continue
            _xml_element(parts, key, item)
        parts.append(f"</{name}>")
        return
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    parts.append(f"<{name} value={quoteattr(text)}/>")
