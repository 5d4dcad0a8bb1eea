"""`engine.immutable`: value classes that compare and hash by their fields, and that the type checker holds frozen."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from bff.ingest.records import FeedReading, PatientRef
from engine import GlucoseUnit, Reading


def test_readings_compare_and_hash_by_their_fields() -> None:
    one = Reading("P1", 1_000, 120.0, GlucoseUnit.MG_DL)
    assert one == Reading("P1", 1_000, 120.0, GlucoseUnit.MG_DL)
    assert one != Reading("P1", 1_000, 121.0, GlucoseUnit.MG_DL)
    assert len({one, Reading("P1", 1_000, 120.0, GlucoseUnit.MG_DL)}) == 1
    assert {PatientRef("mrn", "7"): 1}[PatientRef("mrn", "7")] == 1


def test_the_type_checker_refuses_any_assignment_to_a_field(tmp_path: Path) -> None:
    snippet = tmp_path / "assigns.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from bff.ingest.records import FeedReading, PatientRef
            from engine import GlucoseUnit, Reading

            def change(reading: Reading, fed: FeedReading, ref: PatientRef) -> None:
                reading.value = 5.0
                fed.time_ms = 0
                ref.value = "someone else"
            """
        )
    )
    out, _err, status = mypy_api.run(
        [str(snippet), "--strict", "--no-incremental", "--follow-imports=silent", "--cache-dir", str(tmp_path)]
    )
    assert status == 1, out
    for name in ("value", "time_ms"):
        assert f'Property "{name}" defined in' in out
    assert out.count("is read-only") == 3, out


@pytest.mark.parametrize("cls", [Reading, FeedReading, PatientRef])
def test_no_instance_dictionary(cls: type) -> None:
    assert "__slots__" in vars(cls)
