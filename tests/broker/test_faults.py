"""Fault injection on the write path: each write ends confirmed exactly once at the EHR, or visibly failed/unknown.

The EHR is the sandbox behind a fault proxy (sandbox.faultproxy); what the EHR received is the proxy's journal
and the sandbox's own store, so "exactly once" is counted where it matters.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest

from bff.outbox import queue
from bff.store.models import WriteAttempt
from sandbox.faultproxy import FaultProxy
from tests.broker.conftest import Rig, both_databases, sign

OBS = "/sites/oracle-like/fhir/Observation"


def confirmed_once(rig: Rig, proxy: FaultProxy, site: str, signoff: int) -> None:
    """Every intent confirmed; the EHR holds each Observation exactly once (by code), nothing else doubled."""
    view = rig.writeback.status(signoff)
    assert view.state == "confirmed", [(i.kind, i.state, i.last_error) for i in view.intents]
    observations = rig.ehr.created(site, "Observation")
    codes = Counter(c["code"]["coding"][0]["code"] for c in observations)
    assert codes
    assert max(codes.values()) == 1, codes
    committed = [e for e in proxy.journal(writes=True) if e.upstream_status in (200, 201)]
    assert len(committed) == len([i for i in view.intents if i.kind != "plan"])


def statuses(rig: Rig, signoff: int) -> list[tuple[str, int | None]]:
    ids = [i.id for i in rig.writeback.status(signoff).intents]
    with rig.store.transaction() as session:
        rows = session.query(WriteAttempt).filter(WriteAttempt.intent_id.in_(ids)).order_by(WriteAttempt.id).all()
        return [(r.outcome, r.status_code) for r in rows]


@pytest.mark.parametrize("form", ["seconds", "http-date", "epoch"])
def test_429_with_each_retry_after_form_waits_then_confirms_once(prig: Rig, proxy: FaultProxy, form: str) -> None:
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "status", "status": 429,
                    "retry_after": {"form": form, "value": 1 if form == "seconds" else 2}, "times": 1})  # fmt: skip
    signoff = sign(prig, "oracle-like")
    started = time.monotonic()
    prig.drain("oracle-like")
    assert ("retry", 429) in statuses(prig, signoff)
    first = rig_intent_attempts(prig, signoff)
    retry_at = next(a.at for a in first if a.outcome == "retry")
    sent_again = [a.at for a in first if a.outcome == "claimed"][1]
    # The server's Retry-After was honoured: 1 s, or a moment 2 s ahead (whole seconds: at least 1 s away).
    assert sent_again - retry_at >= timedelta(seconds=0.9)
    assert time.monotonic() - started >= 0.9
    confirmed_once(prig, proxy, "oracle-like", signoff)


def rig_intent_attempts(rig: Rig, signoff: int) -> list[WriteAttempt]:
    first = rig.writeback.status(signoff).intents[0].id
    return queue.attempts_of(rig.store, first)


def test_503_is_retried_and_confirmed_once(prig: Rig, proxy: FaultProxy) -> None:
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "status", "status": 503, "times": 3})
    signoff = sign(prig, "oracle-like")
    prig.drain("oracle-like")
    assert [s for s in statuses(prig, signoff) if s[1] == 503] == [("retry", 503)] * 3
    confirmed_once(prig, proxy, "oracle-like", signoff)


@pytest.mark.parametrize("site", ["oracle-like", "epic-like", "cgm-receiver"])
def test_a_timeout_after_the_server_committed_is_read_back_not_resent(prig: Rig, proxy: FaultProxy, site: str) -> None:
    path = f"/sites/{site}/fhir"
    proxy.add_rule({"match": {"method": "POST", "path_prefix": path}, "action": "hang_after_commit", "seconds": 3,
                    "times": 1})  # fmt: skip
    signoff = sign(prig, site)
    prig.drain(site)
    outcomes = [o for o, _ in statuses(prig, signoff)]
    assert "unknown" in outcomes
    assert any(a.detail == "found at the EHR by reading back" for a in rig_intent_attempts(prig, signoff))
    view = prig.writeback.status(signoff)
    assert view.state == "confirmed"
    forwarded = [e for e in proxy.journal(writes=True) if e.forwarded]
    assert len(forwarded) == len(view.intents)  # the hung write was never sent again


@both_databases
def test_a_reset_after_commit_is_read_back_not_resent(prig: Rig, proxy: FaultProxy) -> None:
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "reset_after_commit", "times": 2})
    signoff = sign(prig, "oracle-like")
    prig.drain("oracle-like")
    assert [o for o, _ in statuses(prig, signoff)].count("unknown") == 2
    confirmed_once(prig, proxy, "oracle-like", signoff)


def test_a_reset_before_the_server_saw_it_is_read_back_then_sent(prig: Rig, proxy: FaultProxy) -> None:
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "reset_before", "times": 1})
    signoff = sign(prig, "oracle-like")
    prig.drain("oracle-like")
    attempts = rig_intent_attempts(prig, signoff)
    assert [a.outcome for a in attempts if a.outcome in ("unknown", "retry", "confirmed")] == [
        "unknown", "retry", "confirmed"]  # fmt: skip
    assert "not at the EHR" in (attempts[-3].detail or "")
    confirmed_once(prig, proxy, "oracle-like", signoff)


def test_redis_down_falls_back_to_the_process_bucket(ehr, store, proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.broker.conftest import FAST, make_rig, proxied_sites  # noqa: PLC0415

    rig = make_rig(ehr, store, proxied_sites(ehr, proxy, tmp_path), config=FAST, redis_url="redis://127.0.0.1:1/0")
    try:
        signoff = sign(rig, "oracle-like")
        rig.drain("oracle-like")
        confirmed_once(rig, proxy, "oracle-like", signoff)
        bucket = rig.worker.bucket(rig.caps("oracle-like"))
        assert getattr(bucket, "down", False) is True
    finally:
        rig.run(rig.http.aclose())
        rig.loop.close()


@both_databases
def test_kill_9_of_the_worker_mid_send_loses_and_doubles_nothing(prig: Rig, proxy: FaultProxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # The EHR commits the third write and answers it only 10 s later: the worker is killed while it waits.
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "pass", "times": 2})
    proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "delay_after_commit", "seconds": 10,
                    "times": 1})  # fmt: skip
    signoff = sign(prig, "oracle-like")
    key = tmp_path / "key.pem"
    key.write_bytes(prig.ehr.key.as_pem(private=True))
    url = prig.store.engine.url.render_as_string(hide_password=False)
    sites = str(prig.capabilities.sites_dir)
    log = (tmp_path / "worker.log").open("wb")
    child = subprocess.Popen([sys.executable, "-m", "tests.broker.worker_proc", url, sites, str(key), "oracle-like"],
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held = [e for e in proxy.journal(writes=True) if e.action == "delay_after_commit" and e.forwarded]
            if held:
                break
            assert child.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.05)
        else:
            pytest.fail("the worker never reached the held write")
        time.sleep(0.3)  # the EHR has committed; the worker waits for the answer
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        log.close()
    counts = queue.counts_by_state(prig.store, "oracle-like")
    assert counts["sending"] >= 1  # the killed worker's claims (its batch), until their 2 s lease runs out
    time.sleep(2.2)
    prig.drain("oracle-like")
    outcomes = [o for o, _ in statuses(prig, signoff)]
    assert "unknown" in outcomes  # the lapsed claim became unknown, and was read back
    confirmed_once(prig, proxy, "oracle-like", signoff)


def _restart_postgres(application_name: str) -> None:
    """A PostgreSQL restart as the worker sees it. In CI (GLUCOBRIDGE_PG_RESTART=1, the suite alone on the server)
    the server really restarts; elsewhere (other suites may share the server) every connection of this worker is
    terminated by the server, which is what a restart does to its clients."""
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from sqlalchemy import create_engine, text  # noqa: PLC0415

    from tests.conftest import PG_URL  # noqa: PLC0415

    if os.environ.get("GLUCOBRIDGE_PG_RESTART") == "1":
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"], check=True)
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        killed = connection.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        ).all()
    admin.dispose()
    assert killed, "the worker had no connection to terminate"


@pytest.mark.serial  # with GLUCOBRIDGE_PG_RESTART=1 it restarts the server every other test uses
def test_a_postgresql_restart_mid_send_loses_and_doubles_nothing(ehr, proxy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from bff.settings import Settings  # noqa: PLC0415
    from bff.store.db import Store, make_engine, upgrade  # noqa: PLC0415
    from tests.broker.conftest import FAST, make_rig, proxied_sites  # noqa: PLC0415
    from tests.conftest import PgSchema, need_postgres  # noqa: PLC0415

    need_postgres()  # a PostgreSQL fault: the SQLite store is a file inside this process
    schema = PgSchema()
    name = f"gb-restart-{uuid.uuid4().hex[:8]}"
    url = f"{schema.url}&application_name={name}"
    engine = make_engine(url)
    upgrade(engine)
    store = Store(Settings(database_url=url), engine=engine)
    rig = make_rig(ehr, store, proxied_sites(ehr, proxy, tmp_path), config=FAST, timeout_s=10)
    try:
        # The EHR holds its answer to the second write for 2 s: the database goes away while the worker waits.
        proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "pass", "times": 1})
        proxy.add_rule({"match": {"method": "POST", "path_prefix": OBS}, "action": "delay_after_commit", "seconds": 2,
                        "times": 1})  # fmt: skip
        signoff = sign(rig, "oracle-like")

        injected = threading.Event()

        def restart_when_held() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if any(e.action == "delay_after_commit" and e.forwarded for e in proxy.journal(writes=True)):
                    _restart_postgres(name)
                    injected.set()
                    return
                time.sleep(0.02)

        restarter = threading.Thread(target=restart_when_held)
        restarter.start()
        rig.drain("oracle-like", timeout_s=60)
        restarter.join(30)
        assert injected.is_set(), "the database fault was never injected: the held write never reached the EHR"
        confirmed_once(rig, proxy, "oracle-like", signoff)
    finally:
        rig.run(rig.http.aclose())
        rig.loop.close()
        store.dispose()
        schema.close()
