"""The admin pages over real HTTP: the demo stack, whose named account `demo.engineer` signs in with the form.

Changes are made at the hl7-only site, which no other web test uses, and undone at the end of each test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.demo import DemoStack, free_port, wait_http
from bff.actors import SystemActor
from bff.capabilities import CapabilityService
from bff.clinical import PatientOutcomesView
from bff.outbox import queue
from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import AuditEvent, WriteIntent
from bff.store.outcomes import OutcomeService
from engine import WindowSpec
from tests.web.conftest import audit_events, patients

SITE = "hl7-only"


@contextmanager
def signed_in(base: str, user: str, password: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as client:
        response = client.post("/admin/login", data={"name": user, "password": password})
        assert response.status_code == 303, response.text
        yield client


@pytest.fixture(name="store")
def fx_store(stack: DemoStack) -> Iterator[Store]:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(name="admin")
def fx_admin(stack: DemoStack, store: Store) -> Iterator[httpx.Client]:
    try:
        with signed_in(stack.app_url, stack.admin_user, stack.admin_password) as client:
            yield client
    finally:
        capabilities = CapabilityService(store, stack.env["SITES_DIR"])
        for path in capabilities.overrides(SITE):  # leave the site as its file says
            capabilities.clear(SITE, path, who="test", reason="clean up")


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return unescape(found.group(1))


def failed_intent(stack: DemoStack, store: Store, error: str) -> int:
    """A write that failed at the site (made in the store: the sandbox's hl7-only site has no MLLP listener here)."""
    public = PatientOutcomesView(store).public_id("epic-like", patients(stack, "epic-like")[5])
    assert public is not None
    window = OutcomeService(store).compute(public, WindowSpec(days=14), save=True).window
    assert window is not None
    now = datetime.now(UTC)
    intent = queue.enqueue(store, site=SITE, patient_public_id=public, outcome_window_id=window.id, kind="hl7v2",
                           metrics=["summary", now.isoformat()], window=f"{window.window_start_ms}", version=1,
                           payload={"summary": "HL7 v2 ORU^R01 (results)"}, now=now,
                           state="awaiting_signoff", channel="hl7v2")  # fmt: skip
    with store.transaction() as session:  # as the worker records an EHR's refusal
        row = session.get(WriteIntent, intent.id)
        assert row is not None
        row.state, row.attempts, row.last_error = "failed", 3, error
    return intent.id


def state(store: Store, intent_id: int) -> str:
    with store.transaction() as session:
        return str(session.scalar(select(WriteIntent.state).where(WriteIntent.id == intent_id)))


# MARK: access


def test_admin_needs_a_named_account_and_is_never_framed(stack: DemoStack) -> None:
    anonymous = httpx.get(f"{stack.app_url}/admin/")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/admin/login")
    assert "frame-ancestors 'none'" in anonymous.headers["content-security-policy"]
    form = httpx.get(f"{stack.app_url}/admin/login")
    assert form.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{stack.app_url}/admin/", auth=(stack.admin_user, stack.admin_password)).status_code == 303
    wrong = httpx.post(f"{stack.app_url}/admin/login", data={"name": stack.admin_user, "password": "not it"})
    assert wrong.status_code == 401
    assert ("admin.login", "refused", {"reason": "wrong password"}) in audit_events(stack)
    with signed_in(stack.app_url, stack.admin_user, stack.admin_password) as client:
        assert "gb_admin" in client.cookies
        right = client.get("/admin/")
        assert right.status_code == 200
        assert "frame-ancestors 'none'" in right.headers["content-security-policy"]
        assert right.headers["x-frame-options"] == "DENY"
        assert right.headers["x-content-type-options"] == "nosniff"
        assert "set-cookie" not in right.headers
    assert ("admin.login", "allowed", {}) in audit_events(stack)


def test_a_huge_write_id_is_a_404_with_the_security_headers(stack: DemoStack, admin: httpx.Client) -> None:
    """Table row 14: the id reached SQLite, which cannot bind it (500, no headers, not logged)."""
    for path in (f"/admin/sites/{SITE}/intents/999999999999999999999999", f"/admin/sites/{SITE}/intents/-5"):
        response = admin.get(path)
        assert response.status_code == 404
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


def test_sessions_and_the_lockout_hold_across_app_processes(stack: DemoStack, store: Store) -> None:
    """A second app process on the same store: a session opened in one works in the other, and 20 wrong passwords
    spread over both lock the account (once)."""
    password = "a long enough password"
    glucobridge = str(Path(sys.executable).parent / "glucobridge")
    subprocess.run([glucobridge, "admin", "add-user", "lock.target", "--password-file", "-"], input=password,
                   env=stack.env, check=True, capture_output=True, text=True)  # fmt: skip
    port = free_port()
    other = subprocess.Popen([glucobridge, "serve", "--port", str(port)], env=stack.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        second = f"http://127.0.0.1:{port}"
        wait_http(f"{second}/healthz", other)
        with signed_in(stack.app_url, stack.admin_user, stack.admin_password) as client:
            cookie = client.cookies["gb_admin"]
        assert httpx.get(f"{second}/admin/", cookies={"gb_admin": cookie}).status_code == 200
        for attempt in range(20):
            base = (stack.app_url, second)[attempt % 2]
            wrong = httpx.post(f"{base}/admin/login", data={"name": "lock.target", "password": f"guess {attempt}"})
            assert wrong.status_code == 401
        for base in (stack.app_url, second):
            refused = httpx.post(f"{base}/admin/login", data={"name": "lock.target", "password": password})
            assert refused.status_code == 401
    finally:
        other.terminate()
        other.wait(timeout=15)
    with store.transaction() as session:
        lockouts = session.scalars(select(AuditEvent).where(AuditEvent.event == "admin.lockout")).all()
    assert [(e.actor, e.outcome) for e in lockouts] == [("lock.target", "locked")]


# MARK: pages


def test_the_pages_show_each_sites_matrix_and_queue(stack: DemoStack, admin: httpx.Client, store: Store) -> None:
    intent = failed_intent(stack, store, "AR: unknown observation identifier")
    index = admin.get("/admin/").text
    for site in ("epic-like", "oracle-like", "read-only", SITE):
        assert f'href="/admin/sites/{site}"' in index
    assert "<td>epic</td>" in index
    assert "<code>flowsheet_only</code>" in index
    page = admin.get(f"/admin/sites/{SITE}")
    assert page.status_code == 200
    text = page.text
    assert "<code>write.channel</code></th><td><code>&#34;hl7v2&#34;</code>" in text  # the effective matrix
    assert "&#34;receiving_facility&#34;: &#34;HL7ONLY&#34;" in text  # and as JSON
    assert "AR: unknown observation identifier" in text  # last errors, with attempts
    assert f'href="/admin/sites/{SITE}/intents/{intent}"' in text
    assert f"/admin/sites/{SITE}/intents/{intent}/retry" in text
    assert f"/admin/sites/{SITE}/intents/{intent}/cancel" in text
    counts = re.search(r'<table class="counts">.*?</table>', text, re.S)  # queue depth by state
    assert counts is not None
    assert '<td class="num alert">' in counts.group(0)  # a failed write stands out
    detail = admin.get(f"/admin/sites/{SITE}/intents/{intent}").text
    assert "enqueued" in detail  # its transitions
    assert admin.get("/admin/sites/no-such-site").status_code == 404
    assert admin.get(f"/admin/sites/epic-like/intents/{intent}").status_code == 404  # another site's write
    queue.cancel_by_person(store, intent, datetime.now(UTC), who="test", reason="clean up")


def test_retry_and_cancel_need_csrf_and_a_reason_and_are_audited(
    stack: DemoStack, admin: httpx.Client, store: Store
) -> None:
    CapabilityService(store, stack.env["SITES_DIR"]).set(SITE, "write.mode", "read_only", who="test",
                                                         reason="nothing may be sent during this test")  # fmt: skip
    intent = failed_intent(stack, store, "AE: processing error")
    token = csrf(admin.get(f"/admin/sites/{SITE}").text)
    retry = f"/admin/sites/{SITE}/intents/{intent}/retry"
    assert admin.post(retry, data={"reason": "EHR fixed"}).status_code == 403
    assert admin.post(retry, data={"reason": "EHR fixed", "csrf_token": "forged"}).status_code == 403
    assert state(store, intent) == "failed"
    no_reason = admin.post(retry, data={"csrf_token": token, "reason": "  "})
    assert no_reason.status_code == 400
    assert "needs a reason" in no_reason.text
    assert state(store, intent) == "failed"
    done = admin.post(retry, data={"csrf_token": token, "reason": "interface engine restarted"})
    assert done.status_code == 303
    assert state(store, intent) in ("queued", "deferred")  # queued, and deferred by the worker: the site is read-only
    assert "is queued again" in admin.get(done.headers["location"]).text
    again = admin.post(retry, data={"csrf_token": token, "reason": "twice"})
    assert again.status_code == 409  # only a failed or unknown write can be retried
    cancel = f"/admin/sites/{SITE}/intents/{intent}/cancel"
    assert admin.post(cancel, data={"csrf_token": token}).status_code == 400
    assert admin.post(cancel, data={"csrf_token": token, "reason": "sent by hand"}).status_code == 303
    assert state(store, intent) == "cancelled"
    events = [(e, o, d) for e, o, d in audit_events(stack) if d.get("intent") == intent]
    assert ("outbox.retry", "allowed") in [(e, o) for e, o, _ in events]
    assert ("outbox.cancel", "allowed") in [(e, o) for e, o, _ in events]
    assert {d["reason"] for _, _, d in events} == {"interface engine restarted", "sent by hand"}
    assert ("csrf.refused", "refused", {"path": "admin/retry"}) in audit_events(stack)


def test_a_degraded_site_is_shown_and_switched_back_with_the_form(
    stack: DemoStack, admin: httpx.Client, store: Store
) -> None:
    capabilities = CapabilityService(store, stack.env["SITES_DIR"])
    reason = "the EHR answered 403 to a hl7v2 write: it no longer allows writes"
    capabilities.set(SITE, "write.mode", "read_only", who=SystemActor.OUTBOX_WORKER, reason=reason)  # as the worker
    index = admin.get("/admin/").text
    assert "degraded by outbox-worker at " in index
    assert reason in index
    page = admin.get(f"/admin/sites/{SITE}").text
    assert "Degraded to read-only by outbox-worker" in page
    token = csrf(page)
    form = f"/admin/sites/{SITE}/capabilities"
    assert admin.post(form, data={"action": "clear", "path": "write.mode", "reason": "x"}).status_code == 403
    assert admin.post(form, data={"csrf_token": token, "action": "clear", "path": "write.mode"}).status_code == 400
    bad = admin.post(form, data={"csrf_token": token, "action": "set", "path": "write.mode", "value": '"sometimes"',
                                 "reason": "typo"})  # fmt: skip
    assert bad.status_code == 400
    assert "must be one of" in bad.text
    assert capabilities.get(SITE).write.mode.value == "read_only"
    cleared = admin.post(form, data={"csrf_token": token, "action": "clear", "path": "write.mode",
                                     "reason": "interface back up"})  # fmt: skip
    assert cleared.status_code == 303
    assert capabilities.get(SITE).write.mode.value == "observations"  # the file's value again
    assert "degraded by outbox-worker" not in admin.get("/admin/").text
    changed = admin.post(form, data={"csrf_token": token, "action": "set", "path": "write.mode",
                                     "value": '"read_only"', "reason": "go-live freeze"})  # fmt: skip
    assert changed.status_code == 303
    assert capabilities.get(SITE).write.mode.value == "read_only"  # takes effect: no restart
    assert capabilities.overrides(SITE) == {"write.mode": "read_only"}
    history = admin.get(f"/admin/sites/{SITE}").text
    assert "go-live freeze" in history
    assert "interface back up" in history
    events = [(e, o, d) for e, o, d in audit_events(stack) if e.startswith("site.capability")]
    assert ("site.capability.set", "allowed") in [(e, o) for e, o, d in events if d.get("reason") == "go-live freeze"]
    actors = {row.actor for row in capabilities.history(SITE) if row.detail.get("reason") == "go-live freeze"}
    assert actors == {stack.admin_user}  # the account's name is the actor
