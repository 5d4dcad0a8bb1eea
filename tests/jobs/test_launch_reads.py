"""When a view asks for a launch-time read (`LaunchReads.request`): due or not, and the status it leaves, read in one
transaction; of two views at once, one queues the read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bff.jobs.launch_read import FRESH_S, LOST_AFTER_S, LaunchReads
from bff.store.db import Store

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)


def test_a_read_is_due_once_then_while_it_runs_not_again(store: Store) -> None:
    reads = LaunchReads(store)
    due, status = reads.request("site-a", "p1", NOW)
    assert due
    assert status is not None
    assert (status.state, status.requested_at) == ("queued", NOW)
    due, status = reads.request("site-a", "Patient/p1", NOW + timedelta(seconds=5))  # the same patient
    assert not due
    assert status == reads.status("site-a", "p1")
    reads.mark_started("site-a", "p1", NOW + timedelta(seconds=6), 0)
    assert reads.request("site-a", "p1", NOW + timedelta(seconds=7))[1].state == "running"  # type: ignore[union-attr]
    # Lost (no worker took it, or it died): asked again, and the status says queued again.
    due, status = reads.request("site-a", "p1", NOW + timedelta(seconds=LOST_AFTER_S + 10))
    assert due
    assert status is not None
    assert status.state == "queued"
    assert reads.mark_requested("site-a", "p1", NOW + timedelta(seconds=LOST_AFTER_S + 11)) is False


def test_a_fresh_read_is_not_asked_again_and_a_stale_one_is(store: Store) -> None:
    reads = LaunchReads(store)
    reads.request("site-a", "p2", NOW)
    reads.mark_started("site-a", "p2", NOW, 0)
    reads.mark_finished("site-a", "p2", NOW + timedelta(seconds=2), state="done", pages=1, received=3, added=3)
    due, status = reads.request("site-a", "p2", NOW + timedelta(seconds=FRESH_S / 2))
    assert not due
    assert status is not None
    assert (status.state, status.added) == ("done", 3)
    due, status = reads.request("site-a", "p2", NOW + timedelta(seconds=FRESH_S + 5))
    assert due
    assert status is not None
    assert status.state == "queued"
    assert status.last_read_at == NOW + timedelta(seconds=2)


def test_in_the_views_transaction_a_read_is_asked_for_as_on_its_own(store: Store) -> None:
    """`request_in` (the view's one transaction) answers as `request` does for a patient read before, and leaves a
    patient never read to `request` (which adds the row): None, and nothing written."""
    reads = LaunchReads(store)
    with store.transaction() as session:
        assert reads.request_in(session, "site-a", "p3", NOW) is None
    assert reads.status("site-a", "p3") is None
    assert reads.request("site-a", "p3", NOW)[0]
    with store.transaction() as session:
        due, status = reads.request_in(session, "site-a", "p3", NOW + timedelta(seconds=5)) or (True, None)
        assert status == reads.status("site-a", "p3", session)
    assert not due  # queued a moment ago
    with store.transaction() as session:
        lost = reads.request_in(session, "site-a", "p3", NOW + timedelta(seconds=LOST_AFTER_S + 10))
    assert lost is not None
    assert lost[0]  # lost: asked again, once
    assert lost[1] is not None
    assert lost[1].state == "queued"
    assert reads.request("site-a", "p3", NOW + timedelta(seconds=LOST_AFTER_S + 11))[0] is False
