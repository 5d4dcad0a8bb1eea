"""The fault proxy (sandbox.faultproxy) in front of a tiny recording upstream: every action, the three Retry-After
forms, rate limits per prefix, `times`, the journal, the HTTP control API and the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.faultproxy import FaultProxy, Rule, RuleError
from tests.sandbox.support import free_port

ROOT = Path(__file__).resolve().parents[2]
OBS = "/fhir/Observation"


@dataclass(frozen=True)
class Seen:
    """A request the upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Upstream:
    """A FHIR-ish server that records what it receives: POST/PUT → 201 with Location, GET → 200."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                with upstream.lock:
                    upstream.seen.append(Seen(self.command, self.path, headers, body, time.time()))
                if self.path.startswith("/gzip"):
                    payload = gzip.compress(b'{"resourceType": "Bundle", "type": "searchset"}')
                    self.send_response(200)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                created = self.command in ("POST", "PUT")
                payload = json.dumps({"resourceType": "Observation", "id": "o1", "echo": self.path}).encode()
                self.send_response(201 if created else 200)
                self.send_header("Content-Type", "application/fhir+json")
                if created:
                    path = self.path.partition("?")[0]
                    self.send_header("Location", f"http://upstream.example{path}/o1/_history/1")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                self._handle()

            def do_HEAD(self) -> None:
                self._handle()

            def do_POST(self) -> None:
                self._handle()

            def do_PUT(self) -> None:
                self._handle()

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module", name="upstream")
def fx_upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(name="proxy")
def fx_proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with upstream.lock:
        upstream.seen.clear()
    with FaultProxy(upstream.base + "/fhir") as proxy:
        yield proxy


@pytest.fixture(name="client")
def fx_client(proxy: FaultProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.origin, timeout=5.0) as client:
        yield client


def observation(identifier: str = "gb-1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:glucobridge", "value": identifier}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "97510-2"}]},
    }


def wait_until(predicate: Any, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


# MARK: pass-through


def test_forwards_method_path_query_headers_and_body_unchanged(
    proxy: FaultProxy, client: httpx.Client, upstream: Upstream
) -> None:
    assert proxy.url == proxy.origin + "/fhir"
    body = json.dumps(observation()).encode()
    response = client.post(
        OBS + "?_format=json&x=a%2Fb",
        content=body,
        headers={"Content-Type": "application/fhir+json", "Authorization": "Bearer t", "X-Trace": "42"},
    )
    assert response.status_code == 201
    assert response.headers["location"].endswith("/fhir/Observation/o1/_history/1")
    assert response.json()["echo"] == OBS + "?_format=json&x=a%2Fb"
    (seen,) = upstream.requests()
    assert (seen.method, seen.path, seen.body) == ("POST", OBS + "?_format=json&x=a%2Fb", body)
    assert seen.headers["authorization"] == "Bearer t"
    assert seen.headers["x-trace"] == "42"
    assert seen.headers["host"] == upstream.base.removeprefix("http://")  # not the proxy's

    (entry,) = proxy.journal()
    assert entry.seq == 1
    assert (entry.method, entry.path, entry.query) == ("POST", OBS, "_format=json&x=a%2Fb")
    assert (entry.action, entry.rule_id, entry.forwarded) == ("pass", None, True)
    assert (entry.upstream_status, entry.client_status, entry.done) == (201, 201, True)
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()
    assert (entry.resource_type, entry.identifier) == ("Observation", "gb-1")
    assert entry.wall == pytest.approx(time.time(), abs=5)


def test_keep_alive_and_raw_content_encoding(proxy: FaultProxy, client: httpx.Client) -> None:
    for _ in range(3):
        assert client.get(OBS, params={"code": "http://loinc.org|97510-2"}).status_code == 200
    response = client.get("/gzip/Observation")
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["type"] == "searchset"  # decoded by the client: the bytes were passed on as sent
    assert client.head(OBS).status_code == 200
    entries = proxy.journal()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].query == "code=http%3A%2F%2Floinc.org%7C97510-2"
    assert entries[0].body_sha256 is None
    assert entries[0].resource_type is None


def test_upstream_down_answers_502(upstream: Upstream) -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}", upstream_timeout_s=2) as proxy:
        response = httpx.get(proxy.url + "/metadata", timeout=5)
        assert response.status_code == 502
        assert response.json()["resourceType"] == "OperationOutcome"
        (entry,) = proxy.journal()
        assert (entry.forwarded, entry.client_status) == (False, 502)
        assert entry.upstream_error


# MARK: answers without forwarding


@pytest.mark.parametrize("form", ["seconds", "http-date", "epoch"])
def test_429_with_each_retry_after_form(form: str, proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    proxy.add_rule(
        {"match": {"method": "POST"}, "action": "status", "status": 429, "retry_after": {"form": form, "value": 2}}
    )
    before = time.time()
    response = client.post(OBS, json=observation())
    assert response.status_code == 429
    header = response.headers["retry-after"]
    if form == "seconds":
        assert header == "2"
    elif form == "http-date":
        assert header.endswith(" GMT")
        moment = parsedate_to_datetime(header).timestamp()
        assert before + 1 <= moment <= time.time() + 3
    else:
        assert header.isdigit()
        assert before + 1 <= int(header) <= time.time() + 3
    assert response.json()["issue"][0]["code"] == "throttled"
    assert upstream.requests() == []
    (entry,) = proxy.journal()
    assert (entry.action, entry.forwarded, entry.client_status) == ("status", False, 429)


def test_503_with_operation_outcome_and_custom_body(
    proxy: FaultProxy, client: httpx.Client, upstream: Upstream
) -> None:
    proxy.add_rule({"action": "status", "status": 503, "retry_after": "garbage", "headers": {"X-Why": "maintenance"}})
    custom = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]}
    proxy.add_rule({"action": "status", "status": 500, "body": custom})
    first = client.post(OBS, json=observation())
    assert first.status_code == 503
    assert first.headers["content-type"] == "application/fhir+json"
    assert first.headers["retry-after"] == "garbage"
    assert first.headers["x-why"] == "maintenance"
    assert first.json()["issue"][0]["code"] == "transient"
    second = client.get(OBS)
    assert (second.status_code, second.json()) == (500, custom)
    assert client.get(OBS).status_code == 200  # both used up
    assert len(upstream.requests()) == 1


def test_reset_before_sends_nothing_upstream(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "reset_before"})
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(OBS, json=observation())
    assert upstream.requests() == []
    (entry,) = proxy.journal()
    assert (entry.action, entry.forwarded, entry.client_status, entry.upstream_status) == (
        "reset_before",
        False,
        "reset",
        None,
    )
    assert client.post(OBS, json=observation()).status_code == 201  # a new connection works


# MARK: after the upstream committed


def test_reset_after_commit(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    proxy.add_rule({"match": {"method": "POST"}, "action": "reset_after_commit"})
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        client.post(OBS, json=observation("gb-7"))
    (seen,) = upstream.requests()
    assert json.loads(seen.body)["identifier"][0]["value"] == "gb-7"
    (entry,) = proxy.journal(writes=True)
    assert (entry.forwarded, entry.upstream_status, entry.client_status) == (True, 201, "reset")
    assert entry.identifier == "gb-7"


def test_hang_after_commit_times_the_client_out(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.add_rule({"match": {"method": "POST"}, "action": "hang_after_commit", "seconds": 0.8})
    started = time.monotonic()
    with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.post(proxy.url + "/Observation", json=observation())
    assert time.monotonic() - started < 0.9
    assert len(upstream.requests()) == 1
    (entry,) = proxy.journal()
    assert (entry.forwarded, entry.upstream_status, entry.done) == (True, 201, False)
    wait_until(lambda: proxy.journal()[0].done)
    assert proxy.journal()[0].client_status == "hang"


def test_hang_then_close_is_a_disconnect_for_a_patient_client(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.add_rule({"action": "hang_after_commit", "seconds": 0.3})
    with httpx.Client(timeout=3) as client, pytest.raises(httpx.RemoteProtocolError):
        client.put(proxy.url + "/Observation/o1", json=observation())
    assert len(upstream.requests()) == 1


def test_delay_after_commit_answers_late(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    proxy.add_rule({"action": "delay_after_commit", "seconds": 0.4})
    response = client.post(OBS, json=observation())
    answered = time.time()
    assert response.status_code == 201
    (seen,) = upstream.requests()
    assert answered - seen.at >= 0.35  # committed upstream well before the client heard
    assert proxy.journal()[0].client_status == 201


def test_delay_after_commit_with_the_client_gone(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.add_rule({"action": "delay_after_commit", "seconds": 0.5})
    with httpx.Client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        client.post(proxy.url + "/Observation", json=observation())
    wait_until(lambda: proxy.journal()[0].done)
    (entry,) = proxy.journal()
    assert (entry.forwarded, entry.client_status) == (True, "gone")
    assert len(upstream.requests()) == 1


def test_delay_before_holds_the_request_back(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    proxy.add_rule({"action": "delay_before", "seconds": 0.4})
    sent = time.time()
    assert client.post(OBS, json=observation()).status_code == 201
    (seen,) = upstream.requests()
    assert seen.at - sent >= 0.35


# MARK: matching and times


def test_times_and_matching(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    twice = proxy.add_rule(
        {"match": {"method": "post", "path_prefix": OBS}, "action": "status", "status": 503, "times": 2}
    )
    forever = proxy.add_rule({"match": {"path_prefix": "/fhir/Provenance"}, "action": "status", "times": None})
    only_bundles = proxy.add_rule({"match": {"resource_type": "Bundle"}, "action": "status", "status": 422})
    assert client.get(OBS).status_code == 200  # method does not match
    assert [client.post(OBS, json=observation()).status_code for _ in range(3)] == [503, 503, 201]
    assert [client.post("/fhir/Provenance", json={}).status_code for _ in range(4)] == [503] * 4
    assert client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction"}).status_code == 422
    remaining = {r.id: r.remaining for r in proxy.rules()}
    assert remaining == {twice.id: 0, forever.id: None, only_bundles.id: 0}
    assert [e.rule_id for e in proxy.journal()][:4] == [None, twice.id, twice.id, None]
    assert len(upstream.requests()) == 2


def test_bad_rules_are_refused() -> None:
    for bad in (
        {"action": "explode"},
        {"action": "status", "status": 42},
        {"action": "status", "times": 0},
        {"action": "status", "retry_after": {"form": "fortnights", "value": 1}},
        {"action": "status", "match": {"verb": "POST"}},
        {"action": "pass", "extra": 1},
    ):
        with pytest.raises(RuleError):
            Rule.parse(bad)


# MARK: rate limits


def test_rate_limit_burst_then_429_per_prefix(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    proxy.set_rate("/fhir/sites/a", rps=2, burst=2)
    proxy.set_rate("/fhir/sites/b", rps=0.5, burst=3, retry_after_form="http-date")
    proxy.set_rate("/fhir/sites/c", rps=0.25, burst=1, retry_after_form="epoch")
    a = [client.get("/fhir/sites/a/Patient").status_code for _ in range(3)]
    assert a == [200, 200, 429]
    b = [client.get("/fhir/sites/b/Patient") for _ in range(4)]
    assert [r.status_code for r in b] == [200, 200, 200, 429]  # b's bucket is its own
    c = [client.get("/fhir/sites/c/Patient") for _ in range(2)]
    assert [r.status_code for r in c] == [200, 429]
    assert client.get("/fhir/other/Patient").status_code == 200  # no limit

    time.sleep(0.55)  # a refills at 2/s
    assert client.get("/fhir/sites/a/Patient").status_code == 200

    throttled_b = b[-1]
    assert throttled_b.json()["issue"][0]["code"] == "throttled"
    wait = parsedate_to_datetime(throttled_b.headers["retry-after"]).timestamp() - time.time()
    assert 0 <= wait <= 3  # a token is back within 2 s at 0.5/s
    epoch = int(c[-1].headers["retry-after"])
    assert time.time() + 2 <= epoch <= time.time() + 5  # 4 s at 0.25/s

    throttled = [e for e in proxy.journal() if e.action == "rate_limit"]
    assert [e.forwarded for e in throttled] == [False, False, False]
    assert len(upstream.requests()) == 2 + 3 + 1 + 1 + 1
    proxy.set_rate("/fhir/sites/a", rps=None)
    assert all(client.get("/fhir/sites/a/Patient").status_code == 200 for _ in range(5))


def test_rate_limit_is_checked_before_rules(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_rate("/fhir", rps=1, burst=1)
    rule = proxy.add_rule({"action": "status", "status": 503})
    assert client.get(OBS).status_code == 503
    assert client.get(OBS).status_code == 429
    assert next(r for r in proxy.rules() if r.id == rule.id).remaining == 0


def test_retry_after_seconds_from_rate_limit(proxy: FaultProxy, client: httpx.Client) -> None:
    proxy.set_rate("/fhir", rps=0.5, burst=1)
    assert client.get(OBS).status_code == 200
    response = client.get(OBS)
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) == 2


# MARK: the HTTP control API and the CLI


def test_http_control_api(proxy: FaultProxy, client: httpx.Client, upstream: Upstream) -> None:
    control = "/__faults__"
    rules = [
        {"match": {"method": "POST"}, "action": "status", "status": 429, "retry_after": 1},
        {"match": {"method": "GET"}, "action": "status", "status": 500, "times": None},
    ]
    answer = client.post(f"{control}/rules", json=rules)
    assert answer.status_code == 200
    assert [r["action"] for r in answer.json()] == ["status", "status"]
    assert client.post(f"{control}/rules", json={"action": "pass"}).status_code == 200
    assert len(client.get(f"{control}/rules").json()) == 3
    bad = client.post(f"{control}/rules", json={"action": "explode"})
    assert bad.status_code == 400
    assert "action" in bad.json()["error"]

    assert client.post(OBS, json=observation()).status_code == 429
    assert client.get(OBS).status_code == 500
    assert client.delete(f"{control}/rules").status_code == 200
    assert client.get(f"{control}/rules").json() == []
    assert client.get(OBS).status_code == 200

    rate = {"path_prefix": "/fhir/Patient", "rps": 1, "burst": 1, "retry_after_form": "epoch"}
    assert client.post(f"{control}/rate", json=rate).json() == [{**rate, "rps": 1.0}]
    assert client.get("/fhir/Patient").status_code == 200
    assert client.get("/fhir/Patient").status_code == 429
    assert client.post(f"{control}/rate", json={"path_prefix": "/fhir/Patient", "rps": 0}).status_code == 400
    assert client.delete(f"{control}/rate").status_code == 200
    assert client.get("/fhir/Patient").status_code == 200
    assert client.post(OBS, json=observation("gb-9")).status_code == 201

    journal = client.get(f"{control}/journal").json()
    assert [(e["method"], e["client_status"]) for e in journal] == [
        ("POST", 429),
        ("GET", 500),
        ("GET", 200),
        ("GET", 200),
        ("GET", 429),
        ("GET", 200),
        ("POST", 201),
    ]  # control requests are not journaled
    writes = client.get(f"{control}/journal", params={"writes": "1"}).json()
    assert [(e["identifier"], e["upstream_status"]) for e in writes] == [("gb-9", 201)]
    assert client.delete(f"{control}/journal").status_code == 200
    assert client.get(f"{control}/journal").json() == []
    assert client.get(f"{control}/nothing").status_code == 404
    assert client.put(f"{control}/journal").status_code == 405
    assert len(upstream.requests()) == 4


def test_cli_runs_a_proxy(upstream: Upstream) -> None:
    port = free_port()
    command = [sys.executable, "-m", "sandbox", "faultproxy", "--upstream", upstream.base + "/fhir"]
    with subprocess.Popen(
        [*command, "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert f"http://127.0.0.1:{port}/fhir" in line, line
            httpx.post(f"http://127.0.0.1:{port}/__faults__/rules", json={"action": "status", "status": 418})
            assert httpx.get(f"http://127.0.0.1:{port}/fhir/metadata").status_code == 418
            assert httpx.get(f"http://127.0.0.1:{port}/fhir/metadata").status_code == 200
        finally:
            process.terminate()
            process.wait(10)
