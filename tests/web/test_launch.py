"""SMART launches over real HTTP against the sandbox EHR (epic-like and oracle-like), and the security rules."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest
from sqlalchemy import text

from app.demo import DemoStack
from bff.settings import Settings
from bff.smart import SmartSettings
from bff.store.db import Store
from tests.web.conftest import (
    audit_events,
    cli_outcomes,
    consent,
    finish,
    launched,
    patients,
    start_launch,
)


@pytest.mark.parametrize("site", ["epic-like", "oracle-like"])
def test_ehr_launch_shows_the_view_with_the_numbers_of_glucobridge_outcomes(stack: DemoStack, site: str) -> None:
    patient = patients(stack, site)[0]
    flow = launched(stack, site, patient)
    view = flow.app.get(flow.view_url)
    assert view.status_code == 200
    assert "frame-ancestors " + stack.ehr_url in view.headers["content-security-policy"]
    assert "set-cookie" not in {k.lower() for k in view.headers}
    assert 'class="tir-bar"' in view.text
    assert "data-figure=" in view.text
    shown = re.findall(r'class="num">([^<]+)<', view.text)
    metrics = cli_outcomes(stack, f"site:{site}:fhir|Patient/{patient}")["metrics"]
    assert isinstance(metrics, dict)
    in_range = 100.0 - metrics["time_below_70_pct"] - metrics["time_above_180_pct"]
    expected = [metrics["time_above_250_pct"], metrics["time_181_250_pct"], in_range, metrics["time_54_69_pct"],
                metrics["time_below_54_pct"]]  # fmt: skip
    assert shown == [("<0.1 %" if 0 < v < 0.05 else f"{v:.1f} %") for v in expected]
    assert f"{metrics['gmi_pct']:.1f} %" in view.text


def test_periods_switch_through_htmx_partials(stack: DemoStack) -> None:
    flow = launched(stack, "epic-like", patients(stack, "epic-like")[0])
    base = flow.view_url
    partial = flow.app.get(base + "summary?days=30", headers={"HX-Request": "true"})
    assert partial.status_code == 200
    assert partial.text.lstrip().startswith('<section id="summary"')
    assert "<html" not in partial.text
    assert partial.headers["vary"] == "HX-Request"
    full = flow.app.get(base + "summary?days=90")
    assert "<html" in full.text  # without htmx the same URL is a whole page
    assert flow.app.get(base + "?days=7").status_code == 400


def test_two_launches_never_mix(stack: DemoStack) -> None:
    first, second = patients(stack, "epic-like")[:2]
    a = launched(stack, "epic-like", first)
    b = launched(stack, "epic-like", second)
    assert a.handle != b.handle
    assert f"/patients/{first}/" in a.view_url
    assert f"/patients/{second}/" in b.view_url
    assert a.app.get(a.view_url).status_code == 200
    assert b.app.get(b.view_url).status_code == 200


# MARK: security: each refusal is audited


def test_wrong_state_is_refused_and_audited(stack: DemoStack) -> None:
    response = httpx.get(f"{stack.app_url}/callback", params={"state": "forged", "code": "x"})
    assert response.status_code == 400
    assert ("launch.refused", "refused", {"reason": "StateError"}) in audit_events(stack)


def test_iss_not_allowed_is_refused_and_audited(stack: DemoStack) -> None:
    response = httpx.get(f"{stack.app_url}/launch", params={"iss": "https://evil.example/fhir", "launch": "x"})
    assert response.status_code == 403
    assert ("launch.iss_not_allowed", "refused", {"iss": "https://evil.example/fhir"}) in audit_events(stack)


def test_a_replayed_code_is_refused_and_audited(stack: DemoStack) -> None:
    patient = patients(stack, "epic-like")[0]
    first = launched(stack, "epic-like", patient)
    again = start_launch(stack, "epic-like", patient)  # a new state, then the old code
    replay = first.app.get(f"{stack.app_url}/callback", params={"state": again.state, "code": first.code})
    assert replay.status_code == 400
    assert ("launch.refused", "refused", {"reason": "TokenExchangeError"}) in audit_events(stack)


def test_a_wrong_pkce_verifier_is_refused_and_audited(stack: DemoStack) -> None:
    flow = consent(start_launch(stack, "epic-like", patients(stack, "epic-like")[0]))
    cipher = SmartSettings().cipher(stack.secret.encode())
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        with store.transaction() as session:
            changed = session.execute(
                text("UPDATE smart_prelogin SET code_verifier_enc = :v WHERE state_sha256 = :s"),
                {"v": cipher.encrypt("W" * 64), "s": hashlib.sha256(flow.state.encode()).hexdigest()},
            ).rowcount  # type: ignore[attr-defined]
    finally:
        store.dispose()
    assert changed == 1
    assert finish(flow).status_code == 400
    assert ("launch.refused", "refused", {"reason": "TokenExchangeError"}) in audit_events(stack)


def test_patient_a_launch_cannot_read_patient_b(stack: DemoStack) -> None:
    a, b = patients(stack, "epic-like")[:2]
    flow = launched(stack, "epic-like", a)
    other = flow.view_url.replace(f"/patients/{a}/", f"/patients/{b}/")
    for url in (other, other + "summary?days=14", other.replace("/v/", "/api/v/") + "agp"):
        assert flow.app.get(url).status_code == 403
    refused = [d for e, o, d in audit_events(stack) if e == "patient.mismatch"]
    assert {"launch_patient": a, "requested_patient": b} in refused


def test_post_without_csrf_is_refused_and_audited(stack: DemoStack) -> None:
    flow = launched(stack, "epic-like", patients(stack, "epic-like")[0])
    refused = flow.app.post(flow.view_url + "display-unit", data={"unit": "mmol/L"})
    assert refused.status_code == 403
    assert ("csrf.refused", "refused", {"path": "display-unit"}) in audit_events(stack)
    page = flow.app.get(flow.view_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    accepted = flow.app.post(flow.view_url + "display-unit", data={"unit": "mmol/L", "csrf_token": token})
    assert accepted.status_code == 303
    chosen = flow.app.get(httpx.URL(stack.app_url).join(accepted.headers["location"])).text
    assert "3.9–10.0 mmol/L" in chosen  # the choice is in the tab's URL, so every worker honours it
    assert "summary?days=30&amp;unit=mmol/L" in chosen


def test_standalone_launch_lets_the_clinician_choose_the_patient(stack: DemoStack) -> None:
    app = httpx.Client(timeout=30)
    try:
        iss = f"{stack.ehr_url}/sites/epic-like/fhir"
        start = app.get(f"{stack.app_url}/standalone", params={"iss": iss})
        assert start.status_code == 302
        page = app.get(start.headers["location"])
        assert "Choose a patient" in page.text
        chosen = patients(stack, "epic-like")[1]
        action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
        practitioner = re.search(r'name="practitioner" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        decided = app.post(
            httpx.URL(stack.ehr_url).join(action.replace("&amp;", "&")),
            data={**fields, "practitioner": practitioner, "patient": chosen, "decision": "allow"},
        )
        assert decided.status_code in (302, 303), decided.text
        callback = app.get(decided.headers["location"])
        assert callback.status_code == 303
        assert f"/patients/{chosen}/" in callback.headers["location"]
        assert app.get(httpx.URL(stack.app_url).join(callback.headers["location"])).status_code == 200
    finally:
        app.close()


def test_clear_states_for_no_data_and_units_follow_the_patient(stack: DemoStack) -> None:
    listed = patients(stack, "epic-like")  # the seed's p1..p6: p2 reads in mmol/L, p4 has no CGM data
    empty = launched(stack, "epic-like", listed[3])
    assert "No CGM data" in empty.app.get(empty.view_url).text
    mmol = launched(stack, "epic-like", listed[1])
    page = mmol.app.get(mmol.view_url).text
    assert "3.9–10.0 mmol/L" in page
    assert "in mmol/L; converted with 18.0156 mg/dL per mmol/L" in page


def test_refusal_pages_can_be_shown_inside_the_ehr_frame(stack: DemoStack) -> None:
    response = httpx.get(f"{stack.app_url}/callback", params={"state": "forged", "code": "x"})
    assert f"frame-ancestors {stack.ehr_url}" in response.headers["content-security-policy"]
    assert "This launch cannot be completed" in response.text
