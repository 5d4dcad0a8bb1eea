"""FHIR Bundles from materialized standard outcomes (bff.resources.load.standard_record): raw data named by the
stored digest, never read; the same numbers and the same raw-data attachment as the signed path's Bundle of the
same window."""

from __future__ import annotations

import dataclasses

import pytest

from bff.resources.fhir import outcome_bundle
from bff.resources.load import outcome_record, standard_record
from bff.store import windows
from bff.store.db import Store
from engine import WindowSpec
from tests.store.test_windows import cohort


def _by_type(bundle: dict, kind: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_a_standard_outcome_exports_as_the_signed_path_would_with_the_raw_data_referenced(store: Store) -> None:
    ids = cohort(store)
    windows.refresh(store)
    with store.transaction() as session:
        summaries = windows.summaries(session, 30)
    assert [s.public_id for s in summaries] == ids
    for summary in summaries:
        record = standard_record(summary)
        assert record.readings_ndjson is None
        signed = outcome_record(store, summary.public_id, WindowSpec(days=30), site=summary.site or "")
        assert (record.window_start_ms, record.window_end_ms, record.input_digest) == (
            signed.window_start_ms, signed.window_end_ms, signed.input_digest)  # fmt: skip
        ours, theirs = outcome_bundle(record, include_raw=False), outcome_bundle(signed, include_raw=False)
        assert _by_type(ours, "Binary") == []
        raw, signed_raw = _by_type(ours, "DocumentReference")[0], _by_type(theirs, "DocumentReference")[0]
        assert raw["content"][0]["attachment"] | {"url": ""} == signed_raw["content"][0]["attachment"] | {"url": ""}
        assert raw["description"] == signed_raw["description"]
        values = [(o["code"], o.get("valueQuantity")) for o in _by_type(ours, "Observation")]
        assert values == [(o["code"], o.get("valueQuantity")) for o in _by_type(theirs, "Observation")]
        assert any(q is not None for _c, q in values)


def test_a_record_that_names_its_raw_data_cannot_carry_it(store: Store) -> None:
    cohort(store)
    windows.refresh(store)
    with store.transaction() as session:
        summary = windows.summaries(session, 14, limit=1)[0]
    record = standard_record(summary)
    with pytest.raises(ValueError, match="names its raw data"):
        outcome_bundle(record, include_raw=True)
    with pytest.raises(ValueError, match="SHA-256"):
        dataclasses.replace(record, input_digest="0" * 64)
    with pytest.raises(ValueError, match="no raw-data digest"):
        standard_record(dataclasses.replace(summary, raw=None))
    with pytest.raises(ValueError, match="policy"):
        standard_record(dataclasses.replace(summary, policy_hash="x"))
