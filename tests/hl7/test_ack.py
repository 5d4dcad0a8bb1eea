"""ACKs: built on python-hl7's create_ack, always in the standard separators, every echoed value escaped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from bff.hl7 import build_ack, parse_ack, parse_message

NOW = datetime(2024, 5, 2, 12, 0, 1, tzinfo=UTC)


def strict_ack(text: str) -> None:
    assert hl7apy_parse(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True).validate() is True


def test_an_ack_swaps_the_applications_and_echoes_the_control_id() -> None:
    original = "MSH|^~\\&|CGMHUB|HUB|GB|SITE|20240502103000+0000||ORU^R01^ORU_R01|C-77|T|2.5.1\rPID|1||X\r"
    ack = build_ack(original, "AE", "1 result(s) quarantined: OBX-5 value 'x' is not a number", NOW)
    assert ack.message == (
        "MSH|^~\\&|GB|SITE|CGMHUB|HUB|20240502120001+0000||ACK^R01^ACK|AC-77|T|2.5.1\r"
        "MSA|AE|C-77|1 result(s) quarantined: OBX-5 value 'x' is not a number\r"
    )
    assert (ack.code, ack.control_id) == ("AE", "C-77")
    strict_ack(ack.message)
    assert parse_ack(ack.message).text == ack.text


def test_a_2_3_ack_has_a_two_component_msh_9_and_echoes_the_trigger() -> None:
    ack = build_ack("MSH|^~\\&|A|B|C|D|2024||ADT^A01|Z9|P|2.3\r", "AR", "not an ORU^R01 message", NOW)
    assert parse_message(ack.message).msh.field(9) == "ACK^A01"


def test_msa_3_is_one_line_of_at_most_200_characters_with_separators_escaped() -> None:
    ack = build_ack("MSH|^~\\&|A|B|C|D|2024||ORU^R01|Q1|P|2.5.1\r", "AE", "a|b\rc^" + "x" * 500, NOW)
    msa = parse_message(ack.message).segment("MSA")
    assert msa is not None
    assert msa.field(3).startswith("a\\F\\b c\\S\\x")
    assert len(msa.component(3)) == 200


def test_an_ack_with_text_beyond_ascii_declares_utf8() -> None:
    original = "MSH|^~\\&|CGMHUB|Klinik Zürich|GB|SITE|2024||ORU^R01|U1|P|2.5.1\r"
    ack = build_ack(original, "AE", "unknown unit 'mg/dℓ' in OBX-6", NOW)
    parsed = parse_message(ack.message)
    assert parsed.msh.field(6) == "Klinik Zürich"
    assert parsed.msh.field(18) == "UNICODE UTF-8"
    assert parse_message(build_ack(original.replace("ü", "u"), "AA", "ok", NOW).message).msh.field(18) == ""
    strict_ack(ack.message)


@pytest.mark.parametrize(
    ("original", "control_id"),
    [
        ("this is not HL7", ""),
        ("MSH|^^\\&|A|B|C|D|2024||ORU^R01|NAIVE1|P|2.5.1\r", "NAIVE1"),  # MSH-2 invalid: MSH-10 read naively
        ("MSH|^~\\&|A|B|C|D|2024||ORU^R01|C^1|P|9.9\r", "C"),  # a nonsense version: the ACK says 2.5.1
        ("MSH|^~\\&|" + "A" * 70_000 + "|B|C|D|2024||ORU^R01|BIG|P|2.5.1\r", "BIG"),  # MSH-3 over the limit
    ],
)
def test_an_ack_for_a_message_that_cannot_be_read_is_still_well_formed(original: str, control_id: str) -> None:
    ack = build_ack(original, "AR", "rejected", NOW)
    assert ack.control_id == control_id
    parsed = parse_message(ack.message)
    assert len(parsed.msh.fields) == 13
    assert parsed.version == "2.5.1"
    assert parsed.control_id.startswith("A")
    assert len(parsed.control_id) <= 20
    if control_id:  # MSA-2 is required: an ACK of something that named no MSH-10 can only leave it empty
        strict_ack(ack.message)


def test_a_control_id_with_separators_is_escaped_in_msa_2_and_left_out_of_the_acks_own_id() -> None:
    original = "MSH#$~\\&#A|X#B#C#D#2024##ORU$R01#ID|^1#P#2.5.1\r"  # `|` and `^` are data here
    ack = build_ack(original, "AA", "ok", NOW)
    parsed = parse_message(ack.message)
    msa = parsed.segment("MSA")
    assert msa is not None
    assert msa.field(2) == "ID\\F\\\\S\\1"
    assert msa.component(2) == "ID|^1"
    assert parsed.control_id == "AID1"
    assert parsed.msh.component(5) == "A|X"
    strict_ack(ack.message)


def test_an_unknown_ack_code_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not AA, AE or AR"):
        build_ack("MSH|^~\\&|A\r", "CA", "", NOW)
