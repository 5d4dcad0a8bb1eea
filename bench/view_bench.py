"""The clinician view under load: many distinct patients, 20 and 100 concurrent clinicians, two app processes on
PostgreSQL (Redis for the shared chart cache, launch locks and jobs when it answers), as production runs it.

The demo stack starts with the sandbox's population (`--population`: the six people plus N synthetic ones at
epic-like, 14 days each) ingested into a fresh PostgreSQL schema through the demo's own path (the sandbox's NDJSON
export through `glucobridge ingest --feed fhir`), then `glucobridge recompute --stale` materializes every standard
outcome. Each patient is then launched over HTTP the way the EHR's iframe does (chart, launch, consent, callback:
one launch handle per patient), and:

- **first view**: each patient's page once, 4 at a time (the charts are built and cached);
- **load**: `wrk` (Debian's package; installed when missing) requests the patients' pages in turn, with 20 and then
  100 connections. Besides wrk's p50/p95/p99, requests/s and errors (non-2xx/3xx, timeouts, socket errors), the
  **app's CPU per view** is read from /proc for the app's whole process tree (uvicorn and its two workers) around
  each run: the CPU a view costs the servers, whatever the client's wait;
- **baseline**, in the same run: `/healthz` under the same 20 connections.

A view here is the page's HTML (what the iframe loads first; the charts' data and fragments are further requests).

    python -m bench view            # 200 patients (about 2 minutes)
    python -m bench view --quick    # 20 patients, 5 s runs
    python -m bench view --full     # 1,000 patients (issue 13's acceptance size; about 8 minutes)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from app.demo import DemoStack, free_port
from bench.measure import table
from tests.conftest import PgSchema, postgres_available
from tests.web.conftest import launched, patients  # the same launch steps as the tests

SITE = "epic-like"
#: A Redis database of the bench's own: emptied before and after, so its jobs never reach another run's workers.
REDIS_DB = 14

LUA = """
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local counter = 0
local serial = 0
setup = function(thread)
  serial = serial + 1
  thread:set("first", serial * 7919)
end
init = function(args)
  counter = first or 0
end
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("GBSTATS %%d %%d %%d %%d %%d %%d\\n", latency:percentile(50), latency:percentile(95),
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


def _tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14 and 15 of stat)
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _load(url: str, connections: int, seconds: int, script: Path, app_pid: int) -> dict[str, float]:
    cpu = _tree_cpu_s(app_pid)
    done = subprocess.run([_wrk(), "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
                           url], capture_output=True, text=True, check=True)  # fmt: skip
    cpu = _tree_cpu_s(app_pid) - cpu
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("GBSTATS"))
    p50, p95, p99, requests, duration, errors = (int(x) for x in line.split()[1:])
    return {"p50": p50 / 1000, "p95": p95 / 1000, "p99": p99 / 1000, "rate": requests / (duration / 1e6),
            "errors": errors, "requests": requests, "cpu_ms": 1000 * cpu / max(requests, 1)}  # fmt: skip


def _redis_url() -> str | None:
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        client.flushdb()
        client.close()
    except redis.RedisError:
        return None
    return url


def _first_views(urls: list[str]) -> list[float]:
    """Each page once, 4 at a time: seconds per view."""

    def one(url: str) -> float:
        start = time.perf_counter()
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, urls))


def run(*, quick: bool = False, full: bool | None = None) -> None:
    if full is None:
        full = "--full" in sys.argv[1:]
    reason = postgres_available()
    if reason:
        print(f"\n## view: skipped ({reason})\n")
        return
    extra = 1000 if full else 20 if quick else 200
    seconds = 5 if quick else 15
    redis_url = _redis_url()
    schema = PgSchema()
    saved = os.environ.get("REDIS_URL")
    if redis_url:
        os.environ["REDIS_URL"] = redis_url
    else:
        os.environ.pop("REDIS_URL", None)
    stack = DemoStack(app_port=free_port(), ehr_port=free_port(), app_workers=2, worker=False, days=14,
                      load_sites=(SITE,), population=extra, database_url=schema.url, keep_exports=False)  # fmt: skip
    began = time.perf_counter()
    try:
        stack.start(quiet=True)
        loaded = time.perf_counter() - began
        recompute = subprocess.run([str(Path(sys.executable).parent / "glucobridge"), "recompute", "--stale"],
                                   env=stack.env, capture_output=True, text=True, check=True)  # fmt: skip
        materialized = time.perf_counter() - began - loaded
        ids = patients(stack, SITE)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as pool:
            urls = list(pool.map(lambda p: launched(stack, SITE, p).view_url, ids))
        launching = time.perf_counter() - start
        app_pid = next(c.pid for c in stack.children if c.name == "app")
        print(f"\n## view: {len(urls):,} distinct patients' 14-day views, two app processes, PostgreSQL, "
              f"{'Redis' if redis_url else 'no Redis (not answering)'}\n")  # fmt: skip
        print(f"stack started and {len(urls):,} patients' readings ingested in {loaded:.0f} s; standard outcomes "
              f"materialized in {materialized:.0f} s ({recompute.stdout.strip().splitlines()[-1]}); "
              f"{len(urls):,} launches over HTTP in {launching:.0f} s (8 at a time)")  # fmt: skip
        first = sorted(_first_views(urls))
        with tempfile.TemporaryDirectory() as tmp:
            paths = Path(tmp) / "paths.txt"
            paths.write_text("\n".join(urlsplit(u).path + (f"?{urlsplit(u).query}" if urlsplit(u).query else "")
                                       for u in urls) + "\n")  # fmt: skip
            script = Path(tmp) / "views.lua"
            script.write_text(LUA % {"paths": paths})
            _load(stack.app_url + "/", 20, 2, script, app_pid)  # warm-up
            runs = [(f"patient views, {c} concurrent", _load(stack.app_url + "/", c, seconds, script, app_pid))
                    for c in (20, 100)]  # fmt: skip
            health = Path(tmp) / "health.txt"
            health.write_text("/healthz\n")
            base_script = Path(tmp) / "health.lua"
            base_script.write_text(LUA % {"paths": health})
            runs.append(("baseline: /healthz, 20 concurrent", _load(stack.app_url + "/", 20, seconds, base_script,
                                                                    app_pid)))  # fmt: skip
    finally:
        stack.stop()
        schema.close()
        if saved is None:
            os.environ.pop("REDIS_URL", None)
        else:
            os.environ["REDIS_URL"] = saved
        if redis_url:
            redis.Redis.from_url(redis_url).flushdb()
    rows = [(label, f"{r['p50']:.1f} ms", f"{r['p95']:.1f} ms", f"{r['p99']:.1f} ms", f"{r['rate']:,.0f}/s",
             f"{int(r['errors']):,} of {int(r['requests']):,}", f"{r['cpu_ms']:.1f} ms")
            for label, r in runs]  # fmt: skip
    rows.insert(0, ("first view of each patient, 4 at a time", f"{statistics.median(first) * 1e3:.1f} ms",
                    f"{first[int(0.95 * (len(first) - 1))] * 1e3:.1f} ms",
                    f"{first[int(0.99 * (len(first) - 1))] * 1e3:.1f} ms", "", "", ""))  # fmt: skip
    print(table(rows, ("load", "p50", "p95", "p99", "requests/s", "errors", "app CPU per view")))
    view20 = runs[0][1]
    print(
        f"\np95 at 20 / baseline p95: {view20['p95'] / max(runs[2][1]['p95'], 0.001):.1f}x; "
        f"app CPU per view / per /healthz: {view20['cpu_ms'] / max(runs[2][1]['cpu_ms'], 0.001):.1f}x"
    )
    print("goals: p95 <= 150 ms at 20 concurrent with 0 errors; app CPU per view <= 5 ms. 'app CPU per view' is the "
          "CPU of the app's process tree (uvicorn and its workers) during the run over the requests served; the load "
          "generator (wrk) shares the machine's two cores with the app, the sandbox EHR and PostgreSQL.")  # fmt: skip
