"""The /admin pages' accounts, sign-in and sessions (the pages themselves: `app/web/admin.py`).

passwords.py   scrypt hashes with a per-user salt; constant-time checks; the dummy check for unknown names
accounts.py    named accounts (add, list, disable, reset) and sign-in under the lockout and throttle rules
sessions.py    server-side sessions in the store, each with its own CSRF token
"""

from bff.admin.accounts import (
    Account,
    AdminAccountError,
    AdminAccounts,
    LockoutPolicy,
    SignIn,
    SignInResult,
    check_name,
)
from bff.admin.passwords import PasswordPolicyError, check_new_password
from bff.admin.sessions import ActiveSession, AdminSessions, OpenedSession

__all__ = [
    "Account",
    "ActiveSession",
    "AdminAccountError",
    "AdminAccounts",
    "AdminSessions",
    "LockoutPolicy",
    "OpenedSession",
    "PasswordPolicyError",
    "SignIn",
    "SignInResult",
    "check_name",
    "check_new_password",
]
