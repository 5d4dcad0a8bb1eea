"""`python -m app.demo` (what `make demo` runs) as a process, on free ports with its own var/ and 14 days of data:
a second demo is refused, every site's data arrives by its own path (hl7-only over MLLP), the cgm-receiver launch
shows the view, and however the demo ends (SIGTERM while starting or running, a child killed) no process of it is
left and its ports are free.

Two demos run to the end (one stopped by SIGTERM, one by a killed child) and one is stopped while it starts.
Every process a demo started is found by its parent pid in /proc before the stop, and checked for after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from app.demo import DemoStack, free_port, port_in_use
from bff.settings import ROOT, Settings
from bff.store.db import Store
from bff.store.models import IngestBatch, Patient, Reading
from tests.web.conftest import launched, patients

DAYS = 14
READY_S = 240.0  # 14 days of five sites on two shared cores
STOP_S = 60.0


def descendants(pid: int) -> set[int]:
    """Every living process under `pid` (children, grandchildren, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has ended: only its exit status is left)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    var: Path
    output: Path

    @property
    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")

    @property
    def lock(self) -> dict[str, Any]:
        """The demo's var/demo.lock record ({} while it is being rewritten)."""
        try:
            data = json.loads((self.var / "demo.lock").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def workdir(self) -> Path:
        return Path(str(self.lock["workdir"]))

    def stack(self) -> DemoStack:
        """A handle for the web tests' launch helpers (nothing is started)."""
        return DemoStack(app_port=self.ports["app"], ehr_port=self.ports["ehr"], workdir=self.workdir)

    def wait_for(self, text: str, timeout_s: float = READY_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.text:
                return
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited with {self.process.returncode} before {text!r}:\n{self.text}")
            time.sleep(0.5)
        pytest.fail(f"no {text!r} within {timeout_s:.0f} s:\n{self.text}")

    def wait(self, timeout_s: float = STOP_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not end within {timeout_s:.0f} s:\n{self.text}")

    def ports_free(self) -> bool:
        return not any(port_in_use(port) for port in self.ports.values())

    def kill_all(self) -> None:
        """After a test, whatever it did: nothing of this demo may outlive it."""
        for pid in descendants(self.process.pid) | {self.process.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def demo_command(ports: dict[str, int], var: Path) -> list[str]:
    return [
        sys.executable, "-m", "app.demo", "--app-port", str(ports["app"]), "--ehr-port", str(ports["ehr"]),
        "--mllp-port", str(ports["mllp"]), "--site-mllp-port", str(ports["site_mllp"]), "--var", str(var),
        "--days", str(DAYS), "--grace", "10",
    ]  # fmt: skip


def start_demo(directory: Path, ports: dict[str, int] | None = None) -> Demo:
    ports = ports or {name: free_port() for name in ("app", "ehr", "mllp", "site_mllp")}
    var = directory / "var"
    output = directory / "demo.out"
    with output.open("wb") as out:
        process = subprocess.Popen(demo_command(ports, var), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    return Demo(process, ports, var, output)


@pytest.fixture(scope="module", name="demo")
def fx_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo for the module, stopped by the last test (SIGTERM); killed outright if a test failed first."""
    demo = start_demo(tmp_path_factory.mktemp("demo"))
    try:
        demo.wait_for("ready (pid")
        yield demo
    finally:
        demo.kill_all()


# MARK: one demo at a time


def test_a_second_demo_while_one_runs_says_so_and_exits_non_zero(demo: Demo, tmp_path: Path) -> None:
    second = subprocess.run(demo_command(demo.ports, demo.var), cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert second.returncode == 1
    assert f"demo: another demo is running (pid {demo.process.pid}, " in second.stderr
    assert f"kill {demo.process.pid}" in second.stderr
    assert demo.process.poll() is None  # the first one is untouched
    assert demo.lock["pid"] == demo.process.pid


def test_a_demo_on_ports_in_use_names_them_and_starts_nothing(demo: Demo, tmp_path: Path) -> None:
    other = subprocess.run(demo_command(demo.ports, tmp_path / "var"), cwd=ROOT, capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    assert other.returncode == 1
    assert f"ports {demo.ports['app']} (the app), {demo.ports['ehr']} (the sandbox EHR), " in other.stderr
    assert "already in use on 127.0.0.1: nothing was started" in other.stderr
    assert json.loads((tmp_path / "var" / "demo.lock").read_text() or "{}").get("children", {}) == {}


# MARK: every site's data, by its own path


def test_the_hl7_only_sites_readings_arrived_through_mllp(demo: Demo) -> None:
    store = Store(Settings(database_url=f"sqlite:///{demo.workdir / 'glucobridge.db'}"), check_schema=False)
    try:
        with store.transaction() as session:
            batches = session.execute(
                select(IngestBatch.feed, IngestBatch.source_name, IngestBatch.added).where(
                    IngestBatch.site_key == "hl7-only"
                )
            ).all()
            per_site = dict(
                session.execute(
                    select(Patient.site_key, func.count(Reading.id))
                    .join(Reading, Reading.patient_id == Patient.id)
                    .group_by(Patient.site_key)
                ).all()
            )
            hl7_patients = session.scalar(select(func.count()).where(Patient.site_key == "hl7-only"))
    finally:
        store.dispose()
    assert len(batches) == 5 * DAYS  # one batch per ORU^R01 message: five patients with CGM data, one a day
    assert {feed for feed, _, _ in batches} == {"hl7v2"}
    assert all(source.startswith("mllp:127.0.0.1:") for _, source, _ in batches)
    assert hl7_patients == 5
    assert per_site["hl7-only"] == sum(added for _, _, added in batches) > 0
    assert per_site["hl7-only"] == per_site["epic-like"] == per_site["cgm-receiver"]  # the same people everywhere
    assert "70 ORU^R01 messages" in (demo.workdir / "load.log").read_text()


def test_the_cgm_receiver_launch_shows_the_view(demo: Demo) -> None:
    stack = demo.stack()
    flow = launched(stack, "cgm-receiver", patients(stack, "cgm-receiver")[0])
    view = flow.app.get(flow.view_url)
    assert view.status_code == 200
    assert "This EHR is not allowed" not in view.text
    assert 'class="tir-bar"' in view.text
    assert "data-figure=" in view.text


def test_the_hl7_only_launch_shows_the_readings_that_arrived_over_mllp(demo: Demo) -> None:
    stack = demo.stack()
    flow = launched(stack, "hl7-only", patients(stack, "hl7-only")[0])
    view = flow.app.get(flow.view_url)
    assert view.status_code == 200
    assert 'class="tir-bar"' in view.text


# MARK: stopping


def test_sigterm_stops_every_child_and_frees_the_ports(demo: Demo) -> None:
    """Last in the module: it ends the module's demo."""
    children = descendants(demo.process.pid)
    recorded = set(demo.lock["children"].values())
    assert len(recorded) == 5  # sandbox EHR, MLLP listener, app, outbox worker, job worker
    assert recorded <= children
    workdir = demo.workdir
    demo.process.send_signal(signal.SIGTERM)
    assert demo.wait() == 0
    assert not [pid for pid in children if running(pid)]
    assert demo.ports_free()
    assert "demo: SIGTERM: stopping " in demo.text
    assert "demo: stopped" in demo.text
    assert demo.lock["children"] == {}
    assert not workdir.exists()  # a clean stop leaves nothing behind


def test_sigterm_while_the_data_load_stops_what_was_started(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        deadline = time.monotonic() + READY_S
        while not any(name.startswith(("FHIR ingest", "export")) for name in demo.lock.get("children", {})):
            assert time.monotonic() < deadline, demo.text
            assert demo.process.poll() is None, demo.text
            time.sleep(0.1)
        children = descendants(demo.process.pid)
        assert len(children) >= 2  # the sandbox EHR and a step of the load
        demo.process.send_signal(signal.SIGTERM)
        assert demo.wait() == 0
        assert "demo: SIGTERM: stopping sandbox EHR, " in demo.text
        assert "ready" not in demo.text
        assert not [pid for pid in children if running(pid)]
        assert demo.ports_free()
    finally:
        demo.kill_all()


def test_a_child_killed_mid_demo_is_reported_and_the_demo_stops(tmp_path: Path) -> None:
    demo = start_demo(tmp_path)
    try:
        demo.wait_for("ready (pid")
        children = descendants(demo.process.pid)
        app = demo.lock["children"]["app"]
        workdir = demo.workdir
        assert isinstance(app, int)
        os.kill(app, signal.SIGKILL)
        assert demo.wait() == 3
        text = demo.text
        assert f"demo: the app (glucobridge serve, pid {app}) was killed by SIGKILL; " in text
        assert f"{workdir / 'app.log'}" in text  # its last lines, or that it is empty
        assert "demo: stopping sandbox EHR, MLLP listener of hl7-only, outbox worker" in text
        assert f"demo: stopped; the logs are kept in {workdir}" in text
        assert not [pid for pid in children if running(pid)]
        assert demo.ports_free()
    finally:
        demo.kill_all()
        if "workdir" in demo.lock:
            shutil.rmtree(demo.workdir, ignore_errors=True)
