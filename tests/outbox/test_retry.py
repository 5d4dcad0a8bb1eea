"""Retry-After in its three forms, the classification of write responses, and backoff bounds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from bff.outbox.retry import Outcome, backoff_s, classify, degrades_site, parse_retry_after

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def ra(value: str | None, lo: float = 1, hi: float = 3600) -> float | None:
    return parse_retry_after(value, NOW, minimum_s=lo, maximum_s=hi)


def test_retry_after_delta_seconds() -> None:
    assert ra("120") == 120
    assert ra(" 7 ") == 7
    assert ra("2.5") == 2.5


def test_retry_after_http_dates_in_all_three_forms() -> None:
    assert ra("Thu, 26 Nov 2026 12:02:00 GMT") == 120  # IMF-fixdate
    assert ra("Thursday, 26-Nov-26 12:01:30 GMT") == 90  # RFC 850
    assert ra("Thu Nov 26 12:00:45 2026") == 45  # asctime


def test_retry_after_absolute_epoch_seconds() -> None:
    assert ra(str(int((NOW + timedelta(seconds=300)).timestamp()))) == 300
    assert ra(str(int(NOW.timestamp()) - 50)) == 1  # in the past: the minimum


def test_retry_after_is_clamped() -> None:
    assert ra("0") == 1
    assert ra("999999") == 3600
    assert ra("Thu, 26 Nov 2026 11:00:00 GMT") == 1
    assert ra("Fri, 27 Nov 2026 12:00:00 GMT") == 3600
    assert ra("30", lo=0, hi=10) == 10


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "-5", "1e3", "NaN", "inf", "12s", "Thu, 99 Foo 2026"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert ra(value) is None


def test_retry_after_with_a_naive_now_is_taken_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Thu, 26 Nov 2026 12:00:10 GMT", naive, minimum_s=0, maximum_s=60) == 10


def test_retry_after_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError, match="minimum_s"):
        ra("5", lo=10, hi=1)


DUPLICATE = {
    "resourceType": "OperationOutcome",
    "issue": [
        {"severity": "warning", "code": "informational", "details": {"coding": [{"code": "4101"}]}},
        {
            "severity": "error",
            "code": "duplicate",
            "details": {"coding": [{"system": "urn:oid:1.2.840", "code": "59189"}]},
        },
    ],
}


@pytest.mark.parametrize(
    ("status", "sent", "error", "body", "expected"),
    [
        (200, True, None, None, Outcome.CONFIRMED),
        (201, True, None, None, Outcome.CONFIRMED),
        (204, True, None, None, Outcome.CONFIRMED),
        (400, True, None, DUPLICATE, Outcome.CONFIRMED),
        (400, True, None, {"resourceType": "OperationOutcome", "issue": [{"code": "invalid"}]}, Outcome.FAILED),
        (400, True, None, None, Outcome.FAILED),
        (422, True, None, DUPLICATE | {"resourceType": "Bundle"}, Outcome.FAILED),
        (429, True, None, None, Outcome.RETRY),
        (503, True, None, None, Outcome.RETRY),
        (None, False, "connection refused", None, Outcome.RETRY),
        (None, True, "read timeout", None, Outcome.UNKNOWN),
        (None, True, "connection reset by peer", None, Outcome.UNKNOWN),
        (500, True, None, None, Outcome.UNKNOWN),
        (502, True, None, None, Outcome.UNKNOWN),
        (504, True, None, None, Outcome.UNKNOWN),
        (401, True, None, None, Outcome.FAILED),
        (403, True, None, None, Outcome.FAILED),
        (404, True, None, None, Outcome.FAILED),
        (405, True, None, None, Outcome.FAILED),
        (409, True, None, None, Outcome.FAILED),
        (412, True, None, None, Outcome.FAILED),
    ],
)
def test_classify(status: int | None, sent: bool, error: str | None, body: dict[str, object] | None,
                  expected: Outcome) -> None:  # fmt: skip
    assert classify(status, sent=sent, error=error, body=body) is expected


def test_malformed_operation_outcomes_are_not_duplicates() -> None:
    for body in ({"issue": "x"}, {"issue": [None, {"details": "x"}, {"details": {"coding": [1, None]}}]}):
        assert classify(400, sent=True, error=None, body=body) is Outcome.FAILED


def test_degrades_site_only_for_403_and_405() -> None:
    assert degrades_site(403)
    assert degrades_site(405)
    assert not any(degrades_site(s) for s in (None, 200, 400, 401, 404, 429, 500, 503))


def test_backoff_full_jitter_bounds() -> None:
    assert backoff_s(0, base=1, cap=60, rand=lambda: 0.0) == 0
    assert backoff_s(0, base=1, cap=60, rand=lambda: 0.999) == pytest.approx(0.999)
    assert backoff_s(3, base=1, cap=60, rand=lambda: 0.5) == 4
    assert backoff_s(10, base=1, cap=60, rand=lambda: 0.5) == 30
    assert backoff_s(10_000, base=1, cap=60, rand=lambda: 0.999) < 60

    rng = random.Random(7)
    for attempt in range(12):
        value = backoff_s(attempt, base=0.5, cap=30, rand=rng.random)
        assert 0 <= value <= min(30, 0.5 * 2**attempt)


def test_backoff_never_sooner_than_retry_after() -> None:
    assert backoff_s(0, base=1, cap=60, retry_after=20, rand=lambda: 0.9) == 20
    assert backoff_s(8, base=1, cap=60, retry_after=5, rand=lambda: 0.5) == 30
    with pytest.raises(ValueError, match="negative"):
        backoff_s(-1, base=1, cap=60)
