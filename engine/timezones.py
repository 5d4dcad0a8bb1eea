"""Time zones, vectorised: UTC offsets for arrays of instants, and naive local times placed on the UTC line.

Zone rules come from the IANA database through the standard library's zoneinfo (the `tzdata` package where
the system has none). Offsets are found once per zone and span of years, then applied with a binary search, so
millions of readings cost one `searchsorted`.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from numpy.typing import NDArray

from engine.errors import NonexistentLocalTimeError, UnknownZoneError

DAY_MS = 86_400_000
_SAMPLE_S = 6 * 3600
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=512)
def zone_info(zone: str) -> ZoneInfo:
    """The ZoneInfo for an IANA name, or UnknownZoneError."""
    try:
        if not zone or zone != zone.strip():
            raise ValueError(zone)
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise UnknownZoneError(f"unknown time zone {zone!r}: use an IANA name such as America/New_York") from None


def check_zone(zone: str) -> None:
    zone_info(zone)


def _offset_s(tz: ZoneInfo, second: int) -> int:
    delta = datetime.fromtimestamp(second, tz).utcoffset()
    return 0 if delta is None else int(delta.total_seconds())


@lru_cache(maxsize=1024)
def _rules(zone: str, year_lo: int, year_hi: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Transition instants (ms; the first is the int64 minimum) and the offset (ms) in force from each."""
    tz = zone_info(zone)
    start = int(datetime(year_lo, 1, 1, tzinfo=UTC).timestamp()) - 2 * 86_400
    end = int(datetime(year_hi + 1, 1, 1, tzinfo=UTC).timestamp()) + 2 * 86_400
    transitions = [np.iinfo(np.int64).min]
    offsets = [_offset_s(tz, start) * 1000]
    prev_t, prev_o = start, _offset_s(tz, start)
    for t in range(start + _SAMPLE_S, end + _SAMPLE_S, _SAMPLE_S):
        o = _offset_s(tz, t)
        if o != prev_o:
            lo, hi = prev_t, t  # offset(lo) == prev_o, offset(hi) != prev_o
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_s(tz, mid) == prev_o:
                    lo = mid
                else:
                    hi = mid
            transitions.append(hi * 1000)
            offsets.append(o * 1000)
        prev_t, prev_o = t, o
    return np.array(transitions, dtype=np.int64), np.array(offsets, dtype=np.int64)


def _year(ms: int) -> int:
    return (_EPOCH + timedelta(milliseconds=int(ms))).year


def _rules_for(zone: str, lo_ms: int, hi_ms: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    return _rules(zone, _year(lo_ms - DAY_MS), _year(hi_ms + DAY_MS))


def utc_offsets_ms(zone: str, times_ms: NDArray[np.int64]) -> NDArray[np.int64]:
    """The zone's UTC offset (ms, local − UTC) at each instant."""
    if times_ms.size == 0:
        return np.zeros(0, dtype=np.int64)
    transitions, offsets = _rules_for(zone, int(times_ms.min()), int(times_ms.max()))
    if offsets.size == 1:
        return np.full(times_ms.shape, offsets[0], dtype=np.int64)
    lo, hi = (np.searchsorted(transitions, [times_ms.min(), times_ms.max()], side="right") - 1).tolist()
    if hi - lo > 4:
        index = np.searchsorted(transitions, times_ms, side="right") - 1
        out: NDArray[np.int64] = offsets[index]
        return out
    # A few transitions in the span (a DST change or two): one comparison per transition, no search per instant.
    result = np.full(times_ms.shape, offsets[lo], dtype=np.int64)
    for k in range(lo + 1, hi + 1):
        result += (times_ms >= transitions[k]) * (offsets[k] - offsets[k - 1])
    return result


def span_offsets_ms(
    zone: str, first_ms: NDArray[np.int64], last_ms: NDArray[np.int64]
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """For spans [first, last]: the offset at `first`, and whether it holds for the whole span (no transition)."""
    if first_ms.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
    transitions, offsets = _rules_for(zone, int(first_ms.min()), int(last_ms.max()))
    i_first = np.searchsorted(transitions, first_ms, side="right") - 1
    i_last = np.searchsorted(transitions, last_ms, side="right") - 1
    return offsets[i_first], i_first == i_last


def zone_rules(
    zones: list[str], lo_ms: int, hi_ms: int
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Several zones' rules over [lo, hi], end to end: zone z's transitions (the first the int64 minimum) and the
    offset (ms) in force from each are `transitions`/`offsets[start[z]:start[z + 1]]`."""
    rules = [_rules_for(zone, lo_ms, hi_ms) for zone in zones]
    start = np.zeros(len(rules) + 1, dtype=np.int64)
    start[1:] = np.cumsum([len(r[0]) for r in rules])
    if not rules:
        return start, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return start, np.concatenate([r[0] for r in rules]), np.concatenate([r[1] for r in rules])


def to_local_ms(zone: str, times_ms: NDArray[np.int64]) -> NDArray[np.int64]:
    """Local wall-clock time as milliseconds on a naive axis (days are `local_ms // DAY_MS`)."""
    return times_ms + utc_offsets_ms(zone, times_ms)


def localize(
    local_ms: NDArray[np.int64], zone: str, streams: NDArray[np.int32] | None = None
) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """Place naive local times (ms on the naive axis) on the UTC line in `zone`.

    Returns the instants and a mask of the ambiguous ones (fall-back hour), resolved by order within each stream
    (docs/outcomes-method.md §1.1). A local time that does not exist raises NonexistentLocalTimeError naming the
    position of the first such reading.
    """
    n = local_ms.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.bool_)
    lo, hi = int(local_ms.min()) - DAY_MS, int(local_ms.max()) + DAY_MS
    _, offsets = _rules_for(zone, lo, hi)
    candidates = np.unique(offsets)
    valid = np.zeros((candidates.size, n), dtype=np.bool_)
    for k, offset in enumerate(candidates):
        instant = local_ms - offset
        valid[k] = utc_offsets_ms(zone, instant) == offset
    count = valid.sum(axis=0)
    if (count == 0).any():
        index = int(np.argmax(count == 0))
        when = (datetime(1970, 1, 1) + timedelta(milliseconds=int(local_ms[index]))).isoformat()
        raise NonexistentLocalTimeError(
            f"local time {when} does not exist in {zone} (skipped by a daylight-saving change)", index=index
        )
    # Earliest instant = largest valid offset; latest instant = smallest valid offset.
    big = np.where(valid, candidates[:, None], np.iinfo(np.int64).min).max(axis=0)
    small = np.where(valid, candidates[:, None], np.iinfo(np.int64).max).min(axis=0)
    utc = local_ms - big
    ambiguous = count > 1
    if ambiguous.any():
        stream_of = np.zeros(n, dtype=np.int32) if streams is None else streams
        # State per stream and per fall-back (keyed by the local date of the repeated hour).
        latest_seen: dict[tuple[int, int], int] = {}
        switched: set[tuple[int, int]] = set()
        for i in np.flatnonzero(ambiguous).tolist():
            t = int(local_ms[i])
            key = (int(stream_of[i]), t // DAY_MS)
            if key in latest_seen and t <= latest_seen[key]:
                switched.add(key)
            latest_seen[key] = max(t, latest_seen.get(key, t))
            if key in switched:
                utc[i] = local_ms[i] - small[i]
    return utc, ambiguous


def local_midnight_ms(zone: str, day: date) -> int:
    """The instant (ms) at which the local date `day` begins in `zone` (first instant if midnight is skipped)."""
    start = datetime(day.year, day.month, day.day, tzinfo=zone_info(zone))
    return int(start.timestamp()) * 1000


def local_date(zone: str, instant_ms: int) -> date:
    return (datetime(1970, 1, 1) + timedelta(milliseconds=int(to_local_ms(zone, np.array([instant_ms]))[0]))).date()


def isoformat_local(zone: str, instant_ms: int) -> str:
    """ISO 8601 with the zone's offset at that instant; milliseconds only when not zero."""
    seconds, millis = divmod(int(instant_ms), 1000)
    moment = datetime.fromtimestamp(seconds, zone_info(zone)).replace(microsecond=millis * 1000)
    return moment.isoformat(timespec="milliseconds" if millis else "seconds")
