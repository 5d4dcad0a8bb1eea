"""Signing in to /admin, in process: named accounts, the session cookie, the lockout and the per-session CSRF token.

Table row 12 of issue 10 (a shared password, no lockout, any name, a CSRF token that never changes) is proved here
and in tests/admin/test_accounts.py.
"""

from __future__ import annotations

import re
from html import unescape
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import select

from app.web.app import create_app
from bff.admin import AdminAccounts
from bff.capabilities import CapabilityService
from bff.settings import Settings, SettingsError
from bff.store.db import Store
from bff.store.models import AuditEvent
from tests.web.conftest import IN_PROCESS

BASE = "http://testserver.local"
PASSWORD = "correct horse battery"
SITE = "hl7-only"
pytestmark = [
    pytest.mark.usefixtures("cheap_hashes"),
    *IN_PROCESS,
]


@pytest.fixture(name="store")
def fx_store(local_store: Store, cheap_hashes: None) -> Store:
    AdminAccounts(local_store).add("i.engineer", PASSWORD, by="test")
    return local_store


@pytest.fixture(name="app")
def fx_app(store: Store, local_app: Litestar) -> Litestar:
    return local_app


def sign_in(client: TestClient[Litestar], name: str = "i.engineer", password: str = PASSWORD) -> int:
    form = {"name": name, "password": password, "next": "/admin/"}
    return client.post("/admin/login", data=form, follow_redirects=False).status_code


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return unescape(found.group(1))


def events(store: Store, event: str) -> list[AuditEvent]:
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)))


def test_admin_pages_need_a_named_account_and_the_cookie_is_strict(app: Litestar) -> None:
    with TestClient(app, base_url=BASE) as client:
        anonymous = client.get("/admin/sites/hl7-only", follow_redirects=False)
        assert anonymous.status_code == 303
        assert anonymous.headers["location"] == "/admin/login?next=/admin/sites/hl7-only"
        assert client.post(f"/admin/sites/{SITE}/capabilities", data={}).status_code == 401
        form = client.get("/admin/login")
        assert 'autocomplete="current-password"' in form.text
        assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
        assert sign_in(client, "i.engineer", "a wrong password") == 401
        assert sign_in(client, "someone.else", PASSWORD) == 401  # any other name: no
        form = {"name": "i.engineer", "password": PASSWORD, "next": "/admin/sites/hl7-only"}
        signed = client.post("/admin/login", data=form, follow_redirects=False)
        assert signed.status_code == 303
        assert signed.headers["location"] == "/admin/sites/hl7-only"
        cookie = signed.headers["set-cookie"]
        assert cookie.startswith("gb_admin=")
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/admin"):
            assert flag.lower() in cookie.lower()
        assert "secure" not in cookie.lower()  # plain HTTP here
        page = client.get("/admin/")
        assert page.status_code == 200
        assert "signed in as i.engineer" in page.text
        assert client.post("/admin/logout", data={"csrf_token": csrf(page.text)}).status_code == 200  # the form
        assert client.get("/admin/", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_over_https_and_open_redirects_are_refused(app: Litestar) -> None:
    with TestClient(app, base_url="https://testserver.local") as client:
        form = {"name": "i.engineer", "password": PASSWORD, "next": "//evil.example/admin/"}
        signed = client.post("/admin/login", data=form, follow_redirects=False)
        assert "secure" in signed.headers["set-cookie"].lower()
        assert signed.headers["location"] == "/admin/"


def test_twenty_wrong_passwords_lock_the_account_and_the_lockout_is_audited_once(app: Litestar, store: Store) -> None:
    with TestClient(app, base_url=BASE) as client:
        for attempt in range(20):
            assert sign_in(client, "i.engineer", f"guess number {attempt}") == 401
        refused = client.post("/admin/login", data={"name": "i.engineer", "password": PASSWORD})
        assert refused.status_code == 401  # the right password, while locked
        assert "locked for a while" in refused.text
        assert client.get("/admin/", follow_redirects=False).status_code == 303
    assert [(e.actor, e.outcome) for e in events(store, "admin.lockout")] == [("i.engineer", "locked")]
    logins = events(store, "admin.login")
    assert sum(e.count for e in logins) == 21
    assert len(logins) <= 4  # counted rows (wrong password, locked) per minute, not one per try


def test_a_client_with_too_many_failures_is_throttled(store: Store) -> None:
    settings = Settings(database_url=store.settings.database_url, secret_key="s" * 32, admin_client_failures=3)
    with TestClient(create_app(settings, store=store), base_url=BASE) as client:
        for n in range(3):
            assert sign_in(client, f"name-{n}", PASSWORD) == 401
        throttled = client.post("/admin/login", data={"name": "i.engineer", "password": PASSWORD})
        assert throttled.status_code == 429
        assert 0 < int(throttled.headers["retry-after"]) <= 15 * 60


def test_nobody_signs_in_or_acts_as_a_system_actor(app: Litestar, store: Store) -> None:
    with TestClient(app, base_url=BASE) as client:
        assert sign_in(client, "outbox-worker", PASSWORD) == 401
        assert sign_in(client, "Outbox-Worker", PASSWORD) == 401
        assert sign_in(client) == 303
        page = client.get(f"/admin/sites/{SITE}")
        form = {"csrf_token": csrf(page.text), "action": "set", "path": "write.mode", "value": '"read_only"',
                "reason": "freeze", "who": "outbox-worker"}  # fmt: skip
        assert client.post(f"/admin/sites/{SITE}/capabilities", data=form, follow_redirects=False).status_code == 303
    history = CapabilityService(store, store.settings.sites_dir).history(SITE)
    assert [e.actor for e in history] == ["i.engineer"]  # the account's name, whatever the form says


def test_the_csrf_token_is_per_session_and_changes_at_sign_in(app: Litestar, store: Store) -> None:
    AdminAccounts(store).add("a.colleague", PASSWORD, by="test")
    form = {"action": "set", "path": "write.mode", "value": '"read_only"', "reason": "freeze"}
    target = f"/admin/sites/{SITE}/capabilities"
    with TestClient(app, base_url=BASE) as client:
        assert sign_in(client, "a.colleague") == 303
        theirs = csrf(client.get("/admin/").text)  # a colleague's session, in another browser
        client.cookies.clear()
        assert sign_in(client) == 303
        mine = csrf(client.get("/admin/").text)
        assert mine != theirs
        assert client.post(target, data={**form, "csrf_token": theirs}).status_code == 403  # another session's
        assert client.post(target, data=form).status_code == 403  # none
        assert sign_in(client) == 303  # signing in again: a new session, a new token
        renewed = csrf(client.get("/admin/").text)
        assert renewed != mine
        assert client.post(target, data={**form, "csrf_token": mine}).status_code == 403  # the old one is dead
        assert client.post(target, data={**form, "csrf_token": renewed}, follow_redirects=False).status_code == 303
    assert len(events(store, "csrf.refused")) == 3  # an authenticated session's refusals stay rows of their own


def test_the_login_page_says_how_to_make_the_first_account(tmp_path: Path) -> None:
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", secret_key="s" * 32))
    try:
        with TestClient(create_app(store.settings, store=store), base_url=BASE) as client:
            assert "glucobridge admin add-user NAME" in client.get("/admin/login").text
    finally:
        store.dispose()


def test_the_shared_admin_password_is_refused_on_load() -> None:
    with pytest.raises(SettingsError, match="glucobridge admin add-user"):
        Settings.from_env({"ADMIN_PASSWORD": "hunter2"})
