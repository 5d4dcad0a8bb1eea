"""Several processes, one truth (issue 13, docs/deploy.md): two app processes (`glucobridge serve --workers 2`, as
the app's Deployment runs it), two `glucobridge worker` and two `glucobridge outbox work` processes on one
PostgreSQL and one Redis, with the sandbox EHR.

Patients are launched through the app; opening the view asks for a launch-time read (a job on SAQ), which one of
the job workers runs: nothing is in the store before, so the readings arrive only by those jobs. Their outcomes are
signed off through the app; the sign-offs' writes are queued, and the two outbox workers file them. Then: each read
job ran once (SAQ's record: done, one attempt; the store's read status: done, every reading the EHR has, once), no
write is left or failed, and the EHR committed exactly as many writes as there are intents, each once.

Skipped with the reason without PostgreSQL or Redis, unless GLUCOBRIDGE_REQUIRE_SERVICES=1 (then it fails).

Its first runs found a race: two reads of one site's patients, run at once by the two job workers on an empty store,
both inserted the site's row (UniqueViolation on pk_sites) and one read failed; a new site is now inserted with
ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis

from app.demo import DemoStack, free_port
from bff.capabilities import CapabilityService
from bff.jobs.launch_read import LaunchReads
from bff.jobs.queue import JobState
from bff.jobs.requests import read_key
from bff.jobs.saq_queue import QUEUE_NAME, SaqQueue, redis_queue
from bff.outbox import queue
from bff.settings import Settings
from bff.store.db import Store, make_engine, upgrade
from bff.writeback import WritebackService
from tests.conftest import PgSchema, need_postgres, need_redis
from tests.web.conftest import launched, patients
from tests.web.test_signoff import HX, fields, review, signoff_id

REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
SITE = "oracle-like"  # its writes go through the outbox (a system token), none in context
GLUCOBRIDGE = str(Path(sys.executable).parent / "glucobridge")
PATIENTS = 3
STARTUP_S = 300.0  # on a quiet machine the whole stack is up in seconds; a loaded one can take minutes


@pytest.fixture(name="redis_url")
def fx_redis_url() -> Iterator[str]:
    """An empty Redis database of its own: the queue's name is the production one (`glucobridge`), as in the CLI."""
    need_redis(f"{REDIS_BASE}/0")
    for db in random.sample(range(1, 16), 15):
        mine = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
        # Claim it: an empty database, marked as this test's (another run of this test picks another).
        if mine.dbsize() == 0 and mine.set("glucobridge-test:claim", "1", nx=True):
            try:
                yield f"{REDIS_BASE}/{db}"
            finally:
                mine.flushdb()
                mine.close()
            return
        mine.close()
    pytest.skip("no empty Redis database (1–15) for this test")


@pytest.fixture(name="stack")
def fx_stack(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoStack]:
    need_postgres()
    schema = PgSchema()
    engine = make_engine(schema.url)
    upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("REDIS_URL", redis_url)  # the stack's children get the environment
    stack = DemoStack(app_port=free_port(), ehr_port=free_port(), app_workers=2, worker=False,
                      database_url=schema.url, load_sites=(), days=14)  # fmt: skip
    try:
        start(stack)
        for n in (1, 2):
            stack.spawn(f"job worker {n}", f"job-worker-{n}", [GLUCOBRIDGE, "worker", "--concurrency", "2"])
            stack.spawn(f"outbox worker {n}", f"outbox-worker-{n}", [GLUCOBRIDGE, "outbox", "work"])
        yield stack
    finally:
        stack.stop()
        schema.close()


def start(stack: DemoStack) -> None:
    """`DemoStack.start` without its data (the reads bring it) or its admin account, and with a wait for the app
    that a busy machine does not outrun (three processes import the app at once)."""
    stack.now = datetime.now(UTC).replace(microsecond=0)
    stack.mllp_port, stack.site_mllp_port = free_port(), free_port()
    stack.env = stack._environment()
    sandbox = stack.spawn("sandbox EHR", "sandbox", [
        sys.executable, "-m", "sandbox", "serve", "--host", "127.0.0.1", "--port", str(stack.ehr_port),
        "--public-base", stack.ehr_url, "--app-launch-url", f"{stack.app_url}/launch",
        "--redirect-uri", f"{stack.app_url}/callback", "--backend-jwks-url", f"{stack.app_url}/.well-known/jwks.json",
        "--mllp-port", str(stack.site_mllp_port), *stack._seed_args(),
    ])  # fmt: skip
    stack.wait_http(f"{stack.ehr_url}/ehr/", sandbox, timeout_s=STARTUP_S)
    app = stack.spawn("app", "app", [GLUCOBRIDGE, "serve", "--host", "127.0.0.1", "--port", str(stack.app_port),
                                     "--workers", str(stack.app_workers)])  # fmt: skip
    stack.wait_http(f"{stack.app_url}/healthz", app, timeout_s=STARTUP_S)


def until(check: Callable[[], bool], what: str, stack: DemoStack, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        gone = stack.exited()
        assert gone is None, f"{gone.name} exited: {gone.log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def test_two_of_each_process_no_duplicate_job_no_duplicate_write_no_lost_work(stack: DemoStack) -> None:
    store = Store(Settings(database_url=stack.env["DATABASE_URL"]), check_schema=False)
    reads = LaunchReads(store)
    try:
        chosen = patients(stack, SITE)[:PATIENTS]
        assert len(chosen) == PATIENTS
        flows = []
        for patient in chosen:
            flow = launched(stack, SITE, patient)
            assert flow.app.get(flow.view_url).status_code == 200  # the view opens: a launch-time read is queued
            flows.append(flow)

        def read(patient: str) -> str | None:
            status = reads.status(SITE, patient)
            return None if status is None else status.state

        until(lambda: all(read(p) in ("done", "failed", "incomplete") for p in chosen), "the reads", stack)
        statuses = {p: reads.status(SITE, p) for p in chosen}
        assert {p: s.state for p, s in statuses.items() if s} == dict.fromkeys(chosen, "done"), [
            s.error for s in statuses.values() if s
        ]
        for status in statuses.values():
            assert status is not None
            assert status.received > 0
            assert status.added == status.received  # each reading stored once: none lost, none twice

        async def jobs() -> list[tuple[JobState | None, int]]:
            saq = SaqQueue(redis_queue(stack.env["REDIS_URL"], QUEUE_NAME))
            await saq.queue.connect()
            try:
                found = []
                for patient in chosen:
                    key = read_key(SITE, patient)
                    job = await saq.queue.job(key)
                    found.append((await saq.state(key), job.attempts if job else -1))
                return found
            finally:
                await saq.close()

        assert asyncio.run(jobs()) == [(JobState.DONE, 1)] * PATIENTS  # each read job ran once, by one worker

        signoffs = []
        for flow in flows:
            signed = flow.app.post(flow.view_url + "chart/signoffs", data=fields(review(flow).text), headers=HX)
            assert signed.status_code == 200, signed.text
            signoffs.append(signoff_id(signed.text))
        assert len(set(signoffs)) == PATIENTS

        def settled() -> bool:
            counts = queue.counts_by_state(store, SITE)
            return counts["confirmed"] > 0 and counts["queued"] + counts["sending"] + counts["unknown"] == 0

        until(settled, "the writes", stack)
        assert queue.counts_by_state(store, SITE)["failed"] == 0
        writeback = WritebackService(store, CapabilityService(store, stack.env["SITES_DIR"]))
        views = [writeback.status(s) for s in signoffs]
        assert [v.state for v in views] == ["confirmed"] * PATIENTS, [
            (i.kind, i.state) for v in views for i in v.intents
        ]
        sent = [i for v in views for i in v.intents if i.kind != "plan"]
        journal = httpx.get(f"{stack.ehr_url}/sandbox/sites/{SITE}/journal", params={"writes": "1"}).json()
        committed = [e for e in journal if e["status"] in (200, 201)]
        assert len(committed) == len(sent)  # each write reached the EHR: none lost, none twice
        # And none twice by content: each patient's sign-off writes the same resources (path and codes) the same
        # number of times (Oracle: two DocumentReferences, the note and the PDF, which the journal cannot tell
        # apart), so one patient's write sent twice shows as a count that is not a multiple of the patients.
        written = Counter(f"{e['path']} {json.dumps(e['codes'], sort_keys=True)}" for e in committed)
        assert written
        assert all(n % PATIENTS == 0 for n in written.values()), written
        assert stack.exited() is None  # every process still running: none fell over along the way
    finally:
        store.dispose()
