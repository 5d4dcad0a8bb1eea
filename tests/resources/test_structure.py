"""Outgoing FHIR is validated with fhir.resources (R4B models for R4, R5 for R5) in the guard, before it leaves:
every resource the plan makes passes, and an invalid one, also inside a Bundle or a Parameters, is refused with
where the problem is, and nothing reaches the transport."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import httpx
import pytest

from bff.broker.broker import Broker, static_token_source
from bff.broker.guard import WriteRefusedError, check
from bff.broker.plan import PlannedWrite, WriteContext, plan_writes
from bff.capabilities import SiteCapabilities, parse_capabilities
from bff.resources.structure import problems
from tests.resources.samples import sample_record

PDF = b"%PDF-1.4\n%%EOF\n"


def caps(vendor: str, version: str = "R4", **write: Any) -> SiteCapabilities:
    table = {
        "mode": "full",
        "channel": "fhir",
        "observation_category": "laboratory",
        "note_type": "n",
        "encounter_policy": "launch",
        "pdf_path": "cerner_docref" if vendor == "oracle" else "none",
        **write,
    }
    if vendor == "epic":
        table |= {
            "mode": "flowsheet_only",
            "observation_category": "vital-signs",
            "flowsheet_system": "urn:oid:1.2",
            "flowsheet_rows": {"tir": "1", "gmi": "2"},
        }
    return parse_capabilities("s", {"version": 1, "vendor": vendor, "fhir": {"version": version}, "write": table})


@pytest.mark.parametrize(
    ("vendor", "version"),
    [("epic", "R4"), ("oracle", "R4"), ("generic", "R4"), ("generic", "R5"), ("cgm-ig-receiver", "R4")],
)
def test_every_planned_resource_is_valid_fhir(vendor: str, version: str) -> None:
    site = caps(vendor, version)
    writes = plan_writes(site, sample_record(), WriteContext(encounter="Encounter/e1", pdf=PDF))
    assert writes
    for write in writes:
        assert write.body is not None
        assert problems(write.body, version) == []
        check(site, write)  # the guard validates too


def test_problems_name_where_they_are_inside_bundles_and_parameters() -> None:
    site = caps("cgm-ig-receiver")
    [bundle] = [w for w in plan_writes(site, sample_record(), WriteContext(pdf=PDF)) if w.kind == "bundle"]
    body = copy.deepcopy(bundle.body or {})
    inner = body["parameter"][0]["resource"]["entry"][0]["resource"]
    inner["effectiveInstant"] = "not an instant"
    found = problems(body, "R4")
    assert found
    assert found == ["Parameters.parameter[0].resource.entry[0].resource.effectiveInstant: Extra inputs are not "
                     "permitted"]  # fmt: skip
    assert problems({"resourceType": "Nonsense"}, "R4") == ["Nonsense: Nonsense is not a FHIR R4 resource type"]


def test_an_invalid_resource_is_refused_by_the_guard_and_never_sent() -> None:
    site = parse_capabilities("s", {"version": 1, "vendor": "oracle", "smart": {"iss": "https://ehr.example.test/r4",
                                    "client_id": "c", "scopes": ["launch"]},
                                    "write": {"mode": "observations", "channel": "fhir",
                                              "observation_category": "laboratory"}})  # fmt: skip
    [first, *_] = plan_writes(site, sample_record(), WriteContext())
    body = copy.deepcopy(first.body or {})
    body["valueQuantity"]["value"] = "seventy"
    invalid = PlannedWrite.from_json({**first.as_json(), "body": body})
    sent: list[httpx.Request] = []

    def transport(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(transport)) as http:
            broker = Broker(http, static_token_source({"s": "t"}))
            with pytest.raises(WriteRefusedError, match=r"not valid FHIR R4: Observation\.valueQuantity\.value"):
                await broker.send(site, invalid)
            assert (await broker.send(site, first)).status == 201

    asyncio.run(scenario())
    assert len(sent) == 1  # only the valid one left
