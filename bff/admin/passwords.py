"""Password hashes of /admin accounts: scrypt (hashlib, OpenSSL) with a per-user random salt.

    scrypt$<log2 N>$<r>$<p>$<salt, base64>$<key, base64>

Parameters are OWASP's scrypt option N=2^14, r=8, p=5 (16 MiB and about 0.2 s per hash here); they are stored in
each hash, so raising them later re-hashes a password at its next sign-in (`needs_rehash`). Verification
compares in constant time. `verify_dummy` spends the same work for a name that has no account, so the time of
an answer does not tell which names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from functools import cache

LOG2_N = 14
R = 8
P = 5
SALT_BYTES = 16
KEY_BYTES = 32
MIN_LENGTH = 12
MAX_LENGTH = 1024  # characters: a longer "password" is a denial-of-service attempt, not a password


class PasswordPolicyError(ValueError):
    """A new password that may not be used; the message says why."""


@dataclass(frozen=True, slots=True)
class _Parsed:
    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=2 * 128 * n * r + (1 << 20))  # fmt: skip


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"a password has at most {MAX_LENGTH} characters")
    if not password.strip():
        raise PasswordPolicyError("a password cannot be only spaces")


def hash_password(password: str) -> str:
    """A new hash (fresh salt) of a password that meets the policy (PasswordPolicyError otherwise)."""
    check_new_password(password)
    salt = os.urandom(SALT_BYTES)
    key = _derive(password, salt, LOG2_N, R, P)
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(key)}"


def _parse(stored: str) -> _Parsed | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    if not (1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16 and salt and len(key) == KEY_BYTES):
        return None
    return _Parsed(log2_n, r, p, salt, key)


def verify_password(stored: str, password: str) -> bool:
    """Whether `password` is the one `stored` was made from (constant-time compare; False for a broken hash)."""
    parsed = _parse(stored)
    if parsed is None or len(password) > MAX_LENGTH:
        verify_dummy(password)
        return False
    candidate = _derive(password, parsed.salt, parsed.log2_n, parsed.r, parsed.p)
    return hmac.compare_digest(candidate, parsed.key)


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(24))


def verify_dummy(password: str) -> None:
    """The work of a verification, for a name without an account (the answer is always no)."""
    parsed = _parse(_dummy_hash())
    assert parsed is not None
    _derive(password[:MAX_LENGTH], parsed.salt, parsed.log2_n, parsed.r, parsed.p)


def needs_rehash(stored: str) -> bool:
    parsed = _parse(stored)
    return parsed is None or (parsed.log2_n, parsed.r, parsed.p) != (LOG2_N, R, P)


__all__ = [
    "PasswordPolicyError",
    "check_new_password",
    "hash_password",
    "needs_rehash",
    "verify_dummy",
    "verify_password",
]
