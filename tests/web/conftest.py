"""The sandbox EHR and the app as real processes (the demo stack), shared by the web and browser tests; and the
app in this process around a fresh SQLite store (`local_store`, `IN_PROCESS`), for what needs no EHR."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar import Litestar

from app.demo import DemoStack, free_port
from app.web.app import create_app
from bff.audit import recent
from bff.settings import Settings
from bff.store.db import Store

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# The app in this process: Litestar 2.25 deprecates the parameter styles the app's handlers use (FromQuery/FromPath
# and QueryParameter do not exist in 2.18, the oldest version pyproject allows), and pytest turns warnings into
# errors; the app in a subprocess never does.
IN_PROCESS = [
    pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Deprecated 'query' parameter:DeprecationWarning"),
]


@pytest.fixture(name="local_store")
def fx_local_store(tmp_path: Path) -> Iterator[Store]:
    """A fresh embedded store for an app in this process."""
    store = Store(Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", secret_key="s" * 32))
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture(name="local_app")
def fx_local_app(local_store: Store) -> Litestar:
    return create_app(local_store.settings, store=local_store)


@pytest.fixture(scope="session", name="stack")
def fx_stack() -> Iterator[DemoStack]:
    stack = DemoStack(app_port=free_port(), ehr_port=free_port()).start(quiet=True)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session", name="fresh_stack")
def fx_fresh_stack() -> Iterator[DemoStack]:
    """A stack whose store starts empty: every patient's readings exist only in the sandbox EHR (14 days of them,
    4,032 five-minute readings for a Dexcom patient), so a launch reads them from the EHR."""
    stack = DemoStack(app_port=free_port(), ehr_port=free_port(), days=14, load_sites=()).start(quiet=True)
    try:
        yield stack
    finally:
        stack.stop()


_CLIENTS: list[httpx.Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


@dataclass
class Flow:
    """One EHR launch driven over HTTP the way the iframe would (the app's client holds no cookies)."""

    stack: DemoStack
    site: str
    patient: str
    app: httpx.Client
    authorize_url: str = ""
    callback_url: str = ""
    view_url: str = ""

    @property
    def state(self) -> str:
        return parse_qs(urlsplit(self.authorize_url).query)["state"][0]

    @property
    def code(self) -> str:
        return parse_qs(urlsplit(self.callback_url).query)["code"][0]

    @property
    def handle(self) -> str:
        return self.view_url.split("/v/")[1].split("/")[0]


def patients(stack: DemoStack, site: str) -> list[str]:
    """The site's patients that have CGM data (the shell lists them first)."""
    index = httpx.get(f"{stack.ehr_url}/ehr/")
    return re.findall(rf'href="/ehr/{site}/patients/([^"]+)"', index.text)


def start_launch(stack: DemoStack, site: str, patient: str) -> Flow:
    """Open the chart (a new launch id), follow the iframe's src to the app, and on to the EHR's consent page."""
    chart = httpx.get(f"{stack.ehr_url}/ehr/{site}/patients/{patient}")
    src = unescape(re.search(r'<iframe class="app"[^>]*src="([^"]+)"', chart.text).group(1))  # type: ignore[union-attr]
    app = httpx.Client(timeout=30)
    _CLIENTS.append(app)
    launch = app.get(src)
    assert launch.status_code == 302, launch.text
    return Flow(stack, site, patient, app, authorize_url=launch.headers["location"])


def consent(flow: Flow) -> Flow:
    page = flow.app.get(flow.authorize_url)
    assert page.status_code == 200, page.text
    action = unescape(re.search(r'<form method="post" action="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    fields = {k: unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text)}
    decided = flow.app.post(httpx.URL(flow.stack.ehr_url).join(action), data={**fields, "decision": "allow"})
    assert decided.status_code in (302, 303), decided.text
    flow.callback_url = decided.headers["location"]
    return flow


def finish(flow: Flow) -> httpx.Response:
    callback = flow.app.get(flow.callback_url)
    if callback.status_code == 303:
        flow.view_url = str(httpx.URL(flow.stack.app_url).join(callback.headers["location"]))
    return callback


def launched(stack: DemoStack, site: str, patient: str) -> Flow:
    flow = consent(start_launch(stack, site, patient))
    callback = finish(flow)
    assert callback.status_code == 303, callback.text
    return flow


def audit_events(stack: DemoStack) -> list[tuple[str, str, dict[str, object]]]:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    try:
        return [(e.event, e.outcome, e.detail) for e in reversed(recent(store, 200))]
    finally:
        store.dispose()


def cli_outcomes(stack: DemoStack, public_id: str) -> dict[str, object]:
    command = [str(Path(sys.executable).parent / "glucobridge"), "outcomes", "--patient", public_id]
    done = subprocess.run(command, env=stack.env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)["patients"][0]
    return result
