"""A metric added to the catalogue (with a code) reaches every artefact and `verify` with no other change.

The stand-in is a made-up "time in tight range" coded under glucobridge's own code system and read from an
engine key that exists (the point is the wiring, not a new computation): it must appear in the FHIR Bundle, in the
ORU^R01, and be checked by verify — files touched: engine/catalogue.py (plus the engine, for a real new number).
"""

from __future__ import annotations

import pytest

from bff.hl7 import parse_message
from bff.resources.fhir import outcome_bundle
from bff.resources.oru import build_oru
from bff.resources.verify import verify_bundle
from engine import catalogue
from engine.catalogue import GLUCOBRIDGE_CODES, ONE, Code, Condition, Kind, Metric
from tests.resources.samples import sample_record

TITR = Metric(
    "titr", Condition.GLUCOSE, "Time in tight range 70-140 mg/dL (test stand-in)", "In tight range", Kind.PERCENT,
    "time_in_range_pct", ONE, {"": Code(GLUCOBRIDGE_CODES, "titr-test", "TITR (test)")},
)  # fmt: skip


@pytest.fixture(name="with_titr")
def fx_with_titr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalogue, "METRICS", (*catalogue.METRICS, TITR))
    monkeypatch.setattr(catalogue, "CATALOGUE", {**catalogue.CATALOGUE, "titr": TITR})


@pytest.mark.usefixtures("with_titr")
def test_a_new_coded_metric_is_exported_and_verified_everywhere() -> None:
    record = sample_record()
    expected = str(catalogue.filed(TITR, record.metrics))
    bundle = outcome_bundle(record)
    titr = [e["resource"] for e in bundle["entry"] if e["resource"].get("code", {}).get("coding", [{}])[0].get("code")
            == "titr-test"]  # fmt: skip
    assert len(titr) == 1
    assert str(titr[0]["valueQuantity"]["value"]) == expected
    report = verify_bundle(bundle)
    assert report.ok, report.text()
    assert any("titr-test" in c.what for c in report.checks)
    titr[0]["valueQuantity"]["value"] = float(expected) + 1  # verify refuses a changed value of the new metric too
    assert not verify_bundle(bundle).ok
    obx = [s for s in parse_message(build_oru(record).text).segments_named("OBX") if s.component(3, 1) == "titr-test"]
    assert [s.field(5) for s in obx] == [expected]
