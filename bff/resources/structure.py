"""Structural validation of outgoing FHIR resources with fhir.resources (R4B models for R4 sites, R5 for R5).

`problems(resource, version)` lists what makes a resource invalid FHIR of its release: the guard
(`bff.broker.guard`) refuses such a write before it leaves, so an EHR never has to. fhir.resources checks the
outer resource only when it holds others (a Bundle entry's `resource`, a Parameters `resource`), so each contained
resource is validated with its own model too, and a problem names where it is (`entry[3].resource`).

The models are imported on first use (a quarter of a second), then cached per type and release. R4 is validated
with the R4B models, which fhir.resources ships for R4 (the resources glucobridge writes are the same in both).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from pydantic import ValidationError

MAX_PROBLEMS = 5


@cache
def _model(resource_type: str, version: str) -> Any:
    if version == "R5":
        from fhir.resources import get_fhir_model_class as r5_model  # noqa: PLC0415

        return r5_model(resource_type)
    from fhir.resources.R4B import get_fhir_model_class as r4_model  # noqa: PLC0415

    return r4_model(resource_type)


def _validate_one(resource: Mapping[str, Any], version: str, where: str, out: list[str]) -> None:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        out.append(f"{where}: no resourceType")
        return
    try:
        model = _model(rtype, version)
    except (KeyError, ValueError, LookupError):
        out.append(f"{where}: {rtype} is not a FHIR {version} resource type")
        return
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        for error in exc.errors()[:MAX_PROBLEMS]:
            path = ".".join(str(x) for x in error["loc"])
            out.append(f"{where}{'.' if path else ''}{path}: {error['msg']}")
    except (ValueError, TypeError) as exc:
        out.append(f"{where}: {exc}")


def _walk(resource: Mapping[str, Any], version: str, where: str, out: list[str]) -> None:
    _validate_one(resource, version, where, out)
    rtype = resource.get("resourceType")
    if rtype == "Bundle":
        for number, entry in enumerate(resource.get("entry") or []):
            inner = entry.get("resource") if isinstance(entry, Mapping) else None
            if isinstance(inner, Mapping):
                _walk(inner, version, f"{where}.entry[{number}].resource", out)
    elif rtype == "Parameters":
        for number, parameter in enumerate(resource.get("parameter") or []):
            inner = parameter.get("resource") if isinstance(parameter, Mapping) else None
            if isinstance(inner, Mapping):
                _walk(inner, version, f"{where}.parameter[{number}].resource", out)


def problems(resource: Mapping[str, Any], version: str = "R4") -> list[str]:
    """What makes `resource` (and every resource it contains) invalid FHIR `version` (R4 or R5); [] when valid.
    At most MAX_PROBLEMS per resource, each prefixed with where it is."""
    if version not in ("R4", "R5"):
        raise ValueError(f"FHIR version must be R4 or R5, got {version!r}")
    out: list[str] = []
    _walk(resource, version, str(resource.get("resourceType", "resource")), out)
    return out


__all__ = ["problems"]
