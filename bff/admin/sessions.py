"""Server-side sessions of the /admin pages, in the store (shared by every app process, as the SMART launches are).

The browser holds a random token (256 bits) in a cookie; the store keeps only its SHA-256, the account and a
per-session CSRF token (random, made at sign-in, so it changes at every sign-in). A session ends after `idle`
without a request, `absolute` after sign-in, at sign-out, and when its account is disabled or its password reset
(`AdminAccounts` deletes the rows; `resolve` also checks the account on every request). Nothing about patients
is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update

from bff.actors import is_reserved
from bff.admin.accounts import utc
from bff.store.db import Store
from bff.store.models import AdminSession, AdminUser

TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OpenedSession:
    token: str  # for the cookie only: never stored, never logged
    csrf_token: str


@dataclass(frozen=True, slots=True)
class ActiveSession:
    user: str
    csrf_token: str

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token.encode(), (presented or "").encode())


class AdminSessions:
    def __init__(
        self,
        store: Store,
        *,
        idle: timedelta = timedelta(minutes=30),
        absolute: timedelta = timedelta(hours=12),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.idle = idle
        self.absolute = absolute
        self._clock = clock or (lambda: datetime.now(UTC))

    def open(self, user_id: int) -> OpenedSession:
        """A new session for a user who has just signed in (a new token and a new CSRF token)."""
        now = self._clock()
        opened = OpenedSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32))
        with self.store.transaction() as session:
            session.execute(delete(AdminSession).where(AdminSession.expires_at < now))
            session.add(AdminSession(token_sha256=_digest(opened.token), user_id=user_id,
                                     csrf_token=opened.csrf_token, created_at=now, last_seen_at=now,
                                     expires_at=now + self.absolute))  # fmt: skip
        return opened

    def resolve(self, token: str | None) -> ActiveSession | None:
        """The live session a cookie names, or None (unknown, ended, idle too long, account disabled or reset)."""
        if not token or len(token) > 200:
            return None
        now = self._clock()
        with self.store.transaction() as session:
            found = session.execute(
                select(AdminSession, AdminUser)
                .join(AdminUser, AdminUser.id == AdminSession.user_id)
                .where(AdminSession.token_sha256 == _digest(token))
            ).one_or_none()
            if found is None:
                return None
            row, user = found
            alive = (
                utc(row.expires_at) > now
                and utc(row.last_seen_at) + self.idle > now
                and user.disabled_at is None
                and utc(user.password_changed_at) <= utc(row.created_at)
                and not is_reserved(user.name)
            )
            if not alive:
                session.delete(row)
                return None
            if utc(row.last_seen_at) + TOUCH_EVERY <= now:
                session.execute(
                    update(AdminSession).where(AdminSession.token_sha256 == row.token_sha256).values(last_seen_at=now)
                )
            return ActiveSession(user.name, row.csrf_token)

    def close(self, token: str | None) -> None:
        if token:
            with self.store.transaction() as session:
                session.execute(delete(AdminSession).where(AdminSession.token_sha256 == _digest(token)))


__all__ = ["ActiveSession", "AdminSessions", "OpenedSession"]
