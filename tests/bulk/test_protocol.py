"""bff.bulk.protocol, pure: kick-off URLs, Retry-After in three forms over the floor, transient errors, run windows
and the manifest checks."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from bff.bulk.protocol import (
    BulkProtocolError,
    ExportScope,
    Level,
    in_run_window,
    is_transient,
    kickoff_url,
    parse_manifest,
    poll_delay,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BASE = "https://ehr.example/fhir"


def test_kickoff_urls_per_level_with_encoded_parameters() -> None:
    since = datetime(2026, 12, 1, 6, 30, tzinfo=UTC)
    params = {"_typeFilter": "Observation?code=http://loinc.org|99504-3"}
    url = kickoff_url(BASE, ExportScope(Level.GROUP, "g 1"), params, since)
    assert url == (
        "https://ehr.example/fhir/Group/g%201/$export?_type=Patient,Observation"
        "&_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C99504-3&_since=2026-12-01T06%3A30%3A00.000Z"
    )
    assert kickoff_url(BASE, ExportScope(Level.PATIENT), {"_type": "Observation"}, None).endswith(
        "/Patient/$export?_type=Observation"
    )
    assert kickoff_url(BASE, ExportScope(Level.SYSTEM), {}, None) == f"{BASE}/$export?_type=Patient,Observation"
    with pytest.raises(BulkProtocolError, match="_since"):
        kickoff_url(BASE, ExportScope(Level.PATIENT), {"_since": "2020-01-01"}, None)
    with pytest.raises(ValueError, match="group id"):
        ExportScope(Level.GROUP)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("120", 120.0),
        (format_datetime(datetime(2026, 12, 7, 12, 10, tzinfo=UTC), usegmt=True), 600.0),
        (str(int(NOW.timestamp()) + 90), 90.0),
        ("5", 30.0),  # under the floor
        ("99999", 3600.0),  # clamped
        (None, 30.0),  # none: the floor, then backing off
        ("soon", 30.0),  # unparseable: as none
    ],
)
def test_poll_delay_reads_retry_after_in_three_forms_and_keeps_the_floor(header: str | None, expected: float) -> None:
    assert poll_delay(header, NOW, floor_s=30, waits=0) == expected


def test_poll_delay_backs_off_without_retry_after() -> None:
    assert [poll_delay(None, NOW, floor_s=10, waits=n) for n in range(4)] == [10.0, 15.0, 22.5, 33.75]


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [(500, "transient", True), (500, "throttled", True), (500, "processing", False), (429, None, True),
     (503, None, True), (400, "invalid", False), (500, None, False)],
)  # fmt: skip
def test_transient_errors(status: int, code: str | None, transient: bool) -> None:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code}]} if code else None
    assert is_transient(status, body) is transient


def test_run_window_in_the_site_zone_and_across_midnight() -> None:
    assert in_run_window("", "America/Chicago", NOW)
    assert in_run_window("05:00-07:00", "America/Chicago", NOW)  # 06:00 in Chicago
    assert not in_run_window("22:00-04:00", "America/Chicago", NOW)
    assert in_run_window("22:00-04:00", "UTC", datetime(2026, 12, 7, 23, 30, tzinfo=UTC))


KICKOFF = f"{BASE}/Group/g1/$export?_type=Patient,Observation"


def manifest(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "transactionTime": "2026-12-07T11:59:00.123Z",
        "request": "https://proxy.example/r4/Group/g1/$export?_type=Patient%2CObservation",
        "requiresAccessToken": True,
        "output": [{"type": "Observation", "url": f"{BASE}/files/1.ndjson", "count": 3},
                   {"type": "Patient", "url": "files/2.ndjson"}],
        "error": [],
    }  # fmt: skip
    body.update(changes)
    return body


def test_a_good_manifest() -> None:
    parsed = parse_manifest(manifest(), kickoff=KICKOFF, status_url=f"{BASE}/status/9", base=BASE)
    assert parsed.transaction_time == datetime(2026, 12, 7, 11, 59, 0, 123000, tzinfo=UTC)
    assert [(f.type, f.url, f.count) for f in parsed.output] == [
        ("Observation", f"{BASE}/files/1.ndjson", 3), ("Patient", f"{BASE}/status/files/2.ndjson", None)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transactionTime": "2026-12-07"}, "transactionTime"),
        ({"request": f"{BASE}/Group/g2/$export?_type=Patient,Observation"}, "is not the kick-off"),
        ({"request": f"{BASE}/Group/g1/$export?_type=Observation"}, "is not the kick-off"),
        ({"requiresAccessToken": "yes"}, "requiresAccessToken"),
        ({"output": [{"type": "Condition", "url": f"{BASE}/f"}]}, "was not asked for"),
        ({"output": [{"type": "Observation", "url": f"{BASE}/f", "count": -1}]}, "count"),
        ({"output": [{"type": "Observation", "url": "https://elsewhere.example/f"}]}, "never sent elsewhere"),
        ({"error": [{"type": "Observation", "url": f"{BASE}/e"}]}, "OperationOutcome"),
    ],
)
def test_manifest_checks(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(BulkProtocolError, match=message):
        parse_manifest(manifest(**changes), kickoff=KICKOFF, status_url=f"{BASE}/status/9", base=BASE)


def test_files_elsewhere_are_fine_without_a_token() -> None:
    body = manifest(requiresAccessToken=False, output=[{"type": "Observation", "url": "https://cdn.example/f"}])
    assert parse_manifest(body, kickoff=KICKOFF, status_url=f"{BASE}/status/9", base=BASE).output[0].url
