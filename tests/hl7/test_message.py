"""bff.hl7 on python-hl7: escaping and unescaping (where we step around python-hl7), size limits, file splitting."""

from __future__ import annotations

import io
import logging
import time

import pytest

from bff.hl7 import Hl7Encoding, Hl7ParseError, OversizeMessage, iter_messages, parse_message, shown
from bff.hl7.message import MAX_MESSAGE_SEPARATORS, MAX_SEGMENTS

MSH = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|X1|P|2.5.1"


def test_escaping_keeps_utf8_and_writes_control_characters_as_two_hex_digits() -> None:
    encoding = Hl7Encoding()
    assert encoding.escape_text("Åsa|Ö^1") == "Åsa\\F\\Ö\\S\\1"  # python-hl7 alone would write \\Xc5\\
    assert encoding.escape_text("a\tb\x00c\x85") == "a\\X09\\b\\X00\\c\\XC285\\"  # not python-hl7's "\\X 9\\"
    assert encoding.escape_text("line\rnext\nthird") == "line\\.br\\next\\.br\\third"
    assert (
        Hl7Encoding(field="#", component="$", repetition="*", escape="!", subcomponent="@").escape_text("a#b$c|d")
        == "a!F!b!S!c|d"
    )


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        ("\\XC3A9\\t\\XE9\\", "été"),  # UTF-8 bytes, else Latin-1
        ("5\\", "5\\"),  # unterminated: kept (python-hl7 would drop it)
        ("a\\\\b", "a\\\\b"),  # empty sequence: kept
        ("\\Zabc\\\\C2842\\\\X4\\", "\\Zabc\\\\C2842\\\\X4\\"),  # what python-hl7 logs and drops: kept
        ("\\H\\bold\\N\\ \\.br\\x \\.in\\y", "bold \nx     y"),  # read by python-hl7 with our table
    ],
)
def test_unescaping_reads_what_it_can_and_keeps_the_rest_as_written(
    raw: str, read: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert Hl7Encoding().unescape(raw) == read
    assert caplog.records == []  # nothing of the field reaches a log


def test_msh_2_without_escape_and_subcomponent_keeps_them_as_data() -> None:
    message = parse_message("MSH|^~|A|B\rNTE|1||a\\F\\b&c^d\r")
    assert message.encoding == Hl7Encoding(escape="", subcomponent="")
    nte = message.segment("NTE")
    assert nte is not None
    assert nte.components(3) == ["a\\F\\b&c", "d"]
    assert nte.subcomponents(3) == ["a\\F\\b&c"]
    assert message.msh.fields[:4] == ("MSH", "|", "^~", "A")


def test_a_message_over_the_segment_or_separator_limits_is_refused_with_a_reason() -> None:
    with pytest.raises(Hl7ParseError, match=f"segments \\(limit {MAX_SEGMENTS}\\): send it in parts"):
        parse_message(MSH + "\rNTE|1" * (MAX_SEGMENTS + 1))
    with pytest.raises(Hl7ParseError, match=r"segment 2 \(NTE\) has 20001 separators \(limit 10000\)"):
        parse_message(MSH + "\rNTE|" + "~" * 20_000)
    many = "\r".join(["NTE|" + "^" * 9_000] * (MAX_MESSAGE_SEPARATORS // 9_000 + 1))
    with pytest.raises(Hl7ParseError, match=f"separators \\(limit {MAX_MESSAGE_SEPARATORS}\\)"):
        parse_message(MSH + "\r" + many)
    with pytest.raises(Hl7ParseError, match="MSH-3 is 70000 characters long"):
        parse_message(MSH.replace("|A|", "|" + "A" * 70_000 + "|"))
    with pytest.raises(Hl7ParseError) as caught:
        parse_message("MSH|" + "^" * 100)
    assert str(caught.value).startswith(f"MSH-2 encoding characters {'^' * 20!r}... (100 characters)")


def test_shown_cuts_long_input() -> None:
    assert shown("abc") == "'abc'"
    assert shown("x" * 300) == f"{'x' * 200!r}... (300 characters)"


def test_a_huge_line_is_split_in_linear_time_and_refused_whole() -> None:
    line = b"NTE|1||" + b"x" * (64 * 2**20)
    data = MSH.encode() + b"\r" + line + b"\r" + MSH.replace("X1", "X2").encode() + b"\r"
    started = time.monotonic()
    big, small = iter_messages(io.BytesIO(data))
    assert time.monotonic() - started < 10  # ~1 s here; the quadratic splitter took minutes for this
    assert isinstance(big, OversizeMessage)
    assert big.size == len(MSH) + 1 + len(line) + 1
    assert len(big) <= 64 * 1024
    assert parse_message(small).control_id == "X2"
