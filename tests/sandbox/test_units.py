"""Pure parts: SMART scope parsing (v1 and v2), FHIR search values (dates, tokens, references)."""

from __future__ import annotations

import pytest

from sandbox.outcome import FhirError
from sandbox.scopes import granting, has_wildcard, parse_scope, to_v1_spelling
from sandbox.search import date_matches, date_range_ms, normal_reference, parse_date_value, token_matches


@pytest.mark.parametrize(
    ("scope", "ops"),
    [
        ("patient/Observation.read", "rs"),
        ("patient/Observation.write", "cud"),
        ("user/*.*", "cruds"),
        ("patient/Observation.rs", "rs"),
        ("system/Observation.cruds", "cruds"),
        ("patient/Observation.cu", "cu"),
    ],
)
def test_scope_forms(scope: str, ops: str) -> None:
    parsed = parse_scope(scope)
    assert parsed is not None
    assert parsed.ops == frozenset(ops)


@pytest.mark.parametrize(
    "scope",
    [
        "openid",
        "launch/patient",
        "patient/Observation.sr",
        "patient/Observation.rr",
        "patient/Observation.x",
        "clinic/Observation.read",
    ],
)
def test_not_resource_scopes(scope: str) -> None:
    assert parse_scope(scope) is None


def test_scope_queries_wildcards_and_v1_spelling() -> None:
    scope = "patient/Observation.rs?category=laboratory launch openid"
    (granted,) = granting(scope, "Observation", "s")
    lab = {"category": [{"coding": [{"system": "x", "code": "laboratory"}]}]}
    vital = {"category": [{"coding": [{"system": "x", "code": "vital-signs"}]}]}
    assert granted.allows_resource(lab)
    assert not granted.allows_resource(vital)
    assert granting(scope, "Observation", "c") == []
    assert has_wildcard("user/*.rs")
    assert has_wildcard("user/Observation.*")
    assert not has_wildcard("user/Observation.rs")
    assert to_v1_spelling("launch patient/Observation.rs user/Observation.cruds") == (
        "launch patient/Observation.read user/Observation.read user/Observation.write"
    )


def test_dates() -> None:
    day = date_range_ms("2026-11-01")
    assert day[1] - day[0] == 86_400_000
    assert date_range_ms("2026-11-01T01:30:00-04:00")[0] == date_range_ms("2026-11-01T05:30:00Z")[0]
    assert date_range_ms("2026-02")[1] == date_range_ms("2026-03-01")[0]
    assert date_range_ms("2026-12")[1] == date_range_ms("2027-01-01")[0]
    prefix, lo, hi = parse_date_value("ge2026-11-01")
    instant = date_range_ms("2026-11-01T00:00:00Z")
    assert date_matches(prefix, lo, hi, *instant)
    assert not date_matches("lt", lo, hi, *instant)
    assert date_matches("lt", lo, hi, instant[0] - 1000, instant[0])
    with pytest.raises(FhirError):
        parse_date_value("yesterday")


def test_tokens_and_references() -> None:
    pairs = [("http://loinc.org", "99504-3")]
    assert token_matches("http://loinc.org|99504-3", pairs)
    assert token_matches("99504-3", pairs)
    assert token_matches("http://loinc.org|", pairs)
    assert not token_matches("|99504-3", pairs)
    assert normal_reference("https://ehr.example/fhir/Patient/123/_history/2") == "Patient/123"
