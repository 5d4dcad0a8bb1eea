"""The outbox queue: write intents in the database and their state machine. No network code here.

    enqueue ──► queued ──claim──► sending ──record──► confirmed | failed | unknown | queued (retry later)
                  ▲ │                  │                   unknown ──record (after reading back)──► any of those
          release │ ▼ defer            └─ lease expired (the worker died mid-send) ──► unknown
                deferred
    awaiting_signoff (a correction over the site's threshold) ──sign──► queued | deferred
    any state but confirmed ──cancel (a person, audited)──► cancelled;  failed | unknown ──retry──► queued

A "plan" intent holds a sign-off made while its site was read-only (the clinical content, no request yet);
when the site can be written again it is expanded into the concrete requests of the site's matrix of that day,
in sign-off order, and becomes `expanded`.

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

from bff.actors import is_reserved
from bff.audit import audit
from bff.broker.plan import KINDS as PLAN_KINDS
from bff.outbox.retry import Outcome
from bff.store.db import Store
from bff.store.models import WriteAttempt, WriteIntent

KINDS = (*PLAN_KINDS, "plan")  # a planned request, or a deferred sign-off to plan when the site allows
STATES = ("awaiting_signoff", "deferred", "queued", "sending", "unknown", "confirmed", "failed", "cancelled")
FINAL_STATES = frozenset({"confirmed", "failed", "cancelled", "expanded"})
DEFAULT_LEASE_S = 120.0
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
    """site|patient|kind|metric-set|window|version (the metric set sorted, so its order does not matter).

    A '|' or '%' inside a part is percent-encoded, so that the key stays unambiguous (public ids contain '|')."""
    parts = [site, patient, kind, ",".join(sorted(set(metrics))), window, str(version)]
    for part in parts:
        if not part:
            raise ValueError("idempotency key parts must be non-empty")
    return "|".join(part.replace("%", "%25").replace("|", "%7C") for part in parts)


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
    state: str = "queued",
    channel: str = "fhir",
    signoff_id: int | None = None,
    corrects_id: int | None = None,
    due_at: datetime | None = None,
) -> WriteIntent:
    """Queue a write; the same idempotency key returns the existing intent (never a second one).

    `due_at` (default now) is when a worker may first claim it: a grace for a clinician's in-context send."""
    if state not in ("queued", "deferred", "awaiting_signoff"):
        raise ValueError(f"a new write intent starts queued, deferred or awaiting_signoff, not {state!r}")
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
                outcome_window_id=outcome_window_id, kind=kind, payload=dict(payload), state=state,
                attempts=0, next_attempt_at=_utc(due_at) if due_at else now, created_at=now, updated_at=now,
                channel=channel, signoff_id=signoff_id, corrects_id=corrects_id,
            )  # fmt: skip
            session.add(intent)
            session.flush()
            _attempt(session, intent, now, state, detail="enqueued")
        return intent
    except IntegrityError:  # another writer enqueued the same key in between
        with store.transaction() as session:
            return session.scalars(select(WriteIntent).where(WriteIntent.idempotency_key == key)).one()


def claim(
    store: Store,
    site: str,
    now: datetime,
    limit: int,
    *,
    lease_s: float = DEFAULT_LEASE_S,
    only: Sequence[int] | None = None,
) -> list[WriteIntent]:
    """Move up to `limit` due queued intents of a site to sending (oldest first) and return them.

    Each claim holds a lease of `lease_s`: a worker that dies mid-send leaves it to expire (`expire_leases`).
    `only` restricts the claim to those intents (a clinician's own sign-off, sent in context)."""
    now = _utc(now)
    lease = now + timedelta(seconds=lease_s)
    due = (
        select(WriteIntent.id)
        .where(
            WriteIntent.site_key == site,
            WriteIntent.state == "queued",
            WriteIntent.next_attempt_at <= now,
            WriteIntent.kind != "plan",
        )
        .order_by(WriteIntent.id)
        .limit(limit)
    )
    if only is not None:  # named intents are claimed whenever they are queued (an in-context send's grace)
        due = (
            select(WriteIntent.id)
            .where(WriteIntent.site_key == site, WriteIntent.state == "queued", WriteIntent.id.in_(list(only)))
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
                    .values(state="sending", attempts=WriteIntent.attempts + 1, updated_at=now, lease_expires_at=lease)
                )
        else:
            ids = list(
                session.scalars(
                    update(WriteIntent)
                    .where(WriteIntent.id.in_(due.scalar_subquery()), WriteIntent.state == "queued")
                    .values(state="sending", attempts=WriteIntent.attempts + 1, updated_at=now, lease_expires_at=lease)
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
        intent.lease_expires_at = None
        if outcome in (Outcome.RETRY, Outcome.UNKNOWN):  # unknown: when to read back
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
        query = select(WriteIntent).where(
            WriteIntent.site_key == site, WriteIntent.state == source, WriteIntent.kind != "plan"
        )
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


def put_back(store: Store, intent_ids: list[int], now: datetime, *, state: str, detail: str, at: datetime) -> None:
    """Return claimed (sending) intents unsent: to queued, due at `at`, or to deferred (order kept by id)."""
    if state not in ("queued", "deferred"):
        raise ValueError(f"put_back goes to queued or deferred, not {state!r}")
    now = _utc(now)
    with store.transaction() as session:
        for intent in session.scalars(select(WriteIntent).where(WriteIntent.id.in_(intent_ids)).with_for_update()):
            if intent.state != "sending":
                continue
            intent.state = state
            intent.attempts = max(0, intent.attempts - 1)  # it was not attempted
            intent.updated_at = now
            intent.lease_expires_at = None
            intent.next_attempt_at = _utc(at)
            _attempt(session, intent, now, state, detail=detail)


def make_due(store: Store, intent_ids: Sequence[int], now: datetime) -> None:
    """Queued intents become due now (an in-context send's grace ends early: the worker takes them)."""
    with store.transaction() as session:
        session.execute(
            update(WriteIntent)
            .where(WriteIntent.id.in_(list(intent_ids)), WriteIntent.state == "queued")
            .values(next_attempt_at=_utc(now))
        )


def expire_leases(store: Store, site: str, now: datetime) -> list[int]:
    """Sending intents whose lease ran out (their worker died or hung) become unknown: read back before resending."""
    now = _utc(now)
    with store.transaction() as session:
        query = select(WriteIntent).where(
            WriteIntent.site_key == site, WriteIntent.state == "sending", WriteIntent.lease_expires_at < now
        )
        if store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        intents = list(session.scalars(query.order_by(WriteIntent.id)))
        for intent in intents:
            intent.state = "unknown"
            intent.updated_at = now
            intent.lease_expires_at = None
            intent.next_attempt_at = now
            _attempt(session, intent, now, "unknown", detail="the claim's lease expired mid-send: read back first")
        return [intent.id for intent in intents]


def due_unknown(store: Store, site: str, now: datetime, limit: int = 50) -> list[WriteIntent]:
    """Unknown intents due for a read-back, oldest first."""
    with store.transaction() as session:
        query = (
            select(WriteIntent)
            .where(WriteIntent.site_key == site, WriteIntent.state == "unknown",
                   WriteIntent.next_attempt_at <= _utc(now))
            .order_by(WriteIntent.id)
            .limit(limit)
        )  # fmt: skip
        return list(session.scalars(query))


def later(store: Store, intent_id: int, now: datetime, in_s: float, detail: str) -> None:
    """Leave an unknown intent unknown, to be looked at again in `in_s` seconds."""
    now = _utc(now)
    with store.transaction() as session:
        intent = session.get(WriteIntent, intent_id)
        if intent is not None and intent.state == "unknown":
            intent.next_attempt_at = now + timedelta(seconds=in_s)
            intent.last_error = detail
            intent.updated_at = now


def retry_by_person(store: Store, intent_id: int, now: datetime, *, who: str, reason: str) -> WriteIntent:
    """A person sends a failed or unknown write again (after looking: an unknown one may then be doubled)."""
    return _by_person(store, intent_id, now, ("failed", "unknown"), "queued", who, reason)


def cancel_by_person(store: Store, intent_id: int, now: datetime, *, who: str, reason: str) -> WriteIntent:
    """A person withdraws a write that is not confirmed (nothing is sent any more)."""
    return _by_person(store, intent_id, now, ("queued", "deferred", "failed", "unknown", "awaiting_signoff"),
                      "cancelled", who, reason)  # fmt: skip


def _by_person(
    store: Store, intent_id: int, now: datetime, sources: tuple[str, ...], target: str, who: str, reason: str
) -> WriteIntent:
    if not who.strip() or not reason.strip():
        raise TransitionError("a person's retry or cancel needs who and why")
    if is_reserved(who):
        raise TransitionError(f"{who.strip()!r} is reserved for glucobridge's own automatic changes")
    now = _utc(now)
    with store.transaction() as session:
        intent = session.scalars(select(WriteIntent).where(WriteIntent.id == intent_id).with_for_update()).one_or_none()
        if intent is None:
            raise KeyError(f"no write intent {intent_id}")
        if intent.state not in sources:
            raise TransitionError(f"write intent {intent_id} is {intent.state}: it cannot be {target} now")
        before = intent.state
        intent.state = target
        intent.updated_at = now
        intent.next_attempt_at = now
        _attempt(session, intent, now, target, detail=f"{who}: {reason} (was {before})")
    audit(store, f"outbox.{'retry' if target == 'queued' else 'cancel'}", outcome="allowed", site=intent.site_key,
          actor=who, intent=intent_id, before=before, reason=reason)  # fmt: skip
    return intent


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
