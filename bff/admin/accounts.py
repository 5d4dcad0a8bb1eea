"""Named /admin accounts: adding, listing, disabling and resetting them, and signing in with a lockout.

Rules of `sign_in`, all kept in the store so that they hold across every app process:

- **Per client**: `client_failures` failed sign-ins from one address within a fixed window of `lock` minutes,
  and further attempts from it are refused before any password is checked (THROTTLED, with the seconds to wait).
- **Per account**: `failures` wrong passwords in a row lock the account for `lock`; while locked, even the right
  password is refused. The lock is set by one conditional UPDATE, so it is audited once (`admin.lockout`), not
  once per try, however many processes race. A successful sign-in starts the count again.
- A name without an account (or a disabled one, or a reserved system actor's name) costs the same scrypt work as
  a real one (`verify_dummy`) and gets the same answer, so neither the time nor the text tells which names exist.
- Failed attempts are audited counted (`audit_counted`: one row per name, client, reason and minute); a
  successful sign-in and every change to an account are rows of their own.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bff.actors import is_reserved
from bff.admin.passwords import hash_password, needs_rehash, verify_dummy, verify_password
from bff.audit import audit, audit_counted
from bff.settings import Settings
from bff.store.db import Store
from bff.store.models import AdminLoginFailures, AdminSession, AdminUser

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
Clock = Callable[[], datetime]


class AdminAccountError(ValueError):
    """An account that cannot be added or changed as asked; the message says why."""


def utc(moment: datetime) -> datetime:
    """A stored time as aware UTC (SQLite hands back naive ones)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def check_name(name: str) -> str:
    """An account name as stored: 1-64 of a-z, 0-9, '.', '_' and '-', not a reserved system actor's name."""
    if is_reserved(name):
        raise AdminAccountError(f"{name!r} is reserved for glucobridge's own automatic changes")
    if not NAME.fullmatch(name):
        raise AdminAccountError(f"an account name is 1-64 of a-z, 0-9, '.', '_' and '-' (starting with a letter or "
                                f"digit), got {name!r}")  # fmt: skip
    return name


@dataclass(frozen=True, slots=True)
class LockoutPolicy:
    failures: int = 20
    lock: timedelta = timedelta(minutes=15)
    client_failures: int = 50

    @classmethod
    def from_settings(cls, settings: Settings) -> LockoutPolicy:
        return cls(settings.admin_lockout_failures, timedelta(minutes=settings.admin_lockout_min),
                   settings.admin_client_failures)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Account:
    """What `admin list` shows (never the hash)."""

    name: str
    created_at: datetime
    disabled_at: datetime | None
    locked_until: datetime | None
    failed_count: int
    last_login_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.disabled_at is not None:
            return "disabled"
        if self.locked_until is not None and utc(self.locked_until) > now:
            return f"locked until {utc(self.locked_until).isoformat(timespec='seconds')}"
        return "active"


class SignIn(enum.Enum):
    OK = "ok"
    FAILED = "failed"  # wrong name or password, a disabled or locked account: one answer for all
    THROTTLED = "throttled"  # too many failures from this client: wait `retry_after_s`


@dataclass(frozen=True, slots=True)
class SignInResult:
    outcome: SignIn
    user_id: int | None = None
    name: str = ""
    retry_after_s: int = 0


class AdminAccounts:
    """The accounts in the store; `by` names who made a change (audited)."""

    def __init__(self, store: Store, policy: LockoutPolicy | None = None, clock: Clock | None = None) -> None:
        self.store = store
        self.policy = policy or LockoutPolicy()
        self._clock = clock or (lambda: datetime.now(UTC))

    # MARK: managing accounts

    def add(self, name: str, password: str, *, by: str) -> None:
        check_name(name)
        password_hash = hash_password(password)
        now = self._clock()
        with self.store.transaction() as session:
            if session.scalar(select(AdminUser.id).where(AdminUser.name == name)) is not None:
                raise AdminAccountError(f"there is already an account {name!r}")
            session.add(AdminUser(name=name, password_hash=password_hash, created_at=now, password_changed_at=now,
                                  failed_count=0))  # fmt: skip
        audit(self.store, "admin.user.add", outcome="allowed", actor=by, user=name)

    def list(self) -> list[Account]:
        with self.store.transaction() as session:
            return [
                Account(u.name, u.created_at, u.disabled_at, u.locked_until, u.failed_count, u.last_login_at)
                for u in session.scalars(select(AdminUser).order_by(AdminUser.name))
            ]

    def any_enabled(self) -> bool:
        with self.store.transaction() as session:
            return session.scalar(select(AdminUser.id).where(AdminUser.disabled_at.is_(None)).limit(1)) is not None

    def disable(self, name: str, *, by: str) -> None:
        """The account can no longer sign in; its sessions end now."""
        self._change(name, "admin.user.disable", by, disabled_at=self._clock())

    def reset(self, name: str, password: str, *, by: str) -> None:
        """A new password; the account is unlocked and enabled again, and its sessions end now."""
        now = self._clock()
        self._change(name, "admin.user.reset", by, password_hash=hash_password(password), password_changed_at=now,
                     disabled_at=None, locked_until=None, failed_count=0)  # fmt: skip

    def _change(self, name: str, event: str, by: str, **values: object) -> None:
        with self.store.transaction() as session:
            user_id = session.scalar(select(AdminUser.id).where(AdminUser.name == name))
            if user_id is None:
                raise AdminAccountError(f"there is no account {name!r}")
            session.execute(update(AdminUser).where(AdminUser.id == user_id).values(**values))
            session.execute(delete(AdminSession).where(AdminSession.user_id == user_id))
        audit(self.store, event, outcome="allowed", actor=by, user=name)

    # MARK: signing in

    def sign_in(self, name: str, password: str, client: str) -> SignInResult:
        """Check a name and password from `client` (an IP address) under the lockout rules (module docstring)."""
        now = self._clock()
        name = name.strip().lower()[:64]
        window = self._window(now)
        if self._client_failures(client, window) >= self.policy.client_failures:
            audit_counted(self.store, "admin.login", outcome="refused", actor=name, client=client, now=now,
                          reason="client throttled")  # fmt: skip
            retry = math.ceil((window + self.policy.lock - now).total_seconds())
            return SignInResult(SignIn.THROTTLED, retry_after_s=max(1, retry))
        user = self._account(name)
        if user is None or user.disabled_at is not None:
            verify_dummy(password)
            reason = "disabled" if user is not None else "reserved name" if is_reserved(name) else "no such account"
            return self._failed(name, client, window, now, reason)
        right = verify_password(user.password_hash, password)
        if user.locked_until is not None and utc(user.locked_until) > now:
            return self._failed(name, client, window, now, "locked")
        if not right:
            self._count_failure(user, client, now)
            return self._failed(name, client, window, now, "wrong password")
        with self.store.transaction() as session:
            values: dict[str, object] = {"failed_count": 0, "last_login_at": now}
            if needs_rehash(user.password_hash):
                values["password_hash"] = hash_password(password)
            session.execute(update(AdminUser).where(AdminUser.id == user.id).values(**values))
        audit(self.store, "admin.login", outcome="allowed", actor=name, client=client)
        return SignInResult(SignIn.OK, user_id=user.id, name=name)

    def _account(self, name: str) -> AdminUser | None:
        if is_reserved(name) or not NAME.fullmatch(name):
            return None  # never an account: nobody signs in as a system actor
        with self.store.transaction() as session:
            return session.scalars(select(AdminUser).where(AdminUser.name == name)).one_or_none()

    def _failed(self, name: str, client: str, window: datetime, now: datetime, reason: str) -> SignInResult:
        self._note_client_failure(client, window)
        audit_counted(self.store, "admin.login", outcome="refused", actor=name, client=client, now=now, reason=reason)
        return SignInResult(SignIn.FAILED, name=name)

    def _count_failure(self, user: AdminUser, client: str, now: datetime) -> None:
        """One more wrong password; the one that reaches the threshold locks the account, audited once."""
        until = now + self.policy.lock
        with self.store.transaction() as session:
            session.execute(
                update(AdminUser).where(AdminUser.id == user.id).values(failed_count=AdminUser.failed_count + 1)
            )
            locked = session.execute(
                update(AdminUser)
                .where(AdminUser.id == user.id, AdminUser.failed_count >= self.policy.failures)
                .values(failed_count=0, locked_until=until)
            )
        if getattr(locked, "rowcount", 0):
            audit(self.store, "admin.lockout", outcome="locked", actor=user.name, client=client,
                  failures=self.policy.failures, until=until.isoformat(timespec="seconds"))  # fmt: skip

    # MARK: the per-client throttle

    def _window(self, now: datetime) -> datetime:
        size = int(self.policy.lock.total_seconds())
        return datetime.fromtimestamp(int(now.timestamp()) // size * size, UTC)

    def _client_failures(self, client: str, window: datetime) -> int:
        with self.store.transaction() as session:
            count = session.scalar(
                select(AdminLoginFailures.count).where(
                    AdminLoginFailures.client == client[:64], AdminLoginFailures.window_start == window
                )
            )
        return count or 0

    def _note_client_failure(self, client: str, window: datetime) -> None:
        insert = pg_insert if self.store.dialect == "postgresql" else sqlite_insert
        statement = insert(AdminLoginFailures).values(client=client[:64], window_start=window, count=1)
        with self.store.transaction() as session:
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=[AdminLoginFailures.client, AdminLoginFailures.window_start],
                    set_={"count": AdminLoginFailures.count + 1},
                )
            )
            session.execute(delete(AdminLoginFailures).where(AdminLoginFailures.window_start < window))


__all__ = [
    "NAME",
    "Account",
    "AdminAccountError",
    "AdminAccounts",
    "LockoutPolicy",
    "SignIn",
    "SignInResult",
    "check_name",
]
