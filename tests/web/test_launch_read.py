"""Reading CGM from the EHR at launch (issue 12, item 3), over real HTTP: the sandbox EHR, the app and the job worker
as processes, a store that starts empty (`fresh_stack`). The first launch reads the patient's 14 days from the EHR
(paged, search values percent-encoded), within the budget, and the view follows it; a later launch reads only
what is newer than the last stored reading, and nothing is stored twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl

import httpx
from sqlalchemy import func, select, update

from app.demo import DemoStack
from bff.capabilities import CapabilityService
from bff.jobs.context import READ_BUDGET_S
from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import EhrRead, Reading
from bff.vendors import profile_for
from tests.web.conftest import launched, patients

HTMX = {"HX-Request": "true"}


def open_store(stack: DemoStack) -> Store:
    return Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)


def searches(stack: DemoStack, site: str) -> list[dict[str, str]]:
    journal = httpx.get(f"{stack.ehr_url}/sandbox/sites/{site}/journal").json()
    return [
        dict(parse_qsl(entry["query"]))
        for entry in journal
        if entry["method"] == "GET" and entry["path"].endswith("/fhir/Observation")
    ]


def raw_searches(stack: DemoStack, site: str) -> list[str]:
    journal = httpx.get(f"{stack.ehr_url}/sandbox/sites/{site}/journal").json()
    return [e["query"] for e in journal if e["method"] == "GET" and e["path"].endswith("/fhir/Observation")]


def poll_until_over(client: httpx.Client, url: str, timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = client.get(url, headers=HTMX)
        assert answer.status_code in (200, 286), answer.text
        if answer.status_code == 286:
            return answer
        time.sleep(0.5)
    raise AssertionError(f"the read did not finish within {timeout_s} s")


def test_a_launch_reads_the_patients_cgm_from_the_ehr_and_a_later_one_only_what_is_newer(
    fresh_stack: DemoStack,
) -> None:
    stack, site = fresh_stack, "epic-like"
    patient = patients(stack, site)[0]
    httpx.delete(f"{stack.ehr_url}/sandbox/sites/{site}/journal")

    flow = launched(stack, site, patient)
    started = time.monotonic()
    view = flow.app.get(flow.view_url)
    assert view.status_code == 200
    assert "Reading CGM data from the EHR" in view.text  # nothing stored: the view says it is reading
    assert 'id="ehr-read"' in view.text
    assert 'hx-trigger="load delay:1s"' in view.text
    base = flow.view_url.split("?")[0]
    done = poll_until_over(flow.app, f"{base}ehr-read?days=14", READ_BUDGET_S + 7)
    elapsed = time.monotonic() - started
    assert done.headers["HX-Retarget"] == "#summary"  # the fresh summary replaces the empty one
    assert done.headers["HX-Reswap"] == "outerHTML"
    assert 'class="tir-bar"' in done.text
    assert 'id="agp-14"' in done.text
    assert "Read from the EHR" in done.text
    assert "New CGM readings from the EHR." in done.text  # what the live region says after the swap
    assert elapsed < READ_BUDGET_S + 7

    store = open_store(stack)
    try:
        with store.transaction() as session:
            read = session.scalars(select(EhrRead).where(EhrRead.site_key == site)).one()
            stored = session.scalar(select(func.count()).select_from(Reading))
        assert read.state == "done"
        assert read.fhir_patient == f"Patient/{patient}"
        assert read.added == stored == read.received
        assert stored > 3500  # 14 days of five-minute readings, a few dropouts
        assert read.pages >= 4  # paged: at most 1000 a page

        first = searches(stack, site)
        assert len(first) == read.pages
        assert first[0]["patient"] == patient
        caps = CapabilityService(store, stack.env["SITES_DIR"]).get(site)
        codes = profile_for(caps).reading_codes()  # the vendor profile's: the catalogue's LOINC and the site's rows
        assert first[0]["code"] == ",".join(f"{system}|{code}" for system, code in codes)
        assert first[0]["date"].startswith("ge")
        assert first[0]["_sort"] == "date"
        assert first[0]["_count"] == "1000"
        assert all("_offset" in q for q in first[1:])  # the EHR's own next links, followed
        assert "%7C" in raw_searches(stack, site)[0]  # the token values' '|', percent-encoded

        # The same view again at once: nothing is read again, the freshness is shown straight away.
        again = flow.app.get(flow.view_url)
        assert 'class="tir-bar"' in again.text
        assert "Read from the EHR" in again.text
        assert 'hx-trigger="load delay:1s"' not in again.text
        assert len(searches(stack, site)) == len(first)

        # A launch a few minutes later: only what is newer than the last stored reading; nothing stored twice.
        with store.transaction() as session:
            last_ms = session.scalar(select(func.max(Reading.observed_ms)))
            session.execute(update(EhrRead).values(last_read_at=datetime.now(UTC) - timedelta(minutes=5)))
        second = launched(stack, site, patient)
        view2 = second.app.get(second.view_url)
        assert 'class="tir-bar"' in view2.text  # what is stored is shown at once
        over = poll_until_over(second.app, f"{second.view_url.split('?')[0]}ehr-read?days=14", READ_BUDGET_S + 7)
        assert over.status_code == 286
        assert "HX-Retarget" not in over.headers  # nothing new: only the freshness line
        assert "Read from the EHR" in over.text
        later = searches(stack, site)[len(first) :]
        assert len(later) == 1
        # From the last stored reading's second (it is read again and adds nothing: keys are deterministic).
        assert later[0]["date"] == "ge" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_ms // 1000))
        with store.transaction() as session:
            assert session.scalar(select(func.count()).select_from(Reading)) == stored
            read = session.scalars(select(EhrRead).where(EhrRead.site_key == site)).one()
        assert read.state == "done"
        assert read.added == 0
    finally:
        store.dispose()
