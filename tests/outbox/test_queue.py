"""The outbox queue on SQLite and PostgreSQL: idempotent enqueue, exclusive claims, the state machine."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from bff.outbox.queue import (
    TransitionError,
    attempts_of,
    cancel_by_person,
    claim,
    counts_by_state,
    defer,
    enqueue,
    idempotency_key,
    record,
    release,
    retry_by_person,
)
from bff.outbox.retry import Outcome
from bff.store.db import Store
from bff.store.models import OutcomeWindow, Patient, WriteIntent

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def make_window(store: Store, public_id: str = "p1") -> int:
    with store.transaction() as session:
        patient = Patient(public_id=public_id, tz="UTC", created_at=NOW)
        session.add(patient)
        session.flush()
        window = OutcomeWindow(
            patient_id=patient.id, window_start_ms=0, window_end_ms=86_400_000, window_spec={}, tz="UTC",
            policy_hash="0" * 64, policy={}, engine_version="1", method="x", metrics={}, document={},
            input_digest="0" * 64, readings_used=0, version=1, status="current", created_at=NOW,
        )  # fmt: skip
        session.add(window)
        session.flush()
        return window.id


def put(store: Store, window_id: int, n: int, *, site: str = "a", version: int = 1) -> WriteIntent:
    return enqueue(
        store, site=site, patient_public_id="p1", outcome_window_id=window_id, kind="flowsheet",
        metrics=["tir", "gmi"], window=f"w{n}", version=version, payload={"n": n}, now=NOW,
    )  # fmt: skip


def test_idempotency_key_is_canonical() -> None:
    key = idempotency_key("a", "p1", "note", ["tir", "gmi", "tir"], "2026-11-01/14d", 2)
    assert key == "a|p1|note|gmi,tir|2026-11-01/14d|2"
    # '|' inside a part (public ids have one) is escaped, so two different writes never share a key
    assert idempotency_key("a", "site:x|P/1", "note", ["tir"], "w", 1) == "a|site:x%7CP/1|note|tir|w|1"
    assert idempotency_key("a|b", "c", "note", ["tir"], "w", 1) != idempotency_key("a", "b|c", "note", ["tir"], "w", 1)
    with pytest.raises(ValueError, match="non-empty"):
        idempotency_key("a", "", "note", ["tir"], "w", 1)


def test_enqueue_is_idempotent(store: Store) -> None:
    window_id = make_window(store)
    first = put(store, window_id, 1)
    again = put(store, window_id, 1)
    assert again.id == first.id
    assert put(store, window_id, 1, version=2).id != first.id
    assert counts_by_state(store, "a")["queued"] == 2
    with pytest.raises(ValueError, match="kind"):
        enqueue(store, site="a", patient_public_id="p1", outcome_window_id=window_id, kind="fax", metrics=["tir"],
                window="w", version=1, payload={}, now=NOW)  # fmt: skip


def test_state_machine_and_attempts(store: Store) -> None:
    window_id = make_window(store)
    intent = put(store, window_id, 1)
    with pytest.raises(TransitionError):
        record(store, intent.id, Outcome.CONFIRMED, now=NOW)  # queued: nothing was sent
    [claimed] = claim(store, "a", NOW, 10)
    assert (claimed.id, claimed.state, claimed.attempts) == (intent.id, "sending", 1)
    assert claim(store, "a", NOW, 10) == []  # already sending

    retried = record(store, intent.id, Outcome.RETRY, now=NOW, status_code=429, detail="slow down", retry_in_s=30)
    assert retried.state == "queued"
    assert claim(store, "a", NOW + timedelta(seconds=29), 10) == []  # not due yet
    [claimed] = claim(store, "a", NOW + timedelta(seconds=30), 10)
    assert claimed.attempts == 2

    assert record(store, intent.id, Outcome.UNKNOWN, now=NOW, status_code=504).state == "unknown"
    assert claim(store, "a", NOW + timedelta(days=1), 10) == []  # unknown is never resent by itself
    done = record(store, intent.id, Outcome.CONFIRMED, now=NOW, detail="found on read-back", remote_id="obs-1")
    assert (done.state, done.remote_id, done.last_error) == ("confirmed", "obs-1", None)
    assert done.confirmed_at is not None
    with pytest.raises(TransitionError):
        record(store, intent.id, Outcome.FAILED, now=NOW)

    trail = [(a.outcome, a.status_code) for a in attempts_of(store, intent.id)]
    assert trail == [("queued", None), ("claimed", None), ("retry", 429), ("claimed", None), ("unknown", 504),
                     ("confirmed", None)]  # fmt: skip

    other = put(store, window_id, 2)
    claim(store, "a", NOW, 10)
    failed = record(store, other.id, Outcome.FAILED, now=NOW, status_code=403, detail="forbidden")
    assert (failed.state, failed.last_error) == ("failed", "forbidden")
    counts = counts_by_state(store, "a")
    assert counts == {
        "queued": 0,
        "sending": 0,
        "confirmed": 1,
        "failed": 1,
        "unknown": 0,
        "deferred": 0,
        "awaiting_signoff": 0,
        "cancelled": 0,
    }


def test_claim_is_per_site_oldest_first_and_limited(store: Store) -> None:
    window_id = make_window(store)
    ids = [put(store, window_id, n).id for n in range(5)]
    put(store, window_id, 9, site="b")
    assert [i.id for i in claim(store, "a", NOW, 2)] == ids[:2]
    assert [i.id for i in claim(store, "a", NOW, 10)] == ids[2:]
    assert counts_by_state(store, "b")["queued"] == 1


def test_defer_and_release_keep_creation_order(store: Store) -> None:
    window_id = make_window(store)
    ids = [put(store, window_id, n).id for n in range(4)]
    claim(store, "a", NOW, 1)  # the first is in flight: not deferred
    assert defer(store, "a", NOW) == ids[1:]
    assert claim(store, "a", NOW, 10) == []
    assert counts_by_state(store, "a")["deferred"] == 3
    later = NOW + timedelta(hours=1)
    assert release(store, "a", later) == ids[1:]
    assert [i.id for i in claim(store, "a", later, 10)] == ids[1:]
    assert [a.outcome for a in attempts_of(store, ids[1])] == ["queued", "deferred", "released", "claimed"]


def test_concurrent_claims_never_share_an_intent(store: Store) -> None:
    window_id = make_window(store)
    total = 40
    for n in range(total):
        put(store, window_id, n)
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def worker(slot: int) -> None:
        try:
            barrier.wait()
            while batch := claim(store, "a", NOW, 3):
                got[slot].extend(i.id for i in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert not set(got[0]) & set(got[1])
    assert len(got[0]) + len(got[1]) == total
    assert counts_by_state(store, "a")["sending"] == total


def test_a_person_cannot_retry_or_cancel_as_a_reserved_system_actor(store: Store) -> None:
    intent = put(store, make_window(store), 1)
    claim(store, "a", NOW, 10)
    record(store, intent.id, Outcome.FAILED, now=NOW, status_code=400, detail="bad")
    before = len(attempts_of(store, intent.id))
    for act in (retry_by_person, cancel_by_person):
        with pytest.raises(TransitionError, match="reserved"):
            act(store, intent.id, NOW, who="Outbox-Worker", reason="as the worker")
    with store.transaction() as session:
        assert session.get(WriteIntent, intent.id).state == "failed"  # type: ignore[union-attr]
    assert len(attempts_of(store, intent.id)) == before
