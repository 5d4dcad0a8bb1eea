"""The capability matrix at run time: negative writes asserted at the transport, degradation on 403, a read-only
site switched to full write-back mid-run, corrections after a backfill."""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from bff.audit import recent
from bff.broker.guard import WriteRefusedError
from bff.broker.plan import PlannedWrite
from bff.ingest.registry import parser_for
from bff.outbox import queue
from bff.store.ingest import Ingestor
from bff.store.models import SignOff, WriteIntent
from bff.store.outcomes import OutcomeService
from sandbox.faultproxy import FaultProxy
from sandbox.personalities import WriteMode as EhrWriteMode
from tests.broker.conftest import SIGNER, Rig, both_databases, ingest_site, sign

WHO = "integration-engineer"


def writes_at(proxy: FaultProxy, site: str) -> list[str]:
    return [f"{e.method} {e.path}" for e in proxy.journal(writes=True) if e.path.startswith(f"/sites/{site}/")]


def set_ehr_mode(rig: Rig, site: str, mode: EhrWriteMode) -> None:
    ehr_site = rig.ehr.sandbox.sites[site]
    ehr_site.personality = dataclasses.replace(ehr_site.personality, write_mode=mode)


# --- negative writes, asserted at the transport ---------------------------------------------------------------


def test_a_read_only_site_never_receives_a_write(prig: Rig, proxy: FaultProxy) -> None:
    signoff = sign(prig, "read-only")
    view = prig.writeback.status(signoff)
    assert view.state == "deferred"
    assert view.queue_position == 1
    for _ in range(3):
        prig.run(prig.worker.run_site("read-only"))
    assert writes_at(proxy, "read-only") == []
    assert prig.ehr.sent == []
    # Even a hand-made request is refused before it leaves.
    write = PlannedWrite(
        "observations",
        "fhir",
        "POST",
        "Observation",
        ("tir",),
        "x",
        body={"resourceType": "Observation", "category": []},
    )
    with pytest.raises(WriteRefusedError, match="read-only"):
        prig.run(prig.broker.send(prig.caps("read-only"), write))
    assert writes_at(proxy, "read-only") == []


def test_a_flowsheet_only_site_never_receives_notes_or_laboratory_observations(prig: Rig, proxy: FaultProxy) -> None:
    caps = prig.caps("epic-like")
    note = PlannedWrite(
        "note",
        "fhir",
        "POST",
        "DocumentReference",
        ("note",),
        "a note",
        body={
            "resourceType": "DocumentReference",
            "content": [{"attachment": {"contentType": "text/plain", "data": "eA=="}}],
        },
    )
    lab = PlannedWrite(
        "observations",
        "fhir",
        "POST",
        "Observation",
        ("tir",),
        "lab",
        body={
            "resourceType": "Observation",
            "category": [{"coding": [{"code": "laboratory"}]}],
            "code": {"coding": [{"system": caps.write.flowsheet_system, "code": "3040101010"}]},
        },
    )
    mislabelled = dataclasses.replace(lab, kind="flowsheet")
    unmapped = PlannedWrite(
        "flowsheet",
        "fhir",
        "POST",
        "Observation",
        ("tir",),
        "row",
        body={
            "resourceType": "Observation",
            "category": [{"coding": [{"code": "vital-signs"}]}],
            "code": {"coding": [{"system": caps.write.flowsheet_system, "code": "999"}]},
        },
    )
    for write in (note, lab, mislabelled, unmapped):
        with pytest.raises(WriteRefusedError):
            prig.run(prig.broker.send(caps, write))
    assert writes_at(proxy, "epic-like") == []
    assert prig.ehr.sent == []


def test_writes_outside_the_allowed_categories_are_refused_before_sending(prig: Rig, proxy: FaultProxy) -> None:
    caps = prig.caps("oracle-like")  # laboratory only
    vitals = PlannedWrite(
        "observations",
        "fhir",
        "POST",
        "Observation",
        ("tir",),
        "v",
        body={"resourceType": "Observation", "category": [{"coding": [{"code": "vital-signs"}]}]},
    )
    two = PlannedWrite(
        "observations",
        "fhir",
        "POST",
        "Observation",
        ("tir",),
        "v",
        body={
            "resourceType": "Observation",
            "category": [{"coding": [{"code": "vital-signs"}]}, {"coding": [{"code": "laboratory"}]}],
        },
    )
    bundle = PlannedWrite("bundle", "fhir", "POST", "", ("summary",), "b", body={"resourceType": "Bundle"})
    for write in (vitals, two, bundle):
        with pytest.raises(WriteRefusedError):
            prig.run(prig.broker.send(caps, write))
    assert writes_at(proxy, "oracle-like") == []


def test_a_matrix_narrowed_after_sign_off_refuses_what_it_no_longer_allows(prig: Rig, proxy: FaultProxy) -> None:
    signoff = sign(prig, "oracle-like")
    prig.capabilities.set("oracle-like", "write.mode", "notes_only", who=WHO, reason="site asked: notes only")
    prig.drain("oracle-like")
    states = Counter((i.kind, i.state) for i in prig.writeback.status(signoff).intents)
    assert states == {("observations", "failed"): 8, ("note", "confirmed"): 1, ("pdf", "failed"): 1}
    assert list(writes_at(proxy, "oracle-like")) == ["POST /sites/oracle-like/fhir/DocumentReference"]
    failed = [i for i in prig.writeback.status(signoff).intents if i.state == "failed"]
    assert all("refused before sending" in (i.last_error or "") for i in failed)


# --- degradation and recovery ---------------------------------------------------------------------------------


@both_databases
def test_a_403_degrades_the_site_and_recovery_syncs_in_order_once(prig: Rig, proxy: FaultProxy) -> None:
    first = sign(prig, "oracle-like", "p1")
    second = sign(prig, "oracle-like", "p2")
    set_ehr_mode(prig, "oracle-like", EhrWriteMode.FORBIDDEN)  # the site revoked our write access
    prig.run(prig.worker.run_site("oracle-like"))
    caps = prig.caps("oracle-like")
    assert caps.write.mode.value == "read_only"
    assert any(e.event == "site.degraded" for e in recent(prig.store, 50))
    assert queue.counts_by_state(prig.store, "oracle-like")["deferred"] == 20
    assert writes_at(proxy, "oracle-like") == ["POST /sites/oracle-like/fhir/Observation"]  # the refused one only
    for _ in range(2):
        prig.run(prig.worker.run_site("oracle-like"))
    assert len(writes_at(proxy, "oracle-like")) == 1  # nothing more while degraded
    # The site gives write access back; the engineer clears the degradation on the admin page.
    set_ehr_mode(prig, "oracle-like", EhrWriteMode.LAB_VITALS)
    prig.capabilities.clear("oracle-like", "write.mode", who=WHO, reason="site restored write access")
    prig.drain("oracle-like")
    for signoff in (first, second):
        assert prig.writeback.status(signoff).state == "confirmed"
    committed = [e for e in proxy.journal(writes=True) if e.upstream_status == 201]
    assert len(committed) == 20
    assert [e.seq for e in committed] == sorted(e.seq for e in committed)
    with prig.store.transaction() as session:
        order = [i.id for i in session.query(WriteIntent).order_by(WriteIntent.confirmed_at, WriteIntent.id)]
    assert order == sorted(order)  # confirmed in creation order


@both_databases
def test_a_read_only_site_switched_to_full_syncs_its_queue_in_order_each_once(prig: Rig, proxy: FaultProxy) -> None:
    signoffs = [sign(prig, "read-only", person) for person in ("p1", "p2", "p3")]
    for _ in range(2):
        prig.run(prig.worker.run_site("read-only"))
    assert writes_at(proxy, "read-only") == []
    positions = [prig.writeback.status(s).queue_position for s in signoffs]
    assert positions == [1, 2, 3]
    # Mid-run the site turns on full write-back: the EHR, then its matrix (run time, no restart).
    set_ehr_mode(prig, "read-only", EhrWriteMode.OPEN)
    prig.capabilities.set("read-only", "write.channel", "fhir", who=WHO, reason="go-live of write-back")
    prig.capabilities.set("read-only", "write.mode", "full", who=WHO, reason="go-live of write-back")
    prig.drain("read-only")
    for signoff in signoffs:
        view = prig.writeback.status(signoff)
        assert view.state == "confirmed", [(i.kind, i.state, i.last_error) for i in view.intents]
    journal = [e for e in proxy.journal(writes=True) if e.path.startswith("/sites/read-only/")]
    assert [e.upstream_status for e in journal] == [200, 201] * 3  # a transaction Bundle and a note per sign-off
    patients = [e.identifier for e in journal]
    assert len(set(patients)) == 6  # six distinct writes, none repeated
    bundles = prig.ehr.created("read-only", "Provenance")
    assert len(bundles) == 3


# --- corrections ----------------------------------------------------------------------------------------------


def backfill(rig: Rig, site: str, person: str, value: int = 320, *, recompute: bool = True) -> int:
    """Readings that arrive late for the gaps of the signed window (a phone syncing after days)."""
    fhir_id = rig.ehr.patient(site, person)
    blocks = [b for b in rig.ehr.sandbox.sites[site].seed.blocks if b.patient_id == fhir_id]
    template = next(iter(blocks[0].observations()))
    times = sorted(int(t) for b in blocks for t in b.trace.time_ms)
    added = []
    for before, after in itertools.pairwise(times):
        gap = after - before
        if gap >= 30 * 60_000:
            for k in range(1, gap // 300_000):
                at = before + k * 300_000
                observation = copy.deepcopy(template)
                observation["id"] = f"late-{at}"
                observation["identifier"] = [{"system": "https://example.org/late", "value": f"late-{person}-{at}"}]
                observation["effectiveDateTime"] = datetime.fromtimestamp(at / 1000, UTC).isoformat()
                observation["valueQuantity"]["value"] = value
                added.append(orjson.dumps(observation))
    assert added, "the seed has no gap to backfill"
    Ingestor(rig.store).ingest(parser_for("fhir"), io.BytesIO(b"\n".join(added)), site=site, source_name="late.ndjson")
    if recompute:
        OutcomeService(rig.store).recompute_stale()
    return len(added)


@pytest.mark.parametrize(("threshold", "held"), [(90.0, False), (0.01, True)])
def test_a_backfill_after_sign_off_makes_a_correction(
    prig: Rig, proxy: FaultProxy, threshold: float, held: bool
) -> None:
    prig.capabilities.set("oracle-like", "corrections.resign_pp", threshold, who=WHO, reason="policy")
    prig.capabilities.set("oracle-like", "corrections.resign_tbr_pp", threshold, who=WHO, reason="policy")
    prig.capabilities.set("oracle-like", "corrections.resign_mean_mg_dl", threshold * 10, who=WHO, reason="policy")
    first = sign(prig, "oracle-like")
    prig.drain("oracle-like")
    assert backfill(prig, "oracle-like", "p1") > 0
    created = prig.writeback.propose_corrections("oracle-like")
    assert created
    assert prig.writeback.propose_corrections("oracle-like") == []  # once
    with prig.store.transaction() as session:
        corrections = session.query(WriteIntent).filter(WriteIntent.id.in_(created)).all()
        states = {c.state for c in corrections}
        assert all(c.corrects_id is not None for c in corrections if c.kind == "observations")
        assert all(c.payload["body"]["status"] == "corrected" for c in corrections if c.kind == "observations")
    assert states == ({"awaiting_signoff"} if held else {"queued"})
    prig.drain("oracle-like")
    if held:
        assert writes_at(proxy, "oracle-like").count("POST /sites/oracle-like/fhir/Observation") == 8
        public = prig.writeback.status(first).patient
        review = prig.writeback.review("oracle-like", public)
        view = prig.writeback.sign_correction("oracle-like", public, digest=review.digest, signer=SIGNER)
        assert view.corrects_signoff_id == first
        prig.drain("oracle-like")
        with prig.store.transaction() as session:
            assert session.query(SignOff).count() == 2
    with prig.store.transaction() as session:
        rows = session.query(WriteIntent).filter(WriteIntent.id.in_(created)).all()
        assert {r.state for r in rows} == {"confirmed"}
    corrected = [o for o in prig.ehr.created("oracle-like", "Observation") if o["status"] == "corrected"]
    assert len(corrected) == 8


def test_a_405_from_a_site_that_takes_no_fhir_writes_degrades_it(prig: Rig, proxy: FaultProxy) -> None:
    # A matrix that is wrong about the site: it says FHIR results, the EHR answers 405 (HL7 v2 only).
    prig.capabilities.set("hl7-only", "write.channel", "fhir", who=WHO, reason="misconfigured on purpose")
    signoff = sign(prig, "hl7-only")
    prig.run(prig.worker.run_site("hl7-only"))
    assert prig.caps("hl7-only").write.mode.value == "read_only"
    assert prig.writeback.status(signoff).state == "deferred"
    assert [e.client_status for e in proxy.journal(writes=True) if "/hl7-only/" in e.path] == [405]
    degraded = [e for e in recent(prig.store, 50) if e.event == "site.degraded"]
    assert degraded[0].detail["status"] == 405


def test_an_r5_site_gets_r5_resources(rig: Rig) -> None:
    rig.capabilities.set("cgm-receiver", "fhir.version", "R5", who=WHO, reason="an R5 server")
    public = ingest_site(rig.store, rig.ehr, "cgm-receiver")["p1"]
    review = rig.writeback.review("cgm-receiver", public)
    note = next(w for w in review.writes if w.kind == "note")
    assert "period" in (note.body or {})  # R5 DocumentReference.period (R4 had context.period)
    assert "context" not in (note.body or {}) or "period" not in (note.body or {})["context"]
    bundle = next(w for w in review.writes if w.kind == "bundle")
    provenance = next(e["resource"] for e in (bundle.body or {})["parameter"][0]["resource"]["entry"]
                      if e["resource"]["resourceType"] == "Provenance")  # fmt: skip
    assert "patient" in provenance  # R5 Provenance.patient


@both_databases
def test_the_worker_finds_a_backfill_by_itself_and_sends_the_correction(prig: Rig, proxy: FaultProxy) -> None:
    prig.capabilities.set("oracle-like", "corrections.resign_pp", 90.0, who=WHO, reason="policy")
    prig.capabilities.set("oracle-like", "corrections.resign_tbr_pp", 90.0, who=WHO, reason="policy")
    prig.capabilities.set("oracle-like", "corrections.resign_mean_mg_dl", 900.0, who=WHO, reason="policy")
    sign(prig, "oracle-like")
    prig.drain("oracle-like")
    backfill(prig, "oracle-like", "p1", recompute=False)  # the window is only marked stale
    prig.worker.config = dataclasses.replace(prig.worker.config, corrections_every_s=0.0)
    prig.drain("oracle-like")
    corrected = [o for o in prig.ehr.created("oracle-like", "Observation") if o["status"] == "corrected"]
    assert len(corrected) == 8
    prig.drain("oracle-like")  # and only once
    assert len([o for o in prig.ehr.created("oracle-like", "Observation") if o["status"] == "corrected"]) == 8


def test_a_403_to_the_clinicians_own_token_does_not_degrade_the_site(prig: Rig, proxy: FaultProxy) -> None:
    proxy.add_rule({"match": {"method": "POST", "path_prefix": "/sites/oracle-like/fhir/Observation"},
                    "action": "status", "status": 403, "times": 1})  # fmt: skip
    signoff = sign(prig, "oracle-like")
    ids = [i.id for i in prig.writeback.status(signoff).intents]
    run = prig.run(prig.worker.send_in_context("oracle-like", ids, prig.broker))
    assert run.confirmed == 0
    assert prig.caps("oracle-like").write.mode.value == "full"  # not degraded
    assert {i.state for i in prig.writeback.status(signoff).intents} == {"queued"}
    prig.drain("oracle-like")  # the worker, with the app's system token, sends it all once
    assert prig.writeback.status(signoff).state == "confirmed"
    assert len(prig.ehr.created("oracle-like", "Observation")) == 8
