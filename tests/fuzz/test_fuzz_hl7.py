"""Fuzzing HL7 v2 ORU^R01 input: mutations of a valid file (byte flips, truncation, separators, huge fields, odd
bytes and encodings, year-1/9999 times, nested repetitions) must never raise, and must be accounted for.

(a) As a file, through `Hl7v2Parser` and `Ingestor` on SQLite: no exception escapes; every message is either
    refused whole (one quarantine item) or each of its OBX segments (counted here on the raw text) is a reading, an
    OBX problem or a skipped non-reading OBX; and the store accounts for every item: readings are added or already
    present, or quarantined with the problems.
(b) Over a real MLLP socket to the listener: every frame gets exactly one ACK, whose MSA-1 is AA, AE or AR, and
    the connection then still serves a good message.

Each test is derandomized (the same examples every run) and bounded to a few seconds.
"""

from __future__ import annotations

import io
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bff.hl7 import frame, iter_messages
from bff.ingest.hl7v2 import Hl7v2Parser
from bff.ingest.records import FeedProblem, FeedReading, ParseOptions
from bff.settings import Settings
from bff.store.db import Store
from bff.store.ingest import Ingestor
from bff.store.mllp import MllpListener
from tests.hl7.support import Background, connect, exchange, msa, read_frame
from tests.store.feeds import hl7_messages, readings

OPTIONS = ParseOptions(input_tz="America/Chicago")
NOT_A_READING = "OBX|99|NM|97507-8^Mean glucose^LN||140|mg/dL|||||F|||20240301120000+0000\r"
BASE_MESSAGES = [m.replace("\rOBX|1|", "\r" + NOT_A_READING + "OBX|1|", 1) for m in hl7_messages(
    readings(8), per_message=4, control="FZ")]  # fmt: skip
BASE_FILE = "\n".join(BASE_MESSAGES).encode()
LINE_BREAKS = re.compile(r"\r\n|\r|\n")
TIMES = re.compile(rb"\d{14}\+0000")
ODD_BYTES = [b"\x00", b"\xff", b"\xfe\xff", b"\xc3", b"\xc3\xa9", "é".encode("latin-1"), b"\xef\xbb\xbf", b"\x0b",
             b"\x1c", b"\x1c\r", b"\x7f", b"\t", b"\r\n", b"\n\n", b"\\", b"\\X\\", b"\\Zff\\", b"\\.br\\"]  # fmt: skip
SEPARATORS = [b"|", b"^", b"~", b"\\", b"&", b"#", b"\r", b"\n"]
BAD_TIMES = [b"00010101000000+1400", b"99991231235959-1200", b"00010101000000", b"20240230120000+0000",
             b"2024", b"202403011200+9999", b"19991231235959+0000", b"21000101000000+0000"]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with one to four mutations."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "delete", "insert", "odd", "huge", "nested", "year",
                                     "field separator"]))  # fmt: skip
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(SEPARATORS)) * draw(st.integers(1, 5))
        elif kind == "odd":
            data[at:at] = draw(st.sampled_from(ODD_BYTES))
        elif kind == "huge":  # a field past the 64 KiB limit, or just under it
            data[at:at] = draw(st.sampled_from([b"9", b"A", b"\xc3\xa9"])) * draw(st.sampled_from([70_000, 65_000]))
        elif kind == "nested":  # repetitions, components and subcomponents, sometimes over 10,000 in a segment
            data[at:at] = draw(st.sampled_from([b"~", b"^~", b"~^&", b"&"])) * draw(st.sampled_from([50, 4_000]))
        elif kind == "year":
            times = list(TIMES.finditer(data))
            if times:
                hit = times[draw(st.integers(0, len(times) - 1))]
                data[hit.start() : hit.end()] = draw(st.sampled_from(BAD_TIMES))
        elif kind == "field separator":  # `#` declared as MSH-1: every `|` becomes `#`, or only some do
            data = bytearray(data.replace(b"|", b"#", draw(st.sampled_from([-1, 1, 7]))))
    return bytes(data)


def obx_segments(text: str) -> int:
    """The OBX segments of a message, counted on its raw text (independently of the parser)."""
    first = text.lstrip("\ufeff")
    fs = first[3] if first.startswith("MSH") and len(first) > 3 else "|"
    return sum(1 for line in LINE_BREAKS.split(text) if line.startswith("OBX") and (len(line) == 3 or line[3] == fs))


@pytest.fixture(scope="module", name="fuzz_store")
def fx_fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "store.db"
    store = Store(Settings(database_url=f"sqlite:///{path}"))
    try:
        yield store
    finally:
        store.dispose()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(data=mutated(BASE_FILE))
def test_a_mutated_file_never_raises_and_every_obx_is_accounted_for(fuzz_store: Store, data: bytes) -> None:
    parser = Hl7v2Parser()
    items = list(parser.parse(io.BytesIO(data), OPTIONS))
    refused = {json.loads(p.context)["message"] for p in items if isinstance(p, FeedProblem)
               and json.loads(p.context).get("scope") == "message"}  # fmt: skip
    texts = list(iter_messages(io.BytesIO(data)))
    assert parser.messages == len(texts)
    expected = sum(obx_segments(t) for n, t in enumerate(texts, start=1) if n not in refused)
    per_obx = [i for i in items if isinstance(i, FeedReading) or json.loads(i.context).get("scope") == "obx"]
    assert len(per_obx) + sum(parser.skipped.values()) == expected

    report = Ingestor(fuzz_store).ingest(Hl7v2Parser(), io.BytesIO(data), site="fuzz", source_name="fuzz.hl7",
                                         options=OPTIONS)  # fmt: skip
    assert report.received + report.quarantined == len(items)
    assert report.added + report.already_present == report.received
    assert all(len(p) < 400 for p in report.problems)  # reasons quote the input short


@pytest.fixture(scope="module", name="fuzz_listener")
def fx_fuzz_listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    path: Path = tmp_path_factory.mktemp("fuzz-mllp") / "store.db"
    store = Store(Settings(database_url=f"sqlite:///{path}"))
    background = Background(MllpListener(Ingestor(store), site="fuzz", options=OPTIONS))
    try:
        yield background
    finally:
        background.close()
        store.dispose()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(bodies=st.lists(st.one_of(*(mutated(m.encode()) for m in BASE_MESSAGES)), min_size=1, max_size=3))
def test_every_mutated_frame_gets_exactly_one_ack_over_a_real_socket(
    fuzz_listener: Background, bodies: list[bytes]
) -> None:
    frames = [b"\x0b" + b.replace(b"\x0b", b"").replace(b"\x1c", b"") + b"\x1c\r" for b in bodies]  # MLLP bodies
    with connect(fuzz_listener.port) as sock:
        sock.sendall(b"".join(frames))  # pipelined: the server must keep them apart
        for _ in frames:
            ack = read_frame(sock)
            assert ack is not None, "the connection closed without an ACK"
            assert msa(ack)[0] in ("AA", "AE", "AR")
        sock.settimeout(0.05)
        with pytest.raises(TimeoutError):
            sock.recv(1)  # exactly one ACK per frame: nothing more comes
        sock.settimeout(20)
        (good,) = exchange(sock, BASE_MESSAGES[0])
        assert msa(good)[0] == "AA"


def test_the_fuzz_base_is_valid_and_fully_read() -> None:
    items = list(Hl7v2Parser().parse(io.BytesIO(BASE_FILE), OPTIONS))
    assert len(items) == 8
    assert all(isinstance(i, FeedReading) for i in items)
    assert frame("x") == b"\x0bx\x1c\r"
    assert socket.SOCK_STREAM  # the MLLP test talks over a real TCP socket
