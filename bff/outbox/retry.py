"""What a write's response means, and when to try again (pure: no I/O, no clock, no global random state).

`Retry-After` arrives as delta seconds, as an HTTP date (RFC 9110 IMF-fixdate, or the obsolete RFC 850 and asctime
forms), and from one reference server as absolute epoch seconds: all three are parsed and clamped.

A create whose outcome is unknown (a timeout, a 5xx, a connection lost after the request went out) is never
retried blindly: it must be reconciled by reading back first (ehr-realities §1.8, §6.6).

Vendor habits are the site's retry quirks (`[launch] quirks`, defaults from its vendor profile, `bff.vendors`):
`dedupe_59189` (Epic: 400 "Reading already exists" is confirmed) and `required_field_500` (Oracle Health: a 500
with an OperationOutcome `required` is a refusal, not an unknown outcome).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from bff.vendors import answer_is_duplicate, answer_is_refusal

# A number this large is a moment (epoch seconds, 2001-09-09 onwards), not a delay of 31 years.
EPOCH_THRESHOLD = 1e9
EPIC_DUPLICATE_CODE = "59189"  # Epic: the reading already exists (a duplicate of an earlier create)
#: The quirks `classify` applies when the caller does not say (the rule before sites had quirks: 59189 anywhere).
LEGACY_QUIRKS = frozenset({"dedupe_59189"})

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


class Outcome(StrEnum):
    CONFIRMED = "confirmed"  # the EHR has the write
    RETRY = "retry"  # the EHR certainly does not have it: send again later
    UNKNOWN = "unknown"  # it may or may not: reconcile by reading back before any resend
    FAILED = "failed"  # refused: a person must look


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def parse_retry_after(value: str | None, now: datetime, *, minimum_s: float, maximum_s: float) -> float | None:
    """Seconds to wait from `now`, clamped to [minimum_s, maximum_s]; None when absent or unparseable."""
    if minimum_s > maximum_s:
        raise ValueError(f"minimum_s {minimum_s} > maximum_s {maximum_s}")
    text = (value or "").strip()
    if not text:
        return None
    if _NUMBER.fullmatch(text):
        number = float(text)
        if not math.isfinite(number):
            return None
        delay = number - _utc(now).timestamp() if number >= EPOCH_THRESHOLD else number
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        delay = (_utc(when) - _utc(now)).total_seconds()
    return min(maximum_s, max(minimum_s, delay))


def classify(
    status: int | None,
    *,
    sent: bool,
    error: str | None,
    body: Mapping[str, Any] | None,
    quirks: Collection[str] | None = None,
) -> Outcome:
    """The outcome of one write attempt.

    `status` is the HTTP status when a response arrived (else None); `sent` whether the request may have reached
    the server (False only for failures before any byte went out: DNS, connection refused, TLS handshake);
    `error` the transport error, if any; `body` the parsed response body, if JSON; `quirks` the site's
    (`profile_for(caps).quirks`; None: `LEGACY_QUIRKS`).
    """
    quirks = LEGACY_QUIRKS if quirks is None else quirks
    if status is None:
        # No response: safe to resend only if the request never left; otherwise it may have been applied.
        return Outcome.UNKNOWN if sent else Outcome.RETRY
    if 200 <= status < 300:
        return Outcome.CONFIRMED
    if answer_is_duplicate(quirks, status, body):
        return Outcome.CONFIRMED
    if answer_is_refusal(quirks, status, body):
        return Outcome.FAILED
    if status in (429, 503):
        return Outcome.RETRY
    if status >= 500:
        return Outcome.UNKNOWN
    return Outcome.FAILED


def degrades_site(status: int | None) -> bool:
    """403 and 405 on a write mean the site no longer allows it: degrade the site to read-only."""
    return status in (403, 405)


def backoff_s(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before try `attempt` + 1 (attempt counts from 0): full jitter, uniform in [0, min(cap, base·2^attempt)].

    A server's (already clamped) Retry-After is a floor: never sooner than it asked.
    """
    if attempt < 0 or base < 0 or cap < 0:
        raise ValueError("attempt, base and cap must not be negative")
    ceiling = min(cap, base * 2.0 ** min(attempt, 64))
    delay = rand() * ceiling
    return delay if retry_after is None else max(retry_after, delay)
