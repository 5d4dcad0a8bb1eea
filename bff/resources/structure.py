"""Structural validation of outgoing FHIR resources with fhir.resources (R4B models for R4 sites, R5 for R5).

`problems(resource, version)` lists what makes a resource invalid FHIR of its release: the guard
(`bff.broker.guard`) refuses such a write before it leaves, so an EHR never has to. The models validate what a
resource contains too (a Bundle entry's `resource`, a Parameters `resource`, by its own type), and a problem names
where it is (`Bundle.entry[3].resource.valueQuantity.value`). fhir.resources checks structure, cardinality and
datatypes, not value sets (a `code` outside its binding passes).

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


def _where(location: tuple[int | str, ...]) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def problems(resource: Mapping[str, Any], version: str = "R4") -> list[str]:
    """What makes `resource` (and every resource it contains) invalid FHIR `version` (R4 or R5); [] when valid.
    At most MAX_PROBLEMS, each prefixed with where it is."""
    if version not in ("R4", "R5"):
        raise ValueError(f"FHIR version must be R4 or R5, got {version!r}")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        return ["resource: no resourceType"]
    try:
        model = _model(rtype, version)
    except (KeyError, ValueError, LookupError):
        return [f"{rtype}: {rtype} is not a FHIR {version} resource type"]
    try:
        model.model_validate(dict(resource))
    except ValidationError as exc:
        return [f"{rtype}{_where(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()[:MAX_PROBLEMS]]
    except (ValueError, TypeError) as exc:
        return [f"{rtype}: {exc}"]
    return []


__all__ = ["problems"]
