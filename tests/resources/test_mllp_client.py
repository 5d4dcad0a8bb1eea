"""The MLLP client and its delivery policy over real TCP: against our listener (AA) and a scripted fake peer
(AE returned to the caller, AR never retried, a wrong MSA-2 is an error, a dropped connection or a missing ACK is
retried with backoff on a new connection with the same MSH-10)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from bff.hl7 import MLLP_END, MLLP_START, Hl7Encoding, frame, parse_message
from bff.hl7.client import (
    AckError,
    Attempt,
    DeliveryStatus,
    MllpClient,
    MllpConnectionError,
    deliver,
    parse_ack,
)
from bff.resources.oru import build_oru
from bff.store.db import Store
from tests.resources.samples import sample_record
from tests.store.test_mllp import Running


def ack_text(control_id: str, code: str, text: str = "", err: str = "") -> str:
    segments = [
        f"MSH|^~\\&|EHR|MAIN|GLUCOBRIDGE|GLUCOBRIDGE|20241110120001+0000||ACK^R01^ACK|A{control_id}|P|2.5.1",
        f"MSA|{code}|{control_id}|{Hl7Encoding().escape_text(text)}",
    ]
    if err:
        segments.append(f"ERR||PID^1^3|204^Unknown key identifier^HL70357|E||||{err}")
    return "\r".join(segments) + "\r"


class FakePeer:
    """A scripted MLLP peer: for each framed message it reads, the next action of the script.

    Actions: "AA", "AE", "AR", "CA" (answer with that code), "mismatch" (an ACK for another MSH-10), "drop" (close
    the connection without answering), "silent" (never answer; the client times out), "garbage" (not HL7).
    """

    def __init__(self, *script: str) -> None:
        self.script = list(script)
        self.received: list[str] = []
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = int(self.server.getsockname()[1])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                self._connection(conn)

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = b""
        while not self.stopping.is_set():
            try:
                data = conn.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            buffer += data
            while (end := buffer.find(MLLP_END)) >= 0:
                body = buffer[buffer.find(MLLP_START) + 1 : end].decode()
                buffer = buffer[end + len(MLLP_END) :]
                self.received.append(body)
                action = self.script.pop(0) if self.script else "AA"
                control_id = parse_message(body).control_id
                if action == "drop":
                    return
                if action == "silent":
                    continue
                if action == "garbage":
                    conn.sendall(MLLP_START + b"hello" + MLLP_END)
                elif action == "mismatch":
                    conn.sendall(frame(ack_text("SOMEONE-ELSE", "AA", "ok")))
                elif action == "AE":
                    conn.sendall(frame(ack_text(control_id, "AE", "PID-3 not found: MRN|123", "Unknown MRN")))
                else:
                    conn.sendall(frame(ack_text(control_id, action, f"{action} from the fake")))

    def control_ids(self) -> list[str]:
        return [parse_message(m).control_id for m in self.received]

    def close(self) -> None:
        self.stopping.set()
        self.server.close()
        self.thread.join(5)


@pytest.fixture(name="peer")
def fx_peer(request: pytest.FixtureRequest) -> Iterator[FakePeer]:
    peer = FakePeer(*request.param)
    try:
        yield peer
    finally:
        peer.close()


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


MESSAGE = build_oru(sample_record()).text
CONTROL_ID = parse_message(MESSAGE).control_id


def test_delivered_to_our_listener_aa(store: Store) -> None:
    running = Running(store)
    try:
        with MllpClient("127.0.0.1", running.port, timeout_s=20) as client:
            result = deliver(client, MESSAGE, max_attempts=3)
            assert result.status is DeliveryStatus.ACCEPTED
            assert result.delivered
            assert result.control_id == CONTROL_ID
            assert result.ack is not None
            assert (result.ack.code, result.ack.control_id) == ("AA", CONTROL_ID)
            assert result.ack.text == "0 reading(s) stored, 0 already present"  # summary OBX are not readings
            assert [a.outcome for a in result.attempts] == ["AA"]
            again = client.send(build_oru(sample_record(), version="2.3", pdf=b"%PDF-1.4").text)  # same connection
            assert (again.code, again.control_id) == ("AA", CONTROL_ID)
            corrected = build_oru(sample_record(corrected=True))
            ack = deliver(client, corrected.text).ack
            assert ack is not None
            assert ack.control_id == corrected.control_id
    finally:
        running.close()


@pytest.mark.parametrize("peer", [("AE", "AA")], indirect=True)
def test_ae_goes_back_to_the_caller_who_may_resend_with_the_same_msh_10(peer: FakePeer) -> None:
    errors: list[Attempt] = []
    sleeps = Sleeps()
    with MllpClient("127.0.0.1", peer.port, timeout_s=5) as client:
        result = deliver(client, MESSAGE, max_attempts=5, on_error=errors.append, sleep=sleeps)
        assert result.status is DeliveryStatus.ERROR
        assert result.error == "PID-3 not found: MRN|123; Unknown MRN"  # MSA-3 unescaped, then ERR-8
        assert [a.outcome for a in result.attempts] == ["AE"]
        assert errors == list(result.attempts)
        assert sleeps.calls == []
        assert peer.control_ids() == [CONTROL_ID]  # not retried
        fixed = deliver(client, MESSAGE, max_attempts=5, sleep=sleeps)  # the caller fixed the cause and resends
        assert fixed.status is DeliveryStatus.ACCEPTED
    assert peer.control_ids() == [CONTROL_ID, CONTROL_ID]


@pytest.mark.parametrize("peer", [("AR",)], indirect=True)
def test_ar_is_never_retried(peer: FakePeer) -> None:
    errors: list[Attempt] = []
    with MllpClient("127.0.0.1", peer.port, timeout_s=5) as client:
        result = deliver(client, MESSAGE, max_attempts=5, on_error=errors.append, sleep=Sleeps())
    assert result.status is DeliveryStatus.REJECTED
    assert result.error == "AR from the fake"
    assert result.ack is not None
    assert result.ack.code == "AR"
    assert len(result.attempts) == len(errors) == 1
    assert len(peer.received) == 1


@pytest.mark.parametrize("peer", [("mismatch",)], indirect=True)
def test_an_ack_for_another_message_is_an_error(peer: FakePeer) -> None:
    with MllpClient("127.0.0.1", peer.port, timeout_s=5) as client:
        result = deliver(client, MESSAGE, max_attempts=5, sleep=Sleeps())
        assert result.status is DeliveryStatus.PROTOCOL_ERROR
        assert "'SOMEONE-ELSE'" in result.error
        assert CONTROL_ID in result.error
        assert [a.outcome for a in result.attempts] == ["protocol"]
        assert len(peer.received) == 1
        ack = client.send(MESSAGE)  # the connection was closed after the error: a new one answers AA
        assert ack.code == "AA"
    assert peer.connections == 2


@pytest.mark.parametrize("peer", [("drop", "AA")], indirect=True)
def test_a_dropped_connection_is_retried_with_the_same_msh_10(peer: FakePeer) -> None:
    errors: list[Attempt] = []
    sleeps = Sleeps()
    with MllpClient("127.0.0.1", peer.port, timeout_s=5) as client:
        result = deliver(client, MESSAGE, max_attempts=3, on_error=errors.append, sleep=sleeps, backoff_s=0.5)
    assert result.status is DeliveryStatus.ACCEPTED
    assert [a.outcome for a in result.attempts] == ["connection", "AA"]
    assert "closed before the ACK" in errors[0].detail
    assert sleeps.calls == [0.5]
    assert peer.connections == 2
    assert peer.control_ids() == [CONTROL_ID, CONTROL_ID]
    assert peer.received[0] == peer.received[1] == MESSAGE  # resent unchanged


@pytest.mark.parametrize("peer", [("silent", "AA")], indirect=True)
def test_a_missing_ack_times_out_and_is_retried(peer: FakePeer) -> None:
    with MllpClient("127.0.0.1", peer.port, timeout_s=0.5) as client:
        result = deliver(client, MESSAGE, max_attempts=3, sleep=Sleeps())
    assert result.status is DeliveryStatus.ACCEPTED
    assert [a.outcome for a in result.attempts] == ["connection", "AA"]
    assert "0.5 s" in result.attempts[0].detail or "timed out" in result.attempts[0].detail
    assert peer.control_ids() == [CONTROL_ID, CONTROL_ID]


@pytest.mark.parametrize("peer", [("garbage",)], indirect=True)
def test_an_unreadable_ack_is_a_protocol_error(peer: FakePeer) -> None:
    with MllpClient("127.0.0.1", peer.port, timeout_s=5) as client:
        result = deliver(client, MESSAGE, sleep=Sleeps())
    assert result.status is DeliveryStatus.PROTOCOL_ERROR
    assert "not an HL7 message" in result.error
    assert len(peer.received) == 1


@pytest.mark.parametrize("peer", [("CA",)], indirect=True)
def test_an_enhanced_mode_commit_accept_counts_as_accepted(peer: FakePeer) -> None:
    with MllpClient("127.0.0.1", peer.port, timeout_s=5) as client:
        assert deliver(client, MESSAGE, sleep=Sleeps()).status is DeliveryStatus.ACCEPTED


def test_no_peer_gives_up_after_max_attempts_with_backoff() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = int(probe.getsockname()[1])  # closed again: nothing listens there
    sleeps = Sleeps()
    errors: list[Attempt] = []
    with MllpClient("127.0.0.1", port, timeout_s=2) as client:
        result = deliver(client, MESSAGE, max_attempts=4, on_error=errors.append, sleep=sleeps, backoff_s=1.0,
                         max_backoff_s=3.0)  # fmt: skip
    assert result.status is DeliveryStatus.UNDELIVERED
    assert result.ack is None
    assert [a.outcome for a in result.attempts] == ["connection"] * 4
    assert len(errors) == 4
    assert sleeps.calls == [1.0, 2.0, 3.0]  # doubled, capped, none after the last attempt
    assert "ConnectionRefusedError" in result.error
    assert "after 4 attempt(s)" in result.error


def test_send_raises_for_connection_problems_and_bad_messages() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = int(probe.getsockname()[1])
    client = MllpClient("127.0.0.1", port, timeout_s=1)
    with pytest.raises(MllpConnectionError):
        client.send(MESSAGE)
    with pytest.raises(ValueError, match="MSH-10"):
        client.send(MESSAGE.replace(CONTROL_ID, "", 1))
    with pytest.raises(ValueError, match="not an HL7 message"):
        deliver(client, "hello")
    with pytest.raises(ValueError, match="max_attempts"):
        deliver(client, MESSAGE, max_attempts=0)


def test_parse_ack() -> None:
    ack = parse_ack(ack_text("X1", "AE", "bad \\ value|here", "Unknown MRN"))
    assert (ack.code, ack.control_id, ack.text) == ("AE", "X1", "bad \\ value|here; Unknown MRN")
    old_style = "MSH|^~\\&|EHR||GB||20241110||ACK|A1|P|2.3\rMSA|AE|X2\rERR|PID^1^3^204&Unknown key&HL70357\r"
    assert parse_ack(old_style).text == "Unknown key"  # 2.3 ERR-1
    for bad, reason in (("hello", "not an HL7 message"), ("MSH|^~\\&|A\r", "no MSA"),
                        ("MSH|^~\\&|A\rMSA|ZZ|X\r", "not an acknowledgment code")):  # fmt: skip
        with pytest.raises(AckError, match=reason):
            parse_ack(bad)
