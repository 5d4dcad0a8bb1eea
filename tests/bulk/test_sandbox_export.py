"""Bulk `$export` against the sandbox EHR with every fault it can inject (issue 12 acceptance): each run ends with a
complete job and a store holding each exported reading exactly once.

The oracle is the sandbox itself: the Observations of the exported patients (`BulkServer.reading_count`); the store
must hold that many readings with as many distinct reading keys. The runner's waits are recorded, not slept.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bff.bulk import BulkError, JobBusyError
from bff.bulk.runner import ERROR_FILE_CONTEXT
from bff.store.models import BulkFile, BulkJob, BulkWatermark, Patient
from tests.bulk.conftest import Harness


def _complete(harness: Harness, site: str = "oracle-like", **options: object) -> None:
    reports = harness.run(lambda runner: runner.start(site), **options)
    assert [r.state for r in reports] == ["complete"], (reports, harness.events)
    expected = harness.server.reading_count(site)
    assert harness.readings() == (expected, expected)


def test_group_export_of_the_matrix_group_fills_the_store_once(harness: Harness) -> None:
    [report] = harness.run(lambda runner: runner.start("epic-like"))
    assert report.state == "complete", (report.error, harness.events)
    assert report.scope == f"group:{harness.server.group_id('epic-like')}"
    expected = harness.server.reading_count("epic-like")
    assert harness.readings() == (expected, expected)
    assert report.added == expected
    assert report.files == report.files_done >= 4  # Observations in files of 5000 lines, then Patients
    assert not harness.server.exports.of("epic-like").jobs  # DELETE after download: the server tidied up


def test_every_fault_at_once_still_ends_complete_with_each_reading_once(harness_any: Harness) -> None:
    faults = harness_any.server.faults("oracle-like")
    faults.kickoff_busy, faults.retry_after_form, faults.retry_after_s = 2, "epoch", 3
    faults.transient_polls, faults.polls_before_ready = 2, 2
    faults.expire_after_files, faults.cut_files, faults.file_errors, faults.error_file = 1, 1, 1, True
    _complete(harness_any)
    with harness_any.store.transaction() as session:
        job = session.scalars(select(BulkJob)).one()
        assert job.exports == 2  # the files expired after the first: exported again, same request
        assert job.slot is None
    assert sum("already running" in e for e in harness_any.events) == 2
    assert sum("(transient)" in e for e in harness_any.events) == 2
    assert any("cut short" in e or "RemoteProtocolError" in e for e in harness_any.events)


@pytest.mark.parametrize("form", ["seconds", "http-date", "epoch"])
def test_polling_honours_retry_after_in_each_form_and_shows_x_progress(harness: Harness, form: str) -> None:
    faults = harness.server.faults("oracle-like")
    faults.retry_after_form, faults.retry_after_s, faults.polls_before_ready = form, 7, 3
    _complete(harness)
    polls = [w for w, e in zip(harness.waits, [e for e in harness.events if "next request" in e], strict=True)
             if "in progress" in e]  # fmt: skip
    assert len(polls) == 3
    assert all(5.5 <= w <= 7.0 for w in polls), polls  # dates and epochs are whole seconds from "now"
    assert [e.split("(")[1].split(")")[0] for e in harness.events if "in progress" in e] == [
        "25% done", "50% done", "75% done"
    ]  # fmt: skip


def test_polling_never_comes_sooner_than_the_site_floor(harness: Harness) -> None:
    faults = harness.server.faults("oracle-like")
    faults.retry_after_s, faults.polls_before_ready = 0, 2
    _complete(harness)
    assert harness.waits == [1.0, 1.0]  # Retry-After: 0, poll_floor_s = 1


def test_transient_500_on_status_is_retried(harness: Harness) -> None:
    harness.server.faults("oracle-like").transient_polls = 3
    _complete(harness)
    assert sum("HTTP 500" in e and "(transient)" in e for e in harness.events) == 3


def test_kickoff_429_job_running_waits_and_tries_again(harness: Harness) -> None:
    faults = harness.server.faults("oracle-like")
    faults.kickoff_busy, faults.retry_after_form, faults.retry_after_s = 2, "http-date", 30
    _complete(harness)
    busy = [w for w, e in zip(harness.waits, [e for e in harness.events if "next request" in e], strict=True)
            if "already running" in e]  # fmt: skip
    assert len(busy) == 2
    assert all(28 <= w <= 30 for w in busy), busy


def test_kickoff_still_busy_after_every_attempt_fails_the_job_and_frees_its_slot(harness: Harness) -> None:
    harness.server.faults("oracle-like").kickoff_busy = 3
    [report] = harness.run(lambda runner: runner.start("oracle-like"), kickoff_attempts=3)
    assert report.state == "failed"
    assert "still refused after 3 attempts" in (report.error or "")
    with harness.store.transaction() as session:
        assert session.scalars(select(BulkJob.slot)).one() is None
        assert session.scalars(select(BulkWatermark)).all() == []
    harness.server.faults("oracle-like").kickoff_busy = 0
    _complete(harness)  # the slot is free again


def test_expired_files_export_again(harness: Harness) -> None:
    harness.server.faults("oracle-like").expire_after_files = 2
    before = harness.server.exports.of("oracle-like").kickoffs
    _complete(harness)
    assert harness.server.exports.of("oracle-like").kickoffs == before + 2
    with harness.store.transaction() as session:
        states = {(f.export_no, f.state) for f in session.scalars(select(BulkFile))}
    assert (1, "done") in states
    assert (1, "expired") in states
    assert {s for n, s in states if n == 2} == {"done"}


def test_a_file_cut_mid_stream_is_fetched_again(harness: Harness) -> None:
    harness.server.faults("oracle-like").cut_files = 2
    _complete(harness)
    with harness.store.transaction() as session:
        attempts = sorted(f.attempts for f in session.scalars(select(BulkFile)))
    assert sum(a - 1 for a in attempts) == 2  # two cut downloads, each fetched again (here the same file, twice)


def test_a_transient_503_on_a_file_waits_its_retry_after(harness: Harness) -> None:
    faults = harness.server.faults("oracle-like")
    faults.file_errors, faults.retry_after_s = 1, 9
    _complete(harness)
    assert 9.0 in harness.waits


def test_error_files_go_to_quarantine_once(harness: Harness) -> None:
    harness.server.faults("oracle-like").error_file = True
    _complete(harness)
    patients = len(harness.server.patient_ids("oracle-like"))
    items = [q for q in harness.quarantined() if q.context == ERROR_FILE_CONTEXT]
    assert len(items) == patients
    assert all("the export reported an error: error processing" in q.reason for q in items)
    reports = harness.run(lambda runner: runner.start("oracle-like", full=True))
    assert reports[0].state == "complete"
    again = [q for q in harness.quarantined() if q.context == ERROR_FILE_CONTEXT]
    assert len(again) == patients
    assert {q.seen_count for q in again} == {2}


def test_token_expiring_between_files_is_renewed(harness: Harness) -> None:
    """oracle-like tokens live 570 s: after the first file, every token the site issued has run out."""
    auth = harness.server.sandbox.sites["oracle-like"].auth

    def lapse(line: str) -> None:
        if "file 1/" in line:
            for grant in auth.access.values():
                grant.expires_at = 0.0

    harness.hook = lapse
    _complete(harness)
    assert harness.forgets == 1  # one 401, one new token, the file fetched


def test_since_watermark_moves_only_when_a_job_completes(harness: Harness) -> None:
    _complete(harness)
    with harness.store.transaction() as session:
        mark = session.get(BulkWatermark, ("oracle-like", "patient"))
        job = session.scalars(select(BulkJob)).one()
        assert mark is not None
        assert mark.since == job.transaction_time
    site = harness.server.sandbox.sites["oracle-like"]
    patient = harness.server.patient_ids("oracle-like")[0]
    new = site.store.create({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "99504-3"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-11-26T09:00:00-06:00",
        "valueQuantity": {"value": 123, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    })  # fmt: skip
    try:
        [second] = harness.run(lambda runner: runner.start("oracle-like"))
        assert second.state == "complete"
        with harness.store.transaction() as session:
            kickoff = session.get(BulkJob, second.id).kickoff_url  # type: ignore[union-attr]
        assert "_since=" in kickoff
        assert second.added == 1  # only the reading created after the first export
        assert harness.readings()[0] == harness.server.reading_count("oracle-like")
    finally:
        del site.store.current["Observation"][new["id"]]


def test_patient_files_give_the_store_names_and_zones(harness: Harness) -> None:
    _complete(harness, "epic-like")
    with harness.store.transaction() as session:
        patients = list(session.scalars(select(Patient)))
    assert patients
    assert all(p.family_name and p.birth_date and p.mrn for p in patients)
    assert {p.tz_source for p in patients} == {"ehr"}  # the Patient's tz-code extension


def test_at_most_max_concurrent_jobs_per_site(harness: Harness) -> None:
    now = datetime.now(UTC)
    with harness.store.transaction() as session:
        session.add(BulkJob(site_key="oracle-like", scope="patient", state="exporting", slot=0, kickoff_url="x",
                            exports=1, lease_owner="elsewhere:1", lease_expires_at=now + timedelta(hours=1),
                            created_at=now, updated_at=now))  # fmt: skip
    with pytest.raises(JobBusyError, match="max_concurrent"):
        harness.run(lambda runner: runner.start("oracle-like"))
    with pytest.raises(JobBusyError, match="being run by elsewhere:1"):
        harness.run(lambda runner: runner.resume("oracle-like"))


class CrashError(Exception):
    """Stands for the process dying (the job's record stays as it was written)."""


def test_resume_after_a_crash_mid_download_fetches_only_what_is_left(harness: Harness) -> None:
    def crash(line: str) -> None:
        if "file 2/" in line:
            raise CrashError

    harness.hook = crash
    with pytest.raises(CrashError):
        harness.run(lambda runner: runner.start("oracle-like"))
    harness.hook = None
    reports = harness.run(lambda runner: runner.resume("oracle-like"))
    assert [r.state for r in reports] == ["complete"]
    expected = harness.server.reading_count("oracle-like")
    assert harness.readings() == (expected, expected)
    with harness.store.transaction() as session:
        files = list(session.scalars(select(BulkFile).order_by(BulkFile.id)))
    assert all(f.state == "done" for f in files)
    assert sum(f.added for f in files) == expected  # the second file was ingested before the crash: kept, not redone


def test_resume_after_a_crash_while_polling_polls_the_same_export(harness: Harness) -> None:
    harness.server.faults("oracle-like").polls_before_ready = 3

    def crash(line: str) -> None:
        if "in progress" in line:
            raise CrashError

    harness.hook = crash
    with pytest.raises(CrashError):
        harness.run(lambda runner: runner.start("oracle-like"))
    harness.hook = None
    kickoffs = harness.server.exports.of("oracle-like").kickoffs
    [report] = harness.run(lambda runner: runner.resume("oracle-like"))
    assert report.state == "complete"
    assert harness.server.exports.of("oracle-like").kickoffs == kickoffs  # no second kick-off


def test_cancel_deletes_the_export_at_the_server(harness: Harness) -> None:
    harness.server.faults("oracle-like").polls_before_ready = 5

    def crash(line: str) -> None:
        if "in progress" in line:
            raise CrashError

    harness.hook = crash
    with pytest.raises(CrashError):
        harness.run(lambda runner: runner.start("oracle-like"))
    assert len(harness.server.exports.of("oracle-like").jobs) == 1
    [report] = harness.run(lambda runner: runner.cancel("oracle-like"))
    assert report.state == "cancelled"
    assert not harness.server.exports.of("oracle-like").jobs
    assert any("DELETE" in e and ": 202" in e for e in harness.events)
    with harness.store.transaction() as session:
        assert session.scalars(select(BulkJob.slot)).one() is None
        assert session.scalars(select(BulkWatermark)).all() == []


def test_refused_before_anything_is_sent(harness: Harness) -> None:
    kickoffs = harness.server.exports.of("oracle-like").kickoffs
    path = harness.capabilities.path("oracle-like")
    text = path.read_text()
    path.write_text(text.replace("available = true", 'available = true\nrun_window = "01:00-01:01"'))
    harness.now = lambda: datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    with pytest.raises(BulkError, match="run window 01:00-01:01"):
        harness.run(lambda runner: runner.start("oracle-like"))
    path.write_text(text.replace("available = true", "available = false"))
    with pytest.raises(BulkError, match="does not offer Bulk Data"):
        harness.run(lambda runner: runner.start("oracle-like"))
    assert harness.server.exports.of("oracle-like").kickoffs == kickoffs
