"""Naive local wall times placed on the UTC line while streaming, with the engine's rule (outcomes-method §1.1).

`LocalTimeResolver` takes readings one by one, in input order: a local time that does not exist (spring forward)
raises `NonexistentLocalTimeError`; one that exists twice (fall back) takes the earlier instant until, within
its stream, a reading's local time is equal to or earlier than the latest ambiguous local time already seen,
and the later instant from then on. The state is kept per stream and per fall-back day, so it works across
calls and across several daylight-saving changes.

Zone rules come from `engine.timezones`: a local day whose neighbourhood has no transition is placed with one
offset (cached); a day near a transition goes through `engine.timezones.localize` itself.

Every time a feed gives is first held to plausible years (`YEARS`, 1900–2200), on the raw text, before any
datetime is built: year 1 or 9999 with an offset would otherwise overflow the datetime range when placed on
UTC. (The store separately refuses times before 2000 or in the future; these bounds only keep parsing safe.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

import numpy as np

from engine.timezones import DAY_MS, check_zone, localize, span_offsets_ms

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
#: Wider than any UTC offset ever used (±16 h), so a day with no transition in it maps with a single offset.
_MARGIN_MS = 16 * 3_600_000
_CACHE_DAYS = 20_000
#: The years a reading's time may name (inclusive); outside them a time is a record problem, not a datetime.
YEARS = (1900, 2200)
_LEADING_YEAR = re.compile(r"\s*(\d{4})")
_FIRST_YEAR, _LAST_YEAR = (f"{year:04d}" for year in YEARS)


def offset_evidence(moment: datetime) -> int | None:
    """The UTC offset (minutes) a time was written with, as evidence of the patient's zone (bff.store.zones);
    None for no offset or an offset of zero, which systems that normalise to UTC write too ("Z", +0000)."""
    offset = moment.utcoffset()
    if offset is None:
        return None
    minutes = int(offset.total_seconds() // 60)
    return minutes or None


def year_problem(year: int) -> str | None:
    """Why a year cannot be a reading's, or None."""
    if YEARS[0] <= year <= YEARS[1]:
        return None
    return f"year {year} is outside {YEARS[0]}–{YEARS[1]}: a device clock that was never set, or a damaged date"


def iso_year_problem(text: str) -> str | None:
    """Checked on the raw ISO 8601 text before it is parsed: why its year cannot be a reading's, or None.

    ISO 8601 (and `datetime.fromisoformat`) starts with a four-digit year; text that does not is left for the
    parse to refuse.
    """
    head = text[:4]
    if _FIRST_YEAR <= head <= _LAST_YEAR and head.isdigit():  # four digits compare as numbers
        return None
    match = _LEADING_YEAR.match(text)
    return None if match is None else year_problem(int(match.group(1)))


def naive_local_ms(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, millisecond: int = 0
) -> int:
    """Milliseconds on the naive local axis (as `engine.timezones.localize` takes them). Raises ValueError, also
    for a year outside `YEARS`."""
    problem = year_problem(year)
    if problem:
        raise ValueError(problem)
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 60 and 0 <= millisecond < 1000):
        raise ValueError(f"time {hour:02d}:{minute:02d}:{second:02d} is out of range")
    days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    return days * DAY_MS + ((hour * 60 + minute) * 60 + second) * 1000 + millisecond


@dataclass(slots=True)
class _Fold:
    """Per stream: the fall-back day being passed, the latest ambiguous local time seen in it, and the switch."""

    day: int
    latest: int
    switched: bool


class LocalTimeResolver:
    """Turns naive local times of one zone into UTC ms, one reading at a time, in input order.

    `resolve(local_ms, stream)` returns `(utc_ms, ambiguous)`. Raises `engine.NonexistentLocalTimeError` (an
    `EngineError`, with the engine's message) for a local time skipped by a daylight-saving change; the state
    is not changed then. The zone is checked when the resolver is made (`UnknownZoneError`).
    """

    __slots__ = ("_day_offset", "_folds", "zone")

    def __init__(self, zone: str) -> None:
        check_zone(zone)
        self.zone = zone
        self._day_offset: dict[int, int | None] = {}
        self._folds: dict[str, _Fold] = {}

    def _offset_for_day(self, day: int) -> int | None:
        """The one UTC offset valid for every local time of the day, or None near a transition."""
        offset = self._day_offset.get(day, -1)  # offsets are whole seconds, so -1 ms means "not cached"
        if offset != -1:
            return offset
        first = np.array([day * DAY_MS - _MARGIN_MS], dtype=np.int64)
        last = np.array([(day + 1) * DAY_MS + _MARGIN_MS], dtype=np.int64)
        offsets, constant = span_offsets_ms(self.zone, first, last)
        found = int(offsets[0]) if bool(constant[0]) else None
        if len(self._day_offset) >= _CACHE_DAYS:
            self._day_offset.clear()
        self._day_offset[day] = found
        return found

    def resolve(self, local_ms: int, stream: str = "") -> tuple[int, bool]:
        day = local_ms // DAY_MS
        offset = self._offset_for_day(day)
        if offset is not None:
            return local_ms - offset, False
        # Near a transition: the engine places the same local time twice in one stream, so the first copy is
        # the earlier instant and the second (a repeat) the later one; a skipped time raises here.
        utc, ambiguous = localize(
            np.array([local_ms, local_ms], dtype=np.int64), self.zone, np.zeros(2, dtype=np.int32)
        )
        if not bool(ambiguous[0]):
            return int(utc[0]), False
        fold = self._folds.get(stream)
        if fold is None or fold.day != day:
            fold = _Fold(day, local_ms, False)
            self._folds[stream] = fold
        elif local_ms <= fold.latest:
            fold.switched = True
        fold.latest = max(fold.latest, local_ms)
        return int(utc[1] if fold.switched else utc[0]), True
