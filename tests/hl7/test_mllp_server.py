"""The MLLP server over real TCP: every frame gets one ACK, input that is not a frame gets an AR and a close, idle
connections are closed, the connection cap holds, and memory stays bounded by the frame limit, not the input."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from bff.hl7 import MLLP_END, MLLP_START, Ack, MllpLimits, MllpServer, build_ack, frame
from tests.hl7.support import Background, closed_within, connect, exchange, msa, read_frame

NOW = datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
MIB = 2**20


def message(control_id: str, pid: str = "MRN-1^^^SITE^MR") -> str:
    return (f"MSH|^~\\&|CGMHUB|HUB|GB|SITE|20240502103000+0000||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
            f"PID|1||{pid}\r")  # fmt: skip


def handler(text: str, peer: str) -> Ack:
    """AA for everything, except a message with POISON in it, on which it fails (with PHI in the error)."""
    if "POISON" in text:
        raise ValueError(f"cannot link patient {text.split('PID|1||')[1][:20]}")
    return build_ack(text, "AA", "ok", NOW)


@pytest.fixture(name="serve")
def fx_serve() -> Iterator[list[Background]]:
    """Start servers with `serve.append(Background(MllpServer(...)))`; all are closed after the test."""
    running: list[Background] = []
    try:
        yield running
    finally:
        for background in running:
            background.close()


def start(serve: list[Background], **limits: float) -> tuple[Background, MllpServer]:
    server = MllpServer(handler, limits=MllpLimits(**limits), clock=lambda: NOW)  # type: ignore[arg-type]
    serve.append(Background(server))
    return serve[-1], server


def connections(background: Background, server: MllpServer, expected: int, within: float = 5) -> int:
    """The server's open connections, once they are `expected` or `within` seconds have passed (a server that
    answered AR lingers up to a second reading what the peer still sends, after the peer saw the close)."""
    deadline = time.monotonic() + within
    while (count := int(background.call(lambda: server.connections))) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def test_a_handler_error_is_answered_ae_with_its_type_then_the_next_message_aa(
    serve: list[Background], caplog: pytest.LogCaptureFixture
) -> None:
    background, _ = start(serve)
    caplog.set_level(logging.INFO, logger="glucobridge.mllp")
    with connect(background.port) as sock:
        poison, good = exchange(sock, message("BAD1", pid="POISON-MRN-SECRET-42^^^SITE^MR"), message("GOOD1"))
    code, control_id, text = msa(poison)
    assert (code, control_id) == ("AE", "BAD1")
    assert "internal error ValueError" in text
    assert "SECRET" not in text  # the error's message (PHI) is not echoed
    assert msa(good)[:2] == ("AA", "GOOD1")
    logged = caplog.text
    assert "BAD1" in logged  # the operators can find it by its control id
    assert "ValueError" in logged
    assert "SECRET" not in logged  # ... and the log holds nothing of the message


def test_pipelined_frames_with_line_breaks_between_get_one_ack_each(serve: list[Background]) -> None:
    background, _ = start(serve)
    data = frame(message("P1")) + b"\r\n" + frame(message("P2")) + frame(message("P3"))
    with connect(background.port) as sock:
        sock.sendall(data)
        acks = [read_frame(sock) for _ in range(3)]
    assert [msa(a)[:2] for a in acks if a is not None] == [("AA", "P1"), ("AA", "P2"), ("AA", "P3")]


@pytest.mark.parametrize(
    ("data", "control_id", "byte"),
    [
        (message("UNFRAMED1").encode(), "UNFRAMED1", "0x4D"),  # an HL7 message sent without MLLP
        (b"GET / HTTP/1.1\r\nHost: glucobridge\r\n\r\n", "", "0x47"),  # not HL7 at all
    ],
)
def test_unframed_bytes_get_an_ar_naming_the_byte_and_the_connection_is_closed(
    serve: list[Background], data: bytes, control_id: str, byte: str
) -> None:
    background, _ = start(serve)
    started = time.monotonic()
    with connect(background.port) as sock:
        sock.sendall(data)
        ack = read_frame(sock)
        assert ack is not None
        code, acked, text = msa(ack)
        assert (code, acked) == ("AR", control_id)
        assert f"starts with byte {byte}" in text
        assert "0x0B" in text
        assert closed_within(sock, 5)
    assert time.monotonic() - started < 4  # answered at once (before: the client waited for ever)


def test_fifty_idle_connections_are_closed_after_the_idle_timeout(serve: list[Background]) -> None:
    background, server = start(serve, idle_timeout_s=1.0)
    sockets = [connect(background.port) for _ in range(50)]
    try:
        time.sleep(0.3)
        assert background.call(lambda: server.connections) == 50  # not before the timeout
        started = time.monotonic()
        assert all(closed_within(sock, 10) for sock in sockets)
        assert time.monotonic() - started < 8
        assert connections(background, server, 0) == 0
    finally:
        for sock in sockets:
            sock.close()


def test_a_frame_left_unfinished_is_answered_ar_after_the_idle_timeout(serve: list[Background]) -> None:
    background, server = start(serve, idle_timeout_s=0.5)
    with connect(background.port) as sock:
        sock.sendall(MLLP_START + message("HALF").encode())  # a half-open sender: no end bytes ever come
        ack = read_frame(sock)
        assert ack is not None
        code, control_id, text = msa(ack)
        assert (code, control_id) == ("AR", "HALF")
        assert text.startswith("incomplete frame: no end bytes 0x1C 0x0D after")
        assert closed_within(sock, 5)
    assert connections(background, server, 0) == 0


def test_connections_over_the_cap_are_closed_at_once_and_the_others_keep_working(serve: list[Background]) -> None:
    background, server = start(serve, max_connections=3)
    sockets = [connect(background.port) for _ in range(3)]
    try:
        for n, sock in enumerate(sockets):
            assert msa(exchange(sock, message(f"C{n}"))[0])[0] == "AA"
        with connect(background.port) as extra:
            assert closed_within(extra, 2)
        assert background.call(lambda: server.refused) == 1
        assert msa(exchange(sockets[0], message("AFTER"))[0])[:2] == ("AA", "AFTER")
    finally:
        for sock in sockets:
            sock.close()
    assert connections(background, server, 0) == 0
    with connect(background.port) as later:  # room again once they are gone
        assert msa(exchange(later, message("LATER"))[0])[0] == "AA"


def test_a_complete_frame_over_the_limit_is_answered_ar_and_the_connection_closed(serve: list[Background]) -> None:
    background, _ = start(serve, max_frame_bytes=MIB)
    big = message("BIG") + "NTE|1||" + "x" * (2 * MIB) + "\r"
    with connect(background.port) as sock:
        sock.sendall(frame(big))
        ack = read_frame(sock)
        assert ack is not None
        code, control_id, text = msa(ack)
        assert (code, control_id) == ("AR", "BIG")
        assert text.startswith(f"frame too large: over {MIB} bytes")
        assert closed_within(sock, 5)


def test_memory_stays_bounded_under_ten_concurrent_15_mb_partial_frames(
    serve: list[Background], caplog: pytest.LogCaptureFixture
) -> None:
    """10 peers each send 15 MB of one frame that never ends. The server holds at most one frame per connection,
    up to the frame limit (1 MiB here) plus one read, and asyncio's reader pauses the socket while its own 64 KiB
    buffer is full: so at most ~10 x (1 MiB + ~0.5 MiB of reads and growth), far below the 150 MB sent. The
    bound asserted, 10 x 2 MiB + 4 MiB for the loop and the threads, would fail by an order of magnitude if a
    connection buffered what it is sent (as before, up to 16 MiB each) or copied its buffer on every read."""
    limit = MIB
    background, server = start(serve, max_frame_bytes=limit, idle_timeout_s=10)
    payload = MLLP_START + message("PARTIAL").encode() + b"OBX|1|ST|x||" + b"A" * (15 * 10**6)
    answers: list[str | None] = [None] * 10
    caplog.set_level(logging.WARNING, logger="glucobridge.mllp")

    def peer(n: int) -> None:
        with connect(background.port, timeout=30) as sock:
            # The server may close before everything was sent: the AR was the answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(payload)
            answers[n] = read_frame(sock)

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        threads = [threading.Thread(target=peer, args=(n,)) for n in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert connections(background, server, 0) == 0
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - baseline < 10 * 2 * limit + 4 * MIB, f"peak {(peak - baseline) / MIB:.1f} MiB"
    assert current - baseline < 2 * MIB, f"{(current - baseline) / MIB:.1f} MiB still held"  # buffers released
    refusals = [r for r in caplog.records if "frame too large" in r.getMessage()]
    assert len(refusals) == 10
    received = [a for a in answers if a is not None]
    assert received, "no peer read its AR"
    assert all(msa(a)[:2] == ("AR", "PARTIAL") for a in received)


def test_the_limits_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="idle timeout"):
        MllpLimits(idle_timeout_s=0)
    with pytest.raises(ValueError, match="connection cap"):
        MllpLimits(max_connections=0)
    with pytest.raises(ValueError, match="frame size limit"):
        MllpLimits(max_frame_bytes=10)
    assert MLLP_END == b"\x1c\r"
