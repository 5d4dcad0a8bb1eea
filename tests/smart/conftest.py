"""Fixtures of the SMART tests: one RSA key per session (slow to make), a clock and a fake EHR per test."""

from __future__ import annotations

import pytest
from joserfc.jwk import RSAKey

from tests.smart.fakes import FakeClock, FakeEhr


@pytest.fixture(scope="session", name="ehr_key")
def fx_ehr_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})


@pytest.fixture(scope="session", name="other_key")
def fx_other_key() -> RSAKey:
    """Another key with the same kid: signatures by it must not verify."""
    return RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})


@pytest.fixture(name="clock")
def fx_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="ehr")
def fx_ehr(ehr_key: RSAKey, clock: FakeClock) -> FakeEhr:
    return FakeEhr(key=ehr_key, clock=clock)
