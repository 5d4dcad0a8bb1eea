"""The view reads the stored outcome (bff.store.windows): a stale one is shown with its age, never silently; the
chart fragments and the AGP data carry ETags and answer 304 while the outcome is the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from app.demo import DemoStack
from app.web.app import outcome_freshness
from app.web.charts import MemoryCache, etag, matches
from bff.clinical import ShownOutcome
from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import Patient, StandardOutcome
from tests.web.conftest import launched, patients


def _store(stack: DemoStack) -> Store:
    return Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)


def test_the_view_reads_the_stored_outcome_and_shows_a_stale_one_with_its_age(stack: DemoStack) -> None:
    patient = patients(stack, "epic-like")[1]
    flow = launched(stack, "epic-like", patient)
    first = flow.app.get(flow.view_url)
    assert first.status_code == 200
    assert "newer readings are being computed" not in first.text
    store = _store(stack)
    try:
        with store.transaction() as session:
            public_id = f"site:epic-like:fhir|Patient/{patient}"
            pid = session.scalar(select(Patient.id).where(Patient.public_id == public_id))
            rows = session.scalars(select(StandardOutcome).where(StandardOutcome.patient_id == pid)).all()
            assert {r.days for r in rows} == {14, 30, 90}  # computed once at the first view, every period
            assert all(r.document is not None and r.digest for r in rows)
            two_hours_ago = datetime.now(UTC) - timedelta(hours=2, minutes=5)
            session.execute(
                update(StandardOutcome)
                .where(StandardOutcome.patient_id == pid)
                .values(computed_at=two_hours_ago, stale_since=datetime.now(UTC), stale_reason="readings arrived",
                        claimed_by="elsewhere", claim_expires_at=datetime.now(UTC) + timedelta(minutes=5))
            )  # fmt: skip
    finally:
        store.dispose()
    again = flow.app.get(flow.view_url)
    assert "These outcomes were computed 2 h 5 min ago; newer readings are being computed" in again.text
    assert again.text.count('role="status"') == 1  # the page's one live region (base.html's announcer), no other
    assert 'class="tir-bar"' in again.text  # the stored numbers are shown meanwhile


def test_chart_data_and_daily_fragments_answer_304_while_the_outcome_is_the_same(stack: DemoStack) -> None:
    flow = launched(stack, "epic-like", patients(stack, "epic-like")[0])
    api = flow.view_url.replace("/v/", "/api/v/", 1) + "agp?days=14"
    first = flow.app.get(api)
    assert first.status_code == 200
    tag = first.headers["etag"]
    again = flow.app.get(api, headers={"If-None-Match": tag})
    assert again.status_code == 304
    assert again.content == b""
    assert flow.app.get(api.replace("days=14", "days=30"), headers={"If-None-Match": tag}).status_code == 200
    daily = flow.view_url + "daily?days=14&page=1"
    fragment = flow.app.get(daily, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<section id="daily"')
    cached = flow.app.get(daily, headers={"HX-Request": "true", "If-None-Match": fragment.headers["etag"]})
    assert cached.status_code == 304
    assert cached.headers["vary"] == "HX-Request"


def test_freshness_words_and_the_cache_bounds() -> None:
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    fresh = ShownOutcome({}, "d", now - timedelta(hours=3))
    assert outcome_freshness(fresh, now) == ""
    stale = ShownOutcome({}, "d", now - timedelta(minutes=7), stale_since=now)
    assert outcome_freshness(stale, now).startswith("These outcomes were computed 7 min ago;")
    clock = [0.0]
    cache = MemoryCache(ttl=10, max_entries=2, clock=lambda: clock[0])
    cache.put("a", {"x": 1})
    cache.put("b", {"x": 2})
    cache.put("c", {"x": 3})
    assert (cache.get("a"), len(cache)) == (None, 2)  # bounded: the least recently used went
    clock[0] = 11.0
    assert cache.get("c") is None  # and nothing outlives its TTL
    tag = etag("agp", "k")
    assert matches(f'W/{tag}, "other"', tag)
    assert not matches('"other"', tag)
