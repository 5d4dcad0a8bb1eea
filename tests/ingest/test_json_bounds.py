"""`bounds.loads_bounded`, the one JSON reader of every feed: orjson where it reads what `json` reads, `json` where it
would not (an integer past 64 bits), and the same refusals either way."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bff.ingest.bounds import NOT_QUICK, loads_bounded, loads_quick


@pytest.mark.parametrize("number", ["18446744073709551615", "18446744073709551616", "1" * 19, "9" * 40, "-" + "7" * 25])
def test_a_long_integer_is_read_as_json_reads_it(number: str) -> None:
    value = loads_bounded('{"v": ' + number + ', "t": "2024-01-01T00:00:00Z"}')
    assert value["v"] == int(number)
    assert type(value["v"]) is int


def test_a_long_integer_beside_text_that_is_not_ascii_is_read_as_json_reads_it() -> None:
    # The digit runs are looked for in the UTF-8 bytes: a character of several bytes never reads as a digit.
    value = loads_bounded('{"name": "Zoë 血糖 ٣٣٣", "v": 1234567890123456789012}')
    assert value == {"name": "Zoë 血糖 ٣٣٣", "v": 1234567890123456789012}
    assert type(value["v"]) is int


REFUSED = [('{"a": "x\\u0000y"}', "NUL"), ('{"a": "\\ud800"}', "lone surrogate"), ("[" * 200 + "]" * 200, "nested"),
           ('{"a": }', "invalid JSON")]  # fmt: skip


@pytest.mark.parametrize(("text", "reason"), REFUSED)
def test_what_is_refused_is_refused_with_its_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        loads_bounded(text)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))  # fmt: skip
def test_any_json_value_reads_as_json_reads_it(value: object) -> None:
    text = json.dumps(value)
    try:
        expected = json.loads(text)
    except RecursionError:  # pragma: no cover - too deep for the standard library
        return
    if "\\ud8" in text.lower() or "\\udc" in text.lower() or "\\u0000" in text:
        return  # refused on purpose (tests above)
    assert loads_bounded(text) == expected


# MARK: the quick read of NDJSON lines


def _bounded(data: bytes) -> tuple[str, object]:
    """What the slow path makes of a line's bytes: its value, or the reason it is refused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ("refused", "not UTF-8")
    try:
        return ("value", loads_bounded(text))
    except ValueError as exc:
        return ("refused", str(exc))


json_texts = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
).map(lambda value: json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
hostile = st.sampled_from([b'{"a": "x\\u0000y"}', b'{"a": "\\ud800"}', b"[" * 70 + b"]" * 70, b'{"a": }',
                           b'{"v": 12345678901234567890}', b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}', b"NaN",
                           b'{"a": 1e999}', b'{"a": "\\u00e9"}', b"\xef\xbb\xbf{}", b""])  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(json_texts | hostile | st.binary(max_size=40))
def test_the_quick_read_gives_the_bounded_value_or_leaves_the_line_to_it(data: bytes) -> None:
    """`loads_quick` never raises; what it reads is the value `loads_bounded` reads from the decoded text, and all
    it cannot vouch for (escapes, long digit runs, deep nesting, bytes that are not UTF-8 or not JSON) it leaves to
    the slow path, which gives the reason."""
    quick = loads_quick(data)
    if quick is NOT_QUICK:
        return
    assert _bounded(data) == ("value", quick)


def test_lines_the_slow_path_refuses_are_never_read_quickly() -> None:
    for data in (b'{"a": "x\\u0000y"}', b'{"a": "\\ud800"}', b"[" * 70 + b"]" * 70, b'{"a": "\xff"}', b'{"a": }'):
        assert loads_quick(data) is NOT_QUICK
        assert _bounded(data)[0] == "refused"
