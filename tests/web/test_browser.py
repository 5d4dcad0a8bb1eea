"""The app in real Chromium (Debian's, never a downloaded browser), inside the EHR shell's cross-origin iframe.

Screenshots are kept in test-artifacts/ (not committed): the launch, a narrow side panel, and the 14/30/90-day
views in both units (`view-<days>d-<unit>.png`), looked at by a person when the view changes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, FrameLocator, Page, Playwright, sync_playwright

from app.demo import DemoStack
from tests.web.conftest import ARTIFACTS, patients

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module", name="playwright")
def fx_playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: .ci/run installs it (apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module", name="browser")
def fx_browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    yield browser
    browser.close()


def open_in_chart(page: Page, stack: DemoStack, site: str, patient: str) -> FrameLocator:
    """Open the patient's chart in the shell, allow the app in the EHR's consent page, wait for the view."""
    page.goto(f"{stack.ehr_url}/ehr/{site}/patients/{patient}")
    frame = page.frame_locator("iframe.app")
    frame.locator('button[name="decision"][value="allow"]').click()
    frame.locator(".tir-bar").wait_for(timeout=20_000)
    frame.locator("#agp-14 .main-svg").first.wait_for(timeout=20_000)
    return frame


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("site", ["epic-like", "oracle-like"])
def test_the_app_renders_in_the_cross_origin_iframe(browser: Browser, stack: DemoStack, site: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    frame = open_in_chart(page, stack, site, patients(stack, site)[0])
    assert page.url.startswith(stack.ehr_url)  # the shell
    app_frame = next(f for f in page.frames if f.url.startswith(stack.app_url))  # the app, another origin
    assert "/v/" in app_frame.url
    assert frame.locator(".tir-seg").count() == 5
    assert frame.locator("#agp-14 .main-svg").count() >= 1
    frame.locator('a.period:has-text("30 days")').click()  # htmx partial, no page reload
    frame.locator("#agp-30 .main-svg").first.wait_for(timeout=20_000)
    assert "/summary" not in app_frame.url
    shot(page, f"launch-{site}")
    page.close()


def test_the_view_fits_a_narrow_ehr_side_panel(browser: Browser, stack: DemoStack) -> None:
    page = browser.new_page(viewport={"width": 400, "height": 900})
    frame = open_in_chart(page, stack, "epic-like", patients(stack, "epic-like")[0])
    frame.locator(".tir-bar").wait_for()
    app_frame = next(f for f in page.frames if f.url.startswith(stack.app_url))
    overflow = app_frame.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1  # no horizontal scrolling in a side panel
    frame.locator("a.period").first.focus()  # keyboard: the period links are reachable and visibly focused
    shot(page, "narrow-side-panel")
    page.close()


def test_two_tabs_with_two_patients_stay_separate(browser: Browser, stack: DemoStack) -> None:
    context = browser.new_context()
    first, second = patients(stack, "epic-like")[:2]
    tab_a, tab_b = context.new_page(), context.new_page()
    open_in_chart(tab_a, stack, "epic-like", first)
    open_in_chart(tab_b, stack, "epic-like", second)
    url_a = next(f.url for f in tab_a.frames if "/v/" in f.url)
    url_b = next(f.url for f in tab_b.frames if "/v/" in f.url)
    assert f"/patients/{first}/" in url_a
    assert f"/patients/{second}/" in url_b
    tab_a.reload()  # the first tab still shows its own patient after the second launch
    tab_a.frame_locator("iframe.app").locator('button[name="decision"][value="allow"]').click()
    tab_a.frame_locator("iframe.app").locator(".tir-bar").wait_for(timeout=20_000)
    assert f"/patients/{first}/" in next(f.url for f in tab_a.frames if "/v/" in f.url)
    shot(tab_b, "two-tabs-second")
    context.close()


def test_launch_works_with_third_party_cookies_blocked(playwright: Playwright, stack: DemoStack,
                                                       tmp_path: Path) -> None:  # fmt: skip
    profile = tmp_path / "profile" / "Default"
    profile.mkdir(parents=True)
    (profile / "Preferences").write_text(json.dumps({"profile": {"cookie_controls_mode": 1,
                                                                 "block_third_party_cookies": True}}))  # fmt: skip
    context: BrowserContext = playwright.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS, headless=True
    )
    try:
        page = context.new_page()
        frame = open_in_chart(page, stack, "epic-like", patients(stack, "epic-like")[0])
        app_frame = next(f for f in page.frames if f.url.startswith(stack.app_url))
        # The blocking is real: a cookie the (third-party) app frame tries to set does not stick.
        stored = app_frame.evaluate(
            "() => { document.cookie = 'probe=1; SameSite=None; Secure'; return document.cookie; }"
        )
        assert "probe" not in stored
        assert frame.locator(".tir-seg").count() == 5
        assert not [c for c in context.cookies() if "127.0.0.1" in c["domain"]]  # the app sets none at all
        shot(page, "third-party-cookies-blocked")
    finally:
        context.close()


# MARK: the AGP and the daily profiles (issue 11, item 6)

#: The consensus thresholds the AGP must draw, and the one y-scale every chart shares, per unit.
LINES = {"mg/dL": [54.0, 70.0, 180.0, 250.0], "mmol/L": [3.0, 3.9, 10.0, 13.9]}
Y_RANGE = {"mg/dL": [0, 350.0], "mmol/L": [0, 19.4]}


def app_page(page: Page, stack: DemoStack, site: str, patient: str) -> str:
    """Launch in the shell, then open the app's own URL (the launch handle is in it) as the page; its URL."""
    open_in_chart(page, stack, site, patient)
    url = next(f.url for f in page.frames if f.url.startswith(stack.app_url)).split("?")[0]
    page.goto(url)
    page.locator("#agp-14 .main-svg").first.wait_for(timeout=20_000)
    return url


def figure(page: Page, selector: str) -> dict[str, Any]:
    raw = page.locator(selector).get_attribute("data-figure")
    assert raw is not None
    result: dict[str, Any] = json.loads(raw)
    return result


def panels_drawn(page: Page) -> list[str]:
    """The dates of the daily panels on the page, once every panel with a trace is drawn."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('.day-chart')].every(e => e.querySelector('.main-svg'))"
    )
    return [str(d) for d in page.locator(".day-panel").evaluate_all("els => els.map(e => e.dataset.date)")]


@pytest.mark.parametrize("unit", ["mg/dL", "mmol/L"])
def test_the_views_of_each_period_draw_the_agp_and_every_day_on_one_scale(browser: Browser, stack: DemoStack,
                                                                          unit: str) -> None:  # fmt: skip
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    url = app_page(page, stack, "epic-like", patients(stack, "epic-like")[0])
    for days in (14, 30, 90):
        page.goto(f"{url}?days={days}&unit={unit}")
        page.locator(f"#agp-{days} .main-svg").first.wait_for(timeout=20_000)
        agp = figure(page, f"#agp-{days}")["layout"]
        assert [s["y0"] for s in agp["shapes"] if s["type"] == "line"] == LINES[unit]
        assert agp["xaxis"]["ticktext"] == [f"{h:02d}:00" for h in range(0, 25, 3)]
        dates = panels_drawn(page)
        shot(page, f"view-{days}d-{unit.replace('/', '')}")
        ranges = [agp["yaxis"]["range"]] + [
            json.loads(str(raw))["layout"]["yaxis"]["range"]
            for raw in page.locator(".day-chart").evaluate_all("els => els.map(e => e.dataset.figure)")
        ]
        assert all(r == Y_RANGE[unit] for r in ranges)  # one y-scale for the AGP and every day
        while page.locator("#daily a[rel=next]").count():  # page back through the period, by htmx
            heading = page.locator("#daily-h").inner_text()
            page.locator("#daily a[rel=next]").click()
            page.wait_for_function("(h) => document.querySelector('#daily-h').innerText !== h", arg=heading)
            dates = panels_drawn(page) + dates
        assert len(dates) == days  # one panel per local day of the period: 14; 14+14+2; 6 pages of 14 and 6
        first = date.fromisoformat(dates[0])
        assert dates == [(first + timedelta(days=i)).isoformat() for i in range(days)]
        assert "/daily" not in page.url  # fragments swapped in place
    page.close()


def test_send_to_chart_stays_reachable_and_the_review_fits_a_900px_frame(browser: Browser, stack: DemoStack) -> None:
    """The EHR shell's iframe is 78 % of its window: 1154 px high makes it 900 px."""
    page = browser.new_page(viewport={"width": 1280, "height": 1154})
    frame = open_in_chart(page, stack, "epic-like", patients(stack, "epic-like")[2])  # a review, no signing
    box = page.locator("iframe.app").bounding_box()
    assert box is not None
    assert 895 <= box["height"] <= 905
    app_frame = next(f for f in page.frames if f.url.startswith(stack.app_url))
    app_frame.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")  # read to the end of the view
    button = frame.locator("#send-button").bounding_box()
    assert button is not None
    assert box["y"] <= button["y"]
    assert button["y"] + button["height"] <= box["y"] + box["height"]
    frame.locator("#send-button").click()
    frame.locator(".review button.primary").wait_for(timeout=30_000)
    app_frame.wait_for_function("() => document.activeElement && document.activeElement.id === 'review-h'")
    review = frame.locator(".review").bounding_box()
    assert review is not None
    assert review["y"] >= box["y"]
    assert review["y"] + review["height"] <= box["y"] + box["height"]  # the whole review, sign button included
    shot(page, "review-in-a-900px-frame")
    page.close()
