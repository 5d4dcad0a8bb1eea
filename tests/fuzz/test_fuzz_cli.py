"""Fuzzing `glucobridge ingest` and `glucobridge outcomes` in-process, each example on a fresh SQLite store.

Whatever the input, the command exits 0 or 2 (2: one line on stderr), never with a traceback. Record level:
the summary accounts for every record (added + already present + quarantined + skipped = records in), and a
refused file writes nothing. Byte level: when every change was made in place (bytes flipped or inserted, so no
record can vanish without a trace), a file that stores fewer readings than before quarantines something or
skips more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.feeds import CASES, ENGINE_COLUMN, FeedCase, engine_file, engine_rows, with_value
from tests.fuzz.hostile import TIMES, Stores, csv_hostile, fuzz_settings, mutated
from tests.fuzz.test_fuzz_feeds import RECORDS, apply, byte_input, may_refuse, quoted_values, record_mutations

BYTE_INPUTS = [
    ("dexcom_egvs_mgdl.json", CASES["dexcom"]),
    ("libreview_us_mgdl.csv", CASES["libreview"]),
    ("fhir_bundle.json", CASES["fhir-bundle"]),
    ("fhir_readings.ndjson", CASES["fhir-ndjson"]),
    ("generated:csv", CASES["csv"]),
]

#: The summary of each byte input ingested undamaged.
BASELINES: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", name="stores")
def fx_stores(tmp_path_factory: pytest.TempPathFactory) -> Stores:
    return Stores(tmp_path_factory.mktemp("fuzz-stores"))


def ingest(stores: Stores, case: FeedCase, data: bytes, root: Path) -> Any:
    path = root / f"input-{case.name}"
    path.write_bytes(data)
    return stores.run(["ingest", str(path), "--feed", case.feed, "--site", "fuzz", *case.cli_args])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
@given(data=st.data())
@fuzz_settings(15)
def test_ingest_accounts_for_every_record(stores: Stores, case: FeedCase, data: st.DataObject) -> None:
    n = RECORDS[case.name]
    mutations = data.draw(record_mutations(case, n), label="mutations")
    outcome = ingest(stores, case, apply(case, n, mutations), stores.root)
    summary = outcome.summary
    if summary is None:  # refused as a whole: one line, nothing written
        assert outcome.code == 2
        assert may_refuse(case, mutations), outcome.err
        assert outcome.readings == 0
        return
    assert outcome.readings == summary["added"]
    if outcome.code == 2:
        assert summary["added"] + summary["already_present"] == 0
        assert summary["quarantined"] > 0
    if case.name in ("libreview", "csv") and quoted_values(mutations) > 1:
        return  # two quotes may pair across rows (see test_fuzz_feeds); the parser test checks nothing is lost
    assert outcome.accounted() == n, (outcome.out, outcome.err)


@pytest.mark.parametrize(("name", "case"), BYTE_INPUTS, ids=[name for name, _ in BYTE_INPUTS])
@given(data=st.data())
@fuzz_settings(12)
def test_ingest_of_damaged_bytes_exits_0_or_2_and_loses_nothing_silently(
    stores: Stores, name: str, case: FeedCase, data: st.DataObject
) -> None:
    original = byte_input(name)
    if name not in BASELINES:
        BASELINES[name] = ingest(stores, case, original, stores.root).summary or {}
    before = BASELINES[name]
    changed, in_place = data.draw(mutated(original), label="bytes")
    outcome = ingest(stores, case, changed, stores.root)
    summary = outcome.summary
    if summary is None:
        assert outcome.readings == 0
        return
    stored = summary["added"] + summary["already_present"]
    if in_place and stored < before["added"] + before["already_present"]:
        more_skipped = sum(summary["skipped"].values()) > sum(before["skipped"].values())
        assert summary["quarantined"] > 0 or more_skipped, (outcome.out, outcome.err)


@given(data=st.data(), skip_invalid=st.booleans())
@fuzz_settings(40)
def test_outcomes_exits_0_or_2_with_one_line(stores: Stores, data: st.DataObject, skip_invalid: bool) -> None:
    rows = engine_rows(6)
    for index in data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True), label="rows"):
        column = data.draw(st.sampled_from(list(ENGINE_COLUMN.values())), label="column")
        rows = with_value(rows, index, (column,), data.draw(csv_hostile(len(ENGINE_COLUMN), TIMES), label="value"))
    payload = engine_file(rows)
    if data.draw(st.booleans(), label="damage the bytes too"):
        payload, _ = data.draw(mutated(payload), label="bytes")
    path = stores.root / "outcomes.csv"
    path.write_bytes(payload)
    outcome = stores.run(["outcomes", str(path), *(["--skip-invalid"] if skip_invalid else [])])
    if outcome.code == 0:
        assert outcome.out.startswith("{")
        assert outcome.err == "" or outcome.err.startswith("skipped ")
    else:
        assert outcome.out == ""


def test_the_byte_inputs_are_stored_whole_before_they_are_damaged(stores: Stores) -> None:
    """The baseline of the byte-level test: each input ingests (exit 0) and stores readings."""
    for name, case in BYTE_INPUTS:
        outcome = ingest(stores, case, byte_input(name), stores.root)
        assert outcome.code == 0, outcome.err
        assert outcome.summary is not None
        assert outcome.summary["added"] > 0
