"""What the EHR says when a sign-in fails is kept for the integration engineer (audit and /admin), and the
clinician reads plain words: the demo stack over real HTTP (the sandbox EHR and the app as processes)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from app.demo import DemoStack
from bff.audit import NEWEST_FIRST
from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import AuditEvent
from tests.web.conftest import consent, finish, launched, patients, start_launch

DESCRIPTION = "The scope patient/Glucose.rs is not registered for this client"


@pytest.fixture(name="store")
def fx_store(stack: DemoStack) -> Iterator[Store]:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        yield store
    finally:
        store.dispose()


def events(store: Store, event: str) -> list[AuditEvent]:
    """Newest first by the latest occurrence: an error like one earlier in the same minute bumps that row."""
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(*NEWEST_FIRST)))


def admin_page(stack: DemoStack, site: str) -> str:
    with httpx.Client(base_url=stack.app_url, timeout=30) as client:
        signed = client.post("/admin/login", data={"name": stack.admin_user, "password": stack.admin_password})
        assert signed.status_code == 303, signed.text
        page = client.get(f"/admin/sites/{site}")
        assert page.status_code == 200, page.text
        return page.text


def test_an_authorize_error_is_kept_under_its_site_and_the_clinician_reads_plain_words(
    stack: DemoStack, store: Store
) -> None:
    flow = start_launch(stack, "oracle-like", patients(stack, "oracle-like")[0])
    refusal = {"state": flow.state, "error": "invalid_scope", "error_description": DESCRIPTION}
    answer = flow.app.get(f"{stack.app_url}/callback", params=refusal)
    assert answer.status_code == 400
    assert "Sign-in did not complete" in answer.text
    assert DESCRIPTION not in answer.text  # the EHR's words are for the engineer
    assert "admin page" in answer.text
    denied = [e for e in events(store, "launch.denied") if e.site_key == "oracle-like"]
    assert denied[0].detail == {"error": "invalid_scope", "error_description": DESCRIPTION}
    again = flow.app.get(f"{stack.app_url}/callback", params={"state": flow.state, "code": "x"})
    assert again.status_code == 400  # the state was spent by the error
    page = admin_page(stack, "oracle-like")
    assert "Sign-in and discovery errors" in page
    assert DESCRIPTION in page
    assert "invalid_scope" in page


def test_a_refused_code_exchange_keeps_the_ehr_s_error_description(stack: DemoStack, store: Store) -> None:
    patient = patients(stack, "epic-like")[0]
    first = launched(stack, "epic-like", patient)
    again = consent(start_launch(stack, "epic-like", patient))
    again.callback_url = again.callback_url.split("code=")[0] + f"code={first.code}&state={again.state}"
    answer = finish(again)
    assert answer.status_code == 400
    assert "This launch cannot be completed" in answer.text
    assert "already used" not in answer.text
    errors = [e for e in events(store, "smart.error") if e.site_key == "epic-like"]
    detail = errors[0].detail
    assert (detail["where"], detail["kind"], detail["error"], detail["status"]) == (
        "callback", "TokenExchangeError", "invalid_grant", 400
    )  # fmt: skip
    assert "authorization code already used" in detail["error_description"]
    assert "authorization code already used" in admin_page(stack, "epic-like")
