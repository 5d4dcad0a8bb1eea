"""The site's `[filter]` (capability matrix) decides which patients the app may show there, at run time."""

from __future__ import annotations

from app.demo import DemoStack
from bff.capabilities import CapabilityService
from bff.settings import Settings
from bff.store.db import Store
from tests.web.conftest import audit_events, launched, patients


def test_a_patient_outside_the_sites_filter_is_not_shown(stack: DemoStack) -> None:
    site = "oracle-like"
    patient = patients(stack, site)[3]
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    capabilities = CapabilityService(store, stack.env["SITES_DIR"])
    try:
        flow = launched(stack, site, patient)
        assert flow.app.get(flow.view_url).status_code == 200
        capabilities.set(site, "filter.patients", ["somebody-else"], who="test", reason="pilot cohort only")
        page = flow.app.get(flow.view_url)
        assert page.status_code == 403
        assert "not enabled for this patient" in page.text
        assert flow.app.get(flow.view_url + "chart/review?days=14").status_code == 403
        # The routes that read the filter in the transaction that reads what they show (summary_context).
        api = flow.view_url.replace("/v/", "/api/v/", 1) + "agp?days=14"
        for url in (flow.view_url + "summary?days=30", flow.view_url + "daily?days=14&page=1",
                    flow.view_url + "ehr-read?days=14", api):  # fmt: skip
            refused = flow.app.get(url)
            assert refused.status_code == 403, url
            assert "not enabled for this patient" in refused.text, url
        assert ("patient.filtered", "refused") in {(e, o) for e, o, _ in audit_events(stack)}
        capabilities.set(site, "filter.patients", [patient, "somebody-else"], who="test", reason="enrolled")
        assert flow.app.get(flow.view_url).status_code == 200
    finally:
        capabilities.clear(site, "filter.patients", who="test", reason="test done")
        store.dispose()
