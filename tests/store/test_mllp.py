"""The MLLP listener over real TCP: each message is a batch, answered AA, AE or AR with a reason."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse
from sqlalchemy import func, select

from app.cli import main
from bff.hl7 import MLLP_END, MLLP_START, Hl7Encoding, frame, parse_message
from bff.ingest.records import ParseOptions
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.mllp import MllpListener
from bff.store.models import QuarantineItem, Reading
from tests.store.feeds import hl7_messages, readings


class Running:
    """A listener served by an event loop in a thread, on an ephemeral port."""

    def __init__(self, store: Store) -> None:
        self.listener = MllpListener(Ingestor(store), site="site-h", options=ParseOptions(input_tz="UTC"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        _, self.port = asyncio.run_coroutine_threadsafe(self.listener.start("127.0.0.1", 0), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(name="listening")
def fx_listening(store: Store) -> Iterator[Running]:
    running = Running(store)
    try:
        yield running
    finally:
        running.close()


def exchange(port: int, *messages: str, chunked: bool = False) -> list[str]:
    """Send framed messages on one connection and read one ACK per message."""
    acks = []
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for message in messages:
            data = frame(message)
            if chunked:  # the frame arrives in pieces
                for i in range(0, len(data), 7):
                    sock.sendall(data[i : i + 7])
            else:
                sock.sendall(data)
            buffer = b""
            while not buffer.endswith(MLLP_END):
                chunk = sock.recv(65536)
                assert chunk, "connection closed before the ACK"
                buffer += chunk
            assert buffer.startswith(MLLP_START)
            acks.append(buffer[1 : -len(MLLP_END)].decode())
    return acks


def msa(ack: str) -> tuple[str, str, str]:
    message = parse_message(ack)
    segment = message.segment("MSA")
    assert segment is not None
    return segment.field(1), segment.field(2), Hl7Encoding().unescape(segment.field(3))


def test_good_message_is_stored_and_acknowledged_aa(listening: Running, store: Store) -> None:
    (message,) = hl7_messages(readings(12), per_message=12, control="OK")
    (ack,) = exchange(listening.port, message, chunked=True)
    code, control_id, text = msa(ack)
    assert (code, control_id) == ("AA", "OK00000")
    assert text == "12 reading(s) stored, 0 already present"
    assert parse_message(ack).msh.field(9).startswith("ACK")
    (again,) = exchange(listening.port, message)  # a resend after a lost ACK: stored once
    assert msa(again)[:2] == ("AA", "OK00000")
    assert "0 reading(s) stored, 12 already present" in msa(again)[2]
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == 12


def test_bad_results_are_quarantined_and_acknowledged_ae(listening: Running, store: Store) -> None:
    (message,) = hl7_messages(readings(3), per_message=3, control="AE")
    message = message.replace("|mg/dL^mg/dL^UCUM|", "|furlong^^UCUM|", 1)
    (ack,) = exchange(listening.port, message)
    code, _, text = msa(ack)
    assert code == "AE"
    assert text.startswith("1 result(s) quarantined: message 1 OBX 1:")
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == 2
        assert session.scalar(select(func.count()).select_from(QuarantineItem)) == 1


def test_a_message_that_is_not_oru_is_rejected_ar_and_kept(listening: Running, store: Store) -> None:
    (message,) = hl7_messages(readings(2), per_message=2, control="AR")
    (ack,) = exchange(listening.port, message.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"))
    code, control_id, text = msa(ack)
    assert (code, control_id) == ("AR", "AR00000")
    assert "not an ORU^R01 message" in text
    (garbage,) = exchange(listening.port, "this is not HL7")
    assert msa(garbage)[0] == "AR"
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == 0
        reasons = session.scalars(select(QuarantineItem.reason)).all()
    assert len(reasons) == 2


def test_several_messages_on_one_connection_get_one_ack_each(listening: Running, store: Store) -> None:
    messages = hl7_messages(readings(36), per_message=12, control="MULTI")
    acks = exchange(listening.port, *messages)
    assert [msa(a)[:2] for a in acks] == [("AA", "MULTI00000"), ("AA", "MULTI00001"), ("AA", "MULTI00002")]


def test_listen_mllp_command_serves_until_sigterm(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'mllp.db'}"}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "glucobridge"), "listen-mllp", "--port", str(port), "--site", "site-h",
         "--idle-timeout", "30", "--max-connections", "5"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"listening for HL7 v2 (MLLP) on 127.0.0.1:{port}")
        assert "(idle timeout 30 s, at most 5 connections)" in line
        (message,) = hl7_messages(readings(4), per_message=4, control="CLI")
        assert msa(exchange(port, message)[0])[0] == "AA"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "stopped" in out


def test_listen_mllp_refuses_limits_that_make_no_sense() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = main(["listen-mllp", "--port", "0", "--site", "site-h", "--max-connections", "0"], out, err)
    assert code != 0
    assert err.getvalue() == "glucobridge: the connection cap must be at least 1, got 0\n"


# --- whatever a message holds, it gets an ACK, and the connection serves the next one ---------------------


def one_obx_message(control: str, obx14: str, *, obx1: str = "1") -> str:
    return (
        f"MSH|^~\\&|CGMHUB|HUB|GLUCOBRIDGE|SITE|20240301000000+0000||ORU^R01^ORU_R01|{control}|P|2.5.1\r"
        "PID|1||MRN-Y^^^SITE^MR\r"
        f"OBX|{obx1}|NM|99504-3^Glucose^LN||120|mg/dL|||||F|||{obx14}||||SN1^dexcom-g6\r"
    )


@pytest.mark.parametrize(("obx14", "year"), [("00010101000000+1400", 1), ("99991231235959-1200", 9999)])
def test_year_1_or_9999_is_answered_ae_with_the_obx_quarantined_then_a_good_message_aa(
    listening: Running, store: Store, obx14: str, year: int
) -> None:
    """Before: the time raised `ValueError: year 0 is out of range` and the connection closed without an ACK."""
    poison = one_obx_message("Y1", obx14) + "OBX|2|NM|99504-3^Glucose^LN||130|mg/dL|||||F|||20240301120000+0000\r"
    (first,) = hl7_messages(readings(3), per_message=3, control="GOOD")
    acks = exchange(listening.port, poison, first)  # one connection
    code, control_id, text = msa(acks[0])
    assert (code, control_id) == ("AE", "Y1")
    assert text.startswith(f"1 result(s) quarantined: message 1 OBX 1: OBX-14 '{obx14}' is in the year {year}")
    assert msa(acks[1])[:2] == ("AA", "GOOD00000")
    with store.transaction() as session:
        (item,) = session.scalars(select(QuarantineItem)).all()
        assert item.locator == "message 1 OBX 1"
        assert "outside 1900-2200" in item.reason
        assert session.scalar(select(func.count()).select_from(Reading)) == 1 + 3  # OBX 2 and the good message


def test_an_unexpected_error_while_ingesting_is_answered_ae_then_the_next_message_aa(
    listening: Running, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingestor = listening.listener.ingestor
    real = ingestor.ingest_items
    calls = []

    def failing_once(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("a bug")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ingestor, "ingest_items", failing_once)
    first, second = hl7_messages(readings(4), per_message=2, control="BUG")
    acks = exchange(listening.port, first, second)
    code, control_id, text = msa(acks[0])
    assert (code, control_id) == ("AE", "BUG00000")
    assert "internal error KeyError" in text
    assert msa(acks[1])[:2] == ("AA", "BUG00001")
    assert msa(exchange(listening.port, first)[0])[:2] == ("AA", "BUG00000")  # the resend is stored
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == 4


def test_hash_field_separator_with_a_pipe_inside_msh_3_gives_a_well_formed_ack(
    listening: Running, store: Store
) -> None:
    """`#` as field separator, so `|` is data in MSH-3 and MSH-10: the ACK is in `|^~\\&` with both escaped."""
    message = (
        "MSH#$~\\&#CGM|HUB$1.2.3$ISO#FAC#GLUCOBRIDGE#SITE#20240301000000+0000##ORU$R01$ORU_R01#HASH|1#P#2.5.1\r"
        "PID#1##MRN-H$$$SITE$MR\r"
        "OBX#1#NM#99504-3$Glucose$LN##120#mg/dL#####F###20240301120000+0000\r"
    )
    (ack,) = exchange(listening.port, message)
    parsed = parse_message(ack)
    msh = parsed.msh
    assert parsed.encoding == Hl7Encoding()
    assert len(msh.fields) == 13  # MSH-0..12: nothing shifted
    assert msh.components(5) == ["CGM|HUB", "1.2.3", "ISO"]  # the sender's MSH-3, its `|` escaped
    assert (msh.field(5), msh.field(6), msh.field(9)) == ("CGM\\F\\HUB^1.2.3^ISO", "FAC", "ACK^R01^ACK")
    assert (msh.field(3), msh.field(4), msh.field(11), msh.field(12)) == ("GLUCOBRIDGE", "SITE", "P", "2.5.1")
    assert msa(ack) == ("AA", "HASH\\F\\1", "1 reading(s) stored, 0 already present")
    assert Hl7Encoding().unescape(msa(ack)[1]) == "HASH|1"
    strict = hl7apy_parse(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert strict.validate() is True  # an independent reader agrees it is a well-formed 2.5.1 ACK
    assert strict.msa.msa_1.value == "AA"
    with store.transaction() as session:
        reading = session.scalars(select(Reading)).one()
        assert reading.source_record_key == "HASH|1|1"  # MSH-10 as read, unescaped


def test_two_patients_sharing_a_control_id_are_aa_and_a_resend_for_the_wrong_patient_is_ae(
    listening: Running, store: Store
) -> None:
    """Issue 10, row 1, over a real socket: the same MSH-10 for another patient's own readings is stored (AA);
    the same message re-sent with another patient's PID is AE, quarantined, and nothing is added to either."""
    (first,) = hl7_messages(readings(3), per_message=3, control="COLL", mrn="MRN-A")
    (other,) = hl7_messages(readings(3, seed=5), per_message=3, control="COLL", mrn="MRN-B")
    other = other.replace("|45|", "|46|").replace("|74|", "|75|").replace("|103|", "|104|")  # B's own values
    wrong = first.replace("MRN-A^^^SITE^MR", "MRN-B^^^SITE^MR")  # A's message, B's PID
    acks = exchange(listening.port, first, other, wrong)
    assert [msa(a)[0] for a in acks] == ["AA", "AA", "AE"]
    assert msa(acks[1])[2] == "3 reading(s) stored, 0 already present"
    assert "already filed for patient site:site-h:mrn:SITE|MRN-A" in msa(acks[2])[2]
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(Reading)) == 6
        assert session.scalar(select(func.count()).select_from(QuarantineItem)) == 3
