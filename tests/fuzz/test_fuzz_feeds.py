"""Fuzzing each feed's parser (Dexcom JSON, LibreView CSV, the engine CSV, FHIR Bundle and NDJSON).

Record level: among N valid records, 1–3 fields of records are replaced by hostile values (odd years, huge
fields, deep nesting, bytes that are not UTF-8, NULs, quotes, lines, any JSON). Every record must come out as
a reading, a problem or a counted skip (N in, N out), unless the input is refused as a whole for a reason that
belongs to the whole file. Byte level: the fixtures with bytes flipped, inserted, deleted, cut or doubled: only
a FeedFormatError may escape. Both check every item (bounded, encodable text; plausible times).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bff.ingest.records import FeedFormatError, FeedItem, FeedProblem, FeedReading, ParseOptions, Parser
from bff.ingest.registry import parser_for
from tests.fuzz.feeds import CASES, ENGINE_HEADER, FeedCase, Raw, with_value
from tests.fuzz.feeds import _observation as _fhir_observation
from tests.fuzz.hostile import (
    LIBRE_TIMES,
    LIBRE_WIDTH,
    SYNTAX_BREAKERS,
    TIMES,
    check_items,
    count_out,
    csv_hostile,
    fuzz_settings,
    json_hostile,
    mutated,
)

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
RECORDS = {"dexcom": 6, "fhir-bundle": 6, "fhir-ndjson": 6, "libreview": 12, "csv": 6}
_FHIR_PATHS: list[tuple[Any, ...]] = [
    (), ("resourceType",), ("id",), ("status",), ("code",), ("code", "coding", 0, "code"),
    ("code", "coding", 0, "system"), ("subject",), ("subject", "reference"), ("effectiveDateTime",),
    ("valueQuantity",), ("valueQuantity", "value"), ("valueQuantity", "code"), ("valueQuantity", "comparator"),
    ("device",), ("device", "reference"), ("device", "display"), ("identifier", 0, "value"),
    ("identifier", 0, "system"),
]  # fmt: skip
PATHS: dict[str, list[tuple[Any, ...]]] = {
    "dexcom": [(), ("recordId",), ("systemTime",), ("displayTime",), ("value",), ("unit",), ("status",), ("trend",),
               ("trendRate",), ("transmitterId",), ("transmitterGeneration",), ("transmitterTicks",)],
    "fhir-bundle": _FHIR_PATHS,
    "fhir-ndjson": _FHIR_PATHS,
    "libreview": [(i,) for i in range(LIBRE_WIDTH)],
    "csv": [(i,) for i in range(len(ENGINE_HEADER))],
}  # fmt: skip
Mutation = tuple[int, tuple[Any, ...], Any]


@st.composite
def record_mutations(draw: st.DrawFn, case: FeedCase, n: int) -> list[Mutation]:
    if case.name == "libreview":
        values = csv_hostile(LIBRE_WIDTH, LIBRE_TIMES + TIMES)
    elif case.name == "csv":
        values = csv_hostile(len(ENGINE_HEADER), TIMES)
    else:
        values = json_hostile
    # One change per record: in CSV, a stray quote with another quoted field in the same row is ambiguous (the
    # row may come out as two problems); no reader can tell where such a row ends.
    indices = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3, unique=True))
    return [(index, draw(st.sampled_from(PATHS[case.name])), draw(values)) for index in indices]


def apply(case: FeedCase, n: int, mutations: list[Mutation]) -> bytes:
    records = case.records(n)
    for index, path, value in mutations:
        if not path:
            records = [*records[:index], value, *records[index + 1 :]]
            continue
        try:
            records = with_value(records, index, path, value)
        except (TypeError, KeyError, IndexError):  # an earlier change made the record something else
            continue
    return case.file(records)


def may_refuse(case: FeedCase, mutations: list[Mutation]) -> bool:
    """Whether these changes may make the input unreadable as a whole: JSON that breaks the syntax (an integer
    of 30 digits overflows the tokeniser), or the first NDJSON line no longer a resource (the format check)."""
    if any(isinstance(value, Raw) and value.data in SYNTAX_BREAKERS for _, _, value in mutations):
        return True
    return case.name == "fhir-ndjson" and any(index == 0 for index, _, _ in mutations)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
@given(data=st.data())
@fuzz_settings(120)
def test_every_record_is_read_quarantined_or_counted_as_skipped(case: FeedCase, data: st.DataObject) -> None:
    n = RECORDS[case.name]
    mutations = data.draw(record_mutations(case, n), label="mutations")
    parser = case.parser()
    items, refused = parse(parser, apply(case, n, mutations), case.options)
    if refused is not None:
        assert may_refuse(case, mutations), refused
        assert len(str(refused)) < 600
        return
    check_items(items)
    skipped = getattr(parser, "skipped", None)
    if case.name in ("libreview", "csv") and quoted_values(mutations) > 1:
        # Two quotes from two changes may pair across rows, as in a field over lines: no reader can tell. The
        # rows they take in are never lost without a trace: they end in a problem (a field with a line break).
        readings = sum(isinstance(i, FeedReading) for i in items)
        if readings + sum((skipped or {}).values()) < n:
            assert any(isinstance(i, FeedProblem) for i in items)
        return
    assert count_out(items, skipped) == n


def parse(parser: Parser, data: bytes, options: ParseOptions) -> tuple[list[FeedItem], FeedFormatError | None]:
    """The items, or the refusal of the whole input (any other exception fails the test)."""
    try:
        return list(parser.parse(io.BytesIO(data), options)), None
    except FeedFormatError as exc:
        return [], exc


def quoted_values(mutations: list[Mutation]) -> int:
    """How many changed CSV values put a quote into the file (a stray one, or the quotes around a value)."""
    return sum(
        1
        for _, _, value in mutations
        if (isinstance(value, Raw) and b'"' in value.data)
        or (isinstance(value, str) and any(c in value for c in ',"\r\n'))
    )


BYTE_INPUTS = [
    ("dexcom_egvs_mgdl.json", "dexcom", ParseOptions()),
    ("dexcom_egvs_mmol.json", "dexcom", ParseOptions()),
    ("libreview_us_mgdl.csv", "libreview", ParseOptions(input_tz="America/New_York")),
    ("libreview_eu_mmol.csv", "libreview", ParseOptions(input_tz="Europe/Berlin")),
    ("fhir_bundle.json", "fhir", ParseOptions()),
    ("fhir_readings.ndjson", "fhir", ParseOptions()),
    ("generated:csv", "csv", ParseOptions()),
]


def byte_input(name: str) -> bytes:
    if name.startswith("generated:"):
        case = CASES[name.partition(":")[2]]
        return case.file(case.records(RECORDS[case.name]))
    return (FEEDS / name).read_bytes()


@pytest.mark.parametrize(("name", "feed", "options"), BYTE_INPUTS, ids=[i[0] for i in BYTE_INPUTS])
@given(data=st.data())
@fuzz_settings(80)
def test_byte_mutations_only_ever_refuse_the_file_or_quarantine(
    name: str, feed: str, options: ParseOptions, data: st.DataObject
) -> None:
    changed, _ = data.draw(mutated(byte_input(name)), label="bytes")
    items, refused = parse(parser_for(feed, keep_payload=True), changed, options)
    if refused is not None:
        assert 0 < len(str(refused)) < 600
        return
    check_items(items)


# MARK: the FHIR parser's memo


class _Pipe(io.RawIOBase):
    """Bytes that cannot seek: the parser learns Patients and Devices as it meets them (no prescan)."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self.data.readinto(buffer)


def _both_ways(data: bytes, monkeypatch: pytest.MonkeyPatch, *, seekable: bool = True) -> list[Any]:
    from bff.ingest import fhir_feed  # noqa: PLC0415

    out = []
    for memo in (fhir_feed.MEMO_MAX, 0):
        monkeypatch.setattr(fhir_feed, "MEMO_MAX", memo)
        parser = parser_for("fhir")
        stream = io.BytesIO(data) if seekable else io.BufferedReader(_Pipe(data))
        try:
            out.append((list(parser.parse(stream, ParseOptions())), getattr(parser, "skipped", None)))
        except FeedFormatError as exc:
            out.append(("refused", str(exc)))
    return out


@pytest.mark.parametrize("case", [CASES["fhir-ndjson"], CASES["fhir-bundle"]], ids=["ndjson", "bundle"])
@given(data=st.data())
@fuzz_settings(60)
def test_the_fhir_memo_changes_nothing_the_parser_says(case: FeedCase, data: st.DataObject) -> None:
    """What a subject, device or code resolved to is remembered by its content (bff.ingest.fhir_feed._memoized):
    every item and every reason is the same as without the memo, under the same mutations as above."""
    mutations = data.draw(record_mutations(case, RECORDS[case.name]), label="mutations")
    with pytest.MonkeyPatch.context() as monkeypatch:
        memo, plain = _both_ways(apply(case, RECORDS[case.name], mutations), monkeypatch)
    assert memo == plain


def test_the_memo_forgets_when_a_patient_or_device_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a stream that cannot seek, a reading whose subject and device are in the input only later cannot use
    them (quarantined, no device key); once the Patient and the Device have been read, the same references
    resolve, memo or not."""
    reading = {**_fhir_observation(0), "subject": {"reference": "urn:uuid:p-1"},
               "device": {"reference": "urn:uuid:d-1"}}  # fmt: skip
    later = {**reading, "id": "obs-late", "identifier": [{"system": "urn:test:cgm", "value": "obs-late"}]}
    patient = {"resourceType": "Patient", "id": "pt-1"}
    device = {"resourceType": "Device", "id": "dv-1",
              "deviceName": [{"name": "Dexcom G7", "type": "user-friendly-name"}]}  # fmt: skip
    entries = [{"fullUrl": f"urn:uuid:{key}", "resource": r}
               for key, r in (("obs-0", reading), ("p-1", patient), ("d-1", device), ("obs-1", later))]  # fmt: skip
    data = json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}).encode()
    memo, plain = _both_ways(data, monkeypatch, seekable=False)
    assert memo == plain
    items = memo[0]
    assert isinstance(items[0], FeedProblem)
    assert "does not resolve" in items[0].reason
    assert isinstance(items[1], FeedReading)
    assert (items[1].patient.value, items[1].device) == ("Patient/pt-1", "dexcom-g7")
