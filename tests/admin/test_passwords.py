"""Password hashes with the real parameters: salted scrypt, constant-time checks, the policy for new passwords."""

from __future__ import annotations

import pytest

from bff.admin import PasswordPolicyError
from bff.admin.passwords import hash_password, needs_rehash, verify_dummy, verify_password

PASSWORD = "correct horse battery"


def test_hashes_are_salted_scrypt_and_checked() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("scrypt$14$8$5$")
    assert first != second  # a salt per hash
    assert verify_password(first, PASSWORD)
    assert not verify_password(first, PASSWORD + "!")
    assert not verify_password("not-a-hash", PASSWORD)
    assert not needs_rehash(first)
    assert needs_rehash("scrypt$12$8$1$AAAA$AAAA")
    for weak in ("short", " " * 20, "x" * 1025):
        with pytest.raises(PasswordPolicyError):
            hash_password(weak)
    verify_dummy(PASSWORD)  # a name without an account costs a verification too
