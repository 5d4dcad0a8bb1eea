"""The hl7-only site's results interface (sandbox.hl7feed): ORU^R01 messages that glucobridge's HL7 v2 reader turns
into exactly the readings the site's FHIR Observations carry, one message per patient and local day, and the
MLLP exchange (each message waits for its ACK; a wrong or missing ACK stops the feed)."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.demo import SITE_FEEDS
from bff.ingest.fhir_feed import FhirParser
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.ingest.records import FeedReading, ParseOptions
from sandbox.__main__ import main as sandbox_main
from sandbox.hl7feed import FeedError, Oru, oru_messages, send, ts
from sandbox.mllp import END, START, AckListener
from sandbox.personalities import PERSONALITIES
from sandbox.seed import PEOPLE, SiteSeed, build_site, traces_for
from tests.sandbox.support import NOW

SITE = "hl7-only"
DAYS = 14


@pytest.fixture(scope="module", name="seed")
def fx_seed() -> SiteSeed:
    return build_site(SITE, PERSONALITIES[SITE], traces_for(PEOPLE, NOW, DAYS, 20240601), NOW)


@pytest.fixture(scope="module", name="messages")
def fx_messages(seed: SiteSeed) -> list[Oru]:
    return list(oru_messages(seed, PERSONALITIES[SITE], sent=NOW))


def readings_of(items: Iterator[Any]) -> list[FeedReading]:
    read = list(items)
    assert all(isinstance(r, FeedReading) for r in read), [r for r in read if not isinstance(r, FeedReading)][:1]
    return read


def test_only_the_hl7_only_site_delivers_its_readings_over_hl7_and_the_demo_knows_it() -> None:
    assert {key: p.results_feed for key, p in PERSONALITIES.items()} == SITE_FEEDS


def test_one_message_per_patient_and_local_day_carries_every_reading_once(seed: SiteSeed, messages: list[Oru]) -> None:
    assert len(messages) == sum(1 for _ in seed.blocks) * DAYS
    assert len({m.control_id for m in messages}) == len(messages)
    assert sum(m.readings for m in messages) == sum(len(b) for b in seed.blocks)
    assert all(len(m.control_id) <= 20 for m in messages)  # MSH-10 is ST(20) in v2.5.1
    again = list(oru_messages(seed, PERSONALITIES[SITE], sent=NOW))
    assert [m.text for m in again] == [m.text for m in messages]  # a resend is the same message, same control id


def test_the_hl7_reader_finds_exactly_the_readings_of_the_sites_fhir_observations(
    seed: SiteSeed, messages: list[Oru]
) -> None:
    """Two doors, one truth: every (time, value, unit, flag, device, sensor) is the same through HL7 v2 and FHIR."""
    parser = Hl7v2Parser()
    through_hl7 = [r for m in messages for r in readings_of(parser.parse_text(m.text, ParseOptions()))]
    ndjson = b"".join(orjson.dumps(o) + b"\n" for block in seed.blocks for o in block.observations())
    through_fhir = readings_of(FhirParser().parse(io.BytesIO(ndjson), ParseOptions()))

    def key(r: FeedReading) -> tuple[object, ...]:
        return r.time_ms, r.value, r.unit, r.flag, r.device

    assert sorted(map(key, through_hl7)) == sorted(map(key, through_fhir))
    assert len({r.flag for r in through_hl7}) > 1  # readings the sensor reported as LOW or HIGH are there too
    serials = {s.serial for block in seed.blocks for s in block.trace.sessions}
    assert {r.stream for r in through_hl7} <= serials


def test_pid_3_names_the_mrn_of_the_sites_fhir_patient_with_its_system(seed: SiteSeed, messages: list[Oru]) -> None:
    """So a receiver can match the HL7 v2 patient to the FHIR Patient of a launch (system and value agree)."""
    mrn_of = {p.patient_id: p.mrn for p in seed.patients}
    system = PERSONALITIES[SITE].mrn_system
    for message in messages[::DAYS]:
        reading = next(iter(Hl7v2Parser().parse_text(message.text, ParseOptions())))
        assert isinstance(reading, FeedReading)
        assert reading.patient is not None
        assert (reading.patient.issuer, reading.patient.value) == (f"mrn:{system}", mrn_of[message.patient_id])
    patient = next(r for r in seed.resources if r["resourceType"] == "Patient")
    assert patient["identifier"][0]["system"] == system


def test_times_carry_the_local_offset() -> None:
    moment = int(datetime(2026, 11, 1, 6, 30, tzinfo=UTC).timestamp() * 1000)
    assert ts(moment, -300) == "20261101013000-0500"
    assert ts(moment, 330) == "20261101120000+0530"
    assert ts(moment, 0) == "20261101063000+0000"


# MARK: the exchange


class Listener:
    """The sandbox's ACK listener in a thread, on a free port."""

    def __init__(self, code: str = "AA") -> None:
        self.received: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.listener = AckListener(code, self.received.append)
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __enter__(self) -> Listener:
        _, self.port = asyncio.run_coroutine_threadsafe(self.listener.start("127.0.0.1", 0), self.loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.listener.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_every_message_is_sent_after_the_previous_ack_and_counted(messages: list[Oru]) -> None:
    with Listener("AA") as listener:
        report = send(iter(messages[:5]), "127.0.0.1", listener.port)
    assert report.accepted
    assert (report.messages, report.acks, report.problems) == (5, {"AA": 5}, [])
    assert report.readings == sum(m.readings for m in messages[:5])
    assert [m["control_id"] for m in listener.received] == [m.control_id for m in messages[:5]]
    assert all(m["type"] == "ORU^R01^ORU_R01" for m in listener.received)


def test_an_application_error_is_counted_and_quoted_and_the_feed_is_not_accepted(messages: list[Oru]) -> None:
    with Listener("AE") as listener:
        report = send(iter(messages[:2]), "127.0.0.1", listener.port)
    assert not report.accepted
    assert report.acks == {"AE": 2}
    assert report.problems[0].startswith(f"{messages[0].control_id}: AE application error")


def test_no_receiver_or_an_ack_for_another_message_stops_the_feed(messages: list[Oru]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FeedError, match="cannot connect"):
        send(iter(messages[:1]), "127.0.0.1", port)

    with socket.create_server(("127.0.0.1", 0)) as server:

        def answer_wrongly() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(1 << 20)
                connection.sendall(START + b"MSH|^~\\&|X|Y|Z|W|20260101||ACK|1|P|2.5.1\rMSA|AA|SOMETHING-ELSE\r" + END)

        thread = threading.Thread(target=answer_wrongly, daemon=True)
        thread.start()
        with pytest.raises(FeedError, match="the ACK is for SOMETHING-ELSE"):
            send(iter(messages[:1]), "127.0.0.1", server.getsockname()[1])
        thread.join(5)


def test_the_command_exits_1_when_a_message_is_not_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    with Listener("AR") as listener:
        code = sandbox_main(["hl7-feed", "--to", f"127.0.0.1:{listener.port}", "--now", NOW.isoformat(),
                             "--days", "14"])  # fmt: skip
    assert code == 1
    out, err = capsys.readouterr()
    assert "hl7-only: 70 ORU^R01 messages" in out
    assert "ACKs: 70 AR" in out
    assert "AR rejected (sandbox)" in err
