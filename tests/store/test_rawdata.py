"""The canonical NDJSON line of a reading (bff.store.rawdata) is written by hand for speed; it must be byte for byte
what `json.dumps(canonical, sort_keys=True, separators=(",", ":"))` writes, or every input digest would change."""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bff.store.outcomes import StoredReading, readings_ndjson
from bff.store.rawdata import RawDigest, canonical_line, canonical_lines, ndjson_of_lines

text = st.text(st.characters(codec="utf-8"), max_size=40)  # quotes, backslashes, controls, emoji, surrogates excluded
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6))


def reference(key: str, t: int, value: float, unit: str, flag: int, device: str, feed: str, record: str) -> str:
    data = {"key": key, "t": t, "value": value, "unit": unit, "flag": flag, "device": device, "feed": feed,
            "record": record}  # fmt: skip
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@settings(max_examples=400, deadline=None)
@given(key=text, t=st.integers(-(2**62), 2**62), value=numbers, unit=text, flag=st.integers(0, 2), device=text,
       feed=text, record=text)  # fmt: skip
def test_the_line_is_json_dumps_exactly(
    key: str, t: int, value: float, unit: str, flag: int, device: str, feed: str, record: str
) -> None:
    assert canonical_line(key, t, value, unit, flag, device, feed, record) == reference(
        key, t, value, unit, flag, device, feed, record
    )


def test_numpy_scalars_are_written_as_python_numbers() -> None:
    line = canonical_line("k", np.int64(5), np.float64(120.0), "mg/dL", np.int8(1), "d", "fhir", "r")
    assert line == reference("k", 5, 120.0, "mg/dL", 1, "d", "fhir", "r")
    assert '"value":120.0' in line
    assert '"value":7.1' in canonical_line("k", 1, np.float64(7.1), "mmol/L", 0, "d", "csv", "r")


def test_readings_ndjson_sorts_by_time_then_key_and_ends_each_line() -> None:
    a = StoredReading(1, "bb", 20, 5.5, "mmol/L", 99.1, 0, "libre-2", "csv", 'r"1', None)
    b = StoredReading(2, "aa", 20, 100.0, "mg/dL", 100.0, 0, "dexcom-g6", "fhir", "r\u00e92", None)
    c = StoredReading(3, "zz", 10, 80, "mg/dL", 80.0, 2, "dexcom-g6", "fhir", "", None)
    ndjson = readings_ndjson([a, b, c])
    expected = "".join(json.dumps(r.canonical(), sort_keys=True, separators=(",", ":")) + "\n" for r in (c, b, a))
    assert ndjson == expected.encode()
    assert readings_ndjson([]) == b"" == ndjson_of_lines([])


def test_the_raw_digest_names_the_bytes() -> None:
    data = b'{"t":1}\n'
    raw = RawDigest.of(data)
    assert raw.sha256 == hashlib.sha256(data).hexdigest()
    assert base64.b64decode(raw.sha1) == hashlib.sha1(data).digest()
    assert raw.size == 8


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(text, st.integers(-(2**62), 2**62), st.floats(allow_nan=True, allow_infinity=True),
                          st.sampled_from(["mg/dL", "mmol/L", 'u"\\']), st.integers(0, 2), text,
                          st.sampled_from(["fhir", "csv", "hl7"]), text), max_size=30))  # fmt: skip
def test_many_lines_at_once_are_the_lines_one_at_a_time(rows: list[tuple]) -> None:
    columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(8)]
    keys, times, values, units, flags, devices, feeds, records = columns
    many = canonical_lines(keys, np.array(times, dtype=np.int64), np.array(values, dtype=np.float64), units,
                           np.array(flags, dtype=np.int8), devices, feeds, records)  # fmt: skip
    assert many == [canonical_line(*row) for row in rows]
