"""The EHR shell (patient lists, chart iframes with fresh launches), the MLLP listener and the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import time
from html import unescape
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import TestClient

from sandbox import SandboxConfig, create_app
from sandbox.mllp import END, START, AckListener
from tests.sandbox.flows import found, open_chart, query_of
from tests.sandbox.support import APP_LAUNCH, Server, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_patient_lists(http: httpx.Client, server: Server) -> None:
    page = http.get("/ehr/")
    assert page.status_code == 200
    for site in server.sandbox.sites.values():
        assert f'id="{site.key}"' in page.text
        for seeded in site.seed.patients:
            assert f"/ehr/{site.key}/patients/{seeded.patient_id}" in page.text
    assert "Mateo Lindqvist" in page.text
    assert "mmol/L" in page.text
    assert http.get("/", follow_redirects=False).headers["location"] == "/ehr/"


def test_chart_opens_the_app_with_a_new_launch(http: httpx.Client, server: Server) -> None:
    site = "oracle-like"
    pid = server.sandbox.sites[site].seed.patients[0].patient_id
    first, second = open_chart(http, site, pid), open_chart(http, site, pid)
    assert first["iss"] == server.fhir(site)
    assert first["launch"] != second["launch"]
    page = http.get(f"/ehr/{site}/patients/{pid}")
    src = unescape(found(r'<iframe class="app"[^>]*src="([^"]+)"', page.text))
    assert src.startswith(APP_LAUNCH + "?iss=")
    assert "x-frame-options" not in page.headers
    assert "set-cookie" not in page.headers
    assert "frame-ancestors" in page.headers["content-security-policy"]
    side = http.get(f"/ehr/{site}/side-by-side")
    launches = [
        query_of(unescape(s))["launch"] for s in re.findall(r'<iframe class="app"[^>]*src="([^"]+)"', side.text)
    ]
    assert len(launches) == 2
    assert launches[0] != launches[1]


def test_mllp_listener_acks() -> None:
    received: list[dict[str, Any]] = []

    async def exchange() -> bytes:
        listener = AckListener(on_message=received.append)
        host, port = await listener.start("127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(host, port)
        message = (
            "MSH|^~\\&|GLUCOBRIDGE|GB|EHR|HOSP|20261126120000||ORU^R01|MSG0001|P|2.5.1\rPID|||123456^^^MRN\rOBX|1\r"
        )
        writer.write(START + message.encode() + END)
        await writer.drain()
        answer = await reader.readuntil(END)
        writer.close()
        await writer.wait_closed()
        await listener.close()
        return answer

    answer = asyncio.run(exchange()).decode()
    assert "MSA|AA|MSG0001" in answer
    assert "|ACK^R01^ACK|" in answer
    assert received[0]["patient"] == "123456"
    assert received[0]["obx"] == 1


def test_cli_serve_prints_when_ready() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "serve",
            "--port",
            str(port),
            "--public-base",
            f"http://localhost:{port}",
            "--sites",
            "epic-like,hl7-only",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line == f"sandbox EHR at http://localhost:{port}/ehr/"
        deadline = time.monotonic() + 5
        while True:
            try:
                config = httpx.get(f"http://127.0.0.1:{port}/sites/epic-like/fhir/.well-known/smart-configuration")
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert config.json()["token_endpoint"] == f"http://localhost:{port}/sites/epic-like/auth/token"
        assert httpx.get(f"http://127.0.0.1:{port}/sites/oracle-like/fhir/metadata").status_code == 404
    finally:
        process.terminate()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_mllp_listener_with_the_app_feeds_the_hl7_only_inbox() -> None:
    port = free_port()
    app = create_app(SandboxConfig.local(public_base="http://testserver.local", sites=("hl7-only",), mllp_port=port))
    with TestClient(app) as client, socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        message = "MSH|^~\\&|GLUCOBRIDGE|GB|EHR|HOSP|20261126120000||ORU^R01|MSG0002|P|2.5.1\rPID|||778899^^^MRN\r"
        sock.sendall(START + message.encode() + END)
        answer = b""
        while not answer.endswith(END):
            answer += sock.recv(4096)
        assert b"MSA|AA|MSG0002" in answer
        page = client.get("/ehr/")
        assert "HL7 v2 messages received" in page.text
        assert "MSG0002" in page.text
