"""The admin pages over real HTTP (the demo stack, ADMIN_PASSWORD set) and in-process without a password.

Changes are made at the hl7-only site, which no other web test uses, and undone at the end of each test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.demo import DemoStack, free_port, wait_http
from bff.capabilities import CapabilityService
from bff.clinical import PatientOutcomesView
from bff.outbox import queue
from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import WriteIntent
from bff.store.outcomes import OutcomeService
from engine import WindowSpec
from tests.web.conftest import audit_events, patients

SITE = "hl7-only"
USER = "i.engineer"


@pytest.fixture(name="store")
def fx_store(stack: DemoStack) -> Iterator[Store]:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(name="admin")
def fx_admin(stack: DemoStack, store: Store) -> Iterator[httpx.Client]:
    client = httpx.Client(base_url=stack.app_url, auth=(USER, stack.admin_password), timeout=30)
    try:
        yield client
    finally:
        client.close()
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


def test_admin_needs_the_password_and_is_never_framed(stack: DemoStack) -> None:
    anonymous = httpx.get(f"{stack.app_url}/admin/")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"].startswith('Basic realm="glucobridge admin"')
    assert "frame-ancestors 'none'" in anonymous.headers["content-security-policy"]
    wrong = httpx.get(f"{stack.app_url}/admin/sites/{SITE}", auth=(USER, "not-the-password"))
    assert wrong.status_code == 401
    assert ("admin.login", "refused", {}) in audit_events(stack)
    right = httpx.get(f"{stack.app_url}/admin/", auth=(USER, stack.admin_password))
    assert right.status_code == 200
    assert "frame-ancestors 'none'" in right.headers["content-security-policy"]
    assert right.headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in right.headers


def test_admin_answers_503_when_no_password_is_set(stack: DemoStack) -> None:
    """A second app process on the same store, without ADMIN_PASSWORD."""
    port = free_port()
    env = {k: v for k, v in stack.env.items() if k != "ADMIN_PASSWORD"}
    app = subprocess.Popen([str(Path(sys.executable).parent / "glucobridge"), "serve", "--port", str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", app)
        for path in ("/admin/", f"/admin/sites/{SITE}"):
            response = httpx.get(base + path, auth=(USER, "anything"))
            assert response.status_code == 503
            assert "Set ADMIN_PASSWORD" in response.text
            assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert httpx.post(f"{base}/admin/sites/{SITE}/capabilities", data={"path": "write.mode"}).status_code == 503
    finally:
        app.terminate()
        app.wait(timeout=15)


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
    capabilities.set(SITE, "write.mode", "read_only", who="outbox-worker", reason=reason)  # as the worker does
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
    assert actors == {USER}  # the Basic user name is the actor
