"""Send to chart over real HTTP: review, sign, follow the write into the sandbox EHR (the demo stack's worker).

Each test uses its own patient: the stack (and so the store and the EHR) is shared by the whole session.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright
from sqlalchemy import select

from app.demo import DemoStack
from bff.broker.broker import ORACLE_SCOPES
from bff.capabilities import CapabilityService
from bff.settings import Settings
from bff.smart.backend import BackendAuth
from bff.store.db import Store
from bff.store.models import SignOff, WriteAttempt, WriteIntent
from engine.catalogue import CATALOGUE
from engine.catalogue import filed as filed_value
from tests.web.conftest import Flow, audit_events, cli_outcomes, launched, patients
from tests.web.test_browser import ARGS, CHROMIUM, open_in_chart, shot

HX = {"HX-Request": "true"}
TIR_LOINC = "http://loinc.org|97510-2"


# MARK: helpers


def fields(html: str) -> dict[str, str]:
    """The sign form's hidden fields."""
    return {k: unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html)}


def review(flow: Flow, days: int = 14, **headers: str) -> httpx.Response:
    response = flow.app.get(flow.view_url + f"chart/review?days={days}", headers={**HX, **headers})
    assert response.status_code == 200, response.text
    return response


def status_url(flow: Flow, html: str) -> str:
    path = re.search(r'hx-get="([^"]+/status)"', html)
    assert path is not None, html
    return str(httpx.URL(flow.stack.app_url).join(unescape(path.group(1))))


def poll_until_final(flow: Flow, url: str, timeout_s: float = 60.0) -> httpx.Response:
    """Poll the badge as htmx would until it answers 286 (htmx's stop-polling status)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = flow.app.get(url, headers=HX)
        assert response.status_code in (200, 286), response.text
        if response.status_code == 286:
            return response
        assert time.monotonic() < deadline, f"not final within {timeout_s} s: {response.text}"
        time.sleep(0.5)


def state_of(html: str) -> str:
    found = re.search(r'data-state="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


def signoff_id(html: str) -> int:
    found = re.search(r'aria-label="Sign-off (\d+)"', html)
    assert found is not None, html
    return int(found.group(1))


def signoffs_in_store(stack: DemoStack, site: str) -> list[tuple[int, str]]:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        with store.transaction() as session:
            rows = session.execute(select(SignOff.id, SignOff.patient_public_id).where(SignOff.site_key == site))
            return [(int(i), str(p)) for i, p in rows]
    finally:
        store.dispose()


def public_id(site: str, patient: str) -> str:
    return f"site:{site}:fhir|Patient/{patient}"


def ehr_search(stack: DemoStack, site: str, query: str) -> dict[str, Any]:
    """Search the sandbox EHR's FHIR API with a system token of the app's own backend client and key."""
    iss = f"{stack.ehr_url}/sites/{site}/fhir"
    pem = Path(stack.env["SMART_BACKEND_KEY_FILE"]).read_bytes()

    async def search() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as http:
            auth = BackendAuth("glucobridge-backend", pem, stack.env["SMART_BACKEND_KID"], "ES384", http=http)
            token = await auth.token(iss, ORACLE_SCOPES if site == "oracle-like" else ())  # Oracle lists scopes
            response = await http.get(f"{iss}/{query}", headers={"Authorization": f"Bearer {token}",
                                                                  "Accept": "application/fhir+json"})  # fmt: skip
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

    with ThreadPoolExecutor(1) as pool:  # its own event loop: Playwright's sync API may hold this thread's
        return pool.submit(lambda: asyncio.run(search())).result()


def journal_writes(stack: DemoStack, site: str) -> list[dict[str, Any]] | None:
    """The write requests the site's FHIR server received (the sandbox journal), or None without a journal."""
    response = httpx.get(f"{stack.ehr_url}/sandbox/sites/{site}/journal", params={"writes": "1"})
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()
    return entries


def flowsheet_rows(stack: DemoStack) -> dict[str, str]:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        caps = CapabilityService(store, stack.env["SITES_DIR"]).get("epic-like")
    finally:
        store.dispose()
    return {**caps.write.flowsheet_rows, "system": caps.write.flowsheet_system}


# MARK: review


def test_review_shows_exactly_what_will_be_written(stack: DemoStack) -> None:
    patient = patients(stack, "epic-like")[2]
    flow = launched(stack, "epic-like", patient)
    view = flow.app.get(flow.view_url)
    assert "Send to chart" in view.text
    assert 'hx-get="' + flow.view_url.removeprefix(stack.app_url) + "chart/review?days=14" in view.text
    page = review(flow).text
    assert "<html" not in page  # the htmx fragment
    assert "flowsheet rows only" in page
    assert "<code>flowsheet_only</code>" in page
    assert "8 flowsheet rows" in page
    assert "Technical plan for the integration team: 8 requests" in page  # behind a disclosure (issue 11, item 5)
    rows = flowsheet_rows(stack)
    for key in ("tir", "tbr_l1", "tbr_l2", "tar_l1", "tar_l2", "mean_glucose", "gmi", "cv"):
        assert f"Flowsheet row {rows[key]}" in page
    metrics = cli_outcomes(stack, public_id("epic-like", patient))["metrics"]
    assert isinstance(metrics, dict)
    tir = 100.0 - metrics["time_below_70_pct"] - metrics["time_above_180_pct"]
    assert re.search(rf'Flowsheet row {rows["tir"]}<small>[^<]+</small></th>\s*<td class="num">{tir:.1f} %<', page)
    assert "Encounter/" in page  # filed to the launch's encounter
    form = fields(page)
    assert len(form["digest"]) == 64
    assert form["days"] == "14"
    assert form["unit"] == "mg/dL"
    assert "Signing as" in page
    full = flow.app.get(flow.view_url + "chart/review?days=30")  # without htmx: a page (no JS needed)
    assert "<html" in full.text
    assert "Send to chart: 30 days" in full.text
    assert flow.app.get(flow.view_url + "chart/review?days=7").status_code == 400


def test_review_at_a_full_site_shows_the_note_text_and_the_pdf(stack: DemoStack) -> None:
    flow = launched(stack, "oracle-like", patients(stack, "oracle-like")[2])
    page = review(flow).text
    assert "results, note and report" in page
    assert "8 results (Observations)" in page
    assert "Technical plan for the integration team: 10 requests" in page  # 8 results, the note, the PDF
    assert "LOINC 97510-2" in page
    note = re.search(r'<li class="write write-note">.*?<pre class="write-text">(.*?)</pre>', page, re.S)
    assert note is not None
    assert "Time in range" in unescape(note.group(1))
    size = re.search(r"Attachment: application/pdf, ([\d,]+) bytes", page)
    assert size is not None
    assert int(size.group(1).replace(",", "")) > 1000


def test_a_refusal_is_shown_and_nothing_can_be_signed(stack: DemoStack) -> None:
    flow = launched(stack, "epic-like", patients(stack, "epic-like")[4])  # p5: no open encounter
    page = review(flow).text
    assert "This cannot be sent to the chart." in page
    assert "open encounter" in page
    assert 'name="digest"' not in page
    assert "<button" not in page


# MARK: signing is protected


def test_signing_without_or_with_a_wrong_csrf_token_is_refused_and_writes_nothing(stack: DemoStack) -> None:
    patient = patients(stack, "epic-like")[5]
    flow = launched(stack, "epic-like", patient)
    form = fields(review(flow).text)
    url = flow.view_url + "chart/signoffs"
    without = {k: v for k, v in form.items() if k != "csrf_token"}
    assert flow.app.post(url, data=without).status_code == 403
    assert flow.app.post(url, data={**without, "csrf_token": "forged"}).status_code == 403
    assert flow.app.post(url, data=without, headers={"X-CSRF-Token": "forged", **HX}).status_code == 403
    assert ("csrf.refused", "refused", {"path": "chart/signoffs"}) in audit_events(stack)
    assert public_id("epic-like", patient) not in {p for _, p in signoffs_in_store(stack, "epic-like")}


def test_signing_for_another_patient_than_the_launch_is_refused(stack: DemoStack) -> None:
    a, b = patients(stack, "oracle-like")[4:6]
    flow = launched(stack, "oracle-like", a)
    form = fields(review(flow).text)
    other = flow.view_url.replace(f"/patients/{a}/", f"/patients/{b}/")
    assert flow.app.post(other + "chart/signoffs", data=form).status_code == 403
    assert flow.app.get(other + "chart/review?days=14").status_code == 403
    assert flow.app.get(other + "chart/signoffs").status_code == 403
    assert {"launch_patient": a, "requested_patient": b} in [
        d for e, _, d in audit_events(stack) if e == "patient.mismatch"
    ]
    assert public_id("oracle-like", b) not in {p for _, p in signoffs_in_store(stack, "oracle-like")}


def test_a_stale_review_asks_to_review_again(stack: DemoStack) -> None:
    flow = launched(stack, "oracle-like", patients(stack, "oracle-like")[3])  # p4: no CGM data
    assert "Send to chart" not in flow.app.get(flow.view_url).text
    nothing = flow.app.get(flow.view_url + "chart/review?days=14", headers=HX)
    assert nothing.status_code == 404
    assert "nothing to send" in nothing.text
    flow = launched(stack, "oracle-like", patients(stack, "oracle-like")[1])
    form = {**fields(review(flow).text), "digest": "0" * 64}
    stale = flow.app.post(flow.view_url + "chart/signoffs", data=form, headers=HX)
    assert stale.status_code == 409
    assert "review again" in stale.text
    assert "Review again" in stale.text
    assert public_id("oracle-like", patients(stack, "oracle-like")[1]) not in {
        p for _, p in signoffs_in_store(stack, "oracle-like")
    }


# MARK: signed writes reach the EHR


def in_context_attempts(stack: DemoStack, signoff: int) -> int:
    """How many writes of a sign-off were confirmed with the clinician's own token (not the app's system one)."""
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        with store.transaction() as session:
            return (
                session.query(WriteAttempt)
                .join(WriteIntent, WriteIntent.id == WriteAttempt.intent_id)
                .filter(WriteIntent.signoff_id == signoff, WriteAttempt.outcome == "confirmed",
                        WriteAttempt.detail.like("sent in context%"))
                .count()
            )  # fmt: skip
    finally:
        store.dispose()


def test_a_sign_off_at_the_epic_like_site_ends_confirmed_in_the_flowsheet(stack: DemoStack) -> None:
    patient = patients(stack, "epic-like")[0]
    flow = launched(stack, "epic-like", patient)
    page = review(flow).text
    form = fields(page)
    signed = flow.app.post(flow.view_url + "chart/signoffs", data=form, headers=HX)
    assert signed.status_code == 200, signed.text
    assert signed.headers["hx-trigger"] == "signoff-recorded"  # the list of sign-offs reloads itself
    assert "Practitioner/" in signed.text  # the signer: the launch's fhirUser
    assert form["digest"][:12] in signed.text
    # Filed in context while the clinician waited: the panel is final already, and its badge does not poll.
    assert state_of(signed.text) == "confirmed"
    assert 'hx-trigger="every' not in signed.text
    final = flow.app.get(flow.view_url + f"chart/signoffs/{signoff_id(signed.text)}/status", headers=HX)
    assert final.status_code == 286  # htmx's stop-polling answer
    assert "8 items: 8 confirmed" in final.text
    # The launch was granted user/Observation.write: the rows were filed in context, with the clinician's token.
    assert in_context_attempts(stack, signoff_id(signed.text)) == 8

    rows = flowsheet_rows(stack)
    system = rows.pop("system")
    codes = ",".join(f"{system}|{row}" for row in rows.values())
    found = ehr_search(stack, "epic-like", f"Observation?patient={patient}&code={codes}&_count=50")
    filed = {r["resource"]["code"]["coding"][0]["code"]: r["resource"] for r in found.get("entry", [])}
    assert set(filed) == set(rows.values())
    tir = filed[rows["tir"]]
    assert tir["category"][0]["coding"][0]["code"] == "vital-signs"
    assert tir["encounter"]["reference"].startswith("Encounter/")
    metrics = cli_outcomes(stack, public_id("epic-like", patient))["metrics"]
    assert isinstance(metrics, dict)
    expected_tir = filed_value(CATALOGUE["tir"], metrics)  # 100 − below 70 − above 180, one decimal, rounded once
    assert expected_tir is not None
    assert json.dumps(tir["valueQuantity"]["value"]) == str(expected_tir)  # the same decimal string as reviewed
    assert f"{expected_tir} %" in review(flow).text  # and the review showed exactly that

    again = flow.app.post(flow.view_url + "chart/signoffs", data=form, headers=HX)  # a double click
    assert signoff_id(again.text) == signoff_id(signed.text)
    listed = flow.app.get(flow.view_url + "chart/signoffs", headers=HX).text
    assert listed.count("Sign-off ") == 1
    assert "confirmed" in listed


def test_a_sign_off_without_javascript_redirects_to_its_page(stack: DemoStack) -> None:
    flow = launched(stack, "oracle-like", patients(stack, "oracle-like")[0])
    form = fields(flow.app.get(flow.view_url + "chart/review?days=14").text)
    signed = flow.app.post(flow.view_url + "chart/signoffs", data=form)
    assert signed.status_code == 303
    page = flow.app.get(httpx.URL(stack.app_url).join(signed.headers["location"]))
    assert page.status_code == 200
    assert "<html" in page.text
    final = poll_until_final(flow, status_url(flow, page.text))
    assert state_of(final.text) == "confirmed", final.text
    assert "10 items: 10 confirmed" in final.text  # 8 results, the note and the PDF


def test_a_read_only_site_defers_the_sign_off_and_receives_nothing(stack: DemoStack) -> None:
    patient = patients(stack, "read-only")[0]
    flow = launched(stack, "read-only", patient)
    page = review(flow).text
    assert "Nothing can be written to this chart now." in page
    assert "queued as" in page
    assert "deferred" in page
    signed = flow.app.post(flow.view_url + "chart/signoffs", data=fields(page), headers=HX)
    assert signed.status_code == 200, signed.text
    assert state_of(signed.text) == "deferred"
    assert re.search(r"place \d+ in the site's queue", signed.text)
    url = status_url(flow, signed.text)
    time.sleep(3)  # the worker passes over the site (every second) and leaves it deferred
    badge = flow.app.get(url, headers=HX)
    assert badge.status_code == 200  # not final: it keeps polling (slowly, nothing moves until the site does)
    assert state_of(badge.text) == "deferred"
    assert 'hx-trigger="every 30s"' in badge.text
    assert re.search(r"place \d+ in the site's queue", badge.text)
    assert (
        ehr_search(stack, "read-only", f"Observation?patient={patient}&code={TIR_LOINC}&_summary=count")["total"] == 0
    )
    writes = journal_writes(stack, "read-only")
    if writes is not None:
        assert writes == []


# MARK: in the browser


@pytest.fixture(scope="module", name="browser")
def fx_browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: .ci/run installs it (apt-get install chromium)")
    playwright: Playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def test_send_to_chart_in_the_ehr_frame_reaches_confirmed(browser: Browser, stack: DemoStack) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    frame = open_in_chart(page, stack, "epic-like", patients(stack, "epic-like")[1])
    frame.locator("#signoffs .hint").wait_for(timeout=20_000)  # the sign-off list loaded itself: none yet
    frame.locator("a.button:has-text('Send to chart')").click()
    frame.locator(".review .write-rows").first.wait_for(state="attached", timeout=30_000)  # in the technical plan
    assert frame.locator(".write-rows tbody tr").count() == 8
    frame.locator("button:has-text('Sign and send to chart')").click()
    frame.locator("#send-to-chart .signoff .badge").first.wait_for(timeout=20_000)
    frame.locator("#send-to-chart .signoff .badge-confirmed").first.wait_for(timeout=60_000)
    frame.locator("#signoffs .signoff-list .badge-confirmed").first.wait_for(timeout=20_000)
    shot(page, "send-to-chart-confirmed")
    page.close()


def test_the_review_fits_a_narrow_ehr_side_panel(browser: Browser, stack: DemoStack) -> None:
    page = browser.new_page(viewport={"width": 400, "height": 900})
    frame = open_in_chart(page, stack, "oracle-like", patients(stack, "oracle-like")[2])  # a review, no signing
    frame.locator("a.button:has-text('Send to chart')").click()
    frame.locator(".review .write-note .write-text").wait_for(timeout=30_000)
    app_frame = next(f for f in page.frames if f.url.startswith(stack.app_url))
    overflow = app_frame.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1  # no horizontal scrolling in a side panel
    frame.locator("button:has-text('Sign and send to chart')").focus()
    shot(page, "send-to-chart-review-narrow")
    page.close()


# MARK: corrections


def glucobridge(stack: DemoStack, *argv: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "glucobridge"), *argv], env=stack.env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def backfill(stack: DemoStack, site: str, patient: str, value: int = 320) -> int:
    """Readings that arrive late for the gaps of the last 14 days (a phone syncing after days), ingested."""
    seed = [json.loads(line) for line in (stack.workdir / f"{site}.ndjson").read_text().splitlines()]
    mine = [o for o in seed if o["subject"]["reference"] == f"Patient/{patient}"]
    times = sorted(datetime.fromisoformat(o["effectiveDateTime"]).timestamp() for o in mine)
    recent = [t for t in times if t > times[-1] - 13 * 86_400]
    late = []
    for before, after in itertools.pairwise(recent):
        for k in range(1, int(after - before) // 300 if after - before >= 1800 else 0):
            at = datetime.fromtimestamp(before + k * 300, UTC)
            observation = {**copy.deepcopy(mine[0]), "id": f"late-{at.timestamp():.0f}",
                           "identifier": [{"system": "https://example.org/late", "value": f"{patient}-{at}"}],
                           "effectiveDateTime": at.isoformat()}  # fmt: skip
            observation["valueQuantity"]["value"] = value
            late.append(json.dumps(observation))
    path = stack.workdir / f"late-{patient}.ndjson"
    path.write_text("\n".join(late))
    glucobridge(stack, "ingest", str(path), "--feed", "fhir", "--site", site)
    return len(late)


def test_a_correction_that_needs_a_new_signature_is_reviewed_and_signed(stack: DemoStack) -> None:
    site, patient = "oracle-like", patients(stack, "oracle-like")[4]
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    capabilities = CapabilityService(store, stack.env["SITES_DIR"])
    strict = ("corrections.resign_pp", "corrections.resign_tbr_pp", "corrections.resign_mean_mg_dl")
    try:
        for path in strict:  # any change needs a new signature here
            capabilities.set(site, path, 0.01, who="test", reason="strict correction policy")
        flow = launched(stack, site, patient)
        first = flow.app.post(flow.view_url + "chart/signoffs", data=fields(review(flow).text), headers=HX)
        assert state_of(poll_until_final(flow, status_url(flow, first.text)).text) == "confirmed"

        assert backfill(stack, site, patient) > 0
        glucobridge(stack, "recompute", "--stale")
        glucobridge(stack, "outbox", "corrections", "--site", site)  # unless the worker's periodic look came first

        listed = flow.app.get(flow.view_url + "chart/signoffs", headers=HX).text
        assert "A correction needs your signature." in listed
        assert "Review and sign the correction" in listed
        assert 'hx-target="#correction-review"' in listed
        page = flow.app.get(flow.view_url + "chart/review?correction=1", headers=HX)
        assert page.status_code == 200, page.text
        assert "Review the correction" in page.text
        assert "outcome version 2" in page.text
        form = fields(page.text)
        assert form["correction"] == "1"
        signed = flow.app.post(flow.view_url + "chart/signoffs", data=form, headers=HX)
        assert signed.status_code == 200, signed.text
        assert f"sign-off {signoff_id(first.text)}" in signed.text  # it corrects the first
        final = poll_until_final(flow, status_url(flow, signed.text))
        assert state_of(final.text) == "confirmed", final.text
        assert "A correction needs your signature." not in flow.app.get(flow.view_url + "chart/signoffs").text
        found = ehr_search(stack, site, f"Observation?patient={patient}&code={TIR_LOINC}")
        assert sorted(e["resource"]["status"] for e in found["entry"]) == ["corrected", "final"]
    finally:
        for path in strict:
            capabilities.clear(site, path, who="test", reason="clean up")
        store.dispose()


def test_a_huge_sign_off_id_is_a_404_with_the_security_headers(stack: DemoStack) -> None:
    """Issue 10, table row 14: `…/signoffs/999999999999999999999999` was a 500 without headers, not logged."""
    flow = launched(stack, "epic-like", patients(stack, "epic-like")[0])
    for number in ("999999999999999999999999", "9223372036854775808", "-1"):
        for suffix in ("", "/status"):
            response = flow.app.get(flow.view_url + f"chart/signoffs/{number}{suffix}")
            assert response.status_code == 404
            assert response.headers["x-content-type-options"] == "nosniff"
            assert "frame-ancestors" in response.headers["content-security-policy"]
