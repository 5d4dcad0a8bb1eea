"""LocalTimeResolver: naive local times placed one by one with the engine's rule (outcomes-method §1.1)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from bff.ingest.localtime import LocalTimeResolver, naive_local_ms
from engine import NonexistentLocalTimeError, UnknownZoneError, localize


def utc(iso: str) -> int:
    return int(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


def local(text: str) -> int:
    """`YYYY-MM-DD HH:MM` on the naive axis."""
    moment = datetime.fromisoformat(text)
    return naive_local_ms(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def test_naive_local_ms_matches_the_naive_axis() -> None:
    assert naive_local_ms(1970, 1, 1) == 0
    assert naive_local_ms(2024, 3, 1, 8, 5, 0) == utc("2024-03-01T08:05:00+00:00")
    assert naive_local_ms(2024, 2, 29, 23, 59, 59, 999) == utc("2024-03-01T00:00:00+00:00") - 1
    with pytest.raises(ValueError, match="out of range"):
        naive_local_ms(2024, 3, 1, 24, 0)
    with pytest.raises(ValueError, match="day is out of range"):
        naive_local_ms(2023, 2, 29)


def test_ordinary_times_take_the_zone_offset() -> None:
    resolver = LocalTimeResolver("America/New_York")
    assert resolver.resolve(local("2024-03-01 08:05")) == (utc("2024-03-01T13:05:00Z"), False)
    assert resolver.resolve(local("2024-07-01 08:05")) == (utc("2024-07-01T12:05:00Z"), False)
    assert resolver.resolve(local("2024-03-10 03:00")) == (utc("2024-03-10T07:00:00Z"), False)
    assert resolver.resolve(local("2024-03-10 01:59")) == (utc("2024-03-10T06:59:00Z"), False)


def test_a_skipped_local_time_raises_with_the_engine_message() -> None:
    resolver = LocalTimeResolver("America/New_York")
    with pytest.raises(NonexistentLocalTimeError) as caught:
        resolver.resolve(local("2024-03-10 02:30"))
    assert caught.value.message == (
        "local time 2024-03-10T02:30:00 does not exist in America/New_York (skipped by a daylight-saving change)"
    )


def test_fall_back_hour_takes_the_earlier_instant_until_the_clock_repeats() -> None:
    resolver = LocalTimeResolver("America/New_York")
    times = ["00:50", "01:05", "01:20", "01:50", "01:05", "01:20", "01:50", "02:05"]
    got = [resolver.resolve(local(f"2024-11-03 {t}"), "s1") for t in times]
    assert got == [
        (utc("2024-11-03T04:50:00Z"), False),
        (utc("2024-11-03T05:05:00Z"), True),  # EDT, first pass
        (utc("2024-11-03T05:20:00Z"), True),
        (utc("2024-11-03T05:50:00Z"), True),
        (utc("2024-11-03T06:05:00Z"), True),  # 01:05 again: EST from here on
        (utc("2024-11-03T06:20:00Z"), True),
        (utc("2024-11-03T06:50:00Z"), True),
        (utc("2024-11-03T07:05:00Z"), False),
    ]


def test_an_equal_local_time_switches_to_the_later_instant() -> None:
    resolver = LocalTimeResolver("America/New_York")
    assert resolver.resolve(local("2024-11-03 01:30")) == (utc("2024-11-03T05:30:00Z"), True)
    assert resolver.resolve(local("2024-11-03 01:30")) == (utc("2024-11-03T06:30:00Z"), True)


def test_streams_are_resolved_independently() -> None:
    resolver = LocalTimeResolver("Europe/Berlin")
    sequence = [("a", "02:10"), ("a", "02:40"), ("b", "02:20"), ("a", "02:10"), ("b", "02:50"), ("b", "02:20")]
    got = [resolver.resolve(local(f"2024-10-27 {t}"), s)[0] for s, t in sequence]
    assert got == [
        utc("2024-10-27T02:10:00+02:00"),
        utc("2024-10-27T02:40:00+02:00"),
        utc("2024-10-27T02:20:00+02:00"),  # b has not repeated yet
        utc("2024-10-27T02:10:00+01:00"),  # a repeated 02:10 ≤ 02:40
        utc("2024-10-27T02:50:00+02:00"),
        utc("2024-10-27T02:20:00+01:00"),
    ]


@pytest.mark.parametrize(
    ("zone", "day"),
    [("America/New_York", "2024-11-03"), ("Australia/Sydney", "2024-04-07"), ("Australia/Lord_Howe", "2024-04-07")],
)
def test_agrees_with_engine_localize_over_one_fall_back(zone: str, day: str) -> None:
    minutes = [0, 10, 40, 65, 75, 90, 115, 70, 80, 95, 119, 125, 150, 200]
    start = local(f"{day} 00:30")
    base = [start + m * 60_000 for m in minutes]
    streams = [i % 2 for i in range(len(base))]
    expected, ambiguous = localize(np.array(base, dtype=np.int64), zone, np.array(streams, dtype=np.int32))
    resolver = LocalTimeResolver(zone)
    got = [resolver.resolve(t, str(s)) for t, s in zip(base, streams, strict=True)]
    assert got == list(zip(expected.tolist(), ambiguous.tolist(), strict=True))
    assert any(ambiguous.tolist())


def test_each_fall_back_is_resolved_on_its_own() -> None:
    """A stream that switched to the later instant in one year starts the next year's fold on the earlier one."""
    resolver = LocalTimeResolver("America/New_York")
    for t in ("01:10", "01:40", "01:10"):
        resolver.resolve(local(f"2023-11-05 {t}"), "s")
    assert resolver.resolve(local("2024-11-03 01:10"), "s") == (utc("2024-11-03T01:10:00-04:00"), True)
    assert resolver.resolve(local("2024-11-03 01:05"), "s") == (utc("2024-11-03T01:05:00-05:00"), True)


def test_a_zone_without_daylight_saving_and_utc() -> None:
    assert LocalTimeResolver("Asia/Kolkata").resolve(local("2024-11-03 01:30")) == (
        utc("2024-11-03T01:30:00+05:30"),
        False,
    )
    assert LocalTimeResolver("UTC").resolve(local("2024-11-03 01:30")) == (utc("2024-11-03T01:30:00Z"), False)


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(UnknownZoneError, match="unknown time zone 'Mars/Olympus'"):
        LocalTimeResolver("Mars/Olympus")
