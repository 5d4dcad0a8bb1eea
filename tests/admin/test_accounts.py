"""Named /admin accounts on SQLite and PostgreSQL: names, hashes, the lockout, the per-client throttle, sessions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bff.admin import (
    AdminAccountError,
    AdminAccounts,
    AdminSessions,
    LockoutPolicy,
    PasswordPolicyError,
    SignIn,
)
from bff.admin import accounts as accounts_module
from bff.store.db import Store
from bff.store.models import AdminUser, AuditEvent

PASSWORD = "correct horse battery"
START = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)

pytestmark = pytest.mark.usefixtures("cheap_hashes")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def events(store: Store, event: str) -> list[AuditEvent]:
    with store.transaction() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)))


@pytest.mark.parametrize("name", ["outbox-worker", "Outbox-Worker", "OUTBOX-WORKER", " outbox-worker"])
def test_a_reserved_system_actor_cannot_be_an_account_nor_sign_in(store: Store, name: str) -> None:
    """Table row 12: nobody can act as outbox-worker through /admin."""
    accounts = AdminAccounts(store)
    with pytest.raises(AdminAccountError, match="reserved"):
        accounts.add(name, PASSWORD, by="test")
    assert accounts.list() == []
    assert accounts.sign_in(name, PASSWORD, "192.0.2.1").outcome is SignIn.FAILED
    assert [e.detail["reason"] for e in events(store, "admin.login")] == ["reserved name"]


def test_add_list_disable_reset_and_names(store: Store) -> None:
    accounts = AdminAccounts(store)
    accounts.add("i.engineer", PASSWORD, by="test")
    for bad in ("", "I.Engineer", "a b", "x" * 65, "-dash", "ünïcode"):
        with pytest.raises(AdminAccountError):
            accounts.add(bad, PASSWORD, by="test")
    with pytest.raises(AdminAccountError, match="already"):
        accounts.add("i.engineer", PASSWORD, by="test")
    with pytest.raises(PasswordPolicyError):
        accounts.add("short-password", "abc", by="test")
    [account] = accounts.list()
    assert (account.name, account.state(datetime.now(UTC))) == ("i.engineer", "active")
    with store.transaction() as session:
        stored = session.scalar(select(AdminUser.password_hash))
    assert stored is not None
    assert PASSWORD not in stored
    assert accounts.sign_in("I.Engineer ", PASSWORD, "192.0.2.1").outcome is SignIn.OK  # names are lower case
    accounts.disable("i.engineer", by="test")
    assert accounts.sign_in("i.engineer", PASSWORD, "192.0.2.1").outcome is SignIn.FAILED
    assert not accounts.any_enabled()
    accounts.reset("i.engineer", "another long password", by="test")
    assert accounts.sign_in("i.engineer", PASSWORD, "192.0.2.1").outcome is SignIn.FAILED
    assert accounts.sign_in("i.engineer", "another long password", "192.0.2.1").outcome is SignIn.OK
    with pytest.raises(AdminAccountError, match="no account"):
        accounts.disable("nobody", by="test")
    changes = [(e.event, e.actor, e.detail) for e in events(store, "admin.user.add")]
    assert changes == [("admin.user.add", "test", {"user": "i.engineer"})]
    assert [e.event for e in events(store, "admin.user.reset")] == ["admin.user.reset"]


def test_twenty_wrong_passwords_lock_the_account_once_then_even_the_right_one_is_refused(store: Store) -> None:
    """Table row 12: a lockout after 20 wrong passwords, audited once, lifted after the lock time."""
    clock = Clock()
    accounts = AdminAccounts(store, LockoutPolicy(), clock=clock)
    accounts.add("i.engineer", PASSWORD, by="test")
    for attempt in range(19):
        assert accounts.sign_in("i.engineer", f"guess {attempt:04}", "192.0.2.1").outcome is SignIn.FAILED
    assert accounts.sign_in("i.engineer", PASSWORD, "192.0.2.1").outcome is SignIn.OK  # a success resets the count
    for attempt in range(20):
        assert accounts.sign_in("i.engineer", f"guess {attempt:04}", "192.0.2.1").outcome is SignIn.FAILED
    assert accounts.list()[0].state(clock.now).startswith("locked until")
    for _ in range(3):
        assert accounts.sign_in("i.engineer", PASSWORD, "192.0.2.1").outcome is SignIn.FAILED
    lockouts = events(store, "admin.lockout")
    assert [(e.outcome, e.actor, e.client) for e in lockouts] == [("locked", "i.engineer", "192.0.2.1")]
    clock.advance(minutes=15, seconds=1)
    assert accounts.sign_in("i.engineer", PASSWORD, "192.0.2.1").outcome is SignIn.OK
    assert len(events(store, "admin.lockout")) == 1
    refused = [e for e in events(store, "admin.login") if e.outcome == "refused"]
    assert sum(e.count for e in refused) == 19 + 20 + 3
    assert {e.detail["reason"] for e in refused} == {"wrong password", "locked"}
    assert len(refused) <= 3 * 2  # counted per name, client, reason and minute: not one row per try


def test_racing_processes_lock_the_account_once(store: Store) -> None:
    accounts = AdminAccounts(store, LockoutPolicy(failures=6, client_failures=1000))
    accounts.add("i.engineer", PASSWORD, by="test")

    def guess(n: int) -> None:
        for attempt in range(4):
            AdminAccounts(store, accounts.policy).sign_in("i.engineer", f"wrong {n} {attempt}", f"192.0.2.{n}")

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(events(store, "admin.lockout")) == 1


def test_unknown_names_cost_the_same_work_and_get_the_same_answer(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = AdminAccounts(store)
    accounts.add("i.engineer", PASSWORD, by="test")
    dummies: list[str] = []
    real = accounts_module.verify_dummy
    monkeypatch.setattr(accounts_module, "verify_dummy", lambda p: (dummies.append(p), real(p))[1])
    unknown = accounts.sign_in("nobody", PASSWORD, "192.0.2.1")
    wrong = accounts.sign_in("i.engineer", "wrong password!", "192.0.2.1")
    assert dummies == [PASSWORD]  # scrypt work for the name without an account
    assert (unknown.outcome, wrong.outcome) == (SignIn.FAILED, SignIn.FAILED)


def test_a_client_with_too_many_failures_must_wait_whatever_the_name(store: Store) -> None:
    clock = Clock()
    accounts = AdminAccounts(store, LockoutPolicy(failures=20, client_failures=5), clock=clock)
    accounts.add("i.engineer", PASSWORD, by="test")
    for n in range(5):
        assert accounts.sign_in(f"name-{n}", PASSWORD, "198.51.100.7").outcome is SignIn.FAILED
    throttled = accounts.sign_in("i.engineer", PASSWORD, "198.51.100.7")
    assert throttled.outcome is SignIn.THROTTLED
    assert 0 < throttled.retry_after_s <= 15 * 60
    assert accounts.sign_in("i.engineer", PASSWORD, "198.51.100.8").outcome is SignIn.OK  # another client
    clock.advance(minutes=15)
    assert accounts.sign_in("i.engineer", PASSWORD, "198.51.100.7").outcome is SignIn.OK


def test_sessions_have_their_own_csrf_token_and_end(store: Store) -> None:
    clock = Clock()
    accounts = AdminAccounts(store, clock=clock)
    accounts.add("i.engineer", PASSWORD, by="test")
    result = accounts.sign_in("i.engineer", PASSWORD, "192.0.2.1")
    assert result.user_id is not None
    sessions = AdminSessions(store, idle=timedelta(minutes=30), clock=clock)
    first, second = sessions.open(result.user_id), sessions.open(result.user_id)
    assert first.csrf_token != second.csrf_token
    active = sessions.resolve(first.token)
    assert active is not None
    assert active.user == "i.engineer"
    assert active.csrf_ok(first.csrf_token)
    assert not active.csrf_ok(second.csrf_token)  # another session's token
    assert not active.csrf_ok("")
    assert sessions.resolve("forged") is None
    with store.transaction() as session:
        assert first.token not in str(session.scalars(select(AuditEvent)).all())
    clock.advance(minutes=29)
    assert sessions.resolve(first.token) is not None  # and it was seen again: the idle time starts anew
    clock.advance(minutes=29)
    assert sessions.resolve(first.token) is not None
    assert sessions.resolve(second.token) is None  # idle for 58 minutes
    sessions.close(first.token)
    assert sessions.resolve(first.token) is None
    third = sessions.open(result.user_id)
    accounts.disable("i.engineer", by="test")
    assert sessions.resolve(third.token) is None
    clock.advance(minutes=1)
    accounts.reset("i.engineer", "another long password", by="test")
    fourth = sessions.open(result.user_id)
    assert sessions.resolve(fourth.token) is not None
    clock.advance(hours=13)
    assert sessions.resolve(fourth.token) is None  # 12 h after sign-in at most
