"""Keyboard and screen reader use of the clinician view in real Chromium (issue 11, item 9).

axe-core (npm, `package.json` devDependencies, never served) is injected from node_modules into each view state
and must find no WCAG 2.1 A/AA violation; the context bypasses the app's CSP only so the test can inject it.
By hand what axe cannot see: where the keyboard focus lands after each htmx swap, that one stable polite live
region speaks a short sentence (and no swapped element is a live region), that the unit control changes nothing
until it is pressed, and that the frame's title names the patient.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from app.demo import DemoStack
from tests.web.conftest import ARTIFACTS, patients

ROOT = Path(__file__).resolve().parents[2]
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module", name="browser")
def fx_browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: .ci/run installs it (apt-get install chromium)")
    if not AXE.exists():
        pytest.fail("axe-core is not installed: `make static` runs npm ci (package-lock.json)")
    playwright: Playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(name="context")
def fx_context(browser: Browser) -> Iterator[BrowserContext]:
    """bypass_csp: the app allows scripts from its own origin only; axe is injected as an inline script."""
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    yield context
    context.close()


def violations(page: Page) -> list[dict[str, Any]]:
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        """async (tags) => (await axe.run(document, {runOnly: {type: "tag", values: tags}})).violations.map(v => ({
             id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}))""",
        WCAG_21_AA,
    )
    return found


def assert_accessible(page: Page, state: str) -> None:
    found = violations(page)
    assert not found, f"axe (WCAG 2.1 AA), {state}:\n" + json.dumps(found, indent=1)


def focused(page: Page) -> str:
    """The focused element as `tag#id` (or `tag.class`)."""
    return str(page.evaluate(
        "() => { const e = document.activeElement; return e.tagName.toLowerCase() + (e.id ? '#' + e.id : "
        "(e.className ? '.' + String(e.className).split(' ')[0] : '')); }"
    ))  # fmt: skip


def announced(page: Page, text: str) -> None:
    page.wait_for_function("(t) => document.getElementById('announcer').textContent.includes(t)", arg=text)


def open_app(context: BrowserContext, stack: DemoStack, site: str, patient: str) -> tuple[Page, str, str]:
    """Launch from the EHR shell (consent in its iframe), then open the app's own URL (its launch handle) as the
    page; (page, the app's view URL without query, the shell's patient name)."""
    page = context.new_page()
    page.goto(f"{stack.ehr_url}/ehr/{site}/patients/{patient}")
    name = page.title().split(" – ")[0]
    page.frame_locator("iframe.app").locator('button[name="decision"][value="allow"]').click()
    page.frame_locator("iframe.app").locator(".tir-bar").wait_for(timeout=20_000)
    url = next(f.url for f in page.frames if f.url.startswith(stack.app_url)).split("?")[0]
    page.goto(url)
    page.locator("#agp-14 .main-svg").first.wait_for(timeout=20_000)
    return page, url, name


def press(page: Page, selector: str, key: str = "Enter") -> None:
    page.locator(selector).focus()
    page.keyboard.press(key)


def test_every_view_state_passes_axe_and_focus_follows_each_swap(context: BrowserContext, stack: DemoStack) -> None:
    # read-only: signing there is kept as deferred, so no other test's patient or EHR changes
    page, url, name = open_app(context, stack, "read-only", patients(stack, "read-only")[1])
    assert page.title().startswith(f"{name} · ")  # the frame names its patient, as the EHR's banner does
    assert page.locator("#summary[aria-live], #summary[role=status], .badge[role=status]").count() == 0
    page.evaluate("() => { document.getElementById('announcer').dataset.probe = 'first'; }")
    assert_accessible(page, "view, 14 days")

    # A period through the keyboard: the summary is swapped, focus stays on the (new) period link.
    press(page, "#period-30")
    page.locator("#agp-30 .main-svg").first.wait_for(timeout=20_000)
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'period-30'")
    announced(page, "Showing 30 days")
    assert page.evaluate("() => document.getElementById('announcer').dataset.probe") == "first"  # the same region
    assert page.locator("#period-30").get_attribute("aria-current") == "true"
    assert_accessible(page, "view, 30 days")
    page.evaluate("() => document.querySelectorAll('#summary details').forEach(d => { d.open = true; })")
    assert_accessible(page, "view, 30 days, the hourly tables open")

    # Daily profiles, an earlier page: focus on its heading.
    press(page, "#daily a[rel=next]")
    page.wait_for_function("() => document.querySelector('#daily-h').textContent.includes('page 2 of 3')")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'daily-h'")
    announced(page, "page 2 of 3")

    # The units: ArrowDown changes nothing (WCAG 3.2.2); Enter on the other unit applies it, focus stays there.
    # (This patient's readings are in mmol/L, the view's default for them.)
    assert page.locator("#unit-2").get_attribute("aria-pressed") == "true"
    press(page, "#unit-2", "ArrowDown")
    page.wait_for_timeout(400)
    assert page.locator("#unit-2").get_attribute("aria-pressed") == "true"
    assert page.url == url
    press(page, "#unit-1")
    page.wait_for_function("() => document.getElementById('unit-1').getAttribute('aria-pressed') === 'true'")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'unit-1'")
    announced(page, "in mg/dL")
    page.locator("#agp-30 .main-svg").first.wait_for(timeout=20_000)
    assert "mg/dL" in page.locator("#agp-h + .chart-note").inner_text()
    assert_accessible(page, "view, 30 days, mg/dL")
    press(page, "#unit-2")  # (the focus is on it before the swap too: wait for the swap, then for the focus)
    page.wait_for_function("() => document.getElementById('unit-2').getAttribute('aria-pressed') === 'true'")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'unit-2'")
    announced(page, "in mmol/L")
    page.locator("#agp-30 .main-svg").first.wait_for(timeout=20_000)
    assert_accessible(page, "view, 30 days, mmol/L")

    # Send to chart: the review opens under the action bar, focus on its heading; Close returns it to the button.
    press(page, "#send-button")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'review-h'")
    assert_accessible(page, "review open")
    press(page, "[data-close-review]")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'send-button'")
    announced(page, "Review closed")
    assert page.locator("#send-to-chart").inner_html() == ""

    # Sign: the sign-off replaces the review, focus on its heading; its badge is not a live region.
    press(page, "#send-button")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'review-h'")
    page.locator("button:has-text('Sign (deferred)')").click()
    page.locator("#send-to-chart .signoff .badge").first.wait_for(timeout=20_000)
    page.wait_for_function("() => document.activeElement && /^signoff-\\d+-h$/.test(document.activeElement.id)")
    assert page.locator("[role=status]").count() == 1  # the announcer, and only it
    page.locator("#signoffs .signoff-list").wait_for(timeout=20_000)
    assert_accessible(page, "after sign")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "a11y-after-sign.png"), full_page=True)

    # Reviewing a signed version again: it says so; Close returns focus to the button.
    press(page, "#send-button")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'review-h'")
    assert "signed already" in page.locator(".review").inner_text()
    press(page, ".review [data-close-review]")
    page.wait_for_function("() => document.activeElement && document.activeElement.id === 'send-button'")
    assert focused(page) == "a#send-button"


def test_the_admin_pages_pass_axe(context: BrowserContext, stack: DemoStack) -> None:
    page = context.new_page()
    page.goto(f"{stack.app_url}/admin/")
    page.locator("input[name=name]").wait_for()
    assert_accessible(page, "admin sign-in")
    page.fill("input[name=name]", stack.admin_user)
    page.fill("input[name=password]", stack.admin_password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{stack.app_url}/admin/")
    assert_accessible(page, "admin index")
    page.goto(f"{stack.app_url}/admin/sites/epic-like")
    assert_accessible(page, "admin site page")
