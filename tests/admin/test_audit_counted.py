"""Counted audit rows (bff.audit.audit_counted) on SQLite and PostgreSQL: a flood adds a bounded number of rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bff.audit import MAX_ROWS_PER_MINUTE, audit, audit_counted, recent
from bff.store.db import Store
from bff.store.models import AuditEvent

MINUTE = datetime(2026, 12, 7, 9, 0, 5, tzinfo=UTC)


def rows(store: Store) -> list[AuditEvent]:
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_identical_events_within_a_minute_share_one_row(store: Store) -> None:
    for n in range(200):
        audit_counted(store, "launch.denied", outcome="refused", client="192.0.2.1", error="x",
                      now=MINUTE + timedelta(milliseconds=n))  # fmt: skip
    audit_counted(store, "launch.denied", outcome="refused", client="192.0.2.2", error="x", now=MINUTE)
    audit_counted(store, "launch.denied", outcome="refused", client="192.0.2.1", error="x",
                  now=MINUTE + timedelta(minutes=1))  # fmt: skip
    found = [(r.client, r.count, r.detail) for r in rows(store)]
    assert found == [("192.0.2.1", 200, {"error": "x"}), ("192.0.2.2", 1, {"error": "x"}),
                     ("192.0.2.1", 1, {"error": "x"})]  # fmt: skip
    first = rows(store)[0]
    assert first.at < first.last_at  # type: ignore[operator]


def test_what_an_attacker_varies_overflows_into_one_row_per_minute(store: Store) -> None:
    for n in range(MAX_ROWS_PER_MINUTE + 150):
        audit_counted(store, "launch.iss_not_allowed", outcome="refused", client="192.0.2.1",
                      iss=f"https://evil.example/{n}" + "x" * 5000, now=MINUTE)  # fmt: skip
    found = rows(store)
    assert len(found) == MAX_ROWS_PER_MINUTE + 1
    assert sum(r.count for r in found) == MAX_ROWS_PER_MINUTE + 150
    assert found[-1].detail == {"overflow": True}
    assert found[-1].count == 150
    assert max(len(r.detail.get("iss", "")) for r in found) == 200  # text from outside is clipped


def test_single_events_stay_rows_of_their_own(store: Store) -> None:
    for _ in range(3):
        audit(store, "outbox.retry", outcome="allowed", actor="i.engineer", intent=1, reason="fixed")
    with store.transaction() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.count == 1)) == 3


def test_a_counted_row_seen_again_is_listed_by_its_latest_occurrence(store: Store) -> None:
    """/admin lists the newest first: an error repeated after another one is newer, though its row is older."""
    audit_counted(store, "smart.error", outcome="refused", site="s", error="already used", now=MINUTE)
    audit_counted(store, "smart.error", outcome="refused", site="s", error="pkce", now=MINUTE + timedelta(seconds=1))
    assert [r.detail["error"] for r in recent(store)] == ["pkce", "already used"]
    audit_counted(store, "smart.error", outcome="refused", site="s", error="already used",
                  now=MINUTE + timedelta(seconds=2))  # fmt: skip
    assert [(r.detail["error"], r.count) for r in recent(store)] == [("already used", 2), ("pkce", 1)]
