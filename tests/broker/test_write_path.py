"""The write path end to end against the sandbox personalities: review, sign, send, confirm; each write once."""

from __future__ import annotations

import pytest

from bff.broker.plan import PlanError
from bff.store.models import SignOff
from bff.writeback import StaleReviewError
from tests.broker.conftest import SIGNER, Rig, both_databases, ingest_site, sign


@both_databases
def test_epic_like_files_each_mapped_flowsheet_row_once(rig: Rig) -> None:
    signoff = sign(rig, "epic-like")
    view = rig.writeback.status(signoff)
    assert [i.kind for i in view.intents] == ["flowsheet"] * 8
    assert view.state == "queued"
    assert view.queue_position == 1
    rig.drain("epic-like")
    view = rig.writeback.status(signoff)
    assert view.state == "confirmed", view
    assert view.final
    created = rig.ehr.created("epic-like", "Observation")
    assert len(created) == 8
    rows = sorted(c["code"]["coding"][0]["code"] for c in created)
    assert rows == sorted(rig.caps("epic-like").write.flowsheet_rows.values())
    assert all(c["category"][0]["coding"][0]["code"] == "vital-signs" for c in created)
    assert all(c["encounter"]["reference"].startswith("Encounter/") for c in created)


def test_epic_like_replay_is_59189_and_counts_as_confirmed(rig: Rig) -> None:
    signoff = sign(rig, "epic-like")
    rig.drain("epic-like")
    # The same rows again (as if a first send's answer had been lost): the EHR refuses with 59189.
    from bff.broker.plan import PlannedWrite  # noqa: PLC0415

    intent = rig.writeback.status(signoff).intents[0]
    from bff.store.models import WriteIntent  # noqa: PLC0415

    with rig.store.transaction() as session:
        payload = session.get(WriteIntent, intent.id).payload  # type: ignore[union-attr]
    result = rig.run(rig.broker.send(rig.caps("epic-like"), PlannedWrite.from_json(payload)))
    assert result.status == 400
    assert "59189" in str(result.body)
    from bff.outbox.retry import Outcome, classify  # noqa: PLC0415

    assert classify(result.status, sent=True, error=None, body=result.body) is Outcome.CONFIRMED
    assert len(rig.ehr.created("epic-like", "Observation")) == 8


@both_databases
def test_oracle_like_single_observations_note_and_pdf(rig: Rig) -> None:
    signoff = sign(rig, "oracle-like")
    kinds = [i.kind for i in rig.writeback.status(signoff).intents]
    assert kinds.count("observations") == 8
    assert kinds[-2:] == ["note", "pdf"]
    rig.drain("oracle-like")
    view = rig.writeback.status(signoff)
    assert view.state == "confirmed", [(i.kind, i.state, i.last_error) for i in view.intents]
    observations = rig.ehr.created("oracle-like", "Observation")
    assert len(observations) == 8
    assert all(len(o["category"]) == 1 and o["category"][0]["coding"][0]["code"] == "laboratory" for o in observations)
    assert all("identifier" not in o for o in observations)  # Oracle drops client identifiers
    documents = rig.ehr.created("oracle-like", "DocumentReference")
    assert sorted(d["content"][0]["attachment"]["contentType"] for d in documents) == ["application/pdf", "text/plain"]


def test_cgm_receiver_takes_one_submission(rig: Rig) -> None:
    signoff = sign(rig, "cgm-receiver")
    kinds = [i.kind for i in rig.writeback.status(signoff).intents]
    assert kinds == ["bundle", "note"]
    rig.drain("cgm-receiver")
    view = rig.writeback.status(signoff)
    assert view.state == "confirmed", [(i.kind, i.state, i.last_error) for i in view.intents]
    assert len(rig.ehr.created("cgm-receiver", "Provenance")) == 1


def test_a_stale_review_is_not_signed(rig: Rig) -> None:
    public = ingest_site(rig.store, rig.ehr, "oracle-like")["p1"]
    review = rig.writeback.review("oracle-like", public)
    with pytest.raises(StaleReviewError):
        rig.writeback.sign("oracle-like", public, digest="0" * 64, signer=SIGNER)
    with rig.store.transaction() as session:
        assert session.query(SignOff).count() == 0
    assert review.digest


def test_epic_without_an_encounter_is_refused_with_a_reason(rig: Rig) -> None:
    public = ingest_site(rig.store, rig.ehr, "epic-like")["p1"]
    review = rig.writeback.review("epic-like", public, encounter=None)
    assert review.refusal is not None
    assert "open encounter" in review.refusal
    with pytest.raises(PlanError):
        rig.writeback.sign("epic-like", public, digest=review.digest, signer=SIGNER)


def test_scopes_allow_create_reads_v1_and_v2_spellings() -> None:
    from bff.broker.broker import scopes_allow_create  # noqa: PLC0415

    assert scopes_allow_create(["user/Observation.write"], ["Observation"])
    assert scopes_allow_create(["patient/*.cruds"], ["Observation", "DocumentReference"])
    assert scopes_allow_create(
        ["user/Observation.c", "user/DocumentReference.cu"], ["Observation", "DocumentReference"]
    )
    assert not scopes_allow_create(["user/Observation.read", "user/Observation.rs"], ["Observation"])
    assert not scopes_allow_create(["system/Observation.write"], ["Observation"])  # not a user's scope
    assert not scopes_allow_create(["user/Observation.write"], ["Observation", "DocumentReference"])


def test_a_sign_off_can_be_sent_in_context_at_once(rig: Rig) -> None:
    public = ingest_site(rig.store, rig.ehr, "oracle-like")["p1"]
    review = rig.writeback.review("oracle-like", public)
    view = rig.writeback.sign("oracle-like", public, digest=review.digest, signer=SIGNER, in_context_grace_s=30)
    ids = [i.id for i in view.intents]
    assert rig.run(rig.worker.run_site("oracle-like")).sent == 0  # the worker leaves them to the in-context send
    run = rig.run(rig.worker.send_in_context("oracle-like", ids, rig.broker))
    assert run.confirmed == len(ids)
    assert rig.writeback.status(view.id).state == "confirmed"
    assert len(rig.ehr.created("oracle-like", "Observation")) == 8


@pytest.mark.parametrize(("ack", "state"), [("AA", "confirmed"), ("AE", "failed"), ("AR", "failed")])
def test_hl7_only_site_gets_one_oru_over_mllp(rig: Rig, ack: str, state: str) -> None:
    from sandbox.mllp import AckListener  # noqa: PLC0415

    received: list[dict[str, object]] = []
    listener = AckListener(ack, received.append)
    _, port = rig.run(listener.start("127.0.0.1", 0))
    try:
        rig.capabilities.set("hl7-only", "hl7v2.port", port, who="test", reason="the test's MLLP listener")
        signoff = sign(rig, "hl7-only")
        view = rig.writeback.status(signoff)
        assert [i.kind for i in view.intents] == ["hl7v2"]
        rig.drain("hl7-only")
        view = rig.writeback.status(signoff)
        assert view.state == state, view.intents
        assert len(received) == 1
        assert str(received[0]["type"]).startswith("ORU^R01")
        assert rig.ehr.created("hl7-only", "Observation") == []  # nothing over FHIR
    finally:
        rig.run(listener.close())


def test_hl7_only_site_without_a_listener_retries_without_losing_the_write(rig: Rig) -> None:
    from tests.sandbox.support import free_port  # noqa: PLC0415

    rig.capabilities.set("hl7-only", "hl7v2.port", free_port(), who="test", reason="nobody listens there")
    signoff = sign(rig, "hl7-only")
    rig.run(rig.worker.run_site("hl7-only"))
    [intent] = rig.writeback.status(signoff).intents
    assert intent.state == "queued"  # refused before anything went out: safe to send again later
    assert intent.last_error  # the connection error, for the admin page


def test_the_epic_like_row_map_files_each_metric_on_the_row_built_for_it() -> None:
    """sites/epic-like.toml maps metrics to the sandbox's rows; each row's LOINC is the metric's (IG slices)."""
    from bff.capabilities import load_file, parse_capabilities  # noqa: PLC0415
    from engine.catalogue import CATALOGUE  # noqa: PLC0415
    from sandbox.personalities import FLOWSHEET_ROWS  # noqa: PLC0415
    from tests.broker.conftest import ROOT  # noqa: PLC0415

    caps = parse_capabilities("epic-like", load_file(ROOT / "sites" / "epic-like.toml"))
    rows = {row.row_id: row for row in FLOWSHEET_ROWS}
    for metric, row_id in caps.write.flowsheet_rows.items():
        code = CATALOGUE[metric].code()
        assert code is not None
        assert rows[row_id].loinc == code.code, (metric, row_id, rows[row_id].name)
    assert CATALOGUE["tbr_l2"].code() == CATALOGUE["tbr_l2"].codes[""]
    assert CATALOGUE["tbr_l2"].codes[""].code == "104642-4"  # very low, <54 mg/dL (the IG's timeInVeryLow)


def test_a_slow_site_is_claimed_no_faster_than_its_rate_allows_within_a_lease(rig: Rig) -> None:
    rig.capabilities.set("oracle-like", "rate_limit.rps", 0.02, who="test", reason="one write per 50 s")
    rig.capabilities.set("oracle-like", "rate_limit.burst", 1, who="test", reason="one write per 50 s")
    signoff = sign(rig, "oracle-like")
    run = rig.run(rig.worker.run_site("oracle-like"))
    assert run.confirmed == 1  # one token, one claim: the rest is not held under a lease it would outlive
    states = [i.state for i in rig.writeback.status(signoff).intents]
    assert states.count("confirmed") == 1
    assert states.count("queued") == len(states) - 1


def test_a_patient_whose_zone_is_unknown_is_not_filed_until_it_is(ehr, store, sites_dir) -> None:  # type: ignore[no-untyped-def]
    """Never a silent UTC: the plan refuses, saying how to set the zone; the site's zone makes it fileable."""
    import dataclasses  # noqa: PLC0415

    from bff.broker.plan import PlanError, WriteContext, plan_writes  # noqa: PLC0415
    from bff.capabilities import CapabilityService  # noqa: PLC0415
    from tests.resources.samples import sample_record  # noqa: PLC0415

    caps = CapabilityService(store, sites_dir).get("oracle-like")
    unknown = dataclasses.replace(sample_record(), tz_source="unknown", patient_reference="Patient/1")
    with pytest.raises(PlanError, match="time zone is not known"):
        plan_writes(caps, unknown, WriteContext())
    assert plan_writes(caps, dataclasses.replace(unknown, tz_source="site"), WriteContext())
