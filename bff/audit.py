"""The audit trail: security-relevant events in the database (who, what, when, from where, refused or allowed).

Two kinds of rows:

- `audit(...)`: one row per event, for what matters one by one: an admin's change, a sign-in, a lockout, a
  refused patient access by an authenticated launch, a refused CSRF token in a session.
- `audit_counted(...)`: events anybody can cause without signing in (wrong passwords, launch and callback noise).
  Identical ones (same event, outcome, site, actor, client and detail) within one minute share a row whose
  `count` goes up (`at` is the first, `last_at` the latest). A minute holds at most `MAX_ROWS_PER_MINUTE` such
  rows per event; further distinct ones (an attacker varying a name or a URL) go to one overflow row that keeps
  only the event and the count. So a flood adds a bounded number of rows per minute, whatever it varies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from bff.store.db import Store
from bff.store.models import AuditEvent

BUCKET_S = 60
MAX_ROWS_PER_MINUTE = 100  # distinct counted rows per event and minute, before the overflow row
MAX_TEXT = 200  # characters kept of a name, a URL or any text an unauthenticated client sent


def launch_ref(handle: str | None) -> str | None:
    """A launch handle is a bearer secret: the audit keeps only a hash of it."""
    return None if not handle else hashlib.sha256(handle.encode()).hexdigest()[:24]


def audit(
    store: Store,
    event: str,
    *,
    outcome: str,
    site: str | None = None,
    actor: str | None = None,
    handle: str | None = None,
    client: str | None = None,
    **detail: Any,
) -> None:
    with store.transaction() as session:
        session.add(AuditEvent(at=datetime.now(UTC), event=event, outcome=outcome, site_key=site, actor=actor,
                               launch=launch_ref(handle), client=client, detail=detail))  # fmt: skip


def _clip(value: Any) -> Any:
    return value[:MAX_TEXT] if isinstance(value, str) else value


def _bucket(event: str, start: int, fields: Mapping[str, Any]) -> str:
    identity = json.dumps([event, start, fields], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(identity.encode()).hexdigest()


def audit_counted(
    store: Store,
    event: str,
    *,
    outcome: str,
    site: str | None = None,
    actor: str | None = None,
    client: str | None = None,
    now: datetime | None = None,
    **detail: Any,
) -> None:
    """Count an event that may come in floods (see the module's docstring); text is clipped to MAX_TEXT."""
    now = now or datetime.now(UTC)
    start = int(now.timestamp()) // BUCKET_S * BUCKET_S
    row: dict[str, Any] = {"event": event, "outcome": outcome, "site_key": _clip(site), "actor": _clip(actor),
                           "client": _clip(client), "detail": {k: _clip(v) for k, v in detail.items()}}  # fmt: skip
    key = _bucket(event, start, row)
    with store.transaction() as session:
        if _bump(session, key, now):
            return
        minute = datetime.fromtimestamp(start, UTC)
        rows = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.event == event, AuditEvent.bucket.is_not(None), AuditEvent.at >= minute)
        )
        if (rows or 0) >= MAX_ROWS_PER_MINUTE:
            row = {"event": event, "outcome": outcome, "site_key": None, "actor": None, "client": None,
                   "detail": {"overflow": True}}  # fmt: skip
            key = _bucket(event, start, row)
        values = {**row, "at": now, "last_at": now, "count": 1, "bucket": key, "launch": None}
        insert = pg_insert if store.dialect == "postgresql" else sqlite_insert
        statement = insert(AuditEvent).values(values)
        session.execute(
            statement.on_conflict_do_update(
                index_elements=[AuditEvent.bucket], set_={"count": AuditEvent.count + 1, "last_at": now}
            )
        )


def _bump(session: Session, key: str, now: datetime) -> bool:
    result = session.execute(
        update(AuditEvent).where(AuditEvent.bucket == key).values(count=AuditEvent.count + 1, last_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


NEWEST_FIRST = (func.coalesce(AuditEvent.last_at, AuditEvent.at).desc(), AuditEvent.id.desc())
"""Newest first by the latest occurrence: a counted row bumped a moment ago comes before a newer row's first time."""


def recent(store: Store, limit: int = 100) -> list[AuditEvent]:
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).order_by(*NEWEST_FIRST).limit(limit)))
