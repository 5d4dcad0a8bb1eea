"""`glucobridge outbox …` end to end: a sandbox EHR (in this process, over real HTTP), the CLI against a store.

The sandbox registers the app's backend client `glucobridge-backend` with this test's ES384 key, as an EHR
registers the app's JWKS; the CLI reads the key from SMART_BACKEND_KEY_FILE like the app.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from joserfc import jwk

from app.cli import main
from bff.audit import recent
from bff.capabilities import CapabilityService
from bff.settings import Settings, get_settings
from bff.store.db import Store
from bff.store.models import WriteIntent
from bff.writeback import WritebackService
from sandbox import SandboxConfig, create_app
from tests.broker.conftest import Ehr
from tests.sandbox.support import APP_LAUNCH, NOW, REDIRECT, free_port, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
SIGNER = "Practitioner/dr-cli"
Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(name="key", scope="module")
def fx_key() -> jwk.ECKey:
    return jwk.ECKey.generate_key("P-384", parameters={"kid": "cli-1"}, private=True)


@pytest.fixture(name="ehr")
def fx_ehr(key: jwk.ECKey) -> Iterator[Ehr]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = SandboxConfig.local(public_base=base, app_launch_url=APP_LAUNCH, redirect_uris=(REDIRECT,),
                                 backend_jwks_url=None, backend_jwks={"keys": [key.as_dict(private=False)]},
                                 sites=("epic-like", "oracle-like", "read-only"), now=NOW, days=14)  # fmt: skip
    app = create_app(config)
    with serve_in_thread(app, port):
        yield Ehr(base, app.state.sandbox)


@pytest.fixture(name="env")
def fx_env(
    ehr: Ehr, key: jwk.ECKey, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The app's settings for the CLI: the store, the sites (pointing at the sandbox), the backend key."""
    sites = tmp_path / "sites"
    sites.mkdir()
    for site in ("epic-like", "oracle-like", "read-only"):
        text = (ROOT / "sites" / f"{site}.toml").read_text(encoding="utf-8")
        (sites / f"{site}.toml").write_text(text.replace("http://localhost:8081", ehr.base), encoding="utf-8")
    pem = tmp_path / "backend.pem"
    pem.write_bytes(key.as_pem(private=True))
    values = {"DATABASE_URL": db_url, "SITES_DIR": str(sites), "SMART_BACKEND_KEY_FILE": str(pem),
              "SMART_BACKEND_KID": "cli-1", "SMART_BACKEND_ALG": "ES384", "APP_SECRET_KEY": "k" * 32}  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield values
    get_settings.cache_clear()


@pytest.fixture(name="cli")
def fx_cli(env: dict[str, str]) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    return run


@pytest.fixture(name="store")
def fx_store(env: dict[str, str], cli: Run) -> Iterator[Store]:
    code, _, err = cli("db", "upgrade")
    assert code == 0, err
    store = Store(Settings(database_url=env["DATABASE_URL"]))
    try:
        yield store
    finally:
        store.dispose()


def ingest(cli: Run, ehr: Ehr, site: str, person: str, tmp_path: Path) -> str:
    """The person's seeded CGM Observations through `glucobridge ingest --feed fhir`; their public id."""
    fhir_id = ehr.patient(site, person)
    lines = [orjson.dumps(o) for b in ehr.sandbox.sites[site].seed.blocks if b.patient_id == fhir_id
             for o in b.observations()]  # fmt: skip
    path = tmp_path / f"{site}-{person}.ndjson"
    path.write_bytes(b"\n".join(lines))
    code, _, err = cli("ingest", str(path), "--feed", "fhir", "--site", site)
    assert code == 0, err
    return f"site:{site}:fhir|Patient/{fhir_id}"


def sign(store: Store, env: dict[str, str], ehr: Ehr, site: str, person: str, public: str) -> int:
    service = WritebackService(store, CapabilityService(store, env["SITES_DIR"]))
    encounter = ehr.encounter(site, person)
    review = service.review(site, public, encounter=encounter)
    assert review.refusal is None, review.refusal
    return service.sign(site, public, digest=review.digest, signer=SIGNER, encounter=encounter).id


def intents(store: Store, signoff: int) -> list[WriteIntent]:
    with store.transaction() as session:
        return list(session.query(WriteIntent).filter(WriteIntent.signoff_id == signoff).order_by(WriteIntent.id))


def status(cli: Run, site: str) -> dict[str, int]:
    code, out, err = cli("outbox", "status", "--site", site, "--json")
    assert code == 0, err
    counts: dict[str, int] = json.loads(out)[site]["counts"]
    return counts


# MARK: work and status


def test_work_once_sends_what_was_signed_and_status_counts_it(
    cli: Run, ehr: Ehr, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    public = ingest(cli, ehr, "epic-like", "p1", tmp_path)
    signoff = sign(store, env, ehr, "epic-like", "p1", public)
    assert status(cli, "epic-like")["queued"] == 8
    code, out, _ = cli("outbox", "status")
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert header.split("\t")[:4] == ["site", "mode", "awaiting_signoff", "deferred"]
    assert [r.split("\t")[:2] for r in rows] == [["epic-like", "flowsheet_only"], ["oracle-like", "full"],
                                                  ["read-only", "read_only"]]  # fmt: skip
    code, out, err = cli("outbox", "work", "--once", "--site", "epic-like")
    assert code == 0, err
    assert out.strip() == "epic-like: sent 8, confirmed 8"
    assert status(cli, "epic-like")["confirmed"] == 8
    assert {i.state for i in intents(store, signoff)} == {"confirmed"}
    assert len(ehr.created("epic-like", "Observation")) == 8
    code, out, _ = cli("outbox", "work", "--once", "--site", "epic-like")
    assert out.strip() == "epic-like: nothing to do"  # each write once
    assert len(ehr.created("epic-like", "Observation")) == 8


def test_work_checks_its_input(cli: Run, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = cli("outbox", "work", "--once", "--site", "no-such-site")
    assert code == 2
    assert err.startswith("glucobridge: no such site 'no-such-site'")
    assert err.count("\n") == 1
    monkeypatch.delenv("SMART_BACKEND_KEY_FILE")
    code, _, err = cli("outbox", "work", "--once")
    assert code == 2
    assert "SMART_BACKEND_KEY_FILE" in err
    assert err.count("\n") == 1
    code, out, err = cli("outbox", "work", "--once", "--site", "read-only")  # no FHIR writes there: no key needed
    assert code == 0, err
    assert out.strip() == "read-only: nothing to do"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_work_stops_cleanly_on_a_signal(env: dict[str, str], store: Store, sig: signal.Signals) -> None:
    worker = subprocess.Popen([str(Path(sys.executable).parent / "glucobridge"), "outbox", "work"],
                              env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert worker.stdout is not None
        assert "outbox worker running for every site" in worker.stdout.readline()
        time.sleep(1.5)  # a pass or two over every site
        worker.send_signal(sig)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    assert out.strip() == "stopped"
    assert "Traceback" not in err


# MARK: retry and cancel


def test_retry_and_cancel_are_audited_and_check_their_input(
    cli: Run, ehr: Ehr, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    public = ingest(cli, ehr, "oracle-like", "p1", tmp_path)
    first, second, *_ = intents(store, sign(store, env, ehr, "oracle-like", "p1", public))
    code, _, err = cli("outbox", "cancel", str(first.id), "--who", "A. Engineer")
    assert code == 2
    assert err == "glucobridge: outbox cancel needs --who and --reason (the change is audited)\n"
    code, out, err = cli("outbox", "cancel", str(first.id), "--who", "A. Engineer", "--reason", "filed by hand")
    assert code == 0, err
    assert out == f"write intent {first.id} at oracle-like: cancelled\n"
    code, _, err = cli("outbox", "retry", str(first.id), "--who", "A. Engineer", "--reason", "again")
    assert code == 2
    assert "is cancelled: it cannot be queued now" in err
    code, _, err = cli("outbox", "retry", "999999", "--who", "A. Engineer", "--reason", "again")
    assert (code, err) == (2, "glucobridge: no write intent 999999\n")
    with store.transaction() as session:  # as the worker records an EHR's refusal
        row = session.get(WriteIntent, second.id)
        assert row is not None
        row.state, row.last_error = "failed", "HTTP 422: unknown code"
    code, out, err = cli("outbox", "retry", str(second.id), "--who", "A. Engineer", "--reason", "code system fixed")
    assert code == 0, err
    assert out == f"write intent {second.id} at oracle-like: queued\n"
    events = [(e.event, e.actor, e.detail.get("intent"), e.detail.get("reason")) for e in recent(store, 20)]
    assert ("outbox.cancel", "A. Engineer", first.id, "filed by hand") in events
    assert ("outbox.retry", "A. Engineer", second.id, "code system fixed") in events


# MARK: corrections


def backfill(cli: Run, ehr: Ehr, site: str, person: str, tmp_path: Path, value: int = 320) -> int:
    """Readings that arrive late for the gaps of the signed window (a phone syncing after days)."""
    fhir_id = ehr.patient(site, person)
    blocks = [b for b in ehr.sandbox.sites[site].seed.blocks if b.patient_id == fhir_id]
    template = next(iter(blocks[0].observations()))
    times = sorted(int(t) for b in blocks for t in b.trace.time_ms)
    lines = []
    for before, after in itertools.pairwise(times):
        for k in range(1, (after - before) // 300_000 if after - before >= 30 * 60_000 else 0):
            at = before + k * 300_000
            observation = copy.deepcopy(template)
            observation["id"] = f"late-{at}"
            observation["identifier"] = [{"system": "https://example.org/late", "value": f"late-{person}-{at}"}]
            observation["effectiveDateTime"] = datetime.fromtimestamp(at / 1000, UTC).isoformat()
            observation["valueQuantity"]["value"] = value
            lines.append(orjson.dumps(observation))
    assert lines, "the seed has no gap to backfill"
    path = tmp_path / "late.ndjson"
    path.write_bytes(b"\n".join(lines))
    code, _, err = cli("ingest", str(path), "--feed", "fhir", "--site", site)
    assert code == 0, err
    return len(lines)


def test_corrections_after_a_backfill_are_held_for_a_new_sign_off(
    cli: Run, ehr: Ehr, store: Store, env: dict[str, str], tmp_path: Path
) -> None:
    for path in ("corrections.resign_pp", "corrections.resign_tbr_pp", "corrections.resign_mean_mg_dl"):
        assert cli("site", "set", "oracle-like", path, "0.01", "--who", "QA", "--reason", "strict policy")[0] == 0
    public = ingest(cli, ehr, "oracle-like", "p1", tmp_path)
    sign(store, env, ehr, "oracle-like", "p1", public)
    code, out, err = cli("outbox", "work", "--once", "--site", "oracle-like")
    assert code == 0, err
    assert "confirmed 10" in out
    code, out, err = cli("outbox", "corrections", "--site", "oracle-like")
    assert (code, out) == (0, "oracle-like: 0 correction write(s)\n")  # nothing changed yet
    assert backfill(cli, ehr, "oracle-like", "p1", tmp_path) > 0
    code, out, err = cli("recompute", "--stale")
    assert code == 0, err
    code, out, err = cli("outbox", "corrections", "--site", "oracle-like")
    assert code == 0, err
    held = status(cli, "oracle-like")["awaiting_signoff"]
    assert held > 0
    assert out == f"oracle-like: {held} correction write(s), {held} awaiting a new sign-off\n"
    code, out, _ = cli("outbox", "corrections")  # every site; once only
    assert out.splitlines() == [f"{site}: 0 correction write(s)" for site in ("epic-like", "oracle-like", "read-only")]
