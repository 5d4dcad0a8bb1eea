"""The audit trail: security-relevant events in the database (who, what, when, refused or allowed)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from bff.store.db import Store
from bff.store.models import AuditEvent


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
    **detail: Any,
) -> None:
    with store.transaction() as session:
        session.add(AuditEvent(at=datetime.now(UTC), event=event, outcome=outcome, site_key=site, actor=actor,
                               launch=launch_ref(handle), detail=detail))  # fmt: skip


def recent(store: Store, limit: int = 100) -> list[AuditEvent]:
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))
