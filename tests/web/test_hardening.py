"""Web hardening, in process (the app factory around a fresh SQLite store): security headers on every response,
HSTS over HTTPS only, out-of-range path ids, unexpected errors, and audit rows that a flood cannot multiply.

Table rows of issue 10 proved here: 13 (audit flood), 14 (huge path id, unlogged 500), 15 (nosniff, HSTS).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import func, select

from app.web.app import create_app
from app.web.security import HSTS, client_address, over_https
from bff.smart import SiteRegistry
from bff.store.db import Store
from bff.store.models import AuditEvent
from tests.web.conftest import IN_PROCESS

BASE = "http://testserver.local"
pytestmark = IN_PROCESS


@pytest.fixture(name="store")
def fx_store(local_store: Store) -> Store:
    return local_store


@pytest.fixture(name="app")
def fx_app(local_app: Litestar) -> Litestar:
    return local_app


def audit_rows(store: Store) -> list[AuditEvent]:
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def assert_secured(response: Any) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors" in response.headers["content-security-policy"]


# MARK: headers on every response (row 15)


@pytest.mark.parametrize("path", ["/healthz", "/.well-known/jwks.json", "/static/app.css", "/no/such/page",
                                  "/admin/login", "/launch?iss=https://evil.example/fhir"])  # fmt: skip
def test_every_response_carries_nosniff_and_the_security_headers(app: Litestar, path: str) -> None:
    with TestClient(app, base_url=BASE) as client:
        response = client.get(path)
    assert response.status_code in (200, 403, 404)
    assert_secured(response)
    assert "strict-transport-security" not in response.headers  # plain HTTP: no HSTS


def test_hsts_over_https_only_and_a_forwarded_proto_only_from_a_trusted_proxy(app: Litestar) -> None:
    with TestClient(app, base_url="https://testserver.local") as client:
        for path in ("/healthz", "/static/app.css", "/no/such/page", "/admin/login"):
            assert client.get(path).headers["strict-transport-security"] == HSTS
    with TestClient(app, base_url=BASE) as client:
        spoofed = client.get("/healthz", headers={"X-Forwarded-Proto": "https"})  # the test client is no proxy
        assert "strict-transport-security" not in spoofed.headers


def test_a_trusted_proxy_names_the_scheme_and_the_client() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)

    def scope(peer: str, **headers: str) -> dict[str, Any]:
        raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
        return {"type": "http", "scheme": "http", "client": (peer, 5000), "headers": raw}

    behind = scope("10.0.0.2", x_forwarded_proto="https", x_forwarded_for="203.0.113.9, 10.0.0.7")
    assert over_https(behind, proxies)
    assert client_address(behind, proxies) == "203.0.113.9"
    direct = scope("198.51.100.4", x_forwarded_proto="https", x_forwarded_for="203.0.113.9")
    assert not over_https(direct, proxies)  # anybody can send the header
    assert client_address(direct, proxies) == "198.51.100.4"
    spoofed = scope("10.0.0.2", x_forwarded_for="1.2.3.4, 203.0.113.9")  # the client wrote 1.2.3.4 itself
    assert client_address(spoofed, proxies) == "203.0.113.9"
    assert over_https({**scope("198.51.100.4"), "scheme": "https"}, ())
    assert not over_https(scope("10.0.0.2", x_forwarded_proto="https"), ())  # no proxy trusted by default


# MARK: path ids and unexpected errors (row 14)


@pytest.mark.parametrize("number", ["999999999999999999999999", "9223372036854775808", "-1", "0", "9" * 5000])
def test_an_out_of_range_path_id_is_a_404_with_the_security_headers(app: Litestar, number: str) -> None:
    with TestClient(app, base_url=BASE) as client:
        for path in (f"/admin/sites/hl7-only/intents/{number}", f"/v/h/patients/p/chart/signoffs/{number}/status"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert_secured(response)


class ExplodingSmart:
    """A SMART client whose launch fails in a way nobody planned for (the message names a patient)."""

    registry = SiteRegistry([])

    async def begin(self, iss: str, launch: str | None, *, standalone: bool = False) -> Any:
        raise RuntimeError("patient 4711 Jane Roe: connection pool exhausted")


def test_an_unexpected_error_is_a_500_page_with_the_headers_logged_without_phi(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(store.settings, store=store, smart=ExplodingSmart())  # type: ignore[arg-type]
    with TestClient(app, base_url="https://testserver.local") as client:
        logging.getLogger("glucobridge.app").addHandler(caplog.handler)  # the app's start-up configured logging
        try:
            response = client.get("/launch", params={"iss": "https://ehr.example/fhir", "launch": "secret-4711"})
        finally:
            logging.getLogger("glucobridge.app").removeHandler(caplog.handler)
    assert response.status_code == 500
    assert_secured(response)
    assert response.headers["strict-transport-security"] == HSTS
    assert "Something went wrong" in response.text
    assert "4711" not in response.text
    logged = [r.getMessage() for r in caplog.records if r.name == "glucobridge.app"]
    assert len(logged) == 1
    assert "RuntimeError" in logged[0]
    assert "/launch" in logged[0]  # the route's template
    assert "4711" not in logged[0]
    assert "Jane" not in logged[0]


# MARK: audit that cannot be flooded (row 13)


def test_a_thousand_unauthenticated_launches_and_callbacks_add_a_bounded_number_of_audit_rows(
    app: Litestar, store: Store
) -> None:
    with TestClient(app, base_url=BASE) as client:
        for _ in range(1000):
            assert client.get("/callback", params={"error": "x"}).status_code == 400
            assert client.get("/launch").status_code == 403
    rows = audit_rows(store)
    # per event, client and minute: 2 events, and the loop may cross one minute boundary (or two, on a slow day)
    assert len(rows) <= 2 * 3
    assert {(r.event, r.outcome, r.client) for r in rows} == {
        ("launch.denied", "refused", "testclient"),
        ("launch.iss_not_allowed", "refused", "testclient"),
    }
    counts = {e: sum(r.count for r in rows if r.event == e) for e in ("launch.denied", "launch.iss_not_allowed")}
    assert counts == {"launch.denied": 1000, "launch.iss_not_allowed": 1000}  # every one is counted


def test_varied_noise_is_still_bounded(app: Litestar, store: Store) -> None:
    with TestClient(app, base_url=BASE) as client:
        for n in range(300):
            client.get("/launch", params={"iss": f"https://evil.example/{n}"})
    with store.transaction() as session:
        count = session.scalar(select(func.count()).select_from(AuditEvent))
    assert count is not None
    assert count <= 2 * 101  # MAX_ROWS_PER_MINUTE and one overflow row, per minute crossed
