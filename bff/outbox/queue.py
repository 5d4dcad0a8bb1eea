"""The outbox queue: write intents in the database and their state machine. No network code here.

    enqueue ──► queued ──claim──► sending ──record──► confirmed | failed | unknown | queued (retry later)
                  ▲ │                                      unknown ──record (after reading back)──► any of those
          release │ ▼ defer
                deferred

Every transition writes a WriteAttempt row. `claim` is exclusive: two workers never get the same intent
(PostgreSQL: SELECT … FOR UPDATE SKIP LOCKED; SQLite: one UPDATE … RETURNING guarded by the state, under
SQLite's single writer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bff.outbox.retry import Outcome
from bff.store.db import Store
from bff.store.models import WriteAttempt, WriteIntent

KINDS = ("flowsheet", "observations", "note", "pdf", "hl7v2")
STATES = ("queued", "sending", "confirmed", "failed", "unknown", "deferred")
_AFTER = {
    Outcome.CONFIRMED: "confirmed",
    Outcome.RETRY: "queued",
    Outcome.UNKNOWN: "unknown",
    Outcome.FAILED: "failed",
}


class TransitionError(RuntimeError):
    """A transition the state machine does not allow (e.g. recording an outcome for a queued intent)."""


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def idempotency_key(site: str, patient: str, kind: str, metrics: Sequence[str], window: str, version: int) -> str:
    """site|patient|kind|metric-set|window|version (the metric set sorted, so its order does not matter)."""
    parts = [site, patient, kind, ",".join(sorted(set(metrics))), window, str(version)]
    for part in parts:
        if not part or "|" in part:
            raise ValueError(f"idempotency key part {part!r} must be non-empty and must not contain '|'")
    return "|".join(parts)


def _attempt(session: Session, intent: WriteIntent, at: datetime, outcome: str, **kwargs: Any) -> None:
    session.add(WriteAttempt(intent_id=intent.id, at=at, outcome=outcome, **kwargs))


def enqueue(
    store: Store,
    *,
    site: str,
    patient_public_id: str,
    outcome_window_id: int,
    kind: str,
    metrics: Sequence[str],
    window: str,
    version: int,
    payload: Mapping[str, Any],
    now: datetime,
) -> WriteIntent:
    """Queue a write; the same idempotency key returns the existing intent (never a second one)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    key = idempotency_key(site, patient_public_id, kind, metrics, window, version)
    now = _utc(now)
    with store.transaction() as session:
        existing = session.scalar(select(WriteIntent).where(WriteIntent.idempotency_key == key))
        if existing is not None:
            return existing
    try:
        with store.transaction() as session:
            intent = WriteIntent(
                idempotency_key=key, site_key=site, patient_public_id=patient_public_id,
                outcome_window_id=outcome_window_id, kind=kind, payload=dict(payload), state="queued",
                attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
            )  # fmt: skip
            session.add(intent)
            session.flush()
            _attempt(session, intent, now, "queued", detail="enqueued")
        return intent
    except IntegrityError:  # another writer enqueued the same key in between
        with store.transaction() as session:
            return session.scalars(select(WriteIntent).where(WriteIntent.idempotency_key == key)).one()


def claim(store: Store, site: str, now: datetime, limit: int) -> list[WriteIntent]:
    """Move up to `limit` due queued intents of a site to sending (oldest first) and return them."""
    now = _utc(now)
    due = (
        select(WriteIntent.id)
        .where(WriteIntent.site_key == site, WriteIntent.state == "queued", WriteIntent.next_attempt_at <= now)
        .order_by(WriteIntent.id)
        .limit(limit)
    )
    with store.transaction() as session:
        if store.dialect == "postgresql":
            ids = list(session.scalars(due.with_for_update(skip_locked=True)))
            if ids:
                session.execute(
                    update(WriteIntent)
                    .where(WriteIntent.id.in_(ids))
                    .values(state="sending", attempts=WriteIntent.attempts + 1, updated_at=now)
                )
        else:
            ids = list(
                session.scalars(
                    update(WriteIntent)
                    .where(WriteIntent.id.in_(due.scalar_subquery()), WriteIntent.state == "queued")
                    .values(state="sending", attempts=WriteIntent.attempts + 1, updated_at=now)
                    .returning(WriteIntent.id)
                    .execution_options(synchronize_session=False)
                )
            )
        if not ids:
            return []
        intents = list(
            session.scalars(
                select(WriteIntent)
                .where(WriteIntent.id.in_(ids))
                .order_by(WriteIntent.id)
                .execution_options(populate_existing=True)
            )
        )
        for intent in intents:
            _attempt(session, intent, now, "claimed", detail=f"attempt {intent.attempts}")
        return intents


def record(
    store: Store,
    intent_id: int,
    outcome: Outcome,
    *,
    now: datetime,
    status_code: int | None = None,
    detail: str | None = None,
    retry_in_s: float = 0.0,
    remote_id: str | None = None,
) -> WriteIntent:
    """Apply an attempt's outcome to a sending (or unknown, after reconciling) intent."""
    now = _utc(now)
    with store.transaction() as session:
        intent = session.scalars(select(WriteIntent).where(WriteIntent.id == intent_id).with_for_update()).one_or_none()
        if intent is None:
            raise KeyError(f"no write intent {intent_id}")
        if intent.state not in ("sending", "unknown"):
            raise TransitionError(f"write intent {intent_id} is {intent.state}: no outcome can be recorded")
        intent.state = _AFTER[outcome]
        intent.updated_at = now
        if outcome is Outcome.RETRY:
            intent.next_attempt_at = now + timedelta(seconds=max(0.0, retry_in_s))
        if outcome is Outcome.CONFIRMED:
            intent.confirmed_at = now
            intent.remote_id = remote_id or intent.remote_id
            intent.last_error = None
        elif detail is not None:
            intent.last_error = detail
        _attempt(session, intent, now, outcome.value, status_code=status_code, detail=detail)
        return intent


def _move(store: Store, site: str, now: datetime, source: str, target: str, label: str) -> list[int]:
    now = _utc(now)
    with store.transaction() as session:
        query = select(WriteIntent).where(WriteIntent.site_key == site, WriteIntent.state == source)
        if store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        intents = list(session.scalars(query.order_by(WriteIntent.id)))
        for intent in intents:
            intent.state = target
            intent.updated_at = now
            if target == "queued":
                intent.next_attempt_at = now
            _attempt(session, intent, now, label)
        return [intent.id for intent in intents]


def defer(store: Store, site: str, now: datetime) -> list[int]:
    """The site went read-only: hold its queued intents (in creation order); returns their ids."""
    return _move(store, site, now, "queued", "deferred", "deferred")


def release(store: Store, site: str, now: datetime) -> list[int]:
    """The site may be written again: its deferred intents are due now, in creation order; returns their ids."""
    return _move(store, site, now, "deferred", "queued", "released")


def counts_by_state(store: Store, site: str) -> dict[str, int]:
    """How many intents of a site are in each state (every state listed, zero included)."""
    counts = dict.fromkeys(STATES, 0)
    with store.transaction() as session:
        rows = session.execute(
            select(WriteIntent.state, func.count()).where(WriteIntent.site_key == site).group_by(WriteIntent.state)
        )
        for state, count in rows:
            counts[state] = count
    return counts


def attempts_of(store: Store, intent_id: int) -> list[WriteAttempt]:
    """The transitions of an intent, oldest first."""
    with store.transaction() as session:
        query = select(WriteAttempt).where(WriteAttempt.intent_id == intent_id).order_by(WriteAttempt.id)
        return list(session.scalars(query))
