"""The clinician view under load: 20 concurrent clinicians on one patient's 14-day view (server-rendered).

The demo stack (sandbox EHR + app, two uvicorn workers, SQLite) is started, one launch is completed over HTTP,
and `wrk` (Debian's package; the bench installs it when missing) loads the view URL with 20 connections.
The baseline in the same run is the app's `/healthz` under the same load. Separately, in process, the data
query plus engine time of one view is measured (median of 50).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from app.demo import DemoStack, free_port
from bench.measure import table
from bff.clinical import PatientOutcomesView
from bff.settings import Settings
from bff.store.db import Store
from tests.web.conftest import launched, patients  # the same launch steps as the tests

LUA = """
done = function(summary, latency, requests)
  io.write(string.format("GBSTATS %d %d %d %d %d %d\\n", latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.requests, summary.duration, summary.errors.status + summary.errors.connect
    + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def _wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
        found = shutil.which("wrk")
    assert found is not None
    return found


def _load(url: str, seconds: int, script: Path) -> tuple[float, float, float, float, int]:
    done = subprocess.run([_wrk(), "-t2", "-c20", f"-d{seconds}s", "-s", str(script), url],
                          capture_output=True, text=True, check=True)  # fmt: skip
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("GBSTATS"))
    p50, p95, p99, requests, duration, errors = (int(x) for x in line.split()[1:])
    return p50 / 1000, p95 / 1000, p99 / 1000, requests / (duration / 1e6), errors


def run(*, quick: bool = False) -> None:
    seconds = 5 if quick else 15
    print(f"\n## view: 20 concurrent clinicians, {seconds} s per run, two uvicorn workers (2 cores), SQLite\n")
    stack = DemoStack(app_port=free_port(), ehr_port=free_port(), app_workers=2, worker=False).start(quiet=True)
    try:
        patient = patients(stack, "epic-like")[0]
        flow = launched(stack, "epic-like", patient)
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "stats.lua"
            script.write_text(LUA)
            _load(flow.view_url, 2, script)  # warm-up
            view = _load(flow.view_url, seconds, script)
            base = _load(f"{stack.app_url}/healthz", seconds, script)
        store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
        outcomes = PatientOutcomesView(store)
        public_id = outcomes.public_id("epic-like", patient)
        assert public_id is not None
        outcomes.document(public_id, 14)
        times = []
        for _ in range(50):
            start = time.perf_counter()
            outcomes.document(public_id, 14)
            times.append(time.perf_counter() - start)
        store.dispose()
    finally:
        stack.stop()
    rows = [
        ("patient view (14 days)", f"{view[0]:.1f} ms", f"{view[1]:.1f} ms", f"{view[2]:.1f} ms", f"{view[3]:,.0f}/s",
         str(view[4])),
        ("baseline: /healthz", f"{base[0]:.1f} ms", f"{base[1]:.1f} ms", f"{base[2]:.1f} ms", f"{base[3]:,.0f}/s",
         str(base[4])),
    ]  # fmt: skip
    print(table(rows, ("endpoint", "p50", "p95", "p99", "requests/s", "errors")))
    print(f"\ndata query + engine per view (in process, median of 50): {statistics.median(times) * 1e3:.1f} ms; "
          f"p95/baseline p95 = {view[1] / max(base[1], 0.001):.1f}x")  # fmt: skip
    print("goals: p95 <= 150 ms at 20 concurrent clinicians; data query + engine <= 20 ms per view")
