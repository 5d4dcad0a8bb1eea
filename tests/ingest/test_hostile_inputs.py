"""Inputs an attacker sent (issue 10): each becomes a problem of its own record, in bounded time and memory.

Each test names the row of the issue's table it answers: 2 (years 1 and 9999), 3 (an unbalanced quote in a
LibreView export), 4 (deep nesting), 5 (bytes that are not UTF-8, fields over the csv limit), 6 (a multi-line
CSV field), 8 (a huge Dexcom trend). Before the fix each of them crashed the parse, lost records silently, or
stored the hostile value.
"""

from __future__ import annotations

import io
import tracemalloc
from typing import Any

import pytest

from bff.ingest.records import FeedItem, FeedProblem, FeedReading
from tests.fuzz.feeds import (
    CASES,
    ENGINE_COLUMN,
    LIBRE_COLUMN,
    FeedCase,
    Raw,
    deep,
    engine_file,
    engine_rows,
    libreview_file,
    libreview_rows,
    with_value,
)

JSON_CASES = [CASES[name] for name in ("dexcom", "fhir-bundle", "fhir-ndjson")]
#: A string field of record 2 in each JSON feed.
STRING_PATH = {"dexcom": ("transmitterId",), "fhir-bundle": ("device", "display"), "fhir-ndjson": ("device", "display")}


def parse(case: FeedCase, data: bytes) -> list[FeedItem]:
    return list(case.parser().parse(io.BytesIO(data), case.options))


def problems(items: list[FeedItem]) -> list[FeedProblem]:
    return [i for i in items if isinstance(i, FeedProblem)]


def only_problem_is(case: FeedCase, items: list[FeedItem], index: int, n: int) -> FeedProblem:
    """Record `index` is the one problem; every other record of the `n` is a reading."""
    (problem,) = problems(items)
    assert problem.locator == case.locator(index)
    assert sum(isinstance(i, FeedReading) for i in items) == n - 1
    assert len(problem.reason) <= 300
    return problem


# MARK: row 2


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
@pytest.mark.parametrize("year", ["year_1", "year_9999"])
def test_row2_a_year_1_or_9999_time_is_a_problem_of_its_record_in_every_feed(case: FeedCase, year: str) -> None:
    records = case.records(5)
    if case.name == "libreview":
        records = [r for r in libreview_rows(12) if r[3] == "0"][:5]
    data = case.file(with_value(records, 2, case.time_path, getattr(case, year)))
    problem = only_problem_is(case, parse(case, data), 2, 5)
    assert ("year 1 is outside 1900–2200" if year == "year_1" else "year 9999 is outside 1900–2200") in problem.reason


# MARK: row 3


def test_row3_an_unbalanced_quote_in_a_libreview_note_loses_no_other_row() -> None:
    case = CASES["libreview"]
    rows = libreview_rows(1500)
    assert rows[9][3] == "6"  # a note
    rows = with_value(rows, 9, (LIBRE_COLUMN["Notes"],), Raw(b'"an unbalanced quote'))
    items = parse(case, libreview_file(rows))
    (problem,) = problems(items)
    assert problem.locator == case.locator(9)
    assert problem.reason.startswith("unbalanced quote")
    assert problem.payload.endswith('"an unbalanced quote' + "," * 5)
    parser_skipped = 1500 // 10 - 1  # the other notes
    assert sum(isinstance(i, FeedReading) for i in items) == 1500 - 1 - parser_skipped


def test_row3_a_libreview_note_over_two_lines_keeps_its_row_whole() -> None:
    case = CASES["libreview"]
    rows = with_value(libreview_rows(12), 0, (LIBRE_COLUMN["Notes"],), "first line\nsecond line")
    parser = case.parser()
    items = list(parser.parse(io.BytesIO(libreview_file(rows)), case.options))
    reading = items[0]
    assert isinstance(reading, FeedReading)
    assert reading.locator == "lines 3–4"
    assert not problems(items)
    assert getattr(parser, "skipped", None) == {"note or time change": 1}


# MARK: row 4


@pytest.mark.parametrize("case", JSON_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("depth", [100, 16_000])
def test_row4_deep_nesting_is_one_problem_built_in_bounded_memory(case: FeedCase, depth: int) -> None:
    data = case.file(with_value(case.records(5), 2, STRING_PATH[case.name], deep(depth)))
    tracemalloc.start()
    try:
        items = parse(case, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    problem = only_problem_is(case, items, 2, 5)
    assert "nested more than 64 levels deep" in problem.reason
    assert peak < 8 * 2**20, peak  # the file is 32 KB at depth 16,000; before: 751 MB, then a RecursionError


# MARK: row 5


@pytest.mark.parametrize("case", [*JSON_CASES, CASES["libreview"], CASES["csv"]], ids=lambda c: c.name)
@pytest.mark.parametrize(
    "bad", [b"\xe9", b"\xc0\xaf", b"\xed\xa0\x80", b"\xff"], ids=["latin1", "overlong", "surrogate", "ff"]
)
def test_row5_bytes_that_are_not_utf8_make_their_record_a_problem_naming_the_byte(case: FeedCase, bad: bytes) -> None:
    if case.name in STRING_PATH:
        path: tuple[Any, ...] = STRING_PATH[case.name]
        value: Any = Raw(b'"caf' + bad + b'"')
    else:
        path = (0,) if case.name == "libreview" else (ENGINE_COLUMN["device"],)
        value = Raw(b"caf" + bad)
    records = case.records(5) if case.name != "libreview" else [r for r in libreview_rows(12) if r[3] == "0"][:5]
    data = case.file(with_value(records, 2, path, value))
    problem = only_problem_is(case, parse(case, data), 2, 5)
    offset = data.index(b"caf" + bad) + 3
    assert f"byte 0x{bad[0]:02X} at byte offset {offset:,} is not UTF-8" in problem.reason
    assert "iconv" in problem.reason


@pytest.mark.parametrize("case", [CASES["libreview"], CASES["csv"]], ids=lambda c: c.name)
def test_row5_a_csv_field_over_the_csv_limit_is_a_problem_of_its_row(case: FeedCase) -> None:
    column = LIBRE_COLUMN["Notes"] if case.name == "libreview" else ENGINE_COLUMN["record_id"]
    records = case.records(5) if case.name != "libreview" else [r for r in libreview_rows(12) if r[3] == "0"][:5]
    data = case.file(with_value(records, 2, (column,), "x" * 131_073))
    problem = only_problem_is(case, parse(case, data), 2, 5)
    assert "a field is 131,073 characters (at most 131,072)" in problem.reason
    assert len(problem.payload) > 131_073  # the whole row, for a person to see


@pytest.mark.parametrize("case", JSON_CASES, ids=lambda c: c.name)
def test_row5_a_json_string_over_the_limits_is_a_problem_of_its_record(case: FeedCase) -> None:
    data = case.file(with_value(case.records(5), 2, STRING_PATH[case.name], "x" * 131_073))
    problem = only_problem_is(case, parse(case, data), 2, 5)
    assert "131,073 characters (at most" in problem.reason


# MARK: row 6


def test_row6_a_multi_line_quoted_csv_field_is_quarantined_whole_with_its_line_range() -> None:
    case = CASES["csv"]
    rows = with_value(engine_rows(4), 1, (ENGINE_COLUMN["device"],), "dexcom\nline")
    data = engine_file(rows)
    items = parse(case, data)
    (problem,) = problems(items)
    assert problem.locator == "lines 3–4"
    assert problem.payload == 'P-fuzz,2024-03-01T00:05:00+00:00,87,mg/dL,"dexcom\nline",r-1'
    assert problem.reason == "device holds a line break (an unbalanced quote?): 'dexcom\\nline'"
    assert [i.locator for i in items] == ["line 2", "lines 3–4", "line 5", "line 6"]


# MARK: row 8


@pytest.mark.parametrize(("size", "reason"), [(2048, "trend is 2,048 characters (at most 1,024)"),
                                              (3 * 2**20, "over 1,048,576 bytes (1 MiB)")])  # fmt: skip
def test_row8_a_huge_dexcom_trend_is_a_problem_never_an_extra(size: int, reason: str) -> None:
    case = CASES["dexcom"]
    data = case.file(with_value(case.records(3), 1, ("trend",), "u" * size))
    problem = only_problem_is(case, parse(case, data), 1, 3)
    assert reason in problem.reason
    assert len(problem.payload) < 8 * 1024  # cut: the record's start, never the 3 MB value
    readings = [i for i in parse(case, data) if isinstance(i, FeedReading)]
    assert all(len(v) <= 1024 for r in readings for v in r.extra.values())


@pytest.mark.parametrize("case", JSON_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("escape", [b'"\\udfff\\ud800"', b'"x\\ud800"', b'"\\\\\\ud800"'])
def test_row5_an_unpaired_surrogate_escape_is_a_problem_of_its_record(case: FeedCase, escape: bytes) -> None:
    data = case.file(with_value(case.records(5), 2, STRING_PATH[case.name], Raw(escape)))
    problem = only_problem_is(case, parse(case, data), 2, 5)
    assert "surrogate" in problem.reason


@pytest.mark.parametrize("case", JSON_CASES, ids=lambda c: c.name)
def test_row5_a_surrogate_pair_and_an_escaped_backslash_are_text(case: FeedCase) -> None:
    records = with_value(case.records(2), 1, STRING_PATH[case.name], Raw(b'"\\ud83d\\ude00 \\\\ud800"'))
    items = parse(case, case.file(records))
    assert not problems(items)


@pytest.mark.parametrize("case", [CASES["libreview"], CASES["csv"]], ids=lambda c: c.name)
def test_row5_a_csv_line_over_1_mib_is_one_problem_and_the_next_rows_are_read(case: FeedCase) -> None:
    column = LIBRE_COLUMN["Notes"] if case.name == "libreview" else ENGINE_COLUMN["record_id"]
    records = case.records(5) if case.name != "libreview" else [r for r in libreview_rows(12) if r[3] == "0"][:5]
    items = parse(case, case.file(with_value(records, 2, (column,), "y" * (2**20 + 10))))
    problem = only_problem_is(case, items, 2, 5)
    assert problem.reason.startswith("the line is 1,048,")
    assert problem.payload.endswith(" bytes in all]")
    assert len(problem.payload) <= 2**20
